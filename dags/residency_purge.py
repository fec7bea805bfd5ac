"""
# Data residency purge

Deletes the **overseas copies** of one migration after the cutover has soaked:
every version and delete marker of each source object whose domestic copy is
proven again at purge time, and the incomplete multipart uploads under the source
prefixes. Nothing else is touched: objects out of scope (not media, excluded,
failed, never inventoried, outside the prefixes) stay, and the evidence lists
them as remaining abroad with the reason.

| task | what it does |
|---|---|
| `plan` | validates the params and the policy; a real run is refused here, before anyone is asked, when no cutover is recorded, it was rolled back, or `purge.soak_hours` has not elapsed since it (the error says when the purge is due) |
| `propose_purge` | a dry run of the purge: per source, objects, versions, delete markers and bytes that would be deleted, what is kept and why, what stays abroad |
| `approve_purge` | **waits for a human** (Required actions in the UI, or the REST API); the policy's `approvals.purge` names who and how long; rejecting stops the run with nothing deleted |
| `purge` | re-attests every domestic copy, lists every version of the sources, deletes only proven, unchanged objects; lists again to prove none is left; refuses without this run's approval |
| `evidence` | `purge-evidence.json` / `.html` and `purge-audit.jsonl`: counts and bytes per bucket, what remains abroad and why, the after-listing proof, the approval, the verified audit chain; a dry run writes `purge-plan.json` / `.html` |
| `check_complete` | fails the run unless the verdict is PURGED (or a dry run's PLAN), and puts the reasons on the run's note |

Verdicts: **PURGED**; **PARTIAL** (an in-scope object was kept: not attested now,
changed at the source since the copy, or its deletion failed); **NOT_PURGED**
(rejected, timed out, refused, failed, or the after-listing still finds a deleted
version); **PLAN** (dry run). Re-running is safe: keys purged before are recorded
"already purged" and proven absent by the listing.

Engine: `include/residency/purge.py`, tasks `include/residency/purge_phase.py` (no Airflow inside).
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from residency_airflow import fail_fast, run_info, runtime, set_run_note
from residency_airflow.approvals import PolicyApprovalOperator

DEFAULT_POLICY = os.environ.get("RESIDENCY_POLICY", "/opt/airflow/include/policies/example.yaml")


@dag(
    dag_id="residency_purge",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["residency", "purge"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=15), "owner": "platform"},
    params={
        "policy_path": Param(DEFAULT_POLICY, type="string", minLength=1, title="Policy file",
                             description="Path of the migration policy YAML on the workers."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Report what the purge would delete; delete nothing."),
        "evidence_dir": Param("", type="string", title="Evidence folder",
                              description="Where purge-evidence.json/.html go; empty: "
                                          "<control folder>/<migration>/purge/<run>."),
    },
    render_template_as_native_obj=False,
)
def residency_purge():
    @task(retries=0)
    def plan() -> dict:
        from residency.connections import credentials
        from residency.purge_phase import plan_purge

        with fail_fast():
            return plan_purge(get_current_context()["params"], run_info(), credentials)

    @task
    def propose_purge(plan: dict) -> dict:
        from residency.purge_phase import propose_purge as run

        with fail_fast():
            return run(runtime(plan))

    @task
    def purge(plan: dict) -> dict:
        from residency.purge_phase import purge as run

        with fail_fast():
            return run(runtime(plan))

    # After a rejection (the purge is skipped) or a failed purge too: the evidence says so.
    @task(trigger_rule="all_done", retries=0)
    def evidence() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from residency.purge_phase import write_evidence

        plan = get_current_context()["ti"].xcom_pull(task_ids="plan")
        if not plan:
            raise AirflowFailException("no purge evidence: the plan task failed (its log names the reason); "
                                       "nothing was deleted")
        return write_evidence(runtime(plan), run_info())

    @task(retries=0)
    def check_complete(report: dict) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from residency.purge_phase import run_note

        note, ok = run_note(report)
        set_run_note(note)
        if not ok:
            raise AirflowFailException(note)

    the_plan = plan()
    proposal = propose_purge(the_plan)
    approve = PolicyApprovalOperator(task_id="approve_purge", step="purge",
                                     proposal_task_id="propose_purge", retries=0)
    purged = purge(the_plan)
    proposal >> approve >> purged
    report = evidence()
    [the_plan, purged] >> report
    check_complete(report)


dag = residency_purge()
