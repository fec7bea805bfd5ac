"""The dashboard's FastAPI app, mounted by Airflow's API server at ``/residency``.

Routes (every one needs an authenticated Airflow user, see :data:`AUTHENTICATED`):

=========================================================  ==========================================
``GET /``                                                  all migrations (the navigation's view)
``GET /migrations/{migration_id}?run_id=``                 one migration, one run (default: the latest)
``GET /runs/{dag_id}/{run_id}``                            the migration of a DAG run (the DAG run's tab)
``GET /migrations/{migration_id}/evidence/{file}``         a file of the evidence folder the evidence
                                                           phase recorded (``evidence.json``, ...)
``GET /api/migrations``                                    the list as JSON
``GET /api/migrations/{migration_id}?run_id=``             one migration as JSON
``GET /api/runs/{dag_id}/{run_id}``                        a DAG run's migration as JSON
=========================================================  ==========================================

Authentication is the API server's own: :func:`airflow.api_fastapi.core_api.security.get_user`
accepts the ``Authorization: Bearer`` token of API clients and the ``_token``
cookie the UI's login sets, so a browser logged in to Airflow sees the pages and
an anonymous request gets 401. Reading needs DAG-run read access: to
``residency_migration`` (the migrations are its runs), or for the run routes to
the DAG in the path.
"""

from __future__ import annotations

import functools
import logging
import mimetypes
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

import jinja2
import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from sqlalchemy.orm import Session

from residency import progress

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag, requires_authenticated

from . import chart, metadata, view
from .catalogue import Dashboard, Migration
from .sources import describe_error
from residency.evidence.html import num, size, yes

log = logging.getLogger(__name__)

#: Where Airflow mounts the app (the plugin's ``url_prefix``).
MOUNT_PREFIX = "/residency"
#: The DAG whose runs are the migrations (DESIGN: "The main DAG id is residency_migration").
MAIN_DAG_ID = "residency_migration"

#: Every route: a user authenticated by the API server's own dependency (anonymous -> 401).
AUTHENTICATED = Depends(requires_authenticated())
#: Reading migrations: read access to the runs of the main DAG.
READ_MIGRATIONS = Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=MAIN_DAG_ID))
#: Reading a DAG run's migration: read access to the runs of the DAG in the path.
READ_DAG_RUN = Depends(requires_access_dag("GET", DagAccessEntity.RUN))

#: The pages run nothing and load nothing: styles are inline, the chart is inline SVG.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "frame-ancestors 'self'; form-action 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}
_TEMPLATES = Path(__file__).with_name("templates")
_MEDIA_TYPES = {".json": "application/json", ".html": "text/html; charset=utf-8", ".jsonl": "application/x-ndjson",
                ".txt": "text/plain; charset=utf-8"}


