"""Rows per second of the reference cutover, the residual scan and the rollback on PostgreSQL.

Builds, in two scratch databases of the machine's PostgreSQL (``127.0.0.1:5432``,
user ``postgres``; ``residency_bench_<pid>_app`` and ``residency_bench_<pid>_ledger``,
dropped at the end, also after a failure or Ctrl-C):

- a **ledger** of ``N/2`` objects (``--refs N``, default 1,000,000) in two source
  buckets, ``s3://seoul-bench-photos`` (3 in 4) and ``gs://seoul-bench-gcs``, each
  with its copy in ``s3://tokyo-bench-media`` / ``gs://tokyo-bench-gcs``. The rows
  are COPYed in as inventoried, then marked verified and attested by
  ``bench_scale.seed_verified`` (the fields the engine writes for a proven copy);
- an **application database** of three tables holding ``N`` references, a third each:

  ``photos(id bigint pk, url text)``, kind ``url``
      one URL per cell: S3 virtual-hosted, S3 path-style, ``s3://``, ``gs://``,
      ``https://storage.googleapis.com/...``;
  ``messages(id bigint pk, body text)``, kind ``text``
      prose, HTML or Markdown with one or two of those URLs in it;
  ``settings(id bigint pk, doc jsonb)``, kind ``json``
      documents with one or two URLs at depth 2 or 3.

  Every object is referenced about twice, from any table. About 2% of the
  references name a key of a source bucket that the ledger does not hold
  (``gone/...``): the cutover leaves them and the residual scan reports them
  ``not_in_scope``. Cell contents are a pure function of (table, id), so a check can
  rebuild what any row held.

Then it times, through ``residency.references`` as the pipeline calls it (the
seeded attestation stamp as ``attested_since`` / ``attest_stamp``):

1. ``cutover`` (first run: every proven reference rewritten, journaled);
2. ``cutover`` again (everything already rewritten: the steady-state re-run);
3. ``scan_residual`` (every column of every kind, read-only);
4. ``rollback`` (every applied journal row put back).

For each: wall time (``time.perf_counter`` around the call), rows/s (rows of the
application tables the phase read or, for the rollback, cells it restored) and
references/s (the phase's own count: ``scanned``, ``references``, ``restored``),
the peak resident set during the phase (the kernel's mark is reset at its start,
as in ``bench_scale.py``) and the process's ``ru_maxrss`` (seeding runs in a forked
child, so both are the engine's and this script's own), and where the time went:
every SQL statement sent through SQLAlchemy, timed in the client (round trip
included) and grouped by statement shape, plus commits. ``pg_stat_statements`` is
used instead when the server has it loaded (it needs ``shared_preload_libraries``,
so a restart this benchmark does not do).

Checks (listed after the table; the exit status is 1 when one FAILs):

- after the cutover, a sample of rows of every table holds no overseas URL but the
  ``gone/`` ones, and a URL of a domestic copy for each of the others;
- the re-run rewrites nothing; the residual scan finds exactly the ``gone/``
  references ``not_in_scope`` and nothing else it cannot explain;
- after the rollback every table is byte-identical to the seed: the MD5 of
  ``string_agg(col::text ORDER BY id)`` per table equals the one taken before the cutover.

Engine INFO logs (one line per rewritten cell, as a task's log) go to a file in a
temporary folder; its size is reported. The machine (2 cores shared with the
server and other engineers' runs) makes every time noisy: re-run before quoting one.

Statistics: the cutover creates the journal tables empty. Where the server's
autovacuum is off (the test server here), they never get statistics, and the
planner reads them as if they were tiny; the output says so. ``--analyze-every S``
ANALYZEs the ledger's tables every S seconds during the phases, as autoanalyze would
on a production server; comparing both shows how much the plans depend on it.

Run: ``python benchmarks/bench_cutover.py`` (1,000,000 references),
``--refs 100000``, ``--quick`` (20,000), ``--batch-size 500`` (policy
``references.batch_size``), ``--analyze-every 30``, ``--log-level WARNING`` (no
per-cell log lines), ``--keep`` (leave the databases for a look).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing
import os
import re
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "include", ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import psycopg2  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import default as sa_default  # noqa: E402

from bench_scale import PeakMeter, rounded, seed_verified  # noqa: E402
from residency.ledger import Ledger  # noqa: E402
from residency.policy import parse_policy  # noqa: E402
from residency.references import cutover, rollback, scan_residual  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
PG = "postgresql://postgres@127.0.0.1:5432"
MID = "bench-cutover"
SRC = {"s3": "seoul-bench-photos", "gs": "seoul-bench-gcs"}
DST = {"s3": "tokyo-bench-media", "gs": "tokyo-bench-gcs"}
GONE_EVERY = 50  # one reference in 50 names an object the ledger does not hold
SAMPLE_ROWS = 2_000  # per table, for the check after the cutover
STAMP = "2026-11-22T00:00:00.000+00:00"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- the estate: a pure function of (table, id) -------------------------------------------


@dataclass(frozen=True)
class Ref:
    """One reference as written in a cell: the object it names and whether the ledger holds it."""

    src_uri: str
    url: str
    gone: bool


@dataclass(frozen=True)
class Table:
    name: str
    key: str
    column: str
    kind: str
    salt: int
    column_type: str

    @property
    def label(self) -> str:
        return f"{self.name}.{self.column}"


TABLES = (
    Table("photos", "id", "url", "url", 0, "text"),
    Table("messages", "id", "body", "text", 1, "text"),
    Table("settings", "id", "doc", "json", 2, "jsonb"),
)

STYLES = {
    "s3": (
        lambda b, k: f"https://{b}.s3.ap-northeast-2.amazonaws.com/{k}",  # virtual-hosted
        lambda b, k: f"https://s3.ap-northeast-2.amazonaws.com/{b}/{k}",  # path-style
        lambda b, k: f"s3://{b}/{k}",
    ),
    "gs": (
        lambda b, k: f"gs://{b}/{k}",
        lambda b, k: f"https://storage.googleapis.com/{b}/{k}",
    ),
}

TEXTS = {
    1: ("Look at this! {0} from our trip to Jeju.",
        '<p>New photo: <a href="{0}">open</a></p>',
        "Here it is: ![cover]({0})"),
    2: ("Look at these: {0} and {1} (from Busan).",
        '<p><img src="{0}"> <a href="{1}">full size</a></p>',
        "Album: [first]({0}), [second]({1}) and more soon"),
}


def object_key(o: int) -> str:
    return f"u/{o:08d}.jpg"


def provider_of(o: int) -> str:
    return "gs" if o % 4 == 3 else "s3"


def slots(table: Table, row: int) -> int:
    """References in a row: one per URL cell; one or two in a message or a document."""
    return 1 if table.kind == "url" else 1 + row % 2


def ref(table: Table, row: int, slot: int, objects: int) -> Ref:
    h = (row * 2654435761 + slot * 40503 + table.salt * 1_000_003) % 4294967291
    o = (h // GONE_EVERY) % objects
    provider = provider_of(o)
    gone = h % GONE_EVERY == 0
    key = f"gone/{table.salt}-{row}-{slot}.jpg" if gone else object_key(o)
    styles = STYLES[provider]
    return Ref(f"{provider}://{SRC[provider]}/{key}", styles[(row + slot) % len(styles)](SRC[provider], key), gone)


def refs_of(table: Table, row: int, objects: int) -> list[Ref]:
    return [ref(table, row, s, objects) for s in range(slots(table, row))]


def cell(table: Table, row: int, refs: list[Ref]) -> str:
    """The cell's value, as text (the JSON document serialised)."""
    urls = [r.url for r in refs]
    if table.kind == "url":
        return urls[0]
    if table.kind == "text":
        templates = TEXTS[len(urls)]
        return templates[row % len(templates)].format(*urls)
    doc: dict[str, Any] = {"theme": "dark" if row % 2 else "light", "lang": "ko"}
    if len(urls) == 1:
        doc["banner"] = {"image": urls[0]}  # depth 2
    else:
        doc["profile"] = {"avatar": {"url": urls[0]}, "name": f"user {row}"}  # depth 3
        doc["albums"] = [{"title": "trip", "cover": {"src": urls[1]}}]  # depth 3, in a list
    return json.dumps(doc)


