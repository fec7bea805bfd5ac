"""The AWS access paths besides access keys: roles, sessions, console passwords, bucket grants.

For one AWS principal of the policy (users selected by name or tag, and/or a
foreign account), :func:`revoke_paths` closes, in this order:

1. ``role_trust``: every trust-policy entry of our roles that lets the principal
   assume the role (its users' ARNs, or the account: ``arn:aws:iam::<id>:root``,
   a bare ``<id>``, any ARN in that account). Proof: with the foreign party's
   probe key, ``sts:AssumeRole`` was allowed before and refused after.
2. ``sessions`` (per role, then per user): sessions already issued cannot be
   recalled, so an inline policy ``ResidencyRevokeOlderSessions`` denies every
   action to sessions whose ``aws:TokenIssueTime`` is before the revocation time,
   which is what the console's "Revoke active sessions" does. Proof: a session
   the probe key obtained *before* (AssumeRole) was allowed to list and is
   refused after. Where no session could be obtained and used before, the proof
   is the deny statement read back.
3. ``bucket_policy`` / ``bucket_acl`` on the policy's S3 buckets (sources and
   destinations): statements granting to the principal lose it (a statement left
   with no principal is dropped; a policy left empty is deleted); ACL grants to
   its canonical ids are removed. Proof: read back (we hold no credential of the
   foreign account to attempt through a grant).
4. ``login_profile`` (after the keys, see :func:`residency.revocation.revoke`):
   the console password is deleted. Proof: read back (no API signs in to the
   console).

Every change keeps the server's document before and after. Local emulator
caveats (moto 5.2.5): it enforces role trust policies on AssumeRole and the
role's inline policies on its sessions, but it evaluates no ``DateLessThan``
condition (a ``Deny`` with that condition denies every session, old or new) and
cannot use a ``GetSessionToken`` session at all; tests assert only that.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from botocore.exceptions import BotoCoreError, ClientError

from .access import PathRevocation, attempt, read_back_proof, record
from .clients import AwsCredentials
from .ledger import Ledger, now
from .revocation import DENIAL_CODES, RevocationFailed, judge_proof

log = logging.getLogger(__name__)

DENY_POLICY = "ResidencyRevokeOlderSessions"


@dataclass
class AwsPaths:
    """What :func:`plan_paths` found for one principal (read-only)."""

    name: str  # the principal's label in records
    users: list[str]
    arn_of: dict[str, str]  # user -> ARN (users IAM still lists)
    account: str | None
    canonical_ids: set[str]
    roles: list[dict[str, Any]] = field(default_factory=list)  # {name, arn, trust (doc), matched [principals]}
    buckets: list[dict[str, Any]] = field(default_factory=list)  # {bucket, region, policy (text|None), acl, ...}
    sessions: dict[str, Any] = field(default_factory=dict)  # role arn -> (session creds, before attempt)
    trust_before: dict[str, dict[str, Any]] = field(default_factory=dict)  # role arn -> AssumeRole attempt


def _code(exc: BaseException) -> tuple[str, bool] | None:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return code, code in DENIAL_CODES
    if isinstance(exc, BotoCoreError):
        return type(exc).__name__, False
    return None


def _call(fn: Callable[..., Any], what: str, **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise RevocationFailed(f"{what}: {exc}") from exc


def _doc(raw: Any) -> dict[str, Any]:
    """An IAM policy document: boto3 gives trust policies decoded, bucket policies as text."""
    if isinstance(raw, str):
        from urllib.parse import unquote

        text = raw if raw.lstrip().startswith("{") else unquote(raw)
        return json.loads(text)
    return dict(raw or {})


def _principal_values(statement: Mapping[str, Any]) -> list[str]:
    principal = statement.get("Principal")
    if principal == "*":
        return ["*"]
    if isinstance(principal, Mapping):
        aws = principal.get("AWS", [])
        return [aws] if isinstance(aws, str) else list(aws)
    return []


def _is_foreign(value: str, paths: AwsPaths) -> bool:
    if value in paths.arn_of.values():
        return True
    if paths.account:
        return value == paths.account or value.startswith(f"arn:aws:iam::{paths.account}:")
    return False


def strip_principals(document: Mapping[str, Any], paths: AwsPaths, actions: str | None = None
                     ) -> tuple[dict[str, Any], list[str]]:
    """The document without the principal's entries (in Allow statements), and the entries removed.

    A statement left without principals is dropped. ``actions`` limits the
    change to statements whose Action mentions it (``sts:AssumeRole``)."""
    out = dict(document)
    kept: list[Any] = []
    removed: list[str] = []
    statements = document.get("Statement", [])
    for statement in statements if isinstance(statements, list) else [statements]:
        values = _principal_values(statement)
        foreign = [v for v in values if v != "*" and _is_foreign(v, paths)]
        if statement.get("Effect") != "Allow" or not foreign:
            kept.append(statement)
            continue
        removed.extend(foreign)
        rest = [v for v in values if v not in foreign]
        if rest:
            s = dict(statement)
            s["Principal"] = dict(s["Principal"], AWS=rest if len(rest) > 1 else rest[0])
            kept.append(s)
    out["Statement"] = kept
    return out, removed


def plan_paths(principal: Any, iam: AwsCredentials, users: list[str], buckets: Iterable[str]) -> AwsPaths:
    """Read-only: the principal's users' ARNs, the roles that trust it, the bucket grants to it."""
    client = iam.client("iam")
    arns: dict[str, str] = {}
    for user in users:
        try:
            arns[user] = client.get_user(UserName=user)["User"]["Arn"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchEntity":
                raise RevocationFailed(f"reading IAM user {user}: {exc}") from exc
    paths = AwsPaths(principal.label, list(users), arns, principal.account, set(principal.canonical_ids))
    for page in _call(client.get_paginator("list_roles").paginate, "listing IAM roles"):
        for role in page["Roles"]:
            trust = _doc(role.get("AssumeRolePolicyDocument"))
            _, matched = strip_principals(trust, paths)
            if matched:
                paths.roles.append({"name": role["RoleName"], "arn": role["Arn"], "trust": trust, "matched": matched})
    s3 = iam.client("s3")
    for bucket in buckets:
        info = _bucket_grants(s3, bucket, paths)
        if info["policy_matched"] or info["acl_matched"]:
            paths.buckets.append(info)
    log.info("principal %s: users %s; %d role(s) trust it (%s); %d S3 bucket(s) grant to it (%s)",
             paths.name, users or "none", len(paths.roles), ", ".join(r["name"] for r in paths.roles) or "none",
             len(paths.buckets), ", ".join(b["bucket"] for b in paths.buckets) or "none")
    return paths


def _bucket_grants(s3: Any, bucket: str, paths: AwsPaths) -> dict[str, Any]:
    try:
        policy = s3.get_bucket_policy(Bucket=bucket)["Policy"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucketPolicy":
            raise RevocationFailed(f"reading the policy of bucket {bucket}: {exc}") from exc
        policy = None
    matched = strip_principals(_doc(policy), paths)[1] if policy else []
    acl = _call(s3.get_bucket_acl, f"reading the ACL of bucket {bucket}", Bucket=bucket)
    acl_matched = [g for g in acl.get("Grants", []) if g.get("Grantee", {}).get("ID") in paths.canonical_ids]
    return {"bucket": bucket, "policy": policy, "policy_matched": matched,
            "acl": {"Owner": acl.get("Owner"), "Grants": acl.get("Grants", [])}, "acl_matched": acl_matched}


def probe_before(paths: AwsPaths, probe: AwsCredentials | None, probe_uri: str | None) -> None:
    """With the foreign key, before anything changes: assume each trusting role (the trust
    path's before-attempt) and list with that session (the session path's before-attempt)."""
    if probe is None or not probe_uri:
        return
    sts = probe.client("sts")
    for role in paths.roles:
        got: dict[str, Any] = {}

        def assume(arn: str = role["arn"]) -> None:
            got.update(sts.assume_role(RoleArn=arn, RoleSessionName="residency-probe", DurationSeconds=3600))

        paths.trust_before[role["arn"]] = attempt("sts:AssumeRole", role["arn"], probe.access_key_id, assume, _code)
        if got:
            c = got["Credentials"]
            session = AwsCredentials(conn_id=f"{probe.conn_id}-session", access_key_id=c["AccessKeyId"],
                                     secret_access_key=c["SecretAccessKey"], session_token=c["SessionToken"],
                                     region_name=probe.region_name, endpoint_url=probe.endpoint_url)
            before = _list(session, probe_uri)
            paths.sessions[role["arn"]] = (session, before)
        log.info("probe before %s: sts:AssumeRole %s with key %s -> %s", paths.name, role["arn"],
                 probe.access_key_id, "allowed" if got else paths.trust_before[role["arn"]]["error_code"])


def _list(creds: AwsCredentials, uri: str) -> dict[str, Any]:
    from .uris import parse_uri

    ref = parse_uri(uri, "probe_uri")
    kwargs = {"Bucket": ref.bucket, "MaxKeys": 1, **({"Prefix": ref.key} if ref.key else {})}
    return attempt("s3:ListObjectsV2", ref.uri, creds.access_key_id or "",
                   lambda: creds.client("s3").list_objects_v2(**kwargs), _code)


def deny_document(at: str) -> dict[str, Any]:
    """The inline policy that refuses every session issued before ``at``."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "DenySessionsIssuedBeforeRevocation", "Effect": "Deny", "Action": "*", "Resource": "*",
        "Condition": {"DateLessThan": {"aws:TokenIssueTime": at}}}]}


