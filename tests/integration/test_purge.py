"""The purge of the overseas copies, end to end on the real emulators over HTTP.

A small migration (moto server: a versioned Seoul bucket with a prefix, several
versions of one key, a delete marker under a migrated key, an incomplete multipart
upload, objects out of scope and outside the prefix; fake-gcs-server: a versioned
GCS bucket) runs through the pipeline's own phases (plan, preflight, inventory,
copy, verify, recheck, an approval, cutover); then the estate is broken the way
the purge must notice (a destination copy deleted, one overwritten, a source
overwritten after the copy) and the purge runs: refused before the soak, a dry run
that changes nothing, the purge, the proof listing, and a re-run.

fake-gcs-server (1.54) accepts ``versioning.enabled`` but keeps no noncurrent
generation (an overwrite replaces the object, a delete removes it): only live
generations can be tested there, each deleted with ``generation=``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from residency import checksums, pipeline, purge_phase
from residency import purge as purging
from residency.ledger import phases

SEOUL, TOKYO = "ap-northeast-2", "ap-northeast-1"
RUN = {"dag_id": "residency_purge", "run_id": "manual__purge_test"}
APPROVE = {"chosen_options": ["Approve"], "responded_by_user": {"id": "approver", "name": "approver"},
           "responded_at": "2026-11-22T00:00:00+00:00", "params_input": {"comment": "soaked"}}


def _put(client: Any, bucket: str, key: str, body: bytes, content_type: str = "image/jpeg") -> str:
    return client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type,
                             ChecksumAlgorithm="CRC32C",
                             ChecksumCRC32C=checksums.hex_to_b64(checksums.crc32c_hex(body))).get("VersionId")


def all_versions(client: Any, bucket: str, prefix: str = "") -> list[tuple[str, str, bool]]:
    """Every (key, version id, is a delete marker) under ``prefix``, straight from the server."""
    out = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        out += [(v["Key"], v["VersionId"], False) for v in page.get("Versions", [])]
        out += [(d["Key"], d["VersionId"], True) for d in page.get("DeleteMarkers", [])]
    return sorted(out)


class World:
    """A Seoul -> Tokyo migration on moto (and fake-gcs-server), migrated up to the cutover."""

    def __init__(self, tmp: Path, admin: Any, make_bucket: Any, gcs_admin: Any = None, make_gcs_bucket: Any = None):
        self.tmp = tmp
        self.creds = dataclasses.replace(admin, validates_upload_checksums=False)  # moto echoes client checksums
        self.gcs_creds = gcs_admin
        self.src = make_bucket(SEOUL, versioned=True, prefix="seoul")
        self.dst = make_bucket(TOKYO, prefix="tokyo")
        self.seoul = admin.client("s3", SEOUL, request_checksum_calculation="when_required")
        self.tokyo = admin.client("s3", TOKYO, request_checksum_calculation="when_required")
        s = self.seoul
        self.photos = [f"media/photos/{i:02d}.jpg" for i in range(5)]
        for i, key in enumerate(self.photos):
            _put(s, self.src, key, b"\xff\xd8\xff" + bytes([i]) * (2000 + i))
        # One key with history: v1, a delete marker, v2 (current: what is migrated).
        self.history = "media/photos/history.jpg"
        _put(s, self.src, self.history, b"\xff\xd8\xff old" * 100)
        s.delete_object(Bucket=self.src, Key=self.history)
        _put(s, self.src, self.history, b"\xff\xd8\xff new" * 120)
        # Out of scope: not media, excluded, deleted before the inventory, outside the prefix.
        _put(s, self.src, "media/logs/app.log", b"log line\n" * 10, "text/plain")
        _put(s, self.src, "media/private/secret.jpg", b"\xff\xd8\xff private" * 10)
        _put(s, self.src, "media/photos/deleted-long-ago.jpg", b"\xff\xd8\xff gone" * 10)
        s.delete_object(Bucket=self.src, Key="media/photos/deleted-long-ago.jpg")
        _put(s, self.src, "other/outside.jpg", b"\xff\xd8\xff outside" * 10)
        # An incomplete multipart upload under the prefix.
        up = s.create_multipart_upload(Bucket=self.src, Key="media/uploads/partial.mp4", ContentType="video/mp4")
        s.upload_part(Bucket=self.src, Key="media/uploads/partial.mp4", UploadId=up["UploadId"], PartNumber=1,
                      Body=b"\x00" * (5 * 1024 * 1024))
        self.upload_id = up["UploadId"]
        sources = [{"uri": f"s3://{self.src}/media/", "conn_id": "aws"}]
        destinations = {"s3": {"uri": f"s3://{self.dst}", "conn_id": "aws"}}
        if gcs_admin is not None:
            self.gsrc = make_gcs_bucket(versioned=True, prefix="gseoul")
            self.gdst = make_gcs_bucket(location="asia-northeast1", prefix="gtokyo")
            self.gcs = gcs_admin.client()
            for i in range(3):
                self.gcs.bucket(self.gsrc).blob(f"video/{i}.mp4").upload_from_string(
                    b"\x00\x00\x00\x18ftypmp42" + bytes([i]) * 3000, content_type="video/mp4")
            self.gcs.bucket(self.gsrc).blob("video/notes.txt").upload_from_string(b"notes", content_type="text/plain")
            sources.append({"uri": f"gs://{self.gsrc}", "conn_id": "gcs", "location": "asia-northeast3", "to": "gs"})
            destinations["gs"] = {"uri": f"gs://{self.gdst}", "conn_id": "gcs", "location": "asia-northeast1"}
        self.doc = {
            "migration_id": f"purge-{self.src}",
            "home_jurisdiction": "JP",
            "control_dir": str(tmp / "control"),
            "sources": sources,
            "destinations": destinations,
            "selection": {"exclude_prefixes": ["media/private/"]},
            "transfer": {"shard_size": 4, "workers": 4},
            "cutover": {"catch_up_passes": 0},
        }
        (tmp / "policy.yaml").write_text(yaml.safe_dump(self.doc))
        self.policy_path = str(tmp / "policy.yaml")

    def credentials(self, conn_id: str) -> Any:
        return self.gcs_creds if conn_id == "gcs" else self.creds

    def migrate(self) -> pipeline.Runtime:
        """The migration's phases up to the cutover, as the DAG runs them."""
        plan = pipeline.plan_run({"policy_path": self.policy_path}, {"dag_id": "residency_migration",
                                                                     "run_id": "manual__migrate"}, self.credentials)
        rt = pipeline.Runtime(plan, self.credentials)
        shards = pipeline.run_inventory(rt, pipeline.preflight(rt)["placements"])["shards"]
        for shard in shards:
            pipeline.copy_shard(rt, shard)
        for shard in shards:
            pipeline.verify_shard(rt, shard)
        pipeline.recheck(rt)
        pipeline.record_approval(rt, "cutover", APPROVE)
        pipeline.cutover(rt)
        return rt

    def runtime(self, run: dict[str, Any] = RUN, **params: Any) -> pipeline.Runtime:
        plan = purge_phase.plan_purge({"policy_path": self.policy_path, "evidence_dir": str(self.tmp / "evidence"),
                                       **params}, run, self.credentials)
        return pipeline.Runtime(plan, self.credentials)

    def age_cutover(self, rt: pipeline.Runtime, hours: float) -> None:
        """The cutover ended ``hours`` ago (the soak is measured from the ledger's record)."""
        at = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)).isoformat(timespec="milliseconds")
        with rt.ledger.engine.begin() as conn:
            conn.execute(phases.update().where(phases.c.migration_id == rt.policy.migration_id)
                         .where(phases.c.phase == "cutover").values(at=at))


