"""Revoke the foreign parties' IAM access keys and prove, key by key, what the server showed.

For each principal of the policy (``revoke:``), :func:`revoke`

1. plans (before anything changes, for every principal): lists the IAM user's
   access keys with the administrator's credentials, checks every named key,
   resolves the foreign party's probe credentials (``probe_conn_id``);
2. probes *before*: with those credentials it lists one object under
   ``probe_uri`` (``s3:ListObjectsV2``, ``MaxKeys=1``);
3. records each key's last use (``GetAccessKeyLastUsed``), deactivates it, then
   deletes it; with the principal's ``delete_after_hours`` the key stays inactive
   until that soak has passed since its deactivation (a later run deletes it; the
   key is ``pending`` meanwhile and the evidence is not COMPLETE);
4. probes *after* with the same credentials;
5. records each key with :meth:`Ledger.record_revocation` (its proof) and an
   audit record.

:func:`preflight_check` runs step 1 and the before-probe read-only, so a wrong
user, key, connection or probe URI shows up before anything is copied.

What a proof says (``proof["status"]``, decided by :func:`judge_proof`):

- ``proven``: an attempt made with *this* key was allowed before the revocation
  and refused after it (an authentication or authorization refusal such as
  ``InvalidAccessKeyId``), on the same target. On a re-run, when the key was
  already deleted by an earlier run, the allowed before-attempt may be the one
  that run recorded (in its revocation record or in its ``revoke.key.start``
  audit record), never a guess.
- ``not_proven``: nothing shows the revocation took effect, and the reason says
  why: no probe holds this key (a principal with several keys is probed with
  one), the before-attempt was already refused or failed (then a refusal
  afterwards proves nothing), the after-attempt failed for another reason
  (``NoSuchBucket``, throttling, the network: neither allowed nor refused), or
  a dry run. Logged at WARNING; the run goes on and the evidence reads
  "not proven".
- ``failed``: an attempt after the revocation was *allowed*: the foreign party
  still has access. When the probe credentials hold a key the policy does not
  revoke, that key gets a record of its own (action ``none``) with this status.
  :class:`RevocationNotProven` is raised once everything is recorded.

Local emulator caveat: with IAM enforcement on, moto rejects *deleted* keys
(``InvalidAccessKeyId``) and enforces identity policies (``AccessDenied`` for a
user without the permission), but it accepts *inactive* keys. So against moto the denial is seen only after the delete,
which is why the after-probe runs after step 3 and not between deactivation
and deletion. Real IAM refuses inactive keys too, and is eventually consistent:
an after-probe right after the delete may still be allowed (``failed``); a
re-run re-probes and, with the before-probe on record, proves the revocation.

Secret keys never appear in logs or proofs; access key ids do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Callable, Mapping

from botocore.exceptions import BotoCoreError, ClientError

from .clients import AwsCredentials
from .errors import PolicyError, ResidencyError
from .ledger import Ledger, now
from .policy import Policy, Principal
from .stores.s3 import translate
from .uris import parse_uri

log = logging.getLogger(__name__)

ACTION = "deactivate+delete"
#: Action of the record kept for a probe key that the policy does not revoke.
NO_ACTION = "none"
PROBE_ACTION = "s3:ListObjectsV2"

#: Error codes that mean "these credentials are refused", as opposed to "allowed,
#: but the bucket is missing" (NoSuchBucket) or a network failure.
DENIAL_CODES = frozenset({
    "InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch", "InvalidClientTokenId",
    "ExpiredToken", "InvalidToken", "AllAccessDisabled", "403", "Forbidden",
})
#: Refusals that are about the key itself rather than what it may read: a
#: preflight blames ``probe_conn_id`` for these, ``probe_uri`` for the rest.
CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "ExpiredToken", "InvalidToken",
})

Credentials = Callable[[str], AwsCredentials]


class ProofStatus(StrEnum):
    """What the probes show about one revoked key."""

    PROVEN = "proven"  # allowed before, refused after, with this very key
    NOT_PROVEN = "not_proven"  # nothing shows the revocation took effect; the reason says why
    FAILED = "failed"  # allowed after the revocation: the key still works


class RevocationNotProven(ResidencyError):
    """A foreign party's credentials still work after the revocation (status ``failed``).

    Raised after every revocation of the run has been recorded, so the ledger
    holds the failed proof as well. Permanent: retrying the task cannot make a
    working key stop working.
    """

    permanent = True

    def __init__(self, failures: list[str]) -> None:
        self.failures = failures
        super().__init__("revocation not proven: " + "; ".join(failures))


class RevocationFailed(ResidencyError):
    """An IAM call that a revocation needs was refused or failed."""


@dataclass(frozen=True)
class KeyRevocation:
    """One access key: what was done to it this run and what the probes made with it saw.

    ``deleted``: deleted in this run. ``already_revoked``: deleted by an earlier
    run (IAM no longer lists it); this run only probed again. ``probe_before`` is
    the before-probe made with this key (this run's, or for an already revoked
    key the allowed one an earlier run recorded); ``probe_after`` this run's
    after-probe with this key. ``denied`` is None when no after-attempt was made
    with this key. ``probe_key``: the key id the probe credentials hold.
    """

    user: str
    access_key_id: str
    deactivated: bool
    deleted: bool
    probe_before: dict[str, Any] | None
    probe_after: dict[str, Any] | None
    denied: bool | None
    already_revoked: bool = False
    status: ProofStatus = ProofStatus.NOT_PROVEN
    reason: str = ""
    probe_key: str | None = None
    last_used: dict[str, Any] | None = None  # IAM's GetAccessKeyLastUsed, read before the key was touched
    delete_due: str | None = None  # deactivated, deletion due at this time (``delete_after_hours``)

    def proof(self) -> dict[str, Any]:
        """The proof as :meth:`Ledger.record_revocation` stores it.

        ``deleted`` there means "the key is deleted" (by this run, or by an earlier
        one when ``already_revoked``).
        """
        return {
            "status": str(self.status), "reason": self.reason, "denied": self.denied,
            "before": self.probe_before, "after": self.probe_after,
            "deactivated": self.deactivated, "deleted": self.deleted or self.already_revoked,
            "already_revoked": self.already_revoked, "user": self.user, "probe_key": self.probe_key,
            "kind": "access_key", "method": "denied_attempt", "last_used": self.last_used,
            "delete_due": self.delete_due,
            "outcome": ("already_revoked" if self.already_revoked else "revoked" if self.deleted
                        else "pending" if self.delete_due else "would_revoke"),
        }


@dataclass(frozen=True)
class RevocationResult:
    """Counts of one run.

    ``keys_revoked``: deleted in this run; ``keys_denied``: keys whose after-probe
    was denied; ``keys_proven`` / ``keys_not_proven`` / ``keys_failed``: by proof status.
    """

    principals: int
    keys_revoked: int
    keys_denied: int
    revocations: list[KeyRevocation]
    dry_run: bool
    keys_already_revoked: int = 0
    keys_proven: int = 0
    keys_not_proven: int = 0
    keys_failed: int = 0


@dataclass(frozen=True)
class _History:
    """What this migration's earlier runs left in the ledger."""

    revoked: set[tuple[str, str]]  # (principal, key id) deleted, or whose deletion started
    befores: dict[tuple[str, str], list[dict[str, Any]]]  # allowed before-probes made with that key
    deactivated: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)  # -> when (soak start)


