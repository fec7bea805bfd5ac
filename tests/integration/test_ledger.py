"""The ledger on SQLite and PostgreSQL: resumable state and an audit chain that never forks."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from residency.ledger import GENESIS, VERIFIED, Ledger, record_hash

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def _pg_available() -> bool:
    try:
        with sa.create_engine(PG_URL).connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sub' / 'ledger.db'}"  # the folder is created
    else:
        if not _pg_available():
            pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
        url = PG_URL
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
    assert ledger.upsert_discovered(mid, [row("s3://seoul/a"), row("s3://seoul/b")]) == {"new": 2, "unchanged": 0, "requeued": 0}
    ledger.update_object(mid, "s3://seoul/a", state=VERIFIED, verify_algorithm="md5", dst_checksums={"md5": "00"})
    ledger.update_object(mid, "s3://seoul/b", state=VERIFIED, verify_algorithm="md5")
    counts = ledger.upsert_discovered(mid, [row("s3://seoul/a"), row("s3://seoul/b", etag="e2")])
    assert counts == {"new": 0, "unchanged": 1, "requeued": 1}
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
