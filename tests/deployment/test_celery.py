"""The migration on the CeleryExecutor with two workers, driven through the REST API.

One deployment for the module: API server, scheduler with the CeleryExecutor,
DAG processor, triggerer and two Celery workers (``airflow celery worker``),
each with its own home, working directory, temporary directory, task-log folder
and hostname (its own loopback address, where its log server listens). The
broker is a Redis database of the machine's server claimed for the deployment;
the metadata database, Celery's results and the ledger are PostgreSQL databases
created for the module. The small estate is the one the other deployment tests
use; the counts it must reach are those of the same estate migrated by the
engine in this process, the embedded way (one machine, a SQLite ledger).
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from residency import pipeline
from residency.clients import aws_from_fields, gcs_from_fields
from residency.localcloud.deployment import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    REDIS_HOST,
    REDIS_PORT,
    AirflowDeployment,
    create_database,
    database_exists,
    drop_database,
    postgres_available,
    redis_available,
)
from residency.localcloud.estate import Estate, seed_estate
from residency.localcloud.servers import FakeGcsServer, MotoServer
from residency_airflow import NOTE_CONN_ID
from conftest import DAG_ID, ROOT, drive_run, failure_report

pytestmark = pytest.mark.e2e

#: The mapped copy and verify tasks, one pair per destination provider (``copy_to_s3``, ``verify_to_gs``, ...).
SHARD_TASK_PREFIXES = ("copy_to_", "verify_to_")


@pytest.fixture(scope="module")
def ledger_url() -> str:
    """A PostgreSQL database of its own for the ledger: workers that share no disk share no SQLite file."""
    if not postgres_available():
        pytest.skip(f"the CeleryExecutor needs PostgreSQL at {PG_HOST}:{PG_PORT} (trust auth); it does not answer")
    if not redis_available():
        pytest.skip("the CeleryExecutor needs Redis at 127.0.0.1:6379 as its broker; it does not answer")
    name = f"residency_ledger_{secrets.token_hex(6)}"
    create_database(name)
    try:
        yield f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        drop_database(name)


@pytest.fixture(scope="module")
def celery_estate(ledger_url: str, tmp_path_factory) -> Estate:
    work = tmp_path_factory.mktemp("celery-estate")
    with MotoServer(log_path=work / "moto.log") as server, FakeGcsServer(log_path=work / "gcs.log") as gcs:
        yield seed_estate(server, server.enforce_auth(), work, gcs=gcs, scale="small", ledger_url=ledger_url)


@pytest.fixture(scope="module")
def celery_deployment(celery_estate: Estate, tmp_path_factory) -> AirflowDeployment:
    home = tmp_path_factory.mktemp("celery-deployment")
    env = {**celery_estate.connection_env(), "RESIDENCY_POLICY": str(celery_estate.policy_path)}
    dep = AirflowDeployment(home, dags_folder=ROOT / "dags", plugins_folder=ROOT / "plugins", env=env,
                            wait_for_dags=[DAG_ID], api_connections={NOTE_CONN_ID: "manager"},
                            executor="celery", workers=2, worker_concurrency=2, parallelism=8)
    dep.start(timeout=300)
    try:
        yield dep
    finally:
        dep.stop()


def _credentials(estate: Estate):
    """conn_id -> credentials, from the same ``AIRFLOW_CONN_*`` values the deployment's processes read."""
    conns = {key.removeprefix("AIRFLOW_CONN_").lower(): json.loads(value)
             for key, value in estate.connection_env().items()}

    def credentials(conn_id: str) -> Any:
        conn = conns[conn_id]
        if conn["conn_type"] == "google_cloud_platform":
            return gcs_from_fields(conn_id, conn.get("extra"))
        return aws_from_fields(conn_id, conn.get("login"), conn.get("password"), conn.get("extra"))

    return credentials


@pytest.fixture(scope="module")
def embedded_evidence(tmp_path_factory) -> dict[str, Any]:
    """The same small estate (same seed) on servers of its own, migrated in this process: the
    pipeline's functions in the DAG's order, both approvals recorded as given, a SQLite ledger."""
    work = tmp_path_factory.mktemp("embedded-estate")
    out = work / "evidence"
    with MotoServer(log_path=work / "moto.log") as server, FakeGcsServer(log_path=work / "gcs.log") as gcs:
        estate = seed_estate(server, server.enforce_auth(), work, gcs=gcs, scale="small")
        credentials = _credentials(estate)
        run = {"dag_id": DAG_ID, "run_id": "embedded__in_process", "logical_date": "", "run_after": ""}
        plan = pipeline.plan_run({"policy_path": str(estate.policy_path), "evidence_dir": str(out), "dry_run": False},
                                 run, credentials)

        def rt() -> pipeline.Runtime:
            return pipeline.Runtime(plan, credentials)

        placements = pipeline.preflight(rt())["placements"]
        shards = pipeline.run_inventory(rt(), placements)["shards"]
        for shard in shards:
            pipeline.copy_shard(rt(), shard)
        for shard in shards:
            pipeline.verify_shard(rt(), shard)
        pipeline.recheck(rt())
        approval = {"chosen_options": ["Approve"], "responded_by_user": {"id": "embedded", "name": "embedded"},
                    "responded_at": datetime.now(timezone.utc).isoformat(), "params_input": {}}
        pipeline.record_approval(rt(), "cutover", approval)
        pipeline.cutover(rt())
        pipeline.record_approval(rt(), "revoke", approval)
        pipeline.revoke(rt())
        pipeline.attest_phase(rt())
        summary = pipeline.write_evidence(rt(), run)
    evidence = json.loads(Path(summary["evidence_json"]).read_text())
    assert evidence["complete"] is True, evidence["problems"]  # the reference itself must be a complete run
    return evidence


