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

from airflow.sdk import Param

from residency_airflow.steps import approved_step_dag

dag = approved_step_dag(
    dag_id="residency_rollback", doc_md=__doc__, tags=["residency", "rollback", "references"], step="rollback",
    module="residency.rollback_phase", plan="plan_rollback", propose="propose_rollback", act="rollback",
    dry_run_help="Report what the rollback would restore; change nothing.", nothing_changed="nothing was changed",
    params={"table": Param("", type="string", title="Application table",
                           description="Roll back the cells of this table only (one of references.columns); "
                                       "empty: every table.")},
)
