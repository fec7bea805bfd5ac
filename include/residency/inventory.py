"""Inventory: list every source bucket, select media, record each object, write shards.

Listing is streamed page by page; metadata is fetched with a bounded thread pool
one page at a time; manifest shards (JSON Lines) are written as objects are
selected. No step holds the whole listing in memory, and only shard
descriptors (path, counts) leave this module, never lists of keys.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from .errors import StoreError
from .ledger import FAILED, INVENTORY_REFUSAL, Ledger
from .policy import Policy, Source
from .stores.base import ObjectInfo, Store
from .uris import ObjectRef

log = logging.getLogger(__name__)

PAGE = 200


#: Longest object key S3 and GCS accept, in bytes of UTF-8.
MAX_KEY_BYTES = 1024


@dataclass
class BucketCounts:
    """What one source's listing found. ``listed = in_scope + out_of_scope + unreadable``,
    each counted on its own so that the evidence can check the sum."""

    uri: str
    jurisdiction: str | None
    location: str
    listed: int = 0
    listed_bytes: int = 0
    in_scope: int = 0
    in_scope_bytes: int = 0
    out_of_scope: int = 0
    out_of_scope_bytes: int = 0
    unreadable: int = 0
    unreadable_bytes: int = 0
    refused: int = 0
    by_media_type: Counter = field(default_factory=Counter)

    @property
    def errors(self) -> int:
        return self.unreadable


@dataclass(frozen=True)
class InventoryResult:
    migration_id: str
    manifest_dir: str
    shards: list[dict[str, Any]]  # {"shard", "path", "source", "objects", "bytes"}
    objects_listed: int
    objects_in_scope: int
    bytes_in_scope: int
    by_bucket: dict[str, dict[str, Any]]
    by_jurisdiction: dict[str, dict[str, int]]
    by_media_type: dict[str, dict[str, int]]
    ledger: dict[str, int]  # new / unchanged / requeued / failed
    errors: int  # objects listed whose metadata could not be read (unreadable)
    refused: int = 0  # in scope, but refused at inventory (e.g. destination key too long)

    def summary(self) -> dict[str, Any]:
        return asdict(self)


class _ShardWriter:
    """Writes manifest shards of at most ``size`` objects, one source per shard."""

    def __init__(self, folder: Path, size: int) -> None:
        self.folder = folder
        self.size = size
        self.shards: list[dict[str, Any]] = []
        self._file: TextIO | None = None

    def _open(self, source: str) -> None:
        number = len(self.shards)
        path = self.folder / f"shard-{number:05d}.jsonl"
        self._file = path.open("w", encoding="utf-8")
        self.shards.append({"shard": number, "path": str(path), "source": source, "objects": 0, "bytes": 0})

    def add(self, source: str, record: dict[str, Any]) -> int:
        current = self.shards[-1] if self.shards else None
        if current is None or current["source"] != source or current["objects"] >= self.size:
            self.close()
            self._open(source)
            current = self.shards[-1]
        assert self._file is not None
        self._file.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        current["objects"] += 1
        current["bytes"] += record["size"]
        return current["shard"]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _pages(it: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while page := list(islice(it, size)):
        yield page


def run_inventory(
    policy: Policy,
    ledger: Ledger,
    store_for: Callable[[Source], Store],
    placements: dict[str, dict[str, Any]] | None = None,
) -> InventoryResult:
    """Inventory every source of the policy; see the module docstring.

    Args:
        store_for: the store that reads a source bucket.
        placements: preflight's result per bucket URI (location, jurisdiction),
            recorded with the counts; looked up again when missing.
    """
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    folder = Path(policy.control_dir) / policy.migration_id / "manifests" / stamp
    folder.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(folder, policy.transfer.shard_size)
    ledger_counts: Counter = Counter()
    by_bucket: dict[str, BucketCounts] = {}
    try:
        for source in policy.sources:
            store = store_for(source)
            placement = (placements or {}).get(source.bucket_uri) or asdict(store.placement(source.ref.bucket))
            counts = BucketCounts(source.bucket_uri, placement.get("jurisdiction"), placement.get("location", ""))
            by_bucket[source.bucket_uri] = counts
            log.info(
                "inventory %s (prefix %r, %s, jurisdiction %s): listing",
                source.bucket_uri, source.prefix, counts.location, counts.jurisdiction,
            )
            started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
            unreadable: list[dict[str, Any]] = []
            with ThreadPoolExecutor(max_workers=policy.transfer.workers) as pool:
                for page in _pages(store.list_entries(source.ref.bucket, source.prefix), PAGE):
                    infos = list(pool.map(lambda entry: _stat(store, entry.ref), page))
                    rows = []
                    for entry, info in zip(page, infos):
                        counts.listed += 1
                        counts.listed_bytes += entry.size
                        if isinstance(info, StoreError):
                            counts.unreadable += 1
                            counts.unreadable_bytes += entry.size
                            unreadable.append({"src_uri": entry.ref.uri, "size": entry.size,
                                               "reason": f"{type(info).__name__}: {info.reason}"})
                            log.error("inventory %s: UNREADABLE, cannot read its metadata: %s", entry.ref.uri, info.reason)
                            continue
                        media = policy.selection.media_type(entry.ref.key, info.content_type)
                        if media is None:
                            counts.out_of_scope += 1
                            counts.out_of_scope_bytes += entry.size
                            log.info("inventory %s: out of scope (content type %s)", entry.ref.uri, info.content_type)
                            continue
                        row = _row(policy, source, info, media, writer)
                        if row.get("state") == FAILED:
                            counts.refused += 1
                            log.error("inventory %s: FAILED: %s", entry.ref.uri, row["reason"])
                        rows.append(row)
                        counts.in_scope += 1
                        counts.in_scope_bytes += info.size
                        counts.by_media_type[media] += 1
                        counts.by_media_type[f"{media}_bytes"] += info.size
                    ledger_counts.update(ledger.upsert_discovered(policy.migration_id, rows))
            ledger.replace_unreadable(policy.migration_id, source.bucket_uri, unreadable)
            ledger.record_bucket(
                policy.migration_id, source.bucket_uri, role="source", provider=source.ref.provider,
                location=counts.location, jurisdiction=counts.jurisdiction,
                placement_source=placement.get("source", "discovered"),
                objects_listed=counts.listed, bytes_listed=counts.listed_bytes,
                objects_in_scope=counts.in_scope, bytes_in_scope=counts.in_scope_bytes,
                objects_out_of_scope=counts.out_of_scope, bytes_out_of_scope=counts.out_of_scope_bytes,
                objects_unreadable=counts.unreadable, bytes_unreadable=counts.unreadable_bytes,
                inventoried_at=started,
            )
            log.info(
                "inventory %s: listed %d objects (%d bytes) = %d in scope (%d bytes) + %d out of scope + "
                "%d unreadable; %d refused",
                source.bucket_uri, counts.listed, counts.listed_bytes, counts.in_scope, counts.in_scope_bytes,
                counts.out_of_scope, counts.unreadable, counts.refused,
            )
            if counts.in_scope == 0:
                log.warning(
                    "inventory %s: NOTHING IN SCOPE under prefix %r (%d objects listed): check the prefix and the "
                    "selection; the evidence will say so", source.bucket_uri, source.prefix, counts.listed,
                )
    finally:
        writer.close()

    by_jurisdiction: dict[str, Counter] = {}
    by_media: dict[str, Counter] = {}
    for c in by_bucket.values():
        j = by_jurisdiction.setdefault(c.jurisdiction or "multi/unknown", Counter())
        j.update(objects=c.in_scope, bytes=c.in_scope_bytes, listed=c.listed)
        for media in policy.selection.media_types:
            by_media.setdefault(media, Counter()).update(
                objects=c.by_media_type[media], bytes=c.by_media_type[f"{media}_bytes"]
            )
    return InventoryResult(
        migration_id=policy.migration_id,
        manifest_dir=str(folder),
        shards=writer.shards,
        objects_listed=sum(c.listed for c in by_bucket.values()),
        objects_in_scope=sum(c.in_scope for c in by_bucket.values()),
        bytes_in_scope=sum(c.in_scope_bytes for c in by_bucket.values()),
        by_bucket={
            uri: {
                "jurisdiction": c.jurisdiction, "location": c.location, "listed": c.listed,
                "listed_bytes": c.listed_bytes, "in_scope": c.in_scope, "in_scope_bytes": c.in_scope_bytes,
                "out_of_scope": c.out_of_scope, "unreadable": c.unreadable, "refused": c.refused,
                "errors": c.errors,
            }
            for uri, c in by_bucket.items()
        },
        by_jurisdiction={k: dict(v) for k, v in by_jurisdiction.items()},
        by_media_type={k: dict(v) for k, v in by_media.items()},
        ledger=dict(ledger_counts),
        errors=sum(c.errors for c in by_bucket.values()),
        refused=sum(c.refused for c in by_bucket.values()),
    )


def _stat(store: Store, ref: ObjectRef) -> ObjectInfo | StoreError:
    try:
        return store.stat(ref)
    except StoreError as exc:
        return exc


def _row(policy: Policy, source: Source, info: ObjectInfo, media: str, writer: _ShardWriter) -> dict[str, Any]:
    """The ledger row of an in-scope object; written to a manifest shard unless refused."""
    dst = policy.destination_for(source).dst_ref(info.ref)
    row: dict[str, Any] = {
        "src_uri": info.ref.uri,
        "src_bucket_uri": source.bucket_uri,
        "dst_uri": dst.uri,
        "route": policy.route(source),
        "shard": -1,
        "size": info.size,
        "content_type": info.content_type,
        "media_type": media,
        "src_version": info.version,
        "src_etag": info.etag,
        "src_checksums": dict(info.checksums),
    }
    length = len(dst.key.encode("utf-8"))
    if length > MAX_KEY_BYTES:
        # S3 and GCS refuse such a key; a real cloud would fail only at copy time.
        row.update(state=FAILED, reason=f"{INVENTORY_REFUSAL}destination key {dst.uri[:80]}... is {length} bytes "
                                        f"of UTF-8, over the {MAX_KEY_BYTES}-byte limit of {dst.provider}")
        return row
    row["shard"] = writer.add(source.bucket_uri, {
        "src_uri": info.ref.uri, "dst_uri": dst.uri, "size": info.size,
        "src_version": info.version, "src_etag": info.etag,
    })
    return row


def read_shard(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the records of one manifest shard."""
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