@dataclass(frozen=True)
class _Plan:
    index: int
    principal: Principal
    name: str  # aws:iam::user/<user>
    listed: dict[str, str]  # access key id -> status, as IAM lists them now
    targets: tuple[str, ...]  # keys to revoke now
    already: tuple[str, ...]  # keys revoked by an earlier run
    iam: AwsCredentials | None  # the administrator's credentials (None: not resolvable)
    probe: AwsCredentials | None  # the foreign party's credentials (None: no usable probe)
    problems: tuple[ResidencyError, ...]  # revoke refuses to start; preflight reports them
    cautions: tuple[PolicyError, ...]  # revoke goes on and warns; preflight reports them

    @property
    def probe_key(self) -> str | None:
        return self.probe.access_key_id if self.probe else None


def revoke(
    policy: Policy,
    ledger: Ledger,
    *,
    iam_credentials: Credentials,
    probe_credentials: Credentials,
    dry_run: bool = False,
) -> RevocationResult:
    """Deactivate and delete the foreign principals' access keys; record a proof per key.

    Args:
        policy: the ``revoke`` principals (provider ``aws``).
        ledger: where proofs, audit records and the phase summary go.
        iam_credentials: conn id -> credentials allowed to manage the user's keys.
        probe_credentials: conn id -> the foreign party's own credentials.
        dry_run: list the keys that would be revoked and probe *before* (read
            only); deactivate, delete and record nothing.

    Every principal is planned (keys listed, names checked, probe credentials
    resolved) before any key is touched, so a wrong key id fails the run before
    it changes anything. A key named in the policy that IAM does not list counts
    as already revoked when the ledger holds its deletion (or the audit log shows
    this migration started revoking it and was interrupted); the probe then runs
    again to refresh the proof. A ``not_proven`` proof is recorded and logged at
    WARNING without raising.

    Raises:
        PolicyError: a named key does not exist (field ``revoke[i].access_keys``),
            the user does not exist (``revoke[i].user``), ``probe_uri`` is not an
            ``s3://`` URI (``revoke[i].probe_uri``), a connection cannot be
            resolved or the probe connection holds no access key id
            (``revoke[i].conn_id`` / ``revoke[i].probe_conn_id``).
        RevocationFailed: an IAM call was refused or failed.
        RevocationNotProven: a key still worked after the revocation (status
            ``failed``; raised after recording).
    """
    migration_id = policy.migration_id
    log.info(
        "%s revocation of %d principal(s) for migration %s",
        "DRY RUN:" if dry_run else "starting", len(policy.revocations), migration_id,
    )
    history = _history(ledger, migration_id)
    plans = [_plan(i, p, iam_credentials, probe_credentials, history) for i, p in enumerate(policy.revocations)]
    for plan in plans:
        for problem in plan.problems:
            log.error("principal %s: %s", plan.name, problem)
    for plan in plans:
        if plan.problems:
            raise plan.problems[0]

    revocations: list[KeyRevocation] = []
    for plan in plans:
        revocations.extend(_execute(plan, ledger, migration_id, history, dry_run))

    def count(status: ProofStatus) -> int:
        return sum(1 for r in revocations if r.status == status)

    result = RevocationResult(
        principals=len(plans),
        keys_revoked=sum(1 for r in revocations if r.deleted),
        keys_denied=sum(1 for r in revocations if r.denied is True),
        revocations=revocations,
        dry_run=dry_run,
        keys_already_revoked=sum(1 for r in revocations if r.already_revoked),
        keys_proven=count(ProofStatus.PROVEN),
        keys_not_proven=count(ProofStatus.NOT_PROVEN),
        keys_failed=count(ProofStatus.FAILED),
    )
    failures = [_sentence(r) for r in revocations if r.status == ProofStatus.FAILED]
    not_proven = [_sentence(r) for r in revocations if r.status == ProofStatus.NOT_PROVEN]
    log.log(
        logging.ERROR if failures else logging.WARNING if not_proven else logging.INFO,
        "%srevocation done: %d principal(s), %d key(s) %s, %d already revoked; proofs: %d proven, "
        "%d not proven, %d failed (key still works)",
        "DRY RUN: " if dry_run else "", result.principals,
        len(revocations) if dry_run else result.keys_revoked, "would be revoked" if dry_run else "revoked",
        result.keys_already_revoked, result.keys_proven, result.keys_not_proven, result.keys_failed,
    )
    if not dry_run:
        summary = dict(asdict(result), failed=failures, not_proven=not_proven)
        ledger.audit(migration_id, "revoke.done", summary)
        ledger.record_phase(migration_id, "revoke", summary)
    if failures:
        raise RevocationNotProven(failures)
    return result


