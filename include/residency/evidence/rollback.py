"""The evidence of a rollback of the cutover (the ``residency_rollback`` DAG).

``rollback-evidence.json`` and ``rollback-evidence.html`` state, for one run: the
migration, the policy's SHA-256, the run, the approval (who, when), what the
rollback did, every conflict (a cell the application changed since the cutover,
left alone), a proof made while writing (every cell that the journal marks
rolled back holds the journal's old value in the application database *now*),
and the audit chain, exported to ``rollback-audit.jsonl`` and verified as the
migration's evidence does (:mod:`.chain`).

Verdicts (:data:`VERDICTS`):

- ``ROLLED_BACK``: this run rolled back after an approval of this run, no cell in
  scope is left changed or unrestored, every rolled-back cell is proven, and the
  audit chain verifies;
- ``PARTIAL``: the rollback ran, but a cell was left alone (changed since the
  cutover), or is not proven now, or the chain does not verify;
- ``NOT_ROLLED_BACK``: no rollback ran in this run (rejected, timed out, or failed);
- ``PLAN``: a dry run. Its files are ``rollback-plan.json`` / ``.html``, so a
  plan never replaces the evidence of a real rollback in the same folder.

The application database is read page by page (keyset pages of the journal,
``references.batch_size`` cells, one query per page and column): memory holds
one page, counters, at most :data:`EXAMPLES` unproven cells, and the conflicts
(every one is listed; they are the cells the application changed between the
cutover and the rollback, a handful where the application was frozen).

Only the journal's own columns are read (``residency.ledger.journal``: table,
key, column, ``old_url`` = the cell's whole value before the cutover,
``new_url`` = what the cutover wrote, ``state``), so this module does not depend
on how the cutover finds the URLs in a cell.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..ledger import Ledger, journal, now
from ..references import journal as references_journal
from ..policy import Policy, redact_db_url
from ..uris import redact_text
from .chain import atomic_write, export_verified

log = logging.getLogger(__name__)

EVIDENCE_JSON = "rollback-evidence.json"
EVIDENCE_HTML = "rollback-evidence.html"
PLAN_JSON = "rollback-plan.json"
PLAN_HTML = "rollback-plan.html"
AUDIT_FILE = "rollback-audit.jsonl"
"""Not ``audit.jsonl``: the migration's evidence states the head of *its* export, and
a longer chain written over it would no longer match that head."""

ROLLED_BACK, PARTIAL, NOT_ROLLED_BACK, PLAN = "ROLLED_BACK", "PARTIAL", "NOT_ROLLED_BACK", "PLAN"
VERDICTS = (ROLLED_BACK, PARTIAL, NOT_ROLLED_BACK, PLAN)
EVIDENCE_VERSION = 1
EXAMPLES = 50
"""At most this many unproven cells (and cells still holding the cutover's value) are listed."""

# Journal states (as residency.references.model names them; repeated here so that this
# module reads only the ledger's journal table).
_PENDING, _APPLIED, _ROLLED_BACK = "pending", "applied", "rolled_back"

STATEMENTS = {
    ROLLED_BACK: "Every cell of the application database that the cutover rewrote in this scope holds its value from "
                 "before the cutover again, proven by reading each one while this report was written.",
    PARTIAL: "The rollback ran, but not every cell in scope is back to its value from before the cutover:",
    NOT_ROLLED_BACK: "No rollback ran in this run:",
    PLAN: "This is a plan from a dry run: nothing was restored, and it proves nothing.",
}

_MISSING = object()


# -- the journal ----------------------------------------------------------------

def journal_counts(ledger: Ledger, migration_id: str, table: str | None = None) -> dict[str, dict[str, int]]:
    """Journal rows now, ``{table: {state: rows}}`` (one aggregate query)."""
    query = (
        sa.select(journal.c.table_name, journal.c.state, sa.func.count())
        .where(journal.c.migration_id == migration_id)
        .group_by(journal.c.table_name, journal.c.state)
        .order_by(journal.c.table_name, journal.c.state)
    )
    if table:
        query = query.where(journal.c.table_name == table)
    out: dict[str, dict[str, int]] = {}
    with ledger.engine.connect() as conn:
        for name, state, n in conn.execute(query):
            out.setdefault(name, {})[state] = int(n)
    return out


# -- the application database, read-only ------------------------------------------

class AppCells:
    """Reads journaled cells from the application database (reflected tables, quoted names)."""

    def __init__(self, app: Engine) -> None:
        self.app = app
        self._tables: dict[str, sa.Table] = {}

    def read(self, table: str, key_column: str, column: str, key_values: Sequence[str]) -> dict[str, Any]:
        """``{key as the journal writes it: cell value}``; a key with no row is absent.

        Raises:
            sqlalchemy.exc.NoSuchTableError: the table is gone; KeyError: a column is.
        """
        if table not in self._tables:
            self._tables[table] = sa.Table(table, sa.MetaData(), autoload_with=self.app)
        t = self._tables[table]
        key, value = t.c[key_column], t.c[column]
        try:
            as_int = key.type.python_type is int
        except NotImplementedError:
            as_int = False
        keys = [int(k) if as_int else k for k in key_values]
        out: dict[str, Any] = {}
        with self.app.connect() as conn:
            for i in range(0, len(keys), 500):
                for k, v in conn.execute(sa.select(key, value).where(key.in_(keys[i:i + 500]))):
                    out[str(k)] = v
        return out


def same_value(cell: Any, text: str) -> bool:
    """Whether a cell holds ``text`` (the journal keeps values as text; a JSON column may
    come back as a document, a bytes column as bytes)."""
    if cell is _MISSING or cell is None:
        return False
    if isinstance(cell, str):
        return cell == text
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell) == text.encode("utf-8")
    if isinstance(cell, (dict, list)):
        try:
            return json.loads(text) == cell
        except ValueError:
            return False
    return str(cell) == text


