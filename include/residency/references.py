"""Cut over the application's references: rewrite URLs of verified objects, journaled.

The application database holds URLs of media objects in the overseas buckets, in
any of the styles :mod:`residency.uris` knows. :func:`cutover` rewrites each URL
whose object the ledger shows ``verified`` to the same style pointing at the
domestic copy, keeping the query string; everything else stays and is counted as
*residual* with a reason:

``not_verified``
    the ledger knows the object but it is not verified (``discovered``,
    ``copied``, ``failed``): never repointed.
``not_in_scope``
    no ledger row: the object is not media, lies outside the source prefix, or
    does not exist at all (a dangling reference). The ledger cannot tell these
    apart, and none of them may be repointed.
``conflict``
    (residual scan only) the cutover found the cell changed by the application
    between reading and writing it and left the application's value alone.
``not_rewritten``
    (residual scan only) the object is verified but the cell still points
    overseas: cutover has not run since, or the application wrote the old URL back.

Write-ahead journal, per page of ``references.batch_size`` rows:

1. the planned rewrites go into ``residency_reference_journal`` (ledger DB) as
   ``pending`` and are committed;
2. one application-DB transaction runs compare-and-swap updates
   ``UPDATE t SET col = :new WHERE key = :k AND col = :old``, so a value the
   application changed meanwhile is never overwritten;
3. the journal rows become ``applied`` (one row updated) or ``conflict`` (none),
   the objects become ``cut_over`` and a ``cutover.batch`` audit record is
   appended, in one ledger transaction.

A crash between the steps leaves ``pending`` rows; the next run reconciles them
(cell holds the new URL: ``applied``; cell still holds the old one: applied again).
:func:`rollback` uses the journal to put the old URLs back, again by
compare-and-swap. :func:`scan_residual` is the proof afterwards: every cell that
still points into an overseas bucket, by reason.

Rows are read with keyset pagination (``WHERE key > :last ORDER BY key LIMIT n``)
so memory stays bounded by the page size. The key column should be unique (a
primary key); rows whose key is NULL are never visited.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import ledger as ledger_mod
from .errors import PolicyError
from .ledger import CUT_OVER, VERIFIED, Ledger
from .policy import Policy, ReferenceColumn, References
from .uris import ObjectRef, ParsedUrl, format_url, parse_uri, parse_url

log = logging.getLogger(__name__)

# Residual reasons.
NOT_VERIFIED = "not_verified"
NOT_IN_SCOPE = "not_in_scope"
CONFLICT = "conflict"
NOT_REWRITTEN = "not_rewritten"

# Journal states.
PENDING, APPLIED, CONFLICTED, ROLLED_BACK = "pending", "applied", "conflict", "rolled_back"

MAX_EXAMPLES = 50

_journal = ledger_mod.journal
_objects = ledger_mod.objects


@dataclass(frozen=True)
class CutoverResult:
    """What a cutover run did. ``per_column`` is keyed ``table.column``.

    Every scanned reference is exactly one of rewritten, already_rewritten,
    residual or conflicts: ``scanned == rewritten + already_rewritten + residual
    + conflicts``. ``ignored`` counts cells that name no object of a source
    bucket (NULL, other hosts, other buckets); they are not references.
    In a dry run ``rewritten`` counts what would be rewritten and ``conflicts``
    is always 0 (nothing is written, so nothing can conflict).
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


@dataclass(frozen=True)
class RollbackResult:
    """What a rollback did. ``not_applied``: pending journal rows whose write never landed."""

    restored: int
    skipped_changed: int
    dry_run: bool
    not_applied: int = 0


