"""Close every foreign access path of the policy's principals, with a proof per path.

This is the revocation the ``residency_revoke`` DAG and the migration DAG's
revoke phase both run (:func:`revoke_all`). For AWS principals, in this order
(each step needs the foreign key still alive for its before- and after-attempt,
which is why the keys go in the middle):

1. plan, read-only, every principal: its users (by name, or by tag), the roles
   that trust it, the grants to it on the policy's S3 buckets, its keys;
2. attempt *before* with the foreign probe key: AssumeRole of each trusting
   role, and a listing with that fresh session;
3. roles: trust entries removed (proof: AssumeRole refused), older sessions
   denied (proof: the session of step 2 refused);
4. bucket-policy statements and ACL grants removed (proof: read back);
5. access keys: last use recorded, deactivated, deleted after
   ``delete_after_hours`` (:func:`residency.revocation.revoke`);
6. console passwords deleted, users' older sessions denied (proof: read back).

Then GCS principals (:mod:`residency.revocation_gcs`): HMAC keys, bucket IAM
members, service-account keys.

A dry run plans and probes read-only and returns every change it would make.
Re-running is safe: a path closed by an earlier run is read again and recorded
``already_revoked``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError

from . import revocation, revocation_paths
from .access import PathRevocation
from .errors import PolicyError
from .ledger import Ledger, now
from .policy import Policy, Principal
from .revocation import RevocationFailed, RevocationNotProven

log = logging.getLogger(__name__)

Credentials = Callable[[str], Any]


def aws_buckets(policy: Policy) -> list[str]:
    """The S3 buckets whose grants are checked: every source and destination on S3."""
    names = [s.ref.bucket for s in policy.sources if s.ref.provider == "s3"]
    names += [d.ref.bucket for d in policy.destinations.values() if d.ref.provider == "s3"]
    return sorted(set(names))


def gcs_buckets(policy: Policy) -> list[str]:
    names = [s.ref.bucket for s in policy.sources if s.ref.provider == "gs"]
    names += [d.ref.bucket for d in policy.destinations.values() if d.ref.provider == "gs"]
    return sorted(set(names))


def select_users(principal: Principal, iam: Any) -> list[str]:
    """The IAM users a principal selects: its ``user``, and every user carrying its ``tag``."""
    users = [principal.user] if principal.user else []
    if principal.tag:
        key, value = principal.tag
        client = iam.client("iam")
        try:
            for page in client.get_paginator("list_users").paginate():
                for user in page["Users"]:
                    tags = client.list_user_tags(UserName=user["UserName"])["Tags"]
                    if {"Key": key, "Value": value} in tags and user["UserName"] not in users:
                        users.append(user["UserName"])
        except (ClientError, BotoCoreError) as exc:
            raise RevocationFailed(f"listing IAM users tagged {key}={value}: {exc}") from exc
        log.info("principal %s: tag %s=%s selects IAM users %s", principal.label, key, value, users or "none")
    return users


def _key_principals(principal: Principal, users: list[str], iam: Any, probe: Any) -> list[Principal]:
    """One key-revocation principal per user; the probe goes to the user whose key it holds."""
    if principal.user and not principal.tag:
        return [principal]
    out = []
    for user in users:
        owns = False
        if probe is not None and probe.access_key_id:
            try:
                keys = iam.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
                owns = any(k["AccessKeyId"] == probe.access_key_id for k in keys)
            except ClientError:
                owns = False
        out.append(dataclasses.replace(
            principal, user=user, tag=None, access_keys=principal.access_keys if user == principal.user else None,
            probe_conn_id=principal.probe_conn_id if owns else None, probe_uri=principal.probe_uri if owns else None))
    return out


def revoke_all(policy: Policy, ledger: Ledger, *, credentials: Credentials, dry_run: bool = False) -> dict[str, Any]:
    """Close every path of every principal of the policy; return the summary the phase records.

    Raises:
        PolicyError: a principal's connection cannot be resolved, a named key does not exist.
        RevocationFailed: a call the revocation needs was refused.
        RevocationNotProven: after everything is recorded, when a path still works.
    """
    mid = policy.migration_id
    at = now()
    log.info("%s closing every foreign access path of %d principal(s) for migration %s; sessions issued before %s "
             "will be denied", "DRY RUN:" if dry_run else "", len(policy.principals), mid, at)
    paths: list[PathRevocation] = []
    failures: list[str] = []
    plans = []
    for principal in policy.revocations:
        iam = _resolve(credentials, principal.conn_id, f"revoke[{principal.index}].conn_id")
        probe = (_resolve(credentials, principal.probe_conn_id, f"revoke[{principal.index}].probe_conn_id")
                 if principal.probe_conn_id else None)
        users = select_users(principal, iam)
        plan = revocation_paths.plan_paths(principal, iam, users, aws_buckets(policy))
        plans.append((principal, iam, probe, users, plan))
    # Everything that would refuse to start is found before anything changes, for every principal.
    key_principals = [kp for principal, iam, probe, users, _ in plans
                      for kp in _key_principals(principal, users, iam, probe)]
    key_policy = dataclasses.replace(policy, revocations=tuple(key_principals))
    if key_principals:
        revocation.check_plans(key_policy, ledger, iam_credentials=credentials, probe_credentials=credentials)
    gcs_admins = []
    for principal in policy.gcs_revocations:
        from . import revocation_gcs

        admin = _resolve(credentials, principal.conn_id, f"revoke[{principal.index}].conn_id")
        revocation_gcs.check_gcs(principal, principal.index, buckets=gcs_buckets(policy), admin=admin,
                                 probes=credentials, ledger=ledger, migration_id=mid)
        gcs_admins.append((principal, admin))

    for principal, iam, probe, users, plan in plans:
        revocation_paths.probe_before(plan, probe, principal.probe_uri)
        history = set(revocation_paths.earlier_paths(ledger, mid, plan.name))
        paths += revocation_paths.revoke_trust_and_sessions(plan, iam, ledger, mid, history, at, dry_run, probe)
        paths += revocation_paths.revoke_bucket_grants(plan, iam, ledger, mid, history, dry_run)
        if not dry_run:
            paths += revocation_paths.recheck_already(plan, iam, ledger, mid, revocation_paths.earlier_paths(
                ledger, mid, plan.name), aws_buckets(policy))

    keys = None
    if key_principals:
        try:
            keys = revocation.revoke(key_policy, ledger, iam_credentials=credentials, probe_credentials=credentials,
                                     dry_run=dry_run)
        except RevocationNotProven as exc:
            failures.extend(exc.failures)

    for principal, iam, probe, users, plan in plans:
        history = set(revocation_paths.earlier_paths(ledger, mid, plan.name))
        paths += revocation_paths.revoke_login_profiles(plan, iam, ledger, mid, history, dry_run)
        paths += revocation_paths.deny_user_sessions(plan, iam, ledger, mid, history, at, dry_run)

    for principal, admin in gcs_admins:
        from . import revocation_gcs

        paths += revocation_gcs.revoke_gcs(principal, principal.index, buckets=gcs_buckets(policy), admin=admin,
                                           probes=credentials, ledger=ledger, migration_id=mid, dry_run=dry_run)

    failures += [f"{p.kind} {p.credential_id} of {p.principal}: {p.reason}" for p in paths if p.status == "failed"]
    summary = _summary(paths, keys, dry_run, at)
    summary["failed"] = failures
    log.log(logging.ERROR if failures else logging.WARNING if summary["not_proven"] else logging.INFO,
            "%sforeign access: %d path(s) %s; by kind %s; proofs %s; %d failed",
            "DRY RUN: " if dry_run else "", len(paths) + summary["keys"]["count"],
            "would change" if dry_run else "handled", summary["by_kind"], summary["by_status"], len(failures))
    if not dry_run:
        ledger.audit(mid, "revoke.all.done", summary)
        ledger.record_phase(mid, "revoke", summary)
    if failures:
        raise RevocationNotProven(failures)
    return summary


def _summary(paths: list[PathRevocation], keys: Any, dry_run: bool, at: str) -> dict[str, Any]:
    key_list = []
    if keys is not None:
        for k in keys.revocations:
            key_list.append({"kind": "access_key", "principal": f"aws:iam::user/{k.user}", "credential_id":
                             k.access_key_id, "outcome": "would_revoke" if dry_run else (
                                 "already_revoked" if k.already_revoked else "pending" if k.delete_due else "revoked"), "status": str(k.status), "reason": k.reason})
    rows = key_list + [{"kind": p.kind, "principal": p.principal, "credential_id": p.credential_id,
                        "outcome": p.outcome, "status": p.status, "method": p.method, "action": p.action,
                        "reason": p.reason} for p in paths]
    return {
        "dry_run": dry_run, "sessions_issued_before": at, "paths": rows,
        "keys": {"count": len(key_list), "revoked": getattr(keys, "keys_revoked", 0),
                 "already_revoked": getattr(keys, "keys_already_revoked", 0)},
        "by_kind": dict(Counter(r["kind"] for r in rows)), "by_status": dict(Counter(r["status"] for r in rows)),
        "by_outcome": dict(Counter(r["outcome"] for r in rows)),
        "not_proven": [f"{r['kind']} {r['credential_id']}: {r['reason']}" for r in rows
                       if r["status"] == "not_proven" and not dry_run],
    }


def _resolve(credentials: Credentials, conn_id: str, field: str) -> Any:
    try:
        return credentials(conn_id)
    except Exception as exc:  # noqa: BLE001 - any lookup failure names the field, not the secret
        raise PolicyError(field, conn_id, f"the connection cannot be resolved ({type(exc).__name__}: {exc})") from exc


_VERBS = {"would_revoke": "will change", "already_revoked": "already revoked", "revoked": "revoked",
          "pending": "inactive, deletion pending"}


def plan_markdown(summary: dict[str, Any]) -> list[str]:
    """The approver's table: one row per path that approving would change (or that is already closed)."""
    rows = summary["paths"]
    if not rows:
        return ["The policy's principals have no access path left to close: nothing would change."]
    lines = ["Approving changes these access paths, then proves each closed (an attempt through it refused, or the "
             "server's configuration read back):", "",
             "| kind | principal | path | action | now |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind'].replace('_', ' ')} | {r['principal']} | `{r['credential_id']}` | "
                     f"{r.get('action', 'deactivate+delete').replace('-', ' ')} | {_VERBS.get(r['outcome'], r['outcome'])} |")
    return lines


