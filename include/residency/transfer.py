"""The copy engine and the verifier, written only against the store protocol.

Copy (per manifest shard): for each object not yet verified, pin the inventoried
source version, check the destination, then copy server-side when both stores
declare it and share a service, or stream otherwise. Provenance (source URI,
version, ETag, checksum) is written as destination metadata. An object already
verified is skipped; an identical object already at the destination counts as
``already_present``; a *different* object there is never overwritten, unless its
provenance shows this migration wrote it from an older version of the same source.

Verify (per shard): compare a checksum both sides truly have (see
:mod:`residency.checksums`); where none is common, read the destination back
(and the pinned source if need be) and hash both. Counters are kept apart as in
rclone's checker: a missing hash is never a match.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import quote, unquote

from . import checksums
from .errors import (
    ChecksumMismatch,
    DestinationConflict,
    ObjectNotFound,
    PermissionDenied,
    PreconditionFailed,
    SourceChanged,
    StoreError,
)
from .ledger import CUT_OVER, COPIED, FAILED, VERIFIED, Ledger, now
from .policy import Policy
from .stores.base import PROVENANCE_PREFIX, Listed, ObjectInfo, Store
from .uris import ObjectRef, parse_uri

log = logging.getLogger(__name__)

DONE = (VERIFIED, CUT_OVER)


class Verdict(str, enum.Enum):
    MATCH = "match"
    MISMATCH = "mismatch"
    NO_COMMON_HASH = "no_common_hash"
    MISSING_DST = "missing_dst"
    SOURCE_CHANGED = "source_changed"
    ERROR = "error"


@dataclass
class CopyResult:
    shard: int
    objects: int = 0
    bytes: int = 0
    copied: int = 0
    copied_bytes: int = 0
    already_present: int = 0
    already_verified: int = 0
    failed: int = 0
    would_copy: int = 0
    methods: Counter = field(default_factory=Counter)
    failures: list[dict[str, str]] = field(default_factory=list)
    dry_run: bool = False

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["methods"] = dict(self.methods)
        out["failures"] = self.failures[:20]
        return out


@dataclass
class VerifyResult:
    shard: int
    objects: int = 0
    verified: int = 0
    verified_bytes: int = 0
    already_verified: int = 0
    not_copied: int = 0
    verdicts: Counter = field(default_factory=Counter)
    algorithms: Counter = field(default_factory=Counter)
    methods: Counter = field(default_factory=Counter)
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(n for v, n in self.verdicts.items() if v != Verdict.MATCH.value)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("verdicts", "algorithms", "methods"):
            out[key] = dict(getattr(self, key))
        out["failed"] = self.failed
        out["failures"] = self.failures[:20]
        return out


def provenance_metadata(migration_id: str, src: ObjectInfo) -> dict[str, str]:
    """User metadata recording where a copy came from. ASCII only (S3's rule):
    the URI is percent-encoded."""
    md = {
        "migration": migration_id,
        "source-uri": quote(src.ref.uri, safe=":/"),
        "source-etag": (src.etag or "").strip('"'),
        "copied-at": now(),
    }
    if src.version:
        md["source-version"] = src.version
    for algorithm, value in sorted(src.checksums.items()):
        md[f"source-{algorithm}"] = value
    return {PROVENANCE_PREFIX + k: v for k, v in md.items()}


def written_by_us(dst: ObjectInfo, migration_id: str, src_uri: str, store: Store | None = None) -> bool:
    """Did this migration write ``dst`` from ``src_uri``? From its provenance metadata,
    or, for a copy that kept the source's own metadata, its provenance tags (S3; one
    request, asked only of an object that is in the way)."""
    prov = dst.provenance
    if prov:
        return prov.get("migration") == migration_id and unquote(prov.get("source-uri", "")) == src_uri
    tags = getattr(store, "tag_provenance", None)
    if tags is None:
        return False
    prov = tags(dst.ref)
    digest = hashlib.sha256(quote(src_uri, safe=":/").encode("utf-8")).hexdigest()
    return prov.get("migration") == migration_id and prov.get("source-uri-sha256") == digest


def same_service(src: Store, dst: Store) -> bool:
    """Server-side copy needs the same provider and the same service endpoint."""
    return (
        src.provider == dst.provider
        and src.capabilities.server_side_copy
        and dst.capabilities.server_side_copy
        and getattr(src, "service", None) == getattr(dst, "service", None)
    )


def _expected(row: dict[str, Any], src: ObjectInfo | None) -> dict[str, str]:
    expected = dict(row.get("src_checksums") or {})
    if src is not None:
        for algorithm, value in src.checksums.items():
            expected.setdefault(algorithm, value)
    return expected


def _pin(src_store: Store, row: dict[str, Any]) -> ObjectInfo:
    """The inventoried version of the source, which must still be the current one.

    Raises SourceChanged when the object is gone or was overwritten since the
    inventory: a copy of an older version must not be verified or cut over, or
    the application would lose the newer write. Copies still name the pinned
    version (VersionId / ETag precondition) so a change after this check is caught
    by the server.
    """
    ref = parse_uri(row["src_uri"])
    try:
        info = src_store.stat(ref)
    except ObjectNotFound as exc:
        raise SourceChanged(ref.uri, f"source object is gone ({exc.reason}); re-run inventory") from exc
    pinned_version = row.get("src_version")
    if pinned_version and info.version != pinned_version:
        raise SourceChanged(
            ref.uri, f"current version is {info.version}, inventoried {pinned_version}; re-run inventory to re-queue"
        )
    if row.get("src_etag") and info.etag != row["src_etag"]:
        raise SourceChanged(
            ref.uri, f"ETag is now {info.etag}, inventoried {row['src_etag']}; re-run inventory to re-queue"
        )
    return info


def _matches(src_sums: dict[str, str], dst: ObjectInfo, size: int) -> bool:
    algorithm = checksums.common_algorithm(src_sums, dict(dst.checksums))
    return dst.size == size and algorithm is not None and src_sums[algorithm] == dst.checksums[algorithm]


def _already_there(expected: dict[str, str], dst_store: Store, existing: ObjectInfo, size: int) -> bool:
    """Does an object found at the destination hold the source's bytes?

    On a server that may echo a client's checksum unchecked, its report is no
    evidence about an object of unknown origin: read it back and hash it.
    """
    if dst_store.capabilities.validates_upload_checksums:
        return _matches(expected, existing, size)
    wanted = [a for a in ("crc32c", "md5", "sha256") if a in expected]
    if existing.size != size or not wanted:
        return False
    computed, read = checksums.hash_stream(dst_store.read(existing.ref, version=existing.version), wanted)
    return read == size and all(computed[a] == expected[a] for a in wanted)


_TALLY_LOCK = threading.Lock()


class _Progress:
    """Counts of one phase's outcomes, flushed to the ledger's progress events every
    ``interval`` seconds (and at the end), so the dashboard moves during a shard."""

    def __init__(self, ledger: Ledger, migration_id: str, phase: str, interval: float = 3.0) -> None:
        self.ledger, self.migration_id, self.phase, self.interval = ledger, migration_id, phase, interval
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.sizes: Counter[tuple[str, str, str]] = Counter()
        self.lock = threading.Lock()
        self.last = time.monotonic()

    def add(self, row: dict[str, Any], outcome: str) -> None:
        key = (row["src_bucket_uri"], row["route"], outcome)
        with self.lock:
            self.counts[key] += 1
            self.sizes[key] += int(row["size"])
            due = time.monotonic() - self.last >= self.interval
        if due:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            events = [{"src_bucket_uri": b, "route": r, "outcome": o, "objects": n, "bytes": self.sizes[(b, r, o)]}
                      for (b, r, o), n in self.counts.items()]
            self.counts.clear()
            self.sizes.clear()
            self.last = time.monotonic()
        self.ledger.record_progress(self.migration_id, self.phase, events)


def _tally(result: CopyResult | VerifyResult, **changes: Any) -> None:
    """Update a shard's counters from a worker thread (``+=`` is not atomic).

    ``name=n`` adds n; ``name=(key, n)`` adds n to a Counter; ``failures=x`` appends.
    """
    with _TALLY_LOCK:
        for name, change in changes.items():
            current = getattr(result, name)
            if isinstance(current, list):
                current.append(change)
            elif isinstance(current, Counter):
                key, n = change
                current[key] += n
            else:
                setattr(result, name, current + change)


def copy_shard(
    policy: Policy,
    ledger: Ledger,
    shard: dict[str, Any],
    src_store: Store,
    dst_store: Store,
    *,
    dry_run: bool = False,
) -> CopyResult:
    """Copy the objects of one shard (or range of shards) of the manifest in the ledger."""
    result = CopyResult(shard=shard["shard"], dry_run=dry_run)
    rows = ledger.iter_shard(policy.migration_id, shard.get("manifest"), shard["shard"], shard.get("last"))
    for page in pages(rows, PAGE):
        _copy_page(policy, ledger, page, src_store, dst_store, result, dry_run=dry_run)
    _log_copy(result)
    return result


def copy_rows(
    policy: Policy,
    ledger: Ledger,
    src_uris: list[str],
    src_store: Store,
    dst_store: Store,
    *,
    shard: int = -1,
    dry_run: bool = False,
) -> CopyResult:
    """Copy the named objects (all of one source); one outcome per object in the ledger."""
    result = CopyResult(shard=shard, dry_run=dry_run)
    for names in pages(src_uris, PAGE):
        rows = ledger.get_objects(policy.migration_id, names)
        for name in names:
            if name not in rows:
                _tally(result, objects=1)
                _fail(result, None, policy, name, "not in the ledger: inventory was not recorded")
        _copy_page(policy, ledger, [rows[n] for n in names if n in rows], src_store, dst_store, result,
                   dry_run=dry_run)
    _log_copy(result)
    return result


#: Objects handled per page: one destination listing, one ledger read and a few
#: batched ledger writes per page.
PAGE = 1000


def pages(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size``, drawn lazily (never all in memory)."""
    iterator = iter(items)
    while page := list(islice(iterator, size)):
        yield page