@dataclass(frozen=True)
class ResidualReport:
    """Cells that still point into an overseas bucket, by reason; ``examples`` holds at most 50."""

    cells_scanned: int
    residual: int
    by_reason: dict[str, int]
    examples: list[dict[str, Any]]
    per_column: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _AppColumn:
    """One configured (table, key, column), resolved against the application DB."""

    spec: ReferenceColumn
    table: sa.Table

    @property
    def label(self) -> str:
        return f"{self.spec.table}.{self.spec.column}"

    @property
    def key(self) -> sa.Column[Any]:
        return self.table.c[self.spec.key]

    @property
    def url(self) -> sa.Column[Any]:
        return self.table.c[self.spec.column]

    def key_from_journal(self, value: str) -> Any:
        """The journal stores keys as text; give the DB a value of the key's own type."""
        try:
            python_type = self.key.type.python_type
        except NotImplementedError:
            return value
        if python_type is int:
            return int(value)
        return value

    def cas(self) -> sa.Update:
        """``UPDATE t SET col = :new WHERE key = :k AND col = :expected``."""
        return (
            self.table.update()
            .where(self.key == sa.bindparam("residency__key"))
            .where(self.url == sa.bindparam("residency__expected"))
            .values({self.spec.column: sa.bindparam("residency__value")})
        )