def rows_for(table: Table, refs: int) -> int:
    """Rows that hold about ``refs`` references (1.5 per row in text and JSON)."""
    return refs if table.kind == "url" else max(1, round(refs / 1.5))


@dataclass
class Expect:
    """What the seed holds, per table: the figures every check compares against."""

    rows: int = 0
    refs: int = 0
    gone: int = 0
    cells_with_proven: int = 0  # cells with at least one reference to a proven object

    @property
    def proven(self) -> int:
        return self.refs - self.gone


# -- seeding (COPY; never timed as a figure) -------------------------------------------


def copy_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def copy_in(cur: Any, sql: str, lines: Iterator[str], chunk: int = 8 * MiB) -> None:
    """COPY ``lines`` in, a few MiB at a time (the buffer, not the estate, in memory)."""
    buf = io.StringIO()
    for line in lines:
        buf.write(line)
        if buf.tell() >= chunk:
            buf.seek(0)
            cur.copy_expert(sql, buf)
            buf = io.StringIO()
    if buf.tell():
        buf.seek(0)
        cur.copy_expert(sql, buf)


def seed_app(dsn: str, plan: dict[str, int], objects: int) -> dict[str, Expect]:
    expect: dict[str, Expect] = {}
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            for t in TABLES:
                e = expect[t.name] = Expect(rows=plan[t.name])
                cur.execute(f"CREATE TABLE {t.name} ({t.key} bigint PRIMARY KEY, {t.column} {t.column_type})")

                def lines(t: Table = t, e: Expect = e) -> Iterator[str]:
                    for row in range(1, e.rows + 1):
                        refs = refs_of(t, row, objects)
                        gone = sum(r.gone for r in refs)
                        e.refs += len(refs)
                        e.gone += gone
                        e.cells_with_proven += gone < len(refs)
                        yield f"{row}\t{copy_escape(cell(t, row, refs))}\n"

                copy_in(cur, f"COPY {t.name} ({t.key}, {t.column}) FROM STDIN", lines())
    finally:
        conn.close()
    vacuum_analyze(dsn, [t.name for t in TABLES])
    return expect