def _log_copy(result: CopyResult) -> None:
    log.info(
        "copy shard %d summary: %d objects, %d copied (%d bytes), %d already present, %d already verified, %d failed; "
        "methods %s",
        result.shard, result.objects, result.copied, result.copied_bytes, result.already_present,
        result.already_verified, result.failed, dict(result.methods),
    )


def _copy_page(
    policy: Policy,
    ledger: Ledger,
    rows: list[dict[str, Any]],
    src_store: Store,
    dst_store: Store,
    result: CopyResult,
    *,
    dry_run: bool,
) -> None:
    """Copy one page of ledger rows; the ledger is written in batches.

    Server-side, each object takes one copy request: it names the inventoried
    version and ETag, refuses to overwrite, and its response (the new object's
    checksum) is the copy's proof against the source's. Where the server does
    not refuse a copy onto an existing key, the destination range is listed
    first and only keys found there are examined. Everything else (an existing
    destination, a refused precondition, no server-side copy) takes the careful
    path of :func:`_copy_one`.
    """
    server_side = same_service(src_store, dst_store)
    progress = _Progress(ledger, policy.migration_id, "copy")
    writes = _Writes(ledger, policy.migration_id)
    todo = [r for r in rows if r["state"] not in DONE]
    existing: dict[str, Listed] | None = None
    if server_side and not dry_run and todo and not dst_store.capabilities.create_only_copies:
        existing = listed_range(dst_store, [r["dst_uri"] for r in todo])

    def one(row: dict[str, Any]) -> None:
        _tally(result, objects=1, bytes=row["size"])
        if row["state"] in DONE:
            _tally(result, already_verified=1)
            log.info("copy %s: skipped, already verified at %s", row["src_uri"], row["dst_uri"])
            return
        if dry_run:
            _tally(result, would_copy=1)
            log.info("copy %s -> %s: would copy %d bytes (dry run)", row["src_uri"], row["dst_uri"], row["size"])
            return
        try:
            fast = server_side and (existing is None or row["dst_uri"] not in existing)
            outcome = _fast_copy(policy, row, dst_store) if fast else None
            if outcome is None:
                action, method, streamed = _copy_one(policy, row, src_store, dst_store, server_side)
                extra: dict[str, Any] = dict(_NO_PROOF)
                if streamed:
                    extra["src_checksums"] = {**row["src_checksums"], **streamed}
            else:
                action, method, extra = outcome
        except StoreError as exc:
            _fail(result, writes, policy, row["src_uri"], f"{type(exc).__name__}: {exc.reason}", row)
            progress.add(row, "failed")
            return
        writes.add(row["src_uri"], dict(state=COPIED, copy_action=action, copy_method=method, reason=None,
                                         attempts=row["attempts"] + 1, **extra))
        progress.add(row, action)
        if action == "copied":
            _tally(result, copied=1, copied_bytes=row["size"], methods=(method, 1))
        else:
            _tally(result, already_present=1)

    _each(policy, rows, one, writes, progress)


