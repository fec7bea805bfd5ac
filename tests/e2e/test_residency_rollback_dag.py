"""End to end: real `airflow dags test` runs of residency_rollback, approvals answered.

The estate and the Airflow home are the migration's e2e fixtures (imported, one
instance for this module). The cutover is made once, in this process, by the
engine's own phases in the DAG's order (plan, preflight, inventory, copy, verify,
recheck, an approval, cutover): a ledger with a journal and an application
database pointing home. Both SQLite files are saved then and put back before each
test, so every test starts from the same cut-over state.

`airflow dags test` never answers a human-in-the-loop task itself: it waits while
the task is in `awaiting_input`. :class:`Approver` answers it from outside, as a
manager would, through the code the REST API runs for `PATCH .../hitlDetails`
(a child process on the run's metadata database). The run's note goes through
:class:`FakeNoteApi`, a fake of the two Airflow REST API calls that
``residency_airflow.set_run_note`` makes (no API server runs under `dags test`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_residency_migration_dag import ROOT, airflow_env, estate  # noqa: F401 - the migration's fixtures

from residency import pipeline, references
from residency.clients import aws_from_fields, gcs_from_fields
from residency.errors import PolicyError
from residency.evidence import rollback as rollback_evidence
from residency.evidence.chain import ChainHead, verify_audit_log
from residency.ledger import Ledger
from residency.localcloud.dagrun import run_dag_test
from residency.rollback_phase import plan_rollback

pytestmark = pytest.mark.e2e
DAG_ID = "residency_rollback"
APPROVER = "rollback-approver"


# -- the cut-over state every test starts from -----------------------------------------

def credentials_of(est) -> Any:
    """conn_id -> credentials, from the ``AIRFLOW_CONN_*`` values the DAG runs read."""
    conns = {k.removeprefix("AIRFLOW_CONN_").lower(): json.loads(v) for k, v in est.connection_env().items()}

    def credentials(conn_id: str) -> Any:
        conn = conns[conn_id]
        if conn["conn_type"] == "google_cloud_platform":
            return gcs_from_fields(conn_id, conn.get("extra"))
        return aws_from_fields(conn_id, conn.get("login"), conn.get("password"), conn.get("extra"))

    return credentials


def dump(db: Path) -> str:
    """The whole database as SQL text (schema, every row, every value with its type)."""
    with closing(sqlite3.connect(db)) as conn:
        return "\n".join(conn.iterdump())


def rows(db: Path, table: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()  # noqa: S608 - the estate's tables


def copy_db(src: Path, dst: Path) -> None:
    """SQLite's online backup: consistent with the write-ahead log, unlike a file copy."""
    with closing(sqlite3.connect(src)) as source, closing(sqlite3.connect(dst)) as target:
        source.backup(target)


def journal(ledger_db: Path, migration_id: str) -> list[tuple]:
    with closing(sqlite3.connect(ledger_db)) as conn:
        return conn.execute(
            "SELECT table_name, url_column, key_value, state, old_url, new_url FROM residency_reference_journal "
            "WHERE migration_id = ? ORDER BY id", (migration_id,)).fetchall()


def cut_over_by_phases(est: Any, run_id: str) -> pipeline.Runtime:
    """The migration up to its cutover's approval, by the engine's own phases in the DAG's order
    (plan, preflight, inventory, copy, verify, recheck, an approval); the caller cuts over."""
    credentials = credentials_of(est)
    plan = pipeline.plan_run({"policy_path": str(est.policy_path), "dry_run": False, "evidence_dir": ""},
                             {"dag_id": "residency_migration", "run_id": run_id}, credentials)
    rt = pipeline.Runtime(plan, credentials)
    shards = pipeline.run_inventory(rt, pipeline.preflight(rt)["placements"])["shards"]
    for shard in shards:
        pipeline.copy_shard(rt, shard)
    for shard in shards:
        pipeline.verify_shard(rt, shard)
    pipeline.recheck(rt)
    pipeline.record_approval(rt, "cutover", {"chosen_options": ["Approve"], "responded_by_user": {
        "id": "cutover-approver", "name": "cutover-approver"}, "responded_at": "2026-11-22T00:00:00+00:00"})
    return rt


@dataclass(frozen=True)
class CutOver:
    migration_id: str
    app_db: Path
    ledger_db: Path
    before: str  # dump of the application database before the cutover
    after: str  # ... and right after it
    rewritten: int
    saved: Path  # folder of the saved SQLite files


