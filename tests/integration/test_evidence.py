"""The evidence report: counts reconcile from the ledger, the schema holds, the verdict is honest.

A real SQLite ledger populated through the Ledger API, as the phases do.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from residency.audit import (
    FAILURES_CAP, ChainHead, load_schema, render_html, validate_evidence, verify_audit_log, write_evidence,
)
from residency.ledger import CUT_OVER, FAILED, VERIFIED, Ledger
from residency.policy import parse_policy

MID = "seoul-to-tokyo"
S3_SRC, GS_SRC = "s3://seoul-media", "gs://seoul-gcs"
S3_DST, GS_DST = "s3://tokyo-media", "gs://tokyo-gcs"
RUN = {"dag_id": "residency_migration", "run_id": "manual__2025-01-01", "logical_date": "2025-01-01T00:00:00+00:00",
       "dry_run": False}
SOFTWARE = {"airflow": "3.0.2", "boto3": "1.38.0"}

POLICY_DOC = {
    "migration_id": MID,
    "home_jurisdiction": "JP",
    "sources": [
        {"uri": S3_SRC, "conn_id": "aws_seoul"},
        {"uri": GS_SRC, "conn_id": "gcp_seoul"},
    ],
    "destinations": {
        "s3": {"uri": S3_DST, "conn_id": "aws_tokyo"},
        "gs": {"uri": GS_DST, "conn_id": "gcp_tokyo"},
    },
    "references": {"database_url": "sqlite:////tmp/app.db", "columns": [{"table": "photos", "key": "id", "column": "url"}]},
    "revoke": [{"user": "affiliate-cn", "conn_id": "aws_admin", "probe_conn_id": "aws_affiliate",
                "probe_uri": "s3://seoul-media/a.jpg"}],
}

# key, size, media, copy_action, state, verify algorithm, method; sizes are chosen to show human-readable bytes.
S3_OBJECTS = [
    ("a.jpg", 1_258_291, "image", "copied", CUT_OVER, "crc32c", "server_reported"),
    ("b.mp4", 734_003_200, "video", "already_present", VERIFIED, "sha256", "server_reported"),
    ("<script>.jpg", 2_048, "image", "copied", VERIFIED, "md5", "read_back"),
    ("c.png", 4_096, "image", "copied", VERIFIED, "crc32c", "server_reported"),
    ("d.m4a", 512, "audio", "copied", VERIFIED, "crc32c", "read_back"),
]
GS_OBJECTS = [
    ("x.webp", 10_000, "image", "copied", VERIFIED, "crc32c", "server_reported"),
    ("y.mov", 20_000, "video", "copied", CUT_OVER, "md5", "server_reported"),
]
S3_LISTED = (9, 734_003_200 + 1_258_291 + 2_048 + 4_096 + 512 + 1_000)  # includes out-of-scope files
GS_LISTED = (2, 30_000)


def _checksum(algorithm: str, key: str) -> str:
    width = {"crc32c": 8, "md5": 32, "sha256": 64}[algorithm]
    return (key.encode().hex() * 64)[:width]


def _populate(ledger: Ledger, *, failures: dict[str, tuple[str | None, str]] | None = None,
              pending: tuple[str, ...] = (), not_verified: int = 0, denied: bool | None = True,
              extra_failed: int = 0) -> None:
    """Populate like a real run. ``failures`` maps key -> (copy_action or None, reason)."""
    failures = failures or {}
    ledger.record_bucket(MID, S3_SRC, role="source", provider="s3", location="ap-northeast-2", jurisdiction="KR",
                         placement_source="discovered", objects_listed=S3_LISTED[0] + extra_failed,
                         bytes_listed=S3_LISTED[1] + 100 * extra_failed, objects_in_scope=len(S3_OBJECTS) + extra_failed,
                         bytes_in_scope=sum(o[1] for o in S3_OBJECTS) + 100 * extra_failed)
    ledger.record_bucket(MID, GS_SRC, role="source", provider="gs", location="asia-northeast3", jurisdiction="KR",
                         placement_source="declared", objects_listed=GS_LISTED[0], bytes_listed=GS_LISTED[1],
                         objects_in_scope=len(GS_OBJECTS), bytes_in_scope=sum(o[1] for o in GS_OBJECTS))
    ledger.record_bucket(MID, S3_DST, role="destination", provider="s3", location="ap-northeast-1", jurisdiction="JP",
                         placement_source="discovered")
    ledger.record_bucket(MID, GS_DST, role="destination", provider="gs", location="asia-northeast1", jurisdiction="JP",
                         placement_source="discovered")
    ledger.audit(MID, "inventory", {"buckets": [S3_SRC, GS_SRC]})

    extra = [(f"bulk/{i:04d}.jpg", 100, "image", None, FAILED, None, None) for i in range(extra_failed)]
    for src, dst, route, table in ((S3_SRC, S3_DST, "s3->s3", S3_OBJECTS + extra), (GS_SRC, GS_DST, "gs->gs", GS_OBJECTS)):
        bucket = src.split("://")[1]
        ledger.upsert_discovered(MID, [
            {"src_uri": f"{src}/{key}", "src_bucket_uri": src, "dst_uri": f"{dst}/{bucket}/{key}", "route": route,
             "shard": 0, "size": size, "media_type": media, "content_type": None, "src_version": "v1",
             "src_etag": f'"{key}"',
             "src_checksums": {alg: _checksum(alg, key)} if alg else {}}
            for key, size, media, _action, _state, alg, _method in table
        ])
        for key, size, media, action, state, alg, method in table:
            uri = f"{src}/{key}"
            if key in pending:
                continue  # stays "discovered": the copy never ran
            if key in failures or state == FAILED:
                fail_action, reason = failures.get(key, (None, "source changed during the migration"))
                ledger.update_object(MID, uri, state=FAILED, copy_action=fail_action, reason=reason)
                ledger.audit(MID, "object_failed", {"src_uri": uri, "reason": reason})
                continue
            ledger.update_object(MID, uri, state="copied", copy_action=action, copy_method="server_side")
            ledger.update_object(MID, uri, state=state, verify_algorithm=alg, verify_method=method,
                                 dst_checksums={alg: _checksum(alg, key)})
            ledger.audit(MID, "object_verified", {"src_uri": uri, "algorithm": alg})

    ledger.record_phase(MID, "cutover", {
        "scanned": 12, "rewritten": 2, "already_rewritten": 0, "residual": 1 + not_verified,
        "residual_by_reason": {"foreign_host": 1, **({"not_verified": not_verified} if not_verified else {})},
        "per_column": [{"table": "photos", "column": "url", "rewritten": 2}],
    }, run_id=RUN["run_id"])
    ledger.record_phase(MID, "residual", {
        "cells_scanned": 12, "residual": 1 + not_verified,
        "by_reason": {"foreign_host": 1, **({"not_verified": not_verified} if not_verified else {})},
        "examples": [{"table": "photos", "key": "7", "url": "https://cdn.example/<b>x</b>"}],
    }, run_id=RUN["run_id"])
    ledger.record_revocation(MID, "arn:aws:iam::123456789012:user/affiliate-cn", "AKIAAFFILIATE0000001",
                             "delete_access_key", {
                                 "before": {"operation": "GetObject", "uri": "s3://seoul-media/a.jpg", "allowed": True},
                                 "after": {"operation": "GetObject", "error": "InvalidAccessKeyId"},
                                 "denied": denied,
                             })
    ledger.audit(MID, "revoked", {"credential_id": "AKIAAFFILIATE0000001"})


@pytest.fixture()
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.create_schema()
    yield led
    led.dispose()


@pytest.fixture()
def policy():
    return parse_policy(copy.deepcopy(POLICY_DOC), path="/etc/residency/policy.yaml", sha256="ab" * 32)


def _source(evidence: dict, uri: str) -> dict:
    return next(s for s in evidence["sources"] if s["uri"] == uri)


def _counts(table) -> dict[str, int]:
    return {"objects": len(table), "bytes": sum(o[1] for o in table)}


def test_all_good_is_complete(policy, ledger, tmp_path):
    _populate(ledger)
    out = write_evidence(policy, ledger, tmp_path / "evidence", run=RUN, software=SOFTWARE)
    ev = out.evidence

    assert out.complete is True and ev["complete"] is True
    assert ev["problems"] == []
    assert json.loads(out.evidence_json.read_text(encoding="utf-8")) == ev
    validate_evidence(ev)

    rec = ev["reconciliation"]
    everything = S3_OBJECTS + GS_OBJECTS
    assert rec["in_scope"] == rec["in_ledger"] == rec["verified"] == _counts(everything)
    assert rec["copied"] == _counts([o for o in everything if o[3] == "copied"])
    assert rec["already_present"] == _counts([o for o in everything if o[3] == "already_present"])
    assert rec["cut_over"] == _counts([o for o in everything if o[4] == CUT_OVER])
    assert rec["failed"] == rec["pending"] == {"objects": 0, "bytes": 0}
    assert rec["balanced"] is True and all(c["holds"] for c in rec["checks"])

    s3 = _source(ev, S3_SRC)
    assert (s3["provider"], s3["region"], s3["jurisdiction"], s3["placement_source"]) == (
        "s3", "ap-northeast-2", "KR", "discovered")
    assert s3["counts"]["inventoried"] == {"objects": S3_LISTED[0], "bytes": S3_LISTED[1]}
    assert s3["counts"]["in_scope"] == s3["counts"]["verified"] == _counts(S3_OBJECTS)
    assert s3["media_types"]["video"] == {"objects": 1, "bytes": 734_003_200}
    assert _source(ev, GS_SRC)["placement_source"] == "declared"

    assert [(d["uri"], d["jurisdiction"], d["in_home_jurisdiction"]) for d in ev["destinations"]] == [
        (GS_DST, "JP", True), (S3_DST, "JP", True)]

    routes = {r["route"]: r for r in ev["routes"]}
    assert routes["s3->s3"]["algorithms"] == {"crc32c": 3, "md5": 1, "sha256": 1}
    assert routes["s3->s3"]["methods"] == {"read_back": 2, "server_reported": 3}
    assert routes["gs->gs"]["counts"]["verified"] == _counts(GS_OBJECTS)
    assert ev["checksum_algorithms"] == ["crc32c", "md5", "sha256"]

    refs = ev["references"]
    assert refs["cutover"]["rewritten"] == 2 and refs["residual_scan"]["cells_scanned"] == 12
    assert refs["residual_not_verified"] == 0
    assert ev["revocations"]["all_denied"] is True
    assert ev["revocations"]["records"][0]["proof"]["after"]["error"] == "InvalidAccessKeyId"
    assert ev["approvals"] == []
    assert ev["software"]["airflow"] == "3.0.2" and ev["software"]["residency"]
    assert ev["policy"] == {"path": "/etc/residency/policy.yaml", "sha256": "ab" * 32, "home_jurisdiction": "JP"}

    # The audit log on disk verifies against the head the evidence states.
    head = ChainHead(ev["audit_log"]["records"], ev["audit_log"]["head"])
    assert head.records == len(list(ledger.audit_records(MID)))
    assert verify_audit_log(out.audit_log, expect=head) == head

    # Every object is in objects.jsonl; the sample carries checksums an auditor can compare.
    lines = [json.loads(x) for x in out.objects.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == ev["objects_file"]["records"] == len(everything)
    assert {x["src_uri"] for x in lines} >= {f"{S3_SRC}/<script>.jpg", f"{GS_SRC}/y.mov"}
    assert len(ev["objects_sample"]) == len(everything)
    for sample in ev["objects_sample"]:
        assert sample["src_checksum"] == sample["dst_checksum"] and sample["dst_checksum"]

    page = out.evidence_html.read_text(encoding="utf-8")
    assert "COMPLETE" in page and "INCOMPLETE" not in page
    assert "700.0 MiB (734,003,200 bytes)" in page
    assert "1.2 MiB (1,258,291 bytes)" in page


def test_failures_make_it_incomplete_with_reasons(policy, ledger, tmp_path):
    _populate(ledger, failures={
        "c.png": ("copied", "checksum mismatch: crc32c source 0000abcd destination 0000ffff"),
        "d.m4a": (None, "source changed during the migration (etag differs)"),
    }, not_verified=2)
    out = write_evidence(policy, ledger, tmp_path / "evidence", run=RUN, software=SOFTWARE)
    ev = out.evidence

    assert out.complete is False
    rec = ev["reconciliation"]
    assert rec["failed"] == {"objects": 2, "bytes": 4_096 + 512}
    assert rec["failed_after_copy"] == {"objects": 1, "bytes": 4_096}
    assert rec["failed_before_copy"] == {"objects": 1, "bytes": 512}
    assert rec["verified"]["objects"] == len(S3_OBJECTS) + len(GS_OBJECTS) - 2
    # Failures are accounted for, so the counts still balance; the migration is just not complete.
    assert rec["balanced"] is True

    s3 = _source(ev, S3_SRC)
    assert {f["src_uri"]: f["reason"] for f in s3["failures"]} == {
        f"{S3_SRC}/c.png": "checksum mismatch: crc32c source 0000abcd destination 0000ffff",
        f"{S3_SRC}/d.m4a": "source changed during the migration (etag differs)",
    }
    assert s3["failures_truncated"] == 0
    assert ev["references"]["residual_not_verified"] == 2
    assert ev["problems"] == [
        f"{S3_SRC}: 2 of 5 in-scope objects failed, 4.5 KiB (4,608 bytes) in total, and were not "
        "migrated; each is listed with its reason under this bucket.",
        "2 application references still point at source objects that were not verified (reason not_verified), "
        "so they could not be rewritten.",
    ]

    lines = {x["src_uri"]: x for x in map(json.loads, out.objects.read_text(encoding="utf-8").splitlines())}
    assert lines[f"{S3_SRC}/c.png"]["state"] == "failed"
    assert lines[f"{S3_SRC}/c.png"]["reason"].startswith("checksum mismatch")

    page = out.evidence_html.read_text(encoding="utf-8")
    assert "INCOMPLETE" in page
    assert "2 of 5 in-scope objects failed" in page
    assert "checksum mismatch: crc32c source 0000abcd" in page


def test_pending_objects_do_not_balance(policy, ledger, tmp_path):
    _populate(ledger, pending=("c.png",))
    ev = write_evidence(policy, ledger, tmp_path / "evidence", run=RUN, software=SOFTWARE).evidence
    assert ev["complete"] is False
    assert ev["reconciliation"]["balanced"] is False
    settled = next(c for c in ev["reconciliation"]["checks"] if c["id"] == "in_scope_settled")
    assert settled["holds"] is False
    assert settled["left"]["objects"] == settled["right"]["objects"] + 1
    assert ev["problems"] == [
        f"{S3_SRC}: 1 of 5 in-scope objects are neither verified nor failed: the copy or verify phase did not "
        "finish for them."
    ]


def test_inventory_and_ledger_disagree(policy, ledger, tmp_path):
    _populate(ledger)
    ledger.record_bucket(MID, GS_SRC, objects_in_scope=3, bytes_in_scope=30_001)
    ev = write_evidence(policy, ledger, tmp_path / "evidence", run=RUN, software=SOFTWARE).evidence
    assert ev["complete"] is False and ev["reconciliation"]["balanced"] is False
    assert f"{GS_SRC}: the inventory counted 3 objects (30,001 bytes) in scope but the ledger tracks 2 (30,000 bytes)." \
        in ev["problems"]


def test_revocation_not_denied(policy, ledger, tmp_path):
    _populate(ledger, denied=False)
    ev = write_evidence(policy, ledger, tmp_path / "evidence", run=RUN, software=SOFTWARE).evidence
    assert ev["revocations"]["all_denied"] is False
    assert ev["problems"] == [
        "Credential AKIAAFFILIATE0000001 of arn:aws:iam::123456789012:user/affiliate-cn (delete_access_key) was "
        "not denied: an access attempt after the revocation succeeded."
    ]


def test_revocation_without_probe_is_not_proof(policy, ledger, tmp_path):
    _populate(ledger, denied=None)
    ev = write_evidence(policy, ledger, tmp_path / "evidence", run=RUN, software=SOFTWARE).evidence
    assert ev["complete"] is False and ev["revocations"]["all_denied"] is False
    assert ev["revocations"]["records"][0]["proof"]["denied"] is None
    assert "has no denial proof" in ev["problems"][0]


def test_missing_phases_and_dry_run_are_problems(policy, ledger, tmp_path):
    ev = write_evidence(policy, ledger, tmp_path / "evidence", run={**RUN, "dry_run": True},
                        software=SOFTWARE).evidence
    assert ev["complete"] is False
    text = "\n".join(ev["problems"])
    for fragment in (
        "No source bucket is recorded in the ledger",
        f"{S3_SRC}: this source bucket is named in the policy but has no inventory record",
        f"Destination {S3_DST} is named in the policy but its location was never recorded",
        "no reference cutover is recorded",
        "no residual reference scan is recorded",
        "The policy names foreign principals to revoke (affiliate-cn), but no revocation is recorded.",
        "The audit log is empty",
        "This report comes from a dry run",
    ):
        assert fragment in text
    validate_evidence(ev)


def test_destination_outside_home_jurisdiction(policy, ledger, tmp_path):
    _populate(ledger)
    ledger.record_bucket(MID, GS_DST, location="asia", jurisdiction=None)
    ev = write_evidence(policy, ledger, tmp_path / "evidence", run=RUN, software=SOFTWARE).evidence
    assert ev["problems"] == [
        f"Destination {GS_DST} is in an unknown or multi-country location (asia), outside the home jurisdiction JP."
    ]


def test_failure_list_is_capped(policy, ledger, tmp_path):
    _populate(ledger, extra_failed=FAILURES_CAP + 5)
    ev = write_evidence(policy, ledger, tmp_path / "evidence", run=RUN, software=SOFTWARE).evidence
    s3 = _source(ev, S3_SRC)
    assert s3["counts"]["failed"]["objects"] == FAILURES_CAP + 5
    assert len(s3["failures"]) == FAILURES_CAP and s3["failures_truncated"] == 5
    assert ev["objects_file"]["records"] == len(S3_OBJECTS) + len(GS_OBJECTS) + FAILURES_CAP + 5
    assert ev["reconciliation"]["balanced"] is True


def test_html_escapes_every_value(policy, ledger, tmp_path):
    _populate(ledger)
    ev = write_evidence(policy, ledger, tmp_path / "evidence", run={**RUN, "run_id": "<img src=x onerror=alert(1)>"},
                        software=SOFTWARE).evidence
    page = render_html(ev)
    assert "s3://seoul-media/&lt;script&gt;.jpg" in page
    assert "<script" not in page  # the page has no scripts at all, so no injected one either
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img" not in page
    assert "https://cdn.example/&lt;b&gt;x&lt;/b&gt;" in page
    # Self-contained: no external assets.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    # Key numbers and words an auditor needs.
    for text in ("Reconciliation", "Source buckets", "Destination buckets", "Copy routes", "Application references",
                 "Foreign credentials revoked", "AKIAAFFILIATE0000001", "InvalidAccessKeyId", "Audit log",
                 ev["audit_log"]["head"], "How to read the counts", "Rule 2: objects in scope = verified + failed",
                 "Sample of verified objects", "asked the provider&#x27;s API"):
        assert text in page, text


def test_schema_violation_names_the_field(policy, ledger, tmp_path):
    _populate(ledger)
    ev = write_evidence(policy, ledger, tmp_path / "evidence", run=RUN, software=SOFTWARE).evidence

    broken = copy.deepcopy(ev)
    del broken["migration_id"]
    with pytest.raises(ValueError, match=r"at \$: 'migration_id' is a required property"):
        validate_evidence(broken)

    broken = copy.deepcopy(ev)
    broken["sources"][0]["counts"]["verified"]["objects"] = -1
    with pytest.raises(ValueError, match=r"\$\.sources\[0\]\.counts\.verified\.objects"):
        validate_evidence(broken)

    broken = copy.deepcopy(ev)
    del broken["revocations"]["records"][0]["proof"]["denied"]
    with pytest.raises(ValueError, match="denied"):
        validate_evidence(broken)


def test_schema_is_valid_draft_2020_12():
    from jsonschema import Draft202012Validator

    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
