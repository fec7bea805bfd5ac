"""Write freeze of the overseas source buckets for the cutover window (``cutover.freeze``).

During the final catch-up pass and the cutover no new object may appear in a
source bucket; afterwards the freeze is lifted. :func:`freeze` and
:func:`unfreeze` do that per source bucket and keep, for the evidence, the
bucket policy *before* and *after* every change, the time, and a proof.

S3 (one read-modify-write of the bucket policy per bucket):

1. GetBucketPolicy (``NoSuchBucketPolicy``: none);
2. add one statement ``Sid`` :func:`freeze_sid` (``Effect: Deny``, ``Principal: *``,
   the actions of :data:`FROZEN_ACTIONS`) on the objects of the migration's
   prefixes (``arn:aws:s3:::bucket/*`` when a source takes the whole bucket),
   PutBucketPolicy, GetBucketPolicy again: the statement must be there;
3. probe: PutObject of a zero-byte key ``<prefix>.residency-freeze-probe/<uuid>``
   with the same credentials. A refusal (``AccessDenied``; moto answers a bare
   ``403``) is the proof. If the server accepts the write, the probe object is
   deleted at once and the proof reads "not proven: the server accepted a write
   despite the deny statement".

:func:`unfreeze` removes exactly the statement of that Sid and writes the rest
back (the very text that was there before the freeze when nothing else changed
since; DeleteBucketPolicy when no statement remains), then reads it back.
Both are idempotent (``already_frozen`` / ``already_unfrozen``) and leave every
other statement alone.

What the deny blocks: new objects and new versions (PutObject covers
CopyObject onto the bucket and every multipart step but the abort), object
deletes, ACL and tag changes, and replication into the bucket. It does not
block reads, listings, RestoreObject (it changes no object; an archived source
may need it to be copied), AbortMultipartUpload (an upload cannot complete
during the freeze; aborting it only frees its parts), the bucket-policy calls
(unfreeze needs them) or lifecycle expiration (not subject to bucket policies).
Limits of the proof: the denied probe shows that a write under the frozen
prefix is refused right after the statement was read back in place; on AWS a
refusal can also come from the credentials lacking ``s3:PutObject``, and a new
policy can take a moment to apply (a probe accepted then reads "not proven";
re-running :func:`freeze` probes again). S3 has no conditional
PutBucketPolicy: a policy edit made by someone else between our read and our
write is lost; the read-back shows what the server holds.

GCS has no bucket-level deny statement (and fake-gcs-server no IAM API): a GCS
source is recorded ``not_frozen`` with the reason, and the run goes on. Objects
written to it during the window are found by the next catch-up pass or run.

Local emulator (moto 5.2, checked with this project's server): moto enforces a
bucket-policy Deny on object requests by HTTP method only (PUT as
``s3:PutObject``, DELETE as ``s3:DeleteObject``, GET as ``s3:GetObject``),
answering ``403`` with no error code; it does not evaluate the finer actions
(AbortMultipartUpload and DeleteObjectVersion count as DeleteObject there).

The S3 client is the store's own (``S3Store._bucket_client``, one client per
bucket region); no client is built here. No secret is logged or recorded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

from botocore.exceptions import ClientError

from .errors import PermissionDenied, PolicyError, ResidencyError, StoreError
from .ledger import Ledger, now
from .policy import Policy, Source
from .stores.base import Store

log = logging.getLogger(__name__)

#: What the deny statement refuses: every way to create, change or delete an object.
FROZEN_ACTIONS = (
    "s3:PutObject",
    "s3:PutObjectAcl",
    "s3:PutObjectVersionAcl",
    "s3:PutObjectTagging",
    "s3:PutObjectVersionTagging",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:DeleteObjectTagging",
    "s3:DeleteObjectVersionTagging",
    "s3:ReplicateObject",
    "s3:ReplicateDelete",
)
SID_PREFIX = "ResidencyFreeze"
PROBE_FOLDER = ".residency-freeze-probe/"
PROBE_ACTION = "s3:PutObject"
POLICY_VERSION = "2012-10-17"
#: A refusal by policy (AWS: AccessDenied; moto: a bare 403).
DENIAL_CODES = frozenset({"AccessDenied", "403", "Forbidden"})
#: What AWS says when the credentials themselves lack the permission (then a refusal proves no freeze).
_IDENTITY_REFUSAL = "no identity-based policy allows"
NOT_PROVEN_ACCEPTED = "not proven: the server accepted a write despite the deny statement"
GCS_WHY = (
    "GCS has no bucket-level write deny; objects written during the window are found by the next catch-up "
    "pass / run"
)

# Actions per bucket.
FROZEN, ALREADY_FROZEN, UNFROZEN, ALREADY_UNFROZEN = "frozen", "already_frozen", "unfrozen", "already_unfrozen"
NOT_FROZEN, FAILED = "not_frozen", "failed"
WOULD_FREEZE, WOULD_UNFREEZE = "would_freeze", "would_unfreeze"  # dry run


class FreezePermissionDenied(PermissionDenied):
    """A bucket-policy call was refused: names the bucket and the permission it needs. Permanent."""

    permanent = True

    def __init__(self, uri: str, call: str, permission: str, resource: str, reason: str, conn_id: str) -> None:
        self.call = call
        self.permission = permission
        super().__init__(
            uri,
            f"{call} refused ({reason}): the connection {conn_id!r} needs {permission} on {resource}"
            + (" (and must belong to the bucket owner's account)" if "MethodNotAllowed" in reason else ""),
        )


class FreezePolicyRejected(ResidencyError):
    """S3 refused the policy document itself (MalformedPolicy, or over the 20 KB limit). Permanent."""

    permanent = True


class FreezeFailed(ResidencyError):
    """One or more buckets could not be frozen or unfrozen; raised after every bucket was tried and recorded.

    Permanent when every failure is (a refused permission, a policy S3 will not take).
    """

    def __init__(self, operation: str, failures: list[tuple[str, Exception]]) -> None:
        self.failures = failures
        self.permanent = all(getattr(exc, "permanent", False) for _, exc in failures)
        super().__init__(
            f"{operation} failed for {len(failures)} bucket(s): " + "; ".join(str(exc) for _, exc in failures)
        )


@dataclass(frozen=True)
class BucketFreeze:
    """What :func:`freeze` / :func:`unfreeze` did to one source bucket, with its evidence.

    ``before`` / ``after``: the bucket policy as the server returned it (JSON
    text; None: no policy) before the change and when read back after it (for
    a dry run, ``after`` is the document that would be written). ``proof``:
    ``{"status": "proven" | "not_proven", "reason", ...}``, None for a dry run
    and for buckets that cannot be frozen. ``why``: for ``not_frozen`` and
    ``failed``, and for a statement that was replaced.
    """

    bucket_uri: str
    provider: str
    conn_id: str
    action: str
    sid: str | None
    at: str
    before: str | None = None
    after: str | None = None
    resources: tuple[str, ...] = ()
    proof: Mapping[str, Any] | None = None
    why: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["resources"] = list(self.resources)
        out["proof"] = dict(self.proof) if self.proof is not None else None
        return out


@dataclass(frozen=True)
class FreezeResult:
    """One :func:`freeze` or :func:`unfreeze` run over the policy's source buckets."""

    operation: str  # freeze | unfreeze
    migration_id: str
    dry_run: bool
    requested: bool  # policy.cutover.freeze (or, for unfreeze, a freeze on record)
    buckets: tuple[BucketFreeze, ...] = field(default_factory=tuple)

    def count(self, action: str) -> int:
        return sum(1 for b in self.buckets if b.action == action)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.buckets:
            out[b.action] = out.get(b.action, 0) + 1
        return out

    @property
    def proven(self) -> int:
        return sum(1 for b in self.buckets if b.proof and b.proof.get("status") == "proven")

    def as_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation, "migration_id": self.migration_id, "dry_run": self.dry_run,
            "requested": self.requested, "counts": self.counts, "proven": self.proven,
            "buckets": [b.as_dict() for b in self.buckets],
        }

    def summary(self) -> str:
        """One line for the task log."""
        if not self.requested:
            return f"{self.operation}: not requested (cutover.freeze is false and no freeze is on record)"
        counts = ", ".join(f"{n} {a}" for a, n in sorted(self.counts.items())) or "no bucket"
        return (
            f"{'DRY RUN: ' if self.dry_run else ''}{self.operation} of {len(self.buckets)} source bucket(s): "
            f"{counts}; {self.proven} proven"
        )


