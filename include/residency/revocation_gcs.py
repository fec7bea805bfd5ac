"""Close a foreign Google Cloud party's access paths, path by path, and prove each one.

For one ``revoke:`` principal of provider ``gcs`` (:class:`residency.policy.GcsPrincipal`),
:func:`revoke_gcs`

1. plans, read-only, before anything changes: the selected service accounts (named,
   or every account of ``project`` whose email ends with ``@domain``), their HMAC keys,
   the selected members in the IAM bindings of every GCS bucket of the policy (source
   and destination), the user-managed keys of the selected service accounts, and the
   probe connections. A named HMAC key that does not exist (and that this migration
   never revoked) stops the run here, before any change;
2. probes *before*: the HMAC probe lists one object of ``probe_uri`` through the XML
   API (S3-compatible, signed with the foreign HMAC key); the member probe exchanges
   its service-account key for a token, then lists one object through the JSON API;
3. HMAC keys: sets each INACTIVE, probes again (proof), then deletes it (GCS refuses to
   delete an ACTIVE key);
4. bucket IAM bindings: removes the selected members from every binding of every
   bucket (read-modify-write with the policy's etag), reads the policy back and probes
   with the member probe;
5. service-account keys: disables each user-managed key, tries the token exchange
   again when the member probe holds that key (proof), then deletes it. Google-managed
   (SYSTEM_MANAGED) keys cannot be disabled or deleted by anyone and never leave Google:
   they are listed in the log and the records' details, not touched.

Each path is one :class:`residency.access.PathRevocation`, recorded with
:func:`residency.access.record`: ``hmac_key`` (credential id: the access id),
``bucket_binding`` (``gs://bucket#member``), ``service_account_key`` (the key id).
Principals read ``gcs:serviceAccount:<email>`` (or ``gcs:<member>`` for a selected
member that is not a service account, e.g. ``gcs:domain:example.com``).

Proofs: ``denied_attempt`` (judged by :func:`residency.revocation.judge_proof`) where a
probe attempts through that very path (the HMAC key the probe holds; the member the
probe authenticates as, on the probe bucket; the key file the probe holds); otherwise
``read_back`` for a binding or a service-account key (the server no longer holds it),
and ``not_proven`` for an HMAC key no probe holds (as for an AWS access key). A
refusal counts only when it is an authentication or authorization refusal (HTTP
401/403, ``InvalidAccessKeyId``, ``AccessDenied``, OAuth ``invalid_grant``).

Re-runs: a path this migration revoked earlier (ledger, or a ``revoke.gcs.start`` audit
record of an interrupted run) that the server no longer holds is recorded
``already_revoked`` and probed again; an allowed before-attempt on record may count.
Dry run: plan and probe only; nothing changes and nothing is recorded. Records with
status ``failed`` (a path still open) are returned, not raised: the caller raises
:class:`residency.revocation.RevocationNotProven` once every provider is recorded.

Secrets (HMAC secrets, private keys, tokens) never reach a log, a record or a message.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .access import PathRevocation, attempt, read_back_proof, record
from .clients import AwsCredentials, GcsCredentials
from .errors import PolicyError, ResidencyError
from .ledger import Ledger, now
from .revocation import DENIAL_CODES, RevocationFailed, judge_proof
from .uris import parse_uri

if TYPE_CHECKING:
    from .policy import GcsPrincipal

log = logging.getLogger(__name__)

ACTIONS = {"hmac_key": "deactivate+delete", "bucket_binding": "remove_member", "service_account_key": "disable+delete"}
HMAC_PROBE = "s3:ListObjectsV2 (XML API, HMAC)"
MEMBER_PROBE = "storage.objects.list"
TOKEN_PROBE = "oauth2:token (jwt-bearer)"
START_EVENT = "revoke.gcs.start"

Probes = Callable[[str], Any]


@dataclass(frozen=True)
class _History:
    """What this migration's earlier runs left: revoked paths (kind, credential id) -> principal, allowed befores."""

    revoked: dict[tuple[str, str], str]
    befores: dict[tuple[str, str], list[dict[str, Any]]]


@dataclass(frozen=True)
class _Path:
    kind: str
    principal: str
    credential_id: str
    state: Any  # what the server holds now (key metadata / resource); None: it holds nothing
    already: bool  # revoked by an earlier run of this migration


