"""The tasks of the rollback DAG (``residency_rollback``): one function each, no Airflow inside.

The rollback restores the reference journal of one migration: every cell of the
application database that the cutover rewrote gets its own value back, by
compare-and-swap (:func:`residency.references.rollback`), in one table or all.
A cell the application changed since the cutover is left alone and reported as
a conflict. As in :mod:`residency.pipeline`, each function logs what it will
do, calls the engine, records the result in the ledger and the audit chain, and
returns a small JSON summary.

``plan`` -> ``propose_rollback`` (a dry run, for the approver) -> approval ->
``rollback`` (refuses without this run's approval) -> ``evidence``
(:mod:`residency.evidence.rollback`) -> the run's verdict (:func:`run_note`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from . import purge, references
from .errors import PolicyError
from .evidence import rollback as rollback_evidence
from .ledger import Ledger
from .pipeline import Credentials, Runtime, ledger_url, plan_run, require_approval, software_versions, validate_params
from .policy import Policy, load_policy

log = logging.getLogger(__name__)

STEP = "rollback"
"""The approval step (the policy's ``approvals.rollback`` names who approves it)."""

_STATE_WORDS = {"applied": "cut over", "pending": "pending", "rolled_back": "rolled back",
                "conflict": "never cut over (changed during the cutover)"}


def check_table(policy: Policy, ledger: Ledger, table: Any) -> str | None:
    """The ``table`` param: empty (every table) or a table of ``references.columns``
    with journal rows of this migration.

    Raises:
        PolicyError: no ``references`` section, a table not configured, or no journal
            row (of that table, or at all: the cutover never ran), naming the field.
    """
    refs = policy.references
    if refs is None:
        raise PolicyError("references", None, "the policy names no application database columns: there is no "
                                              "cutover to roll back")
    if table is None:
        table = ""
    if not isinstance(table, str):
        raise PolicyError("params.table", table, "expected a table name, or empty for every table")
    table = table.strip()
    configured = sorted({c.table for c in refs.columns})
    if table and table not in configured:
        raise PolicyError("params.table", table, f"not a table of references.columns (those are {', '.join(configured)})")
    counts = rollback_evidence.journal_counts(ledger, policy.migration_id, table or None)
    if not counts:
        if table:
            raise PolicyError("params.table", table, f"the journal of migration {policy.migration_id!r} has no rows "
                                                     "for this table: the cutover never rewrote a cell of it, so "
                                                     "there is nothing to roll back")
        raise PolicyError("migration_id", policy.migration_id, "the journal of this migration has no rows: the "
                                                               "cutover never ran, so there is nothing to roll back")
    return table or None


def plan_rollback(
    params: Mapping[str, Any], run: Mapping[str, Any] | None = None, credentials: Credentials | None = None
) -> dict[str, Any]:
    """Validate the params, the policy and the scope before any work; the plan every task receives."""
    checked = validate_params(params)
    policy = load_policy(checked["policy_path"])
    ledger = Ledger(ledger_url(policy, credentials, distributed=bool((run or {}).get("distributed"))))
    try:
        ledger.create_schema()
        purged = next(iter(purge.purged_rows(ledger, policy.migration_id)), None)
        if purged is not None:
            raise PolicyError("policy_path", str(policy.path), (
                f"the overseas copies of migration {policy.migration_id} were purged (first: {purged['src_uri']}): "
                "a rollback would point the application at deleted objects; restore the copies first"))
        table = check_table(policy, ledger, params.get("table"))
    finally:
        ledger.dispose()
    plan = {**plan_run(params, run, credentials), "table": table}
    if plan["policy_sha256"] != policy.sha256:  # the file changed between the two reads
        raise PolicyError("policy_path", plan["policy_path"], "the file changed while the run was planned; start again")
    log.info("plan: roll back the cutover of %s in %s; dry_run=%s", policy.migration_id,
             f"table {table}" if table else "every table", plan["dry_run"])
    return plan


def _scope(rt: Runtime) -> str:
    table = rt.plan.get("table")
    return f"table {table}" if table else "every table"


def propose_rollback(rt: Runtime) -> dict[str, Any]:
    """What approving the rollback will do, for the approver to read (Markdown): a dry run
    of the rollback (cells that would be restored, left alone, never applied) and the
    journal per table. Changes nothing."""
    rt.begin("propose rollback", f" ({_scope(rt)})")
    policy, mid, table = rt.policy, rt.policy.migration_id, rt.plan.get("table")
    result = references.rollback(policy, rt.ledger, dry_run=True, database_url=rt.app_database_url(), table=table)
    counts = rollback_evidence.journal_counts(rt.ledger, mid, table)
    states = ("applied", "pending", "rolled_back", "conflict")
    lines = [
        f"**Rollback of the cutover of migration `{mid}`** (policy sha256 `{policy.sha256[:16]}`), "
        f"{'table `' + table + '` only' if table else 'every table'}",
        "",
        "Approving puts the application's own values back (the overseas URLs the cutover replaced), cell by cell, "
        "each only if it still holds what the cutover wrote. Nothing has been changed yet.",
        "",
        "| cells | count |",
        "|---|---:|",
        f"| **would be restored** | **{result.restored:,}** |",
        f"| left alone: changed by the application since the cutover | {result.skipped_changed:,} |",
        f"| never applied (the cutover's write never landed; only marked) | {result.not_applied:,} |",
        "",
        "Journal now:",
        "",
        "| table | " + " | ".join(_STATE_WORDS[s] for s in states) + " |",
        "|---|" + "---:|" * len(states),
        *[f"| {t} | " + " | ".join(f"{by_state.get(s, 0):,}" for s in states) + " |" for t, by_state in counts.items()],
        "",
        "Rejecting changes nothing; the rollback evidence records the rejection.",
    ]
    return rt.end("propose_rollback", {
        "markdown": "\n".join(lines), "table": table, "would_restore": result.restored,
        "skipped_changed": result.skipped_changed, "not_applied": result.not_applied, "journal": counts,
    })


def rollback(rt: Runtime) -> dict[str, Any]:
    """Restore the journal's cells (refuses without an approval of this very run; a dry run
    only reads). The summary is kept as phase ``rollback_run`` of this run for the evidence."""
    require_approval(rt, STEP)
    rt.begin("rollback", f" ({_scope(rt)})")
    result = references.rollback(rt.policy, rt.ledger, dry_run=rt.dry_run, database_url=rt.app_database_url(),
                                 table=rt.plan.get("table"))
    return rt.end("rollback_run", asdict(result))


def default_evidence_dir(policy: Policy, run_id: str | None) -> Path:
    """``<control_dir>/<migration>/rollback/<run>``: one folder per run, so no rollback's
    evidence replaces another's (nor the migration's own ``evidence`` folder)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id or "manual")
    return Path(policy.control_dir) / policy.migration_id / "rollback" / safe


def write_evidence(rt: Runtime, run: Mapping[str, Any]) -> dict[str, Any]:
    """The rollback's evidence (a dry run: its plan), written whether or not the rollback
    ran: a rejection or a failure is recorded as such (see :mod:`residency.evidence.rollback`)."""
    rt.begin("rollback evidence", f" ({_scope(rt)})")
    mid, table = rt.policy.migration_id, rt.plan.get("table")
    out_dir = Path(rt.plan.get("evidence_dir") or default_evidence_dir(rt.policy, rt.run_id))
    row = rt.ledger.latest_phase(mid, "rollback_run")
    result = row["result"] if row and (row["run_id"] == rt.run_id) else None
    decisions = [a for a in rt.ledger.get_approvals(mid, rt.run_id or "manual") if a["step"] == STEP]
    url = rt.app_database_url()
    assert url is not None  # plan_rollback refused a policy without references
    files = rollback_evidence.write_rollback_evidence(
        rt.policy, rt.ledger, out_dir, database_url=url, run={**dict(run), "dry_run": rt.dry_run}, table=table,
        result=result, approval=decisions[-1] if decisions else None, software=software_versions(),
        dry_run=rt.dry_run,
    )
    doc = files.document
    summary = {
        "kind": doc["kind"], "verdict": doc["verdict"], "problems": doc["problems"],
        "evidence_json": str(files.json_path), "evidence_html": str(files.html_path), "table": table,
        "restored": (doc["result"] or {}).get("restored"), "conflicts": len(doc["conflicts"]),
        "proven": (doc["proof"] or {}).get("proven"), "not_proven": (doc["proof"] or {}).get("not_proven"),
    }
    rt.ledger.record_phase(mid, "rollback_evidence", summary, run_id=rt.run_id)
    log.info("END rollback evidence: %s -> %s (%s)", mid, files.json_path, doc["verdict"])
    return summary


def run_note(report: Mapping[str, Any]) -> tuple[str, bool]:
    """The run's note for the verdict of :func:`write_evidence`, and whether the run succeeds
    (only ROLLED_BACK, or a dry run's PLAN)."""
    verdict, where = report["verdict"], report["evidence_html"]
    if verdict == rollback_evidence.PLAN:
        return (f"PLAN (dry run): {report.get('restored') or 0:,} cell(s) would be restored, {report['conflicts']:,} "
                f"changed since the cutover would be left alone; see {where}"), True
    if verdict == rollback_evidence.ROLLED_BACK:
        return (f"ROLLED_BACK: {report.get('restored') or 0:,} cell(s) restored in this run; "
                f"{report.get('proven') or 0:,} proven to hold their value from before the cutover ({where})"), True
    return f"{verdict}: " + " ".join(report["problems"]) + f" (evidence: {where})", False
