"""The evidence report: counts reconcile from the ledger, the schema holds, the verdict is honest.

A real SQLite ledger populated through the Ledger API, as the phases do. Each rule
of the verdict (``complete_rules``) has a test that breaks it and sees the report
say INCOMPLETE under that rule.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from residency.evidence import (
    FAILURES_CAP, ChainHead, load_schema, render_html, validate_evidence, verify_audit_log, write_evidence,
)
from residency.ledger import CUT_OVER, FAILED, VERIFIED, Ledger
from residency.policy import parse_policy
from residency.references import ResidualReport

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
    "references": {
        "database_url": "sqlite:////tmp/app.db", "columns": [{"table": "photos", "key": "id", "column": "url"}],
        "accepted_residual": [{"uri": "s3://seoul-media/logs/*", "reason": "application logs stay in Seoul by decision"}],
    },
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


STAMP = "2025-01-01T00:10:00.000+00:00"


def _populate(ledger: Ledger, *, failures: dict[str, tuple[str | None, str]] | None = None,
              pending: tuple[str, ...] = (), status: str = "proven", extra_failed: int = 0,
              unattested: tuple[str, ...] = (), arrived: int = 0, attest: bool = True) -> None:
    """Populate like a real run. ``failures`` maps key -> (copy_action or None, reason)."""
    failures = failures or {}
    s3_in = sum(o[1] for o in S3_OBJECTS) + 100 * extra_failed
    ledger.record_bucket(MID, S3_SRC, role="source", provider="s3", location="ap-northeast-2", jurisdiction="KR",
                         placement_source="discovered", objects_listed=S3_LISTED[0] + extra_failed,
                         bytes_listed=S3_LISTED[1] + 100 * extra_failed, objects_in_scope=len(S3_OBJECTS) + extra_failed,
                         bytes_in_scope=s3_in, objects_out_of_scope=S3_LISTED[0] - len(S3_OBJECTS),
                         bytes_out_of_scope=S3_LISTED[1] + 100 * extra_failed - s3_in, objects_unreadable=0,
                         bytes_unreadable=0, inventoried_at="2025-01-01T00:00:00.000+00:00")
    ledger.record_bucket(MID, GS_SRC, role="source", provider="gs", location="asia-northeast3", jurisdiction="KR",
                         placement_source="declared", objects_listed=GS_LISTED[0], bytes_listed=GS_LISTED[1],
                         objects_in_scope=len(GS_OBJECTS), bytes_in_scope=sum(o[1] for o in GS_OBJECTS),
                         objects_out_of_scope=0, bytes_out_of_scope=0, objects_unreadable=0, bytes_unreadable=0,
                         inventoried_at="2025-01-01T00:00:00.000+00:00")
    ledger.record_bucket(MID, S3_DST, role="destination", provider="s3", location="ap-northeast-1", jurisdiction="JP",
                         placement_source="discovered")
    ledger.record_bucket(MID, GS_DST, role="destination", provider="gs", location="asia-northeast1", jurisdiction="JP",
                         placement_source="discovered")
    ledger.audit(MID, "inventory", {"buckets": [S3_SRC, GS_SRC]})
    ledger.record_phase(MID, "inventory", {"objects_in_scope": 7}, run_id=RUN["run_id"])

    extra = [(f"bulk/{i:04d}.jpg", 100, "image", None, FAILED, None, None) for i in range(extra_failed)]
    proofs = []
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
                                 dst_checksums={alg: _checksum(alg, key)}, proof=f"{alg} equal on both sides")
            ledger.audit(MID, "object_verified", {"src_uri": uri, "algorithm": alg})
            if key not in unattested:
                proofs.append((uri, "listing_etag", None))
    ledger.record_phase(MID, "cutover", {
        "scanned": 12, "rewritten": 2, "already_rewritten": 0, "residual": 1, "conflicts": 0, "repointed": 0,
        "residual_by_reason": {"not_in_scope": 1}, "per_column": {"photos.url": {"rewritten": 2}},
    }, run_id=RUN["run_id"])
    ledger.record_revocation(MID, "aws:iam::user/affiliate-cn", "AKIAAFFILIATE0000001", "deactivate+delete", {
        "status": status,
        "reason": {"proven": "allowed before, denied after with this key",
                   "failed": "the key still works after revocation",
                   "not_proven": "no probe credentials hold this key"}[status],
        "before": {"at": "2025-01-01T00:05:00Z", "action": "s3:ListObjectsV2", "target": "s3://seoul-media",
                   "access_key_id": "AKIAAFFILIATE0000001", "allowed": True, "denied": False, "error_code": None}
        if status != "not_proven" else None,
        "after": {"at": "2025-01-01T00:06:00Z", "action": "s3:ListObjectsV2", "target": "s3://seoul-media",
                  "access_key_id": "AKIAAFFILIATE0000001", "allowed": status == "failed",
                  "denied": status == "proven", "error_code": "InvalidAccessKeyId" if status == "proven" else None}
        if status != "not_proven" else None,
        "denied": {"proven": True, "failed": False, "not_proven": None}[status],
        "deactivated": True, "deleted": True, "already_revoked": False, "user": "affiliate-cn",
        "probe_key": "AKIAAFFILIATE0000001",
    })
    ledger.audit(MID, "revoked", {"credential_id": "AKIAAFFILIATE0000001"})
    if attest:
        ledger.mark_attested(MID, STAMP, proofs)
        sources = {S3_SRC: {"arrived": arrived, "arrival_checked": True,
                            "examples": [{"kind": "arrived", "uri": f"{S3_SRC}/new/{i}.jpg", "detail": "new"}
                                         for i in range(min(arrived, 3))]},
                   GS_SRC: {"arrived": 0, "arrival_checked": True, "examples": []}}
        ledger.record_phase(MID, "attest", {"phase": "attest", "stamp": STAMP, "dry_run": False, "sources": sources,
                                            "examined": len(proofs) + len(unattested), "attested": len(proofs),
                                            "arrived": arrived}, run_id=RUN["run_id"])


def _residual(blocking: dict[str, int] | None = None, accepted: int = 1) -> ResidualReport:
    """A residual scan as references.scan_residual returns it."""
    blocking = blocking or {}
    examples = [{"column": "photos.url", "key": "7", "reason": reason, "object_uri": f"{S3_SRC}/x.jpg",
                 "excerpt": "https://seoul-media.s3.ap-northeast-2.amazonaws.com/<b>x</b>.jpg", "state": None,
                 "accepted": None} for reason in blocking]
    examples += [{"column": "photos.url", "key": "8", "reason": "not_in_scope", "object_uri": f"{S3_SRC}/logs/a.log",
                  "excerpt": "s3://seoul-media/logs/a.log", "state": None,
                  "accepted": "application logs stay in Seoul by decision"}] * accepted
    return ResidualReport(
        cells_scanned=12, residual=sum(blocking.values()), by_reason=blocking, examples=examples,
        per_column={"photos.url": {"cells": 12, "references": 3 + accepted, "residual": sum(blocking.values()),
                                   "accepted": accepted}},
        accepted=accepted,
        accepted_by_rule=[{"rule": "uri s3://seoul-media/logs/*", "reason": "application logs stay in Seoul by decision",
                           "references": accepted}] if accepted else [],
        references=3 + accepted, domestic_ok=2, attest_stamp=STAMP,
    )


#: A discovery scan that found nothing outside the policy's columns.
CLEAN_DISCOVERY = {"enabled": True, "unconfigured": [], "columns": [], "scanned_columns": 4, "cells_scanned": 30,
                   "schemas": ["main"], "excluded": []}


def _write(policy, ledger, tmp_path, residual=None, run=RUN, discovery=CLEAN_DISCOVERY):
    return write_evidence(policy, ledger, tmp_path / "evidence", run=run, software=SOFTWARE,
                          residual=_residual() if residual is None else residual, discovery=discovery)


def _rule(ev: dict, rule: str) -> dict:
    return next(r for r in ev["complete_rules"] if r["id"] == rule)


def _broken(ev: dict) -> list[str]:
    return [r["id"] for r in ev["complete_rules"] if not r["holds"]]


@pytest.fixture()
def policy():
    return parse_policy(copy.deepcopy(POLICY_DOC), path="/etc/residency/policy.yaml", sha256="ab" * 32)


def _source(evidence: dict, uri: str) -> dict:
    return next(s for s in evidence["sources"] if s["uri"] == uri)


def _counts(table) -> dict[str, int]:
    return {"objects": len(table), "bytes": sum(o[1] for o in table)}



def test_all_good_is_complete(policy, ledger, tmp_path):
    _populate(ledger)
    out = _write(policy, ledger, tmp_path)
    ev = out.evidence

    assert out.complete is True and ev["complete"] is True, ev["problems"]
    assert ev["problems"] == [] and _broken(ev) == []
    assert [r["id"] for r in ev["complete_rules"]] == [
        "inventory", "scope", "migrated", "attested", "references", "revocation", "jurisdiction", "record", "real_run"]
    assert json.loads(out.evidence_json.read_text(encoding="utf-8")) == ev
    validate_evidence(ev)

    rec = ev["reconciliation"]
    everything = S3_OBJECTS + GS_OBJECTS
    assert rec["in_scope"] == rec["in_ledger"] == rec["verified"] == rec["attested"] == _counts(everything)
    assert rec["copied"] == _counts([o for o in everything if o[3] == "copied"])
    assert rec["already_present"] == _counts([o for o in everything if o[3] == "already_present"])
    assert rec["cut_over"] == _counts([o for o in everything if o[4] == CUT_OVER])
    assert rec["failed"] == rec["pending"] == rec["unreadable"] == {"objects": 0, "bytes": 0}
    assert rec["balanced"] is True and all(c["holds"] for c in rec["checks"])
    assert {c["id"] for c in rec["checks"]} == {
        "listing_balances", "inventory_matches_ledger", "in_scope_settled", "copies_accounted", "verified_attested"}

    s3 = _source(ev, S3_SRC)
    assert (s3["provider"], s3["region"], s3["jurisdiction"], s3["placement_source"]) == (
        "s3", "ap-northeast-2", "KR", "discovered")
    assert s3["counts"]["inventoried"] == {"objects": S3_LISTED[0], "bytes": S3_LISTED[1]}
    assert s3["counts"]["out_of_scope"]["objects"] == S3_LISTED[0] - len(S3_OBJECTS)
    assert s3["counts"]["in_scope"] == s3["counts"]["verified"] == _counts(S3_OBJECTS)
    assert s3["media_types"]["video"] == {"objects": 1, "bytes": 734_003_200}
    assert _source(ev, GS_SRC)["placement_source"] == "declared"

    assert [(d["uri"], d["jurisdiction"], d["in_home_jurisdiction"]) for d in ev["destinations"]] == [
        (GS_DST, "JP", True), (S3_DST, "JP", True)]

    routes = {r["route"]: r for r in ev["routes"]}
    assert routes["s3->s3"]["algorithms"] == {"crc32c": 3, "md5": 1, "sha256": 1}
    assert routes["s3->s3"]["methods"] == {"read_back": 2, "server_reported": 3}
    assert routes["gs->gs"]["counts"]["verified"] == routes["gs->gs"]["counts"]["attested"] == _counts(GS_OBJECTS)
    assert ev["checksum_algorithms"] == ["crc32c", "md5", "sha256"]

    assert ev["attestation"]["stamp"] == STAMP and ev["attestation"]["attested"] == len(everything)
    refs = ev["references"]
    assert refs["cutover"]["rewritten"] == 2 and refs["residual_scan"]["cells_scanned"] == 12
    assert refs["residual_scan"]["residual"] == 0 and refs["residual_scan"]["accepted"] == 1
    assert refs["residual_scan"]["accepted_by_rule"][0]["reason"] == "application logs stay in Seoul by decision"
    assert refs["rollback"] is None
    assert ev["revocations"]["all_proven"] is True and ev["revocations"]["all_denied"] is True
    assert ev["revocations"]["records"][0]["proof"]["after"]["error_code"] == "InvalidAccessKeyId"
    assert ev["approvals"] == []
    assert ev["software"]["airflow"] == "3.0.2" and ev["software"]["residency"]
    assert ev["policy"] == {"path": "/etc/residency/policy.yaml", "sha256": "ab" * 32, "home_jurisdiction": "JP"}

    head = ChainHead(ev["audit_log"]["records"], ev["audit_log"]["head"])
    assert head.records == len(list(ledger.audit_records(MID)))
    assert verify_audit_log(out.audit_log, expect=head) == head

    lines = [json.loads(x) for x in out.objects.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == ev["objects_file"]["records"] == len(everything)
    assert {x["src_uri"] for x in lines} >= {f"{S3_SRC}/<script>.jpg", f"{GS_SRC}/y.mov"}
    assert all(x["attested_at"] == STAMP and x["proof"] for x in lines)
    assert len(ev["objects_sample"]) == len(everything)
    for sample in ev["objects_sample"]:
        assert sample["src_checksum"] == sample["dst_checksum"] and sample["dst_checksum"]

    page = out.evidence_html.read_text(encoding="utf-8")
    assert "COMPLETE" in page and "INCOMPLETE" not in page
    assert "700.0 MiB (734,003,200 bytes)" in page
    assert "1.2 MiB (1,258,291 bytes)" in page
    assert "application logs stay in Seoul by decision" in page


def test_failures_make_it_incomplete_with_reasons(policy, ledger, tmp_path):
    _populate(ledger, failures={
        "c.png": ("copied", "checksum mismatch: crc32c source 0000abcd destination 0000ffff"),
        "d.m4a": (None, "source changed during the migration (etag differs)"),
    })
    out = _write(policy, ledger, tmp_path, residual=_residual({"not_verified": 2}))
    ev = out.evidence

    assert out.complete is False
    rec = ev["reconciliation"]
    assert rec["failed"] == {"objects": 2, "bytes": 4_096 + 512}
    assert rec["failed_after_copy"] == {"objects": 1, "bytes": 4_096}
    assert rec["failed_before_copy"] == {"objects": 1, "bytes": 512}
    assert rec["verified"]["objects"] == len(S3_OBJECTS) + len(GS_OBJECTS) - 2
    assert rec["balanced"] is True  # failures are accounted for: the counts balance, the migration is not complete

    s3 = _source(ev, S3_SRC)
    assert {f["src_uri"]: f["reason"] for f in s3["failures"]} == {
        f"{S3_SRC}/c.png": "checksum mismatch: crc32c source 0000abcd destination 0000ffff",
        f"{S3_SRC}/d.m4a": "source changed during the migration (etag differs)",
    }
    assert _broken(ev) == ["migrated", "references"]
    assert ev["problems"] == [
        f"[migrated] {S3_SRC}: 2 of 5 in-scope objects failed, 4.5 KiB (4,608 bytes) in total, and were not "
        "migrated; each is listed with its reason under this bucket.",
        "[references] 2 application references still point at an overseas bucket or at a copy that is not proven "
        "(2 not_verified); examples are listed under references.",
    ]
    page = out.evidence_html.read_text(encoding="utf-8")
    assert "INCOMPLETE" in page and "2 of 5 in-scope objects failed" in page
    assert "checksum mismatch: crc32c source 0000abcd" in page


def test_pending_objects_do_not_balance(policy, ledger, tmp_path):
    _populate(ledger, pending=("c.png",))
    ev = _write(policy, ledger, tmp_path).evidence
    assert ev["complete"] is False and ev["reconciliation"]["balanced"] is False
    settled = next(c for c in ev["reconciliation"]["checks"] if c["id"] == "in_scope_settled")
    assert settled["holds"] is False and settled["left"]["objects"] == settled["right"]["objects"] + 1
    assert _rule(ev, "migrated")["problems"] == [
        f"{S3_SRC}: 1 of 5 in-scope objects are neither verified nor failed: the copy or verify phase did not "
        "finish for them."
    ]


def test_inventory_and_ledger_disagree(policy, ledger, tmp_path):
    _populate(ledger)
    ledger.record_bucket(MID, GS_SRC, objects_in_scope=3, bytes_in_scope=30_001, bytes_listed=30_001, objects_listed=3)
    ev = _write(policy, ledger, tmp_path).evidence
    assert ev["complete"] is False and ev["reconciliation"]["balanced"] is False
    assert any("in scope by the inventory = tracked in the ledger does not hold: 3 objects (30,001 bytes)" in p
               for p in _rule(ev, "migrated")["problems"])


def test_unreadable_objects_block_and_are_listed(policy, ledger, tmp_path):
    """State 3: listed objects the inventory could not read are failures, and the listing still balances."""
    _populate(ledger)
    ledger.record_bucket(MID, GS_SRC, objects_listed=GS_LISTED[0] + 1, bytes_listed=GS_LISTED[1] + 77,
                         objects_unreadable=1, bytes_unreadable=77)
    ledger.replace_unreadable(MID, GS_SRC, [{"src_uri": f"{GS_SRC}/secret.jpg", "size": 77,
                                             "reason": "PermissionDenied: 403 Forbidden"}])
    ev = _write(policy, ledger, tmp_path).evidence
    assert ev["complete"] is False and _broken(ev) == ["inventory"]
    gs = _source(ev, GS_SRC)
    assert gs["counts"]["unreadable"] == {"objects": 1, "bytes": 77}
    assert gs["unreadable"] == [{"src_uri": f"{GS_SRC}/secret.jpg", "reason": "PermissionDenied: 403 Forbidden"}]
    assert next(c for c in gs["checks"] if c["id"] == "listing_balances")["holds"] is True
    assert "1 listed objects could not be read" in _rule(ev, "inventory")["problems"][0]


def test_listing_that_does_not_balance_is_a_problem(policy, ledger, tmp_path):
    _populate(ledger)
    ledger.record_bucket(MID, GS_SRC, objects_listed=GS_LISTED[0] + 2)  # two listed objects counted nowhere
    ev = _write(policy, ledger, tmp_path).evidence
    assert "inventory" in _broken(ev)
    assert any("the listing counted 4 objects" in p for p in _rule(ev, "inventory")["problems"])


def test_nothing_in_scope_is_never_complete(policy, ledger, tmp_path):
    """State 8: a typo in a prefix selects nothing; the report says so."""
    ledger.record_bucket(MID, S3_SRC, role="source", provider="s3", location="ap-northeast-2", jurisdiction="KR",
                         placement_source="discovered", objects_listed=40, bytes_listed=4000, objects_in_scope=0,
                         bytes_in_scope=0, objects_out_of_scope=40, bytes_out_of_scope=4000, objects_unreadable=0,
                         bytes_unreadable=0, inventoried_at=STAMP)
    ev = _write(policy, ledger, tmp_path).evidence
    assert ev["complete"] is False
    assert f"{S3_SRC}: nothing is in scope (40 objects listed, none selected)" in _rule(ev, "scope")["problems"][0]


def test_verified_but_not_reproven_is_not_complete(policy, ledger, tmp_path):
    _populate(ledger, unattested=("b.mp4",))
    ev = _write(policy, ledger, tmp_path).evidence
    assert _broken(ev) == ["attested"]
    check = next(c for c in _source(ev, S3_SRC)["checks"] if c["id"] == "verified_attested")
    assert check["holds"] is False and check["left"]["objects"] == check["right"]["objects"] + 1
    assert "1 verified objects were not re-proven by the attestation" in _rule(ev, "attested")["problems"][0]


def test_no_attestation_or_a_stale_one_is_not_complete(policy, ledger, tmp_path):
    _populate(ledger, attest=False)
    ev = _write(policy, ledger, tmp_path).evidence
    assert ev["attestation"] is None and "attested" in _broken(ev)
    assert _rule(ev, "attested")["problems"][0].startswith("No attestation was made")

    # An attestation, then a copy phase: the attestation no longer covers the ledger.
    _populate(ledger)
    ledger.record_phase(MID, "copy", {"copied": 1}, run_id=RUN["run_id"])
    ev = _write(policy, ledger, tmp_path).evidence
    assert ev["attestation"]["later_phases"] == ["copy"]
    assert any("changed after the attestation" in p for p in _rule(ev, "attested")["problems"])


def test_media_arrived_since_the_inventory(policy, ledger, tmp_path):
    _populate(ledger, arrived=4)
    ev = _write(policy, ledger, tmp_path).evidence
    assert _broken(ev) == ["attested"] and _source(ev, S3_SRC)["arrived_since_inventory"] == 4
    assert "4 media objects arrived at the source after the inventory began" in _rule(ev, "attested")["problems"][0]


@pytest.mark.parametrize("reason", ["not_rewritten", "conflict", "unrecognised", "presigned", "unproven_copy"])
def test_any_blocking_residual_reference_is_not_complete(policy, ledger, tmp_path, reason):
    """State 4: references still pointing overseas for any reason block, unless the policy accepts them."""
    _populate(ledger)
    ev = _write(policy, ledger, tmp_path, residual=_residual({reason: 1})).evidence
    assert _broken(ev) == ["references"]
    assert ev["references"]["residual_scan"]["by_reason"] == {reason: 1}
    assert f"(1 {reason})" in _rule(ev, "references")["problems"][0]


def test_a_column_outside_the_policy_holding_overseas_references_is_not_complete(policy, ledger, tmp_path):
    """Discovery: the residual scan reads only the policy's columns; a column nobody listed
    that holds overseas URLs makes a COMPLETE verdict false, so it blocks."""
    _populate(ledger)
    found = dict(CLEAN_DISCOVERY, unconfigured=["comments.body"], columns=[
        {"label": "comments.body", "kind": "text", "configured": False, "cells": 9, "cells_with_references": 2,
         "references": 3, "examples": ["see https://seoul-media.s3.amazonaws.com/a.jpg"]}])
    ev = _write(policy, ledger, tmp_path, discovery=found).evidence
    assert _broken(ev) == ["references"]
    assert "Column comments.body is not named in the policy but holds 3 reference(s)" in \
        _rule(ev, "references")["problems"][0]
    assert ev["references"]["discovery"]["unconfigured"] == ["comments.body"]
    # No discovery scan, or one that failed: not proven, so not complete either.
    for missing in (None, {"error": "OperationalError: no such table"}):
        ev = _write(policy, ledger, tmp_path, discovery=missing).evidence
        assert _broken(ev) == ["references"] and "not proven" in _rule(ev, "references")["problems"][0]
    # Turned off by the policy: stated, not blocking.
    ev = _write(policy, ledger, tmp_path, discovery={"enabled": False}).evidence
    assert ev["complete"] is True and "not scanned" in ev["references"]["discovery"]["note"]


def test_no_fresh_residual_scan_or_a_rollback_is_not_complete(policy, ledger, tmp_path):
    _populate(ledger)
    ev = write_evidence(policy, ledger, tmp_path / "evidence", run=RUN, software=SOFTWARE, residual=None,
                        discovery=CLEAN_DISCOVERY).evidence
    assert _rule(ev, "references")["problems"] == [
        "No residual scan of the application database was made for this report, so references left pointing "
        "overseas are unknown."]
    # A scan recorded by an earlier phase is never reused.
    ledger.record_phase(MID, "residual", {"cells_scanned": 12, "residual": 0, "by_reason": {}})
    ev = write_evidence(policy, ledger, tmp_path / "evidence", run=RUN, software=SOFTWARE, residual=None).evidence
    assert ev["references"]["residual_scan"] is None and "references" in _broken(ev)

    ledger.record_phase(MID, "rollback", {"restored": 2, "skipped_changed": 0}, run_id=RUN["run_id"])
    ev = _write(policy, ledger, tmp_path).evidence
    assert ev["references"]["rollback"]["restored"] == 2
    assert any("The cutover was rolled back" in p for p in _rule(ev, "references")["problems"])


@pytest.mark.parametrize("status, fragment", [
    ("failed", "still works: an access attempt after the revocation was allowed"),
    ("not_proven", "revocation not proven. no probe credentials hold this key"),
])
def test_revocation_needs_its_own_proof(policy, ledger, tmp_path, status, fragment):
    _populate(ledger, status=status)
    ev = _write(policy, ledger, tmp_path).evidence
    assert _broken(ev) == ["revocation"] and ev["revocations"]["all_proven"] is False
    assert fragment in _rule(ev, "revocation")["problems"][0]
    record = ev["revocations"]["records"][0]
    if status == "not_proven":
        assert record["proof"]["denied"] is None and record["proof"]["after"] is None
        page = render_html(ev)
        assert "no attempt made" in page  # never says an attempt succeeded or failed when none was made


def test_read_back_proof_of_a_grant_counts_and_a_key_in_its_soak_does_not(policy, ledger, tmp_path):
    """A grant closed and read back holds the rule, with its method shown; a key still inactive during
    ``delete_after_hours`` is not revoked yet, so COMPLETE waits for its deletion."""
    from residency.access import PathRevocation, record

    _populate(ledger)
    record(ledger, MID, PathRevocation(
        "aws account 999988887777", "bucket_policy", "bucket_policy:s3://seoul-media", "remove-statements",
        "revoked", "proven", "read_back", "read back: no grant left.", {"Statement": ["grant"]}, None))
    ev = _write(policy, ledger, tmp_path).evidence
    assert "revocation" not in _broken(ev)
    grant = next(r for r in ev["revocations"]["records"] if r["kind"] == "bucket_policy")
    assert (grant["proof"]["method"], grant["proof"]["snapshot_before"]) == ("read_back", {"Statement": ["grant"]})

    ledger.record_revocation(MID, "aws:iam::user/affiliate-cn", "AKIAAFFILIATE0000009", "deactivate+delete", {
        "status": "proven", "reason": "refused while inactive.", "before": None, "after": None, "denied": True,
        "deactivated": True, "deleted": False, "outcome": "pending", "delete_due": "2026-11-23T00:00:00+00:00"})
    ev = _write(policy, ledger, tmp_path).evidence
    assert _broken(ev) == ["revocation"]
    assert "deletion is due at 2026-11-23T00:00:00+00:00" in _rule(ev, "revocation")["problems"][0]


def test_legacy_revocation_record_without_a_before_probe_is_not_proven(policy, ledger, tmp_path):
    _populate(ledger)
    ledger.record_revocation(MID, "aws:iam::user/affiliate-cn", "AKIAAFFILIATE0000001", "deactivate+delete",
                             {"before": {"allowed": False, "error_code": "AccessDenied"},
                              "after": {"denied": True, "error_code": "InvalidAccessKeyId"}, "denied": True})
    ev = _write(policy, ledger, tmp_path).evidence
    assert ev["revocations"]["records"][0]["proof"]["status"] == "not_proven"
    assert "revocation" in _broken(ev)


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
        "No residual scan of the application database was made for this report",
        "The policy names foreign principals to revoke (aws user affiliate-cn), but no revocation is recorded.",
        "No attestation was made",
        "The audit log is empty",
        "This report comes from a dry run",
    ):
        assert fragment in text
    validate_evidence(ev)


def test_destination_outside_home_jurisdiction(policy, ledger, tmp_path):
    _populate(ledger)
    ledger.record_bucket(MID, GS_DST, location="asia", jurisdiction=None)
    ev = _write(policy, ledger, tmp_path).evidence
    assert ev["problems"] == [
        f"[jurisdiction] Destination {GS_DST} is in an unknown or multi-country location (asia), outside the home "
        "jurisdiction JP."
    ]


def test_failure_list_is_capped(policy, ledger, tmp_path):
    _populate(ledger, extra_failed=FAILURES_CAP + 5)
    ev = _write(policy, ledger, tmp_path).evidence
    s3 = _source(ev, S3_SRC)
    assert s3["counts"]["failed"]["objects"] == FAILURES_CAP + 5
    assert len(s3["failures"]) == FAILURES_CAP and s3["failures_truncated"] == 5
    assert ev["objects_file"]["records"] == len(S3_OBJECTS) + len(GS_OBJECTS) + FAILURES_CAP + 5
    assert ev["reconciliation"]["balanced"] is True


def test_html_escapes_every_value(policy, ledger, tmp_path):
    _populate(ledger)
    ev = _write(policy, ledger, tmp_path, residual=_residual({"not_rewritten": 1}),
                run={**RUN, "run_id": "<img src=x onerror=alert(1)>"}).evidence
    page = render_html(ev)
    assert "s3://seoul-media/&lt;script&gt;.jpg" in page
    assert "<script" not in page  # the page has no scripts at all, so no injected one either
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img" not in page
    assert "amazonaws.com/&lt;b&gt;x&lt;/b&gt;.jpg" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    for text in ("What complete means, rule by rule", "Reconciliation", "Attestation just before this report",
                 "Source buckets", "Destination buckets", "Copy routes", "Application references",
                 "Residual scan made for this report", "Foreign access paths closed", "AKIAAFFILIATE0000001",
                 "InvalidAccessKeyId", "Audit log", ev["audit_log"]["head"], "How to read the counts",
                 "Sample of verified objects", "asked the provider&#39;s API"):
        assert text in page, text


def test_schema_violation_names_the_field(policy, ledger, tmp_path):
    _populate(ledger)
    ev = _write(policy, ledger, tmp_path).evidence

    broken = copy.deepcopy(ev)
    del broken["migration_id"]
    with pytest.raises(ValueError, match=r"at \$: 'migration_id' is a required property"):
        validate_evidence(broken)

    broken = copy.deepcopy(ev)
    broken["sources"][0]["counts"]["verified"]["objects"] = -1
    with pytest.raises(ValueError, match=r"\$\.sources\[0\]\.counts\.verified\.objects"):
        validate_evidence(broken)

    broken = copy.deepcopy(ev)
    broken["revocations"]["records"][0]["proof"]["status"] = "probably"
    with pytest.raises(ValueError, match="status"):
        validate_evidence(broken)


def test_schema_is_valid_draft_2020_12():
    from jsonschema import Draft202012Validator

    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_schema_names_every_access_path_kind_and_proof_method():
    """The evidence schema and the engine agree on the kinds of path and the ways of proving one closed."""
    from residency.access import KINDS, METHODS
    from residency.evidence import load_schema

    record = load_schema()["properties"]["revocations"]["properties"]["records"]["items"]
    assert tuple(record["properties"]["kind"]["enum"]) == KINDS
    assert tuple(record["properties"]["proof"]["properties"]["method"]["enum"]) == METHODS
