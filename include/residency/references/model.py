"""What the reference phases report: reasons, journal states and result records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Why a reference still points overseas (or at a copy that is not proven).
NOT_IN_SCOPE = "not_in_scope"
"""No ledger row: not media, outside the source prefix, or a dangling link."""
NOT_VERIFIED = "not_verified"
"""The ledger knows the object, but it is not verified (discovered, copied, failed)."""
NOT_ATTESTED = "not_attested"
"""Verified once, but not re-proven by this run's recheck: never repointed."""
CONFLICT = "conflict"
"""The cutover found the cell changed by the application and left it alone."""
ROLLED_BACK = "rolled_back"
"""The cutover of this cell was rolled back."""
NOT_REWRITTEN = "not_rewritten"
"""The object is verified but the cell still points overseas (cutover did not run
since, the application wrote the old URL back, or the URL is outside the JSON
paths the policy names)."""
PRESIGNED = "presigned"
"""A presigned URL: it carries a signature for the overseas object and expires;
rewriting it would make a URL that cannot work."""
OTHER_VERSION = "other_version"
"""The URL names a version (versionId / generation) other than the migrated one."""
NO_DOMESTIC_HOST = "no_domestic_host"
"""A CDN hostname in front of a source bucket, but the policy names no domestic hostname."""
UNRECOGNISED = "unrecognised"
"""The cell mentions an overseas bucket or CDN hostname, but not in a URL style the
parser knows: it cannot be classified, so it is never assumed harmless."""
STALE_DESTINATION = "stale_destination"
"""The cell points at a destination the plan no longer names (the plan changed)."""
UNPROVEN_COPY = "unproven_copy"
"""The cell points at a domestic copy that is not verified and re-proven now."""

REASONS = (NOT_IN_SCOPE, NOT_VERIFIED, NOT_ATTESTED, CONFLICT, ROLLED_BACK, NOT_REWRITTEN, PRESIGNED,
           OTHER_VERSION, NO_DOMESTIC_HOST, UNRECOGNISED, STALE_DESTINATION, UNPROVEN_COPY)

REASON_WORDS = {
    NOT_IN_SCOPE: "the object is not in the migration's scope (not media, outside the prefixes, or it does not exist)",
    NOT_VERIFIED: "the object was not verified, so the reference was not repointed",
    NOT_ATTESTED: "the object's copy was not re-proven before the cutover, so the reference was not repointed",
    CONFLICT: "the application changed the cell during the cutover; its value was left alone",
    ROLLED_BACK: "the cutover of this reference was rolled back",
    NOT_REWRITTEN: "the object is verified but the reference still points overseas",
    PRESIGNED: "a presigned URL of the overseas object (it expires; it cannot be rewritten)",
    OTHER_VERSION: "the URL names another version of the object than the one migrated",
    NO_DOMESTIC_HOST: "a CDN hostname with no domestic hostname named in the policy",
    UNRECOGNISED: "mentions an overseas bucket or hostname in a form that is not a recognised URL",
    STALE_DESTINATION: "points at a destination the migration plan no longer names",
    UNPROVEN_COPY: "points at a domestic copy that is not verified and re-proven now",
}

# Journal states.
PENDING, APPLIED, CONFLICTED, ROLLED_BACK_STATE = "pending", "applied", "conflict", "rolled_back"

MAX_EXAMPLES = 50


@dataclass(frozen=True)
class CutoverResult:
    """What a cutover run did. ``per_column`` is keyed ``table.column``.

    Every scanned reference is exactly one of rewritten, already_rewritten,
    residual or conflicts: ``scanned == rewritten + already_rewritten + residual
    + conflicts``. ``ignored`` counts cells that name no object of a source
    bucket (NULL, other hosts, other buckets); they are not references.
    ``repointed`` (part of ``rewritten``) counts references moved from one
    domestic copy to another after the destination plan changed. In a dry run
    ``rewritten`` counts what would be rewritten and ``conflicts`` is 0.
    Counts are of references (a text cell may hold several), ``ignored`` of cells.
    """

    scanned: int
    rewritten: int
    already_rewritten: int
    residual: int
    residual_by_reason: dict[str, int]
    per_column: dict[str, dict[str, int]]
    batches: int
    dry_run: bool
    conflicts: int = 0
    ignored: int = 0
    repointed: int = 0


@dataclass(frozen=True)
class RollbackResult:
    """What a rollback did. ``not_applied``: pending journal rows whose write never landed."""

    restored: int
    skipped_changed: int
    dry_run: bool
    not_applied: int = 0
    table: str | None = None


@dataclass(frozen=True)
class Finding:
    """One reference that keeps the migration from being complete (unless accepted).

    ``object_uri`` is the overseas object named (``None`` for an unrecognised
    mention); ``excerpt`` is the URL or the text around the mention, with
    signatures and tokens redacted; ``accepted`` is the policy's reason when an
    ``accepted_residual`` rule covers it.
    """

    column: str
    key: str
    reason: str
    object_uri: str | None
    excerpt: str
    state: str | None = None
    accepted: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "column": self.column, "key": self.key, "reason": self.reason, "object_uri": self.object_uri,
            "excerpt": self.excerpt, "state": self.state, "accepted": self.accepted,
        }


@dataclass(frozen=True)
class ResidualReport:
    """Every reference that still points overseas, or at a copy that is not proven.

    ``residual`` counts the blocking ones (by reason in ``by_reason``); those a
    policy rule accepts are counted in ``accepted`` (per rule in
    ``accepted_by_rule``) and do not block. ``examples`` holds at most 50,
    blocking first. ``domestic_ok`` counts references to domestic copies that are
    verified and re-proven.
    """

    cells_scanned: int
    residual: int
    by_reason: dict[str, int]
    examples: list[dict[str, Any]]
    per_column: dict[str, dict[str, int]] = field(default_factory=dict)
    accepted: int = 0
    accepted_by_rule: list[dict[str, Any]] = field(default_factory=list)
    references: int = 0
    domestic_ok: int = 0
    attest_stamp: str | None = None