def check_plans(policy: Policy, ledger: Ledger, *, iam_credentials: Credentials, probe_credentials: Credentials
                ) -> None:
    """Read-only: raise what :func:`revoke` would refuse to start for (a named key that does not
    exist, a user that does not exist, a connection that cannot be resolved), before anything changes."""
    history = _history(ledger, policy.migration_id)
    for i, principal in enumerate(policy.revocations):
        plan = _plan(i, principal, iam_credentials, probe_credentials, history)
        if plan.problems:
            raise plan.problems[0]


def preflight_check(
    policy: Policy,
    ledger: Ledger,
    *,
    iam_credentials: Credentials,
    probe_credentials: Credentials,
) -> list[str]:
    """Read-only, before anything is copied: can every principal be revoked and the revocation proven?

    For every principal: the IAM connection can list the user's access keys (the
    user exists; every key named in ``access_keys`` exists or was revoked by this
    migration earlier); the probe connection resolves to credentials holding an
    access key id, and that key is among the keys to revoke; and, unless the
    ledger shows the probe key already revoked by this migration, the probe is
    allowed now (otherwise the denial after revocation would prove nothing).

    Returns:
        The problems, each one sentence naming the field (``revoke[i].user``,
        ``.access_keys``, ``.conn_id``, ``.probe_conn_id``, ``.probe_uri``), its
        value, the principal and the reason; ``[]`` when all is well. Never
        writes to IAM or the ledger, and never raises for a connection that
        cannot be resolved (that is a problem like any other).
    """
    history = _history(ledger, policy.migration_id)
    problems: list[str] = []
    for index, principal in enumerate(policy.revocations):
        plan = _plan(index, principal, iam_credentials, probe_credentials, history)
        found = [_describe(plan, p) for p in (*plan.problems, *plan.cautions)]
        if plan.probe is not None and principal.probe_uri is not None:
            if (plan.name, plan.probe_key) in history.revoked:
                log.info(
                    "preflight %s: probe key %s was revoked by an earlier run; not probing before",
                    plan.name, plan.probe_key,
                )
            else:
                before = _probe(plan.probe, principal.probe_uri)
                _log_probe("preflight probe", plan, before)
                if not before["allowed"]:
                    field = "probe_conn_id" if before["error_code"] in CREDENTIAL_CODES else "probe_uri"
                    value = principal.probe_conn_id if field == "probe_conn_id" else principal.probe_uri
                    found.append(_describe(plan, PolicyError(
                        f"revoke[{index}].{field}", value,
                        f"the probe with key {plan.probe_key} ({before['action']} on {before['target']}) is "
                        f"{_outcome(before)} before the revocation, so a refusal after it would prove nothing",
                    )))
        for problem in found:
            log.warning("preflight: %s", problem)
        problems.extend(found)
    log.info(
        "preflight of revocation for migration %s: %d principal(s), %d problem(s)",
        policy.migration_id, len(policy.revocations), len(problems),
    )
    return problems