@pytest.fixture(scope="module")
def cut_over(estate, tmp_path_factory) -> CutOver:  # noqa: F811 - the imported fixture
    est, _ = estate
    app_db = Path(est.app_db_url.removeprefix("sqlite:///"))
    before = dump(app_db)
    rt = cut_over_by_phases(est, "manual__cutover_before_rollback")
    result = pipeline.cutover(rt)
    assert result["rewritten"] == est.media_references > 0
    ledger_db = Path(rt.policy.ledger_url.removeprefix("sqlite:///"))
    rt.ledger.dispose()
    saved = tmp_path_factory.mktemp("cut-over")
    copy_db(app_db, saved / "app.db")
    copy_db(ledger_db, saved / "ledger.db")
    after = dump(app_db)
    assert after != before
    return CutOver(rt.policy.migration_id, app_db, ledger_db, before, after, result["rewritten"], saved)


@pytest.fixture
def cut(cut_over) -> CutOver:
    """The cut-over state, put back (application database and ledger) before the test."""
    copy_db(cut_over.saved / "app.db", cut_over.app_db)
    copy_db(cut_over.saved / "ledger.db", cut_over.ledger_db)
    assert dump(cut_over.app_db) == cut_over.after
    return cut_over


# -- answering the approval, and the run's note ------------------------------------------

_ANSWER = """
import datetime as dt, json, sys, time
import sqlalchemy as sa
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
from airflow.models.hitl import HITLDetail
from airflow.models.taskinstance import TaskInstance
from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState

dag_id, task_id, option, user, comment = sys.argv[1:6]
since = dt.datetime.fromtimestamp(float(sys.argv[6]), dt.timezone.utc)
deadline = float(sys.argv[7])
asked = None
while asked is None and time.time() < deadline:
    try:
        with create_session() as session:  # commits when the block ends
            ti = session.scalars(sa.select(TaskInstance).where(
                TaskInstance.dag_id == dag_id, TaskInstance.task_id == task_id,
                TaskInstance.state == TaskInstanceState.AWAITING_INPUT, TaskInstance.start_date >= since)).first()
            if ti is not None:
                detail = session.scalars(sa.select(HITLDetail).where(HITLDetail.ti_id == ti.id)).one()
                asked = {"run_id": ti.run_id, "subject": detail.subject, "body": detail.body}
                update_hitl_detail(dag_id, ti.run_id, task_id, UpdateHITLDetailPayload(
                    chosen_options=[option], params_input={"comment": comment}),
                    user=SimpleAuthManagerUser(username=user, role="admin"), session=session, map_index=ti.map_index)
    except sa.exc.OperationalError:
        asked = None  # the run's own process held the SQLite write lock: try again
    if asked is None:
        time.sleep(0.5)
if asked is None:
    sys.exit("no approval was asked")
print(json.dumps(asked))
"""


