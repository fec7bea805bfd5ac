"""A real local Airflow deployment for the tests of this folder, and a way to drive runs on it.

Each test module gets its own small estate (moto server with IAM enforced,
fake-gcs-server, the application database) and its own deployment (API server,
scheduler with LocalExecutor, DAG processor, triggerer; PostgreSQL metadata when
the machine's server answers), so modules never see each other's runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pytest

from residency.localcloud.deployment import AirflowApi, AirflowDeployment
from residency.localcloud.estate import Estate, seed_estate
from residency.localcloud.servers import FakeGcsServer, MotoServer
from residency_airflow import NOTE_CONN_ID

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "residency_migration"
APPROVAL_TASKS = ("approve_cutover", "approve_revoke")


@dataclass
class Cloud:
    """The estate and the admin credentials of the emulators behind it."""

    estate: Estate
    admin: Any
    gcs: FakeGcsServer


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> Cloud:
    """The small estate on S3 and GCS (all four copy routes)."""
    work = tmp_path_factory.mktemp("estate")
    with MotoServer(log_path=work / "moto.log") as server, FakeGcsServer(log_path=work / "gcs.log") as gcs:
        admin = server.enforce_auth()
        yield Cloud(seed_estate(server, admin, work, gcs=gcs, scale="small"), admin, gcs)


@pytest.fixture(scope="module")
def estate(cloud: Cloud) -> Estate:
    return cloud.estate


@pytest.fixture(scope="module")
def deployment(estate: Estate, tmp_path_factory) -> AirflowDeployment:
    home = tmp_path_factory.mktemp("airflow-deployment")
    env = {**estate.connection_env(), "RESIDENCY_POLICY": str(estate.policy_path)}
    dep = AirflowDeployment(home, dags_folder=ROOT / "dags", plugins_folder=ROOT / "plugins", env=env,
                            wait_for_dags=[DAG_ID], api_connections={NOTE_CONN_ID: "manager"})
    dep.start()
    try:
        yield dep
    finally:
        dep.stop()


@dataclass
class RunOutcome:
    run_id: str
    state: str
    answered: dict[str, str] = field(default_factory=dict)  # task id -> option chosen
    tasks: list[dict[str, Any]] = field(default_factory=list)

    def task(self, task_id: str, map_index: int = -1) -> dict[str, Any]:
        return next(t for t in self.tasks if t["task_id"] == task_id and t["map_index"] == map_index)

    def states(self) -> dict[str, str]:
        return {t["task_id"]: t["state"] for t in self.tasks if t["map_index"] in (-1, 0)}


def drive_run(
    deployment: AirflowDeployment,
    conf: Mapping[str, Any],
    *,
    decisions: Mapping[str, str] | None = None,
    approver: str = "demo-approver",
    timeout: float = 300,
    while_waiting: Callable[[AirflowApi, str, dict[str, Any]], None] | None = None,
) -> RunOutcome:
    """Trigger ``residency_migration`` as ``manager``, answer its approvals as ``approver``
    (``decisions``: task id -> "Approve" or "Reject", default Approve) through the REST
    API, and wait for the run to end. ``while_waiting(api, run_id, request)`` is called
    once for each approval request before it is answered (e.g. to look at the UI)."""
    manager = deployment.api("manager")
    answering = deployment.api(approver)
    run_id = manager.trigger(DAG_ID, dict(conf))
    outcome = RunOutcome(run_id, "running")

    def answer(api: AirflowApi, run: dict[str, Any]) -> None:
        for request in answering.pending_approvals(DAG_ID, run_id):
            ti = request["task_instance"]
            task_id = ti["task_id"]
            if task_id not in APPROVAL_TASKS or task_id in outcome.answered:
                continue
            if while_waiting is not None:
                while_waiting(manager, run_id, request)
                if not answering.pending_approvals(DAG_ID, run_id, min_age=0):  # answered while looking
                    outcome.answered[task_id] = "answered by the caller"
                    continue
            option = (decisions or {}).get(task_id, "Approve")
            answering.respond(DAG_ID, run_id, task_id, option,
                              {"comment": f"{option} by the deployment test"}, map_index=ti["map_index"])
            outcome.answered[task_id] = option

    outcome.state = manager.wait_for_run(DAG_ID, run_id, timeout=timeout, on_poll=answer)
    outcome.tasks = manager.task_instances(DAG_ID, run_id)
    return outcome


def failure_report(deployment: AirflowDeployment, outcome: RunOutcome) -> str:
    """The states of every task and the tail of each failed task's log, for an assertion message."""
    api = deployment.api("manager")
    lines = [f"run {outcome.run_id} ended {outcome.state}; answered {outcome.answered}"]
    lines.append(", ".join(f"{t['task_id']}[{t['map_index']}]={t['state']}" for t in outcome.tasks))
    for t in outcome.tasks:
        if t["state"] == "failed":
            log = api.task_log(DAG_ID, outcome.run_id, t["task_id"], max(t["try_number"], 1), t["map_index"])
            lines.append(f"--- {t['task_id']}[{t['map_index']}]:\n" + "\n".join(log.splitlines()[-25:]))
    return "\n".join(lines)
