"""Airflow glue shared by the DAG files, kept out of the engine.

The engine (``include/residency``) imports no Airflow except its ``connections``
module; the few things every DAG task needs from Airflow live here: the facts of
the running DAG run, and turning an error no retry can fix into an immediate
failure (``AirflowFailException``) instead of a retry that would only repeat it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

log = logging.getLogger(__name__)

#: The Airflow connection (type http: host = the API server's base URL, login and
#: password of a user allowed to edit DAG runs) through which a task sets its run's note.
NOTE_CONN_ID = "residency_airflow_api"


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
        **executor_facts(),
    }


#: Executors whose tasks all run on the scheduler's machine.
LOCAL_EXECUTORS = ("LocalExecutor", "SequentialExecutor", "DebugExecutor")


def executor_facts() -> dict[str, Any]:
    """What the engine must know of this Airflow: whether tasks run on several
    machines (then the ledger must be a shared database, never a SQLite file), and
    the most mapped task instances a task may have (``[core] max_map_length``)."""
    import os

    from airflow.configuration import conf

    executors = [e.strip().split(":")[-1].rsplit(".", 1)[-1] for e in conf.get("core", "executor").split(",")]
    distributed = os.environ.get("RESIDENCY_DISTRIBUTED", "").lower() in ("1", "true", "yes") or any(
        e and e not in LOCAL_EXECUTORS for e in executors
    )
    return {"executor": ",".join(executors), "distributed": distributed,
            "max_map_length": conf.getint("core", "max_map_length", fallback=1024)}


def runtime(plan: dict[str, Any]) -> Any:
    """The engine's Runtime for a task: the policy, the ledger, stores from Airflow connections.

    The task's log lines from the engine are tagged with the migration and the run
    (:mod:`residency.logcontext`): one task runs in one process.
    """
    from residency import logcontext
    from residency.connections import credentials
    from residency.pipeline import Runtime

    rt = Runtime(plan, credentials)
    logcontext.bind(migration=rt.policy.migration_id, run=rt.run_id)
    return rt


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


def set_run_note(text: str) -> bool:
    """Put ``text`` on the running DAG run as its note, so the reason a run failed is
    visible on the run itself in the UI, not only in a task log.

    Airflow 3's task SDK cannot write a note, so this goes through the REST API
    with the connection :data:`NOTE_CONN_ID`; without it (or on any error) the note
    is not set, one WARNING line says why, and the caller goes on. Returns whether
    the note was set. The token and password are never logged.
    """
    import requests
    from airflow.sdk import Connection, get_current_context

    dag_run = get_current_context()["dag_run"]
    try:
        conn = Connection.get(NOTE_CONN_ID)
    except Exception as exc:  # noqa: BLE001 - a missing connection must not fail the task
        log.warning("run note not set: no connection %r (%s)", NOTE_CONN_ID, type(exc).__name__)
        return False
    host = conn.host or ""
    base = host if "://" in host else f"{conn.schema or 'http'}://{host}{f':{conn.port}' if conn.port else ''}"
    base = base.rstrip("/")
    try:
        token = requests.post(f"{base}/auth/token", json={"username": conn.login, "password": conn.password},
                              timeout=10)
        token.raise_for_status()
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        resp = requests.patch(f"{base}/api/v2/dags/{dag_run.dag_id}/dagRuns/{dag_run.run_id}",
                              params={"update_mask": "note"}, json={"note": text[:1000]}, headers=headers, timeout=10)
        resp.raise_for_status()
    except Exception as exc:  # noqa: BLE001
        status = getattr(getattr(exc, "response", None), "status_code", None)
        log.warning("run note not set through %s: %s%s", base, type(exc).__name__, f" (HTTP {status})" if status else "")
        return False
    log.info("run note set: %s", text[:200])
    return True
