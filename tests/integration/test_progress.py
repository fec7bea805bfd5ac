"""The managers' read model: live counts, throughput, ETA and timeline from the ledger."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from residency import pipeline, progress
from test_attest import RUN, Estate


def test_status_of_a_finished_run(tmp_path, admin, make_bucket):
    estate = Estate(tmp_path, admin, make_bucket, objects=9)
    assert estate.run()["complete"] is True
    rt = pipeline.Runtime(pipeline.plan_run({"policy_path": str(tmp_path / "policy.yaml")}, RUN, estate.credentials),
                          estate.credentials)
    status = progress.migration_status(rt.ledger, rt.policy.migration_id)
    assert status["run_id"] == RUN["run_id"]
    assert [p["phase"] for p in status["phases"] if p["state"] == "done"] == list(progress.PHASE_ORDER)
    assert next(p for p in status["phases"] if p["phase"] == "copy")["count"] == 3  # three shards of 4
    (bucket,) = status["buckets"]
    assert bucket["uri"] == f"s3://{estate.src}" and bucket["jurisdiction"] == "KR"
    assert bucket["in_scope"]["objects"] == bucket["verified"]["objects"] == 9
    assert bucket["out_of_scope"]["objects"] == 1
    assert status["jurisdictions"]["KR"]["verified"]["objects"] == 9
    assert status["totals"]["remaining"] == {"objects": 0, "bytes": 0} and status["eta_seconds"] == 0.0
    assert status["routes"]["s3->s3"]["verified"]["objects"] == 9
    assert status["timeline"][-1]["verified_objects"] == 9 and status["timeline"][-1]["copied_objects"] == 9
    assert status["throughput"]["verified_objects_per_s"] > 0
    assert status["references"]["rewritten"] == 9 and status["attestation"]["attested"] == 9
    assert status["evidence"]["complete"] is True and status["evidence"]["evidence_html"].endswith("evidence.html")
    assert progress.list_migrations(rt.ledger)[0]["migration_id"] == rt.policy.migration_id


def test_eta_while_copying(tmp_path, admin, make_bucket):
    estate = Estate(tmp_path, admin, make_bucket, objects=9)
    estate.run(stop_before="verify")  # inventoried and copied, nothing verified yet
    rt = pipeline.Runtime(pipeline.plan_run({"policy_path": str(tmp_path / "policy.yaml")}, RUN, estate.credentials),
                          estate.credentials)
    mid = rt.policy.migration_id
    ledger = rt.ledger
    # Two verify events a minute apart: 3 then 3 objects.
    base = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=90)
    with ledger.engine.begin() as conn:
        for offset in (0, 60):
            conn.execute(sa.insert(progress.progress).values(
                migration_id=mid, run_id=RUN["run_id"], at=(base + dt.timedelta(seconds=offset)).isoformat(),
                phase="verify", src_bucket_uri=f"s3://{estate.src}", route="s3->s3", outcome="verified",
                objects=3, bytes=3000))
    for row in list(ledger.iter_objects(mid))[:6]:
        ledger.update_object(mid, row["src_uri"], state="verified")
    status = progress.migration_status(ledger, mid, at=base + dt.timedelta(seconds=90))
    assert status["totals"]["remaining"]["objects"] == 3
    assert status["throughput"]["verified_objects_per_s"] == round(6 / 90, 3)
    assert status["eta_seconds"] == round(3 / (6 / 90), 1)
    assert [p["state"] for p in status["phases"][:3]] == ["done", "done", "done"]
    assert next(p for p in status["phases"] if p["phase"] == "cutover")["state"] == "not yet"
