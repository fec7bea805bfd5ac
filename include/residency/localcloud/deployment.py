"""A real local Airflow deployment, started and stopped by the project's own code.

``airflow dags test`` runs a DAG in one process and answers nothing a human
must answer: a human-in-the-loop task (``ApprovalOperator``) parks in state
``awaiting_input`` and only the API server's REST endpoint can resume it. This
module runs the real thing on loopback instead, as child processes of the
caller (no Airflow import here, like :mod:`.dagrun`):

- ``airflow db migrate`` on a fresh metadata database: a PostgreSQL database
  created for the deployment on the machine's server (dropped on stop) or a
  SQLite file under ``home``;
- ``airflow api-server`` (REST API, UI, execution API for the workers),
  ``airflow scheduler`` (LocalExecutor), ``airflow dag-processor`` and
  ``airflow triggerer``, each in its own process group, output to
  ``home/logs/<component>.log``;
- with ``executor="celery"``: the scheduler runs the CeleryExecutor (broker: a
  Redis database of the machine's server claimed for the deployment and flushed;
  result backend: the PostgreSQL metadata database), and ``workers`` Celery
  workers (``airflow celery worker``) run the tasks, each as if on a machine of
  its own: its own ``AIRFLOW_HOME``, working directory, temporary directory and
  task-log folder under ``home/workers/<name>``, its own loopback address
  (``127.0.0.2``, ``127.0.0.3``, ...) as the hostname its task instances report,
  and its own log server on that address, from which the API server fetches its
  task logs as it would from another machine. Only the code (DAGs, plugins,
  ``include/``) is shared;
- Airflow 3's default SimpleAuthManager with three users whose passwords this
  module chooses: ``manager`` (admin), ``demo-approver`` (user: the smallest
  role allowed to answer a human-in-the-loop request) and ``viewer`` (viewer).

:class:`AirflowApi` is a small client of the public REST API (``/api/v2``)
with a JWT from the auth manager's token endpoint.

Example::

    with AirflowDeployment(home, dags_folder=..., plugins_folder=...,
                           env=estate.connection_env(),
                           wait_for_dags=["residency_migration"]) as deployment:
        api = deployment.api("manager")
        run_id = api.trigger("residency_migration", {"policy_path": "..."})
        state = api.wait_for_run("residency_migration", run_id, timeout=600)
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import psutil
import requests

from .servers import free_port

log = logging.getLogger(__name__)

#: Components started after ``airflow db migrate``, in start order.
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: Pools of the migration DAG's copy/verify tasks, per destination provider, and their slots
#: (concurrent copy tasks; each runs ``transfer.workers`` threads). See the README for sizing.
POOLS: dict[str, int] = {"residency_s3": 8, "residency_gcs": 8}
#: Health endpoint keys -> the component whose log explains them.
_HEALTH_KEYS = {
    "metadatabase": "api-server",
    "scheduler": "scheduler",
    "dag_processor": "dag-processor",
    "triggerer": "triggerer",
}
#: SimpleAuthManager users: name -> role. ``user`` is the smallest role that may
#: answer a human-in-the-loop request (PUT on the DAG's HITL detail).
ROLES: dict[str, str] = {"manager": "admin", "demo-approver": "user", "viewer": "viewer"}
METADATA_KINDS = ("auto", "postgresql", "sqlite")
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: Key of the claim a deployment puts in the Redis database it uses as its Celery broker.
_REDIS_CLAIM_KEY = "residency-airflow:deployment"
#: Set in every process of a deployment whose tasks may run on several machines
#: (the engine refuses what only works on one machine, such as a SQLite ledger).
DISTRIBUTED_ENV = "RESIDENCY_DISTRIBUTED"
#: A Celery worker's task runners report this as their hostname (see :func:`worker_hostname`).
WORKER_HOSTNAME_ENV = "RESIDENCY_WORKER_HOSTNAME"
#: Child environment marker: every process of a deployment inherits it, so a
#: process that left its parent's group is still found and stopped.
_MARKER = "RESIDENCY_AIRFLOW_DEPLOYMENT"
_FINAL_STATES = frozenset({"success", "failed"})
#: See :meth:`AirflowApi.pending_approvals`.
APPROVAL_SETTLE_SECONDS = 10.0
_SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


class DeploymentError(RuntimeError):
    """The deployment could not be started (which step, which component, and its log)."""


class AirflowApiError(RuntimeError):
    """The REST API answered 4xx/5xx.

    Attributes:
        status: the HTTP status code.
        method: the HTTP method.
        url: the URL requested.
        body: the response body (at most 2,000 characters).
    """

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        self.method, self.url, self.status, self.body = method, url, status, body[:2000]
        super().__init__(f"{method} {url} -> HTTP {status}: {self.body}")


def postgres_available(host: str = PG_HOST, port: int = PG_PORT, timeout: float = 2.0) -> bool:
    """Whether a PostgreSQL server answers on ``host:port`` as ``postgres`` (trust auth)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
        import psycopg2

        psycopg2.connect(host=host, port=port, user=PG_USER, dbname="postgres", connect_timeout=int(timeout)).close()
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    return True


def _pg_admin() -> Any:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    return conn


