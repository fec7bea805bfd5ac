"""Cutover of references in any form, on SQLite and PostgreSQL (issue 9).

Every URL style, in every kind of column (one URL per cell, free text, JSON text,
a native JSON column), is rewritten in place: the cell after the cutover is the
cell before it with that URL, and only that URL, replaced by the expected
domestic one; the residual scan then finds nothing; the rollback restores the
cell byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from residency.references import cutover, rollback, scan_residual
from residency.references.journal import linked_objects

from test_reference_kinds import MID, make_policy, seed_ledger, tokyo

D3 = "tokyo-line-media"
G3 = "tokyo-line-gcs"

# Each style of test_reference_kinds.STYLES, with the URL the cutover must write (reviewed by hand:
# style, scheme case, host family where the destination has it, the key's own percent-encoding).
CASES = [
    ("S3://seoul-line-photos/a.jpg", f"S3://{D3}/seoul-line-photos/a.jpg"),
    ("HTTPS://seoul-line-photos.s3.ap-northeast-2.amazonaws.com/a.jpg",
     f"HTTPS://{D3}.s3.ap-northeast-1.amazonaws.com/seoul-line-photos/a.jpg"),
    # legacy dash host, acceleration: the destination gets its regional host
    ("https://seoul-line-photos.s3-ap-northeast-2.amazonaws.com/a.jpg",
     f"https://{D3}.s3.ap-northeast-1.amazonaws.com/seoul-line-photos/a.jpg"),
    ("https://seoul-line-photos.s3-accelerate.amazonaws.com/a.jpg",
     f"https://{D3}.s3.ap-northeast-1.amazonaws.com/seoul-line-photos/a.jpg"),
    ("https://seoul-line-photos.s3.dualstack.ap-northeast-2.amazonaws.com/a.jpg",
     f"https://{D3}.s3.dualstack.ap-northeast-1.amazonaws.com/seoul-line-photos/a.jpg"),
    ("https://seoul-line-photos.s3.amazonaws.com/a.jpg?w=200&versionId=v1#top",
     f"https://{D3}.s3.amazonaws.com/seoul-line-photos/a.jpg?w=200#top"),
    ("http://seoul-line-photos.s3-website-ap-northeast-2.amazonaws.com/a.jpg",
     f"http://{D3}.s3-website.ap-northeast-1.amazonaws.com/seoul-line-photos/a.jpg"),
    ("http://seoul-line-photos.s3-website.ap-northeast-2.amazonaws.com/a.jpg",
     f"http://{D3}.s3-website.ap-northeast-1.amazonaws.com/seoul-line-photos/a.jpg"),
    # path style on the global host would be redirected for a Tokyo bucket: regional
    ("https://s3.amazonaws.com/seoul-line-photos/b%20c.png",
     f"https://s3.ap-northeast-1.amazonaws.com/{D3}/seoul-line-photos/b%20c.png"),
    ("https://s3.ap-northeast-2.amazonaws.com/seoul-line-photos/%E5%86%99%E7%9C%9F.jpg",
     f"https://s3.ap-northeast-1.amazonaws.com/{D3}/seoul-line-photos/%E5%86%99%E7%9C%9F.jpg"),
    ("https://seoul-line-photos.s3.ap-northeast-2.amazonaws.com/写真.jpg",
     f"https://{D3}.s3.ap-northeast-1.amazonaws.com/seoul-line-photos/写真.jpg"),
    ("https://seoul-line-photos.s3.ap-northeast-2.amazonaws.com//lead.jpg",
     f"https://{D3}.s3.ap-northeast-1.amazonaws.com/seoul-line-photos//lead.jpg"),
    ("gs://seoul-line-gcs/v/clip.mp4", f"gs://{G3}/seoul-line-gcs/v/clip.mp4"),
    ("https://commondatastorage.googleapis.com/seoul-line-gcs/v/clip.mp4",
     f"https://commondatastorage.googleapis.com/{G3}/seoul-line-gcs/v/clip.mp4"),
    ("https://storage.cloud.google.com/seoul-line-gcs/v/clip.mp4",
     f"https://storage.cloud.google.com/{G3}/seoul-line-gcs/v/clip.mp4"),
    ("https://seoul-line-gcs.storage.googleapis.com/v/clip.mp4",
     f"https://{G3}.storage.googleapis.com/seoul-line-gcs/v/clip.mp4"),
    ("https://storage.googleapis.com/download/storage/v1/b/seoul-line-gcs/o/v%2Fclip.mp4?alt=media&generation=17",
     f"https://storage.googleapis.com/download/storage/v1/b/{G3}/o/seoul-line-gcs%2Fv%2Fclip.mp4?alt=media"),
    # a CDN hostname the policy maps to a bucket: the domestic CDN hostname it names
    ("https://media.line-cdn.kr/photos/a.jpg?w=64", "https://media.line-cdn.jp/jp/seoul-line-photos/a.jpg?w=64"),
]
EXTRA_OBJECTS = [("s3", "seoul-line-photos", "写真.jpg", "verified", "v1")]


def wrap(kind: str, url: str) -> str:
    """A cell of ``kind`` holding ``url`` among other content that must not change."""
    if kind == "url":
        return url
    if kind == "text":
        return f"Look!\n<a href=\"{url}\">trip</a> &amp; [again]({url}), ok?  \t(end)"
    # JSON as an application writes it: its own spacing and key order, escaped slashes
    # in one place, non-ASCII escaped in another, numbers as written.
    escaped = json.dumps(url)[1:-1].replace("/", "\\/")
    return ('{"theme":"dark",  "n": 1.50, "album": {"cover": "' + json.dumps(url)[1:-1] + '",'
            ' "items": [{"src": "' + escaped + '"}, 3e2, null], "title": "\\u5199\\u771f"}}')


KINDS = ["url", "text", "json", "json-column"]


def make_cell_table(app, kind: str, cell: str) -> tuple[str, dict[str, Any]]:
    if kind == "json-column":
        native = "JSONB" if app.url.startswith("postgresql") else "JSON"
        table = app.create("docs", f"id INTEGER PRIMARY KEY, doc {native}", [])
        with app.engine.begin() as conn:
            cast = "CAST(:v AS JSONB)" if native == "JSONB" else ":v"
            conn.execute(sa.text(f"INSERT INTO {table} (id, doc) VALUES (1, {cast})"), {"v": cell})
        return table, {"table": table, "key": "id", "column": "doc", "kind": "json"}
    table = app.create("cells", "id INTEGER PRIMARY KEY, v TEXT", [{"id": 1, "v": cell}])
    return table, {"table": table, "key": "id", "column": "v", "kind": kind}


def cell_text(app, table: str, column: str) -> str:
    with app.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT CAST({column} AS TEXT) FROM {table} WHERE id = 1")).scalar()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("url, expected", CASES, ids=[c[0][:60] for c in CASES])
def test_every_style_in_every_kind_is_rewritten_in_place_and_rolled_back_exactly(app, ledger, kind, url, expected):
    seed_ledger(ledger)
    seed_extra(ledger)
    table, spec = make_cell_table(app, kind, wrap("json" if kind == "json-column" else kind, url))
    column = spec["column"]
    before = cell_text(app, table, column)
    policy = make_policy(ledger, app, [spec])

    result = cutover(policy, ledger, dst_region=tokyo)

    after = cell_text(app, table, column)
    n = {"url": 1, "text": 2}.get(kind, 2)
    assert result.rewritten == n and result.residual == 0 and result.conflicts == 0, result
    if kind == "json-column" and app.url.startswith("postgresql"):
        # jsonb keeps no bytes of its own: the document is what must be equal.
        assert json.loads(after) == json.loads(json.dumps(json.loads(before)).replace(
            json.dumps(url)[1:-1], json.dumps(expected)[1:-1]))
    elif kind.startswith("json"):
        assert after == before.replace(json.dumps(url)[1:-1], json.dumps(expected)[1:-1]).replace(
            json.dumps(url)[1:-1].replace("/", "\\/"), json.dumps(expected)[1:-1].replace("/", "\\/"))
        assert "\\/" in after and "1.50" in after and "\\u5199" in after  # the application's own bytes
    else:
        assert after == before.replace(url, expected)
    report = scan_residual(policy, ledger)
    assert report.residual == 0 and report.domestic_ok == n, report.examples

    again = cutover(policy, ledger, dst_region=tokyo)
    assert again.rewritten == 0 and again.already_rewritten == n
    assert cell_text(app, table, column) == after

    back = rollback(policy, ledger)
    assert back.restored == 1 and back.skipped_changed == 0
    assert cell_text(app, table, column) == before


def seed_extra(ledger) -> None:
    """Objects only these cases name (a key in Japanese)."""
    ledger.upsert_discovered(MID, [{
        "src_uri": f"{p}://{b}/{k}", "src_bucket_uri": f"{p}://{b}", "dst_uri": f"{p}://{D3}/{b}/{k}",
        "route": f"{p}->{p}", "shard": 0, "size": 10, "content_type": "image/jpeg", "media_type": "image",
        "src_version": v, "src_etag": '"e"', "src_checksums": {},
    } for p, b, k, _s, v in EXTRA_OBJECTS])
    for p, b, k, state, _v in EXTRA_OBJECTS:
        ledger.update_object(MID, f"{p}://{b}/{k}", state=state)


def test_json_paths_limit_the_rewrite_and_the_rest_stays_residual(app, ledger):
    seed_ledger(ledger)
    a = "https://seoul-line-photos.s3.ap-northeast-2.amazonaws.com/a.jpg"
    doc = json.dumps({"avatar": {"url": a}, "note": f"old {a}", "gallery": [{"src": a}, {"src": a}]})
    table = app.create("profiles", "id INTEGER PRIMARY KEY, prefs TEXT", [{"id": 1, "prefs": doc}])
    policy = make_policy(ledger, app, [{"table": table, "key": "id", "column": "prefs", "kind": "json",
                                        "paths": ["$.avatar.url", "$.gallery[*].src"]}])
    result = cutover(policy, ledger, dst_region=tokyo)
    assert result.rewritten == 3
    after = json.loads(cell_text(app, table, "prefs"))
    assert after["note"] == f"old {a}"  # outside the named paths: untouched
    assert {after["avatar"]["url"], after["gallery"][0]["src"], after["gallery"][1]["src"]} == {
        f"https://{D3}.s3.ap-northeast-1.amazonaws.com/seoul-line-photos/a.jpg"}
    report = scan_residual(policy, ledger)
    assert report.by_reason == {"not_rewritten": 1}  # the note's URL blocks until accepted or named


def test_a_text_cell_is_finished_by_a_later_run_and_rolled_back_to_the_original(app, ledger):
    """One URL of a verified object, one of a failed one: the first run rewrites one;
    once the second object is verified, a re-run rewrites the other from the original
    text; the journal names both objects; the rollback restores the first text."""
    seed_ledger(ledger)
    ok = "s3://seoul-line-photos/a.jpg"
    later = "https://seoul-line-photos.s3.ap-northeast-2.amazonaws.com/lead.jpg"  # 'failed' in the ledger
    body = f"first {ok} then {later}."
    table = app.create("posts", "id INTEGER PRIMARY KEY, body TEXT", [{"id": 1, "body": body}])
    policy = make_policy(ledger, app, [{"table": table, "key": "id", "column": "body", "kind": "text"}])

    first = cutover(policy, ledger, dst_region=tokyo)
    assert (first.rewritten, first.residual, first.residual_by_reason) == (1, 1, {"not_verified": 1})
    assert cell_text(app, table, "body") == f"first s3://{D3}/seoul-line-photos/a.jpg then {later}."
    assert ledger.get_objects(MID, [ok])[ok]["state"] == "cut_over"

    ledger.update_object(MID, "s3://seoul-line-photos/lead.jpg", state="verified")
    second = cutover(policy, ledger, dst_region=tokyo)
    assert second.rewritten == 2 and second.residual == 0  # both URLs, from the original text
    assert cell_text(app, table, "body") == (
        f"first s3://{D3}/seoul-line-photos/a.jpg then "
        f"https://{D3}.s3.ap-northeast-1.amazonaws.com/seoul-line-photos/lead.jpg.")
    with ledger.engine.connect() as conn:
        jid = conn.execute(sa.text("SELECT id FROM residency_reference_journal WHERE migration_id = :m"),
                           {"m": MID}).scalar()
    assert linked_objects(ledger, [jid])[jid] == {ok, "s3://seoul-line-photos/lead.jpg"}

    back = rollback(policy, ledger)
    assert back.restored == 1 and cell_text(app, table, "body") == body
    states = ledger.get_objects(MID, [ok, "s3://seoul-line-photos/lead.jpg"])
    assert {s["state"] for s in states.values()} == {"verified"}


def test_a_cell_changed_by_the_application_is_a_conflict_and_its_objects_are_not_cut_over(app, ledger, monkeypatch):
    seed_ledger(ledger)
    body = "see s3://seoul-line-photos/a.jpg and gs://seoul-line-gcs/v/clip.mp4"
    table = app.create("posts", "id INTEGER PRIMARY KEY, body TEXT", [{"id": 1, "body": body}])
    policy = make_policy(ledger, app, [{"table": table, "key": "id", "column": "body", "kind": "text"}])
    from residency.references import appdb

    real = appdb.cas

    def racing(conn, column, key, expected, value):  # the application writes between our read and our write
        app.set(table, "id", "body", 1, body + " (edited)")
        return real(conn, column, key, expected, value)

    monkeypatch.setattr(appdb, "cas", racing)
    result = cutover(policy, ledger, dst_region=tokyo)
    assert result.conflicts == 2 and result.rewritten == 0
    assert cell_text(app, table, "body") == body + " (edited)"
    found = ledger.get_objects(MID, ["s3://seoul-line-photos/a.jpg", "gs://seoul-line-gcs/v/clip.mp4"])
    assert {o["state"] for o in found.values()} == {"verified"}
    assert scan_residual(policy, ledger).by_reason == {"conflict": 2}