def create_app(dashboard: Dashboard | None = None) -> FastAPI:
    """The dashboard app.

    Args:
        dashboard: the read side (default: policies from the environment).
    """
    board = dashboard or Dashboard()
    # No /docs or /openapi.json: FastAPI would serve them without authentication.
    app = FastAPI(title="Data residency dashboard", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[AUTHENTICATED])
    app.state.dashboard = board

    @app.get("/", name="index", response_class=HTMLResponse, dependencies=[READ_MIGRATIONS])
    def index(request: Request) -> HTMLResponse:
        """All migrations of every configured ledger, and the policies that did not load."""
        return _html(request, "index.html.j2", **_listing(board))

    @app.get("/api/migrations", name="api_migrations", dependencies=[READ_MIGRATIONS])
    def api_migrations() -> JSONResponse:
        listing = _listing(board)
        return _json({
            "configured": listing["configured"],
            "migrations": [
                {"migration_id": row["migration"].migration_id, "ledger": row["migration"].ledger_label,
                 "policies": list(row["migration"].policies), "last_at": row["migration"].last_at,
                 "phases_recorded": row["migration"].phases, **row["summary"], "error": row["error"]}
                for row in listing["rows"]
            ],
            "errors": [{"policy": e.policy, "ledger": e.ledger, "error": e.error} for e in listing["errors"]],
        })

    @app.get("/migrations/{migration_id}", name="migration", response_class=HTMLResponse,
             dependencies=[READ_MIGRATIONS])
    def migration_page(request: Request, migration_id: str, user: GetUserDep, session: SessionDep,
                       run_id: str | None = None) -> HTMLResponse:
        """One migration; ``run_id`` picks the run whose phases and progress are shown."""
        migration = _find(board, migration_id)
        return _page(request, board, migration, run_id=run_id, user=user, session=session)

    @app.get("/api/migrations/{migration_id}", name="api_migration", dependencies=[READ_MIGRATIONS])
    def api_migration(migration_id: str, user: GetUserDep, session: SessionDep,
                      run_id: str | None = None) -> JSONResponse:
        migration = _find(board, migration_id)
        return _json(_payload(_gather(board, migration, run_id=run_id, user=user, session=session)))

    @app.get("/runs/{dag_id}/{run_id:path}", name="run", response_class=HTMLResponse, dependencies=[READ_DAG_RUN])
    def run_page(request: Request, dag_id: str, run_id: str, user: GetUserDep, session: SessionDep) -> HTMLResponse:
        """The migration a DAG run works on (the DAG run page's tab)."""
        migration, dag_run = _run_migration(board, dag_id, run_id, user, session)
        if migration is None:
            return _html(request, "run_missing.html.j2", status_code=200, dag_id=dag_id, run_id=run_id,
                         dag_run=dag_run, live=bool(dag_run and dag_run.live), configured=board.configured(),
                         migrations=board.catalogue().migrations)
        return _page(request, board, migration, run_id=run_id, user=user, session=session, dag_id=dag_id)

    @app.get("/api/runs/{dag_id}/{run_id:path}", name="api_run", dependencies=[READ_DAG_RUN])
    def api_run(dag_id: str, run_id: str, user: GetUserDep, session: SessionDep) -> JSONResponse:
        migration, _ = _run_migration(board, dag_id, run_id, user, session)
        if migration is None:
            raise HTTPException(404, f"no configured ledger recorded run {run_id!r} of {dag_id!r}")
        return _json(_payload(_gather(board, migration, run_id=run_id, user=user, session=session, dag_id=dag_id)))

    @app.get("/migrations/{migration_id}/evidence/{name:path}", name="evidence_file", dependencies=[READ_MIGRATIONS])
    def evidence_file(migration_id: str, name: str) -> FileResponse:
        """A file of the evidence folder the migration's latest evidence phase recorded.

        Refuses (403) any name that resolves outside that folder (``..``, an absolute
        path, a symbolic link out of it); 404 when there is no such file.
        """
        migration = _find(board, migration_id)
        status = _status(board, migration, None)
        evidence = (status or {}).get("evidence") or {}
        recorded = evidence.get("evidence_json") or evidence.get("evidence_html")
        if not recorded:
            raise HTTPException(404, "no evidence recorded for this migration yet")
        folder = Path(recorded).parent.resolve()
        target = (folder / name).resolve()
        if target == folder or not target.is_relative_to(folder):
            log.warning("residency dashboard: refused evidence path %r of %s (outside %s)", name, migration_id, folder)
            raise HTTPException(403, "only files of the evidence folder are served")
        if not target.is_file():
            raise HTTPException(404, f"{name} is not in the evidence folder (or not readable by the API server)")
        media_type = (_MEDIA_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
                      or "application/octet-stream")
        return FileResponse(target, media_type=media_type, headers=SECURITY_HEADERS)

    return app


@functools.cache
def get_app() -> FastAPI:
    """The app the plugin mounts: one per process, policies from the environment."""
    return create_app()


# -- reading ---------------------------------------------------------------------
def _find(board: Dashboard, migration_id: str) -> Migration:
    migration = board.catalogue().find(migration_id)
    if migration is None:
        raise HTTPException(404, f"no configured policy or ledger knows migration {migration_id!r}")
    return migration


def _status(board: Dashboard, migration: Migration, run_id: str | None) -> dict[str, Any] | None:
    try:
        return board.status(migration, run_id)
    except sa.exc.SQLAlchemyError as exc:
        reason = describe_error(exc, _password(migration.ledger_url))
        log.warning("residency dashboard: ledger %s unreadable for %s: %s", migration.ledger_label,
                    migration.migration_id, reason)
        raise HTTPException(503, f"the ledger {migration.ledger_label} cannot be read: {reason}") from None