def freeze_sid(migration_id: str) -> str:
    """The statement id of this migration's freeze.

    A Sid takes letters and digits only, so the migration id is kept without
    its ``.``, ``_`` and ``-`` and followed by 8 hex digits of its SHA-256: two
    ids that differ only in punctuation never share a statement.
    """
    plain = re.sub(r"[^A-Za-z0-9]", "", migration_id)
    return f"{SID_PREFIX}{plain}{hashlib.sha256(migration_id.encode('utf-8')).hexdigest()[:8]}"


def freeze_statement(sid: str, resources: Iterable[str]) -> dict[str, Any]:
    """The deny statement :func:`freeze` adds."""
    res = sorted(resources)
    return {
        "Sid": sid, "Effect": "Deny", "Principal": "*", "Action": list(FROZEN_ACTIONS),
        "Resource": res[0] if len(res) == 1 else res,
    }


def with_statement(document: Mapping[str, Any] | None, statement: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` (None: no policy) with ``statement`` in place of any of the same Sid, appended last."""
    doc = copy.deepcopy(dict(document)) if document is not None else {"Version": POLICY_VERSION}
    kept = [s for s in _statements(doc) if s.get("Sid") != statement["Sid"]]
    doc["Statement"] = [*kept, dict(statement)]
    return doc


def without_statement(document: Mapping[str, Any], sid: str) -> dict[str, Any] | None:
    """``document`` without the statement ``sid``; None when no statement remains."""
    doc = copy.deepcopy(dict(document))
    kept = [s for s in _statements(doc) if s.get("Sid") != sid]
    if not kept:
        return None
    doc["Statement"] = kept
    return doc


def judge_probe(probe: Mapping[str, Any]) -> tuple[str, str]:
    """``(status, reason)`` of a freeze from its probe: ``proven`` only for a refusal by policy.

    ``not_proven`` when the write was accepted, failed otherwise (NoSuchBucket,
    throttling), or was refused because the credentials lack ``s3:PutObject``
    (AWS says so in the message; moto's bare 403 says nothing either way).
    """
    if probe["allowed"]:
        left = "" if probe.get("deleted") else f"; the probe object {probe['uri']} could not be deleted"
        return "not_proven", f"{NOT_PROVEN_ACCEPTED} ({probe['action']} of {probe['uri']} at {probe['at']}){left}"
    if probe["denied"] and _IDENTITY_REFUSAL in (probe.get("error_message") or ""):
        return "not_proven", (
            f"not proven: the probe {probe['action']} of {probe['uri']} was refused at {probe['at']} because the "
            f"credentials may not write at all ({probe['error_message']}), not by the deny statement"
        )
    if probe["denied"]:
        return "proven", (
            f"{probe['action']} of the zero-byte probe {probe['uri']} was refused with {probe['error_code']} at "
            f"{probe['at']}, after the deny statement was read back in the bucket policy"
        )
    return "not_proven", (
        f"not proven: the probe {probe['action']} of {probe['uri']} failed with {probe['error_code']} at "
        f"{probe['at']}, which is neither an acceptance nor a refusal by policy"
    )


def freeze(
    policy: Policy,
    ledger: Ledger,
    store_for: Callable[[Source], Store],
    *,
    dry_run: bool = False,
    run_id: str | None = None,
) -> FreezeResult:
    """Freeze writes to every source bucket of ``policy`` (when ``policy.cutover.freeze``).

    Args:
        policy: the sources; nothing is done unless ``cutover.freeze`` is true.
        ledger: gets one ``freeze.bucket`` audit record per bucket and the
            ``freeze`` phase result (not for a dry run).
        store_for: the store that reads a source bucket (an ``S3Store`` for s3://).
        dry_run: read the policies and report what would be written; write nothing.
        run_id: the DAG run, kept with the phase result.

    Every bucket is tried; one that fails is recorded ``failed`` with the error.

    Raises:
        FreezeFailed: after recording, when a bucket could not be frozen (e.g. a
            :class:`FreezePermissionDenied` for s3:PutBucketPolicy); permanent
            when every failure is.
        ValueError: ``store_for`` gave an s3:// source a store without an S3 client.
    """
    if not policy.cutover.freeze:
        log.info("freeze: cutover.freeze is false in the policy; no source bucket is frozen")
        return FreezeResult("freeze", policy.migration_id, dry_run, requested=False)
    return _run("freeze", policy, ledger, store_for, dry_run, {}, run_id)


def unfreeze(
    policy: Policy,
    ledger: Ledger,
    store_for: Callable[[Source], Store],
    *,
    dry_run: bool = False,
    run_id: str | None = None,
) -> FreezeResult:
    """Lift this migration's freeze from every source bucket: remove the statement, keep the rest.

    Runs when ``policy.cutover.freeze`` is true or the ledger shows a bucket
    frozen by this migration (so a policy that turned the freeze off later
    never leaves a bucket frozen). A bucket frozen by this migration that is no
    longer a source of the policy is recorded ``failed``: its statement must be
    removed by hand, and the run says so.

    Args:
        policy, ledger, store_for, run_id: as for :func:`freeze`.
        dry_run: read the policies and report what would be written; write nothing.

    Raises:
        FreezeFailed: after recording, when a bucket could not be unfrozen.
        ValueError: ``store_for`` gave an s3:// source a store without an S3 client.
    """
    history = _frozen_before(ledger, policy.migration_id)
    if not policy.cutover.freeze and not history:
        log.info("unfreeze: cutover.freeze is false and no freeze of migration %s is on record", policy.migration_id)
        return FreezeResult("unfreeze", policy.migration_id, dry_run, requested=False)
    return _run("unfreeze", policy, ledger, store_for, dry_run, history, run_id)


def _run(
    operation: str,
    policy: Policy,
    ledger: Ledger,
    store_for: Callable[[Source], Store],
    dry_run: bool,
    history: Mapping[str, Mapping[str, Any]],
    run_id: str | None,
) -> FreezeResult:
    """Freeze or unfreeze every source bucket, recording each; raise once at the end."""
    sid = freeze_sid(policy.migration_id)
    buckets = _buckets(policy)
    # Every store is resolved before anything changes: a wrong connection fails the run untouched.
    s3s = {uri: _s3(store_for(sources[0]), sources[0]) for uri, sources in buckets.items()
           if sources[0].ref.provider == "s3"}
    log.info("%s%s of %d source bucket(s) for migration %s, statement %s",
             "DRY RUN: " if dry_run else "", operation, len(buckets), policy.migration_id, sid)
    event = f"{operation}.bucket"
    out: list[BucketFreeze] = []
    failures: list[tuple[str, Exception]] = []
    for bucket_uri, sources in buckets.items():
        source = sources[0]
        try:
            if bucket_uri not in s3s:
                entry = _not_frozen(source)
            elif operation == "freeze":
                entry = _freeze_s3(s3s[bucket_uri], sid, _prefixes(sources), dry_run)
            else:
                entry = _unfreeze_s3(s3s[bucket_uri], sid, history.get(bucket_uri), dry_run)
        except ResidencyError as exc:
            failures.append((bucket_uri, exc))
            entry = BucketFreeze(bucket_uri, source.ref.provider, source.conn_id, FAILED, sid, now(), why=str(exc))
            log.error("%s %s: FAILED: %s", operation, bucket_uri, exc)
        out.append(_record(ledger, policy.migration_id, event, entry, dry_run))
    for bucket_uri, frozen in history.items():
        if bucket_uri in buckets:
            continue
        why = (f"frozen by this migration (statement {sid}) but no longer a source of the policy: remove the "
               "statement by hand")
        failures.append((bucket_uri, PolicyError("sources", bucket_uri, why)))
        log.error("%s %s: %s", operation, bucket_uri, why)
        entry = BucketFreeze(bucket_uri, "s3", str(frozen.get("conn_id")), FAILED, sid, now(), why=why)
        out.append(_record(ledger, policy.migration_id, event, entry, dry_run))
    result = FreezeResult(operation, policy.migration_id, dry_run, True, tuple(out))
    log.log(logging.ERROR if failures else logging.INFO, "%s", result.summary())
    if not dry_run:
        ledger.record_phase(policy.migration_id, operation, result.as_dict(), run_id=run_id)
    if failures:
        raise FreezeFailed(operation, failures)
    return result


# -- S3 ----------------------------------------------------------------------------------------

class _S3Bucket:
    """One S3 source bucket and the calls the freeze makes on it, through the store's own client."""

    def __init__(self, store: Any, bucket: str, conn_id: str) -> None:
        self.store = store
        self.bucket = bucket
        self.conn_id = conn_id
        self._arn: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}"

    @property
    def client(self) -> Any:
        return self.store._bucket_client(self.bucket)

    @property
    def arn(self) -> str:
        """The bucket's ARN, in the partition of its region (one GetBucketLocation, which the store caches too)."""
        if self._arn is None:
            region = self.store.placement(self.bucket).location or ""
            partition = "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"
            self._arn = f"arn:{partition}:s3:::{self.bucket}"
        return self._arn

    def _policy_call(self, call: str, fn: Callable[[], Any]) -> Any:
        """A bucket-policy call with the store's retries; a refusal names the permission needed."""
        arn = self._arn or f"arn:aws:s3:::{self.bucket}"
        try:
            return self.store._call(call, self.uri, fn)
        except PermissionDenied as exc:
            raise FreezePermissionDenied(self.uri, call, f"s3:{call}", arn, exc.reason, self.conn_id) from exc
        except StoreError as exc:
            if "MethodNotAllowed" in exc.reason:
                raise FreezePermissionDenied(self.uri, call, f"s3:{call}", arn, exc.reason, self.conn_id) from exc
            if "MalformedPolicy" in exc.reason or "PolicyTooLarge" in exc.reason:
                raise FreezePolicyRejected(f"{self.uri}: {call} refused the policy document: {exc.reason}") from exc
            raise

    def read_policy(self) -> str | None:
        """The bucket policy text, None when the bucket has none."""
        client = self.client

        def get() -> str | None:
            try:
                return client.get_bucket_policy(Bucket=self.bucket)["Policy"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchBucketPolicy":
                    return None
                raise

        return self._policy_call("GetBucketPolicy", get)

    def write_policy(self, text: str | None) -> None:
        client = self.client
        if text is None:
            self._policy_call("DeleteBucketPolicy", lambda: client.delete_bucket_policy(Bucket=self.bucket))
        else:
            self._policy_call("PutBucketPolicy", lambda: client.put_bucket_policy(Bucket=self.bucket, Policy=text))

    def probe(self, prefix: str) -> dict[str, Any]:
        """Try to write a zero-byte object under ``prefix``; delete it at once if the server accepts it."""
        key = f"{prefix}{PROBE_FOLDER}{uuid.uuid4()}"
        uri = f"{self.uri}/{key}"
        client = self.client
        outcome: dict[str, Any] = {"action": PROBE_ACTION, "uri": uri, "at": now()}
        try:
            resp = self.store._call("put_object", uri, lambda: client.put_object(Bucket=self.bucket, Key=key, Body=b""))
        except StoreError as exc:
            cause = exc.__cause__
            code = message = None
            if isinstance(cause, ClientError):
                error = cause.response.get("Error", {})
                code = str(error.get("Code") or cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                message = error.get("Message")
            code = code or type(exc).__name__
            outcome.update(allowed=False, denied=isinstance(exc, PermissionDenied) and code in DENIAL_CODES,
                           error_code=code, error_message=message, deleted=None)
            return outcome
        outcome.update(allowed=True, denied=False, error_code=None, error_message=None)
        version = resp.get("VersionId")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if version and version != "null":
            kwargs["VersionId"] = version  # leave no version behind in a versioned bucket
        try:
            self.store._call("delete_object", uri, lambda: client.delete_object(**kwargs))
            outcome["deleted"] = True
        except StoreError as exc:
            outcome["deleted"] = False
            log.error("freeze probe %s was accepted and could not be deleted: %s", uri, exc)
        return outcome


def _s3(store: Any, source: Source) -> _S3Bucket:
    if not (hasattr(store, "_bucket_client") and hasattr(store, "_call")):
        raise ValueError(
            f"store_for gave {source.bucket_uri} a {type(store).__name__}; the freeze needs an S3Store (its client)"
        )
    return _S3Bucket(store, source.ref.bucket, source.conn_id)


def _freeze_s3(s3: _S3Bucket, sid: str, prefixes: list[str], dry_run: bool) -> BucketFreeze:
    arn = s3.arn
    resources = tuple(f"{arn}/{p}*" for p in prefixes)
    statement = freeze_statement(sid, resources)
    before = s3.read_policy()
    doc = _parse(before, s3.uri)
    present = _find(doc, sid)
    base = {"bucket_uri": s3.uri, "provider": "s3", "conn_id": s3.conn_id, "sid": sid,
            "before": before, "resources": resources}
    if present is not None and _same(present, statement):
        if dry_run:
            log.info("DRY RUN: freeze %s: statement %s is already in place", s3.uri, sid)
            return BucketFreeze(action=ALREADY_FROZEN, at=now(), after=before, **base)
        proof = _proof(s3, sid, prefixes[0], before, now())
        log.info("freeze %s: already frozen (statement %s); proof: %s", s3.uri, sid, proof["reason"])
        return BucketFreeze(action=ALREADY_FROZEN, at=proof["read_back_at"], after=before, proof=proof, **base)
    why = None
    if present is not None:
        why = f"replaced an earlier statement {sid} that differed: {json.dumps(present, sort_keys=True)}"
        log.warning("freeze %s: %s", s3.uri, why)
    text = json.dumps(with_statement(doc, statement))
    if dry_run:
        log.info("DRY RUN: freeze %s would add statement %s denying %s on %s", s3.uri, sid,
                 ", ".join(FROZEN_ACTIONS), ", ".join(resources))
        return BucketFreeze(action=WOULD_FREEZE, at=now(), after=text, why=why, **base)
    at = now()
    s3.write_policy(text)
    after = s3.read_policy()
    proof = _proof(s3, sid, prefixes[0], after, at)
    log.log(logging.INFO if proof["status"] == "proven" else logging.WARNING,
            "freeze %s: FROZEN by statement %s (bucket policy before: %s); proof %s: %s", s3.uri, sid,
            _describe(doc), proof["status"].upper(), proof["reason"])
    return BucketFreeze(action=FROZEN, at=at, after=after, proof=proof, why=why, **base)


def _proof(s3: _S3Bucket, sid: str, prefix: str, policy_text: str | None, at: str) -> dict[str, Any]:
    """Read-back, then probe; raises when the statement is not in the policy read back."""
    read_back_at = now()
    if _find(_parse(policy_text, s3.uri), sid) is None:
        raise ResidencyError(
            f"{s3.uri}: the bucket policy read back at {read_back_at} does not hold statement {sid} written at {at}"
        )
    probe = s3.probe(prefix)
    status, reason = judge_probe(probe)
    return {"status": status, "reason": reason, "statement_in_place": True, "read_back_at": read_back_at,
            "probe": probe}


def _unfreeze_s3(s3: _S3Bucket, sid: str, frozen: Mapping[str, Any] | None, dry_run: bool) -> BucketFreeze:
    before = s3.read_policy()
    doc = _parse(before, s3.uri)
    base = {"bucket_uri": s3.uri, "provider": "s3", "conn_id": s3.conn_id, "sid": sid, "before": before}
    if _find(doc, sid) is None:
        proof = None if dry_run else {
            "status": "proven", "statement_in_place": False, "read_back_at": now(),
            "reason": f"the bucket policy read back holds no statement {sid}",
        }
        log.info("%sunfreeze %s: already unfrozen (no statement %s)", "DRY RUN: " if dry_run else "", s3.uri, sid)
        return BucketFreeze(action=ALREADY_UNFROZEN, at=now(), after=before, proof=proof, **base)
    assert doc is not None
    rest = without_statement(doc, sid)
    text, how = _restored(rest, frozen)
    if dry_run:
        log.info("DRY RUN: unfreeze %s would remove statement %s and %s", s3.uri, sid, how)
        return BucketFreeze(action=WOULD_UNFREEZE, at=now(), after=text, why=how, **base)
    at = now()
    s3.write_policy(text)
    after = s3.read_policy()
    read_back_at = now()
    if _find(_parse(after, s3.uri), sid) is not None:
        raise ResidencyError(
            f"{s3.uri}: the bucket policy read back at {read_back_at} still holds statement {sid} removed at {at}"
        )
    proof = {
        "status": "proven", "statement_in_place": False, "read_back_at": read_back_at,
        "reason": (f"the bucket policy read back at {read_back_at} holds no statement {sid}"
                   + (" (the bucket has no policy)" if after is None else "")),
    }
    log.info("unfreeze %s: UNFROZEN: removed statement %s and %s; %s", s3.uri, sid, how, proof["reason"])
    return BucketFreeze(action=UNFROZEN, at=at, after=after, proof=proof, why=how, **base)


def _restored(rest: dict[str, Any] | None, frozen: Mapping[str, Any] | None) -> tuple[str | None, str]:
    """The policy to write back, and how it was chosen.

    When the policy without the statement is (as parsed JSON) what the bucket
    held before this migration froze it, that very text goes back (None: the
    policy is deleted); otherwise the remaining statements are written.
    """
    if frozen is not None and "before" in frozen:
        original = frozen["before"]
        if original is None and rest is None:
            return None, "deleted the bucket policy (the bucket had none before the freeze)"
        if original is not None and _normal_doc(_parse_or_none(original)) == _normal_doc(rest):
            return original, "put back the bucket policy text recorded before the freeze"
    if rest is None:
        return None, "deleted the bucket policy (no other statement remains)"
    return json.dumps(rest), f"put back the other {len(rest['Statement'])} statement(s) unchanged"


# -- helpers -----------------------------------------------------------------------------------

def _buckets(policy: Policy) -> dict[str, list[Source]]:
    out: dict[str, list[Source]] = {}
    for source in policy.sources:
        out.setdefault(source.bucket_uri, []).append(source)
    return out


def _prefixes(sources: list[Source]) -> list[str]:
    """The key prefixes to freeze: ``[""]`` (the whole bucket) when a source has none; none inside another."""
    prefixes = sorted({s.prefix for s in sources})
    kept: list[str] = []
    for p in prefixes:
        if not any(p.startswith(k) for k in kept):
            kept.append(p)
    return kept


def _not_frozen(source: Source) -> BucketFreeze:
    log.warning("%s: not frozen: %s", source.bucket_uri, GCS_WHY)
    return BucketFreeze(source.bucket_uri, source.ref.provider, source.conn_id, NOT_FROZEN, None, now(), why=GCS_WHY)


def _statements(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = doc.get("Statement", [])
    return [raw] if isinstance(raw, dict) else list(raw)


def _parse(text: str | None, uri: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ResidencyError(f"{uri}: the bucket policy the server returned is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ResidencyError(f"{uri}: the bucket policy the server returned is not a JSON object")
    return doc


def _parse_or_none(text: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _find(doc: Mapping[str, Any] | None, sid: str) -> dict[str, Any] | None:
    if doc is None:
        return None
    return next((s for s in _statements(doc) if isinstance(s, dict) and s.get("Sid") == sid), None)


def _as_set(value: Any) -> frozenset[str]:
    return frozenset([value] if isinstance(value, str) else value or [])


def _same(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a statement read back is ``wanted``, whatever form the server normalized it to."""
    principal = found.get("Principal")
    return (
        found.get("Effect") == wanted["Effect"]
        and principal in ("*", {"AWS": "*"}, {"AWS": ["*"]})
        and _as_set(found.get("Action")) == _as_set(wanted["Action"])
        and _as_set(found.get("Resource")) == _as_set(wanted["Resource"])
        and not found.get("Condition") and not found.get("NotAction") and not found.get("NotResource")
    )


def _normal_doc(doc: Mapping[str, Any] | None) -> Any:
    if doc is None:
        return None
    return dict(doc, Statement=_statements(doc))


def _describe(doc: Mapping[str, Any] | None) -> str:
    return "none" if doc is None else f"{len(_statements(doc))} statement(s), kept"


def _frozen_before(ledger: Ledger, migration_id: str) -> dict[str, dict[str, Any]]:
    """Per bucket URI, the last ``freeze.bucket`` record of this migration that froze it."""
    out: dict[str, dict[str, Any]] = {}
    for record in ledger.audit_records(migration_id):
        if record["event"] == "freeze.bucket":
            data = json.loads(record["data"])
            if data.get("action") == FROZEN:
                out[data["bucket_uri"]] = data
    return out


def _record(ledger: Ledger, migration_id: str, event: str, entry: BucketFreeze, dry_run: bool) -> BucketFreeze:
    if not dry_run:
        ledger.audit(migration_id, event, entry.as_dict())
    return entry