@pytest.fixture
def world(tmp_path, admin, make_bucket, gcs_admin, make_gcs_bucket) -> World:
    return World(tmp_path, admin, make_bucket, gcs_admin, make_gcs_bucket)


def test_purge_deletes_only_attested_unchanged_objects_every_version_and_proves_it(world: World):
    w = world
    rt = w.migrate()
    mid = rt.policy.migration_id
    label = f"s3://{w.src}/media/"
    # Break the estate after the cutover, the ways the purge must notice.
    missing, corrupt, changed = w.photos[0], w.photos[1], w.photos[2]
    w.tokyo.delete_object(Bucket=w.dst, Key=f"{w.src}/{missing}")  # the domestic copy is gone
    w.tokyo.put_object(Bucket=w.dst, Key=f"{w.src}/{corrupt}", Body=b"\x00" * 2001)  # ... overwritten, same size
    _put(w.seoul, w.src, changed, b"\xff\xd8\xff changed after the copy")  # the source moved on
    purgeable = {w.photos[3], w.photos[4], w.history}

    # 1. Before the soak: refused, naming the field, its value and when it is due; nothing deleted.
    before = all_versions(w.seoul, w.src)
    with pytest.raises(purging.PurgeNotDue) as refused:
        purging.purge(rt.policy, rt.ledger, rt.stores_for, dry_run=False)
    assert "purge.soak_hours is 24" in str(refused.value) and "the purge is due at" in str(refused.value)
    with pytest.raises(purging.PurgeNotDue):  # the DAG's plan refuses before anyone is asked to approve
        w.runtime()
    assert all_versions(w.seoul, w.src) == before

    # 2. A dry run (before the soak too): what would be deleted; nothing changes.
    plan = purging.purge(rt.policy, rt.ledger, rt.stores_for, dry_run=True)
    assert all_versions(w.seoul, w.src) == before
    assert w.seoul.list_multipart_uploads(Bucket=w.src).get("Uploads")
    assert plan.status == "plan" and plan.soak["elapsed"] is False
    b = plan.buckets[label]
    assert b.purged_objects == 3 and b.purged_versions == 4 and b.purged_delete_markers == 1
    assert b.uploads_aborted == 1 and b.kept == {"not_attested": 2, "changed_since_copy": 1}
    assert list(purging.purged_rows(rt.ledger, mid)) == []

    # 3. The purge, once the soak has elapsed.
    w.age_cutover(rt, 25)
    result = purging.purge(rt.policy, rt.ledger, rt.stores_for, dry_run=False, run_id="manual__purge_test")
    b = result.buckets[label]
    history_bytes = len(b"\xff\xd8\xff old" * 100) + len(b"\xff\xd8\xff new" * 120)
    expected_bytes = history_bytes + (2003 + 3) + (2003 + 4)
    assert (b.purged_objects, b.purged_versions, b.purged_delete_markers, b.purged_bytes) == (3, 4, 1, expected_bytes)
    assert b.kept == {"not_attested": 2, "changed_since_copy": 1} and result.status == "partial"
    assert b.uploads_aborted == 1 and b.after["in_scope_found"] == 0 and b.after["uploads_open"] == 0
    # The server's own listing, every version: nothing of the purged keys, all the rest untouched.
    now = all_versions(w.seoul, w.src)
    assert not {k for k, _, _ in now} & purgeable
    assert [v for v in before if v[0] not in purgeable] == [v for v in now if v[0] in {x[0] for x in before}]
    assert not w.seoul.list_multipart_uploads(Bucket=w.src).get("Uploads")
    # What stays abroad, and why.
    reasons = b.remaining.by_reason
    assert reasons["not_attested"]["objects"] == 2 and reasons["changed_since_copy"]["objects"] == 1
    assert reasons["changed_since_copy"]["versions"] == 2  # the migrated version and the new one: both kept
    assert reasons["not_media"]["objects"] == 1 and reasons["excluded_prefix"]["objects"] == 1
    assert reasons["no_live_object"] == {"objects": 1, "versions": 1, "delete_markers": 1,
                                         "bytes": len(b"\xff\xd8\xff gone" * 10)}
    examples = {e["uri"]: e for e in b.remaining.examples}
    assert "is not proven now (missing" in examples[f"s3://{w.src}/{missing}"]["detail"]
    assert "is not proven now (changed" in examples[f"s3://{w.src}/{corrupt}"]["detail"]
    assert "the source now holds version" in examples[f"s3://{w.src}/{changed}"]["detail"]
    outside = result.outside[f"s3://{w.src}"]
    assert outside.by_reason["outside_prefixes"]["objects"] == 1
    assert w.seoul.head_object(Bucket=w.src, Key="other/outside.jpg")["ContentLength"] > 0
    # GCS: every live generation deleted by generation; the text file stays.
    g = result.buckets[f"gs://{w.gsrc}"]
    assert (g.purged_objects, g.purged_versions, g.after["in_scope_found"], g.kept) == (3, 3, 0, {})
    assert [bl.name for bl in w.gcs.list_blobs(w.gsrc, versions=True)] == ["video/notes.txt"]
    assert g.remaining.by_reason["not_media"]["objects"] == 1
    # Requests: listings and one DeleteObjects for many keys, never a request per version.
    assert b.requests["delete_objects"] == 1 and b.requests["list_object_versions"] == 2
    assert g.requests["delete generation"] == 3
    # The ledger and the audit chain.
    rows = {r["src_uri"]: r for r in purging.purged_rows(rt.ledger, mid)}
    assert set(rows) == {f"s3://{w.src}/{k}" for k in purgeable} | {f"gs://{w.gsrc}/video/{i}.mp4" for i in range(3)}
    assert rows[f"s3://{w.src}/{w.history}"]["versions"] == 2 and rows[f"s3://{w.src}/{w.history}"]["delete_markers"] == 1
    events = [r["event"] for r in rt.ledger.audit_records(mid)]
    assert {"purge.refused", "purge.plan", "purge.started", "purge.bucket"} <= set(events)
    summary = result.summary()
    json.dumps(summary)  # JSON all through
    print("requests per purged object:", {k: round(v / max(1, b.purged_objects), 3) for k, v in b.requests.items()},
          {k: round(v / max(1, g.purged_objects), 3) for k, v in g.requests.items()})

    # 4. A re-run: already purged (proven absent by the listing), nothing deleted again, no error.
    again = purging.purge(rt.policy, rt.ledger, rt.stores_for, dry_run=False)
    b2 = again.buckets[label]
    assert (b2.purged_objects, b2.already_purged, b2.after["in_scope_found"]) == (0, 3, 0)
    assert again.buckets[f"gs://{w.gsrc}"].already_purged == 3
    assert b2.requests.get("delete_objects", 0) == 0
    assert all_versions(w.seoul, w.src) == now
    # An object written to a purged key afterwards is new data: reported, never deleted.
    _put(w.seoul, w.src, w.photos[3], b"\xff\xd8\xff written after the purge")
    third = purging.purge(rt.policy, rt.ledger, rt.stores_for, dry_run=False)
    b3 = third.buckets[label]
    assert b3.remaining.by_reason["written_after_purge"]["objects"] == 1 and b3.after["in_scope_found"] == 0
    assert w.seoul.head_object(Bucket=w.src, Key=w.photos[3])["ContentLength"] > 0
    # Once purged, a rollback of the cutover would point the application at deleted objects: refused.
    from residency.errors import PolicyError
    from residency.rollback_phase import plan_rollback

    with pytest.raises(PolicyError, match="were purged"):
        plan_rollback({"policy_path": w.policy_path}, {"dag_id": "residency_rollback", "run_id": "manual__rb"},
                      w.credentials)


