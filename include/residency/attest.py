"""Attestation: re-prove, now, what the evidence is about to count as migrated.

A verification is a fact about one moment. Between it and the report, a
destination object can be deleted or overwritten, the source can be overwritten
(the application keeps writing), and new media can arrive at the source. A run
that carried the old verdict forward would report COMPLETE for an estate that is
not migrated. :func:`attest` therefore re-checks, for every object the ledger
counts as verified or cut over, that at this moment:

- the **destination** still holds the object that was verified: its listing
  entry carries a checksum equal to the source's (GCS lists CRC32C and MD5), or
  the ETag and version the verification recorded (the same object); only where
  the listing proves neither is the object HEAD'ed (and read back if its server's
  checksums prove nothing, as on a server that stores a client's claim unchecked);
- the **source** still holds the pinned version (S3 VersionId or, unversioned,
  the ETag; GCS generation), from the source listing;
- no **new media** arrived under the source prefixes since the inventory
  (keys the ledger does not know, modified after the inventory began, HEAD'ed to
  classify them).

What fails is repaired where it can be: the object is re-queued (its verdict
discarded), copied and verified again in this phase, and only then attested. A
source deleted since verification is noted (the domestic copy is still attested).
Objects re-proven get ``attested_at = <this run's stamp>``; the evidence counts
an object as migrated only if the latest attest run re-proved it.

Requests: one listing request per 1,000 keys on each side, a HEAD only where a
listing is no proof. The phase runs twice in the DAG: ``recheck`` before the
cutover (so that references follow only re-proven copies) and ``attest`` after
the cutover and the revocation, right before the evidence.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import sqlalchemy as sa

from . import checksums, transfer
from .errors import ObjectNotFound, StoreError
from .ledger import CUT_OVER, FAILED, VERIFIED, Ledger, now, objects, parse_time
from .policy import Policy, Source
from .stores.base import Listed, ObjectInfo, Store
from .uris import parse_uri

log = logging.getLogger(__name__)

DONE = (VERIFIED, CUT_OVER)
PAGE = 1000
#: Keys modified up to this long before the inventory began are classified again:
#: the server's clock and ours may disagree.
CLOCK_MARGIN = dt.timedelta(minutes=15)
#: Re-queued objects repaired in one attest run at most; more are left for a re-run.
MAX_REPAIR = 10_000
MAX_EXAMPLES = 20

# attest_method values
LISTING_CHECKSUM = "listing_checksum"
LISTING_ETAG = "listing_etag"
HEAD_ETAG = "head_etag"
HEAD_CHECKSUM = "head_checksum"
READ_BACK = "read_back"
REVERIFIED = "reverified"

METHOD_WORDS = {
    LISTING_CHECKSUM: "the destination listing reports a checksum equal to the source's",
    LISTING_ETAG: "the destination listing shows the same object (ETag and version) that was verified",
    HEAD_ETAG: "the destination object's metadata shows the same object (ETag and version) that was verified",
    HEAD_CHECKSUM: "the destination object's metadata reports a checksum equal to the source's",
    READ_BACK: "the destination object was read back and its checksum equals the source's",
    REVERIFIED: "it had changed, was copied and verified again in this phase",
}


@dataclass
class SourceAttestation:
    """What one source's attestation found."""

    uri: str
    examined: int = 0  # verified objects at the start
    attested: int = 0
    attested_bytes: int = 0
    methods: Counter = field(default_factory=Counter)
    dst_missing: int = 0
    dst_changed: int = 0
    src_changed: int = 0
    src_gone: int = 0
    requeued: int = 0
    repaired: int = 0
    repair_failed: int = 0
    not_repaired: int = 0  # over MAX_REPAIR, or a dry run
    arrived: int = 0
    arrived_bytes: int = 0
    arrival_checked: bool = True
    examples: list[dict[str, str]] = field(default_factory=list)
    requests: Counter = field(default_factory=Counter)

    def example(self, kind: str, uri: str, detail: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"kind": kind, "uri": uri, "detail": detail})


@dataclass
class AttestResult:
    """One attest run. ``stamp`` is what re-proven objects carry in ``attested_at``."""

    phase: str
    stamp: str
    dry_run: bool
    sources: dict[str, SourceAttestation]

    def summary(self) -> dict[str, Any]:
        per = {}
        for uri, s in self.sources.items():
            d = asdict(s)
            d["methods"] = dict(s.methods)
            d["requests"] = dict(s.requests)
            per[uri] = d
        totals: Counter = Counter()
        for s in self.sources.values():
            for name in ("examined", "attested", "attested_bytes", "dst_missing", "dst_changed", "src_changed",
                         "src_gone", "requeued", "repaired", "repair_failed", "not_repaired", "arrived"):
                totals[name] += getattr(s, name)
        return {"phase": self.phase, "stamp": self.stamp, "dry_run": self.dry_run, "sources": per, **totals}


