"""
# Data residency revocation

Closes **every foreign access path** of the policy's principals, on its own and
first if need be (LINE cut the affiliate off at once, before the migration
finished). The migration DAG's revoke phase runs the same code.

| task | what it does |
|---|---|
| `plan` | validates the params and the policy before any work; a policy with no principal fails here, naming the field |
| `propose_revoke` | a dry run: every path that would change (access keys, console passwords, sessions, role trust entries, bucket-policy and ACL grants, GCS HMAC keys, bucket IAM members, service-account keys), with the attempts made now |
| `approve_revoke` | **waits for a human** (Required actions in the UI); the policy's `approvals.revoke` names who and how long; rejecting changes nothing |
| `revoke` | closes each path and records its before/after snapshot and proof: an attempt through it allowed before and refused after, or the server's configuration read back (grants, console passwords); refuses without this run's approval |
| `evidence` | `revoke-evidence.json` / `.html` and `revoke-audit.jsonl`: every path's proof, the approval, and a re-check made now of what is still open; a dry run writes `revoke-plan.*` |
| `check_complete` | fails the run unless the verdict is REVOKED (or a dry run's PLAN), with the reasons on the run's note |

Verdicts: **REVOKED**; **PARTIAL** (a path not proven, or a key waiting for its
deletion soak); **NOT_REVOKED** (rejected, failed, or a path still open now);
**PLAN** (dry run). Re-running is safe: closed paths are read again and recorded
"already revoked".

Engine: `include/residency/foreign_access.py` (no Airflow inside). Docs: README.md.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from residency_airflow import fail_fast, run_info, runtime, set_run_note
from residency_airflow.approvals import PolicyApprovalOperator

DEFAULT_POLICY = os.environ.get("RESIDENCY_POLICY", "/opt/airflow/include/policies/example.yaml")


@dag(
    dag_id="residency_revoke",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["residency", "revocation", "security"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=15), "owner": "platform"},
    params={
        "policy_path": Param(DEFAULT_POLICY, type="string", minLength=1, title="Policy file",
                             description="Path of the migration policy YAML on the workers."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="List every access path that would change; change nothing."),
        "evidence_dir": Param("", type="string", title="Evidence folder",
                              description="Where revoke-evidence.json/.html go; empty: "
                                          "<control folder>/<migration>/revoke/<run>."),
    },
    render_template_as_native_obj=False,
)
def residency_revoke():
    @task(retries=0)
    def plan() -> dict:
        from residency.connections import credentials
        from residency.revoke_phase import plan_revoke

        with fail_fast():
            return plan_revoke(get_current_context()["params"], run_info(), credentials)

    @task
    def propose_revoke(plan: dict) -> dict:
        from residency.revoke_phase import propose

        with fail_fast():
            return propose(runtime(plan))

    @task(retries=0)
    def revoke(plan: dict) -> dict:
        from residency.revoke_phase import revoke as run

        with fail_fast():
            return run(runtime(plan))

    # After a rejection or a failure too: the evidence says so.
    @task(trigger_rule="all_done", retries=0)
    def evidence() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from residency.revoke_phase import write_evidence

        ti = get_current_context()["ti"]
        plan = ti.xcom_pull(task_ids="plan")
        if not plan:
            raise AirflowFailException("no revocation evidence: the plan task failed (its log names the field); "
                                       "nothing was changed")
        return write_evidence(runtime(plan), run_info(), ti.xcom_pull(task_ids="propose_revoke"))

    @task(retries=0)
    def check_complete(report: dict) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from residency.revoke_phase import run_note

        note, ok = run_note(report)
        set_run_note(note)
        if not ok:
            raise AirflowFailException(note)

    the_plan = plan()
    proposal = propose_revoke(the_plan)
    approve = PolicyApprovalOperator(task_id="approve_revoke", step="revoke",
                                     proposal_task_id="propose_revoke", retries=0)
    revoked = revoke(the_plan)
    proposal >> approve >> revoked
    report = evidence()
    [the_plan, revoked] >> report
    check_complete(report)


dag = residency_revoke()
