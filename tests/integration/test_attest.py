"""States that must never read as COMPLETE, run through the pipeline phases on the real emulators.

Each test runs the phases as the DAG does (plan, preflight, inventory, copy,
verify, recheck, cutover, revoke, attest, evidence) against moto server (S3, with
IAM enforcement) and fake-gcs-server over HTTP, with a SQLite application
database, then breaks the estate the way an adversarial auditor would and checks
that the next report is either repaired or INCOMPLETE with the reason:

- a destination object deleted or overwritten between runs (attestation);
- state 1: the destination plan changes (new ``key_template``);
- state 2: the source is overwritten after verify and before cutover;
- state 3: listed objects the inventory cannot read (an IAM deny on a prefix);
- new media arriving at the source after the inventory;
- state 8: nothing in scope (a typo in a prefix);
- state 9: ``transfer.sha256`` never weakens verification;
- state 11: destination keys over 1,024 bytes fail at inventory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from residency import checksums, pipeline
from residency.clients import AwsCredentials
from residency.stores.s3 import S3Store

SEOUL, TOKYO = "ap-northeast-2", "ap-northeast-1"
RUN = {"dag_id": "residency_migration", "run_id": "manual__test"}


def _put(client: Any, bucket: str, key: str, body: bytes, content_type: str = "image/jpeg", crc: bool = True) -> None:
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body, "ContentType": content_type}
    if crc:  # a modern upload: the server keeps a full-object CRC32C
        kwargs.update(ChecksumAlgorithm="CRC32C", ChecksumCRC32C=checksums.hex_to_b64(checksums.crc32c_hex(body)))
    client.put_object(**kwargs)


class Estate:
    """A small Seoul -> Tokyo estate on moto, a policy file and an application database."""

    def __init__(self, tmp_path: Path, admin: AwsCredentials, make_bucket: Any, *, versioned: bool = True,
                 objects: int = 6, **policy_extra: Any) -> None:
        self.tmp = tmp_path
        self.admin = admin
        self.creds = dataclasses.replace(admin, validates_upload_checksums=False)  # moto echoes client checksums
        self.src = make_bucket(SEOUL, versioned=versioned, prefix="seoul")
        self.dst = make_bucket(TOKYO, prefix="tokyo")
        self.seoul = admin.client("s3", SEOUL, request_checksum_calculation="when_required")
        self.tokyo = admin.client("s3", TOKYO, request_checksum_calculation="when_required")
        self.keys = [f"photos/{i:03d}.jpg" for i in range(objects)]
        for i, key in enumerate(self.keys):
            _put(self.seoul, self.src, key, b"\xff\xd8\xff" + bytes([i]) * (1000 + i))
        _put(self.seoul, self.src, "logs/app.log", b"log line\n", content_type="text/plain")
        self.app_url = f"sqlite:///{tmp_path / 'app.db'}"
        engine = sa.create_engine(self.app_url)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE photos (id INTEGER PRIMARY KEY, url TEXT)")
            if self.keys:
                conn.execute(sa.text("INSERT INTO photos (id, url) VALUES (:i, :u)"),
                             [{"i": i, "u": f"s3://{self.src}/{k}"} for i, k in enumerate(self.keys)])
        engine.dispose()
        self.doc: dict[str, Any] = {
            "migration_id": f"attest-{self.src}",
            "home_jurisdiction": "JP",
            "control_dir": str(tmp_path / "control"),
            "sources": [{"uri": f"s3://{self.src}", "conn_id": "aws"}],
            "destinations": {"s3": {"uri": f"s3://{self.dst}", "conn_id": "aws"}},
            "transfer": {"shard_size": 4, "workers": 4},
            "references": {"database_url": self.app_url, "columns": [{"table": "photos", "key": "id", "column": "url"}]},
        }
        self.doc.update(policy_extra)
        self.write_policy()
        self.decisions: dict[str, str] = {}  # step -> "Approve" | "Reject"
        self.proposals: dict[str, Any] = {}

    def approval(self, step: str) -> dict[str, Any]:
        """What Airflow's human-in-the-loop response would carry (the test plays the approver)."""
        option = self.decisions.get(step, "Approve")
        return {"chosen_options": [option], "responded_by_user": {"id": "test-approver", "name": "test-approver"},
                "responded_at": "2026-11-22T00:00:00+00:00", "params_input": {"comment": f"{option} in a test"}}

    def write_policy(self) -> None:
        (self.tmp / "policy.yaml").write_text(yaml.safe_dump(self.doc))

    def credentials(self, conn_id: str) -> AwsCredentials:
        return self.creds

    def run(self, *, stop_before: str | None = None, between: dict[str, Any] | None = None) -> dict[str, Any]:
        """The DAG's phases in order; ``between[phase]()`` runs just before ``phase``."""
        between = between or {}
        plan = pipeline.plan_run({"policy_path": str(self.tmp / "policy.yaml"),
                                  "evidence_dir": str(self.tmp / "evidence")}, RUN, self.credentials)
        rt = pipeline.Runtime(plan, self.credentials)
        placements = pipeline.preflight(rt)["placements"]

        def phase(name: str, fn: Any, *args: Any) -> Any:
            if name in between:
                between[name]()
            if stop_before == name:
                raise _Stop
            return fn(*args)

        try:
            shards = phase("inventory", pipeline.run_inventory, rt, placements)["shards"]
            for shard in shards:
                phase("copy", pipeline.copy_shard, rt, shard)
            for shard in shards:
                phase("verify", pipeline.verify_shard, rt, shard)
            phase("recheck", pipeline.recheck, rt)
            self.proposals["cutover"] = phase("propose_cutover", pipeline.propose_cutover, rt)
            phase("approve_cutover", pipeline.record_approval, rt, "cutover", self.approval("cutover"))
            phase("cutover", pipeline.cutover, rt)
            self.proposals["revoke"] = phase("propose_revoke", pipeline.propose_revoke, rt)
            phase("approve_revoke", pipeline.record_approval, rt, "revoke", self.approval("revoke"))
            phase("revoke", pipeline.revoke, rt)
            phase("attest", pipeline.attest_phase, rt)
        except _Stop:
            return {}
        return phase("evidence", pipeline.write_evidence, rt, RUN)

    def evidence(self) -> dict[str, Any]:
        return json.loads((self.tmp / "evidence" / "evidence.json").read_text())

    def urls(self) -> dict[int, str]:
        engine = sa.create_engine(self.app_url)
        with engine.connect() as conn:
            rows = dict(conn.execute(sa.text("SELECT id, url FROM photos")).all())
        engine.dispose()
        return rows

    def body(self, bucket: str, key: str, region: str = TOKYO) -> bytes:
        client = self.tokyo if region == TOKYO else self.seoul
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()


