"""
# Data residency rollback

Rolls back the **reference cutover** of one migration: every cell of the
application database that the cutover rewrote to a domestic copy gets its own
value back (the overseas URL it held before), from the cutover's journal, in one
table or in all of them. The copied objects, the overseas objects and the revoked
credentials are not touched.

| task | what it does |
|---|---|
| `plan` | validates the params and the policy before any work: a bad field fails here, naming it (e.g. a `table` not in `references.columns`, or with no journal rows) |
| `propose_rollback` | a dry run of the rollback: cells that would be restored, left alone because the application changed them since the cutover, never applied; the journal per table |
| `approve_rollback` | **waits for a human** (Required actions in the UI, or the REST API); the policy's `approvals.rollback` names who and how long; rejecting stops the run with nothing changed |
| `rollback` | restores each cell only if it still holds what the cutover wrote (compare-and-swap); refuses without this run's approval |
| `evidence` | `rollback-evidence.json` / `.html` and `rollback-audit.jsonl`: the approval, the counts, every conflict, a proof re-read now (each rolled-back cell holds its old value), the verified audit chain; a dry run writes `rollback-plan.json` / `.html` instead |
| `check_complete` | fails the run unless the verdict is ROLLED_BACK (or a dry run's PLAN), and puts the reasons on the run's note |

Verdicts: **ROLLED_BACK**; **PARTIAL** (a cell changed since the cutover was left
alone, or a cell is not proven now); **NOT_ROLLED_BACK** (rejected, timed out or
failed); **PLAN** (dry run). Re-running is safe: restored cells are not touched
again; a conflict stays in the journal, and in each run's evidence, until its cell
holds what the cutover wrote again (then the next run restores it).

Engine: `include/residency/rollback_phase.py` (no Airflow inside). Docs: README.md.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from residency_airflow import fail_fast, run_info, runtime, set_run_note
from residency_airflow.approvals import PolicyApprovalOperator

DEFAULT_POLICY = os.environ.get("RESIDENCY_POLICY", "/opt/airflow/include/policies/example.yaml")


@dag(
    dag_id="residency_rollback",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["residency", "rollback", "references"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=15), "owner": "platform"},
    params={
        "policy_path": Param(DEFAULT_POLICY, type="string", minLength=1, title="Policy file",
                             description="Path of the migration policy YAML on the workers."),
        "table": Param("", type="string", title="Application table",
                       description="Roll back the cells of this table only (one of references.columns); "
                                   "empty: every table."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Report what the rollback would restore; change nothing."),
        "evidence_dir": Param("", type="string", title="Evidence folder",
                              description="Where rollback-evidence.json/.html go; empty: "
                                          "<control folder>/<migration>/rollback/<run>."),
    },
    render_template_as_native_obj=False,
)
def residency_rollback():
    @task(retries=0)
    def plan() -> dict:
        from residency.connections import credentials
        from residency.rollback_phase import plan_rollback

        with fail_fast():
            return plan_rollback(get_current_context()["params"], run_info(), credentials)

    @task
    def propose_rollback(plan: dict) -> dict:
        from residency.rollback_phase import propose_rollback as run

        with fail_fast():
            return run(runtime(plan))

    @task
    def rollback(plan: dict) -> dict:
        from residency.rollback_phase import rollback as run

        with fail_fast():
            return run(runtime(plan))

    # After a rejection (the rollback is skipped) or a failed rollback too: the evidence
    # says so ("all_done_min_one_success" would skip it after a rejection). Without a
    # plan there is nothing to report; failing (not skipping) keeps the run failed.
    @task(trigger_rule="all_done", retries=0)
    def evidence() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from residency.rollback_phase import write_evidence

        plan = get_current_context()["ti"].xcom_pull(task_ids="plan")
        if not plan:
            raise AirflowFailException("no rollback evidence: the plan task failed (its log names the field); "
                                       "nothing was changed")
        return write_evidence(runtime(plan), run_info())

    @task(retries=0)
    def check_complete(report: dict) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from residency.rollback_phase import run_note

        note, ok = run_note(report)
        set_run_note(note)
        if not ok:
            raise AirflowFailException(note)

    the_plan = plan()
    proposal = propose_rollback(the_plan)
    approve = PolicyApprovalOperator(task_id="approve_rollback", step="rollback",
                                     proposal_task_id="propose_rollback", retries=0)
    rolled_back = rollback(the_plan)
    proposal >> approve >> rolled_back
    report = evidence()
    [the_plan, rolled_back] >> report
    check_complete(report)


dag = residency_rollback()
