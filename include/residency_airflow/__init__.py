"""Airflow glue shared by the DAG files, kept out of the engine.

The engine (``include/residency``) imports no Airflow except its ``connections``
module; the few things every DAG task needs from Airflow live here: the facts of
the running DAG run, and turning an error no retry can fix into an immediate
failure (``AirflowFailException``) instead of a retry that would only repeat it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


def run_info() -> dict[str, Any]:
    """The running DAG run's identifiers, for the ledger and the evidence."""
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    dag_run = ctx["dag_run"]
    return {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        "logical_date": str(ctx.get("logical_date") or ""),
        "run_after": str(getattr(dag_run, "run_after", "") or ""),
    }


def runtime(plan: dict[str, Any]) -> Any:
    """The engine's Runtime for a task: the policy, the ledger, stores from Airflow connections."""
    from residency.connections import credentials
    from residency.pipeline import Runtime

    return Runtime(plan, credentials)


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Re-raise the engine's permanent errors (``permanent = True``: a policy error,
    a missing key the policy names, a preflight refusal, a credential still
    working after revocation) as ``AirflowFailException``, so the task fails at
    once without Airflow retries; everything else keeps the task's retries."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except Exception as exc:
        if getattr(exc, "permanent", False):
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        raise
