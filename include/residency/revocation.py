"""Revoke the foreign parties' IAM access keys and prove the revocation.

For each principal of the policy (``revoke:``), :func:`revoke`

1. lists the IAM user's access keys with the administrator's credentials;
2. probes *before*: with the foreign party's own credentials (``probe_conn_id``)
   it lists one object under ``probe_uri`` (``s3:ListObjectsV2``, ``MaxKeys=1``);
3. deactivates, then deletes every chosen key (one INFO line each);
4. probes *after* with the same foreign credentials: the request must now be
   refused (``InvalidAccessKeyId``, ``AccessDenied``, ...);
5. records each key with :meth:`Ledger.record_revocation` (the proof: both
   probe outcomes and whether the denial was seen) and an audit record.

What a denial proves, honestly: the probe uses the key held by the probe
connection. The denial is attached to that key; the principal's other keys are
recorded as deleted (IAM no longer lists them) without a probe of their own. If the
probe key is not among the revoked keys, the after-probe is usually allowed and
:class:`RevocationNotProven` is raised: the foreign party still has access.

Local emulator caveat: moto ignores *inactive* keys (it still accepts their
signatures) and only rejects *deleted* ones, so against moto the denial is
proven only after the delete, which is why the after-probe runs after step 3 and
not between deactivation and deletion. Real IAM refuses inactive keys too.

Secret keys never appear in logs or proofs; access key ids do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
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

#: Error codes that mean "these credentials are refused", as opposed to "allowed,
#: but the bucket is missing" (NoSuchBucket) or a network failure.
DENIAL_CODES = frozenset({
    "InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch", "InvalidClientTokenId",
    "ExpiredToken", "InvalidToken", "AllAccessDisabled", "403", "Forbidden",
})


class RevocationNotProven(ResidencyError):
    """The foreign party's credentials still work after the revocation.

    Raised after every revocation of the run has been recorded, so the ledger
    holds the failed proof as well.
    """

    def __init__(self, failures: list[str]) -> None:
        self.failures = failures
        super().__init__("revocation not proven: " + "; ".join(failures))


class RevocationFailed(ResidencyError):
    """An IAM call that a revocation needs was refused or failed."""


@dataclass(frozen=True)
class KeyRevocation:
    """One access key: what was done to it this run and what the probes saw.

    ``already_revoked``: the key was deleted by an earlier run (IAM no longer
    lists it); this run only probed again to refresh the proof.
    """

    user: str
    access_key_id: str
    deactivated: bool
    deleted: bool
    probe_before: dict[str, Any] | None
    probe_after: dict[str, Any] | None
    denied: bool
    already_revoked: bool = False


@dataclass(frozen=True)
class RevocationResult:
    """``keys_revoked``: deleted in this run; ``keys_denied``: keys with a denied after-probe."""

    principals: int
    keys_revoked: int
    keys_denied: int
    revocations: list[KeyRevocation]
    dry_run: bool
    keys_already_revoked: int = 0


@dataclass(frozen=True)
class _Plan:
    index: int
    principal: Principal
    name: str  # aws:iam::user/<user>
    listed: dict[str, str]  # access key id -> status, as IAM lists them now
    targets: tuple[str, ...]  # keys to revoke now
    already: tuple[str, ...]  # keys revoked by an earlier run


def revoke(
    policy: Policy,
    ledger: Ledger,
    *,
    iam_credentials: Callable[[str], AwsCredentials],
    probe_credentials: Callable[[str], AwsCredentials],
    dry_run: bool = False,
) -> RevocationResult:
    """Deactivate and delete the foreign principals' access keys; prove it with a denied probe.

    Args:
        policy: the ``revoke`` principals (provider ``aws``).
        ledger: where proofs, audit records and the phase summary go.
        iam_credentials: conn id -> credentials allowed to manage the user's keys.
        probe_credentials: conn id -> the foreign party's own credentials.
        dry_run: list the keys that would be revoked and probe *before* (read
            only); deactivate, delete and record nothing.

    Every principal is planned (keys listed, names checked) before any key is
    touched, so a wrong key id fails the run before it changes anything. A key
    named in the policy that IAM does not list counts as already revoked when
    the ledger holds its deletion (or the audit log shows this migration started
    revoking it and was interrupted); the probe then runs again to refresh the proof.

    Raises:
        PolicyError: a named key does not exist (field ``revoke[i].access_keys``),
            the user does not exist (``revoke[i].user``), or ``probe_uri`` is not
            an ``s3://`` URI (``revoke[i].probe_uri``).
        RevocationFailed: an IAM call was refused or failed.
        RevocationNotProven: an after-probe was not denied (raised after recording).
    """
    migration_id = policy.migration_id
    log.info(
        "%s revocation of %d principal(s) for migration %s",
        "DRY RUN:" if dry_run else "starting", len(policy.revocations), migration_id,
    )
    previous = _previously_revoked(ledger, migration_id)
    plans = [_plan(i, p, iam_credentials, previous) for i, p in enumerate(policy.revocations)]

    revocations: list[KeyRevocation] = []
    failures: list[str] = []
    for plan in plans:
        revocations.extend(_execute(plan, ledger, migration_id, iam_credentials, probe_credentials, dry_run, failures))

    result = RevocationResult(
        principals=len(plans),
        keys_revoked=sum(1 for r in revocations if r.deleted),
        keys_denied=sum(1 for r in revocations if r.denied),
        revocations=revocations,
        dry_run=dry_run,
        keys_already_revoked=sum(1 for r in revocations if r.already_revoked),
    )
    log.info(
        "%srevocation done: %d principal(s), %d key(s) %s, %d already revoked, %d denial(s) proven%s",
        "DRY RUN: " if dry_run else "", result.principals,
        len(revocations) if dry_run else result.keys_revoked, "would be revoked" if dry_run else "revoked",
        result.keys_already_revoked, result.keys_denied,
        f", NOT PROVEN: {'; '.join(failures)}" if failures else "",
    )
    if not dry_run:
        ledger.audit(migration_id, "revoke.done", dict(asdict(result), not_proven=failures))
        ledger.record_phase(migration_id, "revoke", dict(asdict(result), not_proven=failures))
    if failures:
        raise RevocationNotProven(failures)
    return result


def _principal_name(user: str) -> str:
    return f"aws:iam::user/{user}"


def _previously_revoked(ledger: Ledger, migration_id: str) -> set[tuple[str, str]]:
    """(principal, key id) pairs this migration deleted, or started deleting, before."""
    done = {
        (r["principal"], r["credential_id"])
        for r in ledger.get_revocations(migration_id)
        if r["action"] == ACTION and r["proof"].get("deleted", True)
    }
    # A run that died between the delete and its record left a start record only.
    for record in ledger.audit_records(migration_id):
        if record["event"] == "revoke.key.start":
            data = json.loads(record["data"])
            done.add((data.get("principal"), data.get("access_key_id")))
    return done


def _plan(
    index: int,
    principal: Principal,
    iam_credentials: Callable[[str], AwsCredentials],
    previous: set[tuple[str, str]],
) -> _Plan:
    prefix = f"revoke[{index}]"
    name = _principal_name(principal.user)
    if principal.probe_uri is not None and parse_uri(principal.probe_uri, f"{prefix}.probe_uri").provider != "s3":
        raise PolicyError(f"{prefix}.probe_uri", principal.probe_uri, "an aws principal is probed on an s3:// URI")
    earlier = tuple(sorted(k for p, k in previous if p == name))
    iam = iam_credentials(principal.conn_id).client("iam")
    try:
        listed = {
            key["AccessKeyId"]: key["Status"]
            for page in iam.get_paginator("list_access_keys").paginate(UserName=principal.user)
            for key in page["AccessKeyMetadata"]
        }
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchEntity":
            if not earlier:
                raise PolicyError(f"{prefix}.user", principal.user, "no such IAM user") from exc
            listed = {}  # the user is gone with its keys; re-probe what we revoked
        else:
            raise RevocationFailed(f"listing access keys of IAM user {principal.user}: {translate(exc, name)}") from exc
    except BotoCoreError as exc:
        raise RevocationFailed(f"listing access keys of IAM user {principal.user}: {exc}") from exc

    if principal.access_keys is None:
        targets = tuple(sorted(listed))
        already = tuple(k for k in earlier if k not in listed)
    else:
        targets_list, already_list = [], []
        for key_id in principal.access_keys:
            if key_id in listed:
                targets_list.append(key_id)
            elif key_id in earlier:
                already_list.append(key_id)
            else:
                raise PolicyError(
                    f"{prefix}.access_keys", key_id,
                    f"IAM user {principal.user} has no such access key (it has {sorted(listed) or 'none'})",
                )
        targets, already = tuple(targets_list), tuple(already_list)
    log.info(
        "principal %s: %d key(s) listed %s; to revoke %s; already revoked %s",
        name, len(listed), listed, list(targets) or "none", list(already) or "none",
    )
    return _Plan(index, principal, name, listed, targets, already)


def _execute(
    plan: _Plan,
    ledger: Ledger,
    migration_id: str,
    iam_credentials: Callable[[str], AwsCredentials],
    probe_credentials: Callable[[str], AwsCredentials],
    dry_run: bool,
    failures: list[str],
) -> list[KeyRevocation]:
    principal = plan.principal
    probe_creds = probe_credentials(principal.probe_conn_id) if principal.probe_conn_id else None
    probe_key = probe_creds.access_key_id if probe_creds else None
    before = _probe(probe_creds, principal.probe_uri) if probe_creds and principal.probe_uri else None
    if before is not None:
        log.info(
            "probe before %s with key %s: %s %s -> %s", plan.name, probe_key, before["action"], before["target"],
            "allowed" if before["allowed"] else f"refused ({before['error_code']})",
        )
        if not before["allowed"] and plan.targets:
            log.warning(
                "probe before %s was already refused (%s): the denial after revocation will prove less",
                plan.name, before["error_code"],
            )

    if probe_key and probe_key not in plan.targets + plan.already:
        log.warning(
            "probe key %s of %s is not among the keys to revoke %s: the after-probe will likely be allowed",
            probe_key, plan.name, list(plan.targets + plan.already),
        )

    if dry_run:
        for key_id in plan.targets:
            log.info("would deactivate and delete access key %s of IAM user %s", key_id, principal.user)
        for key_id in plan.already:
            log.info("access key %s of IAM user %s was revoked by an earlier run", key_id, principal.user)
        return [
            KeyRevocation(principal.user, k, False, False, before if k == probe_key else None, None, False, k in plan.already)
            for k in plan.targets + plan.already
        ]

    iam = iam_credentials(principal.conn_id).client("iam")
    done: list[tuple[str, bool, bool]] = []  # key, deactivated, deleted
    for key_id in plan.targets:
        ledger.audit(migration_id, "revoke.key.start", {"principal": plan.name, "access_key_id": key_id})
        deactivated = False
        if plan.listed.get(key_id) != "Inactive":
            _iam_call(iam.update_access_key, f"deactivating {key_id}", UserName=principal.user, AccessKeyId=key_id, Status="Inactive")
            deactivated = True
            log.info("deactivated access key %s of IAM user %s", key_id, principal.user)
        else:
            log.info("access key %s of IAM user %s was already inactive", key_id, principal.user)
        _iam_call(iam.delete_access_key, f"deleting {key_id}", UserName=principal.user, AccessKeyId=key_id)
        log.info("deleted access key %s of IAM user %s", key_id, principal.user)
        done.append((key_id, deactivated, True))
    done.extend((key_id, False, False) for key_id in plan.already)

    after = _probe(probe_creds, principal.probe_uri) if probe_creds and principal.probe_uri else None
    if after is not None:
        log.log(
            logging.INFO if after["denied"] else logging.ERROR,
            "probe after %s with key %s: %s %s -> %s", plan.name, probe_key, after["action"], after["target"],
            "DENIED" if after["denied"] else f"NOT DENIED ({'allowed' if after['allowed'] else after['error_code']})",
        )
        if not after["denied"]:
            failures.append(
                f"{plan.name}: probe with key {probe_key} on {after['target']} was not denied after revocation "
                f"({'allowed' if after['allowed'] else after['error_code']})"
            )

    out: list[KeyRevocation] = []
    for key_id, deactivated, deleted in done:
        probed = after is not None and key_id == probe_key
        rev = KeyRevocation(
            user=principal.user, access_key_id=key_id, deactivated=deactivated, deleted=deleted,
            probe_before=before if probed else None, probe_after=after if probed else None,
            denied=bool(probed and after and after["denied"]), already_revoked=key_id in plan.already,
        )
        proof = {
            "before": rev.probe_before, "after": rev.probe_after, "denied": rev.denied,
            "deactivated": rev.deactivated, "deleted": True, "already_revoked": rev.already_revoked,
            "user": principal.user,
        }
        if not probed:
            proof["note"] = (
                "no probe credentials hold this key; deletion shown by IAM no longer listing it"
                if probe_key else "no probe configured; deletion shown by IAM no longer listing it"
            )
        ledger.record_revocation(migration_id, principal=plan.name, credential_id=key_id, action=ACTION, proof=proof)
        ledger.audit(
            migration_id, "revoke.key",
            {"principal": plan.name, "access_key_id": key_id, "action": ACTION, "proof": proof},
        )
        out.append(rev)
    return out


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
    another error (NoSuchBucket, a network failure) is neither allowed nor denied.
    """
    ref = parse_uri(probe_uri, "probe_uri")
    outcome: dict[str, Any] = {
        "at": now(), "action": "s3:ListObjectsV2", "target": ref.uri, "access_key_id": creds.access_key_id,
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