def _listing(board: Dashboard) -> dict[str, Any]:
    catalogue = board.catalogue()
    rows = []
    for migration in catalogue.migrations:
        error = None
        status = None
        try:
            status = board.status(migration) if migration.started else None
        except sa.exc.SQLAlchemyError as exc:
            error = f"the ledger cannot be read: {describe_error(exc, _password(migration.ledger_url))}"
        rows.append({"migration": migration, "summary": view.summary(status), "error": error})
    return {"configured": board.configured(), "rows": rows, "errors": catalogue.errors}


def _airflow_side(user: Any, session: Session, run_id: str | None, dag_id: str | None
                  ) -> tuple[metadata.DagRunInfo | None, list[dict[str, Any]], str | None]:
    """The DAG run and its waiting approvals from Airflow's metadata, or why they could not be read."""
    if not run_id:
        return None, [], None
    try:
        dag_ids = metadata.candidate_dag_ids(session, metadata.readable_dag_ids(user), dag_id)
    except Exception as exc:  # noqa: BLE001 - the ledger's part of the page must survive Airflow's
        log.warning("residency dashboard: cannot read Airflow's metadata: %s", describe_error(exc))
        session.rollback()  # the session dependency commits when the request ends
        return None, [], describe_error(exc)
    runs = metadata.dag_runs(session, run_id, dag_ids)
    pending = metadata.pending_requests(session, run_id, dag_ids)
    if runs is None or pending is None:
        return None, pending or [], "Airflow's metadata could not be read (see the API server's log)"
    dag_run = next((r for r in runs if r.dag_id == (dag_id or MAIN_DAG_ID)), runs[0] if runs else None)
    return dag_run, pending, None


def _run_migration(board: Dashboard, dag_id: str, run_id: str, user: Any, session: Session
                   ) -> tuple[Migration | None, metadata.DagRunInfo | None]:
    dag_run, _, _ = _airflow_side(user, session, run_id, dag_id)
    return board.find_run(run_id, dag_run.policy_path if dag_run else None), dag_run


def _gather(board: Dashboard, migration: Migration, *, run_id: str | None, user: Any, session: Session,
            dag_id: str | None = None) -> dict[str, Any]:
    """Everything one migration page shows, from the ledger and from Airflow."""
    status = _status(board, migration, run_id)
    effective_run = (status or {}).get("run_id") or run_id
    dag_run, pending, meta_error = _airflow_side(user, session, effective_run, dag_id)
    live, live_reason = view.liveness(status, dag_run.state if dag_run else None, known=dag_run is not None)
    return {"migration": migration, "status": status, "run_id": effective_run, "dag_run": dag_run,
            "pending": pending, "metadata_error": meta_error, "live": live, "live_reason": live_reason}


def _payload(data: Mapping[str, Any]) -> dict[str, Any]:
    migration: Migration = data["migration"]
    status = data["status"]
    dag_run = data["dag_run"]
    return {
        "migration_id": migration.migration_id,
        "ledger": migration.ledger_label,
        "policies": list(migration.policies),
        "run_id": data["run_id"],
        "dag_run": None if dag_run is None else {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id,
                                                  "state": dag_run.state},
        "live": data["live"],
        "live_reason": data["live_reason"],
        "refresh_seconds": view.REFRESH_SECONDS if data["live"] else None,
        "phases": view.phase_rows(status, live=data["live"], waiting=[a["task_id"] for a in data["pending"]])
        if status else [],
        "pending_approvals": data["pending"],
        "airflow_metadata_error": data["metadata_error"],
        "status": status,
    }


# -- rendering -------------------------------------------------------------------
@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=num, bytes=size, rate=_rate, pct=_pct, when=_when, duration=view.duration, yes=yes)
    env.globals.update(phase_count=len(progress.PHASE_ORDER))
    return env


def _html(request: Request, template: str, *, status_code: int = 200, live: bool = False, **context: Any
          ) -> HTMLResponse:
    links = _Links(request)
    body = _environment().get_template(template).render(
        links=links, live=live, refresh_seconds=view.REFRESH_SECONDS, **context)
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


