"""Human-in-the-loop approval of the irreversible steps (cutover, revocation, rollback).

:class:`PolicyApprovalOperator` is Airflow 3's ``ApprovalOperator`` configured at
run time from the run's policy (the policy file is a run param, so who may approve
and how long to wait cannot be fixed when the DAG is parsed): the body is the
proposal the previous task computed (what approving will do, in Markdown), the
assigned users are the policy's approvers, and a timeout counts as a rejection.
On Airflow 3.3 the task then waits in ``awaiting_input`` until someone answers in
the UI (Required actions) or through the REST API (``.../hitlDetails``).

Every answer is recorded in the ledger and the audit chain before Airflow acts
on it (approve: the step runs; reject or timeout: downstream steps are skipped),
and the engine's irreversible steps refuse to act without a recorded approval of
their own run. A dry run changes nothing, so it asks nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param

from . import runtime

log = logging.getLogger(__name__)


class PolicyApprovalOperator(ApprovalOperator):
    """Wait for an approval of ``step``; see the module docstring.

    Args:
        step: ``cutover``, ``revoke`` or ``rollback`` (one of ``policy.APPROVAL_STEPS``;
            the policy's ``approvals`` section names approvers and a timeout per step).
        proposal_task_id: the task whose XCom holds the proposal (``markdown``).
        plan_task_id: the task whose XCom holds the run's plan.
    """

    def __init__(self, *, step: str, proposal_task_id: str, plan_task_id: str = "plan", **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's params (passed down by Airflow) are not form fields of the approval
        super().__init__(
            subject=f"Approve the {step} of the residency migration",
            body="The proposal is computed when the run reaches this step.",
            defaults=["Reject"],  # what a timeout chooses
            params={"comment": Param("", type="string", title="Comment",
                                     description="Why you approve or reject; kept in the audit log and the evidence.")},
            **kwargs,
        )
        self.step = step
        self.proposal_task_id = proposal_task_id
        self.plan_task_id = plan_task_id

    def execute(self, context: Any) -> Any:
        ti = context["ti"]
        plan = ti.xcom_pull(task_ids=self.plan_task_id)
        if plan.get("dry_run"):
            log.info("dry run: nothing irreversible will happen, so the %s asks no approval", self.step)
            return {"dry_run": True, "chosen_options": [], "step": self.step}
        proposal = ti.xcom_pull(task_ids=self.proposal_task_id) or {}
        rule = runtime(plan).policy.approvals[self.step]
        self.subject = f"Approve the {self.step} of migration {plan['migration_id']}"
        self.body = proposal.get("markdown") or self.body
        if rule.approvers:
            self.assigned_users = [{"id": user, "name": user} for user in rule.approvers]
        if rule.timeout_hours:
            self.response_timeout = dt.timedelta(hours=rule.timeout_hours)
        log.info(
            "waiting for an approval of the %s of %s by %s%s", self.step, plan["migration_id"],
            ", ".join(rule.approvers) or "any user allowed to answer",
            f" within {rule.timeout_hours} hours (then it counts as rejected)" if rule.timeout_hours else "",
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from residency.pipeline import record_approval

        plan = context["ti"].xcom_pull(task_ids=self.plan_task_id)
        response = {} if "error" in event else event
        record_approval(runtime(plan), self.step, response)
        return super().execute_complete(context=context, event=event)
