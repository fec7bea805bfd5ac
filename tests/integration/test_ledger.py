"""The ledger on SQLite and PostgreSQL: resumable state and an audit chain that never forks."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from residency.ledger import GENESIS, INVENTORY_REFUSAL, VERIFIED, Ledger, record_hash

@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sub' / 'ledger.db'}"  # the folder is created
    else:
        url = request.getfixturevalue("pg_url")
    led = Ledger(url)
    led.create_schema()
    yield led
    led.dispose()


def row(uri: str, etag: str = "e1", version: str | None = None) -> dict:
    return {"src_uri": uri, "src_bucket_uri": "s3://seoul", "dst_uri": uri.replace("seoul", "tokyo"),
            "route": "s3->s3", "shard": 0, "size": 10, "src_etag": etag, "src_version": version,
            "src_checksums": {"md5": "00"}}


def test_progress_survives_reinventory_unless_the_source_changed(ledger):
    mid = f"t-{uuid.uuid4().hex[:10]}"
    assert ledger.upsert_discovered(mid, [row("s3://seoul/a"), row("s3://seoul/b")]) == {"new": 2, "unchanged": 0, "requeued": 0, "failed": 0}
    ledger.update_object(mid, "s3://seoul/a", state=VERIFIED, verify_algorithm="md5", dst_checksums={"md5": "00"})
    ledger.update_object(mid, "s3://seoul/b", state=VERIFIED, verify_algorithm="md5")
    counts = ledger.upsert_discovered(mid, [row("s3://seoul/a"), row("s3://seoul/b", etag="e2")])
    assert counts == {"new": 0, "unchanged": 1, "requeued": 1, "failed": 0}
    assert ledger.get_object(mid, "s3://seoul/a")["state"] == VERIFIED
    b = ledger.get_object(mid, "s3://seoul/b")
    assert b["state"] == "discovered" and b["verify_algorithm"] is None and "source changed" in b["reason"]
    assert [r["src_uri"] for r in ledger.iter_objects(mid, batch=1)] == ["s3://seoul/a", "s3://seoul/b"]


def test_concurrent_audit_appends_form_one_unbroken_chain(ledger):
    mid = f"t-{uuid.uuid4().hex[:10]}"
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: ledger.audit(mid, "copy.object", {"i": i}), range(60)))
    records = list(ledger.audit_records(mid))
    assert [r["seq"] for r in records] == list(range(1, 61))
    prev = GENESIS
    for record in records:
        assert record["prev_hash"] == prev
        assert record["hash"] == record_hash(record)
        prev = record["hash"]
    assert sorted(int(r["data"].split(":")[1].strip(" }")) for r in records) == list(range(60))


def test_destination_plan_change_requeues_and_forgets_the_verdict(ledger):
    """State 1: a verification belongs to one (source version, destination URI) pair."""
    mid = f"t-{uuid.uuid4().hex[:10]}"
    ledger.upsert_discovered(mid, [row("s3://seoul/a")])
    ledger.update_object(mid, "s3://seoul/a", state=VERIFIED, verify_algorithm="md5", dst_etag='"x"',
                         attested_at="2025-01-01T00:00:00Z", proof="md5 equal")
    moved = dict(row("s3://seoul/a"), dst_uri="s3://tokyo/v2/a")
    assert ledger.upsert_discovered(mid, [moved])["requeued"] == 1
    a = ledger.get_object(mid, "s3://seoul/a")
    assert (a["state"], a["dst_uri"]) == ("discovered", "s3://tokyo/v2/a")
    assert a["verify_algorithm"] is a["dst_etag"] is a["attested_at"] is a["proof"] is None
    assert a["reason"].startswith("destination plan changed (was s3://tokyo/a)")


def test_a_row_refused_at_inventory_is_failed_and_gets_another_chance_later(ledger):
    mid = f"t-{uuid.uuid4().hex[:10]}"
    refused = dict(row("s3://seoul/long"), state="failed", reason=INVENTORY_REFUSAL + "destination key too long")
    assert ledger.upsert_discovered(mid, [refused])["failed"] == 1
    assert ledger.get_object(mid, "s3://seoul/long")["state"] == "failed"
    assert ledger.upsert_discovered(mid, [row("s3://seoul/long")])["unchanged"] == 1  # the template was fixed
    again = ledger.get_object(mid, "s3://seoul/long")
    assert again["state"] == "discovered" and again["reason"] is None


def test_an_older_ledger_gains_the_new_columns_in_place(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the objects table as the previous release created it
        conn.exec_driver_sql(
            "CREATE TABLE residency_objects (migration_id VARCHAR(128) NOT NULL, src_uri VARCHAR(2048) NOT NULL, "
            "src_bucket_uri VARCHAR(300) NOT NULL, dst_uri VARCHAR(2048) NOT NULL, route VARCHAR(16) NOT NULL, "
            "shard INTEGER NOT NULL, size BIGINT NOT NULL, content_type VARCHAR(255), media_type VARCHAR(16), "
            "src_version VARCHAR(255), src_etag VARCHAR(255), src_checksums TEXT NOT NULL, state VARCHAR(16) NOT NULL, "
            "copy_action VARCHAR(32), copy_method VARCHAR(32), verify_algorithm VARCHAR(16), verify_method VARCHAR(32), "
            "dst_checksums TEXT, reason TEXT, attempts INTEGER NOT NULL, updated_at VARCHAR(40) NOT NULL, "
            "PRIMARY KEY (migration_id, src_uri))"
        )
        conn.exec_driver_sql(
            "INSERT INTO residency_objects VALUES ('m', 's3://seoul/a', 's3://seoul', 's3://tokyo/a', 's3->s3', 0, 1, "
            "NULL, 'image', NULL, 'e', '{}', 'verified', 'copied', 'server_side', 'md5', 'server_reported', '{}', "
            "NULL, 1, 'then')"
        )
    engine.dispose()
    led = Ledger(url)
    led.create_schema()
    obj = led.get_object("m", "s3://seoul/a")
    assert obj["state"] == "verified" and obj["attested_at"] is None and obj["dst_etag"] is None
    assert "ix_residency_objects_dst" in {i["name"] for i in sa.inspect(led.engine).get_indexes("residency_objects")}
    led.dispose()


def test_updates_and_inventory_pages_are_one_transaction_each_in_bulk(ledger):
    """Batched writes: a page of objects is one transaction of executemany statements, never one per object."""
    mid = f"m-{uuid.uuid4().hex[:8]}"
    rows = [dict(row(f"s3://seoul/p/{i:04d}.jpg"), manifest="20261122T000000Z", shard=i // 500) for i in range(1200)]
    begins: list[int] = []
    statements: list[str] = []
    sa.event.listen(ledger.engine, "begin", lambda conn: begins.append(1))
    sa.event.listen(ledger.engine, "before_cursor_execute",
                    lambda conn, cursor, stmt, params, context, many: statements.append(stmt.split()[0]))
    assert ledger.upsert_discovered(mid, rows)["new"] == 1200
    assert len(begins) == 1 and statements.count("INSERT") <= 2
    begins.clear()
    statements.clear()
    updates = [(r["src_uri"], {"state": VERIFIED, "proof": f"p{i}"} if i % 2 else {"state": "failed", "reason": "x"})
               for i, r in enumerate(rows)]
    assert ledger.update_objects(mid, updates) == 1200
    assert len(begins) == 1 and statements.count("UPDATE") <= 4  # one executemany per set of columns
    shard1 = list(ledger.iter_shard(mid, "20261122T000000Z", 1, batch=120))
    assert [r["src_uri"] for r in shard1] == [f"s3://seoul/p/{i:04d}.jpg" for i in range(500, 1000)]
    assert {r["state"] for r in shard1} == {VERIFIED, "failed"}
    assert len(list(ledger.iter_shard(mid, "20261122T000000Z", 0, 2))) == 1200
    assert list(ledger.iter_shard(mid, "another-inventory", 0, 2)) == []