def _judged(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, fallback: Callable[[], tuple[str, str]]
            ) -> tuple[str, str, str]:
    """(status, method, reason): an attempt pair when the before-attempt was allowed, else the read-back."""
    if before is not None and before.get("allowed") and after is not None:
        status, reason = judge_proof(before, after)
        return str(status), "denied_attempt", reason
    status, reason = fallback()
    why = (f" The attempt before the change was not allowed ({before['error_code']}), so none can prove it."
           if before is not None else " No attempt through this path could be made before the change.")
    return status, "read_back", reason + why


def revoke_trust_and_sessions(paths: AwsPaths, iam: AwsCredentials, ledger: Ledger, mid: str, history: set[str],
                              at: str, dry_run: bool, probe: AwsCredentials | None) -> list[PathRevocation]:
    """Steps 1 and 2 for the roles: trust entries removed, older sessions denied; each with its proof."""
    client = iam.client("iam")
    out: list[PathRevocation] = []
    for role in paths.roles:
        new, removed = strip_principals(role["trust"], paths)
        if not new["Statement"]:  # IAM refuses an empty trust policy: deny the removed principals instead
            new["Statement"] = [{"Effect": "Deny", "Principal": {"AWS": removed}, "Action": "sts:AssumeRole"}]
        if dry_run:
            log.info("would remove %s from the trust policy of role %s", removed, role["name"])
            out.append(_dry(paths.name, "role_trust", role["arn"], "remove-trust-entries", role["trust"], new))
            out.append(_dry(paths.name, "sessions", role["arn"], "deny-sessions-before", None, deny_document(at)))
            continue
        _call(client.update_assume_role_policy, f"updating the trust policy of role {role['name']}",
              RoleName=role["name"], PolicyDocument=json.dumps(new))
        log.info("removed %s from the trust policy of role %s", removed, role["name"])
        after_doc = _doc(_call(client.get_role, f"reading role {role['name']}", RoleName=role["name"])
                         ["Role"]["AssumeRolePolicyDocument"])
        still = strip_principals(after_doc, paths)[1]
        after = None
        if probe is not None and role["arn"] in paths.trust_before:
            sts = probe.client("sts")
            after = attempt("sts:AssumeRole", role["arn"], probe.access_key_id or "",
                            lambda arn=role["arn"]: sts.assume_role(RoleArn=arn, RoleSessionName="residency-probe"),
                            _code)
        status, method, reason = _judged(paths.trust_before.get(role["arn"]), after, lambda: read_back_proof(
            "role_trust", f"a trust entry for {', '.join(still or removed)}", bool(still), now()))
        out.append(record(ledger, mid, PathRevocation(
            paths.name, "role_trust", f"role_trust:{role['arn']}", "remove-trust-entries", "revoked", status, method,
            reason, role["trust"], after_doc, paths.trust_before.get(role["arn"]), after, {"removed": removed})))
        out.append(_deny_sessions(paths, client, ledger, mid, history, at, "role", role["name"], role["arn"]))
    return out


