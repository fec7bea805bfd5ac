"""The evidence report auditors read: ``evidence.json`` and ``evidence.html``.

Every count is read from the ledger, never from task return values. The verdict
is the conjunction of named rules (:data:`COMPLETE_RULES`): ``complete`` is true
only when every rule holds, and each rule that fails lists its problems, one
plain sentence each. What the report states is re-proven at the moment it is
written or it does not count:

- object counts come from the ledger, and a verified object counts as migrated
  only if the latest attestation (:mod:`residency.attest`) re-proved it, and no
  phase changed the ledger after that attestation;
- the references section is the residual scan made for this report (the caller
  passes it; a scan recorded earlier is never reused);
- a revocation counts only with its own proof: the credential's access was
  allowed before and denied after.

:func:`write_evidence` writes ``audit.jsonl`` (:mod:`.chain`), ``objects.jsonl``
(one line per object, every state, with its checksums and proof sentence), then
``evidence.json`` (validated against ``schemas/evidence.schema.json``) and
``evidence.html``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import sqlalchemy as sa

from .. import __version__
from ..ledger import CUT_OVER, FAILED, VERIFIED, Ledger, journal, now
from ..policy import Policy
from ..references.model import REASON_WORDS, ResidualReport
from .chain import AUDIT_FILE, ChainHead, atomic_write, export_audit_log

log = logging.getLogger(__name__)

EVIDENCE_VERSION = 2
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "evidence.schema.json"
OBJECTS_FILE = "objects.jsonl"
EVIDENCE_JSON = "evidence.json"
EVIDENCE_HTML = "evidence.html"
FAILURES_CAP = 200
"""At most this many failed (or unreadable) objects are listed per source bucket; objects.jsonl has all failed ones."""
SAMPLE_SIZE = 50
PHASES = ("preflight", "inventory", "copy", "verify", "catch_up", "recheck", "freeze", "final_pass", "cutover",
          "unfreeze", "rollback", "revoke", "attest", "residual")
#: Phases that change what the attestation re-proved; one recorded after it makes it stale.
CHANGING_PHASES = ("inventory", "copy", "verify", "catch_up", "recheck", "final_pass", "cutover", "rollback")

# Count categories of a source bucket, route and the reconciliation, in display order,
# with the words an auditor reads in the HTML page.
COUNT_LABELS: dict[str, str] = {
    "inventoried": "Listed in the bucket (all objects)",
    "in_scope": "In scope (media selected by the policy)",
    "out_of_scope": "Out of scope (not media, or excluded by the policy)",
    "unreadable": "Listed but unreadable (their metadata could not be read, so they could not be classified)",
    "in_ledger": "Tracked object by object in the ledger",
    "copied": "Copied by this migration",
    "already_present": "Already at the destination with the same content (not copied again)",
    "verified": "Verified by checksum (including those cut over)",
    "attested": "Re-proven by the attestation just before this report",
    "cut_over": "Application references cut over",
    "failed": "Failed (not migrated)",
    "failed_before_copy": "Failed before any copy existed",
    "failed_after_copy": "Failed after copying (for example checksum mismatch)",
    "pending": "Pending (neither verified nor failed)",
}
ROUTE_COUNTS = tuple(k for k in COUNT_LABELS if k not in ("inventoried", "in_scope", "out_of_scope", "unreadable"))
METHOD_LABELS = {
    "server_reported": "checksum reported by both storage servers",
    "read_back": "destination read back and hashed",
    "read_back_both": "destination and source both read back and hashed",
}

#: What COMPLETE means, rule by rule. The verdict is complete only when every rule holds.
COMPLETE_RULES: tuple[tuple[str, str], ...] = (
    ("inventory", "Every source bucket of the policy was inventoried, and every object its listing returned was "
                  "read and classified: listed = in scope + out of scope + unreadable, with nothing unreadable."),
    ("scope", "Every source bucket has at least one object in scope: an empty scope is treated as a mistake in a "
              "prefix or the selection, never as a finished migration."),
    ("migrated", "Every in-scope object was copied (or found already present) and verified by a checksum that both "
                 "sides truly have; nothing failed or is pending; the counts reconcile in objects and bytes for each "
                 "bucket: in scope = tracked in the ledger = verified + failed, and copied + already present = "
                 "verified + failed after copying."),
    ("attested", "Every verified object was re-proven by the attestation run just before this report, after the "
                 "last phase that changed the ledger: the destination still holds the verified object and the source "
                 "still holds the migrated version; no media object arrived at a source since the inventory."),
    ("references", "The residual scan made for this report finds no application reference that points at an "
                   "overseas bucket (in any URL style, inside text or JSON too) or at a domestic copy that is not "
                   "verified and re-proven, except references the policy accepts with a stated reason; the cutover "
                   "was not rolled back."),
    ("revocation", "Every foreign access path of the policy's principals was closed, each with its own proof: for a "
                   "credential or a session, an access attempt through it was allowed before the revocation and "
                   "denied after it; for a grant or a console password, which nothing can attempt through from "
                   "here, the server's configuration read back without it. A key still inactive during its soak "
                   "time is not yet revoked."),
    ("jurisdiction", "Every destination bucket lies in the home jurisdiction."),
    ("record", "The audit log's hash chain verifies, and the per-object file lists every object of the ledger."),
    ("real_run", "The report comes from a real run, not a dry run (which changes nothing)."),
)

NOTES: tuple[str, ...] = (
    "Listed objects are every object the inventory saw in a source bucket; in-scope objects are the media files among "
    "them that the policy selects for migration.",
    "Copied objects were written to the destination by this migration; already-present objects were found at the "
    "destination with the same content and were not written again.",
    "An object counts as verified only when a checksum that both the source and the destination have (or that was "
    "computed from the source bytes and from the destination read back) is equal. Equal sizes or multipart ETags are "
    "never accepted as proof. A SHA-256 counts only when computed from bytes proven to be the source's by another "
    "checksum, or from an independent read of the source.",
    "Verified objects include those whose application references were cut over.",
    "Attested objects were re-proven just before this report: from destination listings (a checksum equal to the "
    "source's, or the very object that was verified), by reading the object's metadata or the object itself where a "
    "listing proves nothing, and from source listings (the migrated version is still the live one).",
    "The audit log is a hash chain: each record's hash covers its content and the previous record's hash, so any "
    "edit, deletion, insertion or reordering changes every later hash. The record count and the hash of the last "
    "record (the chain head) are stated in this report.",
)


@dataclass(frozen=True)
class ObjectsExport:
    """The per-object file: its name inside the evidence folder, line count and SHA-256."""

    file: str
    records: int
    sha256: str


@dataclass(frozen=True)
class EvidenceFiles:
    """What :func:`write_evidence` wrote."""

    out_dir: Path
    audit_log: Path
    objects: Path
    evidence_json: Path
    evidence_html: Path
    evidence: dict[str, Any] = field(repr=False)
    complete: bool = False


# -- the per-object file --------------------------------------------------------------

def export_objects(ledger: Ledger, migration_id: str, path: Path) -> ObjectsExport:
    """Write every object of the migration, any state, as JSON Lines (bounded memory)."""
    digest = hashlib.sha256()
    records = 0
    with atomic_write(Path(path)) as out:
        for obj in ledger.iter_objects(migration_id):
            line = json.dumps({
                "src_uri": obj["src_uri"],
                "dst_uri": obj["dst_uri"],
                "route": obj["route"],
                "state": obj["state"],
                "size": obj["size"],
                "src_version": obj.get("src_version"),
                "copy_action": obj.get("copy_action"),
                "copy_method": obj.get("copy_method"),
                "verify_algorithm": obj.get("verify_algorithm"),
                "verify_method": obj.get("verify_method"),
                "src_checksums": obj.get("src_checksums") or {},
                "dst_checksums": obj.get("dst_checksums") or {},
                "dst_etag": obj.get("dst_etag"),
                "dst_version": obj.get("dst_version"),
                "proof": obj.get("proof"),
                "attested_at": obj.get("attested_at"),
                "attest_method": obj.get("attest_method"),
                "attest_note": obj.get("attest_note"),
                "reason": obj.get("reason"),
                "updated_at": obj.get("updated_at"),
            }, ensure_ascii=False, sort_keys=True) + "\n"
            out.write(line)
            digest.update(line.encode("utf-8"))
            records += 1
    return ObjectsExport(Path(path).name, records, digest.hexdigest())


# -- counting -------------------------------------------------------------------------

class _Tally:
    """Objects and bytes per count category."""

    def __init__(self) -> None:
        self.values: dict[str, list[int]] = {k: [0, 0] for k in COUNT_LABELS}

    def add(self, category: str, objects: int, size: int) -> None:
        self.values[category][0] += objects
        self.values[category][1] += size

    def add_row(self, state: str | None, copy_action: str | None, objects: int, size: int) -> None:
        self.add("in_ledger", objects, size)
        if copy_action in ("copied", "already_present"):
            self.add(copy_action, objects, size)
        if state in (VERIFIED, CUT_OVER):
            self.add("verified", objects, size)
            if state == CUT_OVER:
                self.add("cut_over", objects, size)
        elif state == FAILED:
            self.add("failed", objects, size)
            self.add("failed_after_copy" if copy_action in ("copied", "already_present") else "failed_before_copy",
                     objects, size)
        else:  # discovered, copied, or anything a later version adds
            self.add("pending", objects, size)

    def get(self, category: str) -> dict[str, int]:
        objects, size = self.values[category]
        return {"objects": objects, "bytes": size}

    def as_dict(self, categories: Iterable[str] = COUNT_LABELS) -> dict[str, dict[str, int]]:
        return {k: self.get(k) for k in categories}


def _plus(*counts: Mapping[str, int]) -> dict[str, int]:
    return {"objects": sum(c["objects"] for c in counts), "bytes": sum(c["bytes"] for c in counts)}


def _checks(c: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    """The reconciliation rules, evaluated on one set of counts."""
    out = []
    for check_id, statement, left, right in (
        ("listing_balances", "listed = in scope + out of scope + unreadable",
         c["inventoried"], _plus(c["in_scope"], c["out_of_scope"], c["unreadable"])),
        ("inventory_matches_ledger", "in scope by the inventory = tracked in the ledger",
         c["in_scope"], c["in_ledger"]),
        ("in_scope_settled", "in scope = verified + failed",
         c["in_scope"], _plus(c["verified"], c["failed"])),
        ("copies_accounted", "copied + already present = verified + failed after copying",
         _plus(c["copied"], c["already_present"]), _plus(c["verified"], c["failed_after_copy"])),
        ("verified_attested", "verified = re-proven by the attestation",
         c["verified"], c["attested"]),
    ):
        out.append({"id": check_id, "statement": statement, "left": dict(left), "right": right,
                    "holds": dict(left) == right})
    return out


class _Verdict:
    """Problems, each under the rule it breaks."""

    def __init__(self) -> None:
        self.problems: dict[str, list[str]] = {rule: [] for rule, _ in COMPLETE_RULES}

    def fail(self, rule: str, problem: str) -> None:
        self.problems[rule].append(problem)

    @property
    def complete(self) -> bool:
        return not any(self.problems.values())

    def flat(self) -> list[str]:
        return [f"[{rule}] {p}" for rule, _ in COMPLETE_RULES for p in self.problems[rule]]

    def rules(self) -> list[dict[str, Any]]:
        return [{"id": rule, "statement": statement, "holds": not self.problems[rule], "problems": self.problems[rule]}
                for rule, statement in COMPLETE_RULES]


# -- the evidence ---------------------------------------------------------------------

def build_evidence(
    policy: Policy,
    ledger: Ledger,
    *,
    run: Mapping[str, Any],
    software: Mapping[str, Any],
    audit_head: ChainHead,
    objects_export: ObjectsExport | None = None,
    approvals: Sequence[Mapping[str, Any]] = (),
    residual: ResidualReport | None = None,
    discovery: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the evidence document from the ledger; see the module docstring.

    Args:
        policy: the policy the run obeyed (its path and SHA-256 are stated).
        ledger: the migration's ledger; every count is read from it.
        run: facts of the run (``dag_id``, ``run_id``, ``logical_date``, ``dry_run``...).
        software: versions (``residency``, ``airflow``, ``boto3``...).
        audit_head: what :func:`~.chain.export_audit_log` returned.
        objects_export: what :func:`export_objects` returned; without it the
            evidence is incomplete (no per-object proof).
        approvals: recorded approvals, each ``{who, when, step, decision}``.
        residual: the residual scan made for this report; ``None`` when the policy
            names no reference columns, or the scan could not be made (then the
            references rule fails).
        discovery: :meth:`~residency.references.DiscoveryReport.as_dict` of the
            scan of every text and JSON column made for this report; a column the
            policy does not name that holds overseas references fails the
            references rule. ``{"error": ...}`` when it could not be made (fails too).

    Returns:
        A JSON-ready dict matching ``schemas/evidence.schema.json``.
    """
    mid = policy.migration_id
    verdict = _Verdict()
    phases = {p: ledger.latest_phase(mid, p) for p in PHASES}

    # -- the attestation that re-proved the ledger just now
    attestation = _attestation(phases, verdict)
    stamp = attestation["stamp"] if attestation else None
    arrived = {uri: s for uri, s in (attestation or {}).get("sources", {}).items()}

    bucket_rows = ledger.get_buckets(mid)
    source_rows = {b["bucket_uri"]: b for b in bucket_rows if b["role"] == "source"}
    destination_rows = [b for b in bucket_rows if b["role"] == "destination"]

    per_source: dict[str, _Tally] = {}
    media: dict[str, Counter[str]] = {}
    media_bytes: dict[str, Counter[str]] = {}
    per_route: dict[str, _Tally] = {}
    route_algorithms: dict[str, Counter[str]] = {}
    route_methods: dict[str, Counter[str]] = {}
    for row in ledger.object_counts(mid):
        n, size = int(row["objects"]), int(row["bytes"] or 0)
        src = row["src_bucket_uri"]
        per_source.setdefault(src, _Tally()).add_row(row["state"], row["copy_action"], n, size)
        media.setdefault(src, Counter())[row["media_type"] or "unknown"] += n
        media_bytes.setdefault(src, Counter())[row["media_type"] or "unknown"] += size
        route = row["route"]
        per_route.setdefault(route, _Tally()).add_row(row["state"], row["copy_action"], n, size)
        route_algorithms.setdefault(route, Counter())
        route_methods.setdefault(route, Counter())
        if row["state"] in (VERIFIED, CUT_OVER):
            route_algorithms[route][row["verify_algorithm"] or "none"] += n
            route_methods[route][row["verify_method"] or "none"] += n
    for row in ledger.attested_counts(mid, stamp):
        n, size = int(row["objects"]), int(row["bytes"] or 0)
        per_source.setdefault(row["src_bucket_uri"], _Tally()).add("attested", n, size)
        per_route.setdefault(row["route"], _Tally()).add("attested", n, size)

    failures, truncated = _failures(ledger, mid)
    unreadable = _unreadable(ledger, mid)

    # -- sources
    sources = []
    total = _Tally()
    for uri in sorted(set(source_rows) | set(per_source)):
        b = source_rows.get(uri)
        tally = per_source.get(uri, _Tally())
        if b is not None:
            for category, prefix in (("inventoried", "listed"), ("in_scope", "in_scope"),
                                     ("out_of_scope", "out_of_scope"), ("unreadable", "unreadable")):
                tally.add(category, int(b[f"objects_{prefix}"] or 0), int(b[f"bytes_{prefix}"] or 0))
        else:
            verdict.fail("inventory", f"{uri}: objects from this bucket are in the ledger, but the bucket has no "
                                      "inventory record as a source.")
        for k, (o, s) in tally.values.items():
            total.add(k, o, s)
        counts = tally.as_dict()
        checks = _checks(counts)
        sources.append({
            "uri": uri,
            "provider": b["provider"] if b else uri.split("://", 1)[0],
            "region": b["location"] if b else None,
            "jurisdiction": b["jurisdiction"] if b else None,
            "placement_source": b["placement_source"] if b else None,
            "inventoried_at": b.get("inventoried_at") if b else None,
            "inventory_source": (b.get("inventory_source") or "listing") if b else None,
            "counts": counts,
            "media_types": {m: {"objects": media[uri][m], "bytes": media_bytes[uri][m]}
                            for m in sorted(media.get(uri, {}))},
            "checks": checks,
            "balanced": all(c["holds"] for c in checks),
            "failures": failures.get(uri, []),
            "failures_truncated": truncated.get(uri, 0),
            "unreadable": unreadable.get(uri, []),
            "arrived_since_inventory": int((arrived.get(uri) or {}).get("arrived", 0)),
        })
        _source_problems(uri, counts, checks, arrived.get(uri), attestation is not None, verdict)
    if not sources:
        verdict.fail("inventory", "No source bucket is recorded in the ledger: nothing was inventoried.")
    for src in policy.sources:
        if src.bucket_uri not in source_rows:
            verdict.fail("inventory", f"{src.bucket_uri}: this source bucket is named in the policy but has no "
                                      "inventory record in the ledger.")

    # -- destinations
    destinations = []
    for b in destination_rows:
        in_home = b["jurisdiction"] is not None and b["jurisdiction"] == policy.home_jurisdiction
        destinations.append({
            "uri": b["bucket_uri"], "provider": b["provider"], "region": b["location"],
            "jurisdiction": b["jurisdiction"], "placement_source": b["placement_source"],
            "in_home_jurisdiction": in_home,
        })
        if not in_home:
            where = b["jurisdiction"] or "an unknown or multi-country location"
            verdict.fail("jurisdiction", f"Destination {b['bucket_uri']} is in {where} ({b['location']}), outside the "
                                         f"home jurisdiction {policy.home_jurisdiction}.")
    recorded_destinations = {b["bucket_uri"] for b in destination_rows}
    for dst in policy.destinations.values():
        if dst.ref.bucket_uri not in recorded_destinations:
            verdict.fail("jurisdiction", f"Destination {dst.ref.bucket_uri} is named in the policy but its location "
                                         "was never recorded, so its jurisdiction is not proven.")

    # -- routes
    routes = []
    algorithms: set[str] = set()
    for route in sorted(per_route):
        tally = per_route[route]
        algos = dict(sorted(route_algorithms.get(route, Counter()).items()))
        algorithms.update(a for a in algos if a != "none")
        routes.append({
            "route": route,
            "counts": tally.as_dict(ROUTE_COUNTS),
            "algorithms": algos,
            "methods": dict(sorted(route_methods.get(route, Counter()).items())),
        })

    # -- reconciliation
    totals = total.as_dict()
    total_checks = _checks(totals)
    balanced = all(c["holds"] for c in total_checks) and all(s["balanced"] for s in sources)
    reconciliation = {**totals, "checks": total_checks, "balanced": balanced}

    references = _references(policy, ledger, mid, phases, residual, verdict, discovery)
    revocations = _revocations(policy, ledger, mid, verdict)
    decisions = _approvals(approvals, verdict)

    # -- files, run
    if audit_head.records == 0:
        verdict.fail("record", "The audit log is empty: no action of this migration was recorded.")
    objects_file = None
    if objects_export is None:
        verdict.fail("record", "The per-object file with every object's checksums was not written.")
    else:
        objects_file = {"file": objects_export.file, "records": objects_export.records,
                        "sha256": objects_export.sha256}
        if objects_export.records != totals["in_ledger"]["objects"]:
            verdict.fail("record", f"The per-object file holds {objects_export.records} objects but the ledger "
                                   f"counts {totals['in_ledger']['objects']}: the ledger changed while the report was "
                                   "written.")
    if run.get("dry_run"):
        verdict.fail("real_run", "This report comes from a dry run, which changes nothing; it cannot prove a "
                                 "migration.")

    soft = {"residency": __version__, "python": platform.python_version(), **dict(software)}

    return {
        "evidence_version": EVIDENCE_VERSION,
        "migration_id": mid,
        "generated_at": now(),
        "complete": verdict.complete,
        "problems": verdict.flat(),
        "complete_rules": verdict.rules(),
        "policy": {"path": policy.path, "sha256": policy.sha256, "home_jurisdiction": policy.home_jurisdiction},
        "run": _jsonable(dict(run)),
        "software": _jsonable(soft),
        "phases": [{"phase": p, "at": r["at"], "run_id": r["run_id"]} for p, r in phases.items() if r],
        "sources": sources,
        "destinations": destinations,
        "routes": routes,
        "checksum_algorithms": sorted(algorithms),
        "reconciliation": reconciliation,
        "attestation": attestation,
        "references": references,
        "live_cutover": _live_cutover(phases),
        "revocations": revocations,
        "approvals": decisions,
        "audit_log": {"file": AUDIT_FILE, "records": audit_head.records, "head": audit_head.head},
        "objects_file": objects_file,
        "objects_sample": _sample(ledger, mid),
        "rules": [statement for _, statement in COMPLETE_RULES],
        "notes": list(NOTES),
    }