def _page(request: Request, board: Dashboard, migration: Migration, *, run_id: str | None, user: Any,
          session: Session, dag_id: str | None = None) -> HTMLResponse:
    data = _gather(board, migration, run_id=run_id, user=user, session=session, dag_id=dag_id)
    status = data["status"]
    context: dict[str, Any] = dict(data)
    if status is not None:
        buckets = view.bucket_rows(status)
        context.update(
            phases=view.phase_rows(status, live=data["live"], waiting=[a["task_id"] for a in data["pending"]]),
            buckets=buckets, jurisdictions=view.jurisdiction_rows(buckets), routes=view.route_rows(status),
            total=view.total_row(buckets), eta=view.eta_text(status),
            chart=chart.timeline_svg(status["timeline"], status["totals"]["in_scope"]["objects"]),
            evidence_files=_evidence_files(status.get("evidence")),
        )
    return _html(request, "migration.html.j2", **context)


def _evidence_files(evidence: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The evidence files recorded, each with whether the API server can read it."""
    files = []
    for key in ("evidence_html", "evidence_json"):
        path = (evidence or {}).get(key)
        if path:
            files.append({"name": Path(path).name, "path": path, "readable": Path(path).is_file()})
    return files


class _Links:
    """URLs for the pages: the app's own under its mount point, Airflow's UI under Airflow's root.

    Starlette's ``Mount`` gives a mounted app ``root_path`` = Airflow's root path +
    ``/residency`` and ``app_root_path`` = Airflow's root path (empty unless Airflow
    is served under a sub-path), so links stay right behind a prefix.
    """

    def __init__(self, request: Request) -> None:
        self.app = request.scope.get("root_path", "").rstrip("/")
        self.airflow = request.scope.get("app_root_path", "").rstrip("/")

    def index(self) -> str:
        return f"{self.app}/"

    def migration(self, migration_id: str, run_id: str | None = None) -> str:
        url = f"{self.app}/migrations/{_q(migration_id)}"
        return f"{url}?run_id={_q(run_id)}" if run_id else url

    def api_migration(self, migration_id: str, run_id: str | None = None) -> str:
        url = f"{self.app}/api/migrations/{_q(migration_id)}"
        return f"{url}?run_id={_q(run_id)}" if run_id else url

    def evidence(self, migration_id: str, name: str) -> str:
        return f"{self.app}/migrations/{_q(migration_id)}/evidence/{_q(name)}"

    def dag_run(self, dag_id: str, run_id: str) -> str:
        return f"{self.airflow}/dags/{_q(dag_id)}/runs/{_q(run_id)}"

    def required_actions(self, request: Mapping[str, Any]) -> str:
        """Airflow's own page to answer a human-in-the-loop request."""
        mapped = f"/mapped/{int(request['map_index'])}" if int(request.get("map_index", -1)) >= 0 else ""
        return (f"{self.dag_run(request['dag_id'], request['run_id'])}/tasks/{_q(request['task_id'])}"
                f"{mapped}/required_actions")


def _q(value: str) -> str:
    return quote(str(value), safe="")


def _json(data: Any) -> JSONResponse:
    return JSONResponse(jsonable_encoder(data), headers={"Cache-Control": "no-store"})


def _password(url: str) -> str | None:
    try:
        return sa.engine.make_url(url).password
    except Exception:  # noqa: BLE001 - nothing to hide in a string that is not a URL
        return None


def _rate(bytes_per_s: Any) -> str:
    """``3.1 MiB/s``: a rate needs no exact byte count."""
    text = size(int(bytes_per_s or 0))
    return f"{text.split(' (')[0]}/s"


def _pct(value: Any) -> str:
    return "—" if value is None else f"{value:.1f}%"


def _when(value: Any) -> str:
    """An ISO timestamp as ``2026-05-01 12:34:56 UTC``."""
    if not value:
        return "—"
    text = str(value).replace("T", " ")
    for cut in ("+00:00", "Z"):
        if text.endswith(cut):
            return text[: -len(cut)].split(".")[0] + " UTC"
    return text.split(".")[0]
