"""Discovery: references to the overseas buckets in columns the policy does not list.

Nobody knows every column that holds a media URL (a profile's JSON settings, a
message body, an admin note). Discovery reads every text-like and JSON column of
every table in the schemas of ``references.discover`` and reports the columns that
hold URLs of the overseas buckets, or mentions of their names and CDN hostnames
(:mod:`.cells`), but are not in ``references.columns``: cutover and the residual
scan would never see them.

Read-only. Each table is read once, by one SELECT of its text and JSON columns,
streamed (memory bounded by ``references.batch_size`` rows). Not scanned: the
configured columns (the residual scan reads them; reported as configured), the
product's own ledger tables (``residency_*``), the policy's ``exclude`` entries
(a ``table`` or ``table.column`` name, in any schema scanned), views, and columns
of other types (binary, numbers, dates, enums).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..errors import PolicyError
from ..policy import Policy
from ..uris import CdnHost, ParsedUrl, redact_url
from . import appdb
from .cells import as_text, scan_cell
from .cutover import cdn_hosts
from .residual import overseas_matcher

log = logging.getLogger(__name__)

OWN_TABLE_PREFIX = "residency_"  # the ledger's tables, when it shares the database
MAX_EXAMPLES = 3
EXAMPLE_CHARS = 300


@dataclass(frozen=True)
class DiscoveredColumn:
    """A column that holds references, or that the policy configures.

    ``kind`` is a guess for ``references.columns[].kind``: ``url`` when every cell
    with a reference is one URL, ``json`` when every such cell is a JSON document
    (or the column is of a JSON type), else ``text``. Configured columns are not
    scanned here (the residual scan reads them): their kind is the policy's and
    their counts are 0. ``examples`` are redacted: no signature or token.
    """

    label: str
    kind: str
    configured: bool
    cells: int = 0
    cells_with_references: int = 0
    references: int = 0
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiscoveryReport:
    """What discovery read and found. ``unconfigured`` lists the labels of the columns
    with at least one reference that ``references.columns`` does not name; labels are
    ``table.column`` in the default schema, ``schema.table.column`` elsewhere."""

    database: str  # password masked
    enabled: bool  # False: the policy says ``discover: false`` and nothing was read
    overseas_buckets: tuple[str, ...]
    schemas: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()  # tables read
    scanned_columns: int = 0
    cells_scanned: int = 0
    columns: tuple[DiscoveredColumn, ...] = ()
    unconfigured: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    skipped_own_tables: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # tuples become lists, as in XCom


@dataclass
class _Target:
    label: str
    name: str
    read_as: str  # the cell kind given to scan_cell: "json" or "text"
    cast: bool
    cells: int = 0
    with_refs: int = 0
    refs: int = 0
    examples: list[str] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)

    def result(self) -> DiscoveredColumn:
        kind = next(iter(self.kinds)) if len(self.kinds) == 1 else ("text" if self.kinds else self.read_as)
        return DiscoveredColumn(self.label, kind, False, self.cells, self.with_refs, self.refs, tuple(self.examples))


def discover(
    policy: Policy, *, database_url: str | None = None, overseas_buckets: Iterable[str] | None = None
) -> DiscoveryReport:
    """Scan the application database for references in columns the policy misses.

    Args:
        database_url: the application database; default: the policy's ``database_url``.
        overseas_buckets: bucket names or bucket URIs, as for
            :func:`~residency.references.scan_residual`; default: the policy's sources.

    Raises:
        PolicyError: no ``references`` section or database URL, or a schema of
            ``references.discover.schemas`` that the database does not have (before
            any table is read).
    """
    refs = appdb.require_references(policy)
    url = appdb.database_url(refs, database_url)
    overseas, names = overseas_matcher(policy, overseas_buckets)
    hosts = cdn_hosts(policy)
    if refs.discover is None:
        log.info("discovery: off (references.discover is false); %s not read", appdb.safe_url(url))
        return DiscoveryReport(appdb.safe_url(url), False, tuple(names))
    configured = {(c.table, c.column): c for c in refs.columns}
    exclude = set(refs.discover.exclude)
    tables: list[str] = []
    columns: list[DiscoveredColumn] = []
    excluded: list[str] = []
    own: list[str] = []
    used: set[str] = set()
    scanned = cells_scanned = 0
    app = appdb.app_engine(url)
    try:
        inspector = sa.inspect(app)
        default = inspector.default_schema_name
        schemas = _schemas(inspector.get_schema_names(), refs.discover.schemas, default)
        for schema in schemas:
            qualifier = None if schema == default else schema
            for table in sorted(inspector.get_table_names(schema=qualifier)):
                prefix = table if qualifier is None else f"{schema}.{table}"
                if table.startswith(OWN_TABLE_PREFIX):
                    own.append(prefix)
                    continue
                if table in exclude:
                    excluded.append(prefix)
                    used.add(table)
                    continue
                targets = []
                for col in inspector.get_columns(table, schema=qualifier):
                    name, label = col["name"], f"{prefix}.{col['name']}"
                    spec = configured.get((table, name)) if qualifier is None else None
                    read_as = _read_as(col["type"])
                    if spec is not None:
                        columns.append(DiscoveredColumn(label, spec.kind, True))
                    elif f"{table}.{name}" in exclude:
                        excluded.append(label)
                        used.add(f"{table}.{name}")
                    elif read_as is not None:
                        targets.append(_Target(label, name, read_as, not isinstance(col["type"], sa.String)))
                if targets:
                    tables.append(prefix)
                    _scan_table(app, qualifier, table, targets, hosts, names, overseas, refs.batch_size)
                    columns.extend(t.result() for t in targets if t.refs)
                    scanned += len(targets)
                    cells_scanned += sum(t.cells for t in targets)
                    log.debug("discovery: %s read, column(s) %s", prefix, [t.name for t in targets])
    finally:
        app.dispose()
    if exclude - used:
        log.warning("discovery: references.discover.exclude entries %s match no table or column", sorted(exclude - used))
    report = DiscoveryReport(
        database=appdb.safe_url(url), enabled=True, overseas_buckets=tuple(names), schemas=tuple(str(s) for s in schemas),
        tables=tuple(tables), scanned_columns=scanned, cells_scanned=cells_scanned, columns=tuple(columns),
        unconfigured=tuple(c.label for c in columns if not c.configured), excluded=tuple(excluded),
        skipped_own_tables=tuple(own),
    )
    for c in columns:
        if not c.configured:
            log.info(
                "discovery: %s holds %d reference(s) to the overseas buckets in %d of %d cell(s) and is NOT in "
                "references.columns; add it (kind %s, with its key) or exclude it; e.g. %s",
                c.label, c.references, c.cells_with_references, c.cells, c.kind, list(c.examples),
            )
    log.info(
        "discovery of %s: schema(s) %s, %d table(s), %d column(s), %d cell(s) read for references to %s; %d "
        "unconfigured column(s) hold references %s; %d configured column(s) left to the residual scan; excluded %s; "
        "own table(s) skipped %s",
        report.database, list(report.schemas), len(tables), report.scanned_columns, report.cells_scanned, names,
        len(report.unconfigured), list(report.unconfigured), sum(c.configured for c in columns), excluded, own,
    )
    return report


def _schemas(existing: list[str], wanted: tuple[str | None, ...], default: str | None) -> list[str | None]:
    """The schemas to read, by their names in the database; ``None`` is the default one."""
    out: list[str | None] = []
    for name in wanted:
        if name is not None and name not in existing:
            raise PolicyError("references.discover.schemas", name, "no such schema in the application database")
        resolved = default if name is None else name
        if resolved not in out:
            out.append(resolved)
    return out


def _read_as(type_: sa.types.TypeEngine[Any]) -> str | None:
    """How a column's cells are scanned: ``json``, ``text`` or ``None`` (not scanned)."""
    if isinstance(type_, sa.JSON):  # PostgreSQL JSON and JSONB too
        return "json"
    if isinstance(type_, sa.Enum):  # a String subclass, but no value can be a URL
        return None
    if isinstance(type_, sa.String):  # Text, VARCHAR, CHAR, CLOB, Unicode
        return "text"
    if isinstance(type_, sa.ARRAY) and isinstance(type_.item_type, (sa.String, sa.JSON)):
        return "text"  # read as its text form: '{"https://...","..."}'
    return None


