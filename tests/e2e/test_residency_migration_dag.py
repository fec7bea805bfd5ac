"""End to end: real `airflow dags test` runs of residency_migration on the seeded estate.

Each run is a child process with its own Airflow home (SQLite metadata DB), the
connections as AIRFLOW_CONN_* variables, and moto server with IAM enforcement.
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
from botocore.exceptions import ClientError

from residency.clients import AwsCredentials
from residency.evidence import verify_audit_log
from residency.localcloud.dagrun import run_dag_test
from residency.localcloud.estate import seed_estate
from residency.localcloud.servers import FakeGcsServer, MotoServer
from residency.stores.gcs import GcsStore
from residency.stores.s3 import S3Store
from residency.uris import parse_url

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
    evidence = json.loads((tmp_path / "out" / "evidence.json").read_text())
    assert evidence["run"]["dry_run"] is True and evidence["complete"] is False
    assert "would copy" in outcome.log_path.read_text()
    assert [r.key for r in S3Store(admin.s3_client_factory()).list_objects(est.destination_bucket)] == ["ops/README.txt"]
    assert app_urls(est) == before
    probe = est.affiliate.client("s3", "ap-northeast-2")
    assert probe.list_objects_v2(Bucket=est.source_buckets[0], MaxKeys=1)["KeyCount"] == 1  # key still works


def test_full_migration_then_safe_rerun(estate, airflow_env, tmp_path):
    est, admin = estate
    outcome = run(estate, airflow_env, tmp_path / "first")
    assert outcome.succeeded, f"DAG run {outcome.state}; failed tasks {outcome.failed_tasks}; log {outcome.log_path}"

    # Destinations: every in-scope object of its route, byte for byte.
    s3 = S3Store(admin.s3_client_factory())
    gcs = GcsStore(FakeGcsServer(port=int(est.gcs_endpoint.rsplit(":", 1)[1])).credentials("check").client())
    dst_stores = {est.destination_bucket: s3, est.gcs_destination_bucket: gcs}
    to_s3 = est.routes["s3->s3"]["objects"] + est.routes["gs->s3"]["objects"]
    to_gcs = est.routes["s3->gs"]["objects"] + est.routes["gs->gs"]["objects"]
    assert len(list(s3.list_objects(est.destination_bucket))) == to_s3 + 1  # plus the object already there
    assert len(list(gcs.list_objects(est.gcs_destination_bucket))) == to_gcs + 1

    # References: every reference to a media object now points at Tokyo, in the same URL style.
    sources = set(est.source_buckets) | set(est.gcs_source_buckets)
    urls = app_urls(est)
    overseas = [u for u in urls if (p := parse_url(u)) and p.ref.bucket in sources]
    assert len(overseas) == est.references - est.media_references  # only non-media and dangling ones remain
    tokyo = [p for u in urls if (p := parse_url(u)) and p.ref.bucket in dst_stores]
    assert len(tokyo) == est.media_references
    assert {p.ref.provider for p in tokyo} == {"s3", "gs"}
    for parsed in tokyo:
        dst_stores[parsed.ref.bucket].stat(parsed.ref)  # every rewritten URL names an object that exists
        if parsed.region:
            assert parsed.region == "ap-northeast-1"

    # Revocation: the affiliate's old key is refused by the server.
    with pytest.raises(ClientError) as denied:
        est.affiliate.client("s3", "ap-northeast-2").list_objects_v2(Bucket=est.source_buckets[0], MaxKeys=1)
    assert denied.value.response["Error"]["Code"] == "InvalidAccessKeyId"

    # Evidence: reconciles, complete, audit chain intact.
    evidence = json.loads((tmp_path / "first" / "evidence.json").read_text())
    rec = evidence["reconciliation"]
    assert evidence["complete"] is True, evidence["problems"]
    assert rec["in_scope"]["objects"] == est.media_objects == rec["verified"]["objects"]
    assert rec["in_scope"]["bytes"] == est.media_bytes
    assert rec["copied"]["objects"] + rec["already_present"]["objects"] == rec["verified"]["objects"]
    assert evidence["revocations"]["all_denied"] is True and evidence["revocations"]["all_proven"] is True
    assert evidence["references"]["cutover"]["rewritten"] == est.media_references
    assert all(rule["holds"] for rule in evidence["complete_rules"])
    # Re-proven just before the report, and the references scanned for it.
    assert evidence["attestation"]["attested"] == est.media_objects == rec["attested"]["objects"]
    scan = evidence["references"]["residual_scan"]
    assert scan["residual"] == 0 and scan["accepted"] == est.references - est.media_references
    assert all(rule["reason"] for rule in scan["accepted_by_rule"])
    routes = {r["route"]: r for r in evidence["routes"]}
    for name, seeded in est.routes.items():
        assert routes[name]["counts"]["verified"] == seeded, name
        assert routes[name]["algorithms"], name
    declared = {src["uri"]: src["placement_source"] for src in evidence["sources"]}
    assert declared["gs://seoul-line-gcs-photos"] == "declared" and declared["s3://seoul-line-photos"] == "discovered"
    head = verify_audit_log(tmp_path / "first" / "audit.jsonl")
    assert head.head == evidence["audit_log"]["head"]
    log = outcome.log_path.read_text()
    assert "BEGIN inventory: migration line-media-jp policy sha256:" in log
    assert est.migrator.secret_access_key not in log and est.affiliate.secret_access_key not in log

    # A re-run resumes: nothing copied twice, nothing rewritten twice, key still denied.
    again = run(estate, airflow_env, tmp_path / "second")
    assert again.succeeded, f"re-run {again.state}; failed tasks {again.failed_tasks}"
    second = json.loads((tmp_path / "second" / "evidence.json").read_text())
    assert second["complete"] is True
    log2 = again.log_path.read_text()
    summaries = re.findall(r"copy shard \d+ summary: (\d+) objects, (\d+) copied", log2)
    assert summaries and all(copied == "0" for _, copied in summaries)
    assert sum(int(n) for n, _ in summaries) == est.media_objects
    assert second["references"]["cutover"]["rewritten"] == 0
    assert second["references"]["cutover"]["already_rewritten"] == est.media_references


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


def test_nothing_in_scope_still_revokes_and_reports(estate, airflow_env, tmp_path):
    """State 8: a typo in every prefix selects nothing; the mapped shards are skipped, but recheck,
    cutover, revocation, attestation and the evidence still run, and the run fails saying why."""
    est, admin = estate
    iam = admin.client("iam", "us-east-1")
    key = iam.create_access_key(UserName=est.affiliate_user)["AccessKey"]  # a second key of the affiliate
    policy = tmp_path / "policy.yaml"
    text = est.policy_path.read_text().replace("control_dir: control", f"control_dir: {tmp_path / 'control'}")
    text = re.sub(r"uri: (s3|gs)://(seoul-[a-z-]+)([,}])", r"uri: \1://\2/fotos/\3", text)
    text = re.sub(r"access_keys: \[\w+\], probe_conn_id: affiliate_probe",
                  f"access_keys: [{key['AccessKeyId']}], probe_conn_id: affiliate_probe2", text)
    text = text.replace("sqlite:///app.db", est.app_db_url)
    policy.write_text(text)
    probe = {"conn_type": "aws", "login": key["AccessKeyId"], "password": key["SecretAccessKey"],
             "extra": {"region_name": "ap-northeast-2", "endpoint_url": est.endpoint_url,
                       "validates_upload_checksums": False}}
    out = tmp_path / "out"
    conf = {"policy_path": str(policy), "evidence_dir": str(out), "dry_run": False}
    outcome = run_dag_test("residency_migration", conf,
                           env={**airflow_env, **est.connection_env(), "AIRFLOW_CONN_AFFILIATE_PROBE2": json.dumps(probe)},
                           log_path=out / "dag-run.log", timeout=900)
    assert not outcome.succeeded and outcome.failed_tasks == ("check_complete",), outcome.failed_tasks
    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["complete"] is False
    assert {r["id"] for r in evidence["complete_rules"] if not r["holds"]} >= {"scope"}
    assert "nothing is in scope" in " ".join(evidence["problems"])
    assert evidence["attestation"] is not None
    (record,) = [r for r in evidence["revocations"]["records"] if r["credential_id"] == key["AccessKeyId"]]
    assert record["proof"]["status"] == "proven"
    revoked = AwsCredentials("probe2", access_key_id=key["AccessKeyId"], secret_access_key=key["SecretAccessKey"],
                             region_name="ap-northeast-2", endpoint_url=est.endpoint_url)
    with pytest.raises(ClientError) as denied:
        revoked.client("s3").list_objects_v2(Bucket=est.source_buckets[0], MaxKeys=1)
    assert denied.value.response["Error"]["Code"] == "InvalidAccessKeyId"
