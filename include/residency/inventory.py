"""Inventory: list every source bucket, select media, record each object in shards.

Listing is streamed page by page (or read from an S3 Inventory report); what an
object is comes from its listing entry (key, size, ETag, version; GCS also lists
content type, metadata and checksums), so there is no request per object: a HEAD
is sent only where the listing cannot decide the selection (an S3 key without a
known extension, or a policy that selects by content type). Selected objects are
written to the ledger a page per transaction, each with its manifest (this
inventory's stamp) and shard number: the ledger is the manifest, which every
worker reads; nothing is written to a worker's disk. No step holds the whole
listing in memory, and only shard descriptors (numbers and counts) leave this
module, never lists of keys.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator

from . import transfer
from .errors import StoreError
from .ledger import FAILED, INVENTORY_REFUSAL, Ledger
from .policy import Policy, Source
from .stores.base import Listed, ObjectInfo, Store
from .uris import ObjectRef

log = logging.getLogger(__name__)

PAGE = 1000


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
    manifest: str  # the inventory's stamp: ledger rows with this ``manifest`` are its shards
    shards: list[dict[str, Any]]  # {"manifest", "shard", "last", "source", "to", "objects", "bytes"}
    objects_listed: int
    objects_in_scope: int
    bytes_in_scope: int
    by_bucket: dict[str, dict[str, Any]]
    by_jurisdiction: dict[str, dict[str, int]]
    by_media_type: dict[str, dict[str, int]]
    ledger: dict[str, int]  # new / unchanged / requeued / failed
    errors: int  # objects listed whose metadata could not be read (unreadable)
    refused: int = 0  # in scope, but refused at inventory (e.g. destination key too long)
    head_requests: int = 0  # objects whose listing could not decide their selection

    def summary(self) -> dict[str, Any]:
        return asdict(self)


class _Shards:
    """Numbers shards as objects are selected: one source per shard, a new shard at
    ``size`` objects or ``max_bytes`` bytes (one shard of videos must not hold the run
    back). The manifest itself is the ledger rows (``manifest``, ``shard``), readable
    by every worker; only these descriptors leave the module."""

    def __init__(self, manifest: str, size: int, max_bytes: int) -> None:
        self.manifest, self.size, self.max_bytes = manifest, size, max_bytes
        self.shards: list[dict[str, Any]] = []

    def add(self, source: str, size: int, to: str) -> int:
        current = self.shards[-1] if self.shards else None
        if (current is None or current["source"] != source or current["objects"] >= self.size
                or (current["objects"] and current["bytes"] + size > self.max_bytes)):
            current = {"manifest": self.manifest, "shard": len(self.shards), "last": len(self.shards),
                       "source": source, "to": to, "objects": 0, "bytes": 0}
            self.shards.append(current)
        current["objects"] += 1
        current["bytes"] += size
        return current["shard"]


def group_shards(shards: list[dict[str, Any]], max_tasks: int) -> list[dict[str, Any]]:
    """At most ``max_tasks`` descriptors (Airflow's ``max_map_length``): consecutive
    shards of one source are merged into ranges ``shard..last``, balanced by count."""
    if len(shards) <= max_tasks:
        return shards
    per_source = Counter(s["source"] for s in shards)
    if len(per_source) > max_tasks:
        raise ValueError(f"{len(per_source)} sources cannot fit in {max_tasks} mapped tasks (max_map_length)")
    per = -(-len(shards) // max_tasks)
    while sum(-(-n // per) for n in per_source.values()) > max_tasks:
        per += 1
    out: list[dict[str, Any]] = []
    for shard in shards:
        last = out[-1] if out else None
        if last is not None and last["source"] == shard["source"] and last["last"] - last["shard"] + 1 < per:
            last.update(last=shard["shard"], objects=last["objects"] + shard["objects"],
                        bytes=last["bytes"] + shard["bytes"])
        else:
            out.append(dict(shard))
    return out


def run_inventory(
    policy: Policy,
    ledger: Ledger,
    store_for: Callable[[Source], Store],
    placements: dict[str, dict[str, Any]] | None = None,
    *,
    max_tasks: int = 1024,
    entries_for: Callable[[Source, Store], tuple[Iterable[Listed], str] | None] | None = None,
) -> InventoryResult:
    """Inventory every source of the policy; see the module docstring.

    Args:
        store_for: the store that reads a source bucket.
        placements: preflight's result per bucket URI (location, jurisdiction),
            recorded with the counts; looked up again when missing.
        max_tasks: most shard descriptors returned (Airflow's ``max_map_length``);
            consecutive shards are grouped into ranges beyond it.
        entries_for: ``(source, store) -> (entries, description) | None``: where a
            source's entries come from instead of listing it (an S3 Inventory
            report, :mod:`residency.s3inventory`); ``None`` lists the bucket.
    """
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    shards = _Shards(stamp, policy.transfer.shard_size, policy.transfer.shard_bytes)
    ledger_counts: Counter = Counter()
    requests: Counter = Counter()
    by_bucket: dict[str, BucketCounts] = {}
    for source in policy.sources:
        store = store_for(source)
        placement = (placements or {}).get(source.bucket_uri) or asdict(store.placement(source.ref.bucket))
        counts = BucketCounts(source.bucket_uri, placement.get("jurisdiction"), placement.get("location", ""))
        by_bucket[source.bucket_uri] = counts
        decide_by = source.decide_by or policy.selection.decide_by
        log.info(
            "inventory %s (prefix %r, %s, jurisdiction %s): listing; objects without a listed content type "
            "are selected by %s", source.bucket_uri, source.prefix, counts.location, counts.jurisdiction,
            "their extension (a HEAD only where it cannot decide)" if decide_by == "extension"
            else "their content type (a HEAD per object)",
        )
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        unreadable: list[dict[str, Any]] = []
        given = entries_for(source, store) if entries_for else None
        entries, inventory_source = given if given is not None else (_listing(store, source), "listing")
        if given is not None:
            log.info("inventory %s: %s", source.bucket_uri, inventory_source)
        with ThreadPoolExecutor(max_workers=policy.transfer.workers) as pool:
            for page in transfer.pages(entries, PAGE):
                wanted = [e for e in page if _needs_head(policy, decide_by, e)]
                requests["head"] += len(wanted)
                stats = dict(zip((e.ref.uri for e in wanted), pool.map(lambda e: _stat(store, e.ref), wanted)))
                rows = []
                for entry in page:
                    counts.listed += 1
                    counts.listed_bytes += entry.size
                    headed = entry.ref.uri in stats
                    info = stats[entry.ref.uri] if headed else _listed_info(entry)
                    if isinstance(info, StoreError):
                        counts.unreadable += 1
                        counts.unreadable_bytes += entry.size
                        unreadable.append({"src_uri": entry.ref.uri, "size": entry.size,
                                           "reason": f"{type(info).__name__}: {info.reason}"})
                        log.error("inventory %s: UNREADABLE, cannot read its metadata: %s", entry.ref.uri, info.reason)
                        continue
                    if info.content_type is None and not headed:
                        media = policy.selection.by_name(entry.ref.key)[1]
                    else:
                        media = policy.selection.media_type(entry.ref.key, info.content_type)
                    if media is None:
                        counts.out_of_scope += 1
                        counts.out_of_scope_bytes += entry.size
                        log.info("inventory %s: out of scope (%s)", entry.ref.uri,
                                 f"content type {info.content_type}" if info.content_type else "by its name")
                        continue
                    row = _row(policy, source, info, media, shards, stamp)
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
            inventoried_at=started, inventory_source=inventory_source,
        )
        log.info(
            "inventory %s: listed %d objects (%d bytes) = %d in scope (%d bytes) + %d out of scope + "
            "%d unreadable; %d refused; %d HEAD requests (objects whose listing could not decide)",
            source.bucket_uri, counts.listed, counts.listed_bytes, counts.in_scope, counts.in_scope_bytes,
            counts.out_of_scope, counts.unreadable, counts.refused, requests["head"],
        )
        if counts.in_scope == 0:
            log.warning(
                "inventory %s: NOTHING IN SCOPE under prefix %r (%d objects listed): check the prefix and the "
                "selection; the evidence will say so", source.bucket_uri, source.prefix, counts.listed,
            )

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
        manifest=stamp,
        shards=group_shards(shards.shards, max_tasks),
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
        head_requests=requests["head"],
    )


def _stat(store: Store, ref: ObjectRef) -> ObjectInfo | StoreError:
    try:
        return store.stat(ref)
    except StoreError as exc:
        return exc


def _listing(store: Store, source: Source) -> Iterator[Listed]:
    """The source's live objects; ListObjectVersions where S3 versioning is on, so that
    each object is pinned by its VersionId as well as its ETag (one request per bucket to ask)."""
    versioned = bool(getattr(store, "versioning_enabled", None) and store.versioning_enabled(source.ref.bucket))
    return store.list_entries(source.ref.bucket, source.prefix, with_version=versioned)


def _needs_head(policy: Policy, decide_by: str, entry: Listed) -> bool:
    """A HEAD only where the listing cannot decide the selection."""
    if entry.content_type is not None:
        return False
    return decide_by == "content_type" or not policy.selection.by_name(entry.ref.key)[0]


def _listed_info(entry: Listed) -> ObjectInfo:
    """What the listing says, as the pins and checksums a copy needs."""
    known = entry.metadata is not None
    return ObjectInfo(
        ref=entry.ref, size=entry.size, etag=entry.etag, version=entry.version, content_type=entry.content_type,
        checksums=dict(entry.checksums), metadata=dict(entry.metadata or {}), headers=dict(entry.headers or {}),
        last_modified=entry.last_modified, multipart=entry.multipart, metadata_known=known,
    )


def _row(policy: Policy, source: Source, info: ObjectInfo, media: str, shards: _Shards,
         manifest: str) -> dict[str, Any]:
    """The ledger row of an in-scope object, in a shard of this manifest unless refused."""
    dst = policy.destination_for(source).dst_ref(info.ref)
    row: dict[str, Any] = {
        "src_uri": info.ref.uri,
        "src_bucket_uri": source.bucket_uri,
        "dst_uri": dst.uri,
        "route": policy.route(source),
        "shard": -1,
        "manifest": manifest,
        "size": info.size,
        "content_type": info.content_type,
        "media_type": media,
        "src_version": info.version,
        "src_etag": info.etag,
        "src_checksums": dict(info.checksums),
        "src_meta": ({"content_type": info.content_type, "metadata": dict(info.metadata),
                      "headers": dict(info.headers)} if info.metadata_known else None),
    }
    length = len(dst.key.encode("utf-8"))
    if length > MAX_KEY_BYTES:
        # S3 and GCS refuse such a key; a real cloud would fail only at copy time.
        row.update(state=FAILED, reason=f"{INVENTORY_REFUSAL}destination key {dst.uri[:80]}... is {length} bytes "
                                        f"of UTF-8, over the {MAX_KEY_BYTES}-byte limit of {dst.provider}")
        return row
    row["shard"] = shards.add(source.bucket_uri, info.size, source.to)
    return row