def attest(
    policy: Policy,
    ledger: Ledger,
    store_for: Callable[[Source], tuple[Store, Store]],
    *,
    phase: str = "attest",
    dry_run: bool = False,
) -> AttestResult:
    """Re-prove every verified object of the policy's sources; see the module docstring.

    Args:
        store_for: a source -> (source store, destination store).
        phase: ``recheck`` (before the cutover) or ``attest`` (before the evidence).
        dry_run: re-prove and report, but re-queue and repair nothing.

    Per-object outcomes go to the ledger; nothing raises for an object. Store
    errors on a listing propagate (the phase cannot prove anything without it).
    """
    stamp = now()
    result = AttestResult(phase, stamp, dry_run, {})
    for source in policy.sources:
        src_store, dst_store = store_for(source)
        counts = SourceAttestation(source.bucket_uri)
        result.sources[source.bucket_uri] = counts
        _attest_source(policy, ledger, source, src_store, dst_store, stamp, counts, dry_run)
        log.info(
            "%s %s: %d verified objects examined, %d attested (%s); destination missing %d, changed %d; source "
            "changed %d, deleted %d; re-queued %d, repaired %d, repair failed %d, not repaired %d; %d new media "
            "object(s) since the inventory",
            phase, source.bucket_uri, counts.examined, counts.attested, dict(counts.methods), counts.dst_missing,
            counts.dst_changed, counts.src_changed, counts.src_gone, counts.requeued, counts.repaired,
            counts.repair_failed, counts.not_repaired, counts.arrived,
        )
    return result


def _attest_source(
    policy: Policy,
    ledger: Ledger,
    source: Source,
    src_store: Store,
    dst_store: Store,
    stamp: str,
    counts: SourceAttestation,
    dry_run: bool,
) -> None:
    mid = policy.migration_id
    destination = policy.destination_for(source)
    lock = threading.Lock()
    repair: list[str] = []

    def requeue(row: dict[str, Any], kind: str, reason: str) -> None:
        with lock:
            setattr(counts, kind, getattr(counts, kind) + 1)
            counts.example(kind, row["src_uri"], reason)
            if dry_run:
                counts.not_repaired += 1
                return
            counts.requeued += 1
            repair.append(row["src_uri"])
        log.warning("attest %s: RE-QUEUED: %s", row["src_uri"], reason)
        if kind != "src_changed":
            ledger.requeue(mid, row["src_uri"], f"attest: {reason}")
            return
        # Pin the version the source holds now; the copy then replaces our older copy.
        ref = parse_uri(row["src_uri"], "ledger src_uri")
        try:
            info = src_store.stat(ref)
        except StoreError as exc:
            ledger.requeue(mid, row["src_uri"], f"attest: {reason}; the new version cannot be read: {exc.reason}")
            return
        counts.requests["source HEAD"] += 1
        if policy.selection.media_type(ref.key, info.content_type) is None:
            ledger.update_object(mid, row["src_uri"], state=FAILED, reason=(
                f"attest: {reason}; the new version ({info.content_type}) is not media in scope, so it is not "
                "migrated, and the domestic copy is of the old version"))
            return
        ledger.repin(mid, row["src_uri"], version=info.version, etag=info.etag, size=info.size,
                     checksums=info.checksums, content_type=info.content_type, reason=f"attest: {reason}")

    with ledger.engine.connect() as conn:
        counts.examined = int(conn.execute(
            sa.select(sa.func.count()).select_from(objects)
            .where(objects.c.migration_id == mid)
            .where(objects.c.src_bucket_uri == source.bucket_uri)
            .where(objects.c.state.in_(DONE))
        ).scalar() or 0)

    # 1. The destination listing: most objects are re-proven here, a thousand a request.
    dst_bucket = destination.ref.bucket
    for page in transfer.pages(dst_store.list_entries(dst_bucket, destination.key_prefix(source)), PAGE):
        counts.requests["destination listing entries"] += len(page)
        rows = ledger.objects_by_dst(mid, (e.ref.uri for e in page))
        proofs = []
        for entry in page:
            row = rows.get(entry.ref.uri)
            if row is None or row["src_bucket_uri"] != source.bucket_uri or row["state"] not in DONE:
                continue
            method = _listing_proof(row, entry, dst_store)
            if method:
                proofs.append((row["src_uri"], method, None))
        ledger.mark_attested(mid, stamp, proofs)

    # 2. What the listing did not prove: HEAD (and read back where the server's word is no proof).
    with ThreadPoolExecutor(max_workers=policy.transfer.workers) as pool:
        for batch in ledger.iter_unstamped(mid, source.bucket_uri, stamp):
            outcomes = list(pool.map(lambda row: (row, _head_proof(row, dst_store)), batch))
            proofs = []
            for row, (verdict, detail, info) in outcomes:
                counts.requests["destination HEAD"] += 1
                if verdict == "ok":
                    proofs.append((row["src_uri"], detail, None))
                    if detail == READ_BACK:
                        counts.requests["destination read back"] += 1
                    if info is not None and not row.get("dst_etag"):
                        # Proven by checksum: remember which object, so a listing proves it next time.
                        ledger.update_object(mid, row["src_uri"], dst_etag=info.etag, dst_version=info.version)
                elif verdict == "missing":
                    requeue(row, "dst_missing", detail)
                elif verdict == "changed":
                    requeue(row, "dst_changed", detail)
                else:  # a store error: not proven now; nothing is re-queued on a passing fault
                    counts.example("error", row["src_uri"], detail)
            ledger.mark_attested(mid, stamp, proofs)

    # 3. The source listing: the pinned version must still be the live one.
    _check_source(policy, ledger, source, src_store, stamp, counts, requeue)

    # 4. Repair what changed: copy and verify again, then it is attested.
    if repair:
        todo, rest = repair[:MAX_REPAIR], repair[MAX_REPAIR:]
        counts.not_repaired += len(rest)
        log.info("attest %s: repairing %d re-queued object(s) (copy, then verify)", source.bucket_uri, len(todo))
        transfer.copy_rows(policy, ledger, todo, src_store, dst_store)
        transfer.verify_rows(policy, ledger, todo, src_store, dst_store)
        rows = ledger.get_objects(mid, todo)
        proofs = [(u, REVERIFIED, rows[u].get("reason")) for u in todo if rows.get(u, {}).get("state") in DONE]
        ledger.mark_attested(mid, stamp, proofs)
        counts.repaired = len(proofs)
        counts.repair_failed = len(todo) - len(proofs)

    for row in ledger.attested_counts(mid, stamp):
        if row["src_bucket_uri"] == source.bucket_uri:
            counts.attested += int(row["objects"])
            counts.attested_bytes += int(row["bytes"] or 0)
    counts.methods.update(_methods(ledger, mid, source.bucket_uri, stamp))