def preflight_gcs(policy: Policy, ledger: Ledger, credentials: Credentials) -> list[str]:
    """Read-only problems of the GCS principals (see :func:`residency.revocation_gcs.preflight_gcs`)."""
    problems: list[str] = []
    for principal in policy.gcs_revocations:
        from . import revocation_gcs

        try:
            admin = _resolve(credentials, principal.conn_id, f"revoke[{principal.index}].conn_id")
        except PolicyError as exc:
            problems.append(str(exc))
            continue
        problems += revocation_gcs.preflight_gcs(principal, principal.index, buckets=gcs_buckets(policy), admin=admin,
                                                 probes=credentials, ledger=ledger, migration_id=policy.migration_id)
    return problems


def recheck(policy: Policy, credentials: Credentials) -> dict[str, Any]:
    """Read-only, at the moment evidence is written: which AWS paths of the principals are open *now*.

    Re-lists the selected users' access keys and console passwords, every role's trust
    policy and the grants on the policy's S3 buckets. ``open`` lists each path still
    there (a key still listed, even inactive, counts until it is deleted); GCS principals
    are listed under ``not_rechecked`` (their proofs are the records').
    """
    open_paths: list[str] = []
    for principal in policy.revocations:
        iam = _resolve(credentials, principal.conn_id, f"revoke[{principal.index}].conn_id")
        users = select_users(principal, iam)
        plan = revocation_paths.plan_paths(principal, iam, users, aws_buckets(policy))
        open_paths += [f"role {r['name']} still trusts {', '.join(r['matched'])}" for r in plan.roles]
        open_paths += [f"bucket s3://{b['bucket']} still grants to {', '.join(b['policy_matched'])}"
                       for b in plan.buckets if b["policy_matched"]]
        open_paths += [f"bucket s3://{b['bucket']} still has {len(b['acl_matched'])} ACL grant(s) to the principal"
                       for b in plan.buckets if b["acl_matched"]]
        client = iam.client("iam")
        for user in plan.arn_of:
            keys = client.list_access_keys(UserName=user)["AccessKeyMetadata"]
            chosen = [k for k in keys if principal.access_keys is None or k["AccessKeyId"] in principal.access_keys]
            open_paths += [f"IAM user {user} still has access key {k['AccessKeyId']} ({k['Status']})" for k in chosen]
            if revocation_paths._login_profile(client, user) is not None:
                open_paths.append(f"IAM user {user} still has a console password")
    at = now()
    log.info("recheck at %s: %d AWS access path(s) still open%s", at, len(open_paths),
             (": " + "; ".join(open_paths)) if open_paths else "")
    return {"at": at, "open": open_paths, "not_rechecked": [p.label for p in policy.gcs_revocations]}