def _each(policy: Policy, rows: list[dict[str, Any]], one: Any, writes: _Writes, progress: _Progress) -> None:
    """Run ``one`` for every row on the policy's worker threads, then write what is pending."""
    try:
        with ThreadPoolExecutor(max_workers=policy.transfer.workers) as pool:
            list(pool.map(one, rows))
    finally:
        writes.flush()
        progress.flush()


#: Columns a copy without proof in its response resets (verification decides them).
_NO_PROOF: dict[str, Any] = {"dst_etag": None, "dst_version": None, "dst_checksums": None,
                             "verify_algorithm": None, "verify_method": None, "proof": None}
#: ``verify_method`` of a copy whose response proved it; verification then needs
#: only the destination listing to show that very object.
COPY_RESPONSE = "copy_response"


def row_info(row: Mapping[str, Any]) -> ObjectInfo:
    """The inventoried source object as the ledger records it (no request)."""
    meta = row.get("src_meta")
    return ObjectInfo(
        ref=parse_uri(row["src_uri"], "ledger src_uri"), size=int(row["size"]), etag=row.get("src_etag"),
        version=row.get("src_version"), content_type=(meta or {}).get("content_type", row.get("content_type")),
        checksums=dict(row.get("src_checksums") or {}), metadata=dict((meta or {}).get("metadata") or {}),
        headers=dict((meta or {}).get("headers") or {}), metadata_known=meta is not None,
    )


