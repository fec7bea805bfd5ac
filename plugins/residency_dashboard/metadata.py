"""What the dashboard reads from Airflow's own metadata (inside the API server, through the ORM).

Two things the migration ledger cannot know: whether the DAG run is still going
(``dag_run.state``), and which human-in-the-loop requests wait for an answer
(``hitl_detail`` rows without a response, on task instances parked in
``awaiting_input``). Both are small indexed lookups by run id, limited to the
DAGs the user may read; without a DAG id, to the DAGs tagged ``residency``.

Every function here takes the request's session and never raises for a database
problem: it answers ``None`` and the page says that Airflow's metadata could not
be read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

#: The tag every residency DAG carries (the DAG integrity test requires tags).
RESIDENCY_TAG = "residency"
LIVE_STATES = frozenset({"queued", "running"})
#: A human-in-the-loop task waiting for its answer (``deferred``: the trigger-based HITL of older releases).
WAITING_TI_STATES = ("awaiting_input", "deferred")


@dataclass(frozen=True)
class DagRunInfo:
    """A DAG run as Airflow records it."""

    dag_id: str
    run_id: str
    state: str | None
    policy_path: str | None  # the run's ``policy_path`` param, when given at trigger time

    @property
    def live(self) -> bool:
        return (self.state or "") in LIVE_STATES


def readable_dag_ids(user: Any) -> set[str]:
    """The DAG ids the user may read, as the auth manager says."""
    from airflow.api_fastapi.app import get_auth_manager

    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def candidate_dag_ids(session: Session, readable: Iterable[str], dag_id: str | None = None) -> set[str]:
    """``{dag_id}`` when given, else the DAGs tagged ``residency``; only those the user may read."""
    from airflow.models.dag import DagTag

    readable = set(readable)
    if dag_id is not None:
        return {dag_id} & readable
    tagged = set(session.scalars(select(DagTag.dag_id).where(DagTag.name == RESIDENCY_TAG)))
    return tagged & readable


def dag_runs(session: Session, run_id: str, dag_ids: Iterable[str]) -> list[DagRunInfo] | None:
    """The runs with this run id among ``dag_ids`` (normally one); ``None`` when unreadable."""
    from airflow.models.dagrun import DagRun

    dag_ids = sorted(set(dag_ids))
    if not dag_ids:
        return []
    try:
        rows = session.execute(
            select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.conf)
            .where(DagRun.run_id == run_id).where(DagRun.dag_id.in_(dag_ids))
        ).all()
    except SQLAlchemyError as exc:
        _failed(session, "DAG runs", exc)
        return None
    out = []
    for dag_id, rid, state, conf in rows:
        policy = (conf or {}).get("policy_path") if isinstance(conf, dict) else None
        out.append(DagRunInfo(dag_id=dag_id, run_id=rid, state=_text(state),
                              policy_path=policy if isinstance(policy, str) else None))
    return out


def pending_requests(session: Session, run_id: str, dag_ids: Iterable[str]) -> list[dict[str, Any]] | None:
    """Human-in-the-loop requests of this run still waiting for an answer; ``None`` when unreadable.

    Returns:
        Dicts with ``dag_id``, ``run_id``, ``task_id``, ``map_index``, ``subject``,
        ``created_at`` (ISO), ``assignees`` (names) and ``ti_state``, oldest first.
    """
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance

    dag_ids = sorted(set(dag_ids))
    if not dag_ids:
        return []
    try:
        rows = session.execute(
            select(HITLDetail.subject, HITLDetail.created_at, HITLDetail.assignees, TaskInstance.dag_id,
                   TaskInstance.run_id, TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state)
            .join(TaskInstance, HITLDetail.ti_id == TaskInstance.id)
            .where(TaskInstance.run_id == run_id).where(TaskInstance.dag_id.in_(dag_ids))
            .where(HITLDetail.responded_at.is_(None))
            .where(TaskInstance.state.in_(WAITING_TI_STATES))
            .order_by(HITLDetail.created_at)
        ).all()
    except SQLAlchemyError as exc:
        _failed(session, "human-in-the-loop requests", exc)
        return None
    return [
        {
            "dag_id": r.dag_id, "run_id": r.run_id, "task_id": r.task_id, "map_index": r.map_index,
            "subject": r.subject, "created_at": r.created_at.isoformat() if r.created_at else None,
            "assignees": [a.get("name") or a.get("id") for a in (r.assignees or []) if isinstance(a, dict)],
            "ti_state": _text(r.state),
        }
        for r in rows
    ]


def _text(state: Any) -> str | None:
    """A state enum or string as its plain value."""
    return None if state is None else str(getattr(state, "value", state))


def _failed(session: Session, what: str, exc: SQLAlchemyError) -> None:
    from .sources import describe_error

    log.warning("residency dashboard: cannot read %s from Airflow's metadata: %s", what, describe_error(exc))
    try:
        session.rollback()
    except SQLAlchemyError:  # the session is closed by its dependency anyway
        pass