def judge_proof(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, *, before_from_earlier_run: bool = False
) -> tuple[ProofStatus, str]:
    """Decide what a before- and an after-probe made with one key prove, and say why in one sentence.

    ``failed`` when the after-attempt was allowed; ``proven`` only when the
    after-attempt was refused (a code of :data:`DENIAL_CODES`) and an attempt
    with the same key on the same target was allowed before; ``not_proven``
    otherwise (no attempt, an attempt that failed for another reason, a
    before-attempt already refused or failed, probes of different keys or targets).
    """
    if after is None:
        return ProofStatus.NOT_PROVEN, "no access attempt was made with this key after the revocation."
    if after["allowed"]:
        return ProofStatus.FAILED, (
            f"an access attempt with this key ({after['action']} on {after['target']}) was allowed at "
            f"{after['at']}, after the revocation: the key still works."
        )
    if not after["denied"]:
        return ProofStatus.NOT_PROVEN, (
            f"the access attempt with this key after the revocation failed with {after['error_code']} at "
            f"{after['at']}, which is neither an allowance nor a refusal, so it proves nothing."
        )
    if before is None:
        return ProofStatus.NOT_PROVEN, (
            f"the server refused this key after the revocation ({after['error_code']} at {after['at']}), but no "
            "allowed access attempt with it before the revocation is on record, so the refusal may have "
            "another cause."
        )
    if (before["access_key_id"], before["action"], before["target"]) != (
        after["access_key_id"], after["action"], after["target"]
    ):
        return ProofStatus.NOT_PROVEN, (
            f"the attempt before the revocation ({before['access_key_id']}, {before['action']} on "
            f"{before['target']}) and the one after it ({after['access_key_id']}, {after['action']} on "
            f"{after['target']}) differ, so they prove nothing together."
        )
    if not before["allowed"]:
        return ProofStatus.NOT_PROVEN, (
            f"the access attempt with this key before the revocation was already {_outcome(before)} at "
            f"{before['at']}, so the refusal after it ({after['error_code']}) proves nothing."
        )
    return ProofStatus.PROVEN, (
        f"an access attempt with this key ({after['action']} on {after['target']}) was allowed at "
        f"{before['at']}{' (recorded by an earlier run)' if before_from_earlier_run else ''} and refused with "
        f"{after['error_code']} at {after['at']}, after the revocation."
    )