class _Stop(Exception):
    pass


def broken(ev: dict[str, Any]) -> list[str]:
    return [r["id"] for r in ev["complete_rules"] if not r["holds"]]


@pytest.fixture
def estate(tmp_path, admin, make_bucket) -> Estate:
    return Estate(tmp_path, admin, make_bucket)


def test_destination_deleted_between_runs_is_found_and_repaired(estate):
    first = estate.run()
    assert first["complete"] is True, first["problems"]
    ev = estate.evidence()
    assert ev["attestation"]["attested"] == len(estate.keys)
    assert ev["reconciliation"]["attested"]["objects"] == len(estate.keys)

    victim = f"{estate.src}/{estate.keys[2]}"
    estate.tokyo.delete_object(Bucket=estate.dst, Key=victim)

    second = estate.run()
    assert second["complete"] is True, second["problems"]
    recheck = pipeline.Runtime(pipeline.plan_run({"policy_path": str(estate.tmp / "policy.yaml")}, RUN,
                                                 estate.credentials), estate.credentials)
    phase = recheck.ledger.latest_phase(recheck.policy.migration_id, "recheck")["result"]
    assert phase["dst_missing"] == 1 and phase["repaired"] == 1
    assert estate.body(estate.dst, victim) == estate.body(estate.src, estate.keys[2], SEOUL)


def test_destination_overwritten_by_someone_else_is_never_carried_forward(estate):
    assert estate.run()["complete"] is True
    victim = f"{estate.src}/{estate.keys[1]}"
    estate.tokyo.put_object(Bucket=estate.dst, Key=victim, Body=b"someone else's bytes", ContentType="image/jpeg")

    report = estate.run()
    ev = estate.evidence()
    assert report["complete"] is False
    assert "migrated" in broken(ev)
    failures = ev["sources"][0]["failures"]
    assert [f["src_uri"] for f in failures] == [f"s3://{estate.src}/{estate.keys[1]}"]
    assert "not written by this migration" in failures[0]["reason"]
    assert estate.body(estate.dst, victim) == b"someone else's bytes"  # never overwritten silently