def create_database(name: str) -> None:
    """Create an empty PostgreSQL database ``name`` on the machine's server."""
    conn = _pg_admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def drop_database(name: str) -> None:
    """Terminate every connection to PostgreSQL database ``name``, then drop it (no error if missing)."""
    conn = _pg_admin()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def database_exists(name: str) -> bool:
    """Whether PostgreSQL database ``name`` exists on the machine's server."""
    conn = _pg_admin()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def redis_available(host: str = REDIS_HOST, port: int = REDIS_PORT, timeout: float = 2.0) -> bool:
    """Whether a Redis server answers PING on ``host:port`` (no password)."""
    try:
        import redis

        client = redis.Redis(host=host, port=port, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


def worker_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` for the Celery workers of a deployment.

    Several workers share this machine; each is given its own loopback address in
    :data:`WORKER_HOSTNAME_ENV`, so its task instances report a hostname of their
    own, and the API server fetches their logs from that worker's log server.
    """
    return os.environ.get(WORKER_HOSTNAME_ENV) or socket.getfqdn()


# Atomic in Redis: claim an empty database, take over the claim of a dead owner
# (flushing what it left), release one's own claim (flushing everything).
_CLAIM_EMPTY = "if redis.call('DBSIZE') == 0 then redis.call('SET', KEYS[1], ARGV[1]) return 1 end return 0"
_TAKE_OVER = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('FLUSHDB') "
              "redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0")
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('FLUSHDB') return 1 end return 0"


def _redis(db: int) -> Any:
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=5, socket_timeout=10)


def _claim_owner_alive(claim: bytes | None) -> bool:
    """Whether the process that wrote a Redis claim is still running (on this machine)."""
    try:
        owner = json.loads(claim or b"{}")
        return _create_time(int(owner["pid"])) == owner["created"]
    except (ValueError, KeyError, TypeError):
        return True  # not a claim we can judge: leave it alone


def claim_redis_db(claim: str) -> int:
    """Claim a Redis database of the machine's server for one deployment's Celery broker.

    Databases 1.. are tried in order (0 is left to others): an empty one is
    claimed by writing ``claim`` into it; one whose claim was written by a process
    that is no longer running is flushed and taken over. A database holding
    anything else is never touched.

    Returns:
        The database number, empty but for the claim.

    Raises:
        DeploymentError: Redis does not answer, or every database is in use.
    """
    try:
        admin = _redis(0)
        try:
            count = int(admin.config_get("databases").get("databases", 16))
        except Exception:  # noqa: BLE001 - CONFIG may be disabled: assume the default
            count = 16
        finally:
            admin.close()
        for db in range(1, count):
            client = _redis(db)
            try:
                if client.eval(_CLAIM_EMPTY, 1, _REDIS_CLAIM_KEY, claim):
                    return db
                held = client.get(_REDIS_CLAIM_KEY)
                if held is not None and not _claim_owner_alive(held):
                    if client.eval(_TAKE_OVER, 1, _REDIS_CLAIM_KEY, held, claim):
                        log.warning("took over Redis db %s from a deployment that is gone: %s", db, held.decode())
                        return db
            finally:
                client.close()
    except DeploymentError:
        raise
    except Exception as exc:
        raise DeploymentError(f"Redis at {REDIS_HOST}:{REDIS_PORT} cannot be used as the Celery broker: {exc}") from exc
    raise DeploymentError(f"every Redis database 1..{count - 1} on {REDIS_HOST}:{REDIS_PORT} is in use")


def release_redis_db(db: int, claim: str) -> bool:
    """Flush Redis database ``db`` if ``claim`` still holds it; whether it did."""
    client = _redis(db)
    try:
        return bool(client.eval(_RELEASE, 1, _REDIS_CLAIM_KEY, claim))
    finally:
        client.close()


def _port_free_on(port: int, hosts: Iterable[str]) -> bool:
    for host in hosts:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _marked_processes(key: str, value: str) -> list[psutil.Process]:
    """Live processes (other than this one) whose environment has ``key=value``."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(key) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path


@dataclass(frozen=True)
class CeleryWorker:
    """One Celery worker of a deployment, set up as if on a machine of its own."""

    name: str
    """``worker-1``, ``worker-2``, ..."""
    celery_hostname: str
    """Its Celery node name (``--celery-hostname``), e.g. ``worker-1@residency-<id>``."""
    address: str
    """Its loopback address: the hostname its task instances report, where its log server listens."""
    home: Path
    """Its ``AIRFLOW_HOME`` and working directory; ``tmp/`` and ``logs/`` (task logs) inside."""


@dataclass
class AirflowDeployment:
    """A local Airflow 3 deployment (API server, scheduler with LocalExecutor, DAG processor,
    triggerer; or the CeleryExecutor with Celery workers) run as child processes on
    loopback; a context manager.

    Args:
        home: ``AIRFLOW_HOME`` of the deployment (created if missing): logs, the
            SQLite file, the auth manager's passwords file.
        dags_folder: folder of the DAG files.
        plugins_folder: folder of the Airflow plugins.
        env: extra environment of every child (``AIRFLOW_CONN_*`` connections,
            ``RESIDENCY_POLICY``, ...). May hold secrets: never logged.
        metadata: ``"postgresql"`` (a fresh database on 127.0.0.1:5432, dropped on
            stop), ``"sqlite"`` (``home/airflow.db``, recreated on start) or
            ``"auto"`` (PostgreSQL when it answers, else SQLite).
        api_port: port of the API server and UI; ``None`` picks a free one.
        parallelism: task instances the executor runs at once (``[core] parallelism``).
        executor: ``"local"`` (LocalExecutor, the default) or ``"celery"`` (CeleryExecutor:
            PostgreSQL metadata required, Redis at 127.0.0.1:6379 as the broker, and
            ``workers`` Celery workers; every process gets ``RESIDENCY_DISTRIBUTED=1``).
        workers: Celery workers to start (``executor="celery"`` only).
        worker_concurrency: task instances each Celery worker runs at once.
        wait_for_dags: DAG ids :meth:`start` waits for (parsed and visible through the API).
        api_connections: Airflow connection id -> user name: each becomes an
            ``AIRFLOW_CONN_<ID>`` of type http in every child (host = :attr:`base_url`,
            login and password of that user), for tasks that call the REST API
            (e.g. to set their run's note).
        python_path: folders put on the children's ``PYTHONPATH`` (before any inherited one);
            default ``include/`` and ``dags_folder``.
        grace: seconds a component gets to exit after SIGTERM before SIGKILL.

    Raises:
        ValueError: ``metadata`` is not one of :data:`METADATA_KINDS`, ``executor`` not one
            of :data:`EXECUTORS`, ``parallelism``, ``workers`` or ``worker_concurrency`` < 1,
            or ``executor="celery"`` with ``metadata="sqlite"``.
    """

    home: Path
    dags_folder: Path
    plugins_folder: Path
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    metadata: str = "auto"
    api_port: int | None = None
    parallelism: int = 4
    executor: str = "local"
    workers: int = 2
    worker_concurrency: int = 2
    wait_for_dags: Sequence[str] = ()
    api_connections: Mapping[str, str] = field(default_factory=dict)
    python_path: Sequence[Path] = ()
    grace: float = 20.0
    users: dict[str, str] = field(init=False, repr=False)
    """User name -> password of the SimpleAuthManager users (see :data:`ROLES`)."""
    roles: dict[str, str] = field(init=False)
    backend: str = field(init=False, default="")
    """``postgresql`` or ``sqlite`` once started."""
    database: str | None = field(init=False, default=None)
    """The PostgreSQL database name while it exists."""
    redis_db: int | None = field(init=False, default=None)
    """The Redis database claimed as the Celery broker while it is held (``executor="celery"``)."""
    celery_workers: list[CeleryWorker] = field(init=False, default_factory=list)
    """The Celery workers (``executor="celery"``), once started."""
    _children: list[_Child] = field(init=False, default_factory=list, repr=False)
    _ports: dict[str, int] = field(init=False, default_factory=dict, repr=False)
    _secrets: dict[str, str] = field(init=False, repr=False)
    _redis_claim: str = field(init=False, repr=False)
    id: str = field(init=False)
    """Random id of this deployment: names its PostgreSQL database (``residency_airflow_<id>``)."""

    def __post_init__(self) -> None:
        if self.metadata not in METADATA_KINDS:
            raise ValueError(f"metadata must be one of {METADATA_KINDS}, got {self.metadata!r}")
        if self.parallelism < 1:
            raise ValueError(f"parallelism must be at least 1, got {self.parallelism!r}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {sorted(EXECUTORS)}, got {self.executor!r}")
        if self.executor == "celery":
            if self.workers < 1 or self.worker_concurrency < 1:
                raise ValueError(f"workers and worker_concurrency must be at least 1, got "
                                 f"{self.workers!r} and {self.worker_concurrency!r}")
            if self.metadata == "sqlite":
                raise ValueError("executor='celery' needs a PostgreSQL metadata database (metadata='postgresql' "
                                 "or 'auto'); SQLite allows one process at a time")
        unknown = sorted(set(self.api_connections.values()) - set(ROLES))
        if unknown:
            raise ValueError(f"api_connections name unknown users {unknown}; users are {sorted(ROLES)}")
        self.home = Path(self.home).resolve()
        self.dags_folder = Path(self.dags_folder).resolve()
        self.plugins_folder = Path(self.plugins_folder).resolve()
        if not self.python_path:
            include = Path(__file__).resolve().parents[2]  # include/ holds residency and residency_airflow
            self.python_path = (include, self.dags_folder)
        self.id = secrets.token_hex(6)
        self.roles = dict(ROLES)
        self.users = {name: secrets.token_urlsafe(12) for name in ROLES}
        self._redis_claim = json.dumps({"deployment": self.id, "home": str(self.home), "pid": os.getpid(),
                                        "created": _create_time(os.getpid())})
        self._secrets = {
            "jwt": secrets.token_urlsafe(32),
            "api": secrets.token_urlsafe(32),
            "fernet": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        }

    # ------------------------------------------------------------------ properties

    @property
    def base_url(self) -> str:
        """The API server and UI, e.g. ``http://127.0.0.1:8080`` (no trailing slash)."""
        if not self.api_port:
            raise RuntimeError("the deployment has no API port yet: call start() first")
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def database_name(self) -> str:
        """The PostgreSQL database this deployment creates (when the backend is PostgreSQL)."""
        return f"residency_airflow_{self.id}"

    @property
    def logs_dir(self) -> Path:
        """Where the components' output and the task logs go."""
        return self.home / "logs"

    @property
    def distributed(self) -> bool:
        """Whether tasks run on workers that share no disk (``executor="celery"``)."""
        return self.executor == "celery"

    @property
    def broker_url(self) -> str:
        """The Celery broker: the claimed Redis database (``executor="celery"``, once started)."""
        if self.redis_db is None:
            raise RuntimeError("no Redis database is claimed: executor='celery' and start() first")
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}"

    @property
    def result_backend(self) -> str:
        """Celery's result backend: the PostgreSQL metadata database (``db+`` SQLAlchemy URL)."""
        return f"db+{self.sql_alchemy_conn}"

    def worker_of(self, hostname: str | None) -> CeleryWorker | None:
        """The Celery worker whose task instances report ``hostname`` (the API's ``hostname``)."""
        return next((w for w in self.celery_workers if w.address == hostname), None)

    @property
    def sql_alchemy_conn(self) -> str:
        """The metadata database URL (no password: trust auth or a file)."""
        if self.backend == "postgresql":
            return f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.database}"
        return f"sqlite:///{self.home / 'airflow.db'}"

    def api(self, user: str | None) -> AirflowApi:
        """A REST client logged in as ``user`` (one of :attr:`users`); ``None``: anonymous.

        Raises:
            ValueError: ``user`` is not a user of this deployment.
        """
        if user is None:
            return AirflowApi(self.base_url)
        if user not in self.users:
            raise ValueError(f"unknown user {user!r}; users are {sorted(self.users)}")
        return AirflowApi(self.base_url, user, self.users[user])

    def log_path(self, component: str) -> Path:
        """The output file of ``component`` (one of :data:`COMPONENTS`, ``db-migrate``, a Celery
        worker's name or ``<worker name>-logs``, its log server)."""
        return self.logs_dir / f"{component}.log"

    # ------------------------------------------------------------------ environment

    def child_env(self) -> dict[str, str]:
        """The environment of every child: the caller's, minus its Airflow settings, plus ours and :attr:`env`."""
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith("AIRFLOW__") and k not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")
        }
        inherited = env.get("PYTHONPATH")
        paths = [str(p) for p in self.python_path] + ([inherited] if inherited else [])
        port = self.api_port
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join(paths),
            _MARKER: self.id,
            f"{_MARKER}_HOME": str(self.home),
            # core
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS[self.executor],
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__FERNET_KEY": self._secrets["fernet"],
            "AIRFLOW__CORE__AUTH_MANAGER": _SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in self.roles.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self._passwords_file),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            # database
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn,
            # api server: loopback only, one worker, fixed secrets shared by every component
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": self._secrets["api"],
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secrets["jwt"],
            # logs: task logs under home/logs; log servers on free ports so deployments can coexist
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs_dir),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self._ports["worker_logs"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self._ports["trigger_logs"]),
            # short polling: a test should wait on work, not on sleeps
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
        })
        if self.executor == "celery":
            env.update({
                DISTRIBUTED_ENV: "1",
                # Keys the celery provider reads (airflow/providers/celery/executors/default_celery.py).
                "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": self.result_backend,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            })
        for conn_id, user in self.api_connections.items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps({
                "conn_type": "http", "host": self.base_url, "login": user, "password": self.users[user],
            })
        env.update(self.env)
        return env

    def worker_env(self, worker: CeleryWorker) -> dict[str, str]:
        """A Celery worker's environment: :meth:`child_env` with its own home, temporary
        directory, task-log folder and hostname; no path of the deployment's home."""
        env = self.child_env()
        env.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", None)  # the API server's, not a worker's
        tmp = str(worker.home / "tmp")
        env.update({
            "AIRFLOW_HOME": str(worker.home),
            "TMPDIR": tmp, "TEMP": tmp, "TMP": tmp,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(worker.home / "logs"),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
            WORKER_HOSTNAME_ENV: worker.address,
        })
        return env

    @property
    def _passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    @property
    def _state_file(self) -> Path:
        return self.home / "deployment.json"

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 180.0, *, wait_for_dags: Sequence[str] | None = None) -> Self:
        """Migrate the metadata database, start every component, wait until all are healthy.

        Args:
            timeout: seconds for the whole start-up (migration, health, DAGs).
            wait_for_dags: DAG ids to wait for; default :attr:`wait_for_dags`.

        Returns:
            ``self``, once ``/api/v2/monitor/health`` reports the metadatabase, scheduler,
            DAG processor and triggerer healthy and every DAG asked for is visible
            through the API.

        Raises:
            DeploymentError: a step failed or a component did not become healthy in
                time; the message names it and ends with the tail of its log. Every
                process started so far is stopped and the database dropped first.
        """
        if self._children:
            raise RuntimeError("the deployment is already started")
        dags = tuple(self.wait_for_dags if wait_for_dags is None else wait_for_dags)
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            self._prepare()
            self._migrate(deadline)
            self._create_pools(deadline)
            for name in COMPONENTS:
                self._spawn(name)
            for worker in self.celery_workers:
                self._spawn_worker(worker)
            self._wait_healthy(deadline)
            if self.celery_workers:
                self._wait_for_workers(deadline)
            if dags:
                self._wait_for_dags(dags, deadline)
        except BaseException:
            self.stop()
            raise
        if self.celery_workers:
            executor = (f"CeleryExecutor, broker {self.broker_url}, workers "
                        f"{', '.join(f'{w.name} ({w.address}) x{self.worker_concurrency}' for w in self.celery_workers)}")
        else:
            executor = f"LocalExecutor x{self.parallelism}"
        log.info("Airflow deployment up in %.1fs: %s (metadata %s, %s, home %s)",
                 time.monotonic() - t0, self.base_url, self.backend, executor, self.home)
        return self

    def stop(self) -> None:
        """Stop every component and drop the PostgreSQL database.

        SIGTERM to each component, SIGKILL to its process group after
        :attr:`grace` seconds, then SIGKILL to every descendant seen before the
        stop that is still alive (task runners live in process groups of their
        own). Safe to call twice and after a failed start.
        """
        children, self._children = self._children, []
        tree = self._tree(children)  # task runners sit in process groups of their own: remember them now
        for child in children:
            # The leader only: each component stops its own helpers in order on SIGTERM
            # (the scheduler its executor's workers, the triggerer its trigger runner).
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                log.debug("%s exited with code %s", child.name, child.proc.returncode)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %s) still running %ss after SIGTERM: killing it", child.name,
                            child.proc.pid, self.grace)
            self._signal_group(child.proc.pid, signal.SIGKILL)  # stragglers of its group, if any
            try:
                child.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.error("%s (pid %s) did not exit after SIGKILL", child.name, child.proc.pid)
        leftovers = {p.pid: p for p in tree + _marked_processes(_MARKER, self.id) if _alive(p)}
        _kill_all(list(leftovers.values()), "of the deployment")
        if self.redis_db is not None:
            try:
                release_redis_db(self.redis_db, self._redis_claim)
                log.info("flushed and released Redis db %s", self.redis_db)
                self.redis_db = None
            except Exception as exc:  # noqa: BLE001 - stop must finish; say what was left behind
                log.error("could not release Redis db %s: %s", self.redis_db, exc)
        if self.database:
            try:
                drop_database(self.database)
                log.info("dropped PostgreSQL database %s", self.database)
                self.database = None
            except Exception as exc:  # noqa: BLE001 - stop must finish; say what was left behind
                log.error("could not drop PostgreSQL database %s: %s", self.database, exc)
        self._write_state(self.database)  # a database not dropped is dropped by the next start in this home
        log.info("Airflow deployment in %s stopped", self.home)

    def processes(self) -> list[psutil.Process]:
        """Every live process of this deployment: the components and all their descendants
        (executor workers, task runners, log servers, parsing processes)."""
        return [p for p in self._tree(self._children) + _marked_processes(_MARKER, self.id) if _alive(p)]

    @staticmethod
    def _tree(children: Iterable[_Child]) -> list[psutil.Process]:
        procs: dict[int, psutil.Process] = {}
        for child in children:
            try:
                root = psutil.Process(child.proc.pid)
                for proc in [root, *root.children(recursive=True)]:
                    procs[proc.pid] = proc
            except psutil.NoSuchProcess:
                continue
        return list(procs.values())

    def check_alive(self) -> None:
        """Raise :class:`DeploymentError` if a component has exited (naming it, with its log tail)."""
        for child in self._children:
            if child.proc.poll() is not None:
                raise DeploymentError(
                    f"{child.name} exited with code {child.proc.returncode}; last lines of "
                    f"{child.log_path}:\n{_tail(child.log_path)}"
                )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ steps

    def _prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._clean_previous()
        if self.api_port is None:
            self.api_port = free_port()
        self._ports = {"worker_logs": free_port(), "trigger_logs": free_port()}
        if self.executor == "celery":
            self.celery_workers = [
                CeleryWorker(name=f"worker-{n}", celery_hostname=f"worker-{n}@residency-{self.id}",
                             address=f"127.0.0.{n + 1}", home=self.home / "workers" / f"worker-{n}")
                for n in range(1, self.workers + 1)
            ]
            # Every worker's log server listens on its own address with the port the API server asks.
            addresses = [w.address for w in self.celery_workers]
            while not _port_free_on(self._ports["worker_logs"], addresses):
                self._ports["worker_logs"] = free_port()
            for worker in self.celery_workers:
                shutil.rmtree(worker.home, ignore_errors=True)
                (worker.home / "tmp").mkdir(parents=True)
                (worker.home / "logs").mkdir()
        fd = os.open(self._passwords_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(self.users, out)
        self.backend = self.metadata
        if self.metadata == "auto":
            self.backend = "postgresql" if postgres_available() else "sqlite"
        if self.executor == "celery" and self.backend != "postgresql":
            raise DeploymentError(f"executor='celery' needs PostgreSQL at {PG_HOST}:{PG_PORT} for the metadata "
                                  "database and the result backend; it does not answer")
        if self.executor == "celery":
            self.redis_db = claim_redis_db(self._redis_claim)
            self._write_state(self.database)
            log.info("claimed Redis db %s as the Celery broker (flushed)", self.redis_db)
        if self.backend == "postgresql":
            name = self.database_name
            try:
                create_database(name)
            except Exception as exc:
                raise DeploymentError(
                    f"could not create PostgreSQL database {name} on {PG_HOST}:{PG_PORT}: {exc}"
                ) from exc
            self.database = name
        else:
            (self.home / "airflow.db").unlink(missing_ok=True)
        self._write_state(self.database)

    def _clean_previous(self) -> None:
        """Stop what an earlier deployment in this home left behind (its owner killed with SIGKILL)."""
        state = self._read_state()
        owner = state.get("owner")
        if owner and owner != [os.getpid(), _create_time(os.getpid())] and _create_time(owner[0]) == owner[1]:
            raise DeploymentError(f"{self.home} is in use by the running deployment of pid {owner[0]}")
        stale: dict[int, psutil.Process] = {}
        for pid, created in state.get("components", []):
            if _create_time(pid) != created:
                continue  # gone, or the pid now belongs to another process
            with _suppress_gone():
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    stale[proc.pid] = proc
        for proc in _marked_processes(f"{_MARKER}_HOME", str(self.home)):
            stale[proc.pid] = proc
        _kill_all(list(stale.values()), f"left by an earlier deployment in {self.home}")
        if state.get("redis_db") is not None and state.get("redis_claim"):
            try:
                if release_redis_db(state["redis_db"], state["redis_claim"]):
                    log.warning("flushed Redis db %s left by an earlier deployment", state["redis_db"])
            except Exception as exc:  # noqa: BLE001
                log.warning("could not release Redis db %s of an earlier deployment: %s", state["redis_db"], exc)
        if state.get("database"):
            try:
                drop_database(state["database"])
                log.warning("dropped PostgreSQL database %s left by an earlier deployment", state["database"])
            except Exception as exc:  # noqa: BLE001
                log.warning("could not drop database %s of an earlier deployment: %s", state["database"], exc)

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self._state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _write_state(self, database: str | None) -> None:
        if not self.home.exists():
            return
        active = bool(database or self._children or self.redis_db is not None)
        state = {
            "owner": [os.getpid(), _create_time(os.getpid())] if active else None,
            "database": database,
            "redis_db": self.redis_db,
            "redis_claim": self._redis_claim if self.redis_db is not None else None,
            "components": [[c.proc.pid, _create_time(c.proc.pid)] for c in self._children],
        }
        self._state_file.write_text(json.dumps(state), encoding="utf-8")

    def _airflow(self) -> str:
        return str(Path(sys.executable).with_name("airflow"))

    def _migrate(self, deadline: float) -> None:
        path = self.log_path("db-migrate")
        with path.open("wb") as out:
            try:
                proc = subprocess.run(
                    [self._airflow(), "db", "migrate"], stdout=out, stderr=subprocess.STDOUT,
                    env=self.child_env(), timeout=max(1.0, deadline - time.monotonic()),
                    start_new_session=True,
                )
            except subprocess.TimeoutExpired as exc:
                raise DeploymentError(f"airflow db migrate did not finish in time; last lines of {path}:\n"
                                      f"{_tail(path)}") from exc
        if proc.returncode != 0:
            raise DeploymentError(
                f"airflow db migrate failed with code {proc.returncode} on {self.backend}; "
                f"last lines of {path}:\n{_tail(path)}"
            )

    def _create_pools(self, deadline: float) -> None:
        """The pools the migration DAG's copy and verify tasks run in (one per destination
        provider); a task whose pool does not exist is never scheduled."""
        path = self.home / "pools.json"
        path.write_text(json.dumps({name: {"slots": slots, "description": f"residency copy/verify tasks ({name})",
                                           "include_deferred": False} for name, slots in POOLS.items()}))
        log_path = self.log_path("pools")
        with log_path.open("wb") as out:
            proc = subprocess.run(
                [self._airflow(), "pools", "import", str(path)], stdout=out, stderr=subprocess.STDOUT,
                env=self.child_env(), timeout=max(1.0, deadline - time.monotonic()), start_new_session=True,
            )
        if proc.returncode != 0:
            raise DeploymentError(f"airflow pools import failed with code {proc.returncode}; last lines of "
                                  f"{log_path}:\n{_tail(log_path)}")

    def _spawn(self, name: str, cmd: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
               cwd: Path | None = None) -> None:
        if cmd is None:
            cmd = [self._airflow(), name]
            if name == "api-server":
                cmd += ["--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"]
        path = self.log_path(name)
        with path.open("wb") as out:
            proc = subprocess.Popen(
                list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else self.child_env(), cwd=cwd,
                start_new_session=True,  # its own process group
            )
        self._children.append(_Child(name, proc, path))
        self._write_state(self.database)
        log.info("started %s (pid %s), output in %s", name, proc.pid, path)

    def _spawn_worker(self, worker: CeleryWorker) -> None:
        """The worker's log server on its own address (Airflow's own app; ``airflow celery
        worker`` would bind every address), then the worker, both in the worker's home."""
        env = self.worker_env(worker)
        self._spawn(f"{worker.name}-logs", [
            sys.executable, "-m", "uvicorn", "--factory", "airflow.utils.serve_logs.log_server:get_app",
            "--host", worker.address, "--port", str(self._ports["worker_logs"]), "--no-access-log",
        ], env, worker.home)
        self._spawn(worker.name, [
            self._airflow(), "celery", "worker", "--celery-hostname", worker.celery_hostname,
            "--concurrency", str(self.worker_concurrency), "--skip-serve-logs", "--without-mingle",
        ], env, worker.home)

    def _wait_for_workers(self, deadline: float) -> None:
        """Until every Celery worker answers a ping through the broker and every log server listens."""
        from celery import Celery

        app = Celery("residency-deployment-probe", broker=self.broker_url)
        waiting = {w.celery_hostname: w for w in self.celery_workers}
        listening: set[str] = set()
        try:
            while (waiting or len(listening) < len(self.celery_workers)) and time.monotonic() < deadline:
                self.check_alive()
                for worker in self.celery_workers:
                    with contextlib.suppress(OSError), socket.create_connection(
                            (worker.address, self._ports["worker_logs"]), timeout=1):
                        listening.add(worker.name)
                if waiting:
                    for reply in app.control.ping(destination=list(waiting), timeout=1.0) or []:
                        for name in reply:
                            waiting.pop(name, None)
                if waiting or len(listening) < len(self.celery_workers):
                    time.sleep(0.5)
        finally:
            app.close()
        silent = [w.name for w in self.celery_workers if w.celery_hostname in waiting or w.name not in listening]
        if silent:
            details = "\n".join(f"--- {name}: last lines of {self.log_path(name)}:\n{_tail(self.log_path(name))}\n"
                                f"--- its log server:\n{_tail(self.log_path(name + '-logs'), 10)}" for name in silent)
            raise DeploymentError(f"Celery workers not ready in time: {', '.join(silent)}\n{details}")

    def _wait_healthy(self, deadline: float) -> None:
        url = f"{self.base_url}/api/v2/monitor/health"
        health: dict[str, Any] = {}
        last_error = ""
        with requests.Session() as session:
            session.trust_env = False  # loopback: no proxies, no netrc
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    resp = session.get(url, timeout=5)
                    if resp.status_code == 200:
                        health = resp.json()
                        if all((health.get(key) or {}).get("status") == "healthy" for key in _HEALTH_KEYS):
                            return
                    else:
                        last_error = f"HTTP {resp.status_code}: {resp.text[:300]}"
                except (requests.RequestException, ValueError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.5)
        if not health:
            raise DeploymentError(
                f"the API server did not answer {url} in time ({last_error}); last lines of "
                f"{self.log_path('api-server')}:\n{_tail(self.log_path('api-server'))}"
            )
        sick = [key for key in _HEALTH_KEYS if (health.get(key) or {}).get("status") != "healthy"]
        details = "\n".join(
            f"--- {key}: {health.get(key)}; last lines of {self.log_path(_HEALTH_KEYS[key])}:\n"
            f"{_tail(self.log_path(_HEALTH_KEYS[key]))}"
            for key in sick
        )
        raise DeploymentError(f"not healthy in time: {', '.join(sick)}\n{details}")

    def _wait_for_dags(self, dag_ids: Iterable[str], deadline: float) -> None:
        api = self.api("manager")
        missing = list(dag_ids)
        while missing and time.monotonic() < deadline:
            self.check_alive()
            for dag_id in list(missing):
                try:
                    api.get(f"/dags/{quote(dag_id, safe='')}")
                    missing.remove(dag_id)
                except AirflowApiError as exc:
                    if exc.status != 404:
                        raise
            if missing:
                time.sleep(1.0)
        if missing:
            try:
                errors = api.get("/importErrors").get("import_errors", [])
            except AirflowApiError as exc:
                errors = [{"filename": "?", "stack_trace": str(exc)}]
            listed = "\n".join(f"--- {e.get('filename')}:\n{e.get('stack_trace')}" for e in errors) or "none"
            raise DeploymentError(
                f"DAGs not visible through the API in time: {', '.join(missing)} (dags folder {self.dags_folder}); "
                f"import errors: {listed}\nlast lines of {self.log_path('dag-processor')}:\n"
                f"{_tail(self.log_path('dag-processor'))}"
            )

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)  # start_new_session: the group id is the child's pid
        except (ProcessLookupError, PermissionError):
            pass


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_all(procs: list[psutil.Process], why: str) -> None:
    for proc in procs:
        with _suppress_gone():
            log.warning("killing process %s (%s) %s", proc.pid, " ".join(" ".join(proc.cmdline()).split())[:80], why)
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


class _suppress_gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, (psutil.NoSuchProcess, psutil.AccessDenied))


class AirflowApi:
    """A small client of Airflow 3's public REST API (``/api/v2``), as one user.

    The token is a JWT from the SimpleAuthManager's ``POST /auth/token``
    (``{"username", "password"}`` as JSON), sent as ``Authorization: Bearer``;
    it is fetched on first use and once more if the API answers 401. Passwords
    and tokens are never logged. Without a user the client is anonymous.

    Paths are relative to ``/api/v2`` (``"/dags"``) unless they start with
    ``/api/`` or ``/auth/``.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080``.
        username: a SimpleAuthManager user, or ``None`` for anonymous requests.
        password: its password.
        timeout: seconds per HTTP request.
    """

    def __init__(self, base_url: str, username: str | None = None, password: str | None = None,
                 *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self._token: str | None = None
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False  # loopback: no proxies, no netrc

    def __repr__(self) -> str:
        return f"AirflowApi({self.base_url!r}, user={self.username!r})"

    # ------------------------------------------------------------------ plumbing

    def url(self, path: str) -> str:
        """The absolute URL of an API path."""
        if path.startswith(("http://", "https://")):
            return path
        if not path.startswith("/"):
            path = "/" + path
        if path.startswith(("/api/", "/auth/")):
            return self.base_url + path
        return f"{self.base_url}/api/v2{path}"

    def token(self) -> str:
        """A JWT for this client's user (fetched once and cached).

        Raises:
            AirflowApiError: the token endpoint refused the credentials.
            RuntimeError: the client is anonymous.
        """
        if self._token is None:
            if self.username is None:
                raise RuntimeError("an anonymous client has no token")
            url = self.url("/auth/token")
            resp = self._session.post(url, json={"username": self.username, "password": self._password},
                                      timeout=self.timeout)
            if resp.status_code >= 400:
                raise AirflowApiError("POST", url, resp.status_code, resp.text)
            self._token = resp.json()["access_token"]
            log.debug("got an API token for %s", self.username)
        return self._token

    def request(self, method: str, path: str, *, raw: bool = False, **kw: Any) -> Any:
        """Send a request; return the parsed JSON (or the response itself with ``raw=True``).

        Raises:
            AirflowApiError: the API answered 4xx/5xx (status, method, URL and body in the message).
        """
        url = self.url(path)
        kw.setdefault("timeout", self.timeout)
        for attempt in (1, 2):
            headers = dict(kw.pop("headers", None) or {})
            if self.username is not None:
                headers["Authorization"] = f"Bearer {self.token()}"
            resp = self._session.request(method, url, headers=headers, **kw)
            kw["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
            if resp.status_code == 401 and self.username is not None and attempt == 1:
                self._token = None  # expired: log in again, once
                continue
            break
        if resp.status_code >= 400:
            raise AirflowApiError(method, url, resp.status_code, resp.text)
        if raw:
            return resp
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def get(self, path: str, **kw: Any) -> Any:
        """GET ``path``; parsed JSON. See :meth:`request`."""
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        """POST ``path``; parsed JSON. See :meth:`request`."""
        return self.request("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        """PATCH ``path``; parsed JSON. See :meth:`request`."""
        return self.request("PATCH", path, **kw)

    def _paged(self, path: str, key: str, params: Mapping[str, Any] | None = None, limit: int = 100) -> list[dict]:
        items: list[dict] = []
        while True:
            page = self.get(path, params={**(params or {}), "limit": limit, "offset": len(items)})
            batch = page.get(key) or []
            items.extend(batch)
            if not batch or len(items) >= page.get("total_entries", 0):
                return items

    # ------------------------------------------------------------------ DAGs and runs

    @staticmethod
    def _run_path(dag_id: str, run_id: str) -> str:
        return f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"

    def trigger(self, dag_id: str, conf: Mapping[str, Any], *, note: str | None = None) -> str:
        """Trigger a run of ``dag_id`` with ``conf`` (no logical date); returns its run id."""
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf)}
        if note is not None:
            body["note"] = note
        run = self.post(f"/dags/{quote(dag_id, safe='')}/dagRuns", json=body)
        log.info("triggered %s run %s as %s", dag_id, run["dag_run_id"], self.username)
        return run["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        """The DAG run (``state``, ``note``, ``conf``, dates, ...)."""
        return self.get(self._run_path(dag_id, run_id))

    def run_note(self, dag_id: str, run_id: str) -> str | None:
        """The DAG run's note (Markdown), or ``None``."""
        return self.dag_run(dag_id, run_id).get("note")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of the run (one per map index for mapped tasks)."""
        return self._paged(f"{self._run_path(dag_id, run_id)}/taskInstances", "task_instances")

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout: float,
        poll: float = 1.0,
        on_poll: Callable[[AirflowApi, dict], None] | None = None,
    ) -> str:
        """Wait until the run is ``success`` or ``failed``; return that state.

        Args:
            timeout: seconds to wait.
            poll: seconds between polls.
            on_poll: called as ``on_poll(api, run)`` after each poll of an unfinished
                run (e.g. to answer approvals while waiting).

        Raises:
            TimeoutError: the run did not finish in time (its state and unfinished tasks named).
        """
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in _FINAL_STATES:
                return run["state"]
            if on_poll is not None:
                on_poll(self, run)
            if time.monotonic() >= deadline:
                break
            time.sleep(poll)
        open_tasks = [
            f"{ti['task_id']}[{ti['map_index']}]={ti['state']}"
            for ti in self.task_instances(dag_id, run_id)
            if ti.get("state") not in ("success", "failed", "skipped", "upstream_failed", "removed")
        ]
        raise TimeoutError(
            f"{dag_id} run {run_id} still {run['state']} after {timeout}s; unfinished tasks: "
            f"{', '.join(open_tasks) or 'none'}"
        )

    # ------------------------------------------------------------------ human in the loop

    def pending_approvals(self, dag_id: str, run_id: str, *, min_age: float = APPROVAL_SETTLE_SECONDS) -> list[dict]:
        """Human-in-the-loop requests of the run still awaiting a response.

        Each item is the API's HITL detail: ``task_instance`` (``task_id``,
        ``map_index``, ``state``), ``subject``, ``body``, ``options``,
        ``defaults``, ``multiple``, ``params``, ``assigned_users``, ``created_at``.

        Args:
            min_age: leave out requests created less than this many seconds ago
                (``0``: all). Answering a request soon after its task parked
                races the scheduler on Airflow 3.3.2: the executor's report of the
                parked try arrives after the resume and the task is failed as
                "state changed externally". That report came about a second after
                parking on an idle machine and five seconds after it on a loaded
                one (a LocalExecutor run answered four seconds after parking
                failed so). People are slower than that; programs answering
                approvals should keep the default.
        """
        details = self._paged(f"{self._run_path(dag_id, run_id)}/hitlDetails", "hitl_details",
                              {"response_received": "false"})
        if min_age <= 0:
            return details
        now = datetime.now(timezone.utc)
        return [d for d in details
                if (now - datetime.fromisoformat(d["created_at"])).total_seconds() >= min_age]

    def respond(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        option: str | Sequence[str],
        params_input: Mapping[str, Any] | None = None,
        map_index: int = -1,
    ) -> dict:
        """Answer a human-in-the-loop request as this client's user.

        Args:
            option: the option chosen (``"Approve"``/``"Reject"`` for an ApprovalOperator),
                or several for a request that allows ``multiple``.
            params_input: values of the request's params (e.g. ``{"comment": "..."}``).

        Returns:
            The API's answer: ``responded_by``, ``responded_at``, ``chosen_options``, ``params_input``.

        Raises:
            AirflowApiError: 400 (an option not offered), 403 (the role or the assigned
                users exclude this user), 404 (no such request), 409 (already answered).
        """
        chosen = [option] if isinstance(option, str) else list(option)
        answer = self.patch(
            f"{self._run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}/{map_index}/hitlDetails",
            json={"chosen_options": chosen, "params_input": dict(params_input or {})},
        )
        log.info("%s answered %s of %s run %s: %s", self.username, task_id, dag_id, run_id, chosen)
        return answer

    # ------------------------------------------------------------------ logs

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        """The whole log of one try of a task instance, as text (one line per record)."""
        page = self.get(
            f"{self._run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}/logs/{try_number}",
            params={"full_content": "true", "map_index": map_index},
            headers={"Accept": "application/json"},
        )
        lines = []
        for record in page.get("content") or []:
            if isinstance(record, str):
                lines.append(record)
                continue
            extra = " ".join(
                f"{k}={v}" for k, v in record.items() if k not in ("timestamp", "event", "level", "logger")
            )
            head = " ".join(str(record[k]) for k in ("timestamp", "level", "logger") if record.get(k))
            lines.append(f"{head} {record.get('event', '')}{' ' + extra if extra else ''}".strip())
        return "\n".join(lines)
