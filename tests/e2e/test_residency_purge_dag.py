"""End to end: real `airflow dags test` runs of residency_purge, the approval answered.

The estate and the Airflow home are the migration's e2e fixtures (one instance for
this module). The migration is run once, in this process, by the engine's own
phases up to the cutover (as the rollback's e2e does), and the cutover's record in
the ledger is then dated two days back, so the soak (``purge.soak_hours``, 24 h by
default) has elapsed. ``test_residency_rollback_dag.Approver`` answers ``approve_purge`` from outside,
through the REST API's own handler.
The rejection runs first: it must leave every version of every source in place for
the approval that follows.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from test_residency_migration_dag import airflow_env, estate  # noqa: F401 - the migration's fixtures
from test_residency_rollback_dag import APPROVER, cut_over_by_phases, notes, step_run  # noqa: F401

from residency import pipeline
from residency.evidence.chain import ChainHead, verify_audit_log

pytestmark = pytest.mark.e2e
DAG_ID = "residency_purge"


def source_versions(est: Any, admin: Any) -> list[tuple]:
    """Every version and delete marker of every S3 source bucket, and every GCS source object."""
    s3 = admin.client("s3", "ap-northeast-2")
    out: list[tuple] = []
    for bucket in est.source_buckets:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            out += [(bucket, v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
            out += [(bucket, d["Key"], d["VersionId"], "marker") for d in page.get("DeleteMarkers", [])]
    return sorted(out)


@pytest.fixture(scope="module")
def cut_over(estate):  # noqa: F811 - the imported fixture
    est, _ = estate
    rt = cut_over_by_phases(est, "manual__cutover_before_purge")
    pipeline.cutover(rt)
    ledger_db = Path(rt.policy.ledger_url.removeprefix("sqlite:///"))
    rt.ledger.dispose()
    two_days_ago = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=48)).isoformat(timespec="milliseconds")
    with closing(sqlite3.connect(ledger_db)) as db, db:
        db.execute("UPDATE residency_phases SET at = ? WHERE migration_id = ? AND phase = 'cutover'",
                   (two_days_ago, rt.policy.migration_id))
    return rt.policy.migration_id


def purge_run(estate, airflow_env, notes, out: Path, approve: str):  # noqa: F811
    return step_run(DAG_ID, estate, airflow_env, notes, out, approve=approve, timeout=600)


def test_rejected_purge_deletes_nothing(estate, airflow_env, cut_over, notes, tmp_path):  # noqa: F811
    est, admin = estate
    before = source_versions(est, admin)
    out = tmp_path / "out"
    outcome, asked = purge_run(estate, airflow_env, notes, out, "Reject")
    assert asked["subject"] == f"Approve the purge of migration {cut_over}"
    assert "deletes for good" in asked["body"]
    assert not outcome.succeeded and outcome.failed_tasks == ("check_complete",)
    assert source_versions(est, admin) == before
    ev = json.loads((out / "purge-evidence.json").read_text())
    assert ev["verdict"] == "NOT_PURGED" and ev["buckets"] == {}
    assert (ev["approval"]["decision"], ev["approval"]["who"]) == ("rejected", APPROVER)
    assert notes.note.startswith(f"NOT_PURGED: The purge was rejected by {APPROVER} at ")


def test_approved_purge_deletes_every_version_of_the_migrated_objects(estate, airflow_env, cut_over, notes,  # noqa: F811
                                                                       tmp_path):
    est, admin = estate
    before = source_versions(est, admin)
    out = tmp_path / "out"
    outcome, asked = purge_run(estate, airflow_env, notes, out, "Approve")
    assert outcome.succeeded, f"{outcome.state}, failed {outcome.failed_tasks}: see {outcome.log_path}"
    ev = json.loads((out / "purge-evidence.json").read_text())
    assert ev["verdict"] == "PURGED" and ev["problems"] == []
    purged = sum(b["purged_objects"] for b in ev["buckets"].values())
    assert purged == est.media_objects
    assert all(a["in_scope_found"] == 0 for a in ev["after"].values())
    assert (ev["approval"]["decision"], ev["approval"]["who"]) == ("approved", APPROVER)
    # What is left in the S3 sources: only out-of-scope keys, each listed under remaining abroad.
    after = source_versions(est, admin)
    assert len(after) < len(before)
    left = sum(r["versions"] + r["delete_markers"] for r in ev["remaining_abroad"] if r["source"].startswith("s3://"))
    assert left == len(after)
    audit = out / ev["audit_log"]["file"]
    verify_audit_log(audit, expect=ChainHead(ev["audit_log"]["records"], ev["audit_log"]["head"]))
    events = {json.loads(line)["event"] for line in audit.read_text().splitlines()}
    assert {"approval.purge", "purge.started", "purge.bucket", "purge_run.done"} <= events
    assert notes.note.startswith(f"PURGED: {purged:,} object(s)")
