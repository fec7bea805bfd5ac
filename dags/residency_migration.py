"""
# Data residency migration

Moves the media objects named by a **policy file** from overseas buckets to
domestic storage, proves every object arrived intact, repoints the application
database at the new copies, revokes the foreign party's credentials, and writes
an evidence report for auditors.

| task | what it does |
|---|---|
| `plan` | validates the params and the policy before any work (a bad field fails here, naming it) |
| `preflight` | every bucket reachable; region -> jurisdiction; refuses a destination outside the home jurisdiction |
| `inventory` | lists sources page by page, selects media, records each object in the ledger, writes manifest shards |
| `copy_shard` | one mapped instance per shard: server-side copy (multipart above the threshold), resumable |
| `verify_shard` | one mapped instance per shard: a checksum both sides truly have, or a read-back |
| `cutover` | rewrites references to verified objects, journaled; counts residual references |
| `revoke` | deactivates and deletes the foreign access keys; proves denial with the old key |
| `evidence` | `evidence.json`, `evidence.html`, `audit.jsonl`, `objects.jsonl` |
| `check_complete` | fails the run, with counts, unless everything verified and every key is denied |

Re-running is safe: the ledger remembers each object, so a re-run copies
nothing twice and resumes where the last one stopped. `dry_run` inventories and
reports what would happen without copying, rewriting or revoking.

Engine: `include/residency` (no Airflow inside). Docs: README.md.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

DEFAULT_POLICY = os.environ.get("RESIDENCY_POLICY", "/opt/airflow/include/policies/example.yaml")


def _runtime(plan):
    from residency.connections import credentials
    from residency.pipeline import Runtime

    return Runtime(plan, credentials)


def _run_info() -> dict:
    ctx = get_current_context()
    dag_run = ctx["dag_run"]
    return {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        "logical_date": str(ctx.get("logical_date") or ""),
        "run_after": str(getattr(dag_run, "run_after", "") or ""),
    }


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
        from residency.pipeline import plan_run

        ctx = get_current_context()
        return plan_run(ctx["params"], _run_info())

    @task
    def preflight(plan: dict) -> dict:
        from residency.pipeline import preflight as run

        return run(_runtime(plan))["placements"]

    @task
    def inventory(plan: dict, placements: dict) -> list[dict]:
        from residency.pipeline import run_inventory

        return run_inventory(_runtime(plan), placements)["shards"]

    @task(map_index_template="{{ shard_label }}")
    def copy_shard(plan: dict, shard: dict) -> dict:
        from residency.pipeline import copy_shard as run, shard_label

        get_current_context()["shard_label"] = shard_label(shard)
        return run(_runtime(plan), shard)

    @task(map_index_template="{{ shard_label }}")
    def verify_shard(plan: dict, shard: dict) -> dict:
        from residency.pipeline import shard_label, verify_shard as run

        get_current_context()["shard_label"] = shard_label(shard)
        return run(_runtime(plan), shard)

    @task
    def cutover(plan: dict) -> dict:
        from residency.pipeline import cutover as run

        return run(_runtime(plan))

    @task
    def revoke(plan: dict) -> dict:
        from residency.pipeline import revoke as run

        return run(_runtime(plan))

    @task(trigger_rule="all_done_min_one_success", retries=0)
    def evidence(plan: dict) -> dict:
        from residency.pipeline import write_evidence

        return write_evidence(_runtime(plan), _run_info())

    @task(retries=0)
    def check_complete(report: dict) -> None:
        if not report["complete"]:
            raise RuntimeError(
                "migration not complete: " + "; ".join(report["problems"]) + f" (evidence: {report['evidence_json']})"
            )

    the_plan = plan()
    shards = inventory(the_plan, preflight(the_plan))
    copied = copy_shard.partial(plan=the_plan).expand(shard=shards)
    verified = verify_shard.partial(plan=the_plan).expand(shard=shards)
    copied >> verified
    cut = cutover(the_plan)
    verified >> cut
    revoked = revoke(the_plan)
    cut >> revoked
    report = evidence(the_plan)
    revoked >> report
    check_complete(report)


dag = residency_migration()
