"""References in any form, against a real application database (SQLite and PostgreSQL).

The states of issue 6 that live in the application's cells:

- state 1: after the destination plan changed, cut-over cells are repointed to the
  new copy (the journal keeps the application's own value for rollback), and a cell
  still on the old copy is ``stale_destination``;
- state 4: a reference still pointing overseas for any reason blocks (written back
  by the application, not rewritten), unless a policy rule accepts it with a reason;
- state 5: URLs inside text and JSON, in every S3 and GCS style and behind a CDN
  hostname the policy maps, are found by the residual scan; a bucket mentioned in a
  style the parser does not know is ``unrecognised``;
- state 7: a key column that is not unique or holds NULLs is refused; paging
  visits every row exactly once;
- presigned URLs are never rewritten and their signatures never reach logs or the
  report; a ``versionId`` of the migrated version is not carried over.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from residency.ledger import Ledger
from residency.policy import parse_policy
from residency.references import appdb, check_columns, cutover, rollback, scan_residual

DST = "tokyo-line-media"
GDST = "tokyo-line-gcs"
SIG = "f00dfeedc0ffee0123456789abcdef0123456789abcdef0123456789abcdef01"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKENvalue"

# Objects the ledger knows (bucket, key, state, version).
OBJECTS = [
    ("s3", "seoul-line-photos", "a.jpg", "verified", "v1"),
    ("s3", "seoul-line-photos", "b c.png", "verified", "v1"),
    ("s3", "seoul-line-photos", "/lead.jpg", "verified", "v1"),
    ("s3", "seoul-line-photos", "lead.jpg", "failed", "v1"),
    ("gs", "seoul-line-gcs", "v/clip.mp4", "verified", "17"),
]

# Every URL style of an in-scope object, with the object it names.
STYLES = [
    pytest.param("S3://seoul-line-photos/a.jpg", "s3://seoul-line-photos/a.jpg", id="upper-case s3 scheme"),
    pytest.param("HTTPS://seoul-line-photos.s3.ap-northeast-2.amazonaws.com/a.jpg", "s3://seoul-line-photos/a.jpg",
                 id="upper-case https scheme"),
    pytest.param("https://seoul-line-photos.s3-ap-northeast-2.amazonaws.com/a.jpg", "s3://seoul-line-photos/a.jpg",
                 id="legacy s3-REGION host"),
    pytest.param("https://seoul-line-photos.s3.dualstack.ap-northeast-2.amazonaws.com/a.jpg",
                 "s3://seoul-line-photos/a.jpg", id="dualstack"),
    pytest.param("https://seoul-line-photos.s3-accelerate.amazonaws.com/a.jpg", "s3://seoul-line-photos/a.jpg",
                 id="transfer acceleration"),
    pytest.param("http://seoul-line-photos.s3-website-ap-northeast-2.amazonaws.com/a.jpg",
                 "s3://seoul-line-photos/a.jpg", id="website endpoint dash"),
    pytest.param("http://seoul-line-photos.s3-website.ap-northeast-2.amazonaws.com/a.jpg",
                 "s3://seoul-line-photos/a.jpg", id="website endpoint dot"),
    pytest.param("https://s3.amazonaws.com/seoul-line-photos/b%20c.png", "s3://seoul-line-photos/b c.png",
                 id="global path style"),
    pytest.param("https://seoul-line-photos.s3.ap-northeast-2.amazonaws.com//lead.jpg",
                 "s3://seoul-line-photos//lead.jpg", id="leading slash key"),
    pytest.param("gs://seoul-line-gcs/v/clip.mp4", "gs://seoul-line-gcs/v/clip.mp4", id="gs uri"),
    pytest.param("https://commondatastorage.googleapis.com/seoul-line-gcs/v/clip.mp4",
                 "gs://seoul-line-gcs/v/clip.mp4", id="commondatastorage"),
    pytest.param("https://storage.cloud.google.com/seoul-line-gcs/v/clip.mp4", "gs://seoul-line-gcs/v/clip.mp4",
                 id="storage.cloud.google.com"),
    pytest.param("https://seoul-line-gcs.storage.googleapis.com/v/clip.mp4", "gs://seoul-line-gcs/v/clip.mp4",
                 id="gcs virtual hosted"),
    pytest.param("https://storage.googleapis.com/download/storage/v1/b/seoul-line-gcs/o/v%2Fclip.mp4?alt=media",
                 "gs://seoul-line-gcs/v/clip.mp4", id="gcs json api"),
    pytest.param("https://media.line-cdn.kr/photos/a.jpg", "s3://seoul-line-photos/a.jpg", id="cdn host of the policy"),
]


MID = "kinds-test"


def seed_ledger(ledger: Ledger, dst_prefix: str = "", set_states: bool = True) -> None:
    rows = []
    for provider, bucket, key, _state, version in OBJECTS:
        dst_bucket = DST if provider == "s3" else GDST
        rows.append({
            "src_uri": f"{provider}://{bucket}/{key}", "src_bucket_uri": f"{provider}://{bucket}",
            "dst_uri": f"{provider}://{dst_bucket}/{dst_prefix}{bucket}/{key}", "route": f"{provider}->{provider}",
            "shard": 0, "size": 10, "content_type": "image/jpeg", "media_type": "image", "src_version": version,
            "src_etag": '"e"', "src_checksums": {},
        })
    ledger.upsert_discovered(MID, rows)
    for provider, bucket, key, state, _v in OBJECTS if set_states else ():
        ledger.update_object(MID, f"{provider}://{bucket}/{key}", state=state)


def make_policy(ledger: Ledger, app: Any, columns: list[dict[str, Any]], **refs: Any) -> Any:
    return parse_policy({
        "migration_id": MID,
        "home_jurisdiction": "JP",
        "sources": [{"uri": "s3://seoul-line-photos", "conn_id": "aws"}, {"uri": "gs://seoul-line-gcs", "conn_id": "gcs"}],
        "destinations": {"s3": {"uri": f"s3://{DST}", "conn_id": "aws"}, "gs": {"uri": f"gs://{GDST}", "conn_id": "gcs"}},
        "references": {"database_url": app.url, "batch_size": 2, "columns": columns,
                       "hosts": [{"host": "media.line-cdn.kr", "bucket": "s3://seoul-line-photos", "path_prefix": "photos/",
                                  "to_host": "media.line-cdn.jp", "to_path_prefix": "jp/"}], **refs},
        "ledger_url": ledger.url,
    })


def tokyo(_ref: Any) -> str:
    return "ap-northeast-1"


# -- state 5: every style, inside text and JSON --------------------------------------


@pytest.mark.parametrize("url, object_uri", STYLES)
def test_residual_scan_finds_every_style_in_url_text_and_json_cells(app, ledger, url, object_uri):
    seed_ledger(ledger)
    photos = app.create("photos", "id INTEGER PRIMARY KEY, url TEXT", [{"id": 1, "url": url}])
    messages = app.create("messages", "id INTEGER PRIMARY KEY, body TEXT", [
        {"id": 1, "body": f"Look at this!\n<a href=\"{url}\">our trip</a> and [again]({url}), ok?"},
    ])
    settings = app.create("settings", "id VARCHAR(20) PRIMARY KEY, prefs TEXT", [
        {"id": "u1", "prefs": json.dumps({"theme": "dark", "album": {"cover": url, "items": [{"src": url}]}})},
    ])
    policy = make_policy(ledger, app, [
        {"table": photos, "key": "id", "column": "url"},
        {"table": messages, "key": "id", "column": "body", "kind": "text"},
        {"table": settings, "key": "id", "column": "prefs", "kind": "json"},
    ])
    report = scan_residual(policy, ledger)
    found = {(e["column"], e["object_uri"]) for e in report.examples}
    assert found == {(f"{photos}.url", object_uri), (f"{messages}.body", object_uri), (f"{settings}.prefs", object_uri)}
    # 1 URL cell + 2 in the message + 2 in the JSON document; none is left unexplained.
    assert report.residual == 5 and report.references == 5
    assert set(report.by_reason) == {"not_rewritten"}, report.examples


def test_a_bucket_mentioned_in_an_unknown_style_is_never_assumed_harmless(app, ledger):
    seed_ledger(ledger)
    messages = app.create("messages", "id INTEGER PRIMARY KEY, body TEXT", [
        {"id": 1, "body": "mirror: https://seoul-line-photos.objects.example-cdn.net/a.jpg (old)"},
        {"id": 2, "body": "bucket seoul-line-photos-archive is someone else's"},  # another bucket: not a mention
        {"id": 3, "body": "ftp://files.example.com/seoul-line-gcs/clip.mp4"},
    ])
    policy = make_policy(ledger, app, [{"table": messages, "key": "id", "column": "body", "kind": "text"}])
    report = scan_residual(policy, ledger)
    assert report.by_reason == {"unrecognised": 2}
    assert sorted(e["key"] for e in report.examples) == ["1", "3"]
    assert all(e["object_uri"] is None for e in report.examples)


def test_accepted_rules_count_but_do_not_block(app, ledger):
    seed_ledger(ledger)
    messages = app.create("messages", "id INTEGER PRIMARY KEY, body TEXT", [
        {"id": 1, "body": "log: s3://seoul-line-photos/logs/2021/app.log"},
        {"id": 2, "body": "see s3://seoul-line-photos/a.jpg"},
        {"id": 3, "body": "quoted in a ticket: https://seoul-line-photos.weird.example/x"},
    ])
    policy = make_policy(ledger, app, [{"table": messages, "key": "id", "column": "body", "kind": "text"}],
                         accepted_residual=[
                             {"uri": "s3://seoul-line-photos/logs/*", "reason": "logs are not media and stay in Seoul"},
                             {"column": f"{messages}.body", "key": 3, "reason": "a support ticket quoting a dead link"},
                         ])
    report = scan_residual(policy, ledger)
    assert report.residual == 1 and report.by_reason == {"not_rewritten": 1}
    assert report.accepted == 2
    assert [(r["reason"], r["references"]) for r in report.accepted_by_rule] == [
        ("logs are not media and stay in Seoul", 1), ("a support ticket quoting a dead link", 1)]


# -- state 4: a reference written back, or never rewritten, blocks ----------------------


def test_overseas_url_written_back_after_cutover_is_found_at_scan_time(app, ledger):
    seed_ledger(ledger)
    photos = app.create("photos", "id INTEGER PRIMARY KEY, url TEXT", [
        {"id": 1, "url": "s3://seoul-line-photos/a.jpg"}, {"id": 2, "url": "gs://seoul-line-gcs/v/clip.mp4"},
    ])
    policy = make_policy(ledger, app, [{"table": photos, "key": "id", "column": "url"}])
    assert cutover(policy, ledger, dst_region=tokyo).rewritten == 2
    assert scan_residual(policy, ledger).residual == 0
    app.set(photos, "id", "url", 1, "s3://seoul-line-photos/a.jpg")  # the application writes the old URL back
    report = scan_residual(policy, ledger)
    assert report.by_reason == {"not_rewritten": 1} and report.examples[0]["key"] == "1"


# -- secrets and versions in query strings -----------------------------------------------


def test_presigned_urls_are_never_rewritten_and_their_secrets_never_logged(app, ledger, caplog):
    seed_ledger(ledger)
    presigned = ("https://seoul-line-photos.s3.ap-northeast-2.amazonaws.com/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                 f"&X-Amz-Credential=AKIAEXAMPLE%2F20210315%2Fap-northeast-2%2Fs3%2Faws4_request&X-Amz-Date=20210315T000000Z"
                 f"&X-Amz-Expires=3600&X-Amz-Security-Token={TOKEN}&X-Amz-Signature={SIG}")
    versioned = "https://seoul-line-photos.s3.ap-northeast-2.amazonaws.com/a.jpg?versionId=v1&w=200"
    other = "https://seoul-line-photos.s3.ap-northeast-2.amazonaws.com/a.jpg?versionId=v0"
    photos = app.create("photos", "id INTEGER PRIMARY KEY, url TEXT", [
        {"id": 1, "url": presigned}, {"id": 2, "url": versioned}, {"id": 3, "url": other},
    ])
    messages = app.create("messages", "id INTEGER PRIMARY KEY, body TEXT", [{"id": 1, "body": f"download: {presigned}"}])
    policy = make_policy(ledger, app, [{"table": photos, "key": "id", "column": "url"},
                                       {"table": messages, "key": "id", "column": "body", "kind": "text"}])
    caplog.set_level(logging.DEBUG)
    result = cutover(policy, ledger, dst_region=tokyo)
    assert result.residual_by_reason == {"presigned": 2, "other_version": 1}  # the text cell too
    cells = app.rows(photos, "id", "url")
    assert cells[1] == presigned and cells[3] == other
    assert cells[2] == f"https://{DST}.s3.ap-northeast-1.amazonaws.com/seoul-line-photos/a.jpg?w=200"  # no versionId

    report = scan_residual(policy, ledger)
    assert report.by_reason == {"presigned": 2, "other_version": 1}
    shown = json.dumps(report.examples) + "\n".join(caplog.messages)
    assert SIG not in shown and TOKEN not in shown and "REDACTED" in shown


# -- CDN hostnames --------------------------------------------------------------------------


def test_cdn_urls_are_rewritten_to_the_domestic_host(app, ledger):
    seed_ledger(ledger)
    photos = app.create("photos", "id INTEGER PRIMARY KEY, url TEXT", [
        {"id": 1, "url": "https://media.line-cdn.kr/photos/a.jpg?w=64"},
        {"id": 2, "url": "https://media.line-cdn.kr/elsewhere/a.jpg"},  # outside the mapped origin path
    ])
    policy = make_policy(ledger, app, [{"table": photos, "key": "id", "column": "url"}])
    result = cutover(policy, ledger, dst_region=tokyo)
    assert result.rewritten == 1
    assert app.rows(photos, "id", "url")[1] == "https://media.line-cdn.jp/jp/seoul-line-photos/a.jpg?w=64"
    report = scan_residual(policy, ledger)
    assert report.by_reason == {"unrecognised": 1} and report.examples[0]["key"] == "2"
    assert report.domestic_ok == 1


# -- state 1: the destination plan changed ------------------------------------------------


def test_plan_change_repoints_cut_over_cells_and_rollback_restores_the_original(app, ledger):
    seed_ledger(ledger)
    originals = {1: "https://seoul-line-photos.s3.ap-northeast-2.amazonaws.com/a.jpg", 2: "gs://seoul-line-gcs/v/clip.mp4"}
    photos = app.create("photos", "id INTEGER PRIMARY KEY, url TEXT", [{"id": k, "url": v} for k, v in originals.items()])
    policy = make_policy(ledger, app, [{"table": photos, "key": "id", "column": "url"}])
    cutover(policy, ledger, dst_region=tokyo)
    first = app.rows(photos, "id", "url")
    assert first[1] == f"https://{DST}.s3.ap-northeast-1.amazonaws.com/seoul-line-photos/a.jpg"

    # A new key_template: the inventory re-queues both objects, they are copied and verified at the new place.
    seed_ledger(ledger, dst_prefix="v2/", set_states=False)
    requeued = {o["src_uri"]: o for o in ledger.iter_objects(MID) if o["src_uri"] in (
        "s3://seoul-line-photos/a.jpg", "gs://seoul-line-gcs/v/clip.mp4")}
    assert {o["state"] for o in requeued.values()} == {"discovered"}
    assert all(o["reason"].startswith("destination plan changed") for o in requeued.values())
    report = scan_residual(policy, ledger)
    assert report.by_reason == {"stale_destination": 2}  # the cells point where the plan no longer copies
    for uri in ("s3://seoul-line-photos/a.jpg", "gs://seoul-line-gcs/v/clip.mp4"):
        ledger.update_object(MID, uri, state="verified")
    assert scan_residual(policy, ledger).by_reason == {"stale_destination": 2}

    again = cutover(policy, ledger, dst_region=tokyo)
    assert again.repointed == 2 and again.rewritten == 2
    assert app.rows(photos, "id", "url") == {
        1: f"https://{DST}.s3.ap-northeast-1.amazonaws.com/v2/seoul-line-photos/a.jpg",
        2: f"gs://{GDST}/v2/seoul-line-gcs/v/clip.mp4",
    }
    assert scan_residual(policy, ledger).residual == 0

    assert rollback(policy, ledger).restored == 2
    assert app.rows(photos, "id", "url") == originals  # byte-identical to before the first cutover


# -- state 7: key columns ----------------------------------------------------------------


def test_key_column_not_unique_or_with_nulls_is_refused(app, ledger):
    dup = app.create("dup", "k INTEGER, url TEXT", [{"k": 1, "url": "a"}, {"k": 1, "url": "b"}, {"k": 2, "url": "c"}])
    nulls = app.create("nulls", "k INTEGER, url TEXT", [{"k": 1, "url": "a"}, {"k": None, "url": "b"}])
    unique = app.create("uniq", "k INTEGER NOT NULL UNIQUE, url TEXT", [{"k": 1, "url": "a"}])
    clean = app.create("clean", "k INTEGER, url TEXT", [{"k": 1, "url": "a"}, {"k": 2, "url": "b"}])
    policy = make_policy(ledger, app, [{"table": t, "key": "k", "column": "url"} for t in (dup, nulls, unique, clean)])
    engine = appdb.app_engine(app.url)
    try:
        problems = check_columns(engine, policy.references)
    finally:
        engine.dispose()
    assert len(problems) == 2
    assert problems[0].startswith("references.columns[0].key = 'k': the key of table") and "is not unique (value 1" in problems[0]
    assert problems[1].startswith("references.columns[1].key = 'k': 1 row(s)") and "NULL key" in problems[1]


def test_paging_visits_every_row_exactly_once(app, ledger):
    seed_ledger(ledger)
    keys = ["a", "B", "b", "10", "9", "ä", "z", "Z", "한", "_", " ", "a a", "-1"]
    table = app.create("odd", "k VARCHAR(20) PRIMARY KEY, url TEXT",
                       [{"k": k, "url": "s3://seoul-line-photos/a.jpg"} for k in keys])
    for size in (1, 2, 3, 5, 100):
        policy = make_policy(ledger, app, [{"table": table, "key": "k", "column": "url"}])
        engine = appdb.app_engine(app.url)
        try:
            column = appdb.resolve_columns(engine, policy.references)[0]
            seen = [k for page in appdb.pages(engine, column, size) for k, _ in page]
        finally:
            engine.dispose()
        assert sorted(seen) == sorted(keys) and len(seen) == len(set(seen)), size