def deny_user_sessions(paths: AwsPaths, iam: AwsCredentials, ledger: Ledger, mid: str, history: set[str], at: str,
                       dry_run: bool) -> list[PathRevocation]:
    """Step 2 for the users (after their keys): sessions they obtained before ``at`` are denied."""
    client = iam.client("iam")
    out = []
    for user, arn in paths.arn_of.items():
        if dry_run:
            out.append(_dry(paths.name, "sessions", arn, "deny-sessions-before", None, deny_document(at)))
        else:
            out.append(_deny_sessions(paths, client, ledger, mid, history, at, "user", user, arn))
    return out


def _deny_sessions(paths: AwsPaths, client: Any, ledger: Ledger, mid: str, history: set[str], at: str, kind: str,
                   name: str, arn: str) -> PathRevocation:
    cid = f"sessions:{arn}"
    get = client.get_role_policy if kind == "role" else client.get_user_policy
    put = client.put_role_policy if kind == "role" else client.put_user_policy
    key = {"RoleName": name} if kind == "role" else {"UserName": name}
    existing = _inline(get, key)
    already = existing is not None and cid in history
    if not already:  # a deny from an earlier run keeps its time: later sessions were never the foreign party's
        _call(put, f"denying older sessions of {kind} {name}", PolicyName=DENY_POLICY,
              PolicyDocument=json.dumps(deny_document(at)), **key)
        log.info("denied every session of %s %s issued before %s (inline policy %s)", kind, name, at, DENY_POLICY)
    after_doc = _inline(get, key)
    issued_before = _deny_time(after_doc)
    session = paths.sessions.get(arn)
    before, after = (session[1], _list(session[0], session[1]["target"])) if session else (None, None)

    def read_back() -> tuple[str, str]:
        if issued_before is None:
            return "failed", (f"read back at {now()}, {kind} {name} holds no {DENY_POLICY} deny: sessions issued "
                              "before the revocation still work.")
        return "proven", (f"read back at {now()}, {kind} {name} holds the inline policy {DENY_POLICY} denying "
                          f"every action to sessions issued before {issued_before}.")

    status, method, reason = _judged(before, after, read_back)
    return record(ledger, mid, PathRevocation(
        paths.name, "sessions", cid, "deny-sessions-before", "already_revoked" if already else "revoked", status,
        method, reason, existing, after_doc, before, after, {"issued_before": issued_before}))