def _fast_copy(policy: Policy, row: dict[str, Any], dst_store: Store) -> tuple[str, str, dict[str, Any]] | None:
    """One create-only server-side copy of the inventoried version; ``None`` when the
    destination exists (the careful path decides then).

    Returns ``("copied", method, values)``, where ``values`` carry the proof when the
    response's checksum of the new object equals the source's (see :func:`response_proof`).
    """
    src = row_info(row)
    dst_ref = parse_uri(row["dst_uri"])
    metadata = {k: v for k, v in src.metadata.items() if not k.startswith(PROVENANCE_PREFIX)}
    metadata.update(provenance_metadata(policy.migration_id, src))
    try:
        info = dst_store.copy(src, dst_ref, metadata=metadata, create_only=True)
    except PreconditionFailed:
        return None  # the destination exists (the source's precondition was told apart by the store)
    except PermissionDenied:
        return None  # the careful path streams when the destination's credentials cannot read the source
    threshold = getattr(getattr(dst_store, "transfer", None), "multipart_threshold", float("inf"))
    method = "server_side_multipart" if src.size > threshold else "server_side"
    values: dict[str, Any] = dict(_NO_PROOF)
    proof = None if policy.transfer.sha256 else response_proof(src, info)
    if proof is not None:
        values.update(proof)
        log.info("copy %s -> %s: copied %d bytes (%s), proven by the response: %s %s", src.ref.uri, dst_ref.uri,
                 src.size, method, proof["verify_algorithm"], proof["dst_checksums"][proof["verify_algorithm"]])
    else:
        log.info("copy %s -> %s: copied %d bytes (%s); the response proves nothing about the source's bytes, "
                 "verification will ask the servers", src.ref.uri, dst_ref.uri, src.size, method)
    return "copied", method, values


def response_proof(src: ObjectInfo, info: ObjectInfo) -> dict[str, Any] | None:
    """The proof a server-side copy's response carries, or ``None``.

    The response reports a checksum the destination's server computed of the new
    object (S3: the ETag, an MD5 unless SSE-KMS/SSE-C, and the CRC32C asked for;
    GCS: CRC32C and MD5). It proves the copy when it equals a checksum of the
    inventoried source version: one its listing reported (GCS), or its listed
    S3 ETag, when 32 hex digits. Such an ETag is the MD5 of the source's bytes
    unless the source is SSE-KMS / SSE-C, whose ETag is not an MD5 of anything
    and cannot equal the MD5 the server computed of the copy; the equality is the
    proof, as an MD5 collision is not a risk here. No equality: no proof, and
    verification asks the servers (a source changed despite the precondition, on
    a server that ignores it, is found there).
    """
    expected = dict(src.checksums)
    origin = {a: "reported by the source's listing" for a in expected}
    etag_md5 = checksums.md5_from_etag(src.etag) if not src.multipart else None
    if etag_md5 and "md5" not in expected:
        expected["md5"] = etag_md5
        origin["md5"] = "the source's inventoried ETag, named as the copy's precondition"
    theirs = dict(info.checksums)
    algorithm = checksums.common_algorithm(expected, theirs)
    if algorithm is None or expected[algorithm] != theirs[algorithm]:
        return None
    dst_sums = dict(theirs)
    proof = (
        f"{algorithm} {expected[algorithm]} of source version {src.version or src.etag} ({origin[algorithm]}) "
        f"equals the {algorithm} that the destination's server computed of {info.ref.uri} and reported in its "
        f"copy response (etag {info.etag}, version {info.version}); {src.size} bytes"
    )
    return {"dst_etag": info.etag, "dst_version": info.version, "dst_checksums": dst_sums,
            "verify_algorithm": algorithm, "verify_method": COPY_RESPONSE, "proof": proof}


def listed_range(store: Store, uris: Iterable[str]) -> dict[str, Listed]:
    """Listing entries of whichever of ``uris`` exist, from listing the key range
    they span in each bucket (rclone's way): about one request per 1,000 keys of
    that range, never one per object. Stops as soon as the range is passed."""
    by_bucket: dict[str, list[str]] = {}
    for uri in uris:
        ref = parse_uri(uri)
        by_bucket.setdefault(ref.bucket, []).append(ref.key)
    found: dict[str, Listed] = {}
    for bucket, keys in by_bucket.items():
        wanted = set(keys)
        low, high = min(keys), max(keys)
        prefix = os.path.commonprefix([low, high])
        for entry in store.list_entries(bucket, prefix, start_at=low):
            if entry.ref.key > high:
                break
            if entry.ref.key in wanted:
                found[entry.ref.uri] = entry
    return found


