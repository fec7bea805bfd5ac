"""One revoked access path: what changed, the server's state before and after, and its proof.

Keys, console passwords, sessions, role trust entries, bucket-policy statements,
ACL grants, GCS HMAC keys, bucket IAM members and service-account keys are all
*paths* by which a foreign party reaches the data. Each revocation of one path is a
:class:`PathRevocation`, recorded in the ledger (``residency_revocations``) and
shown in the evidence with:

- ``snapshot_before`` / ``snapshot_after``: what the server held (the key's
  metadata, the policy document, the binding list), read from the server;
- ``proof``: how we know the path is closed. ``method`` is
  ``denied_attempt`` (an attempt through this very path was allowed before and
  refused after, each with its time and error code; decided by
  :func:`residency.revocation.judge_proof`) or ``read_back`` (for a grant or a
  console password, which nothing here can attempt through: the server's own
  configuration, read back after the change, no longer holds it; the evidence
  reads it again when it is written). ``status`` is ``proven``,
  ``not_proven`` (with why) or ``failed`` (the path still works).
- ``outcome``: ``revoked`` (this run), ``already_revoked`` (an earlier run, or
  it was never there when we looked and the ledger shows we removed it),
  ``pending`` (deactivated, deletion due after the soak time), ``would_revoke``
  (dry run).

No Airflow, no SDK here: the provider modules (:mod:`residency.revocation`,
:mod:`residency.revocation_paths`, :mod:`residency.revocation_gcs`) build these.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .ledger import Ledger, now

log = logging.getLogger(__name__)

#: Path kinds, in the order the report lists them.
KINDS = (
    "access_key", "login_profile", "sessions", "role_trust", "bucket_policy", "bucket_acl",
    "hmac_key", "bucket_binding", "service_account_key",
)
METHODS = ("denied_attempt", "read_back")


@dataclass(frozen=True)
class PathRevocation:
    """One path of one principal. ``credential_id`` is unique per principal and path
    (``role_trust:arn:aws:iam::…:role/x``, an HMAC access id, ``gs://b#member``)."""

    principal: str
    kind: str
    credential_id: str
    action: str
    outcome: str
    status: str  # proven | not_proven | failed
    method: str  # denied_attempt | read_back
    reason: str
    snapshot_before: Any = None
    snapshot_after: Any = None
    attempt_before: Mapping[str, Any] | None = None
    attempt_after: Mapping[str, Any] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def proof(self) -> dict[str, Any]:
        """The ``proof`` JSON the ledger keeps (the same keys as a key revocation's, plus the path's)."""
        after = self.attempt_after
        return {
            "status": self.status, "reason": self.reason, "method": self.method, "kind": self.kind,
            "outcome": self.outcome, "before": dict(self.attempt_before) if self.attempt_before else None,
            "after": dict(after) if after else None,
            "denied": (after.get("denied") if after else None),
            "snapshot_before": self.snapshot_before, "snapshot_after": self.snapshot_after,
            "already_revoked": self.outcome == "already_revoked", **dict(self.details),
        }


def record(ledger: Ledger, migration_id: str, rev: PathRevocation) -> PathRevocation:
    """Keep one path's revocation in the ledger and the audit log, and log it for the task log."""
    proof = rev.proof()
    ledger.record_revocation(migration_id, principal=rev.principal, credential_id=rev.credential_id,
                             action=rev.action, proof=proof)
    ledger.audit(migration_id, "revoke.path", {
        "principal": rev.principal, "credential_id": rev.credential_id, "action": rev.action, "proof": proof,
    })
    level = {"proven": logging.INFO, "not_proven": logging.WARNING}.get(rev.status, logging.ERROR)
    log.log(level, "%s %s of %s: %s; proof %s by %s: %s", rev.kind, rev.credential_id, rev.principal,
            rev.outcome.replace("_", " "), rev.status.upper(), rev.method.replace("_", " "), rev.reason)
    return rev


def attempt(
    action: str, target: str, credential_id: str, call: Callable[[], Any],
    classify: Callable[[BaseException], tuple[str, bool] | None],
) -> dict[str, Any]:
    """Make one access attempt and describe it: ``{at, action, target, access_key_id, allowed, denied, error_code}``.

    ``classify(exc)`` returns ``(error_code, denied)`` for an error the provider
    answered, or None to let the exception propagate. ``access_key_id`` names the
    credential that made the attempt (an access key id, an HMAC access id, a member).
    """
    outcome: dict[str, Any] = {"at": now(), "action": action, "target": target, "access_key_id": credential_id}
    try:
        call()
        outcome.update(allowed=True, denied=False, error_code=None)
    except Exception as exc:  # noqa: BLE001 - classified below; anything unknown propagates
        found = classify(exc)
        if found is None:
            raise
        code, denied = found
        outcome.update(allowed=False, denied=denied, error_code=code)
    return outcome


def read_back_proof(kind: str, what: str, holds: bool, at: str) -> tuple[str, str]:
    """Status and reason of a read-back proof: ``holds`` is whether the server still holds the path."""
    if holds:
        return "failed", f"read back at {at}, the server still holds {what}: the path is open."
    return "proven", (f"read back at {at}, the server no longer holds {what}; no access attempt can be made "
                      f"through a {kind.replace('_', ' ')} from here, so the server's own configuration is the proof "
                      "(read again when the evidence is written).")
