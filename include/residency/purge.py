"""Purge: delete the overseas copies whose domestic copy is proven now, every version.

After the cutover has soaked (policy ``purge.soak_hours``, counted from the end of
the latest cutover) and a human approved, :func:`purge` deletes, under each
source's prefix, the objects of this migration whose destination copy it
re-proves right then, and nothing else:

1. **Scope**: the ledger's objects of the source in state ``verified`` or
   ``cut_over``. Anything else under the prefix (not media, excluded, failed,
   never inventoried, written after the inventory) stays, and so does everything
   outside the prefixes; each is reported as *remaining abroad* with the reason.
2. **Attest now**: the destination prefix is listed (one request per 1,000 keys
   proves as many objects, :func:`residency.attest._listing_proof`); what the
   listing does not prove is HEAD'ed (and read back where the server's word is no
   proof, :func:`residency.attest._head_proof`). An object not proven now is not
   deleted (remaining: ``not_attested``).
3. **Versions**: the source prefix is listed with every version (S3
   ListObjectVersions, GCS ``versions=true``), one request per 1,000 entries. A key
   whose current version is not the one that was copied (overwritten, or deleted:
   a delete marker is current) is not deleted (remaining: ``changed_since_copy``).
   Otherwise every version and delete marker of the key is deleted: S3
   DeleteObjects with version ids, up to 1,000 per request; GCS one delete per
   generation.
4. **Incomplete multipart uploads** under the prefix (S3) are aborted: their parts
   are never migrated data (an upload that never completed is no object), but they
   are bytes stored abroad.
5. **Proof**: the prefix is listed again with every version; a version this
   migration deleted (now or in an earlier run) that is still listed makes the
   purge *not proven* (status ``failed``). What is listed is the remaining-abroad
   report: counts, versions and bytes per reason, with examples.

Every purged key is recorded in the ledger database (table ``residency_purged``:
what was deleted, which versions, how the domestic copy was proven), so a re-run
finds it ``already purged`` (and proves it by the same listing) instead of
failing. A version found under a purged key that this migration never deleted was
written after the purge: reported, never deleted.

A dry run makes steps 1-3 without deleting anything and reports what would be
deleted. Requests: per purged object, about 1/1000 of a destination listing, 2/1000
of a source version listing (before and after) and 1/1000 of a DeleteObjects on
S3 (GCS: one delete per generation); HEADs only where a listing proves nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import sqlalchemy as sa

from . import transfer
from .attest import DONE, _head_proof, _listing_proof
from .errors import ObjectNotFound, ResidencyError, StoreError
from .ledger import Ledger, decode_row, objects, parse_time, phases
from .policy import Policy, Source
from .stores.base import Listed, Store
from .uris import ObjectRef

log = logging.getLogger(__name__)

#: Most keys (versions) one S3 DeleteObjects request may name.
DELETE_BATCH = 1000
PAGE = 1000
MAX_EXAMPLES = 20

# Why something stays abroad (``remaining`` reasons).
NOT_ATTESTED = "not_attested"
CHANGED = "changed_since_copy"
DELETE_FAILED = "delete_failed"
WRITTEN_AFTER_PURGE = "written_after_purge"
NOT_MIGRATED = "not_migrated"
EXCLUDED = "excluded_prefix"
NOT_MEDIA = "not_media"
UNREADABLE = "unreadable_at_inventory"
NOT_IN_LEDGER = "not_in_ledger"
NO_LIVE_OBJECT = "no_live_object"
OUTSIDE_PREFIXES = "outside_prefixes"
UPLOADS = "incomplete_multipart_upload"

REASON_WORDS = {
    NOT_ATTESTED: "in scope, but its domestic copy could not be proven at purge time: not deleted",
    CHANGED: "in scope, but the source changed since the copy (another version is current, or it was deleted): "
             "the domestic copy is not of the current data, so nothing of the key was deleted",
    DELETE_FAILED: "in scope and proven, but the server refused or failed the deletion",
    WRITTEN_AFTER_PURGE: "written to a purged key after the purge: new data, never migrated",
    NOT_MIGRATED: "in the ledger but not verified (failed, or not copied yet): not migrated, so not purged",
    EXCLUDED: "under selection.exclude_prefixes: out of scope by policy",
    NOT_MEDIA: "not media by its name or content type: out of scope by policy",
    UNREADABLE: "listed but unreadable at inventory (permissions): never classified or migrated",
    NOT_IN_LEDGER: "not in the ledger: not selected by its stored content type, or written after the inventory",
    NO_LIVE_OBJECT: "only noncurrent versions or delete markers (deleted before the inventory): never migrated",
    OUTSIDE_PREFIXES: "in the bucket outside the policy's source prefixes: never in scope",
    UPLOADS: "an incomplete multipart upload (never an object, never migrated)",
}

_meta = sa.MetaData()

#: One row per purged source key (kept on the ledger's database, created on first use).
purged = sa.Table(
    "residency_purged",
    _meta,
    sa.Column("migration_id", sa.String(128), primary_key=True),
    sa.Column("src_uri", sa.String(2048), primary_key=True),
    sa.Column("src_bucket_uri", sa.String(300), nullable=False, index=True),
    sa.Column("src_version", sa.String(255)),  # the version that was migrated
    sa.Column("dst_uri", sa.String(2048), nullable=False),
    sa.Column("attest_method", sa.String(32), nullable=False),  # how the domestic copy was proven at purge time
    sa.Column("versions", sa.Integer, nullable=False),
    sa.Column("delete_markers", sa.Integer, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("deleted", sa.Text, nullable=False),  # JSON: the version tokens deleted
    sa.Column("run_id", sa.String(255)),
    sa.Column("purged_at", sa.String(40), nullable=False),
)


class PurgeRefused(ResidencyError):
    """The purge may not act now (no cutover, a rollback since, the soak not elapsed)."""

    permanent = True


class PurgeNotDue(PurgeRefused):
    """The soak after the cutover (``purge.soak_hours``) has not elapsed."""


def ensure_schema(ledger: Ledger) -> None:
    """Create ``residency_purged`` on the ledger's database if it is missing."""
    purged.create(ledger.engine, checkfirst=True)


