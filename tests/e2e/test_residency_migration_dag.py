"""End to end: real `airflow dags test` runs of residency_migration on the seeded estate.

Each run is a child process with its own Airflow home (SQLite metadata DB), the
connections as AIRFLOW_CONN_* variables, and moto server with IAM enforcement.
These are the runs that never reach a human-in-the-loop approval (a bad policy,
a preflight refusal, a dry run); runs that need approvals answered are in
tests/deployment/, on a real deployment whose API server answers them.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from residency.localcloud.dagrun import run_dag_test
from residency.localcloud.estate import seed_estate
from residency.localcloud.servers import FakeGcsServer, MotoServer
from residency.stores.s3 import S3Store

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), str(ROOT / "dags")]),
    }
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        env={**os.environ, **env}, check=True, capture_output=True,
    )
    return env


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    """The small estate on S3 and GCS: all four routes (s3->s3, s3->gs, gs->gs, gs->s3)."""
    work = tmp_path_factory.mktemp("estate")
    with MotoServer(log_path=work / "moto.log") as server, FakeGcsServer(log_path=work / "gcs.log") as gcs:
        admin = server.enforce_auth()
        est = seed_estate(server, admin, work, gcs=gcs, scale="small")
        assert set(est.routes) == {"s3->s3", "s3->gs", "gs->gs", "gs->s3"}
        yield est, admin


def run(estate, airflow_env, out: Path, **conf):
    est, _ = estate
    conf = {"policy_path": str(est.policy_path), "evidence_dir": str(out), "dry_run": False, **conf}
    return run_dag_test("residency_migration", conf, env={**airflow_env, **est.connection_env()},
                        log_path=out / "dag-run.log", timeout=900)


def app_urls(est) -> list[str]:
    db = sqlite3.connect(est.app_db_url.removeprefix("sqlite:///"))
    try:
        rows = db.execute(
            "SELECT avatar_url FROM users UNION ALL SELECT url FROM photos UNION ALL "
            "SELECT thumbnail_url FROM photos UNION ALL SELECT attachment_url FROM messages UNION ALL "
            "SELECT gcs_url FROM videos UNION ALL SELECT poster_url FROM videos"
        ).fetchall()
    finally:
        db.close()
    return [r[0] for r in rows if r[0]]


def test_bad_policy_fails_first_task_and_changes_nothing(estate, airflow_env, tmp_path):
    est, admin = estate
    bad = tmp_path / "bad-policy.yaml"
    bad.write_text(est.policy_path.read_text().replace("home_jurisdiction: JP", "home_jurisdiction: Japan"))
    before = app_urls(est)
    outcome = run(estate, airflow_env, tmp_path / "out", policy_path=str(bad))
    assert not outcome.succeeded
    assert "plan" in outcome.failed_tasks
    log = outcome.log_path.read_text()
    assert "home_jurisdiction" in log and "'Japan'" in log
    assert "BEGIN copy" not in log
    dst = S3Store(admin.s3_client_factory())
    assert [r.key for r in dst.list_objects(est.destination_bucket)] == ["ops/README.txt"]
    assert app_urls(est) == before


def test_dry_run_reports_and_changes_nothing(estate, airflow_env, tmp_path):
    est, admin = estate
    before = app_urls(est)
    outcome = run(estate, airflow_env, tmp_path / "out", dry_run=True)
    assert outcome.succeeded, f"a dry run is green: {outcome.state}, failed {outcome.failed_tasks}"
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["kind"] == "plan" and "complete" not in plan and plan["run"]["dry_run"] is True
    assert plan["objects_to_copy"] == est.media_objects
    assert set(plan["routes"]) == {"s3->s3", "s3->gs", "gs->gs", "gs->s3"}
    assert plan["references"]["would_rewrite"] == est.media_references
    assert [k["access_key_id"] for k in plan["revocations"]] == [est.affiliate.access_key_id]
    assert not (tmp_path / "out" / "evidence.json").exists()
    log = outcome.log_path.read_text()
    assert "would copy" in log and "asks no approval" in log
    assert [r.key for r in S3Store(admin.s3_client_factory()).list_objects(est.destination_bucket)] == ["ops/README.txt"]
    assert app_urls(est) == before
    probe = est.affiliate.client("s3", "ap-northeast-2")
    assert probe.list_objects_v2(Bucket=est.source_buckets[0], MaxKeys=1)["KeyCount"] == 1  # key still works


def test_preflight_refusal_fails_at_once_without_retries(estate, airflow_env, tmp_path):
    """An error no retry can fix (a key the policy names does not exist) fails the task on its first try."""
    est, _ = estate
    bad = tmp_path / "policy.yaml"
    text = re.sub(r"access_keys: \[\w+\]", "access_keys: [AKIA0000000000000000]", est.policy_path.read_text())
    bad.write_text(text.replace("sqlite:///app.db", est.app_db_url))
    outcome = run(estate, airflow_env, tmp_path / "out", policy_path=str(bad))
    assert not outcome.succeeded and "preflight" in outcome.failed_tasks
    log = outcome.log_path.read_text()
    assert "revoke[0].access_keys" in log and "AKIA0000000000000000" in log
    assert "up_for_retry" not in log.lower()
    assert "BEGIN inventory" not in log
