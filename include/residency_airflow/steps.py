"""One shape for the DAGs of a single irreversible step behind its own approval.

``residency_rollback``, ``residency_revoke`` and ``residency_purge`` are each:
``plan`` (validate the params and the policy before any work) -> ``propose_<step>``
(a dry run, shown to the approver) -> ``approve_<step>`` (a human, policy
``approvals.<step>``) -> ``<step>`` (refuses without this run's approval) ->
``evidence`` (written after a rejection or a failure too) -> ``check_complete``
(the verdict on the run's note; fails the run unless it is the success verdict).

The engine module of a step (``residency.<step>_phase``) provides the five
functions; the DAG file gives its documentation and any extra params.
"""

from __future__ import annotations

import importlib
import os
from datetime import timedelta
from typing import Any, Callable, Mapping

from . import fail_fast, run_info, runtime, set_run_note

DEFAULT_POLICY = os.environ.get("RESIDENCY_POLICY", "/opt/airflow/include/policies/example.yaml")


def _engine(module: str, name: str) -> Callable[..., Any]:
    """The engine function, imported when the task runs (the DAG file parses without the engine)."""
    return getattr(importlib.import_module(module), name)


def approved_step_dag(
    *, dag_id: str, doc_md: str, tags: list[str], step: str, module: str, plan: str, propose: str, act: str,
    dry_run_help: str, nothing_changed: str, params: Mapping[str, Any] | None = None,
) -> Any:
    """Build the DAG of one approved step.

    Args:
        step: the approval step (``approvals.<step>`` in the policy) and the acting task's id.
        module: the engine module with ``plan``, ``propose``, ``act``, ``write_evidence(rt, run)``
            and ``run_note(report)``.
        nothing_changed: what the evidence task says when the plan failed ("nothing was deleted").
        params: params between ``policy_path`` and ``dry_run`` (e.g. the rollback's ``table``).
    """
    from airflow.sdk import Param, dag, get_current_context, task

    from .approvals import PolicyApprovalOperator

    all_params = {
        "policy_path": Param(DEFAULT_POLICY, type="string", minLength=1, title="Policy file",
                             description="Path of the migration policy YAML on the workers."),
        **dict(params or {}),
        "dry_run": Param(False, type="boolean", title="Dry run", description=dry_run_help),
        "evidence_dir": Param("", type="string", title="Evidence folder",
                              description=f"Where {step}-evidence.json/.html go; empty: "
                                          f"<control folder>/<migration>/{step}/<run>."),
    }

    @dag(dag_id=dag_id, schedule=None, catchup=False, max_active_runs=1, doc_md=doc_md, tags=tags,
         default_args={"retries": 1, "retry_delay": timedelta(seconds=15), "owner": "platform"},
         params=all_params, render_template_as_native_obj=False)
    def build() -> None:
        @task(task_id="plan", retries=0)
        def plan_task() -> dict:
            from residency.connections import credentials

            with fail_fast():
                return _engine(module, plan)(get_current_context()["params"], run_info(), credentials)

        @task(task_id=f"propose_{step}")
        def propose_task(the_plan: dict) -> dict:
            with fail_fast():
                return _engine(module, propose)(runtime(the_plan))

        @task(task_id=step)
        def act_task(the_plan: dict) -> dict:
            with fail_fast():
                return _engine(module, act)(runtime(the_plan))

        # After a rejection (the step is skipped) or a failure too: the evidence says so.
        @task(trigger_rule="all_done", retries=0)
        def evidence() -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            the_plan = get_current_context()["ti"].xcom_pull(task_ids="plan")
            if not the_plan:
                raise AirflowFailException(f"no {step} evidence: the plan task failed (its log names the field); "
                                           f"{nothing_changed}")
            return _engine(module, "write_evidence")(runtime(the_plan), run_info())

        @task(retries=0)
        def check_complete(report: dict) -> None:
            from airflow.sdk.exceptions import AirflowFailException

            note, ok = _engine(module, "run_note")(report)
            set_run_note(note)
            if not ok:
                raise AirflowFailException(note)

        the_plan = plan_task()
        proposal = propose_task(the_plan)
        approve = PolicyApprovalOperator(task_id=f"approve_{step}", step=step,
                                         proposal_task_id=f"propose_{step}", retries=0)
        acted = act_task(the_plan)
        proposal >> approve >> acted
        report = evidence()
        [the_plan, acted] >> report
        check_complete(report)

    return build()