def _principal_name(user: str) -> str:
    return f"aws:iam::user/{user}"


def _history(ledger: Ledger, migration_id: str) -> _History:
    """Keys this migration deleted, or started deleting, and the allowed before-probes it recorded."""
    revoked: set[tuple[str, str]] = set()
    befores: dict[tuple[str, str], list[dict[str, Any]]] = {}
    deactivated: dict[tuple[str, str], str] = {}

    def keep(principal: str, key_id: str, before: Any) -> None:
        if isinstance(before, Mapping) and before.get("allowed") is True and before.get("access_key_id") == key_id:
            befores.setdefault((principal, key_id), []).append(dict(before))

    for r in ledger.get_revocations(migration_id):
        if r["action"] != ACTION:
            continue
        if r["proof"].get("deleted", True):
            revoked.add((r["principal"], r["credential_id"]))
        keep(r["principal"], r["credential_id"], r["proof"].get("before"))
    # A run that died between the delete and its record left a start record only;
    # it carries the before-probe made with that key.
    for record in ledger.audit_records(migration_id):
        if record["event"] == "revoke.key.start":
            data = json.loads(record["data"])
            revoked.add((data.get("principal"), data.get("access_key_id")))
            keep(data.get("principal"), data.get("access_key_id"), data.get("before"))
        elif record["event"] == "revoke.key.deactivated":
            data = json.loads(record["data"])
            deactivated.setdefault((data.get("principal"), data.get("access_key_id")), data.get("at"))
    return _History(revoked, befores, deactivated)


