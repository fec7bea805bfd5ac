"""The `residency_migration` DAG on a real local Airflow deployment, driven through the REST API.

One deployment for the module (API server, scheduler with LocalExecutor, DAG
processor, triggerer; PostgreSQL metadata database when the machine's server
answers), the small estate on moto server (IAM enforced) and fake-gcs-server.
Human-in-the-loop approvals before the cutover and the revocation are answered
through the REST API as `demo-approver`, as a manager would in the UI; the test
holds whether or not the DAG has them yet.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from pathlib import Path

import psutil
import pytest
import requests
from botocore.exceptions import ClientError

from residency.localcloud.deployment import (
    AirflowApi,
    AirflowApiError,
    AirflowDeployment,
    DeploymentError,
    database_exists,
    postgres_available,
)
from conftest import APPROVAL_TASKS, DAG_ID, ROOT, drive_run, failure_report  # noqa: F401

pytestmark = pytest.mark.e2e


def holding_files_under(folder: Path) -> list[psutil.Process]:
    """Processes with a file open under ``folder`` (every component writes its output there)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if any(Path(f.path).is_relative_to(folder) for f in proc.open_files()):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def test_anonymous_is_refused_and_viewer_may_read_but_not_trigger(deployment):
    with pytest.raises(AirflowApiError) as anonymous:
        AirflowApi(deployment.base_url).get("/dags")
    assert anonymous.value.status == 401

    with pytest.raises(AirflowApiError) as bad_password:
        AirflowApi(deployment.base_url, "manager", "not-the-password").get("/dags")
    assert bad_password.value.status == 401

    viewer = deployment.api("viewer")
    assert DAG_ID in {d["dag_id"] for d in viewer.get("/dags")["dags"]}
    with pytest.raises(AirflowApiError) as refused:
        viewer.trigger(DAG_ID, {"policy_path": "/nonexistent.yaml", "dry_run": True})
    assert refused.value.status == 403
    assert viewer.get(f"/dags/{DAG_ID}/dagRuns")["total_entries"] == 0  # nothing was started


def app_urls(estate) -> list[str]:
    db = sqlite3.connect(estate.app_db_url.removeprefix("sqlite:///"))
    try:
        rows = db.execute(
            "SELECT avatar_url FROM users UNION ALL SELECT url FROM photos UNION ALL SELECT thumbnail_url FROM photos "
            "UNION ALL SELECT attachment_url FROM messages UNION ALL SELECT gcs_url FROM videos "
            "UNION ALL SELECT poster_url FROM videos"
        ).fetchall()
    finally:
        db.close()
    return [r[0] for r in rows if r[0]]


def conf(estate, out: Path, **extra) -> dict:
    return {"policy_path": str(estate.policy_path), "evidence_dir": str(out), "dry_run": False, **extra}


def test_rejecting_the_cutover_stops_the_run_with_nothing_repointed_or_revoked(deployment, estate, tmp_path):
    """Runs first, on the fresh estate: a rejection changes neither the application nor any credential."""
    before = app_urls(estate)
    outcome = drive_run(deployment, conf(estate, tmp_path), decisions={"approve_cutover": "Reject"})
    assert outcome.state == "failed", failure_report(deployment, outcome)
    states = outcome.states()
    assert outcome.answered == {"approve_cutover": "Reject"}
    assert {states[t] for t in ("cutover", "propose_revoke", "approve_revoke", "revoke")} == {"skipped"}
    assert states["evidence"] == "success" and states["check_complete"] == "failed"
    assert app_urls(estate) == before
    probe = estate.affiliate.client("s3", "ap-northeast-2")
    assert probe.list_objects_v2(Bucket=estate.source_buckets[0], MaxKeys=1)["KeyCount"] == 1  # key still works

    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["complete"] is False
    assert evidence["approvals"] == [{"step": "cutover", "decision": "rejected", "who": "demo-approver",
                                      "when": evidence["approvals"][0]["when"], "comment": "Reject by the deployment test"}]
    assert any("The cutover was rejected by demo-approver" in p for p in evidence["problems"])
    note = deployment.api("manager").run_note(DAG_ID, outcome.run_id)
    assert note.startswith("INCOMPLETE: ") and "rejected by demo-approver" in note