class _Writes:
    """Ledger updates from worker threads, written ``every`` objects (or ``interval``
    seconds) in one transaction of bulk statements, and at the end."""

    def __init__(self, ledger: Ledger, migration_id: str, every: int = 500, interval: float = 2.0) -> None:
        self.ledger, self.migration_id, self.every, self.interval = ledger, migration_id, every, interval
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.last = time.monotonic()

    def add(self, src_uri: str, values: dict[str, Any]) -> None:
        with self.lock:
            self.pending.append((src_uri, values))
            due = len(self.pending) >= self.every or time.monotonic() - self.last >= self.interval
        if due:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
            self.last = time.monotonic()
        if pending:
            self.ledger.update_objects(self.migration_id, pending)


def _copy_one(
    policy: Policy, row: dict[str, Any], src_store: Store, dst_store: Store, server_side: bool
) -> tuple[str, str, dict[str, str]]:
    """Copy one object; returns (action, method, digests computed from the streamed bytes)."""
    src = _pin(src_store, row)
    dst_ref = parse_uri(row["dst_uri"])
    expected = _expected(row, src)
    replace = False
    try:
        existing = dst_store.stat(dst_ref)
    except ObjectNotFound:
        existing = None
    if existing is not None:
        if _already_there(expected, dst_store, existing, src.size):
            log.info("copy %s -> %s: already present with the same content, not copied", src.ref.uri, dst_ref.uri)
            return "already_present", "none", {}
        if written_by_us(existing, policy.migration_id, src.ref.uri, dst_store):
            log.warning(
                "copy %s -> %s: replacing this migration's earlier copy (source etag was %s)",
                src.ref.uri, dst_ref.uri, existing.provenance.get("source-etag"),
            )
            replace = True
        else:
            raise DestinationConflict(
                dst_ref.uri, "a different object already exists there and was not written by this migration; not overwritten"
            )
    metadata = dict(src.metadata)
    metadata = {k: v for k, v in metadata.items() if not k.startswith(PROVENANCE_PREFIX)}
    metadata.update(provenance_metadata(policy.migration_id, src))
    if server_side:
        try:
            try:
                dst_store.copy(src, dst_ref, metadata=metadata, create_only=not replace)
            except PreconditionFailed:
                _adopt_existing(policy.migration_id, src, dst_store, dst_ref, expected)
            threshold = getattr(getattr(dst_store, "transfer", None), "multipart_threshold", float("inf"))
            method = "server_side_multipart" if src.size > threshold else "server_side"
            log.info("copy %s -> %s: copied %d bytes (%s)", src.ref.uri, dst_ref.uri, src.size, method)
            return "copied", method, {}
        except PermissionDenied as exc:
            log.warning(
                "copy %s: destination credentials cannot read the source (%s); streaming instead",
                src.ref.uri, exc.reason,
            )
    _, digests = _stream_copy(
        policy.migration_id, src_store, src, dst_store, dst_ref, metadata, expected,
        create_only=not replace, digests=("sha256",) if policy.transfer.sha256 else (),
    )
    return "copied", "streamed", digests


STREAM_ATTEMPTS = 3


def _hashed(chunks: Iterable[bytes], hasher: checksums.MultiHasher | None) -> Iterator[bytes]:
    for chunk in chunks:
        if hasher is not None:
            hasher.update(chunk)
        yield chunk


def _adopt_existing(
    migration_id: str, src: ObjectInfo, dst_store: Store, dst_ref: ObjectRef, expected: dict[str, str]
) -> ObjectInfo:
    """After a create-only write was refused: a retried request whose first answer
    was lost may have created the object. It is ours if provenance and checksum say so."""
    info = dst_store.stat(dst_ref)
    if not (written_by_us(info, migration_id, src.ref.uri, dst_store) and _matches(expected, info, src.size)):
        raise DestinationConflict(dst_ref.uri, "another object appeared at the destination during the copy; not overwritten")
    log.info("copy %s -> %s: created by an earlier attempt whose answer was lost", src.ref.uri, dst_ref.uri)
    return info