def test_purge_phases_refuse_without_approval_and_write_the_evidence(tmp_path, admin, make_bucket):
    w = World(tmp_path, admin, make_bucket)
    rt = w.migrate()
    w.age_cutover(rt, 48)
    # A dry run: the plan, nothing deleted.
    before = all_versions(w.seoul, w.src)
    dry = w.runtime({"dag_id": "residency_purge", "run_id": "manual__dry"}, dry_run=True)
    proposal = purge_phase.propose_purge(dry)
    assert "| **6** |" in proposal["markdown"] and f"s3://{w.src}/media/" in proposal["markdown"]
    purge_phase.purge(dry)
    report = purge_phase.write_evidence(dry, {"dag_id": "residency_purge", "run_id": "manual__dry"})
    assert report["verdict"] == "PLAN" and report["purged_objects"] == 6
    assert purge_phase.run_note(report)[1] is True
    assert all_versions(w.seoul, w.src) == before

    # No approval: refused, nothing deleted; the evidence says NOT_PURGED.
    real = w.runtime()
    purge_phase.propose_purge(real)
    with pytest.raises(pipeline.ApprovalMissing):
        purge_phase.purge(real)
    report = purge_phase.write_evidence(real, RUN)
    assert report["verdict"] == "NOT_PURGED" and all_versions(w.seoul, w.src) == before

    # Approved: purged, proven, the evidence says PURGED.
    rt2 = w.runtime({"dag_id": "residency_purge", "run_id": "manual__approved"})
    pipeline.record_approval(rt2, "purge", APPROVE)
    done = purge_phase.purge(rt2)
    assert done["status"] == "purged" and done["purged_objects"] == 6 and done["in_scope_found_after"] == 0
    report = purge_phase.write_evidence(rt2, {"dag_id": "residency_purge", "run_id": "manual__approved"})
    ev = json.loads(Path(report["evidence_json"]).read_text())
    assert ev["verdict"] == "PURGED" and ev["problems"] == [] and ev["audit_log"]["verified"]
    assert ev["buckets"][f"s3://{w.src}/media/"]["purged_delete_markers"] == 1
    assert {r["reason"] for r in ev["remaining_abroad"]} == {"not_media", "excluded_prefix", "no_live_object",
                                                               "outside_prefixes"}
    assert ev["purged_by_this_migration"][f"s3://{w.src}"]["objects"] == 6
    assert "PURGED" in Path(report["evidence_html"]).read_text()
    note, ok = purge_phase.run_note(report)
    assert ok and note.startswith("PURGED: 6 object(s)")