def test_source_overwritten_after_verify_is_recopied_before_cutover(estate):
    """State 2."""
    key = estate.keys[0]
    new = b"\xff\xd8\xff" + b"NEW" * 700

    def overwrite() -> None:
        _put(estate.seoul, estate.src, key, new)

    report = estate.run(between={"recheck": overwrite})
    assert report["complete"] is True, report["problems"]
    rt = pipeline.Runtime(pipeline.plan_run({"policy_path": str(estate.tmp / "policy.yaml")}, RUN,
                                            estate.credentials), estate.credentials)
    recheck = rt.ledger.latest_phase(rt.policy.migration_id, "recheck")["result"]
    assert recheck["src_changed"] == 1 and recheck["repaired"] == 1
    # The reference points at a copy of the new bytes, never at the stale copy.
    assert estate.urls()[0] == f"s3://{estate.dst}/{estate.src}/{key}"
    assert estate.body(estate.dst, f"{estate.src}/{key}") == new


def test_source_overwritten_after_cutover_makes_the_report_repair_it(estate):
    key = estate.keys[3]
    new = b"\xff\xd8\xff" + b"LATER" * 300
    report = estate.run(between={"attest": lambda: _put(estate.seoul, estate.src, key, new)})
    assert report["complete"] is True, report["problems"]
    ev = estate.evidence()
    assert ev["attestation"]["src_changed"] == 1 and ev["attestation"]["repaired"] == 1
    assert estate.body(estate.dst, f"{estate.src}/{key}") == new


def test_plan_change_recopies_and_repoints(estate):
    """State 1."""
    assert estate.run()["complete"] is True
    estate.doc["destinations"]["s3"]["key_template"] = "v2/{src_bucket}/{key}"
    estate.write_policy()
    report = estate.run()
    assert report["complete"] is True, report["problems"]
    ev = estate.evidence()
    assert ev["references"]["cutover"]["repointed"] == len(estate.keys)
    for i, key in enumerate(estate.keys):
        assert estate.urls()[i] == f"s3://{estate.dst}/v2/{estate.src}/{key}"
        assert estate.body(estate.dst, f"v2/{estate.src}/{key}") == estate.body(estate.src, key, SEOUL)


def test_new_media_after_the_inventory_is_reported_then_migrated(estate):
    late = "photos/late-upload.jpg"
    report = estate.run(between={"attest": lambda: _put(estate.seoul, estate.src, late, b"\xff\xd8\xffLATE")})
    assert report["complete"] is False
    ev = estate.evidence()
    assert broken(ev) == ["attested"]
    assert ev["sources"][0]["arrived_since_inventory"] == 1
    assert late in " ".join(ev["problems"])
    assert estate.run()["complete"] is True  # the next run's inventory takes it