def _stream_copy(
    migration_id: str,
    src_store: Store,
    src: ObjectInfo,
    dst_store: Store,
    dst_ref: ObjectRef,
    metadata: dict[str, str],
    expected: dict[str, str],
    *,
    create_only: bool,
    digests: tuple[str, ...] = (),
) -> tuple[ObjectInfo, dict[str, str]]:
    """Copy through this process in one streaming pass, memory bounded by the stores' chunks.

    The destination store checks the bytes against the source's checksums before it
    creates the object where it can (S3), and the result is compared with what the
    destination reports afterwards: a mismatch (bits flipped on the way) deletes the
    new object and tries again, up to ``STREAM_ATTEMPTS`` times.

    Returns the destination's info and the ``digests`` computed from the bytes that
    went through, but only when those bytes were proven to be the source's: a
    checksum the source's server reports for the pinned version equals the one
    computed from the same bytes. Otherwise no digest is returned (a hash of
    unproven bytes is no evidence), and verification reads the source again.
    """
    last: ChecksumMismatch | None = None
    for attempt in range(1, STREAM_ATTEMPTS + 1):
        hasher = checksums.MultiHasher(tuple(dict.fromkeys((*digests, "md5", "crc32c")))) if digests else None
        try:
            info = dst_store.write(
                dst_ref,
                _hashed(src_store.read(src.ref, version=src.version), hasher),
                content_type=src.content_type,
                metadata=metadata,
                headers=src.headers,
                create_only=create_only,
                size=src.size,
                expected=expected,
            )
        except ChecksumMismatch as exc:
            last = exc
        except PreconditionFailed:
            return _adopt_existing(migration_id, src, dst_store, dst_ref, expected), {}
        else:
            algorithm = checksums.common_algorithm(expected, dict(info.checksums))
            if not dst_store.capabilities.validates_upload_checksums:
                algorithm = None  # its report may echo our own claim; verify reads back instead
            if info.size == src.size and (algorithm is None or expected[algorithm] == info.checksums[algorithm]):
                log.info("copy %s -> %s: copied %d bytes (streamed)", src.ref.uri, dst_ref.uri, src.size)
                return info, (_proven_digests(src, hasher, digests) if hasher else {})
            last = ChecksumMismatch(
                dst_ref.uri,
                f"destination reports {algorithm} {info.checksums.get(algorithm or '')} and {info.size} bytes, "
                f"source {expected.get(algorithm or '')} and {src.size} bytes",
            )
            dst_store.delete(dst_ref, version=info.version)
            create_only = True  # our own corrupted copy is gone; the next try creates afresh
        log.warning("copy %s -> %s: attempt %d: %s", src.ref.uri, dst_ref.uri, attempt, last.reason)
    assert last is not None
    raise last


def _proven_digests(src: ObjectInfo, hasher: checksums.MultiHasher, digests: tuple[str, ...]) -> dict[str, str]:
    """``digests`` of the streamed bytes, if those bytes match a checksum the source's
    server reports; else nothing (see :func:`_stream_copy`)."""
    computed = hasher.hexdigests()
    basis = checksums.common_algorithm(
        dict(src.checksums), {a: v for a, v in computed.items() if a not in digests or a in src.checksums}
    )
    if hasher.size == src.size and basis and src.checksums[basis] == computed[basis]:
        return {a: computed[a] for a in digests}
    log.warning(
        "copy %s: %s of the streamed bytes is not kept as evidence: the source's server reports no checksum "
        "(%s) to prove those bytes were the source's; verification will read the source again",
        src.ref.uri, ", ".join(digests), sorted(src.checksums) or "none",
    )
    return {}


def _fail(
    result: CopyResult | VerifyResult,
    writes: _Writes | None,
    policy: Policy,
    src_uri: str,
    reason: str,
    row: dict[str, Any] | None = None,
) -> None:
    log.error("%s %s: FAILED: %s", "copy" if isinstance(result, CopyResult) else "verify", src_uri, reason)
    _tally(result, failures={"src_uri": src_uri, "reason": reason})
    if isinstance(result, CopyResult):
        _tally(result, failed=1)
    if row is not None and writes is not None:
        writes.add(src_uri, dict(state=FAILED, reason=reason, attempts=row["attempts"] + 1))


def verify_shard(
    policy: Policy,
    ledger: Ledger,
    shard: dict[str, Any],
    src_store: Store,
    dst_store: Store,
) -> VerifyResult:
    """Verify every copied object of one shard (or range of shards); verdicts go into the ledger."""
    result = VerifyResult(shard=shard["shard"])
    rows = ledger.iter_shard(policy.migration_id, shard.get("manifest"), shard["shard"], shard.get("last"))
    for page in pages(rows, PAGE):
        _verify_page(policy, ledger, page, src_store, dst_store, result)
    _log_verify(result)
    return result


def verify_rows(
    policy: Policy,
    ledger: Ledger,
    src_uris: list[str],
    src_store: Store,
    dst_store: Store,
    *,
    shard: int = -1,
) -> VerifyResult:
    """Verify the named objects that are copied; verdicts go into the ledger."""
    result = VerifyResult(shard=shard)
    for names in pages(src_uris, PAGE):
        rows = ledger.get_objects(policy.migration_id, names)
        missing = len(names) - len(rows)
        _tally(result, objects=missing, not_copied=missing)
        _verify_page(policy, ledger, [rows[n] for n in names if n in rows], src_store, dst_store, result)
    _log_verify(result)
    return result


