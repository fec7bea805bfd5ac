"""The write-ahead journal of the cutover, in the ledger database.

Per page of ``references.batch_size`` rows:

1. the planned rewrites go into ``residency_reference_journal`` as ``pending``
   and are committed (:func:`journal_pending`);
2. one application-DB transaction runs the compare-and-swap updates;
3. the journal rows become ``applied`` (one row updated) or ``conflict`` (none),
   the objects become ``cut_over`` and an audit record is appended, in one ledger
   transaction.

A journal row's ``old_url`` is always what the cell held *before the first
cutover* (so a rollback restores the application's own value even after the
cell was repointed to another domestic copy), ``new_url`` what it holds now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import ledger as ledger_mod
from ..ledger import CUT_OVER, VERIFIED, Ledger
from .appdb import AppColumn
from .model import APPLIED, CONFLICTED, PENDING

_journal = ledger_mod.journal
_objects = ledger_mod.objects


@dataclass(frozen=True)
class Rewrite:
    """One cell to change: compare-and-swap ``old`` -> ``new``.

    ``original`` is what the journal keeps as the cell's value before the
    migration touched it: ``old`` for a first rewrite, the journal's ``old_url``
    when a cell already cut over is repointed.
    """

    key: Any  # typed, as the application DB returned it
    key_value: str  # as the journal stores it
    old: str
    new: str
    src_uri: str
    journal_id: int | None  # existing journal row of this cell, from an earlier run
    original: str


def last_batch(ledger: Ledger, migration_id: str) -> int:
    """Batch numbers continue across runs, so a journal row's batch names one run's page."""
    with ledger.engine.connect() as conn:
        value = conn.execute(
            sa.select(sa.func.max(_journal.c.batch)).where(_journal.c.migration_id == migration_id)
        ).scalar()
    return int(value or 0)


def journal_where(stmt: Any, migration_id: str, column: AppColumn) -> Any:
    return (
        stmt.where(_journal.c.migration_id == migration_id)
        .where(_journal.c.table_name == column.spec.table)
        .where(_journal.c.url_column == column.spec.column)
    )


def journal_rows(
    ledger: Ledger, migration_id: str, column: AppColumn, key_values: list[str]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with ledger.engine.connect() as conn:
        for i in range(0, len(key_values), 500):
            query = journal_where(sa.select(_journal), migration_id, column).where(
                _journal.c.key_value.in_(key_values[i : i + 500])
            )
            for row in conn.execute(query).mappings():
                out[row["key_value"]] = dict(row)
    return out


def journal_ids(ledger: Ledger, migration_id: str, column: AppColumn, key_values: list[str]) -> dict[str, int]:
    return {k: r["id"] for k, r in journal_rows(ledger, migration_id, column, key_values).items()}


def journal_pending(
    ledger: Ledger, migration_id: str, column: AppColumn, rewrites: list[Rewrite], batch_no: int
) -> None:
    """Step 1 of the write-ahead: the planned rewrites, committed before the application changes."""
    stamp = ledger_mod.now()
    inserts = [
        {
            "migration_id": migration_id, "table_name": column.spec.table, "key_column": column.spec.key,
            "key_value": r.key_value, "url_column": column.spec.column, "old_url": r.original, "new_url": r.new,
            "src_uri": r.src_uri, "state": PENDING, "batch": batch_no, "updated_at": stamp,
        }
        for r in rewrites
        if r.journal_id is None
    ]
    # The cell is unique in the journal (uq_journal_cell): a cell seen by an
    # earlier run gets its row rewritten rather than a second one.
    updates = [
        {
            "j_id": r.journal_id, "j_old": r.original, "j_new": r.new, "j_src": r.src_uri,
            "j_key_column": column.spec.key, "j_batch": batch_no, "j_at": stamp,
        }
        for r in rewrites
        if r.journal_id is not None
    ]
    with ledger.engine.begin() as conn:
        if inserts:
            conn.execute(_journal.insert(), inserts)
        if updates:
            conn.execute(
                _journal.update()
                .where(_journal.c.id == sa.bindparam("j_id"))
                .values(
                    old_url=sa.bindparam("j_old"), new_url=sa.bindparam("j_new"), src_uri=sa.bindparam("j_src"),
                    key_column=sa.bindparam("j_key_column"), batch=sa.bindparam("j_batch"),
                    updated_at=sa.bindparam("j_at"), state=PENDING,
                ),
                updates,
            )


def set_journal_state(conn: Connection, ids: list[int], state: str) -> None:
    stamp = ledger_mod.now()
    for i in range(0, len(ids), 500):
        conn.execute(
            _journal.update().where(_journal.c.id.in_(ids[i : i + 500])).values(state=state, updated_at=stamp)
        )


def mark_cut_over(conn: Connection, migration_id: str, src_uris: set[str]) -> int:
    """``verified -> cut_over`` for objects rewritten at least once and with no reference in conflict."""
    marked = 0
    uris = sorted(src_uris)
    for i in range(0, len(uris), 500):
        chunk = uris[i : i + 500]
        conflicted = (
            sa.select(_journal.c.src_uri)
            .where(_journal.c.migration_id == migration_id)
            .where(_journal.c.state == CONFLICTED)
            .where(_journal.c.src_uri.in_(chunk))
        )
        result = conn.execute(
            _objects.update()
            .where(_objects.c.migration_id == migration_id)
            .where(_objects.c.state == VERIFIED)
            .where(_objects.c.src_uri.in_(chunk))
            .where(_objects.c.src_uri.not_in(conflicted))
            .values(state=CUT_OVER, updated_at=ledger_mod.now())
        )
        marked += result.rowcount
    return marked


def demote_conflicted(ledger: Ledger, migration_id: str) -> int:
    """``cut_over -> verified`` for objects with a reference in conflict (seen in a later page)."""
    conflicted = (
        sa.select(_journal.c.src_uri)
        .where(_journal.c.migration_id == migration_id)
        .where(_journal.c.state == CONFLICTED)
    )
    with ledger.engine.begin() as conn:
        return conn.execute(
            _objects.update()
            .where(_objects.c.migration_id == migration_id)
            .where(_objects.c.state == CUT_OVER)
            .where(_objects.c.src_uri.in_(conflicted))
            .values(state=VERIFIED, updated_at=ledger_mod.now())
        ).rowcount


def revert_objects(conn: Connection, migration_id: str, src_uris: set[str]) -> int:
    """``cut_over -> verified`` for objects with no applied reference left."""
    reverted = 0
    uris = sorted(src_uris)
    for i in range(0, len(uris), 500):
        chunk = uris[i : i + 500]
        still_applied = (
            sa.select(_journal.c.src_uri)
            .where(_journal.c.migration_id == migration_id)
            .where(_journal.c.state == APPLIED)
            .where(_journal.c.src_uri.in_(chunk))
        )
        reverted += conn.execute(
            _objects.update()
            .where(_objects.c.migration_id == migration_id)
            .where(_objects.c.state == CUT_OVER)
            .where(_objects.c.src_uri.in_(chunk))
            .where(_objects.c.src_uri.not_in(still_applied))
            .values(state=VERIFIED, updated_at=ledger_mod.now())
        ).rowcount
    return reverted


def journal_pages(
    ledger: Ledger, migration_id: str, states: Sequence[str], size: int
) -> Iterator[list[dict[str, Any]]]:
    """Journal rows in ``id`` order, keyset-paginated (states may change while iterating)."""
    last = 0
    while True:
        query = (
            sa.select(_journal)
            .where(_journal.c.migration_id == migration_id)
            .where(_journal.c.state.in_(list(states)))
            .where(_journal.c.id > last)
            .order_by(_journal.c.id)
            .limit(size)
        )
        with ledger.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        if not rows:
            return
        yield rows
        if len(rows) < size:
            return
        last = rows[-1]["id"]