def test_approved_migration_is_complete_and_visible_to_managers(deployment, estate, tmp_path):
    seen: dict[str, str] = {}

    def look(api: AirflowApi, run_id: str, request: dict) -> None:
        seen[request["task_instance"]["task_id"]] = request["body"] or ""

    outcome = drive_run(deployment, conf(estate, tmp_path), while_waiting=look)
    assert outcome.state == "success", failure_report(deployment, outcome)
    assert outcome.answered == {"approve_cutover": "Approve", "approve_revoke": "Approve"}
    # The approver read what approving would do.
    assert f"{estate.media_references:,} would be rewritten" in seen["approve_cutover"]
    assert estate.affiliate.access_key_id in seen["approve_revoke"]

    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["complete"] is True, evidence["problems"]
    assert evidence["reconciliation"]["verified"]["objects"] == estate.media_objects
    assert [(a["step"], a["decision"], a["who"]) for a in evidence["approvals"]] == [
        ("cutover", "approved", "demo-approver"), ("revoke", "approved", "demo-approver")]
    manager = deployment.api("manager")
    assert manager.run_note(DAG_ID, outcome.run_id).startswith("COMPLETE")
    with pytest.raises(ClientError) as denied:
        estate.affiliate.client("s3", "ap-northeast-2").list_objects_v2(Bucket=estate.source_buckets[0], MaxKeys=1)
    assert denied.value.response["Error"]["Code"] == "InvalidAccessKeyId"

    # Mapped shards are named by bucket and number; engine log lines carry the run's identifiers.
    shards = [t for t in outcome.tasks if t["task_id"] in ("copy_to_s3", "copy_to_gs")]
    assert shards and all(re.match(r"shard \d{5} (s3|gs)://seoul-", t["rendered_map_index"] or "") for t in shards)
    inventory = outcome.task("inventory")
    log = manager.task_log(DAG_ID, outcome.run_id, "inventory", try_number=inventory["try_number"])
    assert "BEGIN inventory" in log and f"run={outcome.run_id}]" in log
    assert estate.migrator.secret_access_key not in log

    # The dashboard, served by the real API server: anonymous is refused, a manager sees the numbers.
    anonymous = requests.get(f"{deployment.base_url}/residency/api/migrations", timeout=10)
    assert anonymous.status_code == 401
    bearer = {"Authorization": f"Bearer {manager.token()}"}
    status = requests.get(f"{deployment.base_url}/residency/api/migrations/{evidence['migration_id']}",
                          params={"run_id": outcome.run_id}, headers=bearer, timeout=10).json()["status"]
    assert status["totals"]["verified"]["objects"] == estate.media_objects
    assert status["totals"]["remaining"]["objects"] == 0
    page = requests.get(f"{deployment.base_url}/residency/migrations/{evidence['migration_id']}", timeout=10,
                        headers=bearer)
    assert page.status_code == 200 and f"{estate.media_objects:,}" in page.text


def test_a_rerun_copies_nothing_twice_and_stays_complete(deployment, estate, tmp_path):
    outcome = drive_run(deployment, conf(estate, tmp_path))
    assert outcome.state == "success", failure_report(deployment, outcome)
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["complete"] is True
    assert evidence["references"]["cutover"]["rewritten"] == 0
    assert evidence["references"]["cutover"]["already_rewritten"] == estate.media_references
    assert evidence["revocations"]["all_proven"] is True  # re-probed: allowed before (recorded), denied now
    manager = deployment.api("manager")
    copied = 0
    for t in outcome.tasks:
        if t["task_id"] in ("copy_to_s3", "copy_to_gs"):
            log = manager.task_log(DAG_ID, outcome.run_id, t["task_id"], t["try_number"], t["map_index"])
            copied += sum(int(n) for n in re.findall(r"copy shard \d+ summary: \d+ objects, (\d+) copied", log))
    assert copied == 0