def _plan(
    index: int,
    principal: Principal,
    iam_credentials: Credentials,
    probe_credentials: Credentials,
    history: _History,
) -> _Plan:
    """Read-only: what :func:`revoke` would do for one principal, and what stands in its way."""
    prefix = f"revoke[{index}]"
    name = _principal_name(principal.user)
    problems: list[ResidencyError] = []
    cautions: list[PolicyError] = []

    probe_uri_ok = principal.probe_uri is not None
    # policy.py checks this too; a second guard because the probe below speaks S3 only.
    if principal.probe_uri is not None:
        try:
            if parse_uri(principal.probe_uri, f"{prefix}.probe_uri").provider != "s3":
                problems.append(PolicyError(
                    f"{prefix}.probe_uri", principal.probe_uri, "an aws principal is probed on an s3:// URI"))
                probe_uri_ok = False
        except PolicyError as exc:
            problems.append(exc)
            probe_uri_ok = False

    earlier = tuple(sorted(k for p, k in history.revoked if p == name))
    iam = _resolve(iam_credentials, principal.conn_id, f"{prefix}.conn_id", "IAM", problems)
    listed: dict[str, str] | None = None
    if iam is not None:
        try:
            client = iam.client("iam")
            listed = {
                key["AccessKeyId"]: key["Status"]
                for page in client.get_paginator("list_access_keys").paginate(UserName=principal.user)
                for key in page["AccessKeyMetadata"]
            }
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchEntity":
                if earlier:
                    listed = {}  # the user is gone with its keys; re-probe what we revoked
                else:
                    problems.append(PolicyError(f"{prefix}.user", principal.user, "no such IAM user"))
            else:
                problems.append(RevocationFailed(
                    f"listing access keys of IAM user {principal.user}: {translate(exc, name)}"))
        except BotoCoreError as exc:
            problems.append(RevocationFailed(f"listing access keys of IAM user {principal.user}: {exc}"))

    targets: tuple[str, ...] = ()
    already: tuple[str, ...] = ()
    if listed is not None:
        if principal.access_keys is None:
            targets = tuple(sorted(listed))
            already = tuple(k for k in earlier if k not in listed)
        else:
            targets = tuple(k for k in principal.access_keys if k in listed)
            already = tuple(k for k in principal.access_keys if k not in listed and k in earlier)
            for key_id in principal.access_keys:
                if key_id not in listed and key_id not in earlier:
                    problems.append(PolicyError(
                        f"{prefix}.access_keys", key_id,
                        f"IAM user {principal.user} has no such access key (it has {sorted(listed) or 'none'})",
                    ))

    probe: AwsCredentials | None = None
    if principal.probe_conn_id:
        probe = _resolve(probe_credentials, principal.probe_conn_id, f"{prefix}.probe_conn_id", "probe", problems)
        if probe is not None and not probe.access_key_id:
            problems.append(PolicyError(
                f"{prefix}.probe_conn_id", principal.probe_conn_id,
                "the connection holds no access key id, so no probe could be attributed to a key",
            ))
            probe = None
        if not probe_uri_ok:
            probe = None
    if probe is not None and listed is not None and probe.access_key_id not in targets + already:
        cautions.append(PolicyError(
            f"{prefix}.probe_conn_id", principal.probe_conn_id,
            f"the probe credentials hold access key {probe.access_key_id}, which is not among the keys to revoke "
            f"({', '.join(targets + already) or 'none'}), so no probe would test a revoked key",
        ))
    if listed is not None:
        log.info(
            "principal %s: %d key(s) listed %s; to revoke %s; already revoked %s; probe key %s",
            name, len(listed), listed, list(targets) or "none", list(already) or "none",
            probe.access_key_id if probe else "none",
        )
    return _Plan(index, principal, name, listed or {}, targets, already, iam, probe, tuple(problems), tuple(cautions))


def _resolve(
    credentials: Credentials, conn_id: str, field: str, what: str, problems: list[ResidencyError]
) -> AwsCredentials | None:
    """``credentials(conn_id)``, or None with a problem naming the field."""
    try:
        return credentials(conn_id)
    except Exception as exc:  # noqa: BLE001 - any lookup failure is reported, not a crash
        # The message of a lookup failure names the connection, not its secret.
        problems.append(PolicyError(
            field, conn_id, f"the {what} connection cannot be resolved ({type(exc).__name__}: {exc})"))
        return None