def shown(value: Any) -> str | None:
    """A cell as the evidence shows it: signatures and tokens redacted, long text cut."""
    if value is _MISSING or value is None:
        return None
    text = value if isinstance(value, str) else (
        bytes(value).decode("utf-8", "replace") if isinstance(value, (bytes, bytearray, memoryview))
        else json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value))
    out = redact_text(text)
    return out if len(out) <= 300 else out[:300] + f"... ({len(text):,} characters)"


def _cells_of_page(cells: AppCells, page: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any]]:
    """Each journal row of a page with the cell's value now (``_MISSING``: no such row)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in page:
        groups.setdefault((row["table_name"], row["key_column"], row["url_column"]), []).append(row)
    for (table, key_column, column), rows in groups.items():
        current = cells.read(table, key_column, column, [r["key_value"] for r in rows])
        for row in rows:
            yield row, current.get(row["key_value"], _MISSING)


def _where(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"table": row["table_name"], "column": row["url_column"], "key_column": row["key_column"],
            "key": row["key_value"]}


@dataclass
class CellCheck:
    """What the application database holds now for the journal rows in scope.

    ``proof``: the rows marked rolled back, each holding the journal's old value
    (proven) or not. ``remaining``: the rows not rolled back (applied or
    pending), by what their cell holds: the cutover's value (not restored), the
    old value of a write that never landed, or something else: a conflict, whose
    ``reason`` is ``changed_since_cutover``, ``row_deleted``, or ``holds_old_value``
    (someone already wrote the old value back; the journal still says applied).
    """

    proven: int = 0
    not_proven: Counter = field(default_factory=Counter)
    unproven_examples: list[dict[str, Any]] = field(default_factory=list)
    remaining: Counter = field(default_factory=Counter)
    unrestored_examples: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    started_at: str = field(default_factory=now)

    @property
    def cells(self) -> int:
        return self.proven + sum(self.not_proven.values())


def check_cells(
    ledger: Ledger, database_url: str, migration_id: str, *, table: str | None, page_size: int, proof: bool = True
) -> CellCheck:
    """Read every journaled cell in scope now, page by page (see :class:`CellCheck`).

    A database that cannot be read is not an exception here: ``error`` says why,
    and the caller's verdict cannot be ROLLED_BACK.
    """
    check = CellCheck()
    app = sa.create_engine(database_url, **({"connect_args": {"timeout": 60}} if database_url.startswith("sqlite")
                                            else {}))
    cells = AppCells(app)
    try:
        if proof:
            for page in references_journal.journal_pages(ledger, migration_id, (_ROLLED_BACK,), page_size, table=table):
                for row, cell in _cells_of_page(cells, page):
                    if same_value(cell, row["old_url"]):
                        check.proven += 1
                        continue
                    reason = "row_deleted" if cell is _MISSING else "changed_since_rollback"
                    check.not_proven[reason] += 1
                    if len(check.unproven_examples) < EXAMPLES:
                        check.unproven_examples.append({**_where(row), "reason": reason, "expected": shown(row["old_url"]),
                                                        "found": shown(cell)})
        for page in references_journal.journal_pages(ledger, migration_id, (_APPLIED, _PENDING), page_size, table=table):
            for row, cell in _cells_of_page(cells, page):
                if same_value(cell, row["new_url"]):
                    check.remaining["holds_cutover_value"] += 1
                    if len(check.unrestored_examples) < EXAMPLES:
                        check.unrestored_examples.append({**_where(row), "found": shown(cell)})
                elif row["state"] == _PENDING and same_value(cell, row["old_url"]):
                    check.remaining["never_applied"] += 1
                else:  # what the rollback leaves alone: the cell is not what the cutover wrote
                    check.remaining["changed_since_cutover"] += 1
                    reason = ("row_deleted" if cell is _MISSING else
                              "holds_old_value" if same_value(cell, row["old_url"]) else "changed_since_cutover")
                    check.conflicts.append({**_where(row), "journal_state": row["state"], "reason": reason,
                                            "cutover_wrote": shown(row["new_url"]), "found": shown(cell)})
    except (sa.exc.SQLAlchemyError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        check.error = f"the application database {redact_db_url(database_url)} could not be read: " \
                      f"{type(exc).__name__}: {first}"
        log.error("rollback evidence: %s", check.error)
    finally:
        app.dispose()
    return check


# -- the document -----------------------------------------------------------------

def _approval_problem(approval: Mapping[str, Any] | None) -> str:
    if not approval:
        return "No decision on the rollback was recorded for this run: nothing was restored."
    who, at = approval.get("who"), approval.get("at")
    if approval["decision"] == "rejected":
        return f"The rollback was rejected by {who} at {at}: nothing was restored."
    if approval["decision"] == "timed_out":
        return "Nobody answered the approval of the rollback in time (a timeout counts as a rejection): nothing was " \
               "restored."
    return f"The rollback was approved by {who} at {at}, but it did not finish in this run (see the rollback task's " \
           "log); cells it restored before it stopped are counted below."


def build_rollback_evidence(
    policy: Policy,
    *,
    run: Mapping[str, Any],
    table: str | None,
    tables: Sequence[str],
    result: Mapping[str, Any] | None,
    approval: Mapping[str, Any] | None,
    journal_now: Mapping[str, Mapping[str, int]],
    check: CellCheck,
    audit: Mapping[str, Any] | None,
    software: Mapping[str, Any],
    dry_run: bool,
) -> dict[str, Any]:
    """The evidence (or, for a dry run, the plan) as one JSON document; see the module docstring.

    Args:
        result: what this run's rollback returned (``RollbackResult`` as a dict);
            ``None`` when no rollback ran in this run.
        approval: this run's decision on the ``rollback`` step, as the ledger keeps it.
        audit: the exported chain (``file``, ``records``, ``head``, ``verified``,
            ``error``); ``None`` for a plan.
    """
    problems: list[str] = []
    remaining = {k: int(check.remaining.get(k, 0)) for k in ("holds_cutover_value", "changed_since_cutover",
                                                             "never_applied")}
    if dry_run:
        verdict = PLAN
        if check.error:
            problems.append(f"The plan may be wrong: {check.error}.")
    else:
        if result is None:
            problems.append(_approval_problem(approval))
        if remaining["changed_since_cutover"]:
            problems.append(f"{remaining['changed_since_cutover']:,} cell(s) changed by the application since the "
                            "cutover were left alone, not overwritten (listed under conflicts).")
        if remaining["holds_cutover_value"]:
            problems.append(f"{remaining['holds_cutover_value']:,} cell(s) still hold the value the cutover wrote: "
                            "not restored.")
        if check.error:
            problems.append(f"The rollback cannot be proven: {check.error}.")
        elif check.not_proven:
            reasons = ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in sorted(check.not_proven.items()))
            problems.append(f"{sum(check.not_proven.values()):,} of {check.cells:,} cell(s) marked rolled back do not "
                            f"hold their value from before the cutover now ({reasons}); examples are listed under proof.")
        if audit and not audit.get("verified"):
            problems.append(f"The audit log does not verify: {audit.get('error')}.")
        verdict = NOT_ROLLED_BACK if result is None else (PARTIAL if problems else ROLLED_BACK)
    approval_doc = None
    if approval:
        approval_doc = {"step": approval.get("step", "rollback"), "decision": approval["decision"],
                        "who": approval.get("who"), "when": approval.get("at"), "comment": approval.get("comment"),
                        "recorded_at": approval.get("recorded_at")}
    return {
        "kind": "rollback_plan" if dry_run else "rollback_evidence",
        "version": EVIDENCE_VERSION,
        "verdict": verdict,
        "statement": STATEMENTS[verdict],
        "problems": problems,
        "migration_id": policy.migration_id,
        "generated_at": now(),
        "policy": {"path": policy.path, "sha256": policy.sha256},
        "run": json.loads(json.dumps(dict(run), default=str)),
        "software": dict(software),
        "scope": {"table": table, "tables": list(tables)},
        "approval": approval_doc,
        "result": dict(result) if result is not None else None,
        "journal": {t: dict(s) for t, s in journal_now.items()},
        "remaining": remaining,
        "unrestored_examples": check.unrestored_examples,
        "conflicts": check.conflicts,
        "proof": None if dry_run else {
            "at": check.started_at,
            "statement": "Each cell the journal marks rolled back was read from the application database while this "
                         "report was written and compared with the journal's value from before the cutover.",
            "cells": check.cells, "proven": check.proven, "not_proven": sum(check.not_proven.values()),
            "not_proven_by_reason": dict(sorted(check.not_proven.items())), "examples": check.unproven_examples,
            "error": check.error,
        },
        "audit_log": dict(audit) if audit is not None else None,
    }


@dataclass(frozen=True)
class RollbackEvidenceFiles:
    """What :func:`write_rollback_evidence` wrote; ``audit_log`` is ``None`` for a plan."""

    json_path: Path
    html_path: Path
    audit_log: Path | None
    document: dict[str, Any]

    @property
    def verdict(self) -> str:
        return self.document["verdict"]


def write_rollback_evidence(
    policy: Policy,
    ledger: Ledger,
    out_dir: Path,
    *,
    database_url: str,
    run: Mapping[str, Any],
    table: str | None,
    result: Mapping[str, Any] | None,
    approval: Mapping[str, Any] | None,
    software: Mapping[str, Any],
    dry_run: bool,
) -> RollbackEvidenceFiles:
    """Re-read the cells, export and verify the audit chain, write the JSON and the page.

    A dry run writes ``rollback-plan.json`` / ``.html`` (no proof, no chain);
    otherwise ``rollback-evidence.json`` / ``.html`` and ``rollback-audit.jsonl``.
    Nothing here raises for what it finds (a conflict, an unreadable database, a
    broken chain): each is a problem in the document and its verdict.
    """
    mid = policy.migration_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    refs = policy.references
    page = refs.batch_size if refs is not None else 500
    check = check_cells(ledger, database_url, mid, table=table, page_size=page, proof=not dry_run)
    audit: dict[str, Any] | None = None
    audit_path: Path | None = None
    if not dry_run:
        audit_path = out_dir / AUDIT_FILE
        audit = export_verified(ledger, mid, audit_path)
        if not audit["verified"]:
            audit_path = None
    tables = sorted({c.table for c in refs.columns}) if refs is not None else []
    doc = build_rollback_evidence(
        policy, run=run, table=table, tables=[table] if table else tables, result=result, approval=approval,
        journal_now=journal_counts(ledger, mid, table), check=check, audit=audit, software=software, dry_run=dry_run,
    )
    json_path = out_dir / (PLAN_JSON if dry_run else EVIDENCE_JSON)
    html_path = out_dir / (PLAN_HTML if dry_run else EVIDENCE_HTML)
    with atomic_write(json_path) as out:
        out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    with atomic_write(html_path) as out:
        out.write(render_rollback_html(doc))
    ledger.audit(mid, "rollback.plan_written" if dry_run else "rollback.evidence_written", {
        "verdict": doc["verdict"], "file": str(json_path), "table": table,
        "proven": check.proven, "not_proven": sum(check.not_proven.values()), "conflicts": len(check.conflicts),
        "audit_head": (audit or {}).get("head"),
    })
    log.info("rollback %s for %s written to %s: %s; %d cell(s) proven, %d not proven, %d conflict(s)",
             "plan" if dry_run else "evidence", mid, json_path, doc["verdict"], check.proven,
             sum(check.not_proven.values()), len(check.conflicts))
    return RollbackEvidenceFiles(json_path, html_path, audit_path, doc)


def render_rollback_html(doc: Mapping[str, Any]) -> str:
    """The page of one rollback evidence (or plan) document; every value autoescaped."""
    from .html import environment

    return environment().get_template("rollback.html.j2").render(doc=doc)