@dataclass
class _Plan:
    index: int
    principal: GcsPrincipal
    accounts: tuple[str, ...] = ()
    hmac: list[_Path] = field(default_factory=list)
    bindings: list[_Path] = field(default_factory=list)
    policies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # bucket -> bindings now
    sa_keys: list[_Path] = field(default_factory=list)
    system_keys: dict[str, list[str]] = field(default_factory=dict)  # email -> SYSTEM_MANAGED key ids
    hmac_probe: AwsCredentials | None = None
    member_probe: GcsCredentials | None = None
    problems: list[ResidencyError] = field(default_factory=list)

    @property
    def field(self) -> str:
        return f"revoke[{self.index}]"

    @property
    def probe_member(self) -> str | None:
        return f"serviceAccount:{self.member_probe.keyfile_dict['client_email']}" if self.member_probe else None

    @property
    def probe_key_id(self) -> str | None:
        return str(self.member_probe.keyfile_dict.get("private_key_id")) if self.member_probe else None


# -- public --------------------------------------------------------------------------
def revoke_gcs(
    principal: GcsPrincipal, index: int, *, buckets: Sequence[str], admin: GcsCredentials, probes: Probes,
    ledger: Ledger, migration_id: str, dry_run: bool,
) -> list[PathRevocation]:
    """Close every HMAC key, bucket IAM membership and service-account key of one foreign GCS principal.

    Args:
        principal: the policy's ``revoke[index]`` (provider ``gcs``).
        buckets: names of the policy's GCS buckets (sources and destinations) whose bindings are checked.
        admin: credentials that manage HMAC keys, bucket IAM and service-account keys.
        probes: conn id -> the foreign party's credentials (``AwsCredentials`` for the HMAC
            probe, ``GcsCredentials`` with a key file for the member probe).
        dry_run: plan and probe before, change and record nothing (records ``would_revoke``).

    Returns:
        One record per path, in the order HMAC keys, bindings, service-account keys.

    Raises:
        PolicyError: a named HMAC key or service account does not exist (``revoke[i].hmac_keys``,
            ``.service_accounts``), a probe connection cannot be resolved or holds the wrong
            kind of credentials (``.hmac_probe_conn_id``, ``.member_probe_conn_id``), or
            ``probe_uri`` is not a ``gs://`` URI; raised before anything changes.
        RevocationFailed: a listing or a change was refused or failed.
    """
    history = _history(ledger, migration_id)
    plan = _plan(principal, index, buckets, admin, probes, history)
    for problem in plan.problems:
        log.error("gcs principal %s: %s", principal.label, problem)
    if plan.problems:
        raise plan.problems[0]
    befores = _probe_all(plan, "probe before")
    if dry_run:
        return [_dry(p) for p in (*plan.hmac, *plan.bindings, *plan.sa_keys)]
    client = admin.client()
    out = [_revoke_hmac(plan, p, client, befores, history, ledger, migration_id) for p in plan.hmac]
    out += _revoke_bindings(plan, client, befores, history, ledger, migration_id)
    session = admin.http_session()
    out += [_revoke_sa_key(plan, p, admin, session, befores, history, ledger, migration_id) for p in plan.sa_keys]
    log.info("gcs principal %s: %d path(s) recorded (%s)", principal.label, len(out),
             ", ".join(f"{r.kind} {r.credential_id}: {r.outcome}/{r.status}" for r in out) or "none")
    return out


def check_gcs(
    principal: GcsPrincipal, index: int, *, buckets: Sequence[str], admin: GcsCredentials, probes: Probes,
    ledger: Ledger, migration_id: str,
) -> None:
    """Read-only: raise what :func:`revoke_gcs` would refuse to start for (called before any
    principal's change, so one bad field changes nothing anywhere)."""
    plan = _plan(principal, index, buckets, admin, probes, _history(ledger, migration_id))
    if plan.problems:
        raise plan.problems[0]