class Approver:
    """Answers ``task_id`` of the next run with ``option``, as ``APPROVER``, while the run waits.

    A child process with the run's ``AIRFLOW_HOME`` runs the REST API's own handler of
    ``PATCH .../hitlDetails`` (``update_hitl_detail``): the response is recorded and
    the task resumed exactly as when a manager answers in the UI. ``asked`` is what
    the approver was shown (``subject``, ``body``), or ``None`` if nothing was asked.
    """

    def __init__(self, env: dict[str, str], option: str, task_id: str = "approve_rollback",
                 dag_id: str = DAG_ID) -> None:
        self.env, self.option, self.task_id, self.dag_id = env, option, task_id, dag_id
        self.asked: dict[str, Any] | None = None

    def __enter__(self) -> Approver:
        now = time.time()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _ANSWER, self.dag_id, self.task_id, self.option, APPROVER, f"{self.option} in a test",
             str(now - 1), str(now + 600)],
            env={**os.environ, **self.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            out, err = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # the run ended without asking
            self._proc.kill()
            out, err = self._proc.communicate()
        self.errors = err
        if self._proc.returncode == 0:
            self.asked = json.loads(out.strip().splitlines()[-1])


class FakeNoteApi:
    """A fake of the Airflow REST API calls that ``set_run_note`` makes (``POST /auth/token``,
    ``PATCH /api/v2/dags/{dag}/dagRuns/{run}?update_mask=note``), named as a fake: it
    keeps the notes it was sent."""

    def __init__(self) -> None:
        self.notes: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")

            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                ok = self.path == "/auth/token" and body.get("username") == "manager"
                self._reply(201 if ok else 401, {"access_token": "fake-token"} if ok else {"detail": "no"})

            def do_PATCH(self) -> None:  # noqa: N802
                body = self._body()
                if self.headers.get("Authorization") != "Bearer fake-token" or "update_mask=note" not in self.path:
                    self._reply(401, {"detail": "no"})
                    return
                fake.notes.append({"path": self.path.split("?")[0], "note": body.get("note", "")})
                self._reply(200, {"note": body.get("note")})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        host = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.env = {"AIRFLOW_CONN_RESIDENCY_AIRFLOW_API": json.dumps(
            {"conn_type": "http", "host": host, "login": "manager", "password": "fake-password"})}

    @property
    def note(self) -> str:
        assert self.notes, "the run set no note"
        return self.notes[-1]["note"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def notes():
    api = FakeNoteApi()
    yield api
    api.close()


def step_run(dag_id: str, estate, airflow_env, notes, out: Path, *, approve: str | None = None,  # noqa: F811
             timeout: int = 300, **conf):
    """One ``dags test`` run of a single-step DAG; ``approve``: "Approve" / "Reject" for its
    ``approve_<step>`` task (None: ask nobody). Returns the outcome and what the approver was shown."""
    est, _ = estate
    conf = {"policy_path": str(est.policy_path), "evidence_dir": str(out), "dry_run": False, **conf}
    env = {**airflow_env, **est.connection_env(), **notes.env}
    if approve is None:
        return run_dag_test(dag_id, conf, env=env, log_path=out / "dag-run.log", timeout=timeout), None
    task_id = "approve_" + dag_id.removeprefix("residency_")
    with Approver(env, approve, task_id=task_id, dag_id=dag_id) as approver:
        try:
            outcome = run_dag_test(dag_id, conf, env=env, log_path=out / "dag-run.log", timeout=timeout)
        except subprocess.TimeoutExpired:
            outcome = None
    assert outcome is not None and approver.asked, f"the approval was not answered: {approver.errors[-2000:]}"
    return outcome, approver.asked


def rollback_run(estate, airflow_env, notes, out: Path, *, approve: str | None = None, **conf):  # noqa: F811
    """One ``dags test`` run of the rollback DAG."""
    return step_run(DAG_ID, estate, airflow_env, notes, out, approve=approve, **{"table": "", **conf})


def evidence_of(out: Path, name: str = "rollback-evidence.json") -> dict[str, Any]:
    return json.loads((out / name).read_text())


# -- the tests ---------------------------------------------------------------------------

def test_approved_rollback_restores_the_database_byte_for_byte(estate, airflow_env, cut, notes, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    outcome, asked = rollback_run(estate, airflow_env, notes, out, approve="Approve")
    assert outcome.succeeded, f"{outcome.state}, failed {outcome.failed_tasks}: see {outcome.log_path}"
    # The approver read what approving would do.
    assert asked["subject"] == f"Approve the rollback of migration {cut.migration_id}"
    assert f"| **would be restored** | **{cut.rewritten:,}** |" in asked["body"]
    assert dump(cut.app_db) == cut.before  # every table, every row, every value: as before the cutover

    ev = evidence_of(out)
    assert ev["verdict"] == "ROLLED_BACK" and ev["problems"] == []
    assert ev["migration_id"] == cut.migration_id and ev["kind"] == "rollback_evidence"
    assert ev["policy"]["sha256"] == pipeline.load_policy(estate[0].policy_path).sha256
    assert ev["run"]["dag_id"] == DAG_ID and ev["run"]["run_id"].startswith("manual__")
    assert (ev["approval"]["decision"], ev["approval"]["who"]) == ("approved", APPROVER) and ev["approval"]["when"]
    assert ev["result"] == {"restored": cut.rewritten, "skipped_changed": 0, "not_applied": 0, "dry_run": False,
                            "table": None}
    assert ev["conflicts"] == [] and ev["remaining"] == {"holds_cutover_value": 0, "changed_since_cutover": 0,
                                                         "never_applied": 0}
    assert (ev["proof"]["cells"], ev["proof"]["proven"], ev["proof"]["not_proven"]) == (cut.rewritten, cut.rewritten, 0)
    assert {s for states in ev["journal"].values() for s in states} == {"rolled_back"}
    # The audit chain as exported verifies against the head the evidence states, and holds the rollback.
    audit = out / ev["audit_log"]["file"]
    head = verify_audit_log(audit, expect=ChainHead(ev["audit_log"]["records"], ev["audit_log"]["head"]))
    assert head.records > 0 and ev["audit_log"]["verified"]
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert {"approval.rollback", "rollback.done", "rollback_run.done"} <= set(events)
    assert "ROLLED_BACK" in (out / "rollback-evidence.html").read_text()
    assert notes.note.startswith(f"ROLLED_BACK: {cut.rewritten:,} cell(s) restored in this run")
    assert not (out / "rollback-plan.json").exists()


def test_cell_changed_after_cutover_is_a_conflict_and_left_alone(estate, airflow_env, cut, notes, tmp_path):  # noqa: F811
    """One table only (users): the cell the application changed since the cutover stays as the application
    wrote it, the others of the table are restored, and the other tables are not touched."""
    key = next(j[2] for j in journal(cut.ledger_db, cut.migration_id) if j[0] == "users" and j[3] == "applied")
    mine = "https://cdn.example.jp/avatars/uploaded-after-the-cutover.jpg"
    with closing(sqlite3.connect(cut.app_db)) as db, db:
        db.execute("UPDATE users SET avatar_url = ? WHERE id = ?", (mine, int(key)))
    out = tmp_path / "out"
    outcome, _ = rollback_run(estate, airflow_env, notes, out, approve="Approve", table="users")
    assert not outcome.succeeded and outcome.failed_tasks == ("check_complete",)

    ev = evidence_of(out)
    assert ev["verdict"] == "PARTIAL" and ev["scope"]["table"] == "users"
    users_cells = sum(1 for j in journal(cut.ledger_db, cut.migration_id) if j[0] == "users")
    assert ev["result"]["restored"] == users_cells - 1 and ev["result"]["skipped_changed"] == 1
    (conflict,) = ev["conflicts"]
    assert {k: conflict[k] for k in ("table", "column", "key_column", "key", "reason", "found")} == {
        "table": "users", "column": "avatar_url", "key_column": "id", "key": key, "reason": "changed_since_cutover",
        "found": mine}
    assert (ev["proof"]["proven"], ev["proof"]["not_proven"]) == (users_cells - 1, 0)
    assert ev["problems"] == ["1 cell(s) changed by the application since the cutover were left alone, not "
                              "overwritten (listed under conflicts)."]
    assert "uploaded-after-the-cutover.jpg" in (out / "rollback-evidence.html").read_text()
    # The application's own write survives; the rest of users is as before the cutover; other tables untouched.
    with closing(sqlite3.connect(":memory:")) as scratch:  # the pre-cutover users table, from its dump
        scratch.executescript(cut.before)
        users_then = dict((r[0], r) for r in scratch.execute("SELECT * FROM users"))
    users_now = {r[0]: r for r in rows(cut.app_db, "users")}
    assert users_now[int(key)][2] == mine
    assert {k: v for k, v in users_now.items() if k != int(key)} == {
        k: v for k, v in users_then.items() if k != int(key)}
    with closing(sqlite3.connect(":memory:")) as scratch:
        scratch.executescript(cut.after)
        for table in ("photos", "messages", "videos"):
            assert rows(cut.app_db, table) == scratch.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    assert notes.note.startswith("PARTIAL: 1 cell(s) changed by the application since the cutover were left alone")
    assert "PARTIAL: 1 cell(s) changed" in outcome.log_path.read_text()  # the task's failure says it too


def test_rejected_rollback_changes_nothing(estate, airflow_env, cut, notes, tmp_path):  # noqa: F811
    journal_then = journal(cut.ledger_db, cut.migration_id)
    out = tmp_path / "out"
    outcome, asked = rollback_run(estate, airflow_env, notes, out, approve="Reject")
    assert asked is not None, "the approval was never asked"
    assert not outcome.succeeded and outcome.failed_tasks == ("check_complete",)
    assert "Skipping downstream tasks" in outcome.log_path.read_text()
    assert dump(cut.app_db) == cut.after
    assert journal(cut.ledger_db, cut.migration_id) == journal_then
    ev = evidence_of(out)
    assert ev["verdict"] == "NOT_ROLLED_BACK" and ev["result"] is None
    assert (ev["approval"]["decision"], ev["approval"]["who"]) == ("rejected", APPROVER)
    assert ev["remaining"]["holds_cutover_value"] == cut.rewritten and ev["conflicts"] == []
    assert notes.note.startswith(f"NOT_ROLLED_BACK: The rollback was rejected by {APPROVER} at ")


def test_dry_run_changes_nothing_and_writes_a_plan(estate, airflow_env, cut, notes, tmp_path):  # noqa: F811
    journal_then = journal(cut.ledger_db, cut.migration_id)
    out = tmp_path / "out"
    outcome, _ = rollback_run(estate, airflow_env, notes, out, dry_run=True)
    assert outcome.succeeded, f"a dry run is green: {outcome.state}, failed {outcome.failed_tasks}"
    assert "asks no approval" in outcome.log_path.read_text()
    assert dump(cut.app_db) == cut.after
    assert journal(cut.ledger_db, cut.migration_id) == journal_then
    plan = evidence_of(out, "rollback-plan.json")
    assert plan["verdict"] == "PLAN" and plan["kind"] == "rollback_plan" and plan["proof"] is None
    assert plan["result"]["restored"] == cut.rewritten and plan["result"]["dry_run"] is True
    assert plan["remaining"]["holds_cutover_value"] == cut.rewritten and plan["conflicts"] == []
    assert (out / "rollback-plan.html").exists()
    assert not (out / "rollback-evidence.json").exists() and not (out / "rollback-audit.jsonl").exists()
    assert notes.note.startswith(f"PLAN (dry run): {cut.rewritten:,} cell(s) would be restored")


def test_a_table_it_cannot_roll_back_fails_the_plan_naming_the_field(estate, airflow_env, cut, notes, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    outcome, asked = rollback_run(estate, airflow_env, notes, out, table="payments")
    # The evidence task fails too (there is no plan to report on), which keeps the run failed.
    assert not outcome.succeeded and outcome.failed_tasks == ("evidence", "plan") and asked is None
    log = outcome.log_path.read_text()
    assert "no rollback evidence: the plan task failed" in log and not (out / "rollback-evidence.json").exists()
    assert "params.table" in log and "'payments'" in log and "not a table of references.columns" in log
    assert "BEGIN propose rollback" not in log
    assert dump(cut.app_db) == cut.after

    # A configured table with no journal rows (this migration id never cut anything over).
    est, _ = estate
    other = est.policy_path.with_name("policy-never-cut-over.yaml")
    other.write_text(est.policy_path.read_text().replace(f"migration_id: {cut.migration_id}",
                                                         "migration_id: never-cut-over"))
    with pytest.raises(PolicyError) as err:
        plan_rollback({"policy_path": str(other), "table": "users"}, {"run_id": "manual__test"},
                      credentials_of(est))
    assert err.value.field == "params.table" and "has no rows for this table" in str(err.value)
    with pytest.raises(PolicyError) as err:
        plan_rollback({"policy_path": str(other), "table": ""}, {"run_id": "manual__test"}, credentials_of(est))
    assert err.value.field == "migration_id" and "the cutover never ran" in str(err.value)


def test_evidence_is_partial_when_a_restored_cell_changed_again_or_the_chain_breaks(estate, cut, tmp_path):  # noqa: F811
    """The evidence's own checks, without a DAG run: the proof is read now, and the chain is verified now."""
    est, _ = estate
    policy = pipeline.load_policy(est.policy_path)
    ledger = Ledger(policy.ledger_url)
    try:
        result = references.rollback(policy, ledger, table="photos")
        assert result.restored > 0 and result.skipped_changed == 0
        key = next(j[2] for j in journal(cut.ledger_db, cut.migration_id) if j[0] == "photos" and j[1] == "url")
        with closing(sqlite3.connect(cut.app_db)) as db, db:  # the application writes after the rollback
            db.execute("UPDATE photos SET url = 'https://cdn.example.jp/p/new.jpg' WHERE id = ?", (int(key),))

        def write(out: Path) -> dict[str, Any]:
            return rollback_evidence.write_rollback_evidence(
                policy, ledger, out, database_url=est.app_db_url, run={"run_id": "manual__test"}, table="photos",
                result=dataclasses.asdict(result), approval=None, software={}, dry_run=False).document

        ev = write(tmp_path / "one")
        assert ev["verdict"] == "PARTIAL" and ev["conflicts"] == []
        assert (ev["proof"]["proven"], ev["proof"]["not_proven"]) == (result.restored - 1, 1)
        (example,) = ev["proof"]["examples"]
        assert (example["table"], example["column"], example["key"], example["reason"], example["found"]) == (
            "photos", "url", key, "changed_since_rollback", "https://cdn.example.jp/p/new.jpg")
        assert ev["problems"] == [f"1 of {result.restored:,} cell(s) marked rolled back do not hold their value from "
                                  "before the cutover now (1 changed since rollback); examples are listed under proof."]
        # An audit record edited in the ledger: the chain is not exported, and the evidence says why.
        with closing(sqlite3.connect(cut.ledger_db)) as db, db:
            db.execute("UPDATE residency_audit SET data = '{}' WHERE migration_id = ? AND seq = 2", (cut.migration_id,))
        ev = write(tmp_path / "two")
        assert ev["verdict"] == "PARTIAL" and ev["audit_log"]["verified"] is False
        assert any(p.startswith("The audit log does not verify: audit chain broken at seq 2") for p in ev["problems"])
        assert not (tmp_path / "two" / "rollback-audit.jsonl").exists()
    finally:
        ledger.dispose()

