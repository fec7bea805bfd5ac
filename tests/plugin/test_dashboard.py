"""The migration dashboard plugin: loading, authentication, and the numbers of a real migration.

The ledger is filled by the pipeline's real phases on moto server (``Estate`` of
``tests/integration/test_attest.py``); Airflow's side (auth manager, DAG runs,
human-in-the-loop requests) is a private SQLite metadata database (see conftest).
"""

from __future__ import annotations

import datetime as dt
import html as html_lib
import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

from residency_dashboard import URL_PREFIX
from residency_dashboard.app import create_app
from residency_dashboard.cache import TTLCache
from residency_dashboard.catalogue import Dashboard
from residency_dashboard.chart import timeline_svg
from residency_dashboard.sources import expand, load_sources
from test_attest import RUN, Estate

REFRESH = re.compile(r'<meta http-equiv="refresh" content="\d+">')


def _policies(monkeypatch: pytest.MonkeyPatch, *paths: Path | str) -> None:
    monkeypatch.delenv("RESIDENCY_POLICY", raising=False)
    monkeypatch.setenv("RESIDENCY_POLICIES", ",".join(str(p) for p in paths))


def _text(html: str) -> str:
    """The page's text, tags removed and whitespace collapsed, for assertions a reader can follow."""
    return html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def _cells(html: str, first_cell: str, table_after: str = "") -> list[str]:
    """The cells' text of the first table row (after the heading ``table_after``) whose first cell is ``first_cell``."""
    html = html.split(table_after, 1)[1] if table_after else html
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html, flags=re.S):
        cells = [_text(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row starting with {first_cell!r}")


def _row(html: str, first_cell: str) -> str:
    return " ".join(_cells(html, first_cell))


@pytest.fixture
def finished(tmp_path, admin, make_bucket) -> Estate:
    """A whole migration of nine objects (plus one log out of scope), COMPLETE."""
    estate = Estate(tmp_path, admin, make_bucket, objects=9)
    assert estate.run()["complete"] is True
    return estate


# -- the plugin ---------------------------------------------------------------------
def test_plugin_loads_through_airflows_plugins_manager(airflow_db):
    from fastapi import FastAPI

    from airflow import plugins_manager
    from airflow.api_fastapi.app import init_plugins
    from airflow.api_fastapi.core_api.datamodels.plugins import PluginResponse

    assert plugins_manager.get_import_errors() == {}
    info = next(p for p in plugins_manager.get_plugin_info() if p["name"] == "residency_dashboard")
    assert str(info["source"]) == "$PLUGINS_FOLDER/residency_plugin.py"  # the package beside it is not a plugin
    plugin = PluginResponse.model_validate(info)  # what /api/v2/plugins gives the UI
    assert [(a.url_prefix, a.name) for a in plugin.fastapi_apps] == [("/residency", "Data residency dashboard")]
    views = {v.destination: v for v in plugin.external_views}
    assert set(views) == {"nav", "dag_run"}
    assert views["nav"].href == "residency/" and views["nav"].url_route == "residency"
    assert views["dag_run"].href == "residency/runs/{DAG_ID}/{RUN_ID}" and views["dag_run"].url_route
    assert not any(v.href.startswith(("/", "http")) for v in views.values())  # relative to the UI's <base href>

    apps, _ = plugins_manager.get_fastapi_plugins()
    (entry,) = [a for a in apps if a["url_prefix"] == URL_PREFIX]
    assert isinstance(entry["app"], FastAPI)
    parent = FastAPI()
    init_plugins(parent)  # Airflow's own mounting code
    assert any(getattr(r, "path", None) == URL_PREFIX and r.app is entry["app"] for r in parent.routes)


def test_every_route_requires_an_authenticated_user(airflow_db, auth_manager, client_for, monkeypatch, tmp_path):
    _policies(monkeypatch, tmp_path / "none.yaml")
    app = create_app(Dashboard())
    params = {"migration_id": "m-1", "dag_id": "residency_migration", "run_id": "manual__x", "name": "evidence.json"}
    paths = [re.sub(r"\{(\w+)(:path)?\}", lambda m: params[m.group(1)], r.path) for r in app.routes]
    assert len(paths) == 7 and {r.path for r in app.routes} >= {"/", "/api/migrations", "/migrations/{migration_id}"}
    anonymous = client_for(app, who=None)
    for path in paths:
        response = anonymous.get(URL_PREFIX + path)
        assert response.status_code == 401, (path, response.status_code, response.text)
        assert response.json() == {"detail": "Not authenticated"}
    assert anonymous.get(URL_PREFIX + "/", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    no_role = client_for(app, who="no_role")  # authenticated, but may not read DAG runs
    assert {no_role.get(URL_PREFIX + p).status_code for p in paths} == {403}
    # The app serves no open OpenAPI or docs pages either.
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert anonymous.get(URL_PREFIX + path).status_code == 404


# -- a finished migration ---------------------------------------------------------------
def test_finished_migration_list_page_and_json(finished, airflow_db, client_for, monkeypatch, tmp_path):
    bad = tmp_path / "bad-policy.yaml"
    bad.write_text(yaml.safe_dump({"migration_id": "Not Valid!", "home_jurisdiction": "JP"}))
    _policies(monkeypatch, tmp_path / "policy.yaml", bad, tmp_path / "missing-*.yaml")
    mid = finished.doc["migration_id"]
    client = client_for(create_app(Dashboard()), via="cookie")  # a browser logged in to Airflow

    page = client.get(URL_PREFIX + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'href="/residency/migrations/{mid}"' in page.text
    row = _row(page.text, mid)
    assert "manual__test" in row and "9 / 9" in row and "COMPLETE" in row and "100.0%" in row
    errors = _text(page.text.split("Could not be read", 1)[1])
    assert str(bad) in errors and "invalid policy field 'migration_id'" in errors
    assert "missing-*.yaml" in errors and "no policy file matches" in errors
    assert not REFRESH.search(page.text) and "<script" not in page.text

    data = client.get(URL_PREFIX + "/api/migrations").json()
    (m,) = data["migrations"]
    assert m["migration_id"] == mid and m["verified"] == m["in_scope"] and m["verified"]["objects"] == 9
    assert m["complete"] is True and m["policies"] == [str((tmp_path / "policy.yaml").resolve())]
    assert {e["policy"] for e in data["errors"]} == {str(bad), str(tmp_path / "missing-*.yaml")}


def test_finished_migration_page_shows_the_ledgers_numbers(finished, airflow_db, client_for, monkeypatch, tmp_path):
    _policies(monkeypatch, tmp_path / "policy.yaml")
    mid = finished.doc["migration_id"]
    client = client_for(create_app(Dashboard()))
    expected_bytes = sum(3 + 1000 + i for i in range(9))

    html = client.get(f"{URL_PREFIX}/migrations/{mid}").text
    text = _text(html)
    assert "<script" not in html and not REFRESH.search(html) and "Not refreshing" in text
    for phase in ("preflight", "inventory", "copy", "verify", "recheck", "cutover", "revoke", "attest", "evidence"):
        assert _row(html, phase).split()[1] == "done", phase
    assert "3 shards" in _row(html, "copy")
    # Bucket, jurisdiction, listed (9 photos + 1 log), in scope, verified, failed, pending.
    uri, jurisdiction, listed, in_scope, verified, failed, pending, _ = _cells(html, f"s3://{finished.src}")
    assert jurisdiction == "KR" and listed.startswith("10 objects") and in_scope.startswith("9 objects")
    assert verified == f"9 objects 8.9 KiB ({expected_bytes:,} bytes) 100.0% of objects, 100.0% of bytes"
    assert failed.startswith("0 objects 0 bytes") and pending.startswith("0 objects 0 bytes")
    kr = _cells(html, "KR", "By jurisdiction")
    assert kr[1] == "1" and kr[4].startswith("9 objects") and "100.0% of objects" in kr[4]
    route = _cells(html, "s3->s3", "By copy route")
    assert route[1] == "—" and route[3].startswith("9 objects") and "100.0% of objects" in route[3]
    assert "Rewritten to the destination 9" in text and "Re-proven 9" in text
    assert "Estimated time to finish nothing remains" in text
    assert "<svg" in html and "verified 9 objects by" in html  # the timeline chart, drawn on the server
    assert "COMPLETE" in text and "No object failed." in text
    assert f'href="/residency/migrations/{mid}/evidence/evidence.json"' in html
    assert f'href="/residency/migrations/{mid}/evidence/evidence.html"' in html
    assert html.count("class=\"revocation\"") == 0 and "No revocation recorded." in text

    data = client.get(f"{URL_PREFIX}/api/migrations/{mid}", params={"run_id": RUN["run_id"]}).json()
    assert data["run_id"] == RUN["run_id"] and data["live"] is False and data["refresh_seconds"] is None
    assert [p["state"] for p in data["phases"]] == ["done"] * 9
    (b,) = data["status"]["buckets"]
    assert b["verified"] == {"objects": 9, "bytes": expected_bytes} and b["listed"]["objects"] == 10
    assert data["status"]["totals"]["remaining"] == {"objects": 0, "bytes": 0}
    assert data["pending_approvals"] == [] and data["airflow_metadata_error"] is None
    assert client.get(f"{URL_PREFIX}/api/migrations/no-such-migration").status_code == 404


def test_evidence_files_are_served_and_nothing_outside_their_folder(finished, airflow_db, client_for, monkeypatch,
                                                                     tmp_path):
    _policies(monkeypatch, tmp_path / "policy.yaml")
    mid = finished.doc["migration_id"]
    client = client_for(create_app(Dashboard()))
    base = f"{URL_PREFIX}/migrations/{mid}/evidence"

    served = client.get(f"{base}/evidence.json")
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    assert served.json() == finished.evidence() and served.json()["migration_id"] == mid
    page = client.get(f"{base}/evidence.html")
    assert page.status_code == 200 and "Data residency migration evidence" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]

    (tmp_path / "secret.txt").write_text("not evidence")
    for name in ("..%2Fpolicy.yaml", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..%2Fsecret.txt", "."):
        refused = client.get(f"{base}/{name}")
        assert refused.status_code == 403, (name, refused.status_code)
        assert "not evidence" not in refused.text
    (tmp_path / "evidence" / "link.txt").symlink_to(tmp_path / "secret.txt")  # a link out of the folder
    assert client.get(f"{base}/link.txt").status_code == 403
    assert client.get(f"{base}/nothing-here.json").status_code == 404


# -- a live migration ----------------------------------------------------------------------
def test_migration_mid_copy_shows_what_remains_and_refreshes_itself(tmp_path, admin, make_bucket, airflow_db,
                                                                     client_for, monkeypatch):
    estate = Estate(tmp_path, admin, make_bucket, objects=9)
    estate.run(stop_before="verify")  # inventoried and copied, nothing verified yet
    _policies(monkeypatch, tmp_path / "policy.yaml")
    mid = estate.doc["migration_id"]
    client = client_for(create_app(Dashboard()))

    html = client.get(f"{URL_PREFIX}/migrations/{mid}").text
    assert REFRESH.search(html) and "<script" not in html
    text = _text(html)
    assert "Live" in text and "refreshes itself every 5 seconds" in text
    assert [_row(html, p).split()[1] for p in ("inventory", "copy", "verify", "recheck")] == [
        "done", "done", "running", "not"]
    _, _, _, in_scope, verified, failed, pending, _ = _cells(html, f"s3://{estate.src}")
    assert in_scope.startswith("9 objects") and verified.startswith("0 objects 0 bytes 0.0% of objects")
    assert failed.startswith("0 objects")
    assert pending == "9 objects 8.9 KiB (9,063 bytes) 100.0% of objects, 100.0% of bytes"
    assert "Remaining (in scope, neither verified nor failed) 9 objects" in text
    assert "No evidence written yet." in text

    data = client.get(f"{URL_PREFIX}/api/migrations/{mid}").json()
    assert data["live"] is True and data["refresh_seconds"] == 5
    assert data["status"]["totals"]["pending"]["objects"] == 9
    assert data["status"]["totals"]["remaining"]["objects"] == 9
    assert client.get(f"{URL_PREFIX}/migrations/{mid}/evidence/evidence.json").status_code == 404

    # Airflow's metadata unreadable: the ledger's part of the page stands, and says so.
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from airflow.api_fastapi.common.db.common import _get_session

    broken = create_app(Dashboard())
    empty = sa.create_engine(f"sqlite:///{tmp_path / 'no-airflow-tables.db'}")
    broken.dependency_overrides[_get_session] = lambda: Session(empty)
    page = client_for(broken).get(f"{URL_PREFIX}/migrations/{mid}")
    assert page.status_code == 200 and REFRESH.search(page.text)
    assert "Airflow's metadata could not be read: OperationalError: no such table" in _text(page.text)
    assert _cells(page.text, "verify")[1] == "running"


def test_pending_approval_links_to_airflows_required_actions(tmp_path, admin, make_bucket, airflow_db, client_for,
                                                              monkeypatch):
    estate = Estate(tmp_path, admin, make_bucket, objects=3)
    estate.run(stop_before="cutover")
    _policies(monkeypatch, tmp_path / "policy.yaml")
    mid = estate.doc["migration_id"]
    run_id = f"manual__{uuid.uuid4().hex}"  # this test's own run in the shared metadata database
    _airflow_run(run_id, tmp_path / "policy.yaml", waiting_task="approve_cutover")
    client = client_for(create_app(Dashboard()))

    # The DAG run tab: /residency/runs/{DAG_ID}/{RUN_ID}. This run recorded no phase yet,
    # so its migration is found from the policy it was triggered with.
    html = client.get(f"{URL_PREFIX}/runs/residency_migration/{run_id}").text
    text = _text(html)
    assert f"Migration {mid}" in text and "Live" in text and REFRESH.search(html)
    assert "Airflow says the DAG run is running." in text
    link = f'href="/dags/residency_migration/runs/{run_id}/tasks/approve_cutover/required_actions"'
    assert link in html and "Approve the cutover of migration" in text
    assert _cells(html, "cutover")[1] == "waiting for approval"
    assert _cells(html, "preflight")[1] == "not yet"  # this run's own phases: none recorded

    data = client.get(f"{URL_PREFIX}/api/runs/residency_migration/{run_id}").json()
    assert data["migration_id"] == mid and data["dag_run"]["state"] == "running"
    (pending,) = data["pending_approvals"]
    assert pending["task_id"] == "approve_cutover" and pending["assignees"] == ["Mina Park"]

    missing = client.get(f"{URL_PREFIX}/runs/other_dag/manual__nothing")
    assert missing.status_code == 200 and "No configured migration ledger has recorded" in _text(missing.text)
    assert client.get(f"{URL_PREFIX}/api/runs/other_dag/manual__nothing").status_code == 404


def _airflow_run(run_id: str, policy: Path, *, waiting_task: str) -> None:
    """A running DAG run of residency_migration whose approval task waits for an answer."""
    import sqlalchemy as sa

    from airflow.models.dag import DagModel, DagTag
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.dagrun import DagRun
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        if session.get(DagBundleModel, "dags-folder") is None:
            session.add(DagBundleModel(name="dags-folder"))
            session.flush()
        if session.get(DagModel, "residency_migration") is None:
            session.add(DagModel(dag_id="residency_migration", bundle_name="dags-folder",
                                 max_consecutive_failed_dag_runs=0, has_task_concurrency_limits=False))
            session.flush()
            session.add(DagTag(name="residency", dag_id="residency_migration"))
        session.add(DagRun(dag_id="residency_migration", run_id=run_id, run_type="manual", state="running",
                           run_after=dt.datetime.now(dt.timezone.utc), conf={"policy_path": str(policy)}))
        session.flush()
        ti_id = uuid.uuid4()
        session.execute(sa.insert(TaskInstance.__table__).values(
            id=ti_id, task_id=waiting_task, dag_id="residency_migration", run_id=run_id, map_index=-1,
            try_number=1, max_tries=0, pool="default_pool", pool_slots=1, span_status="not_started",
            state="awaiting_input"))
        session.add(HITLDetail(ti_id=ti_id, options=["Approve", "Reject"], subject="Approve the cutover of migration",
                               params={}, params_input={}, assignees=[{"id": "mina", "name": "Mina Park"}]))


# -- policies, connections, secrets ------------------------------------------------------------
def test_policies_from_globs_and_ledgers_from_connections_never_show_a_password(finished, airflow_db, client_for,
                                                                                 monkeypatch, tmp_path):
    ledger_file = tmp_path / "control" / "ledger.db"
    by_conn = dict(finished.doc, ledger_conn_id="residency_ledger")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "a-by-connection.yaml").write_text(yaml.safe_dump(by_conn))
    unreachable = dict(finished.doc, migration_id="unreachable-ledger", ledger_conn_id="pg_ledger")
    (tmp_path / "policies" / "b-unreachable.yaml").write_text(yaml.safe_dump(unreachable))
    with_password = dict(finished.doc, migration_id="pw-in-file", ledger_url="postgresql://u:hunter2@db/x")
    (tmp_path / "policies" / "c-password.yaml").write_text(yaml.safe_dump(with_password))
    monkeypatch.setenv("AIRFLOW_CONN_RESIDENCY_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(ledger_file)}))
    monkeypatch.setenv("AIRFLOW_CONN_PG_LEDGER", json.dumps({
        "conn_type": "postgres", "host": "127.0.0.1", "port": 1, "login": "ledger", "password": "s3cr3t-Pa55",
        "schema": "ledger"}))
    _policies(monkeypatch, tmp_path / "policies" / "*.yaml")
    client = client_for(create_app(Dashboard()))

    html = client.get(URL_PREFIX + "/").text
    assert "s3cr3t-Pa55" not in html and "hunter2" not in html
    assert "9 / 9" in _row(html, finished.doc["migration_id"])  # read through the connection's URL
    errors = _text(html.split("Could not be read", 1)[1])
    assert "c-password.yaml" in errors and "must not hold a password" in errors
    assert "b-unreachable.yaml" in errors and "the ledger cannot be read: OperationalError" in errors
    assert "ledger:***@127.0.0.1:1/ledger" in errors
    api = client.get(URL_PREFIX + "/api/migrations").text
    assert "s3cr3t-Pa55" not in api and "hunter2" not in api

    monkeypatch.delenv("AIRFLOW_CONN_RESIDENCY_LEDGER")
    (source,) = load_sources(str(tmp_path / "policies" / "a-*.yaml"))
    assert source.error == "ledger connection 'residency_ledger': The conn_id `residency_ledger` isn't defined"


def test_no_policy_configured_says_what_to_set(airflow_db, client_for, monkeypatch):
    monkeypatch.delenv("RESIDENCY_POLICIES", raising=False)
    monkeypatch.delenv("RESIDENCY_POLICY", raising=False)
    client = client_for(create_app(Dashboard()))
    assert "Set RESIDENCY_POLICIES" in _text(client.get(URL_PREFIX + "/").text)
    assert client.get(URL_PREFIX + "/api/migrations").json() == {"configured": False, "migrations": [], "errors": []}


# -- the small parts ----------------------------------------------------------------------------
def test_status_is_read_once_per_period_however_many_requests(finished, tmp_path, monkeypatch):
    from residency import progress

    calls: list[str] = []
    real = progress.migration_status
    monkeypatch.setattr(progress, "migration_status", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    now = [0.0]
    board = Dashboard(lambda: str(tmp_path / "policy.yaml"), clock=lambda: now[0])
    (migration,) = board.catalogue().migrations
    for _ in range(5):
        assert board.status(migration)["totals"]["verified"]["objects"] == 9
    assert len(calls) == 1
    now[0] += 2.5
    board.status(migration)
    assert len(calls) == 2


def test_ttl_cache_does_not_keep_failures():
    cache: TTLCache[int] = TTLCache(10, clock=lambda: 0.0)

    def boom() -> int:
        raise RuntimeError("ledger down")

    with pytest.raises(RuntimeError):
        cache.get("k", boom)
    assert cache.get("k", lambda: 7) == 7 and cache.get("k", lambda: 8) == 7


def test_expand_splits_on_pathsep_and_commas_and_reports_empty_globs(tmp_path):
    for name in ("b.yaml", "a.yaml"):
        (tmp_path / name).write_text("x: 1")
    paths, errors = expand(f"{tmp_path}/*.yaml:{tmp_path}/a.yaml, {tmp_path}/none-*.yml")
    assert paths == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    assert [(e.path, e.error) for e in errors] == [(f"{tmp_path}/none-*.yml", "no policy file matches this pattern")]


def test_chart_escapes_and_scales():
    svg = str(timeline_svg([
        {"minute": "2026-05-01T10:00", "copied_objects": 4, "verified_objects": 2, "failed_objects": 0},
        {"minute": "2026-05-01T10:03", "copied_objects": 9, "verified_objects": 9, "failed_objects": 1},
    ], in_scope=10))
    assert svg.startswith("<svg") and svg.count("<polyline") == 3 and "in scope 10" in svg
    assert "10:00 UTC" in svg and "10:03 UTC" in svg and "<script" not in svg
    assert str(timeline_svg([])) == "" and str(timeline_svg([{"minute": "<b>", "copied_objects": 1}])) == ""


def test_failures_and_revocations_show_their_reasons_escaped(finished, airflow_db, client_for, monkeypatch, tmp_path):
    from residency.ledger import Ledger

    mid = finished.doc["migration_id"]
    ledger = Ledger(f"sqlite:///{tmp_path / 'control' / 'ledger.db'}")
    victim = f"s3://{finished.src}/{finished.keys[4]}"
    ledger.update_object(mid, victim, state="failed", reason="checksum mismatch <script>alert(1)</script>")
    ledger.record_revocation(mid, "arn:aws:iam::123456789012:user/affiliate", "AKIAFOREIGN000000001", "delete_key",
                             {"status": "proven", "reason": "InvalidAccessKeyId after, allowed before"})
    ledger.record_revocation(mid, "arn:aws:iam::123456789012:user/affiliate", "AKIAFOREIGN000000002", "delete_key",
                             {"status": "not_proven", "reason": "no probe holds this key"})
    ledger.dispose()
    _policies(monkeypatch, tmp_path / "policy.yaml")
    html = client_for(create_app(Dashboard())).get(f"{URL_PREFIX}/migrations/{mid}").text
    text = _text(html)

    assert "<script>" not in html and "checksum mismatch &lt;script&gt;" in html
    assert "1 objects failed" in text
    assert _cells(html, victim)[1] == "checksum mismatch <script>alert(1)</script>"
    uri, _, _, _, verified, failed, _, _ = _cells(html, f"s3://{finished.src}")
    assert verified.startswith("8 objects") and "88.9% of objects" in verified and failed.startswith("1 objects")
    proven = _cells(html, "access key")  # the path's kind leads each row
    assert proven[1:3] == ["arn:aws:iam::123456789012:user/affiliate", "AKIAFOREIGN000000001"]
    assert proven[4:] == ["proven (denied attempt)", "InvalidAccessKeyId after, allowed before"]
    assert 'class="no">not_proven</td><td>no probe holds this key' in html