def _execute(
    plan: _Plan, ledger: Ledger, migration_id: str, history: _History, dry_run: bool
) -> list[KeyRevocation]:
    principal = plan.principal
    probe, probe_key, uri = plan.probe, plan.probe_key, principal.probe_uri
    before = _probe(probe, uri) if probe is not None and uri else None
    if before is not None:
        _log_probe("probe before", plan, before)
        if not before["allowed"] and probe_key in plan.targets:
            log.warning(
                "probe before %s with key %s was %s: the refusal after revocation will prove nothing",
                plan.name, probe_key, _outcome(before),
            )
    for caution in plan.cautions:
        log.warning("principal %s: %s", plan.name, caution.reason)

    if dry_run:
        out = []
        for key_id in plan.targets + plan.already:
            if key_id in plan.already:
                log.info("access key %s of IAM user %s was revoked by an earlier run", key_id, principal.user)
            else:
                log.info("would deactivate and delete access key %s of IAM user %s", key_id, principal.user)
            out.append(KeyRevocation(
                principal.user, key_id, False, False, before if key_id == probe_key else None, None, None,
                key_id in plan.already, ProofStatus.NOT_PROVEN, "dry run: nothing was revoked.", probe_key,
            ))
        return out

    assert plan.iam is not None  # a plan without IAM credentials has a problem and never runs
    iam = plan.iam.client("iam")
    done: list[tuple[str, bool, bool]] = []  # key, deactivated, deleted
    soak = timedelta(hours=principal.delete_after_hours)
    last_used: dict[str, dict[str, Any] | None] = {}
    due: dict[str, str] = {}
    for key_id in plan.targets:
        last_used[key_id] = _last_used(iam, key_id, principal.user)
        log.info("access key %s of IAM user %s was last used: %s", key_id, principal.user, last_used[key_id] or "never")
        deactivated = False
        if plan.listed.get(key_id) != "Inactive":
            _iam_call(
                iam.update_access_key, f"deactivating {key_id}",
                UserName=principal.user, AccessKeyId=key_id, Status="Inactive",
            )
            deactivated = True
            log.info("deactivated access key %s of IAM user %s", key_id, principal.user)
        else:
            log.info("access key %s of IAM user %s was already inactive", key_id, principal.user)
        if soak:
            since = history.deactivated.get((plan.name, key_id))
            if since is None:
                since = now()
                ledger.audit(migration_id, "revoke.key.deactivated", {
                    "principal": plan.name, "access_key_id": key_id, "at": since, "last_used": last_used[key_id]})
            when = datetime.fromisoformat(since) + soak
            if datetime.fromisoformat(now()) < when:
                due[key_id] = when.isoformat()
                log.info("access key %s of IAM user %s stays inactive; deletion due at %s (delete_after_hours %s)",
                         key_id, principal.user, due[key_id], principal.delete_after_hours)
                done.append((key_id, deactivated, False))
                continue
        ledger.audit(migration_id, "revoke.key.start", {
            "principal": plan.name, "access_key_id": key_id, "before": before if key_id == probe_key else None,
        })
        _iam_call(iam.delete_access_key, f"deleting {key_id}", UserName=principal.user, AccessKeyId=key_id)
        log.info("deleted access key %s of IAM user %s", key_id, principal.user)
        done.append((key_id, deactivated, True))
    done.extend((key_id, False, False) for key_id in plan.already)

    after = _probe(probe, uri) if probe is not None and uri else None
    if after is not None:
        _log_probe("probe after", plan, after)

    out = []
    for key_id, deactivated, deleted in done:
        already = key_id in plan.already
        if after is not None and key_id == probe_key:
            key_before, earlier = _before_for(plan.name, key_id, before, after, history)
            status, reason = judge_proof(key_before, after, before_from_earlier_run=earlier)
            rev = KeyRevocation(
                principal.user, key_id, deactivated, deleted, key_before, after, after["denied"], already,
                status, reason + (f" Deletion is due at {due[key_id]}." if key_id in due else ""), probe_key,
                last_used.get(key_id), due.get(key_id),
            )
        else:
            held = (
                f"the probe connection {principal.probe_conn_id} holds key {probe_key}, not this one"
                if probe_key else "no probe is configured for this principal (probe_conn_id)"
            )
            gone = ("IAM no longer lists it (deleted by an earlier run)" if already else
                    f"it is inactive, deletion due at {due[key_id]}" if key_id in due else "IAM accepted its deletion")
            rev = KeyRevocation(
                principal.user, key_id, deactivated, deleted, None, None, None, already,
                ProofStatus.NOT_PROVEN,
                f"no probe holds this key ({held}), so no access attempt was made with it; {gone}.", probe_key,
                last_used.get(key_id), due.get(key_id),
            )
        out.append(_record(ledger, migration_id, plan, key_id, ACTION, rev))

    if after is not None and probe_key not in plan.targets + plan.already:
        if after["allowed"]:
            status, reason = judge_proof(before, after)
            rev = KeyRevocation(
                principal.user, probe_key, False, False, before, after, False, False, status,
                f"the probe credentials hold this key, which this revocation does not cover; {reason}", probe_key,
            )
            out.append(_record(ledger, migration_id, plan, probe_key, NO_ACTION, rev))
        else:
            log.warning(
                "probe key %s of %s is not among the revoked keys; its after-probe (%s) says nothing about them",
                probe_key, plan.name, _outcome(after),
            )
    return out


def _before_for(
    principal: str, key_id: str, before: dict[str, Any] | None, after: Mapping[str, Any], history: _History
) -> tuple[dict[str, Any] | None, bool]:
    """The before-probe that counts for this key: this run's if allowed, else the latest allowed one on record
    for the same key and target; else this run's (refused or failed) one. Second item: from an earlier run."""
    if before is not None and before["allowed"]:
        return before, False
    recorded = [
        b for b in history.befores.get((principal, key_id), [])
        if (b.get("action"), b.get("target")) == (after["action"], after["target"])
    ]
    if recorded:
        return recorded[-1], True
    return before, False