def test_nothing_in_scope_still_revokes_and_reports(deployment, cloud, tmp_path):
    """State 8 on a real deployment: a typo in every prefix selects nothing; the mapped shards are
    skipped, but recheck, cutover, revocation, attestation and the evidence still run."""
    estate, admin = cloud.estate, cloud.admin
    iam = admin.client("iam", "us-east-1")
    # An earlier test revoked this user: its inline deny refuses sessions issued before that revocation.
    # moto evaluates no DateLessThan condition and so refuses the user's new long-term key too (AWS would
    # not: such a key carries no aws:TokenIssueTime); remove it, as AWS would read it, for the new key.
    with contextlib.suppress(iam.exceptions.NoSuchEntityException):
        iam.delete_user_policy(UserName=estate.affiliate_user, PolicyName="ResidencyRevokeOlderSessions")
    key = iam.create_access_key(UserName=estate.affiliate_user)["AccessKey"]
    text = estate.policy_path.read_text().replace("control_dir: control", f"control_dir: {tmp_path / 'control'}")
    text = re.sub(r"uri: (s3|gs)://(seoul-[a-z-]+)([,}])", r"uri: \1://\2/fotos/\3", text)
    text = re.sub(r"access_keys: \[\w+\]", f"access_keys: [{key['AccessKeyId']}]", text)
    text = text.replace("probe_conn_id: affiliate_probe,", "probe_conn_id: affiliate_probe2,")
    assert key["AccessKeyId"] in text and "affiliate_probe2" in text
    # The GCS principal was revoked by an earlier test into another ledger: with this new ledger the
    # preflight would rightly refuse (its probes are refused before, so nothing could be proven).
    text = "\n".join(line for line in text.splitlines()
                      if "provider: gcs" not in line and "affiliate's service account" not in line) + "\n"
    policy = tmp_path / "policy.yaml"
    policy.write_text(text.replace("sqlite:///app.db", estate.app_db_url))
    # The second key's probe connection, as the deployment's processes read connections.
    manager = deployment.api("manager")
    manager.post("/connections", json={
        "connection_id": "affiliate_probe2", "conn_type": "aws", "login": key["AccessKeyId"],
        "password": key["SecretAccessKey"],
        "extra": json.dumps({"region_name": "ap-northeast-2", "endpoint_url": estate.endpoint_url,
                             "validates_upload_checksums": False})})
    outcome = drive_run(deployment, {"policy_path": str(policy), "evidence_dir": str(tmp_path / "out"),
                                     "dry_run": False})
    states = outcome.states()
    assert outcome.state == "failed" and states["check_complete"] == "failed", failure_report(deployment, outcome)
    assert states["copy_to_s3"] == states["copy_to_gs"] == "skipped"
    assert all(states[t] == "success" for t in ("recheck", "cutover", "revoke", "attest", "evidence"))
    evidence = json.loads((tmp_path / "out" / "evidence.json").read_text())
    assert "scope" in {r["id"] for r in evidence["complete_rules"] if not r["holds"]}
    assert "nothing is in scope" in " ".join(evidence["problems"])
    (record,) = [r for r in evidence["revocations"]["records"] if r["credential_id"] == key["AccessKeyId"]]
    assert record["proof"]["status"] == "proven"


def test_deployment_stops_cleanly(tmp_path):
    deployment = AirflowDeployment(tmp_path / "home", dags_folder=ROOT / "dags", plugins_folder=ROOT / "plugins")
    deployment.start()
    procs = deployment.processes()
    assert len(procs) >= 4  # the four components, at least
    database, backend, base_url = deployment.database, deployment.backend, deployment.base_url

    deployment.stop()

    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
    assert deployment.processes() == []
    assert holding_files_under(deployment.home) == []
    with requests.Session() as session, pytest.raises(requests.ConnectionError):
        session.trust_env = False
        session.get(f"{base_url}/api/v2/monitor/health", timeout=2)
    if backend == "postgresql":
        assert database and not database_exists(database)
        assert deployment.database is None


