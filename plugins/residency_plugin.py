"""The Airflow plugin of the orchestrator: the data residency migration dashboard.

Registers a FastAPI app at ``/residency`` in Airflow's API server and two external
views: "Data residency" in the navigation (all migrations) and a "Data residency"
tab on every DAG run (that run's migration). The app, its templates and helpers
live in the ``residency_dashboard`` package beside this file (skipped by the
plugin loader through ``.airflowignore``: Airflow imports every ``.py`` file of
this folder as a top-level module, which a package's modules cannot be).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

from airflow.plugins_manager import AirflowPlugin

# Airflow puts the plugins folder on sys.path; a process that loads this file by
# path alone (a test, a tool) still finds the package beside it.
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))

import residency_dashboard  # noqa: E402 - after the path fix above

log = logging.getLogger(__name__)

if importlib.util.find_spec("residency") is None:  # cheap; reported as this plugin's import error
    raise ImportError("the residency engine is not importable: put the project's include/ folder on PYTHONPATH "
                      "(the Dockerfile does) in every Airflow process, the API server included")


class ResidencyDashboardPlugin(AirflowPlugin):
    """Migration dashboard: a FastAPI app and the UI's external views to it."""

    name = "residency_dashboard"
    external_views = residency_dashboard.EXTERNAL_VIEWS

    @property
    def fastapi_apps(self) -> list[dict]:  # type: ignore[override]
        """The app, built when first asked for.

        Only the API server (and ``airflow plugins``) asks, so the scheduler and every
        task process that loads plugins skip FastAPI and the API server's security
        module (about a second per process). A failure is logged and leaves the API
        server running without the dashboard, as a failed plugin import would.
        """
        try:
            return [residency_dashboard.fastapi_app_entry()]
        except Exception:
            log.exception("residency dashboard: the app could not be built; /residency will answer 404")
            return []