def _methods(ledger: Ledger, mid: str, bucket_uri: str, stamp: str) -> Counter:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            sa.select(objects.c.attest_method, sa.func.count())
            .where(objects.c.migration_id == mid)
            .where(objects.c.src_bucket_uri == bucket_uri)
            .where(objects.c.state.in_(DONE))
            .where(objects.c.attested_at == stamp)
            .group_by(objects.c.attest_method)
        ).all()
    return Counter({method or "unknown": int(n) for method, n in rows})


def _check_source(
    policy: Policy,
    ledger: Ledger,
    source: Source,
    src_store: Store,
    stamp: str,
    counts: SourceAttestation,
    requeue: Callable[[dict[str, Any], str, str], None],
) -> None:
    mid = policy.migration_id
    bucket = next((b for b in ledger.get_buckets(mid) if b["bucket_uri"] == source.bucket_uri), None)
    inventoried = parse_time(bucket.get("inventoried_at")) if bucket else None
    counts.arrival_checked = inventoried is not None
    unreadable = {u["src_uri"] for u in ledger.get_unreadable(mid, source.bucket_uri)}
    candidates: list[Listed] = []
    seen: list[str] = []

    with_version = ledger.has_versions(mid, source.bucket_uri)
    for page in transfer.pages(src_store.list_entries(source.ref.bucket, source.prefix, with_version=with_version), PAGE):
        counts.requests["source listing entries"] += len(page)
        rows = ledger.get_objects(mid, (e.ref.uri for e in page))
        for entry in page:
            row = rows.get(entry.ref.uri)
            if row is None:
                modified = parse_time(entry.last_modified)
                if (inventoried is not None and entry.ref.uri not in unreadable
                        and (modified is None or modified >= inventoried - CLOCK_MARGIN)):
                    candidates.append(entry)
                continue
            if row["state"] not in DONE:
                continue
            changed = transfer.source_change(row, entry)
            if changed:
                requeue(row, "src_changed", changed)
            else:
                seen.append(row["src_uri"])
        _mark_source_seen(ledger, mid, seen, stamp)
        seen.clear()

    # Verified objects whose source key is no longer live: deleted since verification.
    for batch in ledger.iter_unstamped(mid, source.bucket_uri, stamp, column="src_checked_at"):
        notes = []
        for row in batch:
            counts.src_gone += 1
            counts.example("src_gone", row["src_uri"], "the source object was deleted since verification")
            log.warning("attest %s: the source object was deleted since verification", row["src_uri"])
            if row.get("attested_at") == stamp:  # the domestic copy itself was re-proven above
                notes.append((row["src_uri"], row["attest_method"],
                              "the source object was deleted since verification; the domestic copy is attested"))
        ledger.mark_attested(mid, stamp, notes)

    # New keys since the inventory: is any of them media in scope?
    for page in transfer.pages(candidates, PAGE):
        infos = []
        with ThreadPoolExecutor(max_workers=policy.transfer.workers) as pool:
            infos = list(pool.map(lambda e: _stat(src_store, e), page))
        for entry, info in zip(page, infos):
            counts.requests["source HEAD"] += 1
            if isinstance(info, StoreError):
                counts.arrived += 1
                counts.arrived_bytes += entry.size
                counts.example("arrived", entry.ref.uri, f"new since the inventory and unreadable: {info.reason}")
                continue
            if policy.selection.media_type(entry.ref.key, info.content_type) is None:
                continue
            counts.arrived += 1
            counts.arrived_bytes += entry.size
            counts.example("arrived", entry.ref.uri,
                           f"{info.content_type} object modified at {entry.last_modified}, after the inventory began "
                           f"({bucket.get('inventoried_at') if bucket else '?'}): not migrated by this run")