def test_a_start_that_fails_half_way_names_the_cause_and_leaves_nothing(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    dep = AirflowDeployment(tmp_path / "home", dags_folder=dags, plugins_folder=ROOT / "plugins",
                            metadata="postgresql" if postgres_available() else "sqlite")
    with pytest.raises(DeploymentError) as failed:
        dep.start(timeout=60, wait_for_dags=["no_such_dag"])
    message = str(failed.value)
    assert "no_such_dag" in message and "dag-processor.log" in message
    assert dep.processes() == [] and holding_files_under(dep.home) == []
    if dep.backend == "postgresql":
        assert not database_exists(dep.database_name)


def test_only_the_approvers_the_policy_names_may_answer(deployment, estate, tmp_path):
    """The policy names the cutover's approvers: anyone else is refused by Airflow itself."""
    policy = tmp_path / "policy.yaml"
    text = estate.policy_path.read_text().replace("sqlite:///app.db", estate.app_db_url)
    policy.write_text(text.replace("control_dir: control", f"control_dir: {estate.workdir / 'control'}")
                      + "approvals:\n  cutover: {approvers: [manager]}\n")
    refused: list[int] = []

    def try_first_as_the_wrong_user(api: AirflowApi, run_id: str, request: dict) -> None:
        if request["task_instance"]["task_id"] != "approve_cutover":
            return
        assert [u["id"] for u in request["assigned_users"]] == ["manager"]
        with pytest.raises(AirflowApiError) as wrong:
            deployment.api("demo-approver").respond(DAG_ID, run_id, "approve_cutover", "Approve", {"comment": "me?"})
        refused.append(wrong.value.status)
        deployment.api("manager").respond(DAG_ID, run_id, "approve_cutover", "Approve", {"comment": "I am named"})

    outcome = drive_run(deployment, {"policy_path": str(policy), "evidence_dir": str(tmp_path / "out"),
                                     "dry_run": False}, while_waiting=try_first_as_the_wrong_user)
    assert refused == [403]
    assert outcome.state == "success", failure_report(deployment, outcome)
    evidence = json.loads((tmp_path / "out" / "evidence.json").read_text())
    assert [(a["step"], a["who"], a["comment"]) for a in evidence["approvals"]] == [
        ("cutover", "manager", "I am named"), ("revoke", "demo-approver", "Approve by the deployment test")]


def test_an_unanswered_approval_times_out_as_a_rejection(deployment, estate, tmp_path):
    """The policy's timeout: nobody answers, Airflow takes the default (Reject), the steps after it are skipped."""
    policy = tmp_path / "policy.yaml"
    text = estate.policy_path.read_text().replace("sqlite:///app.db", estate.app_db_url)
    policy.write_text(text.replace("control_dir: control", f"control_dir: {estate.workdir / 'control'}")
                      + "approvals:\n  cutover: {timeout_hours: 0.01}\n")  # 36 seconds
    manager = deployment.api("manager")
    run_id = manager.trigger(DAG_ID, {"policy_path": str(policy), "evidence_dir": str(tmp_path / "out"),
                                      "dry_run": False})
    assert manager.wait_for_run(DAG_ID, run_id, timeout=400) == "failed"
    states = {t["task_id"]: t["state"] for t in manager.task_instances(DAG_ID, run_id) if t["map_index"] in (-1, 0)}
    assert {states[t] for t in ("cutover", "propose_revoke", "approve_revoke", "revoke")} == {"skipped"}
    evidence = json.loads((tmp_path / "out" / "evidence.json").read_text())
    (approval,) = evidence["approvals"]
    assert (approval["step"], approval["decision"]) == ("cutover", "timed_out")
    assert any("The approval of the cutover timed out" in p for p in evidence["problems"])
    assert "timed out" in manager.run_note(DAG_ID, run_id)