def _live_cutover(phases: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """What met the live application: catch-up passes, the final pass, the freeze and its
    removal (each bucket's policy before and after). Informative: an object they missed
    is not verified, and the migrated rule says so."""
    def result(name: str) -> dict[str, Any] | None:
        row = phases.get(name)
        return None if row is None else {"at": row["at"], "run_id": row["run_id"], **_jsonable(dict(row["result"]))}

    freeze, unfreeze = result("freeze"), result("unfreeze")
    frozen = {b["bucket_uri"] for b in (freeze or {}).get("buckets") or [] if b.get("action") in ("frozen",
                                                                                                  "already_frozen")}
    lifted = {b["bucket_uri"] for b in (unfreeze or {}).get("buckets") or [] if b.get("action") in (
        "unfrozen", "already_unfrozen")}
    return {"catch_up": result("catch_up"), "final_pass": result("final_pass"), "freeze": freeze,
            "unfreeze": unfreeze, "still_frozen": sorted(frozen - lifted)}


def _attestation(phases: Mapping[str, Mapping[str, Any] | None], verdict: _Verdict) -> dict[str, Any] | None:
    """The latest attest run, and whether anything changed the ledger after it."""
    row = phases.get("attest")
    if row is None:
        verdict.fail("attested", "No attestation was made: nothing counted as verified was re-proven before this "
                                 "report.")
        return None
    res = row["result"]
    later = [p for p in CHANGING_PHASES if phases.get(p) and phases[p]["id"] > row["id"]]
    if later:
        verdict.fail("attested", f"The ledger changed after the attestation of {row['at']} (phases "
                                 f"{', '.join(later)} ran later): the attestation no longer covers it.")
    if res.get("dry_run"):
        verdict.fail("attested", "The attestation ran as a dry run: it re-queued and repaired nothing.")
    return {
        "at": row["at"],
        "run_id": row["run_id"],
        "stamp": res.get("stamp"),
        "dry_run": bool(res.get("dry_run")),
        "examined": int(res.get("examined", 0)),
        "attested": int(res.get("attested", 0)),
        "dst_missing": int(res.get("dst_missing", 0)),
        "dst_changed": int(res.get("dst_changed", 0)),
        "src_changed": int(res.get("src_changed", 0)),
        "src_gone": int(res.get("src_gone", 0)),
        "requeued": int(res.get("requeued", 0)),
        "repaired": int(res.get("repaired", 0)),
        "repair_failed": int(res.get("repair_failed", 0)),
        "arrived": int(res.get("arrived", 0)),
        "later_phases": later,
        "sources": _jsonable(res.get("sources") or {}),
    }


def _source_problems(
    uri: str,
    c: Mapping[str, Mapping[str, int]],
    checks: list[dict[str, Any]],
    attest: Mapping[str, Any] | None,
    attested_run: bool,
    verdict: _Verdict,
) -> None:
    by_id = {ch["id"]: ch for ch in checks}
    in_scope = c["in_scope"]["objects"]
    if c["unreadable"]["objects"]:
        verdict.fail("inventory", f"{uri}: {c['unreadable']['objects']:,} listed objects could not be read "
                                  f"({human_bytes(c['unreadable']['bytes'])}), so nobody knows whether they are media "
                                  "that had to move; each is listed with its reason under this bucket.")
    lst = by_id["listing_balances"]
    if not lst["holds"]:
        verdict.fail("inventory", f"{uri}: the listing counted {lst['left']['objects']:,} objects "
                                  f"({lst['left']['bytes']:,} bytes) but in scope + out of scope + unreadable is "
                                  f"{lst['right']['objects']:,} ({lst['right']['bytes']:,} bytes).")
    if in_scope == 0 and c["in_ledger"]["objects"] == 0:
        verdict.fail("scope", f"{uri}: nothing is in scope ({c['inventoried']['objects']:,} objects listed, none "
                              "selected): check the source prefix and the selection; an empty scope is never taken "
                              "as a finished migration.")
    if c["failed"]["objects"]:
        verdict.fail("migrated", f"{uri}: {c['failed']['objects']:,} of {in_scope:,} in-scope objects failed, "
                                 f"{human_bytes(c['failed']['bytes'])} in total, and were not migrated; each is listed "
                                 "with its reason under this bucket.")
    if c["pending"]["objects"]:
        verdict.fail("migrated", f"{uri}: {c['pending']['objects']:,} of {in_scope:,} in-scope objects are neither "
                                 "verified nor failed: the copy or verify phase did not finish for them.")
    for check_id in ("inventory_matches_ledger", "in_scope_settled", "copies_accounted"):
        ch = by_id[check_id]
        if check_id == "in_scope_settled" and c["pending"]["objects"]:
            continue  # the pending objects are the reason, reported above
        if not ch["holds"]:
            verdict.fail("migrated", f"{uri}: {ch['statement']} does not hold: {ch['left']['objects']:,} objects "
                                     f"({ch['left']['bytes']:,} bytes) against {ch['right']['objects']:,} "
                                     f"({ch['right']['bytes']:,} bytes).")
    att = by_id["verified_attested"]
    if attested_run and not att["holds"]:
        missing = c["verified"]["objects"] - c["attested"]["objects"]
        verdict.fail("attested", f"{uri}: {missing:,} verified objects were not re-proven by the attestation "
                                 "(the destination object or the source version could not be confirmed now).")
    if attest and int(attest.get("arrived", 0)):
        examples = [e["uri"] for e in attest.get("examples", []) if e.get("kind") == "arrived"][:5]
        verdict.fail("attested", f"{uri}: {int(attest['arrived']):,} media objects arrived at the source after the "
                                 f"inventory began and are not migrated (for example {', '.join(examples)}); run the "
                                 "migration again to take them.")
    if attest and not attest.get("arrival_checked", True):
        verdict.fail("attested", f"{uri}: whether media arrived since the inventory could not be checked (the "
                                 "inventory's start time is not recorded); run the migration again.")


def _failures(ledger: Ledger, mid: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    listed: dict[str, list[dict[str, Any]]] = {}
    truncated: dict[str, int] = {}
    for obj in ledger.iter_objects(mid, states=[FAILED]):
        bucket = obj["src_bucket_uri"]
        items = listed.setdefault(bucket, [])
        if len(items) < FAILURES_CAP:
            items.append({"src_uri": obj["src_uri"], "reason": obj.get("reason") or "no reason recorded"})
        else:
            truncated[bucket] = truncated.get(bucket, 0) + 1
    return listed, truncated


def _unreadable(ledger: Ledger, mid: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in ledger.get_unreadable(mid):
        items = out.setdefault(row["src_bucket_uri"], [])
        if len(items) < FAILURES_CAP:
            items.append({"src_uri": row["src_uri"], "reason": row["reason"]})
    return out


def _sample(ledger: Ledger, mid: str) -> list[dict[str, Any]]:
    out = []
    for obj in ledger.iter_objects(mid, states=[VERIFIED, CUT_OVER], batch=SAMPLE_SIZE):
        algorithm = obj.get("verify_algorithm")
        out.append({
            "src_uri": obj["src_uri"],
            "dst_uri": obj["dst_uri"],
            "size": obj["size"],
            "algorithm": algorithm,
            "src_checksum": (obj.get("src_checksums") or {}).get(algorithm) if algorithm else None,
            "dst_checksum": (obj.get("dst_checksums") or {}).get(algorithm) if algorithm else None,
            "method": obj.get("verify_method"),
            "proof": obj.get("proof"),
            "attest_method": obj.get("attest_method"),
        })
        if len(out) >= SAMPLE_SIZE:
            break
    return out


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _references(
    policy: Policy,
    ledger: Ledger,
    mid: str,
    phases: Mapping[str, Mapping[str, Any] | None],
    residual: ResidualReport | None,
    verdict: _Verdict,
    discovery: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    configured = policy.references is not None
    cutover_row, rollback_row = phases.get("cutover"), phases.get("rollback")
    cutover = None
    if cutover_row:
        res = cutover_row["result"]
        cutover = {
            "at": cutover_row["at"], "run_id": cutover_row["run_id"],
            **{k: _int_or_none(res.get(k)) for k in ("scanned", "rewritten", "already_rewritten", "residual",
                                                      "conflicts", "repointed")},
            "residual_by_reason": _jsonable(dict(res.get("residual_by_reason") or {})),
            "per_column": _jsonable(res.get("per_column")),
        }
    rollback = None
    if rollback_row and (cutover_row is None or rollback_row["id"] > cutover_row["id"]):
        res = rollback_row["result"]
        rollback = {"at": rollback_row["at"], "run_id": rollback_row["run_id"],
                    "restored": _int_or_none(res.get("restored")),
                    "skipped_changed": _int_or_none(res.get("skipped_changed"))}
        verdict.fail("references", f"The cutover was rolled back at {rollback_row['at']} "
                                   f"({rollback['restored']} references restored to the overseas URLs).")
    scan = None
    if residual is not None:
        scan = {
            "at": now(),
            "cells_scanned": residual.cells_scanned,
            "references": residual.references,
            "residual": residual.residual,
            "by_reason": dict(residual.by_reason),
            "reason_words": {k: REASON_WORDS.get(k, k) for k in residual.by_reason},
            "accepted": residual.accepted,
            "accepted_by_rule": _jsonable(residual.accepted_by_rule),
            "domestic_ok": residual.domestic_ok,
            "per_column": _jsonable(residual.per_column),
            "examples": _jsonable(residual.examples),
        }
        if residual.residual:
            reasons = ", ".join(f"{n:,} {k}" for k, n in sorted(residual.by_reason.items()))
            verdict.fail("references", f"{residual.residual:,} application references still point at an overseas "
                                       f"bucket or at a copy that is not proven ({reasons}); examples are listed under "
                                       "references.")
    elif configured:
        verdict.fail("references", "No residual scan of the application database was made for this report, so "
                                   "references left pointing overseas are unknown.")
    if configured and cutover is None:
        verdict.fail("references", "The policy names application database columns, but no reference cutover is "
                                   "recorded.")
    with ledger.engine.connect() as conn:
        journal_counts = {
            state: int(n)
            for state, n in conn.execute(
                sa.select(journal.c.state, sa.func.count())
                .where(journal.c.migration_id == mid).group_by(journal.c.state).order_by(journal.c.state)
            )
        }
    return {"configured": configured, "cutover": cutover, "residual_scan": scan, "rollback": rollback,
            "journal": journal_counts, "discovery": _discovery(configured, discovery, verdict)}


def _discovery(configured: bool, found: Mapping[str, Any] | None, verdict: _Verdict) -> dict[str, Any] | None:
    """Columns the policy does not name that hold overseas references block completeness:
    the residual scan reads only the columns the policy names."""
    if not configured:
        return None
    if found is None or found.get("error"):
        verdict.fail("references", "The columns the policy does not name could not be scanned for overseas references "
                                   f"({(found or {}).get('error') or 'no discovery scan was made'}): not proven that "
                                   "none holds any.")
        return {"enabled": True, "error": (found or {}).get("error") or "no discovery scan was made",
                "unconfigured": [], "columns": [], "scanned_columns": 0, "cells_scanned": 0}
    if not found.get("enabled"):
        return {"enabled": False, "note": "references.discover is false: columns the policy does not name were not "
                                          "scanned; references in them are unknown to this report",
                "unconfigured": [], "columns": [], "scanned_columns": 0, "cells_scanned": 0}
    columns = [c for c in found.get("columns") or [] if not c.get("configured")]
    for column in columns:
        verdict.fail("references", f"Column {column['label']} is not named in the policy but holds "
                                   f"{column['references']:,} reference(s) to the overseas buckets in "
                                   f"{column['cells_with_references']:,} cell(s); add it to references.columns "
                                   f"(kind {column['kind']}) so that they are rewritten.")
    return {"enabled": True, "unconfigured": list(found.get("unconfigured") or []), "columns": _jsonable(columns),
            "scanned_columns": int(found.get("scanned_columns") or 0),
            "cells_scanned": int(found.get("cells_scanned") or 0),
            "schemas": _jsonable(list(found.get("schemas") or [])),
            "excluded": _jsonable(list(found.get("excluded") or []))}


def _revocations(policy: Policy, ledger: Ledger, mid: str, verdict: _Verdict) -> dict[str, Any]:
    """The latest record of each credential, with its proof status (see :mod:`residency.revocation`)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ledger.get_revocations(mid):
        latest[(r["principal"], r["credential_id"])] = r
    records = []
    for r in latest.values():
        proof = dict(r["proof"]) if isinstance(r["proof"], Mapping) else {"value": r["proof"]}
        denied = proof.get("denied")
        proof["denied"] = denied if isinstance(denied, bool) else None
        proof.setdefault("before", None)
        proof.setdefault("after", None)
        status = proof.get("status")
        if status not in ("proven", "not_proven", "failed"):  # a record written before statuses existed
            before_ok = bool((proof.get("before") or {}).get("allowed"))
            status = "proven" if proof["denied"] is True and before_ok else "not_proven"
            proof.setdefault("reason", "recorded by an earlier version without a proof status")
        proof["status"] = status
        proof.setdefault("reason", "")
        proof.setdefault("kind", "access_key")
        proof.setdefault("method", "denied_attempt")
        records.append({"principal": r["principal"], "credential_id": r["credential_id"], "action": r["action"],
                        "at": r["at"], "kind": proof["kind"], "proof": _jsonable(proof)})
        who = f"{str(proof['kind']).replace('_', ' ').capitalize()} {r['credential_id']} of {r['principal']}"
        if proof.get("outcome") == "pending" and status != "failed":
            verdict.fail("revocation", f"{who} is inactive but not deleted yet: deletion is due at "
                                       f"{proof.get('delete_due')} (delete_after_hours).")
            continue
        if status == "failed":
            verdict.fail("revocation", f"{who} still works: an access attempt after the revocation was allowed. "
                                       f"{proof['reason']}".strip())
        elif status == "not_proven":
            verdict.fail("revocation", f"{who}: revocation not proven. {proof['reason']}".strip())
    if policy.principals and not records:
        names = "; ".join(p.label for p in policy.principals)
        verdict.fail("revocation", f"The policy names foreign principals to revoke ({names}), but no revocation is "
                                   "recorded.")
    return {"all_proven": bool(records) and all(r["proof"]["status"] == "proven" for r in records),
            "all_denied": all(r["proof"]["denied"] is True for r in records),
            "records": records}


def _approvals(approvals: Sequence[Mapping[str, Any]], verdict: _Verdict) -> list[dict[str, Any]]:
    """The human decisions on the irreversible steps of this run; a rejection (or a
    timeout) stops the step, and the rule it belongs to says so."""
    out = []
    for a in approvals:
        who = a.get("who") or "nobody (the request timed out)"
        when = str(a.get("at") or a.get("when") or a.get("recorded_at") or "")
        entry = {"step": str(a.get("step")), "decision": str(a.get("decision")), "who": who, "when": when or "unknown",
                 "comment": a.get("comment")}
        out.append(entry)
        if entry["decision"] != "approved":
            rule = "references" if entry["step"] == "cutover" else "revocation"
            if entry["decision"] == "timed_out":
                verdict.fail(rule, f"The approval of the {entry['step']} timed out at {entry['when']} with no answer: "
                                   "it did not happen.")
                continue
            said = f" with the comment {entry['comment']!r}" if entry["comment"] else ""
            verdict.fail(rule, f"The {entry['step']} was {entry['decision']} by {who} at {entry['when']}{said}: "
                               "it did not happen.")
    return out


def _jsonable(value: Any) -> Any:
    """A copy of ``value`` made of JSON types only (dates and the like become strings)."""
    return json.loads(json.dumps(value, default=str))


def human_bytes(n: int) -> str:
    """``1.2 MiB (1,258,291 bytes)``: readable and exact."""
    if n < 1024:
        return f"{n:,} bytes"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        size /= 1024
        if size < 1024 or unit == "EiB":
            return f"{size:,.1f} {unit} ({n:,} bytes)"
    raise AssertionError("unreachable")


# -- schema ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The evidence JSON Schema (draft 2020-12) that ships with this package."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_evidence(evidence: Mapping[str, Any]) -> None:
    """Check an evidence document against the shipped schema.

    Raises:
        ValueError: naming the JSON path of the most relevant error and what is wrong.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator(load_schema())
    error = best_match(validator.iter_errors(evidence))
    if error is not None:
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise ValueError(f"evidence does not match its schema at {path}: {error.message}")


# -- writing --------------------------------------------------------------------------

def write_evidence(
    policy: Policy,
    ledger: Ledger,
    out_dir: Path,
    *,
    run: Mapping[str, Any],
    software: Mapping[str, Any],
    approvals: Sequence[Mapping[str, Any]] = (),
    residual: ResidualReport | None = None,
    discovery: Mapping[str, Any] | None = None,
) -> EvidenceFiles:
    """Write ``audit.jsonl``, ``objects.jsonl``, ``evidence.json`` and ``evidence.html`` into ``out_dir``.

    ``residual``: the residual scan made for this report (see :func:`build_evidence`).

    Raises:
        AuditChainBroken: the ledger's audit chain does not verify.
        ValueError: the evidence does not match its schema (a bug, not a data problem).
    """
    from .html import render_html

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mid = policy.migration_id
    audit_path = out_dir / AUDIT_FILE
    objects_path = out_dir / OBJECTS_FILE
    head = export_audit_log(ledger, mid, audit_path)
    objects_export = export_objects(ledger, mid, objects_path)
    evidence = build_evidence(policy, ledger, run=run, software=software, audit_head=head,
                              objects_export=objects_export, approvals=approvals, residual=residual,
                              discovery=discovery)
    validate_evidence(evidence)
    json_path, html_path = out_dir / EVIDENCE_JSON, out_dir / EVIDENCE_HTML
    with atomic_write(json_path) as out:
        out.write(json.dumps(evidence, indent=2, ensure_ascii=False) + "\n")
    with atomic_write(html_path) as out:
        out.write(render_html(evidence))
    rec = evidence["reconciliation"]
    log.info(
        "evidence for %s written to %s: %s; in scope %s, verified %s, attested %s, failed %s; audit records %s head %s",
        mid, out_dir, "COMPLETE" if evidence["complete"] else "INCOMPLETE", rec["in_scope"]["objects"],
        rec["verified"]["objects"], rec["attested"]["objects"], rec["failed"]["objects"], head.records, head.head,
    )
    for problem in evidence["problems"]:
        log.info("evidence problem: %s", problem)
    return EvidenceFiles(out_dir, audit_path, objects_path, json_path, html_path, evidence, evidence["complete"])


__all__ = [
    "COMPLETE_RULES", "COUNT_LABELS", "EVIDENCE_HTML", "EVIDENCE_JSON", "EVIDENCE_VERSION", "FAILURES_CAP",
    "METHOD_LABELS", "OBJECTS_FILE", "EvidenceFiles", "ObjectsExport", "build_evidence",
    "export_objects", "load_schema", "validate_evidence", "write_evidence",
]