def _stat(store: Store, entry: Listed) -> Any:
    try:
        return store.stat(entry.ref)
    except StoreError as exc:
        return exc


def _mark_source_seen(ledger: Ledger, mid: str, src_uris: list[str], stamp: str) -> None:
    if not src_uris:
        return
    with ledger.engine.begin() as conn:
        for i in range(0, len(src_uris), 500):
            conn.execute(
                objects.update()
                .where(objects.c.migration_id == mid)
                .where(objects.c.src_uri.in_(src_uris[i : i + 500]))
                .values(src_checked_at=stamp)
            )


def _proven_sums(row: dict[str, Any]) -> dict[str, str]:
    """Checksums the source's bytes are known to have: the source's own, and the
    destination's value of the algorithm the verification compared (equal by then)."""
    sums = dict(row.get("src_checksums") or {})
    algorithm = row.get("verify_algorithm")
    dst = row.get("dst_checksums") or {}
    if algorithm and dst.get(algorithm):
        sums.setdefault(algorithm, dst[algorithm])
    return sums


def _listing_proof(row: dict[str, Any], entry: Listed, dst_store: Store) -> str | None:
    if entry.size != row["size"]:
        return None
    if dst_store.capabilities.validates_upload_checksums:
        sums = _proven_sums(row)
        algorithm = checksums.common_algorithm(sums, dict(entry.checksums))
        if algorithm and sums[algorithm] == entry.checksums[algorithm]:
            return LISTING_CHECKSUM
    if transfer.same_object(row, entry.etag, entry.version):
        return LISTING_ETAG
    return None


def _head_proof(row: dict[str, Any], dst_store: Store) -> tuple[str, str, ObjectInfo | None]:
    """``(ok, method, info)`` or ``(missing | changed | error, reason, info)`` for one destination object."""
    ref = parse_uri(row["dst_uri"], "ledger dst_uri")
    try:
        info = dst_store.stat(ref)
    except ObjectNotFound:
        return "missing", f"the destination object {ref.uri} is gone", None
    except StoreError as exc:
        return "error", f"destination: {exc.reason}", None
    verdict, detail = _proof_of(row, info, dst_store)
    return verdict, detail, info


def _proof_of(row: dict[str, Any], info: ObjectInfo, dst_store: Store) -> tuple[str, str]:
    ref = info.ref
    if info.size != row["size"]:
        return "changed", f"the destination object {ref.uri} now has {info.size} bytes, {row['size']} were verified"
    if transfer.same_object(row, info.etag, info.version):
        return "ok", HEAD_ETAG
    sums = _proven_sums(row)
    theirs = dict(info.checksums)
    if not dst_store.capabilities.validates_upload_checksums:
        # Only what the server computes itself proves anything there: an MD5 ETag.
        theirs = {k: v for k, v in theirs.items() if k == "md5"}
    algorithm = checksums.common_algorithm(sums, theirs)
    if algorithm:
        if sums[algorithm] == theirs[algorithm]:
            return "ok", HEAD_CHECKSUM
        return "changed", (f"the destination object {ref.uri} now has {algorithm} {theirs[algorithm]}, "
                           f"the source {sums[algorithm]}")
    wanted = [a for a in ("crc32c", "md5", "sha256") if a in sums]
    if not wanted:
        return "error", f"no recorded checksum to re-prove {ref.uri} against"
    try:
        computed, size = checksums.hash_stream(dst_store.read(ref, version=info.version), wanted)
    except StoreError as exc:
        return "error", f"read back: {exc.reason}"
    if size == row["size"] and all(computed[a] == sums[a] for a in wanted):
        return "ok", READ_BACK
    return "changed", f"the destination object {ref.uri} read back differs from the source"
