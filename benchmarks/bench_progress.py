"""How fast the managers' page reads a large ledger: the read model against a naive count.

Fills a PostgreSQL ledger (the machine's server, a scratch database) with N object
rows spread over source buckets, routes and states, and progress events for a day
of copying, then times, in the same run:

- ``progress.migration_status`` (what the dashboard calls: aggregates on the
  composite index, rates from the event table), and
- a naive reading that walks every object row (``Ledger.iter_objects``) and counts
  in Python, as a page without the read model would.

Prints a table, the PostgreSQL plan of the counts query, and a final JSON line.
Usage: ``python benchmarks/bench_progress.py --rows 1000000``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

import psycopg2  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from residency import progress  # noqa: E402
from residency.ledger import Ledger  # noqa: E402

ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
STATES = ("verified", "cut_over", "verified", "cut_over", "copied", "discovered", "failed")
BUCKETS = [f"s3://seoul-bench-{i}" for i in range(6)]


def fill(url: str, rows: int, mid: str) -> None:
    """COPY the rows in (fast, like a real ledger grown by inventory pages)."""
    conn = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql"))
    stamp = "2026-11-22T00:00:00.000+00:00"
    try:
        with conn, conn.cursor() as cur:
            buf = io.StringIO()
            for i in range(rows):
                bucket = BUCKETS[i % len(BUCKETS)]
                state = STATES[(i * 7919) % len(STATES)]
                route = "s3->s3" if i % 3 else "s3->gs"
                buf.write(f"{mid}\t{bucket}/k/{i:09d}.jpg\t{bucket}\ts3://tokyo-bench/k/{i:09d}.jpg\t{route}\t0\t"
                          f"{1000 + i % 5000}\timage/jpeg\timage\t\\N\te\t{{}}\t{state}\t0\t{stamp}\n")
                if buf.tell() > 8_000_000:
                    buf.seek(0)
                    cur.copy_expert(
                        "COPY residency_objects (migration_id, src_uri, src_bucket_uri, dst_uri, route, shard, size, "
                        "content_type, media_type, src_version, src_etag, src_checksums, state, attempts, updated_at) "
                        "FROM STDIN", buf)
                    buf = io.StringIO()
            buf.seek(0)
            cur.copy_expert(
                "COPY residency_objects (migration_id, src_uri, src_bucket_uri, dst_uri, route, shard, size, "
                "content_type, media_type, src_version, src_etag, src_checksums, state, attempts, updated_at) "
                "FROM STDIN", buf)
            events = io.StringIO()
            for minute in range(24 * 60):  # a day of events, one per bucket every minute
                at = f"2026-11-21T{minute // 60:02d}:{minute % 60:02d}:00.000+00:00"
                for bucket in BUCKETS:
                    events.write(f"{mid}\trun-1\t{at}\tverify\t{bucket}\ts3->s3\tverified\t100\t100000\n")
            events.seek(0)
            cur.copy_expert("COPY residency_progress (migration_id, run_id, at, phase, src_bucket_uri, route, outcome, "
                            "objects, bytes) FROM STDIN", events)
            cur.execute("INSERT INTO residency_phases (migration_id, phase, run_id, result, at) VALUES "
                        "(%s, 'inventory', 'run-1', '{}', %s)", (mid, stamp))
    finally:
        conn.close()
    # As autovacuum would soon: the visibility map lets PostgreSQL answer from the index alone.
    vacuum = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql"))
    vacuum.autocommit = True
    with vacuum.cursor() as cur:
        cur.execute("VACUUM ANALYZE residency_objects")
    vacuum.close()


def naive(ledger: Ledger, mid: str) -> Counter:
    counts: Counter = Counter()
    for obj in ledger.iter_objects(mid, batch=10_000):
        counts[(obj["src_bucket_uri"], obj["route"], obj["state"])] += 1
    return counts


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    name = f"residency_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    try:
        ledger = Ledger(url)
        ledger.create_schema()
        mid = "bench"
        t0 = time.perf_counter()
        fill(url, args.rows, mid)
        filled = time.perf_counter() - t0
        status = progress.migration_status(ledger, mid, run_id="run-1")  # warm the cache of the server
        model = timed(lambda: progress.migration_status(ledger, mid, run_id="run-1"), args.repeat)
        rows = timed(lambda: naive(ledger, mid), max(1, args.repeat // 2))
        with ledger.engine.connect() as conn:
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(
                "EXPLAIN SELECT src_bucket_uri, route, state, count(*), coalesce(sum(size), 0) FROM residency_objects "
                f"WHERE migration_id = '{mid}' GROUP BY src_bucket_uri, route, state"))
        ledger.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    total = sum(b["in_scope"]["objects"] + sum(s["objects"] for s in b["states"].values()) for b in status["buckets"])
    result = {
        "rows": args.rows, "fill_seconds": round(filled, 1),
        "read_model_median_s": round(statistics.median(model), 3),
        "naive_median_s": round(statistics.median(rows), 3),
        "ratio_naive_over_read_model": round(statistics.median(rows) / statistics.median(model), 1),
        "index_only_scan": "Index Only Scan using ix_residency_objects_progress" in plan,
    }
    print(f"ledger rows: {args.rows:,} (filled in {filled:.1f}s); objects counted by the read model: {total:,}")
    print(f"{'reader':<34}{'median seconds':>16}")
    print(f"{'progress.migration_status':<34}{result['read_model_median_s']:>16}")
    print(f"{'naive: every row through Python':<34}{result['naive_median_s']:>16}")
    print(f"ratio naive / read model: {result['ratio_naive_over_read_model']}x")
    print("PostgreSQL plan of the counts query:\n" + plan)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