def soak_hours(policy: Policy) -> float:
    """``policy.purge.soak_hours`` (24 h unless the policy says otherwise)."""
    return float(policy.purge.soak_hours)


# -- the soak ------------------------------------------------------------------------


def _latest_real(ledger: Ledger, mid: str, phase: str) -> dict[str, Any] | None:
    """The latest record of ``phase`` that was not a dry run."""
    with ledger.engine.connect() as conn:
        for row in conn.execute(
            sa.select(phases).where(phases.c.migration_id == mid).where(phases.c.phase == phase)
            .order_by(phases.c.id.desc()).limit(50)
        ).mappings():
            result = json.loads(row["result"])
            if not result.get("dry_run"):
                return dict(row, result=result)
    return None


def soak_status(policy: Policy, ledger: Ledger, at: dt.datetime) -> dict[str, Any]:
    """When the purge is due, from the end of the latest (not dry-run) cutover.

    The anchor is the cutover, not the copy or the attestation: the soak is the time
    the application runs on the domestic copies, with a rollback still possible,
    before their overseas originals go. A rollback after that cutover means the
    references point abroad again: ``refusal`` says so, whatever the soak.
    """
    hours = soak_hours(policy)
    mid = policy.migration_id
    cutover = _latest_real(ledger, mid, "cutover")
    rollback = _latest_real(ledger, mid, "rollback_run")
    out: dict[str, Any] = {"soak_hours": hours, "now": at.isoformat(timespec="seconds"), "cutover_at": None,
                           "due_at": None, "elapsed": False, "refusal": None}
    if cutover is None:
        out["refusal"] = (f"no cutover of migration {mid!r} is recorded: the overseas copies are what the application "
                          "references until the cutover, so nothing may be purged")
        return out
    ended = parse_time(cutover["at"])
    assert ended is not None
    due = ended + dt.timedelta(hours=hours)
    out.update(cutover_at=ended.isoformat(timespec="seconds"), due_at=due.isoformat(timespec="seconds"),
               elapsed=at >= due)
    if rollback is not None and (parse_time(rollback["at"]) or ended) > ended:
        out["refusal"] = (f"the cutover of {ended.isoformat(timespec='seconds')} was rolled back at {rollback['at']}: "
                          "the application references the overseas copies again, so nothing may be purged")
    return out


def check_soak(policy: Policy, ledger: Ledger, at: dt.datetime) -> dict[str, Any]:
    """:func:`soak_status`, raising when a purge may not act now.

    Raises:
        PurgeRefused: no cutover recorded, or it was rolled back.
        PurgeNotDue: ``purge.soak_hours`` has not elapsed since the cutover (names the
            field, its value and when the purge is due).
    """
    status = soak_status(policy, ledger, at)
    if status["refusal"]:
        raise PurgeRefused(f"purge refused: {status['refusal']}; nothing was deleted")
    if not status["elapsed"]:
        left = (parse_time(status["due_at"]) - at).total_seconds() / 3600  # type: ignore[operator]
        raise PurgeNotDue(
            f"purge.soak_hours is {status['soak_hours']:g}: the cutover ended at {status['cutover_at']}, so the purge "
            f"is due at {status['due_at']} (in {left:.1f} hours); nothing was deleted")
    return status


# -- what a source listing with versions says ----------------------------------------