def _log_verify(result: VerifyResult) -> None:
    log.info(
        "verify shard %d summary: %d objects, %d verified (%d bytes), %d already verified, %d not copied, "
        "verdicts %s, methods %s", result.shard, result.objects, result.verified, result.verified_bytes,
        result.already_verified, result.not_copied, dict(result.verdicts), dict(result.methods),
    )


def _verify_page(
    policy: Policy,
    ledger: Ledger,
    rows: list[dict[str, Any]],
    src_store: Store,
    dst_store: Store,
    result: VerifyResult,
) -> None:
    """Verify one page of rows.

    A verified object records the destination object's ETag and version as the
    server reported them in the same answer that carried the checksum, and one
    sentence saying how it was proven: attestation later re-proves *that* object.
    A copy whose response already proved it needs only the destination listing
    (a thousand keys a request) to show that very object, with its size; every
    other object is asked of the servers (:func:`_verify_one`).
    """
    progress = _Progress(ledger, policy.migration_id, "verify")
    writes = _Writes(ledger, policy.migration_id)
    proven = [r for r in rows if _proven_by_copy(r)]
    listed = listed_range(dst_store, [r["dst_uri"] for r in proven]) if proven else {}
    # The source side, listed too: a copy of a version the application has since
    # overwritten must not be verified (its cutover would lose the newer write).
    sources = listed_range(src_store, [r["src_uri"] for r in proven]) if proven else {}

    def one(row: dict[str, Any]) -> None:
        _tally(result, objects=1)
        if row["state"] not in (COPIED, *DONE):
            _tally(result, not_copied=1)
            return
        if row["state"] in DONE:
            _tally(result, already_verified=1)
            return
        outcome = _listing_verdict(row, listed, sources) if _proven_by_copy(row) else None
        verdict, detail = outcome or _verify_one(row, src_store, dst_store, require_sha256=policy.transfer.sha256)
        _tally(result, verdicts=(verdict.value, 1))
        if verdict is Verdict.MATCH:
            _tally(result, verified=1, verified_bytes=row["size"],
                   algorithms=(detail["algorithm"], 1), methods=(detail["method"], 1))
            writes.add(row["src_uri"], dict(
                state=VERIFIED, verify_algorithm=detail["algorithm"], verify_method=detail["method"],
                dst_checksums=detail["dst"], reason=None, dst_etag=detail["dst_etag"],
                dst_version=detail["dst_version"], proof=detail["proof"],
            ))
            log.info(
                "verify %s -> %s: MATCH %s %s (%s)",
                row["src_uri"], row["dst_uri"], detail["algorithm"], detail["dst"][detail["algorithm"]], detail["method"],
            )
            progress.add(row, "verified")
        else:
            reason = f"{verdict.value}: {detail.get('reason', '')}"
            _fail(result, writes, policy, row["src_uri"], reason, row)
            progress.add(row, "failed")

    _each(policy, rows, one, writes, progress)


def source_change(row: Mapping[str, Any], entry: Listed) -> str | None:
    """Why the listed source object is not the pinned version, or ``None``."""
    pinned = row.get("src_version")
    if pinned and entry.version is not None and entry.version != pinned:
        return f"the source now holds version {entry.version}; version {pinned} was migrated"
    if row.get("src_etag") and entry.etag is not None and _bare(entry.etag) != _bare(row["src_etag"]):
        return f"the source now has ETag {entry.etag}; ETag {row['src_etag']} was migrated"
    if entry.size != row["size"]:
        return f"the source now has {entry.size} bytes; {row['size']} were migrated"
    return None


def _bare(etag: str) -> str:
    return etag.strip().strip('"')


def _proven_by_copy(row: Mapping[str, Any]) -> bool:
    return row["state"] == COPIED and row.get("verify_method") == COPY_RESPONSE and bool(row.get("dst_etag"))


def _listing_verdict(
    row: Mapping[str, Any], listed: Mapping[str, Listed], sources: Mapping[str, Listed]
) -> tuple[Verdict, dict[str, Any]] | None:
    """The verdict on a copy its response proved, from the listings alone; ``None``
    when the destination object was replaced since (the servers are asked then)."""
    source = sources.get(row["src_uri"])
    changed = "the source object is gone" if source is None else source_change(row, source)
    if changed:
        return Verdict.SOURCE_CHANGED, {"reason": f"{changed}; re-run inventory to re-queue"}
    entry = listed.get(row["dst_uri"])
    if entry is None:
        return Verdict.MISSING_DST, {"reason": f"{row['dst_uri']} is not in the destination listing"}
    if entry.size != row["size"] or not same_object(row, entry.etag, entry.version):
        return None
    return Verdict.MATCH, {
        "algorithm": row["verify_algorithm"], "method": COPY_RESPONSE, "dst": row["dst_checksums"],
        "dst_etag": row["dst_etag"], "dst_version": row["dst_version"],
        "proof": f"{row['proof']}; the destination listing at verification shows that object "
                 f"(etag {entry.etag}, {entry.size} bytes)",
    }


