"""The application database: configured columns, keyset paging, compare-and-swap.

Tables and columns are reflected, never built from text, so the policy's
identifiers are always quoted by SQLAlchemy. Rows are read by keyset pagination
(``WHERE key > :last ORDER BY key LIMIT n``): memory is bounded by the page size,
and every row is visited exactly once *provided the key is unique and never
NULL*, which :func:`check_columns` makes sure of before any work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import PolicyError
from ..policy import Policy, ReferenceColumn, References, redact_db_url

log = logging.getLogger(__name__)

_MISSING = object()


@dataclass(frozen=True)
class AppColumn:
    """One configured (table, key, column), resolved against the application DB."""

    spec: ReferenceColumn
    table: sa.Table
    dialect: str = ""

    @property
    def label(self) -> str:
        return self.spec.label

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

    @property
    def is_json(self) -> bool:
        return isinstance(self.url.type, sa.JSON)

    @property
    def value(self) -> Any:
        """The cell as text: a JSON column is read as its text, never as a Python
        object, so that a rewrite changes only the URLs in it."""
        return sa.cast(self.url, sa.Text) if self.is_json else self.url

    def cas(self) -> sa.Update:
        """``UPDATE t SET col = :new WHERE key = :k AND col = :expected`` (JSON
        columns compared and written as text; jsonb compared as jsonb, whose text
        form PostgreSQL normalises)."""
        expected = sa.bindparam("residency__expected", type_=sa.Text)
        value: Any = sa.bindparam("residency__value", type_=sa.Text)
        if not self.is_json:
            same = self.url == sa.bindparam("residency__expected")
            value = sa.bindparam("residency__value")
        elif self.dialect == "postgresql" and self.url.type.__class__.__name__ == "JSONB":
            same = self.url == sa.cast(expected, self.url.type)
        else:
            same = self.value == expected
        if self.is_json and self.dialect == "postgresql":
            value = sa.cast(value, self.url.type)
        return (
            self.table.update()
            .where(self.key == sa.bindparam("residency__key"))
            .where(same)
            .values({self.spec.column: value})
        )


def require_references(policy: Policy) -> References:
    if policy.references is None:
        raise PolicyError("references", None, "required for cutover, rollback and the residual scan")
    return policy.references


def database_url(refs: References, url: str | None) -> str:
    """The application database's URL: the one given (from the policy's Airflow
    connection), else the policy's own ``database_url``."""
    chosen = url or refs.database_url
    if not chosen:
        raise PolicyError("references.conn_id", refs.conn_id,
                          "the application database's connection was not resolved (no database URL given)")
    return chosen


def app_engine(url: str) -> Engine:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    return sa.create_engine(url, **kwargs)


def safe_url(url: str) -> str:
    return redact_db_url(url)


def resolve_columns(app: Engine, refs: References) -> list[AppColumn]:
    """Reflect every configured table once, before any work; a missing name is a PolicyError."""
    return [resolve(app, spec, f"references.columns[{i}]") for i, spec in enumerate(refs.columns)]


def resolve(app: Engine, spec: ReferenceColumn, field_prefix: str) -> AppColumn:
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
    return AppColumn(spec, table, app.dialect.name)


def check_columns(app: Engine, refs: References) -> list[str]:
    """Read-only checks of every configured column before any work.

    Each key column must be unique and never NULL, or keyset paging could skip or
    repeat rows and a compare-and-swap could touch several rows at once. A key
    that the schema declares the primary key, or unique and NOT NULL, passes
    without a scan; otherwise the data is checked (one aggregate query each).

    Returns:
        Problems, one sentence each naming the field and the value; ``[]`` when fine.

    Raises:
        PolicyError: a configured table or column does not exist.
    """
    problems: list[str] = []
    inspector = sa.inspect(app)
    for i, column in enumerate(resolve_columns(app, refs)):
        field = f"references.columns[{i}].key"
        name = column.spec.key
        key = column.key
        pk = [c.name for c in column.table.primary_key.columns]
        unique_sets = [tuple(u["column_names"]) for u in inspector.get_unique_constraints(column.spec.table)]
        unique_sets += [tuple(ix["column_names"]) for ix in inspector.get_indexes(column.spec.table) if ix.get("unique")]
        declared_unique = pk == [name] or (name,) in unique_sets
        declared_not_null = pk == [name] or not key.nullable
        with app.connect() as conn:
            if not declared_unique:
                dup = conn.execute(
                    sa.select(key, sa.func.count()).where(key.is_not(None)).group_by(key)
                    .having(sa.func.count() > 1).limit(1)
                ).first()
                if dup is not None:
                    problems.append(
                        f"{field} = {name!r}: the key of table {column.spec.table!r} is not unique (value {dup[0]!r} "
                        f"is in {dup[1]} rows); a reference column needs a unique key (a primary key) so that every "
                        "row is visited once and updated alone"
                    )
            if not declared_not_null:
                nulls = conn.execute(sa.select(sa.func.count()).select_from(column.table).where(key.is_(None))).scalar()
                if nulls:
                    problems.append(
                        f"{field} = {name!r}: {nulls} row(s) of table {column.spec.table!r} have a NULL key; such rows "
                        "could never be visited or updated, so their references would go unseen"
                    )
    return problems


def pages(app: Engine, column: AppColumn, size: int) -> Iterator[Sequence[Any]]:
    """Pages of ``(key, value)`` in key order, by keyset pagination."""
    last: Any = None
    while True:
        query = sa.select(column.key, column.value).where(column.key.is_not(None)).order_by(column.key).limit(size)
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


def cas(conn: Connection, column: AppColumn, key: Any, expected: str, value: str) -> bool:
    """Compare-and-swap one cell; True when it held ``expected`` and now holds ``value``."""
    result = conn.execute(
        column.cas(), {"residency__key": key, "residency__expected": expected, "residency__value": value}
    )
    return result.rowcount >= 1


def current_cells(app: Engine, column: AppColumn, key_values: list[str]) -> dict[str, Any]:
    keys = [column.key_from_journal(k) for k in key_values]
    out: dict[str, Any] = {}
    with app.connect() as conn:
        for i in range(0, len(keys), 500):
            for key, url in conn.execute(sa.select(column.key, column.value).where(column.key.in_(keys[i : i + 500]))):
                out[str(key)] = url
    return out


MISSING = _MISSING