def preflight_gcs(
    principal: GcsPrincipal, index: int, *, buckets: Sequence[str], admin: GcsCredentials, probes: Probes,
    ledger: Ledger, migration_id: str,
) -> list[str]:
    """Read-only: can this principal be revoked and its revocation proven? One sentence per problem, naming the field.

    Checks what :func:`revoke_gcs` plans (service accounts, named HMAC keys, bucket
    policies, probe connections) and that every probe is allowed now, unless the path it
    attempts through was already revoked by this migration (a refusal after the
    revocation proves nothing if the attempt is refused before it). Never writes, never raises
    for a problem.
    """
    history = _history(ledger, migration_id)
    plan = _plan(principal, index, buckets, admin, probes, history)
    found = [_describe(plan, p) for p in plan.problems]
    revoked = {cid for (_, cid) in history.revoked}
    checks = []
    if plan.hmac_probe is not None and plan.hmac_probe.access_key_id not in revoked:
        checks.append(("hmac_probe_conn_id", principal.hmac_probe_conn_id, lambda: _hmac_attempt(plan)))
    if plan.member_probe is not None and plan.probe_key_id not in revoked:
        checks.append(("member_probe_conn_id", principal.member_probe_conn_id, lambda: _token_attempt(plan)))
        checks.append(("probe_uri", principal.probe_uri, lambda: _member_attempt(plan)))
    for name, value, make in checks:
        before = make()
        _log_attempt("preflight probe", before)
        if not before["allowed"]:
            found.append(f"{plan.field}.{name} = {value!r} (principal {principal.label}): the probe "
                         f"{before['action']} on {before['target']} as {before['access_key_id']} is "
                         f"{_outcome(before)} before the revocation, so a refusal after it would prove nothing.")
    for problem in found:
        log.warning("preflight: %s", problem)
    log.info("preflight of gcs principal %s: %d problem(s)", principal.label, len(found))
    return found


# -- history -------------------------------------------------------------------------
def _history(ledger: Ledger, migration_id: str) -> _History:
    """Paths this migration revoked (or started revoking) and the allowed before-attempts it recorded."""
    revoked: dict[tuple[str, str], str] = {}
    befores: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def keep(kind: str, cid: str, principal: str, before: Any, done: bool) -> None:
        if done:
            revoked[(kind, cid)] = principal
        if isinstance(before, Mapping) and before.get("allowed") is True:
            befores.setdefault((kind, cid), []).append(dict(before))

    for r in ledger.get_revocations(migration_id):
        proof = r["proof"]
        if proof.get("kind") in ACTIONS and r["principal"].startswith("gcs:"):
            done = proof.get("outcome") in ("revoked", "already_revoked")
            keep(proof["kind"], r["credential_id"], r["principal"], proof.get("before"), done)
    for rec in ledger.audit_records(migration_id):
        if rec["event"] == START_EVENT:
            data = json.loads(rec["data"])
            keep(data["kind"], data["credential_id"], data["principal"], data.get("before"), True)
    return _History(revoked, befores)


def _before_for(kind: str, cid: str, before: dict[str, Any] | None, after: Mapping[str, Any],
                history: _History) -> tuple[dict[str, Any] | None, bool]:
    """This run's before-attempt if allowed, else the latest allowed one on record with the same action,
    target and credential; second item: it is from an earlier run."""
    if before is not None and before["allowed"]:
        return before, False
    same = [b for b in history.befores.get((kind, cid), [])
            if (b.get("action"), b.get("target"), b.get("access_key_id"))
            == (after["action"], after["target"], after["access_key_id"])]
    return (same[-1], True) if same else (before, False)


# -- planning (read-only) ------------------------------------------------------------
def _plan(principal: GcsPrincipal, index: int, buckets: Sequence[str], admin: GcsCredentials, probes: Probes,
          history: _History) -> _Plan:
    plan = _Plan(index, principal)
    try:
        _plan_probes(plan, probes)
        client, session = admin.client(), admin.http_session()
        plan.accounts = _select_accounts(plan, admin, session, history)
        _plan_hmac(plan, client, history)
        _plan_bindings(plan, client, buckets, history)
        _plan_sa_keys(plan, admin, session, history)
    except ResidencyError as exc:
        plan.problems.append(exc)
    except Exception as exc:  # noqa: BLE001 - any SDK or network failure of a read is reported
        plan.problems.append(RevocationFailed(f"planning gcs principal {principal.label}: {_safe(exc)}"))
    return plan