def seed_ledger(url: str, dsn: str, objects: int) -> str:
    """COPY ``objects`` inventoried rows, then mark them verified and attested with
    ``bench_scale.seed_verified``; returns the attestation's stamp."""
    ledger = Ledger(url)
    ledger.create_schema()
    ledger.dispose()
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            def lines() -> Iterator[str]:
                for o in range(objects):
                    p = provider_of(o)
                    key = object_key(o)
                    yield (f"{MID}\t{p}://{SRC[p]}/{key}\t{p}://{SRC[p]}\t{p}://{DST[p]}/{key}\t{p}->{p}\t"
                           f"{o // 1000}\t{1000 + o % 5000}\timage/jpeg\timage\t\"e{o:x}\"\t{{}}\tdiscovered\t0\t"
                           f"{STAMP}\t{STAMP}\n")

            copy_in(cur, "COPY residency_objects (migration_id, src_uri, src_bucket_uri, dst_uri, route, shard, size, "
                         "content_type, media_type, src_etag, src_checksums, state, attempts, updated_at, manifest) "
                         "FROM STDIN", lines())
    finally:
        conn.close()
    seed_verified(url, MID, SRC["s3"])  # attests every row of the migration (the summary names the S3 source)
    vacuum_analyze(dsn, ["residency_objects"])
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT max(attested_at), count(*) FILTER (WHERE state = 'verified') FROM residency_objects "
                        "WHERE migration_id = %s", (MID,))
            stamp, verified = cur.fetchone()
    finally:
        conn.close()
    if verified != objects:
        raise RuntimeError(f"seeding the ledger left {verified} of {objects} objects verified")
    return stamp


def seed_both(ledger_url: str, dsn: dict[str, str], objects: int,
              plan: dict[str, int]) -> tuple[str, dict[str, Expect], float, float]:
    """Seed the ledger, then the application; (stamp, expectations, seconds of each)."""
    say(f"seeding the ledger: {objects:,} objects (COPY, then bench_scale.seed_verified)")
    t0 = time.perf_counter()
    stamp = seed_ledger(ledger_url, dsn["ledger"], objects)
    ledger_seconds = time.perf_counter() - t0
    say(f"seeding the application: {sum(plan.values()):,} rows in {', '.join(plan)} (COPY)")
    t0 = time.perf_counter()
    expect = seed_app(dsn["app"], plan, objects)
    return stamp, expect, ledger_seconds, time.perf_counter() - t0


def vacuum_analyze(dsn: str, tables: list[str]) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in tables:
                cur.execute(f"VACUUM ANALYZE {name}")
    finally:
        conn.close()


def table_digests(dsn: str) -> dict[str, str]:
    """MD5 of every table's cells in key order, computed by the server (the cells never
    cross into this process)."""
    out = {}
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            for t in TABLES:
                cur.execute(f"SELECT md5(string_agg({t.key}::text || ':' || coalesce({t.column}::text, 'NULL'), "
                            f"E'\\n' ORDER BY {t.key})) FROM {t.name}")
                out[t.name] = cur.fetchone()[0]
    finally:
        conn.close()
    return out


# -- where the time goes: SQL statements timed in the client ---------------------------


_IN_LIST = re.compile(r"\((?:%\(\w+\)s(?:::\w+(?:\(\d+\))?)?,\s*)+%\(\w+\)s(?:::\w+(?:\(\d+\))?)?\)")
_VALUES = re.compile(r"VALUES\s*(\([^()]*\))(?:,\s*\([^()]*\))+")
_PARAM = re.compile(r"%\(\w+\)s")


