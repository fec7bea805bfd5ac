"""Fixtures of the dashboard tests: a private Airflow home, a real auth manager, clients.

Airflow reads its configuration when it is first imported, so this module points
it, before any import, at a home of its own under the system's temp folder: a
SQLite metadata database created by ``airflow.utils.db.initdb`` (human-in-the-loop
requests and DAG runs are written there, never in ``.airflow/``), this project's
plugins folder, and the simple auth manager with a fixed JWT secret, whose real
tokens the tests present as a browser (the ``_token`` cookie) or an API client
(``Authorization: Bearer``) would. The metadata URL is in the environment only
while Airflow is imported, so no child process of another test inherits it.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
_HOME = Path(tempfile.mkdtemp(prefix="residency-plugin-airflow-"))
_DB_URL = f"sqlite:///{_HOME / 'airflow.db'}"
atexit.register(shutil.rmtree, _HOME, True)

if "airflow" not in sys.modules:
    os.environ.update({
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
    })
    # The metadata URL is read once, when Airflow is imported: set it for that moment only,
    # so that child processes of other tests (e2e's `airflow dags test`) never inherit it.
    _previous = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = _DB_URL
    try:
        import airflow.settings  # noqa: F401 - configures the ORM now
    finally:
        if _previous is None:
            del os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        else:
            os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = _previous
# `from test_attest import Estate, RUN` (the migration estate on moto) and the plugin package.
for path in (ROOT / "tests" / "integration", PLUGINS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """The private metadata database, created once (about five seconds)."""
    from airflow import settings

    if settings.SQL_ALCHEMY_CONN != _DB_URL:
        pytest.skip(f"Airflow was imported before tests/plugin/conftest.py could give it a private home "
                    f"(metadata at {settings.SQL_ALCHEMY_CONN}); run tests/plugin in its own process")
    from airflow.utils import db

    db.initdb()
    return _DB_URL


@pytest.fixture(scope="session")
def auth_manager(airflow_db: str) -> Any:
    from airflow.api_fastapi.app import init_auth_manager

    return init_auth_manager()


@pytest.fixture(scope="session")
def tokens(auth_manager: Any) -> dict[str, str]:
    """Real JWTs of the simple auth manager: a viewer (a manager who watches), and a user without a role."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return {
        "viewer": auth_manager.generate_jwt(SimpleAuthManagerUser(username="mina", role="viewer")),
        "no_role": auth_manager.generate_jwt(SimpleAuthManagerUser(username="stranger", role=None)),
    }


def mount(app: Any) -> Any:
    """A parent app with ``app`` mounted at ``/residency``, as Airflow's API server mounts plugin apps."""
    from fastapi import FastAPI

    parent = FastAPI()
    parent.mount("/residency", app)
    return parent


@pytest.fixture
def client_for(tokens: dict[str, str]) -> Iterator[Any]:
    """``client_for(app, who="viewer"|None, via="bearer"|"cookie")``: a TestClient on ``app`` mounted at /residency."""
    from fastapi.testclient import TestClient

    clients: list[TestClient] = []

    def make(app: Any, who: str | None = "viewer", via: str = "bearer") -> TestClient:
        client = TestClient(mount(app))
        if who is not None and via == "bearer":
            client.headers["Authorization"] = f"Bearer {tokens[who]}"
        elif who is not None:
            client.cookies.set("_token", tokens[who])  # what the UI's login leaves in a browser
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
