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

from residency_airflow.steps import approved_step_dag

dag = approved_step_dag(
    dag_id="residency_revoke", doc_md=__doc__, tags=["residency", "revocation", "security"], step="revoke",
    module="residency.revoke_phase", plan="plan_revoke", propose="propose", act="revoke",
    dry_run_help="List every access path that would change; change nothing.", nothing_changed="nothing was changed",
)
