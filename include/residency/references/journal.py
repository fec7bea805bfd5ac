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
cell was repointed to another domestic copy), ``new_url`` what it holds now: the
whole cell, for text and JSON cells too. ``residency_reference_objects`` lists the
objects whose URLs the cutover wrote into each cell (``src_uri`` is the first).

Every query here touches the rows of one page, through an index: the cost of a
cutover is linear in the number of cells.
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
_links = ledger_mod.journal_objects
CHUNK = 500


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
    src_uris: tuple[str, ...]  # the objects whose URLs ``new`` holds in place of the original's
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


def journal_pending(
    ledger: Ledger, migration_id: str, column: AppColumn, rewrites: list[Rewrite], batch_no: int
) -> dict[str, int]:
    """Step 1 of the write-ahead: the planned rewrites (and their objects), committed
    before the application changes. Returns the journal id of each cell by key."""
    stamp = ledger_mod.now()
    inserts = [
        {
            "migration_id": migration_id, "table_name": column.spec.table, "key_column": column.spec.key,
            "key_value": r.key_value, "url_column": column.spec.column, "old_url": r.original, "new_url": r.new,
            "src_uri": r.src_uris[0], "state": PENDING, "batch": batch_no, "updated_at": stamp,
        }
        for r in rewrites
        if r.journal_id is None
    ]
    # The cell is unique in the journal (uq_journal_cell): a cell seen by an
    # earlier run gets its row rewritten rather than a second one.
    updates = [
        {
            "j_id": r.journal_id, "j_old": r.original, "j_new": r.new, "j_src": r.src_uris[0],
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
        ids = {r.key_value: r.journal_id for r in rewrites if r.journal_id is not None}
        if inserts:
            ids.update(_ids(conn, migration_id, column, [r["key_value"] for r in inserts]))
        for i in range(0, len(updates), CHUNK):
            conn.execute(_links.delete().where(_links.c.journal_id.in_([u["j_id"] for u in updates[i : i + CHUNK]])))
        links = [{"journal_id": ids[r.key_value], "migration_id": migration_id, "src_uri": uri}
                 for r in rewrites for uri in r.src_uris]
        if links:
            conn.execute(_links.insert(), links)
    return ids


def _ids(conn: Connection, migration_id: str, column: AppColumn, key_values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(key_values), CHUNK):
        query = journal_where(sa.select(_journal.c.key_value, _journal.c.id), migration_id, column).where(
            _journal.c.key_value.in_(key_values[i : i + CHUNK])
        )
        out.update({k: j for k, j in conn.execute(query)})
    return out


def linked_objects(ledger: Ledger, journal_ids: Sequence[int]) -> dict[int, set[str]]:
    """The objects the cutover wrote into each of these journaled cells."""
    out: dict[int, set[str]] = {}
    with ledger.engine.connect() as conn:
        for i in range(0, len(journal_ids), CHUNK):
            query = sa.select(_links.c.journal_id, _links.c.src_uri).where(
                _links.c.journal_id.in_(list(journal_ids[i : i + CHUNK]))
            )
            for jid, uri in conn.execute(query):
                out.setdefault(jid, set()).add(uri)
    return out


def _with_state(conn: Connection, migration_id: str, uris: list[str], state: str) -> set[str]:
    """Of ``uris``, the objects with a journaled cell in ``state``.

    Two single-table lookups, each on an index (the objects' cells by
    ``(migration_id, src_uri)``, then their states by primary key), rather than one
    join a planner without statistics may answer by reading the whole link table.
    """
    cells: dict[int, list[str]] = {}
    for jid, uri in conn.execute(
        sa.select(_links.c.journal_id, _links.c.src_uri)
        .where(_links.c.migration_id == migration_id)
        .where(_links.c.src_uri.in_(uris))
    ):
        cells.setdefault(jid, []).append(uri)
    found: set[str] = set()
    ids = sorted(cells)
    for i in range(0, len(ids), CHUNK):
        for jid in conn.execute(
            sa.select(_journal.c.id).where(_journal.c.id.in_(ids[i : i + CHUNK])).where(_journal.c.state == state)
        ).scalars():
            found.update(cells[jid])
    return found


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
    for i in range(0, len(uris), CHUNK):
        chunk = uris[i : i + CHUNK]
        clean = sorted(set(chunk) - _with_state(conn, migration_id, chunk, CONFLICTED))
        if clean:
            marked += _set_object_state(conn, migration_id, clean, VERIFIED, CUT_OVER)
    return marked


def demote_conflicted(ledger: Ledger, migration_id: str, src_uris: set[str]) -> int:
    """``cut_over -> verified`` for these objects (a reference of each is in conflict,
    perhaps seen in a page after the one that marked the object)."""
    demoted = 0
    uris = sorted(src_uris)
    with ledger.engine.begin() as conn:
        for i in range(0, len(uris), CHUNK):
            demoted += _set_object_state(conn, migration_id, uris[i : i + CHUNK], CUT_OVER, VERIFIED)
    return demoted


def revert_objects(conn: Connection, migration_id: str, src_uris: set[str]) -> int:
    """``cut_over -> verified`` for objects with no applied reference left."""
    reverted = 0
    uris = sorted(src_uris)
    for i in range(0, len(uris), CHUNK):
        chunk = uris[i : i + CHUNK]
        gone = sorted(set(chunk) - _with_state(conn, migration_id, chunk, APPLIED))
        if gone:
            reverted += _set_object_state(conn, migration_id, gone, CUT_OVER, VERIFIED)
    return reverted


def _set_object_state(conn: Connection, migration_id: str, uris: list[str], old: str, new: str) -> int:
    return conn.execute(
        _objects.update()
        .where(_objects.c.migration_id == migration_id)
        .where(_objects.c.state == old)
        .where(_objects.c.src_uri.in_(uris))
        .values(state=new, updated_at=ledger_mod.now())
    ).rowcount


def journal_pages(
    ledger: Ledger, migration_id: str, states: Sequence[str], size: int, *, table: str | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Journal rows in ``id`` order, keyset-paginated (states may change while iterating);
    ``table``: only the cells of that application table."""
    last = 0
    while True:
        query = (
            sa.select(_journal)
            .where(_journal.c.migration_id == migration_id)
            .where(_journal.c.state.in_(list(states)))
            .where(_journal.c.id > last)
            .where(_journal.c.table_name == table if table else sa.true())
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