def _scan_table(
    app: Engine, schema: str | None, table: str, targets: list[_Target], hosts: list[CdnHost], names: list[str],
    overseas: Callable[[ParsedUrl], bool], batch: int,
) -> None:
    """Read ``targets`` of one table in one streamed SELECT and tally each column."""
    t = sa.table(table, *(sa.column(c.name) for c in targets), schema=schema)
    query = sa.select(*(sa.cast(t.c[c.name], sa.Text) if c.cast else t.c[c.name] for c in targets))
    with app.connect() as conn:
        for row in conn.execution_options(stream_results=True, yield_per=batch).execute(query):
            for target, value in zip(targets, row):
                target.cells += 1
                cell = scan_cell(value, target.read_as, hosts, names)
                found = [text for text, p in cell.urls if overseas(p)]
                if not found and not cell.unexplained:
                    continue
                target.with_refs += 1
                target.refs += len(found) + len(cell.unexplained)
                target.kinds.add(_cell_kind(value, cell.urls, bool(cell.unexplained), target.read_as))
                if len(target.examples) < MAX_EXAMPLES:  # excerpts of mentions come redacted
                    for example in [redact_url(text) for text in found] + cell.unexplained:
                        if len(target.examples) < MAX_EXAMPLES and example[:EXAMPLE_CHARS] not in target.examples:
                            target.examples.append(example[:EXAMPLE_CHARS])


def _cell_kind(value: Any, urls: list[tuple[str, ParsedUrl]], unexplained: bool, read_as: str) -> str:
    """The kind one cell with references looks like: one URL, a JSON document, or text."""
    text = as_text(value) or ""
    if read_as == "json":
        return "json"
    if len(urls) == 1 and urls[0][0] == text and not unexplained:
        return "url"
    if text.lstrip()[:1] in ("{", "["):
        try:
            json.loads(text)
            return "json"
        except ValueError:
            pass
    return "text"