def _plan_probes(plan: _Plan, probes: Probes) -> None:
    p, f = plan.principal, plan.field
    if (p.hmac_probe_conn_id or p.member_probe_conn_id) and not p.probe_uri:
        plan.problems.append(PolicyError(f"{f}.probe_uri", p.probe_uri, "a probe connection needs a gs:// probe_uri"))
        return
    if p.probe_uri and parse_uri(p.probe_uri, f"{f}.probe_uri").provider != "gs":
        plan.problems.append(PolicyError(f"{f}.probe_uri", p.probe_uri, "a gcs principal is probed on a gs:// URI"))
        return
    if p.hmac_probe_conn_id:
        creds = _resolve(plan, probes, p.hmac_probe_conn_id, "hmac_probe_conn_id")
        if creds is not None and not (isinstance(creds, AwsCredentials) and creds.access_key_id):
            plan.problems.append(PolicyError(f"{f}.hmac_probe_conn_id", p.hmac_probe_conn_id,
                                             "expected an aws-type connection holding an HMAC access id"))
        elif creds is not None:
            plan.hmac_probe = creds
    if p.member_probe_conn_id:
        creds = _resolve(plan, probes, p.member_probe_conn_id, "member_probe_conn_id")
        keyfile = getattr(creds, "keyfile_dict", None) or {}
        if creds is not None and not (isinstance(creds, GcsCredentials) and keyfile.get("client_email")):
            plan.problems.append(PolicyError(f"{f}.member_probe_conn_id", p.member_probe_conn_id,
                                             "expected a google_cloud_platform connection holding a service-account "
                                             "key file (keyfile_dict)"))
        elif creds is not None:
            plan.member_probe = creds


def _resolve(plan: _Plan, probes: Probes, conn_id: str, name: str) -> Any:
    try:
        return probes(conn_id)
    except Exception as exc:  # noqa: BLE001 - reported as a policy problem naming the field
        plan.problems.append(PolicyError(f"{plan.field}.{name}", conn_id,
                                         f"the probe connection cannot be resolved ({type(exc).__name__}: {exc})"))
        return None


def _selects(plan: _Plan, member: str) -> bool:
    """Whether a binding member belongs to the principal (its service accounts, or its domain)."""
    p = plan.principal
    if p.domain and member == f"domain:{p.domain}":
        return True
    kind, _, email = member.partition(":")
    if kind not in ("serviceAccount", "user", "group") or "@" not in email:
        return False
    return email in plan.accounts or email in p.service_accounts or bool(
        p.domain and email.lower().endswith("@" + p.domain.lower()))


def _select_accounts(plan: _Plan, admin: GcsCredentials, session: Any, history: _History) -> tuple[str, ...]:
    p = plan.principal
    listed = _iam_list(session, f"{admin.iam_endpoint}/v1/projects/{p.project}/serviceAccounts", "accounts")
    emails = {a["email"] for a in listed}
    chosen = set(p.service_accounts)
    if p.domain:
        chosen |= {e for e in emails if e.lower().endswith("@" + p.domain.lower())}
    seen = set(history.revoked.values())
    for email in p.service_accounts:
        if email not in emails and _name(f"serviceAccount:{email}") not in seen:
            plan.problems.append(PolicyError(f"{plan.field}.service_accounts", email,
                                             f"project {p.project} has no such service account"))
    log.info("gcs principal %s: service accounts selected: %s", p.label, sorted(chosen) or "none")
    return tuple(sorted(chosen))


def _plan_hmac(plan: _Plan, client: Any, history: _History) -> None:
    p = plan.principal
    keys = {k.access_id: dict(k._properties) for k in
            client.list_hmac_keys(project_id=p.project, show_deleted_keys=True, retry=None)}
    if p.hmac_keys is None:
        wanted = [a for a, m in keys.items() if m.get("serviceAccountEmail") in plan.accounts]
        wanted += [cid for (kind, cid), who in history.revoked.items()
                   if kind == "hmac_key" and who.split(":", 2)[-1] in plan.accounts and cid not in wanted]
    else:
        wanted = list(dict.fromkeys(p.hmac_keys))
    for access_id in wanted:
        meta = keys.get(access_id)
        gone = meta is None or meta.get("state") == "DELETED"
        done = ("hmac_key", access_id) in history.revoked
        if gone and not done:
            if p.hmac_keys is not None:
                plan.problems.append(PolicyError(
                    f"{plan.field}.hmac_keys", access_id,
                    f"project {p.project} has no such HMAC key (or it was deleted outside this migration)"))
            continue
        who = _name(f"serviceAccount:{meta['serviceAccountEmail']}") if meta else history.revoked[("hmac_key",
                                                                                                   access_id)]
        plan.hmac.append(_Path("hmac_key", who, access_id, None if gone else meta, gone))
    log.info("gcs principal %s: HMAC keys to revoke %s; already revoked %s", p.label,
             [x.credential_id for x in plan.hmac if not x.already] or "none",
             [x.credential_id for x in plan.hmac if x.already] or "none")