def evidence_counts(evidence: dict[str, Any]) -> dict[str, Any]:
    """Every count of the evidence, keyed so that two runs of the same estate compare equal."""
    refs = evidence.get("references") or {}
    cutover, residual = refs.get("cutover") or {}, refs.get("residual_scan") or {}
    return {
        "sources": {s["uri"]: s["counts"] for s in evidence["sources"]},
        "routes": {r["route"]: {"counts": r["counts"], "algorithms": r["algorithms"], "methods": r["methods"]}
                   for r in evidence.get("routes", [])},
        "reconciliation": evidence["reconciliation"],
        "references": {k: cutover.get(k) for k in ("scanned", "rewritten", "already_rewritten")}
        | {k: residual.get(k) for k in ("residual", "accepted", "by_reason")},
        "revocations": sorted(r["proof"].get("status") for r in evidence["revocations"]["records"]),
        "rules": {r["id"]: r["holds"] for r in evidence["complete_rules"]},
    }


def test_celery_run_is_complete_with_the_embedded_counts_and_uses_both_workers(
        celery_deployment, celery_estate, embedded_evidence, tmp_path):
    outcome = drive_run(celery_deployment, {"policy_path": str(celery_estate.policy_path),
                                            "evidence_dir": str(tmp_path), "dry_run": False}, timeout=900)
    assert outcome.state == "success", failure_report(celery_deployment, outcome)
    assert outcome.answered == {"approve_cutover": "Approve", "approve_revoke": "Approve"}
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["complete"] is True, evidence["problems"]
    manager = celery_deployment.api("manager")
    assert manager.run_note(DAG_ID, outcome.run_id).startswith("COMPLETE")

    # The same counts as the embedded run of the same estate, and the ones the estate was seeded with.
    assert evidence_counts(evidence) == evidence_counts(embedded_evidence)
    assert evidence["reconciliation"]["verified"]["objects"] == celery_estate.media_objects

    # Every copy and verify task instance ran on a Celery worker, and both workers took some.
    shard_tis = [t for t in outcome.tasks if t["task_id"].startswith(SHARD_TASK_PREFIXES)]
    assert shard_tis and all(t["state"] == "success" for t in shard_tis)
    ran_on = {t["hostname"] for t in shard_tis}
    workers = {w.address: w for w in celery_deployment.celery_workers}
    assert ran_on == set(workers), (ran_on, workers)
    assert {t["hostname"] for t in outcome.tasks if t["hostname"]} <= set(workers)  # no task ran elsewhere

    # Each worker keeps its task logs on its own disk; the API server fetches them from that worker's log server.
    for address, worker in workers.items():
        ti = next(t for t in shard_tis if t["hostname"] == address)
        on_disk = [p for p in (worker.home / "logs").rglob("*.log") if f"task_id={ti['task_id']}" in str(p)]
        assert on_disk, f"no {ti['task_id']} log under {worker.home / 'logs'}"
        log = manager.task_log(DAG_ID, outcome.run_id, ti["task_id"], ti["try_number"], ti["map_index"])
        assert "BEGIN copy" in log or "BEGIN verify" in log, log[-2000:]
    assert not [p for p in celery_deployment.logs_dir.rglob("*.log") if "task_id=copy_to_" in str(p)]


def test_stopping_leaves_no_worker_broker_queue_or_database(celery_deployment):
    """Runs last: stop() ends every process (the workers' pools and task runners too), flushes and
    releases the Redis database and drops the metadata database; the fixture's stop is then a no-op."""
    procs = celery_deployment.processes()
    names = " ".join(" ".join(p.cmdline()) for p in procs)
    assert "celery worker" in names and "serve_logs" in names, names
    redis_db, database = celery_deployment.redis_db, celery_deployment.database
    assert redis_db is not None and database

    celery_deployment.stop()

    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
    assert celery_deployment.redis_db is None
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_db)
    try:
        held = client.get("residency-airflow:deployment")
    finally:
        client.close()
    assert held is None or celery_deployment.id not in held.decode()  # released (another run may hold it now)
    assert not database_exists(database)