def _record(
    ledger: Ledger, migration_id: str, plan: _Plan, key_id: str, action: str, rev: KeyRevocation
) -> KeyRevocation:
    proof = rev.proof()
    ledger.record_revocation(migration_id, principal=plan.name, credential_id=key_id, action=action, proof=proof)
    ledger.audit(
        migration_id, "revoke.key", {"principal": plan.name, "access_key_id": key_id, "action": action, "proof": proof}
    )
    level = {ProofStatus.PROVEN: logging.INFO, ProofStatus.NOT_PROVEN: logging.WARNING}.get(rev.status, logging.ERROR)
    log.log(level, "proof for access key %s of IAM user %s: %s: %s", key_id, rev.user, rev.status.upper(), rev.reason)
    return rev


def _sentence(rev: KeyRevocation) -> str:
    return f"access key {rev.access_key_id} of IAM user {rev.user}: {rev.reason}"


def _describe(plan: _Plan, problem: ResidencyError) -> str:
    if isinstance(problem, PolicyError):
        return f"{problem.field} = {problem.value!r} (principal {plan.name}): {problem.reason}."
    return (
        f"revoke[{plan.index}].conn_id = {plan.principal.conn_id!r} (principal {plan.name}): "
        f"the IAM connection cannot list the user's access keys ({problem})."
    )


def _outcome(probe: Mapping[str, Any]) -> str:
    if probe["allowed"]:
        return "allowed"
    return f"refused ({probe['error_code']})" if probe["denied"] else f"failed ({probe['error_code']})"


def _log_probe(what: str, plan: _Plan, probe: Mapping[str, Any]) -> None:
    log.info(
        "%s %s with key %s: %s %s -> %s", what, plan.name, probe["access_key_id"], probe["action"], probe["target"],
        _outcome(probe),
    )


def _last_used(iam: Any, key_id: str, user: str | None) -> dict[str, Any] | None:
    """IAM's record of the key's last use (date, service, region), for the evidence; None if never used."""
    used = _iam_call(lambda **_: iam.get_access_key_last_used(AccessKeyId=key_id),
                     f"reading the last use of {key_id}", UserName=user).get("AccessKeyLastUsed") or {}
    if not used.get("LastUsedDate"):
        return None
    return {"date": str(used["LastUsedDate"]), "service": used.get("ServiceName"), "region": used.get("Region")}


def _iam_call(fn: Callable[..., Any], what: str, **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except ClientError as exc:
        raise RevocationFailed(f"{what} of IAM user {kwargs.get('UserName')}: {translate(exc, 'iam')}") from exc
    except BotoCoreError as exc:
        raise RevocationFailed(f"{what} of IAM user {kwargs.get('UserName')}: {exc}") from exc


def _probe(creds: AwsCredentials, probe_uri: str) -> dict[str, Any]:
    """List one object under ``probe_uri`` with the foreign party's credentials.

    Returns ``{at, action, target, access_key_id, allowed, denied, error_code}``.
    ``denied`` is true only for an authentication or authorization refusal;
    another error (NoSuchBucket, throttling, a network failure) is neither
    allowed nor denied.
    """
    ref = parse_uri(probe_uri, "probe_uri")
    outcome: dict[str, Any] = {
        "at": now(), "action": PROBE_ACTION, "target": ref.uri, "access_key_id": creds.access_key_id,
    }
    kwargs: dict[str, Any] = {"Bucket": ref.bucket, "MaxKeys": 1}
    if ref.key:
        kwargs["Prefix"] = ref.key
    try:
        creds.client("s3").list_objects_v2(**kwargs)
        outcome.update(allowed=True, denied=False, error_code=None)
    except ClientError as exc:
        err: Mapping[str, Any] = exc.response.get("Error", {})
        code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        outcome.update(allowed=False, denied=code in DENIAL_CODES, error_code=code)
    except BotoCoreError as exc:
        outcome.update(allowed=False, denied=False, error_code=type(exc).__name__)
    return outcome