def _plan_bindings(plan: _Plan, client: Any, buckets: Sequence[str], history: _History) -> None:
    for bucket in buckets:
        policy = client.bucket(bucket).get_iam_policy(requested_policy_version=3, retry=None)
        bindings = policy.to_api_repr().get("bindings", [])
        plan.policies[bucket] = bindings
        present = sorted({m for b in bindings for m in b.get("members", ()) if _selects(plan, m)})
        for member in present:
            roles = [b["role"] for b in bindings if member in b.get("members", ())]
            plan.bindings.append(_Path("bucket_binding", _name(member), f"gs://{bucket}#{member}", roles, False))
            log.info("gcs principal %s: gs://%s grants %s to %s", plan.principal.label, bucket, roles, member)
        for (kind, cid), who in history.revoked.items():
            b, _, member = cid.removeprefix("gs://").partition("#")
            if kind == "bucket_binding" and b == bucket and member not in present and _selects(plan, member):
                plan.bindings.append(_Path(kind, who, cid, None, True))


def _plan_sa_keys(plan: _Plan, admin: GcsCredentials, session: Any, history: _History) -> None:
    for email in plan.accounts:
        url = f"{admin.iam_endpoint}/v1/projects/{plan.principal.project}/serviceAccounts/{email}/keys"
        keys = _iam_list(session, url, "keys", missing_ok=True)
        ids = set()
        for key in keys:
            key_id = key["name"].rsplit("/", 1)[1]
            ids.add(key_id)
            if key.get("keyType") == "SYSTEM_MANAGED":
                plan.system_keys.setdefault(email, []).append(key_id)
                continue
            plan.sa_keys.append(_Path("service_account_key", _name(f"serviceAccount:{email}"), key_id, key, False))
        for (kind, cid), who in history.revoked.items():
            if kind == "service_account_key" and who == _name(f"serviceAccount:{email}") and cid not in ids:
                plan.sa_keys.append(_Path(kind, who, cid, None, True))
        if plan.system_keys.get(email):
            log.info("service account %s: Google-managed (SYSTEM_MANAGED) keys %s are listed, not touched: nobody "
                     "can disable or delete them and their private halves never leave Google",
                     email, plan.system_keys[email])


