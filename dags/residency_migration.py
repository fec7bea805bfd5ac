"""
# Data residency migration

Moves the media objects named by a **policy file** from overseas buckets to
domestic storage, proves every object arrived intact, repoints the application
database at the new copies, revokes the foreign party's credentials, re-proves
all of it, and writes an evidence report for auditors.

| task | what it does |
|---|---|
| `plan` | validates the params and the policy before any work (a bad field fails here, naming it) |
| `preflight` | every bucket reachable; region -> jurisdiction; destinations domestic; reference key columns unique and never NULL; IAM and probe credentials work (read-only) |
| `inventory` | lists sources page by page (a HEAD only where a name cannot decide), selects media, records each object and its shard in the ledger (and every object it could not read) |
| `copy_to_s3`, `copy_to_gs` | one mapped instance per shard, in the pool `residency_s3` / `residency_gcs`: one create-only server-side copy per object whose response carries the proof, or streamed, resumable |
| `verify_to_s3`, `verify_to_gs` | one mapped instance per shard: the destination listing shows the proven copy, or a checksum both sides truly have, or a read-back |
| `catch_up` | lists the sources again: what the application wrote since the inventory is copied and verified, pass after pass while that delta shrinks (policy `cutover.catch_up_passes`) |
| `recheck` | re-proves every verified object now (destination listing, source version); repairs what changed; runs even when nothing is in scope |
| `propose_cutover` | what approving the cutover will do: objects re-proven per route, failures, references a dry run would rewrite |
| `approve_cutover` | **waits for a human** (Required actions in the UI, or the REST API); the policy names who and how long |
| `freeze` | with policy `cutover.freeze`: a write-deny statement on each S3 source's bucket policy, proven by a refused probe write (GCS: recorded as not frozen, with why) |
| `final_pass` | one more listing right before the cutover: late uploads are copied, verified and everything re-proven |
| `cutover` | rewrites references (URL cells, URLs inside text and JSON) to re-proven objects only, journaled; refuses without this run's approval |
| `unfreeze` | removes the freeze statements, whatever the cutover's outcome; before/after snapshots in the evidence |
| `propose_revoke` | the access keys that would be revoked, probed read-only |
| `approve_revoke` | **waits for a human**; rejecting stops the run with nothing revoked |
| `revoke` | deactivates and deletes the foreign access keys; proves each with a denied probe |
| `attest` | re-proves, right before the evidence, everything the evidence will count as migrated |
| `evidence` | scans the application's references now; `evidence.json`, `evidence.html`, `audit.jsonl`, `objects.jsonl` (a dry run writes `plan.json` / `plan.html` instead) |
| `check_complete` | fails the run unless the evidence is COMPLETE, and puts the reasons on the run's note |

Re-running is safe: the ledger remembers each object, so a re-run copies
nothing twice, resumes where the last one stopped, and re-proves everything.
`dry_run` inventories and writes a plan of what would happen (green, labelled a
plan) without copying, rewriting, revoking or asking for approvals. Errors no
retry can fix (a policy mistake, a refusal) fail the task at once; transient ones
are retried. Rejecting an approval skips the steps after it; the evidence says so.

Engine: `include/residency` (no Airflow inside). Docs: README.md.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from residency_airflow import fail_fast, run_info, runtime, set_run_note
from residency_airflow.approvals import PolicyApprovalOperator

DEFAULT_POLICY = os.environ.get("RESIDENCY_POLICY", "/opt/airflow/include/policies/example.yaml")
#: The Airflow pool of the copy and verify tasks that write to each destination provider.
POOLS = {"s3": "residency_s3", "gs": "residency_gcs"}
SHARD_LABEL = ("shard {{ '%05d' % task.op_kwargs['shard']['shard'] }} {{ task.op_kwargs['shard']['source'] }} "
               "({{ task.op_kwargs['shard']['objects'] }} objects)")


@dag(
    dag_id="residency_migration",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["residency", "migration", "s3", "gcs"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=15), "owner": "platform"},
    params={
        "policy_path": Param(DEFAULT_POLICY, type="string", minLength=1, title="Policy file",
                             description="Path of the migration policy YAML on the workers."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Inventory and report only: copy, rewrite and revoke nothing."),
        "evidence_dir": Param("", type="string", title="Evidence folder",
                              description="Where evidence.json/.html go; empty: the policy's control folder."),
    },
    render_template_as_native_obj=False,
)
def residency_migration():
    @task(retries=0)
    def plan() -> dict:
        from residency.connections import credentials
        from residency.pipeline import plan_run

        with fail_fast():
            return plan_run(get_current_context()["params"], run_info(), credentials)

    @task
    def preflight(plan: dict) -> dict:
        from residency.pipeline import preflight as run

        with fail_fast():
            return run(runtime(plan))["placements"]

    @task
    def inventory(plan: dict, placements: dict) -> list[dict]:
        from residency.pipeline import run_inventory

        with fail_fast():
            return run_inventory(runtime(plan), placements)["shards"]

    # Shards go to one mapped copy task per destination provider, each in its own
    # Airflow pool (residency_s3, residency_gcs: see the README for sizing), so a
    # platform team caps the concurrent copy tasks that write to each provider.
    # (Airflow maps only over a task's return value, hence a small task per provider.)
    @task
    def shards_to(shards: list[dict], provider: str) -> list[dict]:
        return [s for s in shards if s["to"] == provider]

    # The label is rendered from the mapped argument itself, so the UI names each
    # shard (bucket and number) as soon as it starts, not only when it ends.
    @task(map_index_template=SHARD_LABEL)
    def copy_shard(plan: dict, shard: dict) -> dict:
        from residency.pipeline import copy_shard as run

        with fail_fast():
            return run(runtime(plan), shard)

    @task(map_index_template=SHARD_LABEL)
    def verify_shard(plan: dict, shard: dict) -> dict:
        from residency.pipeline import verify_shard as run

        with fail_fast():
            return run(runtime(plan), shard)

    # Mapped tasks over an empty list are skipped; "none_failed" lets the run go
    # on (recheck, cutover, revocation, evidence) when nothing is in scope.
    @task(trigger_rule="none_failed")
    def recheck(plan: dict) -> dict:
        from residency.pipeline import recheck as run

        with fail_fast():
            return run(runtime(plan))

    @task(trigger_rule="none_failed")
    def catch_up(plan: dict) -> dict:
        from residency.pipeline import catch_up as run

        with fail_fast():
            return run(runtime(plan))

    @task
    def freeze(plan: dict) -> dict:
        from residency.pipeline import freeze_sources

        with fail_fast():
            return freeze_sources(runtime(plan))

    @task
    def final_pass(plan: dict) -> dict:
        from residency.pipeline import final_pass as run

        with fail_fast():
            return run(runtime(plan))

    # Runs whatever happened upstream: a freeze is never left in place.
    @task(trigger_rule="all_done")
    def unfreeze(plan: dict) -> dict:
        from residency.pipeline import unfreeze_sources

        with fail_fast():
            return unfreeze_sources(runtime(plan))

    @task
    def propose_cutover(plan: dict) -> dict:
        from residency.pipeline import propose_cutover as run

        with fail_fast():
            return run(runtime(plan))

    @task
    def propose_revoke(plan: dict) -> dict:
        from residency.pipeline import propose_revoke as run

        with fail_fast():
            return run(runtime(plan))

    @task
    def cutover(plan: dict) -> dict:
        from residency.pipeline import cutover as run

        with fail_fast():
            return run(runtime(plan))

    @task
    def revoke(plan: dict) -> dict:
        from residency.pipeline import revoke as run

        with fail_fast():
            return run(runtime(plan))

    @task(trigger_rule="none_failed_min_one_success")
    def attest(plan: dict) -> dict:
        from residency.pipeline import attest_phase

        with fail_fast():
            return attest_phase(runtime(plan))

    @task(trigger_rule="all_done_min_one_success", retries=0)
    def evidence(plan: dict) -> dict:
        from residency.pipeline import write_evidence

        return write_evidence(runtime(plan), run_info())

    @task(retries=0)
    def check_complete(report: dict) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        if report.get("kind") == "plan":
            set_run_note(f"PLAN (dry run): {report['objects_to_copy']:,} objects, {report['bytes_to_copy']:,} bytes "
                         f"would be copied; see {report['evidence_html']}")
            return
        if not report["complete"]:
            set_run_note("INCOMPLETE: " + "; ".join(report["problems"]) + f" (evidence: {report['evidence_html']})")
            raise AirflowFailException(
                "migration not complete: " + "; ".join(report["problems"]) + f" (evidence: {report['evidence_json']})"
            )
        set_run_note(f"COMPLETE: every rule of the evidence holds ({report['evidence_html']})")

    the_plan = plan()
    shards = inventory(the_plan, preflight(the_plan))
    caught_up = catch_up(the_plan)
    rechecked = recheck(the_plan)
    caught_up >> rechecked
    for provider, pool in POOLS.items():
        mine = shards_to.override(task_id=f"shards_to_{provider}")(shards, provider)
        copied = copy_shard.override(task_id=f"copy_to_{provider}", pool=pool).partial(plan=the_plan).expand(shard=mine)
        verified = verify_shard.override(task_id=f"verify_to_{provider}", pool=pool).partial(
            plan=the_plan).expand(shard=mine)
        copied >> verified >> caught_up
    shards >> caught_up
    cut_proposal = propose_cutover(the_plan)
    rechecked >> cut_proposal
    approve_cutover = PolicyApprovalOperator(task_id="approve_cutover", step="cutover",
                                             proposal_task_id="propose_cutover", retries=0)
    cut = cutover(the_plan)
    cut_proposal >> approve_cutover >> freeze(the_plan) >> final_pass(the_plan) >> cut
    unfrozen = unfreeze(the_plan)
    cut >> unfrozen
    revoke_proposal = propose_revoke(the_plan)
    cut >> revoke_proposal
    unfrozen >> revoke_proposal  # both edit source bucket policies: never at the same time
    approve_revoke = PolicyApprovalOperator(task_id="approve_revoke", step="revoke",
                                            proposal_task_id="propose_revoke", retries=0)
    revoked = revoke(the_plan)
    revoke_proposal >> approve_revoke >> revoked
    attested = attest(the_plan)
    revoked >> attested
    unfrozen >> attested
    report = evidence(the_plan)
    attested >> report
    check_complete(report)


dag = residency_migration()