@dataclass
class _Counts:
    scanned: int = 0
    rewritten: int = 0
    already_rewritten: int = 0
    residual: int = 0
    conflicts: int = 0
    ignored: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, other: _Counts) -> None:
        for name in ("scanned", "rewritten", "already_rewritten", "residual", "conflicts", "ignored"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reasons.update(other.reasons)

    def as_dict(self) -> dict[str, int]:
        out = {
            "scanned": self.scanned, "rewritten": self.rewritten,
            "already_rewritten": self.already_rewritten, "residual": self.residual,
            "conflicts": self.conflicts, "ignored": self.ignored,
        }
        out.update({f"residual_{k}": v for k, v in sorted(self.reasons.items())})
        return out


@dataclass(frozen=True)
class _Rewrite:
    key: Any  # typed, as the application DB returned it
    key_value: str  # as the journal stores it
    old: str
    new: str
    src_uri: str
    journal_id: int | None  # existing journal row of this cell, from an earlier run


# -- public API ---------------------------------------------------------------


def cutover(
    policy: Policy,
    ledger: Ledger,
    *,
    dst_region: Callable[[ObjectRef], str | None],
    dry_run: bool = False,
) -> CutoverResult:
    """Rewrite the application's URLs of verified objects to their domestic copies.

    Args:
        policy: needs a ``references`` section; source buckets come from ``sources``.
        ledger: object states, the reference journal and the audit log.
        dst_region: region of a destination object's bucket, for S3 HTTPS URL
            hosts (``None``: the global ``s3.amazonaws.com`` host). Called once
            per destination bucket per run.
        dry_run: compute and log everything ("would rewrite"), write nothing:
            no journal, no application change, no ledger state, no audit record.

    Objects become ``cut_over`` (from ``verified`` only) after a page in which at
    least one of their references was rewritten (in this run or an earlier one),
    provided the journal holds no ``conflict`` for any of their references. At
    the end of the run, objects that are ``cut_over`` but have a reference in
    conflict go back to ``verified``, so the rule holds for the whole run.

    Returns:
        The counts; also kept with ``ledger.record_phase(..., "cutover", ...)``.

    Raises:
        PolicyError: no ``references`` section, or a configured table or column
            does not exist in the application database (before any work).
    """
    refs = _require_references(policy)
    migration_id = policy.migration_id
    source_buckets = {s.bucket_uri for s in policy.sources}
    regions: dict[str, str | None] = {}

    def region_of(ref: ObjectRef) -> str | None:
        if ref.bucket_uri not in regions:
            regions[ref.bucket_uri] = dst_region(ref)
        return regions[ref.bucket_uri]

    app = _app_engine(refs)
    try:
        columns = _resolve_columns(app, refs)
        log.info(
            "%s cutover of references in %s: %d column(s) %s, batch size %d%s",
            "DRY RUN:" if dry_run else "starting", _safe_url(refs.database_url), len(columns),
            ", ".join(c.label for c in columns), refs.batch_size, " (nothing will be written)" if dry_run else "",
        )
        batch_no = _last_batch(ledger, migration_id)
        batches = 0
        total = _Counts()
        per_column: dict[str, dict[str, int]] = {}
        for column in columns:
            col_counts = _Counts()
            for rows in _pages(app, column, refs.batch_size):
                batch_no += 1
                batches += 1
                counts = _cutover_page(
                    ledger, app, column, rows, migration_id, source_buckets, region_of, batch_no, dry_run
                )
                col_counts.add(counts)
            per_column[column.label] = col_counts.as_dict()
            total.add(col_counts)

        demoted = 0 if dry_run else _demote_conflicted(ledger, migration_id)
        result = CutoverResult(
            scanned=total.scanned, rewritten=total.rewritten, already_rewritten=total.already_rewritten,
            residual=total.residual, residual_by_reason=dict(sorted(total.reasons.items())),
            per_column=per_column, batches=batches, dry_run=dry_run,
            conflicts=total.conflicts, ignored=total.ignored,
        )
        log.info(
            "%scutover done: %d reference(s) scanned, %d %s, %d already rewritten, %d residual %s, "
            "%d conflict(s), %d cell(s) ignored, %d batch(es)",
            "DRY RUN: " if dry_run else "", result.scanned, result.rewritten,
            "would be rewritten" if dry_run else "rewritten", result.already_rewritten, result.residual,
            result.residual_by_reason, result.conflicts, result.ignored, result.batches,
        )
        if demoted:
            log.warning("%d object(s) back from cut_over to verified: a reference of each is in conflict", demoted)
        if not dry_run:
            ledger.audit(migration_id, "cutover.done", dict(asdict(result), demoted_to_verified=demoted))
            ledger.record_phase(migration_id, "cutover", asdict(result))
        return result
    finally:
        app.dispose()


def rollback(policy: Policy, ledger: Ledger, *, dry_run: bool = False) -> RollbackResult:
    """Put back the old URLs of every applied (or pending) journal row of the migration.

    Each cell is restored by compare-and-swap (``SET col = old WHERE col = new``):
    a cell the application changed since the cutover is left alone and counted
    in ``skipped_changed`` (its journal row stays ``applied``, so a later run
    counts it again). Restored rows become ``rolled_back``; a ``pending`` row
    whose cell still holds the old URL (the write never landed) becomes
    ``rolled_back`` too and counts as ``not_applied``. Objects with no applied
    reference left go back from ``cut_over`` to ``verified``.

    dry_run: reads the cells and reports what would be restored; writes nothing.

    Raises:
        PolicyError: no ``references`` section, or a journaled table is gone.
    """
    refs = _require_references(policy)
    migration_id = policy.migration_id
    app = _app_engine(refs)
    resolved: dict[tuple[str, str, str], _AppColumn] = {}
    restored = skipped = not_applied = batches = 0
    try:
        log.info(
            "%s rollback of cutover %s in %s", "DRY RUN:" if dry_run else "starting", migration_id,
            _safe_url(refs.database_url),
        )
        for page in _journal_pages(ledger, migration_id, (APPLIED, PENDING), refs.batch_size):
            batches += 1
            groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
            for row in page:
                groups.setdefault((row["table_name"], row["key_column"], row["url_column"]), []).append(row)
            done_ids: list[int] = []
            restored_uris: set[str] = set()
            page_counts = Counter[str]()
            plans: list[tuple[_AppColumn, list[Mapping[str, Any]]]] = []
            for ident, rows in groups.items():
                if ident not in resolved:
                    resolved[ident] = _resolve(app, ReferenceColumn(*ident), "journal")
                column = resolved[ident]
                current = _current_cells(app, column, [r["key_value"] for r in rows])
                todo = []
                for row in rows:
                    cell = current.get(row["key_value"], _MISSING)
                    if cell == row["new_url"]:
                        todo.append(row)
                    elif cell == row["old_url"] and row["state"] == PENDING:
                        done_ids.append(row["id"])
                        page_counts["not_applied"] += 1
                    else:
                        page_counts["skipped_changed"] += 1
                        log.warning(
                            "rollback %s %s=%s skipped: cell changed since cutover (expected %s, found %s)",
                            column.label, column.spec.key, row["key_value"], row["new_url"],
                            "no row" if cell is _MISSING else cell,
                        )
                plans.append((column, todo))

            if dry_run:
                for column, todo in plans:
                    for row in todo:
                        page_counts["restored"] += 1
                        log.info(
                            "would roll back %s %s=%s: %s -> %s",
                            column.label, column.spec.key, row["key_value"], row["new_url"], row["old_url"],
                        )
            else:
                with app.begin() as conn:
                    outcomes = [
                        (column, row, _cas(conn, column, column.key_from_journal(row["key_value"]), row["new_url"], row["old_url"]))
                        for column, todo in plans
                        for row in todo
                    ]
                for column, row, ok in outcomes:
                    if ok:
                        page_counts["restored"] += 1
                        done_ids.append(row["id"])
                        restored_uris.add(row["src_uri"])
                        log.info(
                            "rollback %s %s=%s: %s -> %s",
                            column.label, column.spec.key, row["key_value"], row["new_url"], row["old_url"],
                        )
                    else:
                        page_counts["skipped_changed"] += 1
                        log.warning(
                            "rollback %s %s=%s skipped: cell changed since cutover (expected %s)",
                            column.label, column.spec.key, row["key_value"], row["new_url"],
                        )
                with ledger.engine.begin() as lconn:
                    _set_journal_state(lconn, done_ids, ROLLED_BACK)
                    reverted = _revert_objects(lconn, migration_id, restored_uris)
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
        result = RollbackResult(restored=restored, skipped_changed=skipped, dry_run=dry_run, not_applied=not_applied)
        log.info(
            "%srollback done: %d cell(s) %s, %d skipped because the application changed them, %d never applied",
            "DRY RUN: " if dry_run else "", restored, "would be restored" if dry_run else "restored",
            skipped, not_applied,
        )
        if not dry_run:
            ledger.audit(migration_id, "rollback.done", asdict(result))
            ledger.record_phase(migration_id, "rollback", asdict(result))
        return result
    finally:
        app.dispose()


def scan_residual(policy: Policy, ledger: Ledger, overseas_buckets: Iterable[str]) -> ResidualReport:
    """Count every configured cell that still points into an overseas bucket.

    Args:
        overseas_buckets: bucket names (``seoul-line-photos``) or bucket URIs
            (``s3://seoul-line-photos``); a name matches a bucket of either provider.

    The reason of each residual cell comes from the ledger and the journal:
    ``not_in_scope``, ``not_verified``, ``conflict`` or ``not_rewritten`` (see the
    module docstring). Read-only on the application DB; the report is kept with
    ``ledger.record_phase(..., "residual", ...)`` and an audit record.
    """
    refs = _require_references(policy)
    migration_id = policy.migration_id
    names: set[str] = set()
    uris: set[str] = set()
    for item in overseas_buckets:
        (uris if "://" in item else names).add(item.rstrip("/"))
    app = _app_engine(refs)
    try:
        columns = _resolve_columns(app, refs)
        cells = 0
        reasons: Counter[str] = Counter()
        per_column: dict[str, int] = {}
        examples: list[dict[str, Any]] = []
        for column in columns:
            per_column[column.label] = 0
            for rows in _pages(app, column, refs.batch_size):
                cells += len(rows)
                hits: list[tuple[Any, str, ParsedUrl]] = []
                for key, url in rows:
                    parsed = parse_url(url) if isinstance(url, str) else None
                    if parsed and (parsed.ref.bucket in names or parsed.ref.bucket_uri in uris):
                        hits.append((key, url, parsed))
                if not hits:
                    continue
                found = ledger.get_objects(migration_id, [p.ref.uri for _, _, p in hits])
                conflicts = {
                    r["key_value"]
                    for r in _journal_rows(ledger, migration_id, column, [str(k) for k, _, _ in hits]).values()
                    if r["state"] == CONFLICTED
                }
                for key, url, parsed in hits:
                    obj = found.get(parsed.ref.uri)
                    if obj is None:
                        reason = NOT_IN_SCOPE
                    elif obj["state"] not in (VERIFIED, CUT_OVER):
                        reason = NOT_VERIFIED
                    elif str(key) in conflicts:
                        reason = CONFLICT
                    else:
                        reason = NOT_REWRITTEN
                    reasons[reason] += 1
                    per_column[column.label] += 1
                    if len(examples) < MAX_EXAMPLES:
                        examples.append({
                            "table": column.spec.table, "column": column.spec.column,
                            "key": str(key), "url": url, "reason": reason,
                            "state": obj["state"] if obj else None,
                        })
        report = ResidualReport(
            cells_scanned=cells, residual=sum(reasons.values()), by_reason=dict(sorted(reasons.items())),
            examples=examples, per_column=per_column,
        )
        log.info(
            "residual scan: %d cell(s) scanned, %d still point into %s: %s",
            report.cells_scanned, report.residual, sorted(names | uris), report.by_reason or "none",
        )
        summary = {k: v for k, v in asdict(report).items() if k != "examples"}
        summary["overseas_buckets"] = sorted(names | uris)
        ledger.audit(migration_id, "residual.scan", summary)
        ledger.record_phase(migration_id, "residual", asdict(report))
        return report
    finally:
        app.dispose()


# -- one page of a cutover -----------------------------------------------------


def _cutover_page(
    ledger: Ledger,
    app: Engine,
    column: _AppColumn,
    rows: Sequence[Any],
    migration_id: str,
    source_buckets: set[str],
    region_of: Callable[[ObjectRef], str | None],
    batch_no: int,
    dry_run: bool,
) -> _Counts:
    counts = _Counts()
    journaled = _journal_rows(ledger, migration_id, column, [str(k) for k, _ in rows])
    already: list[Mapping[str, Any]] = []
    candidates: list[tuple[Any, str, ParsedUrl]] = []
    for key, url in rows:
        entry = journaled.get(str(key))
        if entry is not None and isinstance(url, str) and url == entry["new_url"]:
            already.append(entry)
            continue
        parsed = parse_url(url) if isinstance(url, str) else None
        if parsed is None or parsed.ref.bucket_uri not in source_buckets:
            counts.ignored += 1
            continue
        candidates.append((key, url, parsed))

    found = ledger.get_objects(migration_id, [p.ref.uri for _, _, p in candidates]) if candidates else {}
    rewrites: list[_Rewrite] = []
    for key, url, parsed in candidates:
        obj = found.get(parsed.ref.uri)
        if obj is None:
            reason = NOT_IN_SCOPE
        elif obj["state"] not in (VERIFIED, CUT_OVER):
            reason = NOT_VERIFIED
        else:
            dst = parse_uri(obj["dst_uri"], "ledger dst_uri")
            new = format_url(dst, parsed.style, region_of(dst), parsed.query)
            entry = journaled.get(str(key))
            rewrites.append(_Rewrite(key, str(key), url, new, parsed.ref.uri, entry["id"] if entry else None))
            continue
        counts.residual += 1
        counts.reasons[reason] += 1
        log.debug("residual %s %s=%s: %s (%s)", column.label, column.spec.key, key, url, reason)

    counts.scanned = len(already) + len(candidates)
    counts.already_rewritten = len(already)

    if dry_run:
        for r in rewrites:
            log.info("would rewrite %s %s=%s: %s -> %s", column.label, column.spec.key, r.key_value, r.old, r.new)
        counts.rewritten = len(rewrites)
        _log_batch(column, batch_no, counts, dry_run)
        return counts

    if rewrites:
        _journal_pending(ledger, migration_id, column, rewrites, batch_no)
        with app.begin() as conn:
            outcomes = [(r, _cas(conn, column, r.key, r.old, r.new)) for r in rewrites]
    else:
        outcomes = []

    applied_ids: list[int] = []
    conflict_ids: list[int] = []
    touched: set[str] = {e["src_uri"] for e in already}
    ids = _journal_ids(ledger, migration_id, column, [r.key_value for r in rewrites]) if rewrites else {}
    for r, ok in outcomes:
        if ok:
            applied_ids.append(ids[r.key_value])
            touched.add(r.src_uri)
            counts.rewritten += 1
            log.info("cutover %s %s=%s: %s -> %s", column.label, column.spec.key, r.key_value, r.old, r.new)
        else:
            conflict_ids.append(ids[r.key_value])
            counts.conflicts += 1
            log.warning(
                "conflict %s %s=%s: the application changed the cell since it was read; "
                "not overwritten (expected %s)", column.label, column.spec.key, r.key_value, r.old,
            )
    reconciled = [e["id"] for e in already if e["state"] != APPLIED]
    with ledger.engine.begin() as lconn:
        _set_journal_state(lconn, applied_ids + reconciled, APPLIED)
        _set_journal_state(lconn, conflict_ids, CONFLICTED)
        marked = _mark_cut_over(lconn, migration_id, touched)
        ledger.audit(
            migration_id, "cutover.batch",
            dict(counts.as_dict(), table=column.spec.table, column=column.spec.column, batch=batch_no,
                 reconciled_pending=len(reconciled), objects_cut_over=marked),
            conn=lconn,
        )
    if reconciled:
        log.info("%s batch %d: %d pending journal row(s) of an earlier run found applied", column.label, batch_no, len(reconciled))
    _log_batch(column, batch_no, counts, dry_run)
    return counts


def _log_batch(column: _AppColumn, batch_no: int, counts: _Counts, dry_run: bool) -> None:
    log.info(
        "%scutover batch %d %s: %d reference(s), %d %s, %d already rewritten, %d residual %s, %d conflict(s), %d ignored",
        "DRY RUN: " if dry_run else "", batch_no, column.label, counts.scanned, counts.rewritten,
        "would be rewritten" if dry_run else "rewritten", counts.already_rewritten, counts.residual,
        dict(counts.reasons), counts.conflicts, counts.ignored,
    )


# -- application DB ------------------------------------------------------------

_MISSING = object()


def _require_references(policy: Policy) -> References:
    if policy.references is None:
        raise PolicyError("references", None, "required for cutover, rollback and the residual scan")
    return policy.references


def _app_engine(refs: References) -> Engine:
    kwargs: dict[str, Any] = {}
    if refs.database_url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    return sa.create_engine(refs.database_url, **kwargs)


def _safe_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable URL>"


def _resolve_columns(app: Engine, refs: References) -> list[_AppColumn]:
    """Reflect every configured table once, before any work; a missing name is a PolicyError."""
    return [_resolve(app, spec, f"references.columns[{i}]") for i, spec in enumerate(refs.columns)]


def _resolve(app: Engine, spec: ReferenceColumn, field_prefix: str) -> _AppColumn:
    # Reflection gives typed, properly quoted table and column objects: no SQL text
    # is ever built from the policy's identifiers.
    try:
        table = sa.Table(spec.table, sa.MetaData(), autoload_with=app)
    except sa.exc.NoSuchTableError as exc:
        raise PolicyError(f"{field_prefix}.table", spec.table, "no such table in the application database") from exc
    for name in ("key", "column"):
        value = getattr(spec, name)
        if value not in table.c:
            raise PolicyError(
                f"{field_prefix}.{name}", value, f"table {spec.table!r} has no such column; it has {sorted(table.c.keys())}"
            )
    return _AppColumn(spec, table)


def _pages(app: Engine, column: _AppColumn, size: int) -> Iterator[Sequence[Any]]:
    """Pages of ``(key, url)`` in key order, by keyset pagination."""
    last: Any = None
    while True:
        query = sa.select(column.key, column.url).where(column.key.is_not(None)).order_by(column.key).limit(size)
        if last is not None:
            query = query.where(column.key > last)
        with app.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        yield rows
        if len(rows) < size:
            return
        last = rows[-1][0]


def _cas(conn: Connection, column: _AppColumn, key: Any, expected: str, value: str) -> bool:
    """Compare-and-swap one cell; True when it held ``expected`` and now holds ``value``."""
    result = conn.execute(
        column.cas(), {"residency__key": key, "residency__expected": expected, "residency__value": value}
    )
    return result.rowcount >= 1


def _current_cells(app: Engine, column: _AppColumn, key_values: list[str]) -> dict[str, Any]:
    keys = [column.key_from_journal(k) for k in key_values]
    out: dict[str, Any] = {}
    with app.connect() as conn:
        for i in range(0, len(keys), 500):
            for key, url in conn.execute(sa.select(column.key, column.url).where(column.key.in_(keys[i : i + 500]))):
                out[str(key)] = url
    return out


# -- journal and ledger ----------------------------------------------------------


def _last_batch(ledger: Ledger, migration_id: str) -> int:
    """Batch numbers continue across runs, so a journal row's batch names one run's page."""
    with ledger.engine.connect() as conn:
        value = conn.execute(
            sa.select(sa.func.max(_journal.c.batch)).where(_journal.c.migration_id == migration_id)
        ).scalar()
    return int(value or 0)


def _journal_where(stmt: Any, migration_id: str, column: _AppColumn) -> Any:
    return (
        stmt.where(_journal.c.migration_id == migration_id)
        .where(_journal.c.table_name == column.spec.table)
        .where(_journal.c.url_column == column.spec.column)
    )


def _journal_rows(
    ledger: Ledger, migration_id: str, column: _AppColumn, key_values: list[str]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with ledger.engine.connect() as conn:
        for i in range(0, len(key_values), 500):
            query = _journal_where(sa.select(_journal), migration_id, column).where(
                _journal.c.key_value.in_(key_values[i : i + 500])
            )
            for row in conn.execute(query).mappings():
                out[row["key_value"]] = dict(row)
    return out


def _journal_ids(ledger: Ledger, migration_id: str, column: _AppColumn, key_values: list[str]) -> dict[str, int]:
    return {k: r["id"] for k, r in _journal_rows(ledger, migration_id, column, key_values).items()}


def _journal_pending(
    ledger: Ledger, migration_id: str, column: _AppColumn, rewrites: list[_Rewrite], batch_no: int
) -> None:
    """Step 1 of the write-ahead: the planned rewrites, committed before the application changes."""
    stamp = ledger_mod.now()
    inserts = [
        {
            "migration_id": migration_id, "table_name": column.spec.table, "key_column": column.spec.key,
            "key_value": r.key_value, "url_column": column.spec.column, "old_url": r.old, "new_url": r.new,
            "src_uri": r.src_uri, "state": PENDING, "batch": batch_no, "updated_at": stamp,
        }
        for r in rewrites
        if r.journal_id is None
    ]
    # The cell is unique in the journal (uq_journal_cell): a cell seen by an
    # earlier run gets its row rewritten rather than a second one.
    updates = [
        {
            "j_id": r.journal_id, "j_old": r.old, "j_new": r.new, "j_src": r.src_uri,
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


def _set_journal_state(conn: Connection, ids: list[int], state: str) -> None:
    stamp = ledger_mod.now()
    for i in range(0, len(ids), 500):
        conn.execute(
            _journal.update().where(_journal.c.id.in_(ids[i : i + 500])).values(state=state, updated_at=stamp)
        )


def _mark_cut_over(conn: Connection, migration_id: str, src_uris: set[str]) -> int:
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


def _demote_conflicted(ledger: Ledger, migration_id: str) -> int:
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


def _revert_objects(conn: Connection, migration_id: str, src_uris: set[str]) -> int:
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


def _journal_pages(
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