def same_object(row: Mapping[str, Any], etag: str | None, version: str | None) -> bool:
    """The ETag (and version, where both are known) is the one the ledger recorded for
    the destination object: the copy response's, or the verification's."""
    if not row.get("dst_etag") or etag is None or _bare(etag) != _bare(row["dst_etag"]):
        return False
    return not row.get("dst_version") or version is None or version == row["dst_version"]


def _verify_one(
    row: dict[str, Any], src_store: Store, dst_store: Store, *, require_sha256: bool = False
) -> tuple[Verdict, dict[str, Any]]:
    try:
        src = _pin(src_store, row)
    except SourceChanged as exc:
        return Verdict.SOURCE_CHANGED, {"reason": exc.reason}
    except StoreError as exc:
        return Verdict.ERROR, {"reason": f"source: {exc}"}
    try:
        dst = dst_store.stat(parse_uri(row["dst_uri"]))
    except ObjectNotFound:
        return Verdict.MISSING_DST, {"reason": f"{row['dst_uri']} does not exist"}
    except StoreError as exc:
        return Verdict.ERROR, {"reason": f"destination: {exc}"}
    if dst.size != src.size:
        return Verdict.MISMATCH, {"reason": f"size {dst.size} at destination, {src.size} at source"}
    expected = _expected(row, src)
    # Where each expected value comes from, for the proof sentence.
    origin = {a: "reported by the source's server" for a in src.checksums}
    for algorithm in expected:
        origin.setdefault(algorithm, "computed from the streamed source bytes, which matched the source's "
                                     "server-reported checksum")
    dst_sums = dict(dst.checksums)
    algorithm = checksums.common_algorithm(expected, dst_sums)
    method = "server_reported"
    if row.get("copy_method") in ("streamed", "none") and not dst_store.capabilities.validates_upload_checksums:
        # This server stores the checksum we sent without checking the bytes
        # against it: only what it computes itself, an MD5 ETag, proves what arrived.
        dst_sums = {k: v for k, v in dst_sums.items() if k == "md5"}
        algorithm = checksums.common_algorithm(expected, dst_sums)
    if require_sha256 and algorithm != "sha256":
        algorithm = None  # the policy asks for SHA-256 proof: read back
    try:
        if algorithm is None:
            # No hash both servers report: read the destination back and hash it the
            # way the source already is; if the source lacks what is needed, hash it too.
            method = "read_back"
            wanted = [a for a in ("crc32c", "md5", "sha256") if a in expected] or ["crc32c", "md5"]
            if require_sha256 and "sha256" not in wanted:
                wanted.append("sha256")
            computed, size = checksums.hash_stream(dst_store.read(dst.ref, version=dst.version), wanted)
            if size != src.size:
                return Verdict.MISMATCH, {"reason": f"read back {size} bytes, source has {src.size}"}
            dst_sums.update(computed)
            missing = [a for a in wanted if a not in expected]
            if missing == wanted or (require_sha256 and "sha256" in missing):
                # An independent read of the pinned source version: a SHA-256 is
                # evidence only from bytes proven to be the source's.
                method = "read_back_both"
                src_sums, _ = checksums.hash_stream(src_store.read(src.ref, version=src.version), missing)
                expected.update(src_sums)
                origin.update({a: "computed by reading the pinned source version again" for a in src_sums})
            algorithm = checksums.common_algorithm(expected, dst_sums)
    except StoreError as exc:
        return Verdict.ERROR, {"reason": f"read back: {exc}"}
    if algorithm is None:
        return Verdict.NO_COMMON_HASH, {"reason": f"source has {sorted(expected)}, destination {sorted(dst_sums)}"}
    if expected[algorithm] != dst_sums[algorithm]:
        return Verdict.MISMATCH, {
            "reason": f"{algorithm} {dst_sums[algorithm]} at destination, {expected[algorithm]} expected",
        }
    dst_how = {
        "server_reported": "reported by the destination's server",
        "read_back": "computed by reading the destination object back",
        "read_back_both": "computed by reading the destination object back",
    }[method]
    proof = (
        f"{algorithm} {expected[algorithm]} of source version {src.version or src.etag} "
        f"({origin.get(algorithm, 'recorded at inventory')}) equals the {algorithm} of {dst.ref.uri} "
        f"(etag {dst.etag}, version {dst.version}) {dst_how}; {dst.size} bytes"
    )
    return Verdict.MATCH, {
        "algorithm": algorithm, "method": method, "dst": dst_sums, "dst_etag": dst.etag,
        "dst_version": dst.version, "proof": proof,
    }