@pytest.mark.parametrize("name", ["secret.jpg", "secret"])
def test_unreadable_objects_block(tmp_path, admin, make_bucket, name):
    """State 3: listed but unreadable (an IAM deny on a prefix) is a failure, and the listing balances.

    ``secret`` has no extension: only its content type can decide, so inventory
    HEADs it and finds it unreadable. ``secret.jpg`` is selected by its name from
    the listing alone, so it is in scope, never silently dropped: on AWS the deny
    meets it at the CopyObject (which needs s3:GetObject on the source) and it fails
    there; moto does not check the source permission of a CopyObject and copies it,
    so here it is migrated and proven like any other object."""
    estate = Estate(tmp_path, admin, make_bucket)
    _put(estate.seoul, estate.src, f"private/{name}", b"\xff\xd8\xffsecret")
    iam = admin.client("iam", "us-east-1")
    user = f"reader-{os.getpid()}-{estate.src}"[:64]
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{estate.src}/private/*"},
    ]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    estate.creds = dataclasses.replace(estate.creds, access_key_id=key["AccessKeyId"],
                                       secret_access_key=key["SecretAccessKey"])
    report = estate.run()
    ev = estate.evidence()
    src = ev["sources"][0]
    uri = f"s3://{estate.src}/private/{name}"
    assert report["complete"] is ("." in name)
    if "." not in name:
        assert broken(ev) == ["inventory"]
        assert src["counts"]["unreadable"]["objects"] == 1
        assert src["unreadable"][0]["src_uri"] == uri
        assert "PermissionDenied" in src["unreadable"][0]["reason"]
    else:
        assert src["counts"]["unreadable"]["objects"] == 0
        assert src["counts"]["in_scope"]["objects"] == len(estate.keys) + 1
    listed = src["counts"]["inventoried"]["objects"]
    assert listed == len(estate.keys) + 2
    assert listed == sum(src["counts"][k]["objects"] for k in ("in_scope", "out_of_scope", "unreadable"))


def test_nothing_in_scope_still_runs_to_an_incomplete_report(tmp_path, admin, make_bucket):
    """State 8 (the engine's part; the DAG's trigger rules are in the end-to-end test)."""
    estate = Estate(tmp_path, admin, make_bucket)
    estate.doc["sources"][0]["uri"] = f"s3://{estate.src}/fotos/"  # a typo
    estate.write_policy()
    report = estate.run()
    ev = estate.evidence()
    assert report["complete"] is False
    assert "scope" in broken(ev)
    assert "nothing is in scope" in " ".join(ev["problems"])


def test_destination_key_over_1024_bytes_fails_at_inventory(tmp_path, admin, make_bucket):
    """State 11."""
    estate = Estate(tmp_path, admin, make_bucket, objects=2)
    long_key = "photos/" + "長" * 337 + ".jpg"  # 1,022 bytes at the source, over 1,024 with the bucket prefix
    assert len(long_key.encode()) <= 1024 < len(f"{estate.src}/{long_key}".encode())
    _put(estate.seoul, estate.src, long_key, b"\xff\xd8\xfflong")
    report = estate.run()
    ev = estate.evidence()
    assert report["complete"] is False and broken(ev) == ["migrated"]
    failure = ev["sources"][0]["failures"][0]
    assert failure["src_uri"] == f"s3://{estate.src}/{long_key}"
    assert "over the 1024-byte limit" in failure["reason"] and failure["reason"].startswith("refused at inventory")
    store = S3Store(estate.admin.s3_client_factory())
    assert all(len(r.key.encode()) <= 1024 for r in store.list_objects(estate.dst))


def test_sha256_of_unproven_bytes_is_never_evidence(tmp_path, admin, make_bucket, fake_gcs, make_gcs_bucket):
    """State 9: a source with no server checksum, streamed to GCS with sha256: true, is proven by reading
    the source again, not by a hash of the very bytes that were written."""
    estate = Estate(tmp_path, admin, make_bucket, versioned=False, objects=0)
    gdst = make_gcs_bucket("asia-northeast1")
    body = os.urandom(6 * 1024 * 1024)
    upload = estate.seoul.create_multipart_upload(Bucket=estate.src, Key="video/legacy.mp4", ContentType="video/mp4")
    parts = []
    for n, start in enumerate(range(0, len(body), 5 * 1024 * 1024), start=1):
        resp = estate.seoul.upload_part(Bucket=estate.src, Key="video/legacy.mp4", UploadId=upload["UploadId"],
                                        PartNumber=n, Body=body[start:start + 5 * 1024 * 1024])
        parts.append({"PartNumber": n, "ETag": resp["ETag"]})
    estate.seoul.complete_multipart_upload(Bucket=estate.src, Key="video/legacy.mp4", UploadId=upload["UploadId"],
                                           MultipartUpload={"Parts": parts})
    gcs = fake_gcs.credentials("gcs")
    estate.doc["sources"][0]["to"] = "gs"
    estate.doc["destinations"] = {"gs": {"uri": f"gs://{gdst}", "conn_id": "gcs", "location": "asia-northeast1"}}
    estate.doc["transfer"]["sha256"] = True
    estate.doc.pop("references")
    estate.write_policy()
    estate.credentials = lambda conn_id: gcs if conn_id == "gcs" else estate.creds  # type: ignore[method-assign]

    report = estate.run()
    assert report["complete"] is True, report["problems"]
    rt = pipeline.Runtime(pipeline.plan_run({"policy_path": str(estate.tmp / "policy.yaml")}, RUN,
                                            estate.credentials), estate.credentials)
    row = rt.ledger.get_object(rt.policy.migration_id, f"s3://{estate.src}/video/legacy.mp4")
    assert row["src_checksums"] == {}  # the streamed bytes' sha256 was not kept as the source's
    assert (row["verify_algorithm"], row["verify_method"]) == ("sha256", "read_back_both")
    assert "reading the pinned source version again" in row["proof"]
    import hashlib

    assert row["dst_checksums"]["sha256"] == hashlib.sha256(body).hexdigest()


def test_objects_verified_by_an_older_version_are_reproven_by_head_then_by_listing(estate):
    """Rows without the verified destination ETag (an older ledger): a HEAD re-proves them by a checksum
    the server computes itself (moto echoes client CRC32Cs, so only its MD5 ETag counts), and records
    the ETag, so that the next attestation needs only the listing."""
    assert estate.run()["complete"] is True
    rt = pipeline.Runtime(pipeline.plan_run({"policy_path": str(estate.tmp / "policy.yaml")}, RUN,
                                            estate.credentials), estate.credentials)
    mid = rt.policy.migration_id
    for row in rt.ledger.iter_objects(mid):
        rt.ledger.update_object(mid, row["src_uri"], dst_etag=None, dst_version=None)
    first = pipeline.attest_phase(rt)
    methods = first["sources"][f"s3://{estate.src}"]["methods"]
    assert methods == {"head_checksum": len(estate.keys)}
    assert first["sources"][f"s3://{estate.src}"]["requests"]["destination HEAD"] == len(estate.keys)
    second = pipeline.attest_phase(rt)
    assert second["sources"][f"s3://{estate.src}"]["methods"] == {"listing_etag": len(estate.keys)}
    assert "destination HEAD" not in second["sources"][f"s3://{estate.src}"]["requests"]


@pytest.mark.parametrize("status, kind", [
    pytest.param(503, "TransientError", id="timeouts and 503s until the retries give up"),
    pytest.param(404, "ObjectNotFound", id="404: listed, then gone before it could be read"),
])
def test_objects_listed_but_unreadable_through_faults_are_counted_apart(tmp_path, admin, make_bucket, moto_server,
                                                                        status, kind):
    """State 3 (the other causes): a HEAD that keeps failing makes the object unreadable, never skipped.
    (A name without an extension is what inventory has to HEAD: the listing cannot decide it.)"""
    from residency import inventory
    from residency.ledger import Ledger
    from residency.localcloud.faultproxy import FaultProxy, FaultRules
    from residency.policy import parse_policy
    from residency.retry import RetryPolicy

    estate = Estate(tmp_path, admin, make_bucket, objects=3)
    _put(estate.seoul, estate.src, "photos/flaky", b"\xff\xd8\xffflaky")
    policy = parse_policy(estate.doc, path=str(tmp_path / "policy.yaml"))
    ledger = Ledger(f"sqlite:///{tmp_path / 'inv.db'}")
    ledger.create_schema()
    rules = FaultRules(error_rate=1.0, error_statuses=(status,), methods=("HEAD",), path_pattern=r"flaky")
    with FaultProxy(moto_server.endpoint_url) as proxy:
        proxy.set_rules(rules)
        via = dataclasses.replace(estate.creds, endpoint_url=proxy.endpoint_url)
        store = S3Store(via.s3_client_factory(), service="proxy", validates_upload_checksums=False,
                        retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02, deadline=10))
        result = inventory.run_inventory(policy, ledger, lambda source: store)
    counts = result.by_bucket[f"s3://{estate.src}"]
    assert (counts["listed"], counts["in_scope"], counts["out_of_scope"], counts["unreadable"]) == (5, 3, 1, 1)
    (unreadable,) = ledger.get_unreadable(policy.migration_id)
    assert unreadable["src_uri"] == f"s3://{estate.src}/photos/flaky" and unreadable["reason"].startswith(kind)
    assert ledger.get_object(policy.migration_id, unreadable["src_uri"]) is None


def test_preflight_refuses_a_reference_key_that_is_not_unique_before_any_copy(estate):
    """State 7, through the pipeline: nothing is inventoried or copied."""
    engine = sa.create_engine(estate.app_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE albums (owner INTEGER, cover TEXT)")
        conn.exec_driver_sql(f"INSERT INTO albums VALUES (1, 's3://{estate.src}/photos/000.jpg'), (1, 'x'), (NULL, 'y')")
    engine.dispose()
    estate.doc["references"]["columns"].append({"table": "albums", "key": "owner", "column": "cover"})
    estate.write_policy()
    from residency.errors import JurisdictionError

    with pytest.raises(JurisdictionError) as refused:
        estate.run()
    assert "references.columns[1].key = 'owner'" in str(refused.value) and "is not unique" in str(refused.value)
    assert "NULL key" in str(refused.value)
    assert list(S3Store(estate.admin.s3_client_factory()).list_objects(estate.dst)) == []


def test_application_database_through_a_connection(estate):
    """The policy names the application database by connection id; the password stays in the connection."""
    from residency.clients import DatabaseCredentials

    estate.doc["references"] = {"conn_id": "app_db", "columns": estate.doc["references"]["columns"]}
    estate.write_policy()
    aws = estate.credentials
    estate.credentials = lambda conn_id: (  # type: ignore[method-assign]
        DatabaseCredentials("app_db", estate.app_url) if conn_id == "app_db" else aws(conn_id))
    report = estate.run()
    assert report["complete"] is True, report["problems"]
    assert estate.urls()[0] == f"s3://{estate.dst}/{estate.src}/{estate.keys[0]}"



def test_proposals_say_what_approving_will_do_and_a_rejection_changes_nothing(estate):
    estate.decisions["cutover"] = "Reject"
    from residency.pipeline import ApprovalMissing

    with pytest.raises(ApprovalMissing, match="needs an approval first \\(rejected\\): nothing was changed"):
        estate.run()
    proposal = estate.proposals["cutover"]
    assert proposal["references"]["rewritten"] == len(estate.keys)
    assert proposal["routes"] == {"s3->s3": [len(estate.keys), sum(1000 + i + 3 for i in range(len(estate.keys)))]}
    assert f"{len(estate.keys)} would be rewritten" in proposal["markdown"] and "| s3->s3 |" in proposal["markdown"]
    assert estate.urls()[0] == f"s3://{estate.src}/{estate.keys[0]}"  # nothing was rewritten

    # What the DAG does after a rejection: the later steps are skipped, the evidence says why.
    rt = pipeline.Runtime(pipeline.plan_run({"policy_path": str(estate.tmp / "policy.yaml"),
                                             "evidence_dir": str(estate.tmp / "evidence")}, RUN, estate.credentials),
                          estate.credentials)
    pipeline.attest_phase(rt)
    report = pipeline.write_evidence(rt, RUN)
    ev = estate.evidence()
    assert report["complete"] is False
    assert ev["approvals"] == [{"step": "cutover", "decision": "rejected", "who": "test-approver",
                                "when": "2026-11-22T00:00:00+00:00", "comment": "Reject in a test"}]
    assert any("The cutover was rejected by test-approver" in p for p in ev["problems"])
    events = [r["event"] for r in rt.ledger.audit_records(rt.policy.migration_id)]
    assert "approval.cutover" in events and "cutover.done" not in events


def test_a_dry_run_writes_a_plan_and_asks_no_approval(estate):
    plan = pipeline.plan_run({"policy_path": str(estate.tmp / "policy.yaml"), "dry_run": True,
                              "evidence_dir": str(estate.tmp / "plan")}, RUN, estate.credentials)
    rt = pipeline.Runtime(plan, estate.credentials)
    placements = pipeline.preflight(rt)["placements"]
    for shard in pipeline.run_inventory(rt, placements)["shards"]:
        pipeline.copy_shard(rt, shard)
        pipeline.verify_shard(rt, shard)
    pipeline.recheck(rt)
    pipeline.cutover(rt)  # no approval needed: nothing changes
    pipeline.revoke(rt)
    pipeline.attest_phase(rt)
    report = pipeline.write_evidence(rt, RUN)
    assert report["kind"] == "plan" and report["objects_to_copy"] == len(estate.keys)
    doc = json.loads((estate.tmp / "plan" / "plan.json").read_text())
    assert doc["kind"] == "plan" and "complete" not in doc and "proves nothing" in doc["statement"]
    assert doc["routes"]["s3->s3"]["server_side_objects"] == len(estate.keys)
    assert doc["references"]["would_rewrite"] == len(estate.keys) and doc["references"]["would_stay"] == 0
    assert doc["requests_estimate"]["per_object"] > 0 and doc["bytes_on_the_wire"]["through_the_worker"] == 0
    page = (estate.tmp / "plan" / "plan.html").read_text()
    assert "PLAN (dry run)" in page and "COMPLETE" not in page
    assert list(S3Store(estate.admin.s3_client_factory()).list_objects(estate.dst)) == []
    assert estate.urls()[0] == f"s3://{estate.src}/{estate.keys[0]}"