def _iam_list(session: Any, url: str, item: str, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    token = None
    while True:
        resp = session.get(url, params={"pageToken": token} if token else None, timeout=30)
        if resp.status_code == 404 and missing_ok:
            return out
        _check(resp, f"listing {url}")
        body = resp.json()
        out.extend(body.get(item, []))
        token = body.get("nextPageToken")
        if not token:
            return out


def _check(resp: Any, what: str) -> None:
    if resp.status_code >= 400:
        try:
            message = resp.json().get("error", {}).get("message", "")
        except ValueError:
            message = resp.text[:200]
        raise RevocationFailed(f"{what}: HTTP {resp.status_code} {message}")


# -- probes --------------------------------------------------------------------------
def _probe_all(plan: _Plan, what: str) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {"hmac": None, "member": None, "token": None}
    if plan.hmac_probe is not None:
        out["hmac"] = _hmac_attempt(plan)
    if plan.member_probe is not None:
        out["token"] = _token_attempt(plan)
        out["member"] = _member_attempt(plan)
    for a in out.values():
        if a is not None:
            _log_attempt(what, a)
    return out


def _hmac_attempt(plan: _Plan) -> dict[str, Any]:
    """List one object of probe_uri through the XML API, signed with the foreign HMAC key."""
    from botocore.exceptions import BotoCoreError, ClientError

    creds, ref = plan.hmac_probe, parse_uri(plan.principal.probe_uri, "probe_uri")
    kwargs: dict[str, Any] = {"Bucket": ref.bucket, "MaxKeys": 1, **({"Prefix": ref.key} if ref.key else {})}

    def classify(exc: BaseException) -> tuple[str, bool] | None:
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            return code, code in DENIAL_CODES
        return (type(exc).__name__, False) if isinstance(exc, BotoCoreError) else None

    return attempt(HMAC_PROBE, ref.uri, creds.access_key_id,
                   lambda: creds.client("s3").list_objects_v2(**kwargs), classify)


def _token_attempt(plan: _Plan) -> dict[str, Any]:
    """Exchange the probe's service-account key for an access token (the key's own path)."""
    from google.auth.transport.requests import Request

    creds = plan.member_probe

    def call() -> None:
        creds.google_credentials().refresh(Request())

    return attempt(TOKEN_PROBE, creds.keyfile_dict.get("token_uri", "token endpoint"), plan.probe_key_id, call,
                   _classify_google)


def _member_attempt(plan: _Plan) -> dict[str, Any]:
    """List one object of probe_uri through the JSON API as the probe's member (a fresh token each time)."""
    creds, ref = plan.member_probe, parse_uri(plan.principal.probe_uri, "probe_uri")

    def call() -> None:
        pages = creds.client().list_blobs(ref.bucket, prefix=ref.key or None, max_results=1, retry=None).pages
        next(iter(pages), None)

    def classify(exc: BaseException) -> tuple[str, bool] | None:
        found = _classify_google(exc)
        if found is not None and found[0] == "invalid_grant":
            return "invalid_grant (no token: the binding was not reached)", False
        return found

    return attempt(MEMBER_PROBE, ref.uri, plan.probe_member, call, classify)


def _classify_google(exc: BaseException) -> tuple[str, bool] | None:
    """401/403 and OAuth ``invalid_grant`` are refusals; anything else the server or network said is neither."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as aexc

    if isinstance(exc, gexc.GoogleAPICallError):
        return str(exc.code), exc.code in (401, 403)
    if isinstance(exc, aexc.RefreshError):
        data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], Mapping) else {}
        code = str(data.get("error") or ("invalid_grant" if "invalid_grant" in str(exc) else "RefreshError"))
        return code, code == "invalid_grant"
    if isinstance(exc, (aexc.TransportError, requests.RequestException)):
        return type(exc).__name__, False
    return None


# -- execution -----------------------------------------------------------------------
def _dry(path: _Path) -> PathRevocation:
    verb = "was revoked by an earlier run" if path.already else "would be revoked"
    log.info("DRY RUN: %s %s of %s %s", path.kind.replace("_", " "), path.credential_id, path.principal, verb)
    return PathRevocation(path.principal, path.kind, path.credential_id, ACTIONS[path.kind],
                          "already_revoked" if path.already else "would_revoke", "not_proven", "read_back",
                          "dry run: nothing was revoked.", snapshot_before=path.state)


def _start(ledger: Ledger, migration_id: str, path: _Path, before: dict[str, Any] | None) -> None:
    ledger.audit(migration_id, START_EVENT, {"kind": path.kind, "principal": path.principal,
                                             "credential_id": path.credential_id, "before": before})


def _revoke_hmac(plan: _Plan, path: _Path, client: Any, befores: Mapping[str, Any], history: _History,
                 ledger: Ledger, migration_id: str) -> PathRevocation:
    """Deactivate, probe (if the probe holds this key), delete, read back."""
    from google.cloud.storage.hmac_key import HMACKeyMetadata

    held = plan.hmac_probe is not None and plan.hmac_probe.access_key_id == path.credential_id
    before = befores["hmac"] if held else None
    meta = HMACKeyMetadata(client, access_id=path.credential_id, project_id=plan.principal.project)
    if not path.already:
        _start(ledger, migration_id, path, before)
        if path.state["state"] == "ACTIVE":
            meta.state = "INACTIVE"
            _call(lambda: meta.update(retry=None), f"deactivating HMAC key {path.credential_id}")
            log.info("set HMAC key %s of %s INACTIVE", path.credential_id, path.principal)
    after = _hmac_attempt(plan) if held else None
    if after is not None:
        _log_attempt("probe after", after)
    if not path.already:
        _call(lambda: meta.delete(retry=None), f"deleting HMAC key {path.credential_id}")
        log.info("deleted HMAC key %s of %s", path.credential_id, path.principal)
    found = _call(lambda: meta.reload(retry=None) or True, f"reading back HMAC key {path.credential_id}",
                  missing_ok=True)
    state_after = (meta._properties.get("state") or "unknown") if found else "not found"
    if state_after not in ("DELETED", "not found"):
        status, method = "failed", "read_back"
        reason = f"read back at {now()}, the HMAC key is {state_after}: the path is open."
    elif after is not None:
        key_before, earlier = _before_for(path.kind, path.credential_id, before, after, history)
        status, reason = judge_proof(key_before, after, before_from_earlier_run=earlier)
        status, method, before = str(status), "denied_attempt", key_before
    else:
        status, method = "not_proven", "denied_attempt"
        reason = (f"no probe holds this key (hmac_probe_conn_id holds "
                  f"{plan.hmac_probe.access_key_id if plan.hmac_probe else 'none'}), so no attempt was made with it; "
                  f"the server shows it {state_after}.")
    return record(ledger, migration_id, PathRevocation(
        path.principal, path.kind, path.credential_id, ACTIONS[path.kind],
        "already_revoked" if path.already else "revoked", status, method, reason,
        snapshot_before=path.state, snapshot_after=dict(meta._properties) if found else None,
        attempt_before=before, attempt_after=after,
        details={"service_account": path.principal.split(":", 2)[-1], "state_after": state_after}))


def _revoke_bindings(plan: _Plan, client: Any, befores: Mapping[str, Any], history: _History, ledger: Ledger,
                     migration_id: str) -> list[PathRevocation]:
    """Remove the members from each bucket's policy, read every policy back, then probe once as the member."""
    todo: dict[str, set[str]] = {}
    for path in plan.bindings:
        bucket, _, member = path.credential_id.removeprefix("gs://").partition("#")
        if not path.already:
            todo.setdefault(bucket, set()).add(member)
            _start(ledger, migration_id, path, befores["member"])
    for bucket, members in todo.items():
        _remove_members(client, bucket, members)
    after_policies = {b: client.bucket(b).get_iam_policy(requested_policy_version=3, retry=None).to_api_repr()
                      .get("bindings", []) for b in {p.credential_id[5:].partition("#")[0] for p in plan.bindings}}
    after = _member_attempt(plan) if plan.member_probe is not None and plan.bindings else None
    if after is not None:
        _log_attempt("probe after", after)
    return [_binding_record(plan, p, after_policies, befores["member"], after, history, ledger, migration_id)
            for p in plan.bindings]


def _remove_members(client: Any, bucket: str, members: set[str], tries: int = 3) -> None:
    """Read-modify-write of one bucket's policy, conditional on its etag (re-read on 412)."""
    from google.api_core.exceptions import PreconditionFailed

    for attempt_no in range(tries):
        policy = client.bucket(bucket).get_iam_policy(requested_policy_version=3, retry=None)
        for binding in policy.bindings:
            for member in sorted(members & set(binding["members"])):
                log.info("removing %s from role %s of gs://%s", member, binding["role"], bucket)
            binding["members"] = set(binding["members"]) - members
        policy.bindings = [b for b in policy.bindings if b["members"]]
        try:
            _call(lambda: client.bucket(bucket).set_iam_policy(policy, retry=None),
                  f"setting the IAM policy of gs://{bucket}", passthrough=(PreconditionFailed,))
            log.info("set the IAM policy of gs://%s without %s", bucket, sorted(members))
            return
        except PreconditionFailed:
            log.info("the IAM policy of gs://%s changed meanwhile (412); reading it again", bucket)
    raise RevocationFailed(f"setting the IAM policy of gs://{bucket}: its etag changed {tries} times in a row")


def _binding_record(plan: _Plan, path: _Path, after_policies: Mapping[str, list[dict[str, Any]]],
                    before: dict[str, Any] | None, after: dict[str, Any] | None, history: _History,
                    ledger: Ledger, migration_id: str) -> PathRevocation:
    bucket, _, member = path.credential_id.removeprefix("gs://").partition("#")
    bindings = after_policies[bucket]
    holds = any(member in b.get("members", ()) for b in bindings)
    at = now()
    applies = after is not None and after["target"].startswith(f"gs://{bucket}") and (
        member == plan.probe_member or member == f"domain:{plan.probe_member.rsplit('@', 1)[-1]}")
    used_before = None
    if holds or not applies or not (after["allowed"] or after["denied"]):
        status, reason = read_back_proof(path.kind, f"{member} in the IAM bindings of gs://{bucket}", holds, at)
        method = "read_back"
        if applies:
            reason += f" (the member probe after it was {_outcome(after)}: neither allowed nor refused.)"
        after_rec = after if applies else None
    else:
        used_before, earlier = _before_for(path.kind, path.credential_id, before, after, history)
        status, reason = judge_proof(used_before, after, before_from_earlier_run=earlier)
        status, method, after_rec = str(status), "denied_attempt", after
    return record(ledger, migration_id, PathRevocation(
        path.principal, path.kind, path.credential_id, ACTIONS[path.kind],
        "already_revoked" if path.already else "revoked", status, method, reason,
        snapshot_before=plan.policies.get(bucket), snapshot_after=bindings,
        attempt_before=used_before, attempt_after=after_rec,
        details={"bucket": bucket, "member": member, "roles": path.state or []}))


def _revoke_sa_key(plan: _Plan, path: _Path, admin: GcsCredentials, session: Any, befores: Mapping[str, Any],
                   history: _History, ledger: Ledger, migration_id: str) -> PathRevocation:
    """Disable, try the token exchange (if the probe holds this key), delete, read back."""
    email = path.principal.split(":", 2)[-1]
    url = f"{admin.iam_endpoint}/v1/projects/{plan.principal.project}/serviceAccounts/{email}/keys/{path.credential_id}"
    held = plan.member_probe is not None and plan.probe_key_id == path.credential_id
    before = befores["token"] if held else None
    if not path.already:
        _start(ledger, migration_id, path, before)
        if not path.state.get("disabled"):
            _check(session.post(f"{url}:disable", json={}, timeout=30), f"disabling key {path.credential_id}")
            log.info("disabled service-account key %s of %s", path.credential_id, email)
    after = _token_attempt(plan) if held else None
    if after is not None:
        _log_attempt("probe after", after)
    if not path.already:
        _check(session.delete(url, timeout=30), f"deleting key {path.credential_id}")
        log.info("deleted service-account key %s of %s", path.credential_id, email)
    resp = session.get(url, timeout=30)
    if resp.status_code not in (200, 404):
        _check(resp, f"reading back key {path.credential_id}")
    at, holds = now(), resp.status_code == 200
    state_after = resp.json() if holds else None
    if holds or after is None or not (after["allowed"] or after["denied"]):
        status, reason = read_back_proof(path.kind, f"key {path.credential_id} of {email}", holds, at)
        method, used_before = "read_back", None
    else:
        used_before, earlier = _before_for(path.kind, path.credential_id, before, after, history)
        status, reason = judge_proof(used_before, after, before_from_earlier_run=earlier)
        status, method = str(status), "denied_attempt"
    return record(ledger, migration_id, PathRevocation(
        path.principal, path.kind, path.credential_id, ACTIONS[path.kind],
        "already_revoked" if path.already else "revoked", status, method, reason,
        snapshot_before=path.state, snapshot_after=state_after, attempt_before=used_before,
        attempt_after=after if method == "denied_attempt" else None,
        details={"service_account": email, "system_managed_keys": plan.system_keys.get(email, [])}))


# -- small helpers -------------------------------------------------------------------
def _call(fn: Callable[[], Any], what: str, *, missing_ok: bool = False, passthrough: tuple[type, ...] = ()) -> Any:
    from google.api_core import exceptions as gexc

    try:
        return fn()
    except passthrough:
        raise
    except gexc.NotFound:
        if missing_ok:
            return None
        raise RevocationFailed(f"{what}: not found") from None
    except Exception as exc:  # noqa: BLE001 - any refusal or failure of a change stops the revocation
        raise RevocationFailed(f"{what}: {_safe(exc)}") from exc


def _safe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _name(member: str) -> str:
    return f"gcs:{member}"


def _outcome(a: Mapping[str, Any] | None) -> str:
    if a is None:
        return "not made"
    if a["allowed"]:
        return "allowed"
    return f"refused ({a['error_code']})" if a["denied"] else f"failed ({a['error_code']})"


def _log_attempt(what: str, a: Mapping[str, Any]) -> None:
    log.info("%s: %s on %s as %s -> %s", what, a["action"], a["target"], a["access_key_id"], _outcome(a))


def _describe(plan: _Plan, problem: ResidencyError) -> str:
    if isinstance(problem, PolicyError):
        return f"{problem.field} = {problem.value!r} (principal {plan.principal.label}): {problem.reason}."
    return (f"{plan.field}.conn_id = {plan.principal.conn_id!r} (principal {plan.principal.label}): "
            f"the admin connection cannot read what the revocation needs ({problem}).")
