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

from residency_airflow.steps import approved_step_dag

dag = approved_step_dag(
    dag_id="residency_purge", doc_md=__doc__, tags=["residency", "purge"], step="purge",
    module="residency.purge_phase", plan="plan_purge", propose="propose_purge", act="purge",
    dry_run_help="Report what the purge would delete; delete nothing.", nothing_changed="nothing was deleted",
)