@dataclass(frozen=True)
class Version:
    """One entry of a version listing: an object version or (S3) a delete marker."""

    key: str
    version_id: str | None  # S3 VersionId as listed ("null" in an unversioned bucket), GCS generation
    size: int
    etag: str | None
    latest: bool
    delete_marker: bool
    last_modified: str | None

    @property
    def token(self) -> str:
        """Identifies this version for good: a VersionId or generation, or (an
        unversioned S3 bucket, where every version is "null") the ETag and time."""
        if self.version_id and self.version_id != "null":
            return self.version_id
        return f"null:{self.etag}:{self.last_modified}"

    def listed(self, provider: str, bucket: str) -> Listed:
        return Listed(ObjectRef(provider, bucket, self.key), self.size, etag=self.etag,
                      version=None if self.version_id in (None, "null") else self.version_id,
                      last_modified=self.last_modified)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat()
    return str(value)


class _Versions:
    """Version listings, deletions and multipart uploads through a store's own client.

    The store protocol has no calls for versions (see the report: proposed as store
    methods); this adapter uses the store's SDK client and its retry-and-translate
    wrapper, so errors are the project's own and transient ones are retried.
    """

    def __init__(self, store: Store, requests: Counter) -> None:
        self.store = store
        self.provider = store.provider
        self.requests = requests

    # S3 ---------------------------------------------------------------------------
    def _s3(self, bucket: str) -> Any:
        return self.store._bucket_client(bucket)  # type: ignore[attr-defined]

    def _call(self, what: str, uri: str, fn: Callable[[], Any]) -> Any:
        self.requests[what] += 1
        return self.store._call(what, uri, fn)  # type: ignore[attr-defined]

    def keys(self, bucket: str, prefix: str) -> Iterator[tuple[str, list[Version]]]:
        """``(key, versions newest first)`` for every key under ``prefix``, in key order."""
        if self.provider == "s3":
            yield from self._s3_keys(bucket, prefix)
        else:
            yield from self._gcs_keys(bucket, prefix)

    def _s3_keys(self, bucket: str, prefix: str) -> Iterator[tuple[str, list[Version]]]:
        client = self._s3(bucket)
        uri = f"s3://{bucket}/{prefix}"
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": PAGE}
        pending: dict[str, list[Version]] = {}
        while True:
            page = self._call("list_object_versions", uri,
                              lambda kwargs=dict(kwargs): client.list_object_versions(**kwargs))
            for item, marker in [(v, False) for v in page.get("Versions", [])] + \
                                [(d, True) for d in page.get("DeleteMarkers", [])]:
                pending.setdefault(item["Key"], []).append(Version(
                    item["Key"], item.get("VersionId"), 0 if marker else int(item.get("Size", 0)),
                    None if marker else item.get("ETag"), bool(item.get("IsLatest")), marker,
                    _iso(item.get("LastModified"))))
            truncated = page.get("IsTruncated")
            # A key may continue on the next page: keys before the page's last key are complete.
            last = page.get("NextKeyMarker") if truncated else None
            for key in sorted(pending):
                if last is not None and key >= last:
                    break
                versions = pending.pop(key)
                versions.sort(key=lambda v: (not v.latest, _neg_time(v.last_modified)))
                yield key, versions
            if not truncated:
                return
            kwargs["KeyMarker"] = page["NextKeyMarker"]
            if page.get("NextVersionIdMarker"):
                kwargs["VersionIdMarker"] = page["NextVersionIdMarker"]
            else:
                kwargs.pop("VersionIdMarker", None)

    def delete(self, bucket: str, versions: list[Version]) -> dict[str, str]:
        """Delete these versions (S3: DeleteObjects, 1,000 a request; GCS: one per
        generation). Returns ``{token: error}`` for what was not deleted."""
        errors: dict[str, str] = {}
        if self.provider == "s3":
            client = self._s3(bucket)
            for i in range(0, len(versions), DELETE_BATCH):
                chunk = versions[i:i + DELETE_BATCH]
                by_id = {(v.key, v.version_id or "null"): v for v in chunk}
                body = {"Objects": [{"Key": v.key, "VersionId": v.version_id or "null"} for v in chunk], "Quiet": False}
                resp = self._call("delete_objects", f"s3://{bucket}",
                                  lambda body=body: client.delete_objects(Bucket=bucket, Delete=body))
                for err in resp.get("Errors", []):
                    v = by_id.get((err.get("Key"), err.get("VersionId") or "null"))
                    if v is not None:
                        errors[v.token] = f"{err.get('Code')}: {err.get('Message')}"
            return errors
        gcs = self.store.client  # type: ignore[attr-defined]
        for v in versions:
            blob = gcs.bucket(bucket).blob(v.key, generation=int(v.version_id) if v.version_id else None)
            ref = ObjectRef("gs", bucket, v.key)
            try:
                self._call("delete generation", ref.uri,
                           lambda blob=blob: blob.delete(retry=None, timeout=self.store.transfer.timeout))  # type: ignore[attr-defined]
            except ObjectNotFound:
                pass  # already gone: what was wanted
            except StoreError as exc:
                errors[v.token] = exc.reason
        return errors

    def uploads(self, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
        """Incomplete multipart uploads under ``prefix`` (S3; GCS has none to list)."""
        if self.provider != "s3":
            return
        client = self._s3(bucket)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxUploads": PAGE}
        while True:
            page = self._call("list_multipart_uploads", f"s3://{bucket}/{prefix}",
                              lambda kwargs=dict(kwargs): client.list_multipart_uploads(**kwargs))
            yield from page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = page.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker")

    def abort(self, bucket: str, key: str, upload_id: str) -> None:
        client = self._s3(bucket)
        try:
            self._call("abort_multipart_upload", f"s3://{bucket}/{key}",
                       lambda: client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
        except ObjectNotFound:  # NoSuchUpload: completed or aborted meanwhile
            pass

    # GCS --------------------------------------------------------------------------
    def _gcs_keys(self, bucket: str, prefix: str) -> Iterator[tuple[str, list[Version]]]:
        gcs = self.store.client  # type: ignore[attr-defined]
        token: str | None = None
        current: str | None = None
        group: list[Version] = []
        while True:
            def fetch(token: str | None = token) -> tuple[list[Any], str | None]:
                blobs = gcs.list_blobs(bucket, prefix=prefix or None, versions=True, page_size=PAGE,
                                       page_token=token, retry=None, timeout=self.store.transfer.timeout)  # type: ignore[attr-defined]
                page = next(blobs.pages, None)
                return (list(page) if page is not None else []), blobs.next_page_token

            items, token = self._call("list objects (versions)", f"gs://{bucket}", fetch)
            for blob in items:
                v = Version(blob.name, str(blob.generation) if blob.generation is not None else None,
                            int(blob.size or 0), blob.etag, blob.time_deleted is None, False,
                            _iso(blob.updated))
                if current is not None and blob.name != current:
                    yield current, sorted(group, key=lambda v: (not v.latest, _neg_gen(v.version_id)))
                    group = []
                current = blob.name
                group.append(v)
            if not token:
                break
        if current is not None:
            yield current, sorted(group, key=lambda v: (not v.latest, _neg_gen(v.version_id)))


def _neg_time(value: str | None) -> float:
    parsed = parse_time(value)
    return -parsed.timestamp() if parsed else 0.0


def _neg_gen(value: str | None) -> int:
    try:
        return -int(value or 0)
    except ValueError:
        return 0


# -- the result ----------------------------------------------------------------------


@dataclass
class Remaining:
    """What stays abroad, by reason: keys, versions (and delete markers), bytes, examples."""

    by_reason: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, reason: str, uri: str, versions: list[Version], detail: str | None = None) -> None:
        counts = self.by_reason.setdefault(reason, {"objects": 0, "versions": 0, "delete_markers": 0, "bytes": 0})
        counts["objects"] += 1
        counts["versions"] += sum(1 for v in versions if not v.delete_marker)
        counts["delete_markers"] += sum(1 for v in versions if v.delete_marker)
        counts["bytes"] += sum(v.size for v in versions)
        if len(self.examples) < MAX_EXAMPLES or (reason in (NOT_ATTESTED, CHANGED, DELETE_FAILED, WRITTEN_AFTER_PURGE)
                                                 and len(self.examples) < 5 * MAX_EXAMPLES):
            self.examples.append({"uri": uri, "reason": reason, "detail": detail or REASON_WORDS[reason]})

    @property
    def objects(self) -> int:
        return sum(c["objects"] for c in self.by_reason.values())

    @property
    def bytes(self) -> int:
        return sum(c["bytes"] for c in self.by_reason.values())


@dataclass
class BucketPurge:
    """One source (bucket and prefix): what was in scope, proven, deleted, left, and the proof."""

    uri: str
    prefix: str
    provider: str
    in_scope: int = 0  # ledger objects verified or cut over
    in_scope_bytes: int = 0
    attested: int = 0  # proven now (already-purged keys are not re-attested)
    attest_methods: Counter = field(default_factory=Counter)
    purged_objects: int = 0  # keys whose every version was deleted (dry run: would be)
    purged_versions: int = 0
    purged_delete_markers: int = 0
    purged_bytes: int = 0
    already_purged: int = 0
    absent: int = 0  # in scope, proven, but no version listed: deleted at the source by someone else
    kept: Counter = field(default_factory=Counter)  # in-scope keys not deleted, by reason
    uploads_aborted: int = 0
    remaining: Remaining = field(default_factory=Remaining)
    after: dict[str, Any] | None = None  # the proof listing (None in a dry run)
    digest: str = ""  # SHA-256 over the sorted "uri version" lines deleted in this run
    requests: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attest_methods"] = dict(self.attest_methods)
        d["kept"] = dict(self.kept)
        d["requests"] = dict(self.requests)
        d["remaining"] = {"objects": self.remaining.objects, "bytes": self.remaining.bytes,
                          "by_reason": self.remaining.by_reason, "examples": self.remaining.examples}
        return d


PURGED, PARTIAL, FAILED, PLAN = "purged", "partial", "failed", "plan"


@dataclass
class PurgeResult:
    migration_id: str
    stamp: str
    dry_run: bool
    soak: dict[str, Any]
    buckets: dict[str, BucketPurge]
    outside: dict[str, Remaining] = field(default_factory=dict)  # bucket -> what lies outside the prefixes

    @property
    def status(self) -> str:
        """``plan`` (dry run); ``failed`` when the after-listing still finds a purged
        version; ``partial`` when an in-scope key was kept; else ``purged``."""
        if self.dry_run:
            return PLAN
        if any(b.after is None or b.after.get("in_scope_found") for b in self.buckets.values()):
            return FAILED
        if any(b.kept for b in self.buckets.values()):
            return PARTIAL
        return PURGED

    def summary(self) -> dict[str, Any]:
        totals: Counter = Counter()
        for b in self.buckets.values():
            for name in ("in_scope", "in_scope_bytes", "attested", "purged_objects", "purged_versions",
                         "purged_delete_markers", "purged_bytes", "already_purged", "absent", "uploads_aborted"):
                totals[name] += getattr(b, name)
            totals["kept"] += sum(b.kept.values())
            totals["remaining_objects"] += b.remaining.objects
            totals["remaining_bytes"] += b.remaining.bytes
            totals["in_scope_found_after"] += (b.after or {}).get("in_scope_found", 0)
        for r in self.outside.values():
            totals["remaining_objects"] += r.objects
            totals["remaining_bytes"] += r.bytes
        return {
            "migration_id": self.migration_id, "stamp": self.stamp, "dry_run": self.dry_run, "status": self.status,
            "soak": self.soak, "buckets": {u: b.as_dict() for u, b in self.buckets.items()},
            "outside_prefixes": {u: {"objects": r.objects, "bytes": r.bytes, "by_reason": r.by_reason,
                                     "examples": r.examples} for u, r in self.outside.items()},
            **totals,
        }


# -- the purge -----------------------------------------------------------------------


def purge(
    policy: Policy,
    ledger: Ledger,
    stores_for: Callable[[Source], tuple[Store, Store]],
    *,
    dry_run: bool,
    run_id: str | None = None,
    now: dt.datetime | None = None,
) -> PurgeResult:
    """Purge the overseas copies of ``policy``'s sources; see the module docstring.

    Args:
        stores_for: a source -> (source store, destination store) (``Runtime.stores_for``).
        dry_run: list what would be deleted; delete nothing, abort nothing, record nothing.
        run_id: the DAG run, kept with each purged key.
        now: the time the soak is measured against (tests); default: the clock.

    Raises:
        PurgeRefused / PurgeNotDue: (not in a dry run) before the soak has elapsed, or
            without a cutover, or after a rollback of it; nothing is deleted.
        StoreError: a listing failed (nothing can be proven without it). Deletion
            errors are per object: the key is kept and reported, never raised.
    """
    ensure_schema(ledger)
    at = now or dt.datetime.now(dt.timezone.utc)
    mid = policy.migration_id
    if dry_run:
        soak = soak_status(policy, ledger, at)
    else:
        try:
            soak = check_soak(policy, ledger, at)
        except PurgeRefused as exc:
            ledger.audit(mid, "purge.refused", {"reason": str(exc), "run_id": run_id})
            log.error("%s", exc)
            raise
    stamp = at.isoformat(timespec="milliseconds")
    result = PurgeResult(mid, stamp, dry_run, soak, {})
    ledger.audit(mid, "purge.plan" if dry_run else "purge.started",
                 {"run_id": run_id, "soak": soak, "sources": [s.bucket_uri + "/" + s.prefix for s in policy.sources]})
    for source in policy.sources:
        src_store, dst_store = stores_for(source)
        label = f"{source.bucket_uri}/{source.prefix}" if source.prefix else source.bucket_uri
        b = BucketPurge(label, source.prefix, source.ref.provider)
        result.buckets[label] = b
        _purge_source(policy, ledger, source, src_store, dst_store, b, dry_run=dry_run, run_id=run_id, stamp=stamp)
        ledger.audit(mid, "purge.bucket_planned" if dry_run else "purge.bucket", {
            "source": label, "dry_run": dry_run, "purged_objects": b.purged_objects,
            "purged_versions": b.purged_versions, "purged_delete_markers": b.purged_delete_markers,
            "purged_bytes": b.purged_bytes, "already_purged": b.already_purged, "kept": dict(b.kept),
            "uploads_aborted": b.uploads_aborted, "deleted_digest": b.digest,
            "in_scope_found_after": (b.after or {}).get("in_scope_found"), "requests": dict(b.requests)})
    _outside_prefixes(policy, stores_for, result)
    s = result.summary()
    log.info("purge %s%s: %s; %d of %d in-scope object(s) purged (%d versions, %d delete markers, %d bytes), %d already "
             "purged, %d kept; %d incomplete upload(s) aborted; %d object(s) (%d bytes) remain abroad; after-listing "
             "found %d purged version(s)", mid, " (dry run: nothing deleted)" if dry_run else "", s["status"].upper(),
             s["purged_objects"], s["in_scope"], s["purged_versions"], s["purged_delete_markers"], s["purged_bytes"],
             s["already_purged"], s["kept"], s["uploads_aborted"], s["remaining_objects"], s["remaining_bytes"],
             s["in_scope_found_after"])
    return result


def _source_rows(ledger: Ledger, mid: str, source: Source) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The ledger rows of one source under its prefix, by src_uri: ``(in scope, others)``;
    in scope = state verified or cut over."""
    query = (sa.select(objects).where(objects.c.migration_id == mid)
             .where(objects.c.src_bucket_uri == source.bucket_uri))
    done: dict[str, dict[str, Any]] = {}
    others: dict[str, dict[str, Any]] = {}
    with ledger.engine.connect() as conn:
        for row in conn.execute(query).mappings():
            r = decode_row(row)
            if r["src_uri"].split("/", 3)[-1].startswith(source.prefix):
                (done if r["state"] in DONE else others)[r["src_uri"]] = r
    return done, others


def _purged_before(ledger: Ledger, mid: str, bucket_uri: str) -> dict[str, dict[str, Any]]:
    with ledger.engine.connect() as conn:
        return {r["src_uri"]: dict(r, deleted=set(json.loads(r["deleted"])))
                for r in conn.execute(sa.select(purged).where(purged.c.migration_id == mid)
                                      .where(purged.c.src_bucket_uri == bucket_uri)).mappings()}


def _attest_now(policy: Policy, source: Source, dst_store: Store, rows: Mapping[str, dict[str, Any]],
                b: BucketPurge) -> tuple[dict[str, str], dict[str, str]]:
    """``({src_uri: method}, {src_uri: why not proven})``: each row's domestic copy
    proven now or not (methods as :mod:`residency.attest` names them)."""
    destination = policy.destination_for(source)
    by_dst = {r["dst_uri"]: r for r in rows.values()}
    proven: dict[str, str] = {}
    listed = 0
    for page in transfer.pages(dst_store.list_entries(destination.ref.bucket, destination.key_prefix(source)), PAGE):
        listed += len(page)
        for entry in page:
            row = by_dst.get(entry.ref.uri)
            if row is not None and (method := _listing_proof(row, entry, dst_store)):
                proven[row["src_uri"]] = method
                b.attest_methods[method] += 1
    b.requests["destination listing"] += max(1, math.ceil(listed / getattr(dst_store, "list_page_size", PAGE)))
    rest = [r for u, r in rows.items() if u not in proven]
    why: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=policy.transfer.workers) as pool:
        for row, (verdict, detail, _info) in zip(rest, pool.map(lambda r: _head_proof(r, dst_store), rest)):
            b.requests["destination HEAD"] += 1
            if verdict == "ok":
                proven[row["src_uri"]] = detail
                b.attest_methods[detail] += 1
                if detail == "read_back":
                    b.requests["destination read back"] += 1
            else:
                why[row["src_uri"]] = f"the domestic copy {row['dst_uri']} is not proven now ({verdict}: {detail})"
    b.attested = len(proven)
    return proven, why


def _classify(policy: Policy, uri: str, key: str, versions: list[Version], row: dict[str, Any] | None,
              unreadable: set[str]) -> tuple[str, str | None]:
    """Why a key that is not in scope stays abroad."""
    if row is not None:
        return NOT_MIGRATED, f"ledger state {row['state']}" + (f": {row['reason']}" if row.get("reason") else "")
    if not any(v.latest and not v.delete_marker for v in versions):
        return NO_LIVE_OBJECT, None
    if any(key.startswith(p) for p in policy.selection.exclude_prefixes):
        return EXCLUDED, None
    if uri in unreadable:
        return UNREADABLE, None
    decided, media = policy.selection.by_name(key)
    if decided and media is None:
        return NOT_MEDIA, None
    return NOT_IN_LEDGER, None


def _purge_source(policy: Policy, ledger: Ledger, source: Source, src_store: Store, dst_store: Store,
                  b: BucketPurge, *, dry_run: bool, run_id: str | None, stamp: str) -> None:
    mid, bucket, provider = policy.migration_id, source.ref.bucket, source.ref.provider
    rows, others = _source_rows(ledger, mid, source)
    before = _purged_before(ledger, mid, source.bucket_uri)
    b.in_scope = len(rows)
    b.in_scope_bytes = sum(int(r["size"]) for r in rows.values())
    unreadable = {u["src_uri"] for u in ledger.get_unreadable(mid, source.bucket_uri)}
    to_attest = {u: r for u, r in rows.items() if u not in before}
    methods, not_proven = _attest_now(policy, source, dst_store, to_attest, b) if to_attest else ({}, {})
    versions_api = _Versions(src_store, b.requests)

    kept: dict[str, tuple[str, str | None]] = {}  # in-scope keys not deleted: reason, detail
    seen: set[str] = set()
    batch: list[tuple[str, dict[str, Any], list[Version], str]] = []
    deleted_lines: list[str] = []

    def flush() -> None:
        if not batch:
            return
        flat = [v for _, _, versions, _ in batch for v in versions]
        errors = {} if dry_run else versions_api.delete(bucket, flat)
        records = []
        for uri, row, versions, method in batch:
            failed = [v for v in versions if v.token in errors]
            if failed:
                kept[uri] = (DELETE_FAILED, "; ".join(sorted({errors[v.token] for v in failed})))
                b.kept[DELETE_FAILED] += 1
                log.error("purge %s: %d of %d version(s) not deleted: %s", uri, len(failed), len(versions),
                          kept[uri][1])
                continue
            markers = sum(1 for v in versions if v.delete_marker)
            size = sum(v.size for v in versions)
            b.purged_objects += 1
            b.purged_versions += len(versions) - markers
            b.purged_delete_markers += markers
            b.purged_bytes += size
            deleted_lines.extend(f"{uri} {v.token}" for v in versions)
            log.info("purge %s: %s %d version(s) and %d delete marker(s), %d bytes; the domestic copy %s is attested "
                     "(%s)", uri, "would delete" if dry_run else "deleted", len(versions) - markers, markers, size,
                     row["dst_uri"], method)
            records.append({"migration_id": mid, "src_uri": uri, "src_bucket_uri": source.bucket_uri,
                            "src_version": row.get("src_version"), "dst_uri": row["dst_uri"], "attest_method": method,
                            "versions": len(versions) - markers, "delete_markers": markers, "bytes": size,
                            "deleted": json.dumps(sorted({v.token for v in versions}
                                                         | set(before.get(uri, {}).get("deleted", ())))),
                            "run_id": run_id,
                            "purged_at": stamp})
        if records and not dry_run:
            _record_purged(ledger, records)
        batch.clear()

    first = Remaining()
    pending_versions = 0
    for key, versions in versions_api.keys(bucket, source.prefix):
        uri = ObjectRef(provider, bucket, key).uri
        seen.add(uri)
        if uri in before:
            mine = [v for v in versions if v.token in before[uri]["deleted"]]
            new = [v for v in versions if v.token not in before[uri]["deleted"]]
            b.already_purged += 1
            if new:
                first.add(WRITTEN_AFTER_PURGE, uri, new)
            if mine:  # deleted before, listed again: delete again (the earlier run's deletion did not hold)
                log.warning("purge %s: %d version(s) purged earlier are listed again; deleting them again", uri,
                            len(mine))
                batch.append((uri, before[uri], mine, before[uri]["attest_method"]))
                b.already_purged -= 1
            continue
        row = rows.get(uri)
        if row is None:
            reason, detail = _classify(policy, uri, key, versions, others.get(uri), unreadable)
            first.add(reason, uri, versions, detail)
            continue
        live = versions[0] if versions and versions[0].latest and not versions[0].delete_marker else None
        if uri in not_proven:
            kept[uri] = (NOT_ATTESTED, not_proven[uri])
        elif live is None:
            kept[uri] = (CHANGED, "the key was deleted at the source since the copy (a delete marker is current); "
                                  "its versions stay")
        elif changed := transfer.source_change(row, live.listed(provider, bucket)):
            kept[uri] = (CHANGED, changed)
        if uri in kept:
            b.kept[kept[uri][0]] += 1
            first.add(kept[uri][0], uri, versions, kept[uri][1])
            log.warning("purge %s: NOT deleted: %s", uri, kept[uri][1])
            continue
        batch.append((uri, row, versions, methods[uri]))
        pending_versions += len(versions)
        if pending_versions >= DELETE_BATCH:
            flush()
            pending_versions = 0
    flush()
    # In scope, never listed: purged earlier (proven absent by this listing), or gone at the source.
    for uri in before:
        if uri not in seen:
            b.already_purged += 1
    for uri in rows:
        if uri not in seen and uri not in before:
            b.absent += 1
    if b.already_purged:
        log.info("purge %s: %d object(s) already purged by this migration; the listing finds none of their "
                 "versions", b.uri, b.already_purged)
    b.digest = hashlib.sha256("\n".join(sorted(deleted_lines)).encode()).hexdigest() if deleted_lines else ""

    # Incomplete multipart uploads: never objects, never migrated; bytes abroad all the same.
    uploads = list(versions_api.uploads(bucket, source.prefix))
    for upload in uploads:
        if not dry_run:
            versions_api.abort(bucket, upload["Key"], upload["UploadId"])
        b.uploads_aborted += 1
        log.info("purge s3://%s/%s: %s incomplete multipart upload %s (started %s; never a migrated object)", bucket,
                 upload["Key"], "would abort" if dry_run else "aborted", upload["UploadId"], upload.get("Initiated"))
    if source.ref.provider == "s3":
        log.info("purge %s: %d incomplete multipart upload(s) %s", b.uri, len(uploads),
                 "would be aborted" if dry_run else "aborted")

    if dry_run:
        b.remaining = first
        _log_bucket(b, dry_run)
        return
    # The proof: every version under the prefix, listed again.
    after = Remaining()
    found: list[dict[str, str]] = []
    listed = 0
    done_now = _purged_before(ledger, mid, source.bucket_uri)
    for key, versions in versions_api.keys(bucket, source.prefix):
        uri = ObjectRef(provider, bucket, key).uri
        listed += len(versions)
        if uri in done_now:
            mine = [v for v in versions if v.token in done_now[uri]["deleted"]]
            if mine:
                found.extend({"uri": uri, "version": v.token} for v in mine)
            new = [v for v in versions if v.token not in done_now[uri]["deleted"]]
            if new:
                after.add(WRITTEN_AFTER_PURGE, uri, new)
            continue
        if uri in kept:
            after.add(kept[uri][0], uri, versions, kept[uri][1])
            continue
        if uri in rows:  # in scope, but not listed by the first listing: it appeared between the two
            after.add(NOT_ATTESTED, uri, versions, "listed only by the after-listing: not examined by this run")
            continue
        reason, detail = _classify(policy, uri, key, versions, others.get(uri), unreadable)
        after.add(reason, uri, versions, detail)
    leftover = list(versions_api.uploads(bucket, source.prefix))
    for upload in leftover:
        after.add(UPLOADS, f"s3://{bucket}/{upload['Key']}", [], f"upload {upload['UploadId']} still open")
    b.remaining = after
    b.after = {"listed_versions": listed, "in_scope_found": len(found), "examples": found[:MAX_EXAMPLES],
               "uploads_open": len(leftover),
               "statement": "every version and delete marker under the prefix was listed again after the deletions; "
                            "no version this migration deleted may be among them"}
    if found:
        log.error("purge %s: NOT PROVEN: the after-listing still finds %d version(s) this migration deleted, e.g. %s",
                  b.uri, len(found), found[0])
    _log_bucket(b, dry_run)


def _record_purged(ledger: Ledger, records: list[dict[str, Any]]) -> None:
    with ledger.engine.begin() as conn:
        uris = [r["src_uri"] for r in records]
        conn.execute(purged.delete().where(purged.c.migration_id == records[0]["migration_id"])
                     .where(purged.c.src_uri.in_(uris)))
        conn.execute(purged.insert(), records)


def _log_bucket(b: BucketPurge, dry_run: bool) -> None:
    log.info(
        "purge %s%s: in scope %d (%d bytes), attested now %d %s; %s %d object(s): %d version(s), %d delete marker(s), "
        "%d bytes; already purged %d; kept %s; absent at the source %d; remaining abroad %d object(s), %d bytes %s; "
        "requests %s", b.uri, " (dry run)" if dry_run else "", b.in_scope, b.in_scope_bytes, b.attested,
        dict(b.attest_methods), "would purge" if dry_run else "purged", b.purged_objects, b.purged_versions,
        b.purged_delete_markers, b.purged_bytes, b.already_purged, dict(b.kept), b.absent, b.remaining.objects,
        b.remaining.bytes, {k: v["objects"] for k, v in b.remaining.by_reason.items()}, dict(b.requests))


def _outside_prefixes(policy: Policy, stores_for: Callable[[Source], tuple[Store, Store]],
                      result: PurgeResult) -> None:
    """Every version in a source bucket outside the policy's prefixes: never in scope, untouched."""
    by_bucket: dict[str, list[Source]] = {}
    for source in policy.sources:
        by_bucket.setdefault(source.bucket_uri, []).append(source)
    for bucket_uri, sources in by_bucket.items():
        prefixes = [s.prefix for s in sources]
        if "" in prefixes:
            continue
        source = sources[0]
        store, _ = stores_for(source)
        requests: Counter = Counter()
        outside = Remaining()
        for key, versions in _Versions(store, requests).keys(source.ref.bucket, ""):
            if not any(key.startswith(p) for p in prefixes):
                outside.add(OUTSIDE_PREFIXES, ObjectRef(source.ref.provider, source.ref.bucket, key).uri, versions)
        result.outside[bucket_uri] = outside
        log.info("purge %s: outside the prefixes %s: %d object(s), %d bytes stay abroad (never in scope; %s)",
                 bucket_uri, prefixes, outside.objects, outside.bytes, dict(requests))


def purged_rows(ledger: Ledger, migration_id: str) -> Iterable[dict[str, Any]]:
    """Every key purged by this migration, as recorded (for the evidence)."""
    ensure_schema(ledger)
    with ledger.engine.connect() as conn:
        for row in conn.execute(sa.select(purged).where(purged.c.migration_id == migration_id)
                                .order_by(purged.c.src_uri)).mappings():
            yield dict(row)
