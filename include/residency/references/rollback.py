"""Roll a cutover back: put the application's own values back, by compare-and-swap.

The journal keeps each cell's whole value before the first cutover (a URL, or
the text or JSON document around the URLs), so a rollback restores the cell
byte for byte.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict
from typing import Any, Mapping

from ..ledger import Ledger
from ..policy import Policy, ReferenceColumn
from . import appdb, journal
from .cells import shown
from .model import APPLIED, PENDING, ROLLED_BACK_STATE, RollbackResult

log = logging.getLogger(__name__)


def rollback(
    policy: Policy, ledger: Ledger, *, dry_run: bool = False, database_url: str | None = None,
    table: str | None = None,
) -> RollbackResult:
    """Put back the old URLs of every applied (or pending) journal row of the migration.

    Each cell is restored by compare-and-swap (``SET col = old WHERE col = new``):
    a cell the application changed since the cutover is left alone and counted
    in ``skipped_changed`` (its journal row stays ``applied``, so a later run
    counts it again). Restored rows become ``rolled_back``; a ``pending`` row
    whose cell still holds the old URL (the write never landed) becomes
    ``rolled_back`` too and counts as ``not_applied``. Objects with no applied
    reference left go back from ``cut_over`` to ``verified``.

    dry_run: reads the cells and reports what would be restored; writes nothing.
    table: restore only the cells of this application table (default: every table).

    Raises:
        PolicyError: no ``references`` section, or a journaled table is gone.
    """
    refs = appdb.require_references(policy)
    url = appdb.database_url(refs, database_url)
    migration_id = policy.migration_id
    app = appdb.app_engine(url)
    resolved: dict[tuple[str, str, str], appdb.AppColumn] = {}
    restored = skipped = not_applied = batches = 0
    try:
        log.info(
            "%s rollback of cutover %s in %s%s", "DRY RUN:" if dry_run else "starting", migration_id,
            appdb.safe_url(url), f" (table {table} only)" if table else "",
        )
        for page in journal.journal_pages(ledger, migration_id, (APPLIED, PENDING), refs.batch_size, table=table):
            batches += 1
            groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
            for row in page:
                groups.setdefault((row["table_name"], row["key_column"], row["url_column"]), []).append(row)
            done_ids: list[int] = []
            restored_ids: list[int] = []
            page_counts = Counter[str]()
            plans: list[tuple[appdb.AppColumn, list[Mapping[str, Any]]]] = []
            for ident, rows in groups.items():
                if ident not in resolved:
                    resolved[ident] = appdb.resolve(app, ReferenceColumn(*ident), "journal")
                column = resolved[ident]
                current = appdb.current_cells(app, column, [r["key_value"] for r in rows])
                todo = []
                for row in rows:
                    cell = current.get(row["key_value"], appdb.MISSING)
                    if cell == row["new_url"]:
                        todo.append(row)
                    elif cell == row["old_url"] and row["state"] == PENDING:
                        done_ids.append(row["id"])
                        page_counts["not_applied"] += 1
                    else:
                        page_counts["skipped_changed"] += 1
                        log.warning(
                            "rollback %s %s=%s skipped: cell changed since cutover (expected %s, found %s)",
                            column.label, column.spec.key, row["key_value"], shown(row["new_url"]),
                            "no row" if cell is appdb.MISSING else shown(str(cell)),
                        )
                plans.append((column, todo))

            if dry_run:
                for column, todo in plans:
                    for row in todo:
                        page_counts["restored"] += 1
                        log.info(
                            "would roll back %s %s=%s: %s -> %s",
                            column.label, column.spec.key, row["key_value"], shown(row["new_url"]),
                            shown(row["old_url"]),
                        )
            else:
                with app.begin() as conn:
                    outcomes = [
                        (column, row, appdb.cas(conn, column, column.key_from_journal(row["key_value"]), row["new_url"], row["old_url"]))
                        for column, todo in plans
                        for row in todo
                    ]
                for column, row, ok in outcomes:
                    if ok:
                        page_counts["restored"] += 1
                        done_ids.append(row["id"])
                        restored_ids.append(row["id"])
                        log.info(
                            "rollback %s %s=%s: %s -> %s",
                            column.label, column.spec.key, row["key_value"], shown(row["new_url"]),
                            shown(row["old_url"]),
                        )
                    else:
                        page_counts["skipped_changed"] += 1
                        log.warning(
                            "rollback %s %s=%s skipped: cell changed since cutover (expected %s)",
                            column.label, column.spec.key, row["key_value"], shown(row["new_url"]),
                        )
                restored_uris = set().union(*journal.linked_objects(ledger, restored_ids).values())
                with ledger.engine.begin() as lconn:
                    journal.set_journal_state(lconn, done_ids, ROLLED_BACK_STATE)
                    reverted = journal.revert_objects(lconn, migration_id, restored_uris)
                    ledger.audit(
                        migration_id, "rollback.batch",
                        {"batch": batches, "restored": page_counts["restored"],
                         "skipped_changed": page_counts["skipped_changed"],
                         "not_applied": page_counts["not_applied"], "objects_back_to_verified": reverted},
                        conn=lconn,
                    )
            restored += page_counts["restored"]
            skipped += page_counts["skipped_changed"]
            not_applied += page_counts["not_applied"]
            log.info(
                "rollback batch %d: %d %s, %d skipped (changed), %d never applied",
                batches, page_counts["restored"], "would be restored" if dry_run else "restored",
                page_counts["skipped_changed"], page_counts["not_applied"],
            )
        result = RollbackResult(restored=restored, skipped_changed=skipped, dry_run=dry_run, not_applied=not_applied,
                                table=table)
        log.info(
            "%srollback done: %d cell(s) %s, %d skipped because the application changed them, %d never applied",
            "DRY RUN: " if dry_run else "", restored, "would be restored" if dry_run else "restored",
            skipped, not_applied,
        )
        if not dry_run:
            ledger.audit(migration_id, "rollback.done", {**asdict(result), "run_id": ledger.run_id})
            ledger.record_phase(migration_id, "rollback", asdict(result), run_id=ledger.run_id)
        return result
    finally:
        app.dispose()