def shape(statement: str) -> str:
    s = " ".join(statement.split())
    s = _IN_LIST.sub("(...)", s)
    s = _VALUES.sub(r"VALUES \1, ...", s)
    s = _PARAM.sub("?", s)
    return s if len(s) <= 160 else s[:157] + "..."


class SqlTimer:
    """Every statement SQLAlchemy sends, and every commit and rollback, timed in this
    process (network round trip included), by database and statement shape.

    Listens on the ``Engine`` class, so the engines the engine creates inside a phase
    are covered. Commits and rollbacks are timed by wrapping ``DefaultDialect``'s
    methods (SQLAlchemy has no event after a commit); informative only.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.time: Counter = Counter()
        self.calls: Counter = Counter()
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._before)
        sa.event.listen(sa.engine.Engine, "after_cursor_execute", self._after)
        for name in ("do_commit", "do_rollback"):
            original = getattr(sa_default.DefaultDialect, name)
            setattr(sa_default.DefaultDialect, name, self._wrap(name.removeprefix("do_").upper(), original))

    def _wrap(self, label: str, original: Callable[..., Any]) -> Callable[..., Any]:
        timer = self

        def timed(dialect: Any, dbapi_connection: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(dialect, dbapi_connection)
            finally:
                timer._add(("?", label), time.perf_counter() - started)

        return timed

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        started = conn.info["bench_started"].pop()
        db = (conn.engine.url.database or "?").rsplit("_", 1)[-1]
        self._add((db, shape(statement) + (" [executemany]" if executemany else "")), time.perf_counter() - started)

    def _add(self, key: tuple[str, str], seconds: float) -> None:
        with self.lock:
            self.time[key] += seconds
            self.calls[key] += 1

    def snapshot(self) -> tuple[Counter, Counter]:
        with self.lock:
            return Counter(self.time), Counter(self.calls)

    @staticmethod
    def since(before: tuple[Counter, Counter], after: tuple[Counter, Counter], top: int = 6) -> dict[str, Any]:
        t = after[0] - before[0]
        c = after[1] - before[1]
        statements = {k: v for k, v in t.items() if k[1] not in ("COMMIT", "ROLLBACK")}
        rows = [{"db": db, "sql": sql, "calls": c[(db, sql)], "seconds": secs}
                for (db, sql), secs in sorted(statements.items(), key=lambda kv: -kv[1])[:top]]
        by_db: Counter = Counter()
        for (db, _), secs in statements.items():
            by_db[db] += secs
        return {
            "statements": sum(v for k, v in c.items() if k[1] not in ("COMMIT", "ROLLBACK")),
            "statement_seconds": sum(statements.values()),
            "statement_seconds_by_db": dict(by_db),
            "commits": c[("?", "COMMIT")], "commit_seconds": t[("?", "COMMIT")],
            "rollbacks": c[("?", "ROLLBACK")], "rollback_seconds": t[("?", "ROLLBACK")],
            "top": rows,
        }


def server_settings(dsn: str) -> dict[str, str]:
    names = ("autovacuum", "shared_buffers", "synchronous_commit", "work_mem", "server_version")
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            out = {}
            for name in names:
                cur.execute(f"SHOW {name}")
                out[name] = cur.fetchone()[0]
            return out
    finally:
        conn.close()


class AutoAnalyze:
    """ANALYZE the ledger's tables every ``every`` seconds, in a thread, as autovacuum's
    autoanalyze would on a production server (it is off on some test servers: then the
    journal tables, created empty by the cutover, never get statistics)."""

    TABLES = ("residency_reference_journal", "residency_reference_objects", "residency_objects")

    def __init__(self, dsn: str, every: float) -> None:
        self.dsn = dsn
        self.every = every
        self.stop_event = threading.Event()
        self.runs = 0
        self.thread = threading.Thread(target=self._loop, name="autoanalyze", daemon=True)

    def __enter__(self) -> "AutoAnalyze":
        if self.every > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join()

    def _loop(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            while not self.stop_event.wait(self.every):
                with conn.cursor() as cur:
                    cur.execute("SELECT string_agg(relname, ',') FROM pg_class WHERE relname = ANY(%s)",
                                (list(self.TABLES),))
                    present = (cur.fetchone()[0] or "").split(",")
                    for name in self.TABLES:
                        if name in present:
                            cur.execute(f"ANALYZE {name}")
                self.runs += 1
        finally:
            conn.close()


def pg_stat_statements(dsn: str) -> bool:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW shared_preload_libraries")
            if "pg_stat_statements" not in cur.fetchone()[0]:
                return False
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            return True
    finally:
        conn.close()


def pg_top(dsn: str, dbs: list[str], top: int = 6) -> list[dict[str, Any]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT d.datname, s.calls, s.total_exec_time / 1000.0, s.query FROM pg_stat_statements s "
                "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = ANY(%s) ORDER BY s.total_exec_time DESC "
                "LIMIT %s", (dbs, top))
            return [{"db": db.rsplit("_", 1)[-1], "calls": calls, "seconds": secs, "sql": shape(q)}
                    for db, calls, secs, q in cur.fetchall()]
    finally:
        conn.close()


def pg_stat_reset(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_statements_reset()")
    finally:
        conn.close()


# -- checks ----------------------------------------------------------------------------


PASS, FAIL = "PASS", "FAIL"


@dataclass
class Checks:
    items: list[dict[str, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.items.append({"check": name, "status": PASS if ok else FAIL, "detail": detail})

    def failed(self) -> bool:
        return any(i["status"] == FAIL for i in self.items)


def sample_after_cutover(app_url: str, t: Table, e: Expect, objects: int) -> tuple[int, int, int]:
    """(rows sampled, rows with an overseas URL left that is not gone/, proven refs without
    a domestic URL) over rows spread evenly through ``t``."""
    step = max(1, e.rows // SAMPLE_ROWS)
    engine = sa.create_engine(app_url)
    bad_overseas = missing_domestic = sampled = 0
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT {t.key}, {t.column}::text FROM {t.name} WHERE {t.key} % :step = 0 "
                                        f"ORDER BY {t.key} LIMIT :n"), {"step": step, "n": SAMPLE_ROWS}).all()
    finally:
        engine.dispose()
    for key, value in rows:
        sampled += 1
        text = value or ""
        refs = refs_of(t, key, objects)
        for r in refs:
            if r.gone:
                text = text.replace(r.url, "", 1)  # stays overseas, by design
        if SRC["s3"] in text or SRC["gs"] in text:
            bad_overseas += 1
        for r in refs:
            if not r.gone:
                key_part = r.src_uri.split("/", 3)[3]
                dst_bucket = DST[r.src_uri.split(":", 1)[0]]
                if dst_bucket not in (value or "") or key_part not in (value or ""):
                    missing_domestic += 1
    return sampled, bad_overseas, missing_domestic


# -- the run -----------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float
    rows: int
    refs: int
    base_rss_kib: int
    peak_rss_kib: int | None
    sql: dict[str, Any]
    outcome: dict[str, Any]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def refs_per_s(self) -> float:
        return self.refs / self.seconds if self.seconds else 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        base = f"residency_bench_{os.getpid()}"
        self.db = {"app": f"{base}_app", "ledger": f"{base}_ledger"}
        self.dsn = {k: f"{PG}/{v}" for k, v in self.db.items()}
        self.url = {k: f"postgresql+psycopg2://postgres@127.0.0.1:5432/{v}" for k, v in self.db.items()}
        self.meter = PeakMeter()
        self.timer = SqlTimer()
        self.checks = Checks()
        self.phases: list[Phase] = []
        self.pgss = False

    # -- databases
    def create_databases(self) -> None:
        conn = psycopg2.connect(f"{PG}/postgres", connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for name in self.db.values():
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def drop_databases(self) -> None:
        conn = psycopg2.connect(f"{PG}/postgres", connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for name in self.db.values():
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()

    # -- the estate
    def policy(self) -> Any:
        return parse_policy({
            "migration_id": MID,
            "home_jurisdiction": "JP",
            "sources": [{"uri": f"s3://{SRC['s3']}", "conn_id": "aws"}, {"uri": f"gs://{SRC['gs']}", "conn_id": "gcs"}],
            "destinations": {"s3": {"uri": f"s3://{DST['s3']}", "conn_id": "aws"},
                             "gs": {"uri": f"gs://{DST['gs']}", "conn_id": "gcs"}},
            "references": {
                "database_url": self.url["app"], "batch_size": self.args.batch_size,
                "columns": [{"table": t.name, "key": t.key, "column": t.column, "kind": t.kind} for t in TABLES],
            },
            "ledger_url": self.url["ledger"],
        })

    def seed(self) -> None:
        n = self.args.refs
        self.objects = max(1, n // 2)
        third = n // 3
        plan_refs = {"photos": third, "messages": third, "settings": n - 2 * third}
        plan = {t.name: rows_for(t, plan_refs[t.name]) for t in TABLES}
        # In a forked child: this process's resident set is then the engine's alone.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            self.stamp, self.expect, self.seed_ledger_seconds, self.seed_app_seconds = pool.submit(
                seed_both, self.url["ledger"], self.dsn, self.objects, plan).result()
        self.refs_total = sum(e.refs for e in self.expect.values())
        self.gone_total = sum(e.gone for e in self.expect.values())
        self.digests_seed = table_digests(self.dsn["app"])
        say(f"seeded in {self.seed_ledger_seconds:.1f}s + {self.seed_app_seconds:.1f}s: {self.refs_total:,} "
            f"references ({self.gone_total:,} to objects not in the ledger)")

    # -- phases
    def run(self, name: str, fn: Callable[[], Any], rows: Callable[[Any], int], refs: Callable[[Any], int]) -> Any:
        say(f"{name} ...")
        if self.pgss:
            pg_stat_reset(self.dsn["app"])
        before = self.timer.snapshot()
        base = self.meter.start_phase()
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
        peak = self.meter.end_phase()
        sql = SqlTimer.since(before, self.timer.snapshot())
        if self.pgss:
            sql["pg_stat_statements_top"] = pg_top(self.dsn["app"], list(self.db.values()))
        outcome = asdict(result)
        outcome.pop("examples", None)
        phase = Phase(name, seconds, rows(result), refs(result), base, peak, sql, outcome)
        self.phases.append(phase)
        say(f"{name}: {seconds:.1f}s, {phase.rows_per_s:,.0f} rows/s, {phase.refs_per_s:,.0f} refs/s")
        return result

    def processed(self, per_column: dict[str, Any]) -> list[Table]:
        return [t for t in TABLES if t.label in per_column]

    def main(self) -> None:
        self.create_databases()
        self.pgss = pg_stat_statements(self.dsn["app"])
        self.settings = server_settings(self.dsn["app"])
        if self.settings["autovacuum"] != "on" and not self.args.analyze_every:
            say("note: autovacuum is off on this server, so the journal tables the cutover creates never get "
                "statistics; --analyze-every S emulates autoanalyze")
        self.seed()
        policy = self.policy()
        ledger = Ledger(self.url["ledger"])
        tokyo = (lambda _ref: "ap-northeast-1")
        self.autoanalyze = AutoAnalyze(self.dsn["ledger"], self.args.analyze_every)
        try:
            self.autoanalyze.__enter__()
            first = self.run(
                "cutover", lambda: cutover(policy, ledger, dst_region=tokyo, database_url=self.url["app"],
                                           attested_since=self.stamp),
                rows=lambda r: sum(self.expect[t.name].rows for t in self.processed(r.per_column)),
                refs=lambda r: r.scanned)
            self.check_cutover(first)
            again = self.run(
                "cutover re-run", lambda: cutover(policy, ledger, dst_region=tokyo, database_url=self.url["app"],
                                                  attested_since=self.stamp),
                rows=lambda r: sum(self.expect[t.name].rows for t in self.processed(r.per_column)),
                refs=lambda r: r.scanned)
            self.check_rerun(first, again)
            report = self.run(
                "residual scan", lambda: scan_residual(policy, ledger, database_url=self.url["app"],
                                                       attest_stamp=self.stamp),
                rows=lambda r: r.cells_scanned, refs=lambda r: r.references)
            self.check_residual(report)
            back = self.run(
                "rollback", lambda: rollback(policy, ledger, database_url=self.url["app"]),
                rows=lambda r: r.restored + r.skipped_changed + r.not_applied, refs=lambda r: r.restored)
            self.check_rollback(first, back)
            with ledger.engine.connect() as conn:
                self.journal_rows = conn.execute(sa.text("SELECT count(*) FROM residency_reference_journal")).scalar()
                self.db_bytes = {k: conn.execute(sa.text("SELECT pg_database_size(:d)"), {"d": v}).scalar()
                                 for k, v in self.db.items()}
        finally:
            self.autoanalyze.__exit__()
            ledger.dispose()

    # -- checks
    def check_cutover(self, r: Any) -> None:
        self.checks.add("cutover: no conflicts", r.conflicts == 0, f"{r.conflicts} conflict(s)")
        for t in TABLES:
            e = self.expect[t.name]
            col = r.per_column.get(t.label)
            if col is None:
                self.checks.add(f"cutover {t.label}: every proven reference rewritten", False,
                                f"not processed; {e.proven:,} proven references stay overseas")
                continue
            # A URL cell is one reference; a text or JSON cell may hold two: either count is accepted.
            ok = col["rewritten"] in (e.proven, e.cells_with_proven)
            self.checks.add(f"cutover {t.label}: every proven reference rewritten", ok,
                            f"rewritten {col['rewritten']:,}; proven references {e.proven:,}, cells holding one "
                            f"{e.cells_with_proven:,}")
            gone = col.get("residual_not_in_scope", 0)
            self.checks.add(f"cutover {t.label}: gone/ references left, not_in_scope", gone == e.gone,
                            f"{gone:,} not_in_scope; seeded {e.gone:,}")
        self.sampled = {}
        for t in TABLES:
            e = self.expect[t.name]
            sampled, overseas, missing = sample_after_cutover(self.url["app"], t, e, self.objects)
            self.sampled[t.name] = {"rows": sampled, "overseas_left": overseas, "domestic_missing": missing}
            self.checks.add(f"after cutover, sample of {t.name}: no overseas URL but gone/",
                            overseas == 0 and missing == 0, f"{sampled:,} rows sampled: {overseas:,} still hold an overseas URL, {missing:,} proven "
                            "reference(s) without their domestic URL")

    def check_rerun(self, first: Any, again: Any) -> None:
        self.checks.add("cutover re-run: nothing rewritten", again.rewritten == 0 and again.conflicts == 0,
                        f"rewritten {again.rewritten:,}, conflicts {again.conflicts}")
        self.checks.add("cutover re-run: every rewrite found already done", again.already_rewritten == first.rewritten,
                        f"already rewritten {again.already_rewritten:,}; first run rewrote {first.rewritten:,}")

    def check_residual(self, report: Any) -> None:
        by = report.by_reason
        self.checks.add("residual: every gone/ reference not_in_scope", by.get("not_in_scope", 0) == self.gone_total,
                        f"{by.get('not_in_scope', 0):,} not_in_scope; seeded {self.gone_total:,}")
        self.checks.add("residual: nothing else blocks", report.residual == self.gone_total,
                        f"{report.residual:,} residual {by}; expected {self.gone_total:,}")
        proven_done = sum(self.expect[t.name].proven for t in TABLES)
        self.checks.add("residual: rewritten references are proven domestic copies", report.domestic_ok == proven_done,
                        f"domestic_ok {report.domestic_ok:,}; rewritten references {proven_done:,}")
        self.checks.add("residual: every reference seen", report.references == self.refs_total,
                        f"{report.references:,} references; seeded {self.refs_total:,}")

    def check_rollback(self, first: Any, back: Any) -> None:
        # The journal holds one row per cell: a message with two URLs is restored once.
        cells = sum(self.expect[t.name].cells_with_proven for t in self.processed(first.per_column))
        self.checks.add("rollback: every rewritten cell restored, none skipped",
                        back.restored in (cells, first.rewritten) and back.skipped_changed == 0
                        and back.not_applied == 0,
                        f"restored {back.restored:,} (cutover rewrote {first.rewritten:,} references in {cells:,} "
                        f"cells), skipped {back.skipped_changed}, never applied {back.not_applied}")
        self.digests_back = table_digests(self.dsn["app"])
        for t in TABLES:
            same = self.digests_back[t.name] == self.digests_seed[t.name]
            self.checks.add(f"rollback: {t.name} byte-identical to the seed", same,
                            f"md5 {self.digests_back[t.name]} {'==' if same else '!='} seed "
                            f"{self.digests_seed[t.name]}")

    # -- output
    def figures(self) -> dict[str, Any]:
        return {
            "refs": self.refs_total, "gone_refs": self.gone_total, "objects": self.objects,
            "batch_size": self.args.batch_size,
            "tables": {k: asdict(v) for k, v in self.expect.items()},
            "seed_seconds": {"ledger": self.seed_ledger_seconds, "app": self.seed_app_seconds},
            "phases": {p.name: {
                "seconds": p.seconds, "rows": p.rows, "rows_per_s": p.rows_per_s, "refs": p.refs,
                "refs_per_s": p.refs_per_s, "base_rss_mib": p.base_rss_kib / KiB,
                "phase_peak_rss_mib": None if p.peak_rss_kib is None else p.peak_rss_kib / KiB,
                "sql": p.sql, "outcome": p.outcome,
            } for p in self.phases},
            "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KiB,
            "journal_rows": getattr(self, "journal_rows", None),
            "database_bytes": getattr(self, "db_bytes", None),
            "log_bytes": (self.tmp / "engine.log").stat().st_size if (self.tmp / "engine.log").exists() else 0,
            "sample_after_cutover": getattr(self, "sampled", None),
            "checks": self.checks.items,
            "pg_stat_statements": self.pgss,
            "server": self.settings,
            "analyze_every_seconds": self.args.analyze_every, "analyze_runs": self.autoanalyze.runs,
            "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()[0],
        }


def report(fig: dict[str, Any]) -> None:
    print(f"references {fig['refs']:,} ({fig['gone_refs']:,} to objects not in the ledger) over "
          f"{fig['objects']:,} verified objects; batch size {fig['batch_size']}; "
          + "; ".join(f"{k} {v['rows']:,} rows / {v['refs']:,} refs" for k, v in fig["tables"].items()))
    server = fig["server"]
    print(f"PostgreSQL {server['server_version']}: autovacuum {server['autovacuum']}, shared_buffers "
          f"{server['shared_buffers']}, synchronous_commit {server['synchronous_commit']}; ledger tables ANALYZEd "
          + (f"every {fig['analyze_every_seconds']:g}s ({fig['analyze_runs']} times)" if fig["analyze_every_seconds"]
             else "only after seeding" + (" (autovacuum off: the journal tables never get statistics)"
                                          if server["autovacuum"] != "on" else "")))
    head = ("phase", "seconds", "rows", "rows/s", "refs", "refs/s", "SQL s (app/ledger)", "commits", "peak RSS")
    rows = []
    for name, p in fig["phases"].items():
        by_db = p["sql"]["statement_seconds_by_db"]
        peak = "?" if p["phase_peak_rss_mib"] is None else f"{p['phase_peak_rss_mib']:.0f} MiB"
        rows.append((name, f"{p['seconds']:.1f}", f"{p['rows']:,}", f"{p['rows_per_s']:,.0f}", f"{p['refs']:,}",
                     f"{p['refs_per_s']:,.0f}", f"{by_db.get('app', 0):.1f}/{by_db.get('ledger', 0):.1f}",
                     f"{p['sql']['commits']:,} ({p['sql']['commit_seconds']:.1f}s)",
                     f"{peak} (base {p['base_rss_mib']:.0f})"))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print(f"process peak RSS (ru_maxrss; seeding ran in a child): {fig['process_peak_rss_mib']:.0f} MiB; journal rows "
          f"{fig['journal_rows']:,}; engine log {fig['log_bytes'] / MiB:.1f} MiB; databases "
          + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in (fig["database_bytes"] or {}).items()))
    print("where the time goes (SQL timed in the client, round trip included; top statements by time):")
    for name, p in fig["phases"].items():
        sql = p["sql"]
        other = p["seconds"] - sql["statement_seconds"] - sql["commit_seconds"] - sql["rollback_seconds"]
        print(f"  {name}: {sql['statements']:,} statements {sql['statement_seconds']:.1f}s, commits "
              f"{sql['commit_seconds']:.1f}s, pool rollbacks {sql['rollback_seconds']:.1f}s, Python and the rest "
              f"{other:.1f}s")
        for s in sql["top"]:
            print(f"    {s['seconds']:7.2f}s {s['calls']:>9,}x  {s['db']:<6} {s['sql']}")
        for s in sql.get("pg_stat_statements_top", []):
            print(f"    server {s['seconds']:7.2f}s {s['calls']:>9,}x  {s['db']:<6} {s['sql']}")
    print("checks:")
    for c in fig["checks"]:
        print(f"  {c['status']:<5}  {c['check']}: {c['detail']}")
    print("rows/s: application rows the phase read (cutover: rows of the columns it processes; rollback: journal "
          "rows it handled); refs/s: the phase's own count (CutoverResult.scanned, ResidualReport.references, "
          "RollbackResult.restored). Times are noisy "
          f"({fig['cpus']} CPUs shared with PostgreSQL; load average {fig['load_average_at_end']:.1f}).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=int, default=1_000_000, help="references in the application database")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20,000 references")
    parser.add_argument("--batch-size", type=int, default=500, help="policy references.batch_size")
    parser.add_argument("--log-level", default="INFO", help="engine log level (the log goes to a temporary file)")
    parser.add_argument("--keep", action="store_true", help="leave the scratch databases (names printed)")
    parser.add_argument("--analyze-every", type=float, default=0.0, metavar="S",
                        help="ANALYZE the ledger's tables every S seconds during the phases (emulates autoanalyze "
                             "where the server's autovacuum is off); 0: never")
    args = parser.parse_args()
    if args.quick:
        args.refs = 20_000
    if args.refs < 3:
        parser.error("--refs must be at least 3")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_cutover_") as tmp:
        logging.basicConfig(filename=str(Path(tmp) / "engine.log"), level=getattr(logging, args.log_level.upper()),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        bench = Bench(args, Path(tmp))
        try:
            bench.main()
            fig = bench.figures()
        finally:
            if args.keep:
                say(f"kept databases {', '.join(bench.db.values())}")
            else:
                bench.drop_databases()
    fig["wall_seconds"] = time.perf_counter() - started
    report(fig)
    print(json.dumps(rounded(fig), sort_keys=True))
    return 1 if bench.checks.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
