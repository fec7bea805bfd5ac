"""DAG integrity: the DAG folder imports cleanly and the DAGs are wired as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_every_dag_has_tags_docs_and_retries(dagbag):
    assert dagbag.dags
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.doc_md, dag_id
        for task in dag.tasks:
            assert task.retries is not None, f"{dag_id}.{task.task_id}"


def test_residency_migration_shape(dagbag):
    dag = dagbag.dags["residency_migration"]
    assert set(dag.params.keys()) == {"policy_path", "dry_run", "evidence_dir"}
    tail = ["catch_up", "recheck", "propose_cutover", "approve_cutover", "freeze", "final_pass", "cutover",
            "propose_revoke", "approve_revoke", "revoke", "attest", "evidence", "check_complete"]
    shard_tasks = {f"{step}_to_{p}" for step in ("shards", "copy", "verify") for p in ("s3", "gs")}
    assert {"plan", "preflight", "inventory", "unfreeze", *tail} | shard_tasks == set(dag.task_ids)
    for provider, pool in (("s3", "residency_s3"), ("gs", "residency_gcs")):
        order = ["plan", "preflight", "inventory", f"shards_to_{provider}", f"copy_to_{provider}",
                 f"verify_to_{provider}", *tail]
        for upstream, downstream in zip(order, order[1:]):
            assert upstream in dag.get_task(downstream).upstream_task_ids or upstream in {
                t for t in dag.get_task(downstream).get_flat_relative_ids(upstream=True)
            }, f"{upstream} must run before {downstream}"
        for step in ("copy", "verify"):
            task = dag.get_task(f"{step}_to_{provider}")
            assert task.pool == pool  # a pool per destination provider caps concurrent copy tasks
            assert "shard" in task.map_index_template  # named from the mapped argument
    assert dag.get_task("evidence").trigger_rule == "all_done_min_one_success"
    # State 8: nothing in scope skips the mapped shards; the run must still recheck, cut over,
    # revoke, attest and write the evidence.
    assert dag.get_task("catch_up").trigger_rule == "none_failed"
    assert dag.get_task("recheck").trigger_rule == "none_failed"
    assert dag.get_task("attest").trigger_rule == "none_failed_min_one_success"
    assert "inventory" in dag.get_task("catch_up").upstream_task_ids
    # A freeze is lifted whatever the cutover's outcome, and before the evidence.
    assert dag.get_task("unfreeze").trigger_rule == "all_done"
    assert "cutover" in dag.get_task("unfreeze").upstream_task_ids
    assert "unfreeze" in dag.get_task("attest").upstream_task_ids
    assert dag.max_active_runs == 1
    # The irreversible steps wait for a human, directly, with no retry that would ask twice.
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    first_after = {"cutover": "freeze", "revoke": "revoke"}  # the cutover's first change is the freeze
    for step in ("cutover", "revoke"):
        approval = dag.get_task(f"approve_{step}")
        assert isinstance(approval, ApprovalOperator) and approval.retries == 0
        assert dag.get_task(first_after[step]).upstream_task_ids - {"plan"} == {f"approve_{step}"}
        assert approval.defaults == ["Reject"]  # a timeout rejects
        assert "comment" in approval.params


@pytest.mark.parametrize("dag_id, step, extra", [
    ("residency_rollback", "rollback", {"table"}), ("residency_revoke", "revoke", set()),
    ("residency_purge", "purge", set()),
])
def test_approved_step_dag_shape(dagbag, dag_id, step, extra):
    """The single-step DAGs: plan -> propose -> a human approves -> act -> evidence (even after a
    rejection or a failure) -> check."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dag = dagbag.dags[dag_id]
    assert set(dag.params.keys()) == {"policy_path", "dry_run", "evidence_dir", *extra}
    order = ["plan", f"propose_{step}", f"approve_{step}", step, "evidence", "check_complete"]
    assert set(dag.task_ids) == set(order)
    for upstream, downstream in zip(order, order[1:]):
        assert upstream in dag.get_task(downstream).upstream_task_ids, f"{upstream} must run before {downstream}"
    approval = dag.get_task(f"approve_{step}")
    assert isinstance(approval, ApprovalOperator) and approval.retries == 0 and approval.step == step
    assert approval.defaults == ["Reject"] and dag.get_task(step).upstream_task_ids == {"plan", f"approve_{step}"}
    # The evidence is written after a rejection (the step skipped) or a failed step too.
    assert dag.get_task("evidence").trigger_rule == "all_done"
    assert dag.get_task("evidence").upstream_task_ids == {"plan", step}
    assert dag.max_active_runs == 1


def test_migration_revokes_only_after_the_unfreeze(dagbag):
    """Both edit the source buckets' policies; the unfreeze's read-modify-write must not race the revocation."""
    dag = dagbag.dags["residency_migration"]
    assert "unfreeze" in dag.get_task("propose_revoke").upstream_task_ids


def test_engine_does_not_import_airflow():
    engine = Path(__file__).resolve().parents[2] / "include" / "residency"
    offenders = [
        str(p.relative_to(engine))
        for p in engine.rglob("*.py")
        if p.name != "connections.py" and any(
            line.lstrip().startswith(("import airflow", "from airflow")) for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []
