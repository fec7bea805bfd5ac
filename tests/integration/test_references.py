"""Reference cutover, rollback and residual scan against a real SQLite application DB.

The ledger runs on SQLite and on the PostgreSQL server of this machine
(``postgresql+psycopg2://postgres@127.0.0.1:5432/test``); the PostgreSQL cases
are skipped, with the reason, only when that server does not answer.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from residency import ledger as ledger_mod
from residency.errors import PolicyError
from residency.ledger import Ledger
from residency.policy import Policy, parse_policy
from residency.references import CutoverResult, cutover, rollback, scan_residual

DST = "tokyo-line-media"
TOKYO = "ap-northeast-1"
UNICODE_KEY = "한국 사진/셀카 1.jpg"
UNICODE_KEY_QUOTED = "%ED%95%9C%EA%B5%AD%20%EC%82%AC%EC%A7%84/%EC%85%80%EC%B9%B4%201.jpg"

# (key, state) of the source objects the ledger knows; anything else is not in scope.
LEDGER_OBJECTS = [
    ("seoul-line-photos", "a.jpg", "verified"),
    ("seoul-line-photos", UNICODE_KEY, "verified"),
    ("seoul-line-photos", "c+d%e.png", "verified"),
    ("seoul-line-photos", "failed.jpg", "failed"),
    ("seoul-line-photos", "copied.jpg", "copied"),
    ("seoul-line-video", "v.mp4", "verified"),
    ("seoul-line-video", "already.mp4", "cut_over"),
]

PHOTOS = {
    1: "s3://seoul-line-photos/a.jpg",
    2: f"https://seoul-line-photos.s3.ap-northeast-2.amazonaws.com/{UNICODE_KEY_QUOTED}?v=3",
    3: "https://s3.ap-northeast-2.amazonaws.com/seoul-line-photos/c+d%25e.png",  # '+' is a literal plus
    4: "s3://seoul-line-photos/failed.jpg",
    5: "s3://seoul-line-photos/notes.json",  # not media: never in the ledger
    6: None,
    7: "https://example.com/x.jpg",
    8: "s3://tokyo-line-media/seoul-line-photos/a.jpg",  # already domestic, written by the app
    9: "https://seoul-line-photos.s3.amazonaws.com/copied.jpg",  # global virtual-hosted host
    10: "s3://other-bucket/a.jpg",
    11: "s3://seoul-line-photos/missing.jpg",  # dangling
}
PROFILES = {
    "alice": "https://seoul-line-video.s3.ap-northeast-2.amazonaws.com/v.mp4?X-Cache=1&y=2",
    "bob": "s3://seoul-line-video/already.mp4",
    "carol": "s3://seoul-line-photos/a.jpg",
    "dave": "not a url",
}

# What a cutover must write: same style, same query, the Tokyo host for HTTPS styles.
EXPECTED_PHOTOS = dict(PHOTOS) | {
    1: "s3://tokyo-line-media/seoul-line-photos/a.jpg",
    2: f"https://tokyo-line-media.s3.ap-northeast-1.amazonaws.com/seoul-line-photos/{UNICODE_KEY_QUOTED}?v=3",
    # the key's own percent-encoding is kept ('+' as written, a literal plus in a path)
    3: "https://s3.ap-northeast-1.amazonaws.com/tokyo-line-media/seoul-line-photos/c+d%25e.png",
}
EXPECTED_PROFILES = dict(PROFILES) | {
    "alice": "https://tokyo-line-media.s3.ap-northeast-1.amazonaws.com/seoul-line-video/v.mp4?X-Cache=1&y=2",
    "bob": "s3://tokyo-line-media/seoul-line-video/already.mp4",
    "carol": "s3://tokyo-line-media/seoul-line-photos/a.jpg",
}


def tokyo(_ref: Any) -> str:
    return TOKYO


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture
def migration_id() -> str:
    return f"test-refs-{uuid.uuid4().hex[:12]}"  # unique: the PostgreSQL ledger is shared


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path, migration_id: str) -> Iterator[Ledger]:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    led = Ledger(url)
    led.create_schema()
    yield led
    if request.param == "postgresql":  # leave the shared database as found
        with led.engine.begin() as conn:
            for table in (ledger_mod.objects, ledger_mod.journal, ledger_mod.audit, ledger_mod.phases,
                          ledger_mod.unreadable):
                conn.execute(table.delete().where(table.c.migration_id == migration_id))
    led.dispose()


@pytest.fixture
def app_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE photos (id INTEGER PRIMARY KEY, url TEXT)")
        conn.exec_driver_sql('CREATE TABLE "profiles" ("user_id" VARCHAR(40) PRIMARY KEY, "avatar_url" TEXT)')
        conn.execute(sa.text("INSERT INTO photos (id, url) VALUES (:k, :u)"), [{"k": k, "u": u} for k, u in PHOTOS.items()])
        conn.execute(
            sa.text("INSERT INTO profiles (user_id, avatar_url) VALUES (:k, :u)"),
            [{"k": k, "u": u} for k, u in PROFILES.items()],
        )
    engine.dispose()
    return url


@pytest.fixture
def policy(ledger: Ledger, app_url: str, migration_id: str) -> Policy:
    rows = []
    for bucket, key, _state in LEDGER_OBJECTS:
        rows.append({
            "src_uri": f"s3://{bucket}/{key}", "src_bucket_uri": f"s3://{bucket}",
            "dst_uri": f"s3://{DST}/{bucket}/{key}", "route": "s3->s3", "shard": 0, "size": 10,
            "content_type": "image/jpeg", "media_type": "image", "src_version": None, "src_etag": '"e"',
            "src_checksums": {},
        })
    assert ledger.upsert_discovered(migration_id, rows)["new"] == len(rows)
    for bucket, key, state in LEDGER_OBJECTS:
        ledger.update_object(migration_id, f"s3://{bucket}/{key}", state=state)
    return parse_policy({
        "migration_id": migration_id,
        "home_jurisdiction": "JP",
        "sources": [
            {"uri": "s3://seoul-line-photos", "conn_id": "aws_seoul"},
            {"uri": "s3://seoul-line-video", "conn_id": "aws_seoul"},
        ],
        "destinations": {"s3": {"uri": f"s3://{DST}", "conn_id": "aws_tokyo"}},
        "references": {
            "database_url": app_url,
            "batch_size": 3,
            "columns": [
                {"table": "photos", "key": "id", "column": "url"},
                {"table": "profiles", "key": "user_id", "column": "avatar_url"},
            ],
        },
        "ledger_url": ledger.url,
    })


def cells(app_url: str) -> tuple[dict[int, Any], dict[str, Any]]:
    engine = sa.create_engine(app_url)
    with engine.connect() as conn:
        photos = dict(conn.execute(sa.text("SELECT id, url FROM photos")).all())
        profiles = dict(conn.execute(sa.text("SELECT user_id, avatar_url FROM profiles")).all())
    engine.dispose()
    return photos, profiles


def set_cell(app_url: str, sql: str, **params: Any) -> None:
    engine = sa.create_engine(app_url)
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)
    engine.dispose()


def states(ledger: Ledger, migration_id: str) -> dict[str, str]:
    return {o["src_uri"]: o["state"] for o in ledger.iter_objects(migration_id)}


def journal(ledger: Ledger, migration_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    j = ledger_mod.journal
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(j).where(j.c.migration_id == migration_id)).mappings().all()
    return {(r["table_name"], r["key_value"]): dict(r) for r in rows}


def events(ledger: Ledger, migration_id: str) -> list[str]:
    return [r["event"] for r in ledger.audit_records(migration_id)]


# -- tests --------------------------------------------------------------------------


def test_dry_run_computes_everything_and_writes_nothing(policy: Policy, ledger: Ledger, app_url: str, caplog: pytest.LogCaptureFixture) -> None:
    before_states = states(ledger, policy.migration_id)
    caplog.set_level(logging.INFO, logger="residency.references")

    result = cutover(policy, ledger, dst_region=tokyo, dry_run=True)

    assert result.dry_run is True
    assert (result.scanned, result.rewritten, result.residual, result.ignored) == (10, 6, 4, 5)
    assert cells(app_url) == (PHOTOS, PROFILES)
    assert journal(ledger, policy.migration_id) == {}
    assert states(ledger, policy.migration_id) == before_states
    assert events(ledger, policy.migration_id) == []
    assert ledger.latest_phase(policy.migration_id, "cutover") is None
    assert f"would rewrite photos.url id=1: {PHOTOS[1]} -> {EXPECTED_PHOTOS[1]}" in caplog.messages


def test_cutover_rewrites_verified_only_keeping_style_and_query(
    policy: Policy, ledger: Ledger, app_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="residency.references")
    mid = policy.migration_id

    result = cutover(policy, ledger, dst_region=tokyo)

    assert cells(app_url) == (EXPECTED_PHOTOS, EXPECTED_PROFILES)
    assert result == CutoverResult(
        scanned=10, rewritten=6, already_rewritten=0, residual=4,
        residual_by_reason={"not_in_scope": 2, "not_verified": 2},
        per_column={
            "photos.url": {"scanned": 7, "rewritten": 3, "already_rewritten": 0, "residual": 4, "conflicts": 0,
                           "ignored": 4, "repointed": 0, "residual_not_in_scope": 2, "residual_not_verified": 2},
            "profiles.avatar_url": {"scanned": 3, "rewritten": 3, "already_rewritten": 0, "residual": 0,
                                    "conflicts": 0, "ignored": 1, "repointed": 0},
        },
        batches=6,  # 11 photos + 4 profiles in pages of 3: keyset pagination really pages
        dry_run=False, conflicts=0, ignored=5,
    )
    assert states(ledger, mid) == {
        "s3://seoul-line-photos/a.jpg": "cut_over",
        f"s3://seoul-line-photos/{UNICODE_KEY}": "cut_over",
        "s3://seoul-line-photos/c+d%e.png": "cut_over",
        "s3://seoul-line-photos/failed.jpg": "failed",
        "s3://seoul-line-photos/copied.jpg": "copied",
        "s3://seoul-line-video/v.mp4": "cut_over",
        "s3://seoul-line-video/already.mp4": "cut_over",
    }
    rows = journal(ledger, mid)
    assert set(rows) == {("photos", "1"), ("photos", "2"), ("photos", "3"),
                         ("profiles", "alice"), ("profiles", "bob"), ("profiles", "carol")}
    assert {r["state"] for r in rows.values()} == {"applied"}
    assert rows[("photos", "2")]["old_url"] == PHOTOS[2]
    assert rows[("photos", "2")]["new_url"] == EXPECTED_PHOTOS[2]
    assert rows[("photos", "2")]["src_uri"] == f"s3://seoul-line-photos/{UNICODE_KEY}"
    assert (
        "cutover photos.url id=1: s3://seoul-line-photos/a.jpg -> s3://tokyo-line-media/seoul-line-photos/a.jpg"
        in caplog.messages
    )
    log_events = events(ledger, mid)
    assert log_events.count("cutover.batch") == 6 and log_events[-1] == "cutover.done"
    phase = ledger.latest_phase(mid, "cutover")
    assert phase is not None and phase["result"]["rewritten"] == 6


def test_rerun_is_idempotent_and_reconciles_pending_rows(policy: Policy, ledger: Ledger, app_url: str) -> None:
    mid = policy.migration_id
    cutover(policy, ledger, dst_region=tokyo)

    again = cutover(policy, ledger, dst_region=tokyo)
    assert (again.scanned, again.rewritten, again.already_rewritten, again.residual) == (10, 0, 6, 4)
    assert cells(app_url) == (EXPECTED_PHOTOS, EXPECTED_PROFILES)

    # A crashed run: photos 1 was written but not marked; photos 2 was journaled, never written.
    j = ledger_mod.journal
    with ledger.engine.begin() as conn:
        conn.execute(
            j.update().where(j.c.migration_id == mid).where(j.c.table_name == "photos")
            .where(j.c.key_value.in_(["1", "2"])).values(state="pending")
        )
    set_cell(app_url, "UPDATE photos SET url = :u WHERE id = 2", u=PHOTOS[2])

    third = cutover(policy, ledger, dst_region=tokyo)
    assert (third.rewritten, third.already_rewritten, third.residual, third.conflicts) == (1, 5, 4, 0)
    assert cells(app_url) == (EXPECTED_PHOTOS, EXPECTED_PROFILES)
    assert {r["state"] for r in journal(ledger, mid).values()} == {"applied"}


def test_cell_changed_by_the_app_mid_cutover_is_a_conflict_never_overwritten(
    policy: Policy, ledger: Ledger, app_url: str
) -> None:
    mid = policy.migration_id
    app_value = "s3://seoul-line-photos/c+d%e.png"  # same object, the app rewrote the URL itself

    def region_while_the_app_writes(_ref: Any) -> str:
        # Called while the first page is planned, i.e. after photos 3 was read
        # and before its compare-and-swap: the application changes the cell now.
        set_cell(app_url, "UPDATE photos SET url = :u WHERE id = 3", u=app_value)
        return TOKYO

    result = cutover(policy, ledger, dst_region=region_while_the_app_writes)

    assert result.conflicts == 1 and result.rewritten == 5
    photos, _ = cells(app_url)
    assert photos[3] == app_value
    assert journal(ledger, mid)[("photos", "3")]["state"] == "conflict"
    assert states(ledger, mid)["s3://seoul-line-photos/c+d%e.png"] == "verified"  # its only reference conflicted

    residual = scan_residual(policy, ledger, ["seoul-line-photos", "seoul-line-video"])
    assert residual.by_reason == {"conflict": 1, "not_in_scope": 2, "not_verified": 2}

    # The next run reads the application's value afresh and rewrites it, in its own style.
    again = cutover(policy, ledger, dst_region=tokyo)
    assert (again.rewritten, again.conflicts) == (1, 0)
    assert cells(app_url)[0][3] == "s3://tokyo-line-media/seoul-line-photos/c+d%e.png"
    assert states(ledger, mid)["s3://seoul-line-photos/c+d%e.png"] == "cut_over"


def test_rollback_restores_originals_and_skips_cells_changed_since(policy: Policy, ledger: Ledger, app_url: str) -> None:
    mid = policy.migration_id
    cutover(policy, ledger, dst_region=tokyo)
    changed = "https://cdn.example.com/alice-new.jpg"
    set_cell(app_url, "UPDATE profiles SET avatar_url = :u WHERE user_id = 'alice'", u=changed)

    dry = rollback(policy, ledger, dry_run=True)
    assert (dry.restored, dry.skipped_changed, dry.dry_run) == (5, 1, True)
    assert cells(app_url)[0] == EXPECTED_PHOTOS

    result = rollback(policy, ledger)

    assert (result.restored, result.skipped_changed, result.not_applied) == (5, 1, 0)
    assert cells(app_url) == (PHOTOS, dict(PROFILES, alice=changed))
    rows = journal(ledger, mid)
    assert rows[("profiles", "alice")]["state"] == "applied"
    assert {k for k, r in rows.items() if r["state"] == "rolled_back"} == set(rows) - {("profiles", "alice")}
    st = states(ledger, mid)
    assert st["s3://seoul-line-photos/a.jpg"] == "verified"  # both references restored
    assert st["s3://seoul-line-video/v.mp4"] == "cut_over"  # alice's reference is still applied
    assert "rollback.done" in events(ledger, mid)

    again = rollback(policy, ledger)
    assert (again.restored, again.skipped_changed) == (0, 1)


def test_scan_residual_before_and_after_cutover(policy: Policy, ledger: Ledger, app_url: str) -> None:
    overseas = ["seoul-line-photos", "s3://seoul-line-video"]
    before = scan_residual(policy, ledger, overseas)
    assert before.cells_scanned == 15
    assert before.by_reason == {"not_in_scope": 2, "not_rewritten": 6, "not_verified": 2}

    cutover(policy, ledger, dst_region=tokyo)
    after = scan_residual(policy, ledger, overseas)

    assert (after.cells_scanned, after.residual) == (15, 4)
    assert after.by_reason == {"not_in_scope": 2, "not_verified": 2}
    assert after.per_column == {
        "photos.url": {"cells": 11, "references": 8, "residual": 4, "accepted": 0},
        "profiles.avatar_url": {"cells": 4, "references": 3, "residual": 0, "accepted": 0},
    }
    assert sorted((e["key"], e["reason"]) for e in after.examples) == [
        ("11", "not_in_scope"), ("4", "not_verified"), ("5", "not_in_scope"), ("9", "not_verified"),
    ]
    assert {e["excerpt"] for e in after.examples} == {PHOTOS[4], PHOTOS[5], PHOTOS[9], PHOTOS[11]}
    phase = ledger.latest_phase(policy.migration_id, "residual")
    assert phase is not None and phase["result"]["residual"] == 4


def test_unknown_table_fails_before_any_work(policy: Policy, ledger: Ledger, app_url: str) -> None:
    doc_policy = parse_policy({
        "migration_id": policy.migration_id, "home_jurisdiction": "JP",
        "sources": [{"uri": "s3://seoul-line-photos", "conn_id": "aws_seoul"}],
        "destinations": {"s3": {"uri": f"s3://{DST}", "conn_id": "aws_tokyo"}},
        "references": {"database_url": app_url, "columns": [
            {"table": "photos", "key": "id", "column": "url"},
            {"table": "albums", "key": "id", "column": "cover_url"},
        ]},
    })
    with pytest.raises(PolicyError) as err:
        cutover(doc_policy, ledger, dst_region=tokyo)
    assert err.value.field == "references.columns[1].table"
    assert cells(app_url) == (PHOTOS, PROFILES)
    assert journal(ledger, policy.migration_id) == {}
