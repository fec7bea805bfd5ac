"""The migration dashboard: live progress of data residency migrations inside Airflow's UI.

A FastAPI app (:mod:`.app`) that Airflow's API server mounts at ``/residency``
through the plugin in ``plugins/residency_plugin.py``, with two external views:
"Data residency" in the navigation (every migration) and a tab on each DAG run
(that run's migration). It reads the migration ledgers through
``residency.progress`` (aggregate queries only), never Airflow's database, except
for the run's state and its pending human-in-the-loop requests.

This module stays light: every Airflow process (scheduler, DAG processor, each
task) imports the plugins folder, and only the API server needs the app, so the
app and its imports (FastAPI, the API server's security module) load on first use.
"""

from __future__ import annotations

#: Where Airflow's API server mounts the app.
URL_PREFIX = "/residency"

#: The UI's entries. Airflow 3.3 shows an external view with a ``url_route`` inside
#: its own page (an iframe) and resolves a relative ``href`` against the UI's
#: ``<base href>`` (the API server's base URL); in a ``dag_run`` view it replaces
#: ``{DAG_ID}`` and ``{RUN_ID}`` with the run's ids, URL-encoded.
EXTERNAL_VIEWS = [
    {
        "name": "Data residency",
        "href": "residency/",
        "destination": "nav",
        "url_route": "residency",
        "nav_top_level": False,
    },
    {
        "name": "Data residency",
        "href": "residency/runs/{DAG_ID}/{RUN_ID}",
        "destination": "dag_run",
        "url_route": "residency-run",
    },
]


def fastapi_app_entry() -> dict:
    """The plugin's ``fastapi_apps`` entry, building the app on first call."""
    from .app import get_app

    return {"app": get_app(), "url_prefix": URL_PREFIX, "name": "Data residency dashboard"}