def _deny_time(doc: Mapping[str, Any] | None) -> str | None:
    """The ``aws:TokenIssueTime`` before which ``doc`` denies everything, or None if it does not."""
    for statement in (doc or {}).get("Statement", []):
        when = statement.get("Condition", {}).get("DateLessThan", {}).get("aws:TokenIssueTime")
        if statement.get("Effect") == "Deny" and statement.get("Action") == "*" and when:
            return str(when)
    return None


def _inline(get: Callable[..., Any], key: Mapping[str, str]) -> dict[str, Any] | None:
    try:
        return _doc(get(PolicyName=DENY_POLICY, **key)["PolicyDocument"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchEntity":
            return None
        raise RevocationFailed(f"reading inline policy {DENY_POLICY}: {exc}") from exc


def revoke_bucket_grants(paths: AwsPaths, iam: AwsCredentials, ledger: Ledger, mid: str, history: set[str],
                         dry_run: bool) -> list[PathRevocation]:
    """Step 3: the principal's statements and ACL grants on the policy's S3 buckets."""
    s3 = iam.client("s3")
    out = []
    for info in paths.buckets:
        bucket = info["bucket"]
        if info["policy_matched"]:
            new, removed = strip_principals(_doc(info["policy"]), paths)
            if dry_run:
                out.append(_dry(paths.name, "bucket_policy", f"s3://{bucket}", "remove-statements", info["policy"], new))
            else:
                if new["Statement"]:
                    _call(s3.put_bucket_policy, f"writing the policy of bucket {bucket}", Bucket=bucket,
                          Policy=json.dumps(new))
                else:
                    _call(s3.delete_bucket_policy, f"deleting the policy of bucket {bucket}", Bucket=bucket)
                log.info("removed %s from the policy of bucket %s", removed, bucket)
                after = _bucket_grants(s3, bucket, paths)
                status, reason = read_back_proof("bucket_policy", f"a grant to {', '.join(after['policy_matched'])}"
                                                 if after["policy_matched"] else "a grant", bool(after["policy_matched"]), now())
                out.append(record(ledger, mid, PathRevocation(
                    paths.name, "bucket_policy", f"bucket_policy:s3://{bucket}", "remove-statements", "revoked", status,
                    "read_back", reason, info["policy"], after["policy"], details={"removed": removed})))
        if info["acl_matched"]:
            grants = [g for g in info["acl"]["Grants"] if g not in info["acl_matched"]]
            new_acl = {"Owner": info["acl"]["Owner"], "Grants": grants}
            if dry_run:
                out.append(_dry(paths.name, "bucket_acl", f"s3://{bucket}", "remove-grants", info["acl"], new_acl))
                continue
            _call(s3.put_bucket_acl, f"writing the ACL of bucket {bucket}", Bucket=bucket, AccessControlPolicy=new_acl)
            log.info("removed %d ACL grant(s) to %s from bucket %s", len(info["acl_matched"]),
                     sorted(paths.canonical_ids), bucket)
            after = _bucket_grants(s3, bucket, paths)
            status, reason = read_back_proof("bucket_acl", "an ACL grant to the principal", bool(after["acl_matched"]),
                                             now())
            out.append(record(ledger, mid, PathRevocation(
                paths.name, "bucket_acl", f"bucket_acl:s3://{bucket}", "remove-grants", "revoked", status, "read_back",
                reason, info["acl"], after["acl"], details={"removed": info["acl_matched"]})))
    return out


def recheck_already(paths: AwsPaths, iam: AwsCredentials, ledger: Ledger, mid: str, earlier: Mapping[str, Any],
                    buckets: Iterable[str]) -> list[PathRevocation]:
    """Paths an earlier run closed that hold nothing now: read back again, recorded ``already_revoked``."""
    out = []
    s3 = iam.client("s3")
    open_roles = {f"role_trust:{r['arn']}" for r in paths.roles}
    open_buckets = {f"{k}:s3://{b['bucket']}" for b in paths.buckets for k in ("bucket_policy", "bucket_acl")}
    for cid, rec in earlier.items():
        kind = cid.split(":", 1)[0]
        if kind == "role_trust" and cid not in open_roles:
            arn = cid.split(":", 1)[1]
            doc = _doc(iam.client("iam").get_role(RoleName=arn.rsplit("/", 1)[-1])["Role"]["AssumeRolePolicyDocument"])
            still = strip_principals(doc, paths)[1]
        elif kind == "sessions" and ":role/" in cid and f"role_trust:{cid.split(':', 1)[1]}" not in open_roles:
            role = cid.rsplit("/", 1)[-1]
            doc = _inline(iam.client("iam").get_role_policy, {"RoleName": role})
            still = [] if _deny_time(doc) else [role]
        elif kind in ("bucket_policy", "bucket_acl") and cid not in open_buckets:
            bucket = cid.split("s3://", 1)[1]
            if bucket not in set(buckets):
                continue
            info = _bucket_grants(s3, bucket, paths)
            doc = info["policy"] if kind == "bucket_policy" else info["acl"]
            still = info["policy_matched"] if kind == "bucket_policy" else info["acl_matched"]
        else:
            continue
        what = (f"role {cid.rsplit('/', 1)[-1]} without its deny for sessions issued before the revocation"
                if kind == "sessions" else "a grant to the principal")
        status, reason = read_back_proof(kind, what, bool(still), now())
        proof = rec["proof"]
        out.append(record(ledger, mid, PathRevocation(
            paths.name, kind, cid, rec["action"], "already_revoked", status,
            "denied_attempt" if proof.get("method") == "denied_attempt" and not still else "read_back",
            (f"revoked by an earlier run at {rec['at']}; " + proof.get("reason", "")) if not still else reason,
            proof.get("snapshot_before"), doc, proof.get("before"), proof.get("after"))))
    return out


def revoke_login_profiles(paths: AwsPaths, iam: AwsCredentials, ledger: Ledger, mid: str, history: set[str],
                          dry_run: bool) -> list[PathRevocation]:
    """Step 4: the users' console passwords."""
    client = iam.client("iam")
    out = []
    for user, arn in paths.arn_of.items():
        cid = f"login_profile:{arn}"
        profile = _login_profile(client, user)
        if profile is None and cid not in history:
            continue  # never had one: nothing to revoke (the plan says so)
        if dry_run:
            out.append(_dry(paths.name, "login_profile", arn, "delete", profile, None))
            continue
        if profile is not None:
            _call(client.delete_login_profile, f"deleting the console password of IAM user {user}", UserName=user)
            log.info("deleted the console password (login profile) of IAM user %s", user)
        status, reason = read_back_proof("login_profile", f"a console password for IAM user {user}",
                                         _login_profile(client, user) is not None, now())
        out.append(record(ledger, mid, PathRevocation(
            paths.name, "login_profile", cid, "delete", "revoked" if profile else "already_revoked", status,
            "read_back", reason, profile, None)))
    return out


def _login_profile(client: Any, user: str) -> dict[str, Any] | None:
    try:
        profile = client.get_login_profile(UserName=user)["LoginProfile"]
        return {k: str(v) for k, v in profile.items()}
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchEntity":
            return None
        raise RevocationFailed(f"reading the login profile of IAM user {user}: {exc}") from exc


def _dry(principal: str, kind: str, target: str, action: str, before: Any, after: Any) -> PathRevocation:
    log.info("DRY RUN: would %s %s (%s) of %s", action.replace("-", " "), kind.replace("_", " "), target, principal)
    return PathRevocation(principal, kind, f"{kind}:{target}", action, "would_revoke", "not_proven", "read_back",
                          "dry run: nothing was changed.", before, after)


def earlier_paths(ledger: Ledger, mid: str, principal: str) -> dict[str, dict[str, Any]]:
    """The latest record of each path this migration revoked for ``principal``."""
    out: dict[str, dict[str, Any]] = {}
    for r in ledger.get_revocations(mid):
        if r["principal"] == principal and r["proof"].get("kind") and r["proof"]["kind"] != "access_key":
            out[r["credential_id"]] = r
    return out
