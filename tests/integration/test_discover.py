"""Discovery against a real application database (SQLite and PostgreSQL).

Every text and JSON column outside the policy is read; a column holding URLs of
the overseas buckets, or mentions of their names, is reported as unconfigured. The
PostgreSQL runs get a throwaway database each, so that discovery (which reads whole
schemas) never sees another test's tables.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from residency.errors import PolicyError
from residency.policy import parse_policy
from residency.references.discover import discover

SIG = "f00dfeedc0ffee0123456789abcdef0123456789abcdef0123456789abcdef01"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKENvalue"
PASSWORD = "s3cr3t-pw-never-logged"  # trust auth ignores it; it must not reach a log or the report
VIRTUAL_HOSTED = "https://seoul-line-photos.s3.ap-northeast-2.amazonaws.com/a.jpg"


class AppDb:
    """A fresh application database: a SQLite file, or a throwaway PostgreSQL database."""

    def __init__(self, dialect: str, url: str, connect_url: str) -> None:
        self.dialect = dialect
        self.url = url  # what a policy may hold (no password)
        self.connect_url = connect_url  # what an Airflow connection would give (PostgreSQL: with a password)
        self.engine = sa.create_engine(url)
        self.default = "public" if dialect == "postgresql" else "main"

    def run(self, *statements: str, rows: dict[str, list[dict[str, Any]]] | None = None) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
            for table, values in (rows or {}).items():
                cols = list(values[0])
                conn.execute(sa.text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                                     f"({', '.join(':' + c for c in cols)})"), values)

    @property
    def json_type(self) -> str:
        return "JSONB" if self.dialect == "postgresql" else "JSON"


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppDb]:
    if request.param == "sqlite":
        db = AppDb("sqlite", f"sqlite:///{tmp_path / 'app.db'}", f"sqlite:///{tmp_path / 'app.db'}")
        yield db
        db.engine.dispose()
        return
    server = sa.create_engine(request.getfixturevalue("pg_url"), isolation_level="AUTOCOMMIT")
    name = f"discover_{uuid.uuid4().hex[:12]}"
    with server.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    base = sa.engine.make_url(request.getfixturevalue("pg_url")).set(database=name)
    db = AppDb("postgresql", base.render_as_string(), base.set(password=PASSWORD).render_as_string(hide_password=False))
    try:
        yield db
    finally:
        db.engine.dispose()
        with server.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        server.dispose()


def make_policy(app: AppDb, columns: list[dict[str, Any]] | None = None, discover: Any = True) -> Any:
    return parse_policy({
        "migration_id": "discover-test",
        "home_jurisdiction": "JP",
        "sources": [{"uri": "s3://seoul-line-photos", "conn_id": "aws"}, {"uri": "gs://seoul-line-gcs", "conn_id": "gcs"}],
        "destinations": {"s3": {"uri": "s3://tokyo-line-media", "conn_id": "aws"},
                         "gs": {"uri": "gs://tokyo-line-gcs", "conn_id": "gcs"}},
        "references": {"database_url": app.url, "batch_size": 2,
                       # a policy needs at least one column; this one need not exist for discovery
                       "columns": columns or [{"table": "photos", "key": "id", "column": "url"}],
                       "discover": discover,
                       "hosts": [{"host": "media.line-cdn.kr", "bucket": "s3://seoul-line-photos",
                                  "path_prefix": "photos/"}]},
    })


def by_label(report: Any) -> dict[str, Any]:
    return {c.label: c for c in report.columns}


def test_an_unconfigured_text_column_is_reported_and_a_configured_one_is_not(app):
    app.run(
        "CREATE TABLE photos (id INTEGER PRIMARY KEY, url VARCHAR(500), caption TEXT, taken DATE, size INTEGER)",
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT, score NUMERIC(5,2))",
        "CREATE TABLE avatars (user_id VARCHAR(20) PRIMARY KEY, src VARCHAR(1000))",
        rows={
            "photos": [{"id": 1, "url": VIRTUAL_HOSTED, "caption": "sunset", "taken": None, "size": 3}],
            "messages": [{"id": 1, "body": f"look <a href=\"{VIRTUAL_HOSTED}\">here</a>", "score": 1},
                         {"id": 2, "body": "no link", "score": 2},
                         {"id": 3, "body": "cdn: https://media.line-cdn.kr/photos/b.jpg and "
                                           "https://seoul-line-photos.s3.amazonaws.com/c.png", "score": 3}],
            "avatars": [{"user_id": "u1", "src": "gs://seoul-line-gcs/v/clip.mp4"}, {"user_id": "u2", "src": None}],
        },
    )
    report = discover(make_policy(app, [{"table": "photos", "key": "id", "column": "url"}]))
    columns = by_label(report)
    assert report.enabled and report.schemas == (app.default,)
    assert set(report.unconfigured) == {"messages.body", "avatars.src"}
    body = columns["messages.body"]
    assert (body.kind, body.cells, body.cells_with_references, body.references) == ("text", 3, 2, 3)
    assert any(VIRTUAL_HOSTED in e for e in body.examples) and len(body.examples) == 3
    src = columns["avatars.src"]
    assert (src.kind, src.cells, src.cells_with_references, src.references) == ("url", 2, 1, 1)
    assert columns["photos.url"].configured and columns["photos.url"].cells == 0
    # photos.caption, messages.body, avatars.user_id, avatars.src: not url (configured), dates or numbers.
    assert report.scanned_columns == 4 and report.tables == ("avatars", "messages", "photos")
    assert report.as_dict()["unconfigured"] == list(report.unconfigured)


def test_a_json_column_with_a_deeply_nested_gs_uri_is_reported(app):
    document = {"theme": "dark", "album": {"pages": [{"items": [{"media": {"src": "gs://seoul-line-gcs/v/clip.mp4"}}]}]}}
    app.run(f"CREATE TABLE settings (id INTEGER PRIMARY KEY, prefs {app.json_type}, raw TEXT)",
            rows={"settings": [{"id": 1, "prefs": json.dumps(document), "raw": json.dumps(document)},
                               {"id": 2, "prefs": json.dumps({"theme": "light"}), "raw": None}]})
    report = discover(make_policy(app))
    columns = by_label(report)
    assert set(report.unconfigured) == {"settings.prefs", "settings.raw"}
    prefs = columns["settings.prefs"]
    assert (prefs.kind, prefs.cells, prefs.cells_with_references, prefs.references) == ("json", 2, 1, 1)
    assert prefs.examples == ("gs://seoul-line-gcs/v/clip.mp4",)
    assert columns["settings.raw"].kind == "json"  # JSON held in a text column: the guess says so


def test_excluded_tables_and_columns_and_own_ledger_tables_are_skipped(app, caplog):
    app.run("CREATE TABLE audit_log (id INTEGER PRIMARY KEY, line TEXT)",
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, title TEXT)",
            "CREATE TABLE residency_objects (src_uri VARCHAR(2048) PRIMARY KEY)",
            rows={"audit_log": [{"id": 1, "line": f"copied {VIRTUAL_HOSTED}"}],
                  "notes": [{"id": 1, "body": f"old: {VIRTUAL_HOSTED}", "title": "s3://seoul-line-photos/t.jpg"}],
                  "residency_objects": [{"src_uri": "s3://seoul-line-photos/a.jpg"}]})
    caplog.set_level(logging.WARNING, logger="residency.references.discover")
    report = discover(make_policy(app, discover={"exclude": ["audit_log", "notes.body", "gone"]}))
    assert report.unconfigured == ("notes.title",)
    assert set(report.excluded) == {"audit_log", "notes.body"}
    assert report.skipped_own_tables == ("residency_objects",)
    assert report.tables == ("notes",) and report.scanned_columns == 1
    assert "['gone'] match no table or column" in caplog.text


def test_a_bare_mention_of_a_bucket_name_is_counted(app):
    app.run("CREATE TABLE tickets (id INTEGER PRIMARY KEY, body TEXT)",
            rows={"tickets": [{"id": 1, "body": "The files are still in seoul-line-photos, see ticket 12."},
                              {"id": 2, "body": "seoul-line-photos-archive is another team's bucket"}]})
    report = discover(make_policy(app))
    body = by_label(report)["tickets.body"]
    assert report.unconfigured == ("tickets.body",)
    assert (body.kind, body.cells_with_references, body.references) == ("text", 1, 1)
    assert "still in seoul-line-photos" in body.examples[0]


def test_presigned_signatures_tokens_and_passwords_never_reach_the_report_or_the_log(app, caplog):
    presigned = (f"{VIRTUAL_HOSTED}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                 "&X-Amz-Credential=AKIAEXAMPLE%2F20210315%2Fap-northeast-2%2Fs3%2Faws4_request"
                 f"&X-Amz-Date=20210315T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token={TOKEN}&X-Amz-Signature={SIG}")
    app.run("CREATE TABLE shares (id INTEGER PRIMARY KEY, link TEXT, note TEXT)",
            rows={"shares": [{"id": 1, "link": presigned, "note": f"download: {presigned} (expires)"}]})
    caplog.set_level(logging.DEBUG)
    report = discover(make_policy(app), database_url=app.connect_url)
    assert set(report.unconfigured) == {"shares.link", "shares.note"}
    assert by_label(report)["shares.link"].kind == "url"
    dumped = json.dumps(report.as_dict())
    for secret in (SIG, TOKEN, PASSWORD):
        assert secret not in dumped and secret not in caplog.text
    assert "REDACTED" in dumped
    assert "shares.link holds 1 reference(s)" in caplog.text  # one INFO line per unconfigured column


def test_a_column_with_other_buckets_only_is_not_reported(app):
    app.run("CREATE TABLE links (id INTEGER PRIMARY KEY, url TEXT, blob_data BLOB)"
            if app.dialect == "sqlite" else "CREATE TABLE links (id INTEGER PRIMARY KEY, url TEXT, blob_data BYTEA)",
            rows={"links": [{"id": 1, "url": "https://other-bucket.s3.ap-northeast-2.amazonaws.com/a.jpg",
                             "blob_data": b"s3://seoul-line-photos/a.jpg"},
                            {"id": 2, "url": "s3://seoul-line-photos-archive/x.jpg", "blob_data": None},
                            {"id": 3, "url": "https://tokyo-line-media.s3.ap-northeast-1.amazonaws.com/a.jpg",
                             "blob_data": None}]})
    report = discover(make_policy(app))
    assert report.unconfigured == () and report.columns == ()
    assert report.scanned_columns == 1 and report.cells_scanned == 3  # binary columns are not read


def test_a_schema_that_does_not_exist_fails_before_any_table_is_read(app, caplog):
    app.run("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT)",
            rows={"messages": [{"id": 1, "body": VIRTUAL_HOSTED}]})
    caplog.set_level(logging.DEBUG, logger="residency.references.discover")
    with pytest.raises(PolicyError) as caught:
        discover(make_policy(app, discover={"schemas": [app.default, "no_such_schema"]}))
    assert caught.value.field == "references.discover.schemas" and caught.value.value == "no_such_schema"
    assert "no such schema" in str(caught.value)
    assert " read, column(s)" not in caplog.text


def test_discovery_turned_off_reads_nothing(app):
    app.run("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT)",
            rows={"messages": [{"id": 1, "body": VIRTUAL_HOSTED}]})
    report = discover(make_policy(app, discover=False))
    assert not report.enabled and report.tables == () and report.unconfigured == ()


def test_a_second_named_schema_is_scanned_on_postgresql(app):
    if app.dialect != "postgresql":
        pytest.skip("SQLite has no second schema without ATTACH")
    app.run("CREATE SCHEMA media",
            "CREATE TABLE photos (id INTEGER PRIMARY KEY, url TEXT)",
            "CREATE TABLE media.photos (id INTEGER PRIMARY KEY, url TEXT)",
            "CREATE TABLE media.profiles (id INTEGER PRIMARY KEY, data JSONB)",
            rows={"photos": [{"id": 1, "url": VIRTUAL_HOSTED}],
                  "media.photos": [{"id": 1, "url": VIRTUAL_HOSTED}],
                  "media.profiles": [{"id": 1, "data": json.dumps({"avatar": "https://media.line-cdn.kr/photos/a.jpg"})}]})
    policy = make_policy(app, [{"table": "photos", "key": "id", "column": "url"}],
                         discover={"schemas": ["public", "media"]})
    report = discover(policy)
    assert report.schemas == ("public", "media")
    # The configured column lives in the default schema; a table of the same name elsewhere is not configured.
    assert set(report.unconfigured) == {"media.photos.url", "media.profiles.data"}
    assert by_label(report)["photos.url"].configured
    assert by_label(report)["media.profiles.data"].kind == "json"
    assert report.tables == ("media.photos", "media.profiles")
