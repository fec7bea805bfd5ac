"""The exported audit log verifies, and every kind of tampering is caught at the right record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from residency.evidence import AuditChainBroken, ChainHead, export_audit_log, verify_audit_log
from residency.ledger import GENESIS, Ledger, audit

MID = "mig-audit-test"
EVENTS = 6


@pytest.fixture()
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.create_schema()
    yield led
    led.dispose()


def _fill(led: Ledger, n: int = EVENTS) -> list[dict]:
    records = []
    for i in range(1, n + 1):
        records.append(led.audit(MID, f"event_{i}", {
            "n": i,
            "src_uri": f"s3://seoul-media/사진/{i}.jpg",  # non-ASCII keys must survive the export
            "nested": {"b": [1, 2.5, None], "a": True},
            # Non-string keys: a JSON round trip would reorder them, which is why data_json is kept.
            "by_shard": {10: "ten", 9: "nine"},
        }))
    led.audit("another-migration", "unrelated", {"x": 1})  # other chains never leak into the export
    return records


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


@pytest.fixture()
def exported(ledger: Ledger, tmp_path: Path) -> tuple[Path, ChainHead, list[dict]]:
    records = _fill(ledger)
    path = tmp_path / "audit.jsonl"
    head = export_audit_log(ledger, MID, path)
    return path, head, records


def test_round_trip(exported):
    path, head, records = exported
    assert head == ChainHead(EVENTS, records[-1]["hash"])
    assert verify_audit_log(path) == head
    assert verify_audit_log(path, expect=head) == head

    lines = [json.loads(line) for line in _lines(path)]
    assert [line["seq"] for line in lines] == list(range(1, EVENTS + 1))
    assert {line["migration_id"] for line in lines} == {MID}
    first = lines[0]
    assert set(first) == {"migration_id", "seq", "at", "event", "data", "data_json", "prev_hash", "hash"}
    assert first["prev_hash"] == GENESIS
    assert first["data"]["src_uri"] == "s3://seoul-media/사진/1.jpg"
    assert first["data_json"] == records[0]["data"]  # the exact stored, hashed string


def test_hash_is_reproducible_without_project_code(exported):
    """An auditor can recompute a hash from the documented recipe alone."""
    path, _, _ = exported
    prev = GENESIS
    for text in _lines(path):
        line = json.loads(text)
        body = {k: line[k] for k in ("migration_id", "seq", "at", "event", "prev_hash")}
        body["data"] = line["data_json"]
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert line["prev_hash"] == prev
        assert hashlib.sha256(canonical.encode("utf-8")).hexdigest() == line["hash"]
        prev = line["hash"]


def _rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines), encoding="utf-8")


def _edit(path: Path, index: int, change) -> None:
    lines = _lines(path)
    record = json.loads(lines[index])
    change(record)
    lines[index] = json.dumps(record, ensure_ascii=False) + "\n"
    _rewrite(path, lines)


def _broken(path: Path, expect: ChainHead | None = None) -> AuditChainBroken:
    with pytest.raises(AuditChainBroken) as info:
        verify_audit_log(path, expect=expect)
    return info.value


def test_edited_data_is_detected(exported):
    path, _, _ = exported
    _edit(path, 2, lambda r: r["data"].update(n=999))
    error = _broken(path)
    assert error.seq == 3
    assert "data does not match data_json" in error.reason


def test_edited_data_json_and_data_together_is_detected(exported):
    path, _, _ = exported

    def change(r):
        r["data"]["n"] = 999
        r["data_json"] = json.dumps(r["data"], sort_keys=True, ensure_ascii=False)

    _edit(path, 2, change)
    error = _broken(path)
    assert error.seq == 3
    assert "hash does not match" in error.reason


@pytest.mark.parametrize("field, value", [
    pytest.param("event", "harmless_event", id="event renamed"),
    pytest.param("at", "2020-01-01T00:00:00.000+00:00", id="timestamp moved"),
])
def test_edited_field_is_detected(exported, field, value):
    path, _, _ = exported
    _edit(path, 4, lambda r: r.update({field: value}))
    assert _broken(path).seq == 5


def test_deleted_line_is_detected(exported):
    path, _, _ = exported
    lines = _lines(path)
    del lines[2]
    _rewrite(path, lines)
    error = _broken(path)
    assert error.seq == 3
    assert "record 3 is missing" in error.reason


def test_deleted_line_renumbered_is_detected(exported):
    """Deleting a record and renumbering the rest still breaks the hash links."""
    path, _, _ = exported
    lines = [json.loads(x) for x in _lines(path)]
    del lines[2]
    for i, record in enumerate(lines, start=1):
        record["seq"] = i
    _rewrite(path, [json.dumps(r, ensure_ascii=False) + "\n" for r in lines])
    error = _broken(path)
    assert error.seq == 3
    assert "prev_hash" in error.reason


def test_swapped_lines_are_detected(exported):
    path, _, _ = exported
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    _rewrite(path, lines)
    error = _broken(path)
    assert error.seq == 3
    assert "found seq 4 where seq 3 was expected" in error.reason


def test_inserted_line_is_detected(exported):
    path, _, _ = exported
    lines = _lines(path)
    lines.insert(3, lines[1])  # a replayed copy of record 2 after record 3
    _rewrite(path, lines)
    error = _broken(path)
    assert error.seq == 4
    assert "found seq 2" in error.reason


def test_truncated_tail_needs_the_expected_head(exported):
    path, head, _ = exported
    _rewrite(path, _lines(path)[:-1])
    assert verify_audit_log(path).records == EVENTS - 1  # undetectable without an anchor...
    error = _broken(path, expect=head)  # ...caught against the head the evidence states
    assert error.seq == EVENTS
    assert "removed from or added to the end" in error.reason


def test_garbage_line_is_detected(exported):
    path, _, _ = exported
    lines = _lines(path)
    lines[1] = "{not json\n"
    _rewrite(path, lines)
    error = _broken(path)
    assert error.seq == 2
    assert "not valid JSON" in error.reason


def test_empty_chain(ledger, tmp_path):
    path = tmp_path / "audit.jsonl"
    head = export_audit_log(ledger, MID, path)
    assert head == ChainHead(0, GENESIS)
    assert path.read_text() == ""
    assert verify_audit_log(path, expect=head) == head


def test_export_refuses_a_chain_tampered_in_the_database(ledger, tmp_path):
    _fill(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(
            sa.update(audit).where(audit.c.migration_id == MID).where(audit.c.seq == 4).values(data='{"n": 0}')
        )
    path = tmp_path / "audit.jsonl"
    with pytest.raises(AuditChainBroken) as info:
        export_audit_log(ledger, MID, path)
    assert info.value.seq == 4
    assert not path.exists()  # nothing half-written that could be mistaken for a valid log
