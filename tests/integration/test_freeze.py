"""The cutover write freeze against a moto server over HTTP (auth enforced) and fake-gcs-server.

What this moto server (5.2) enforces, checked with it before these tests were
written, and so what they may claim: a bucket-policy ``Deny`` is applied to
object requests by HTTP method only (PUT as ``s3:PutObject``, DELETE as
``s3:DeleteObject``, GET as ``s3:GetObject``), answered with a bare ``403``
(no ``AccessDenied`` code); object reads and listings stay allowed; the
bucket-policy calls themselves are checked against identity policies only.
The finer actions of the statement (tagging, ACLs, DeleteObjectVersion,
replication) are not evaluated by moto as such, so no test claims them.
A server that ignores the deny (older moto, some S3-compatible servers) is
simulated where named, to show that the proof then reads "not proven".
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError

from residency.clients import AwsCredentials
from residency.freeze import (
    FROZEN_ACTIONS,
    GCS_WHY,
    NOT_PROVEN_ACCEPTED,
    PROBE_FOLDER,
    FreezeFailed,
    FreezePermissionDenied,
    freeze,
    freeze_sid,
    judge_probe,
    unfreeze,
)
from residency.ledger import Ledger
from residency.policy import Cutover, Policy, Source, parse_policy
from residency.stores.gcs import GcsStore
from residency.stores.s3 import S3Store
from residency.uris import ObjectRef

SEOUL = "ap-northeast-2"
#: An unrelated statement the bucket owner had before the migration; it must survive untouched.
APP_STATEMENT = {
    "Sid": "AppReadOnly", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
    "Action": "s3:GetObject", "Resource": "arn:aws:s3:::{bucket}/public/*",
}


def app_policy(bucket: str) -> str:
    statement = json.loads(json.dumps(APP_STATEMENT).replace("{bucket}", bucket))
    # Indented on purpose: unfreeze must give back this very text, not a re-serialization.
    return json.dumps({"Version": "2012-10-17", "Id": "app-policy", "Statement": [statement]}, indent=2)


def make_policy(ledger: Ledger, *uris: str, freeze_on: bool = True) -> Policy:
    return parse_policy({
        "migration_id": f"test-freeze-{uuid.uuid4().hex[:8]}",
        "home_jurisdiction": "JP",
        "sources": [{"uri": uri, "conn_id": "aws_seoul" if uri.startswith("s3://") else "gcs_seoul"} for uri in uris],
        "destinations": {
            "s3": {"uri": "s3://tokyo-line-media", "conn_id": "aws_tokyo"},
            "gs": {"uri": "gs://tokyo-line-media-gcs", "conn_id": "gcs_tokyo"},
        },
        "cutover": {"freeze": freeze_on},
        "ledger_url": ledger.url,
    })


def s3_store(creds: AwsCredentials, client_for_region: Callable[[str], Any] | None = None) -> S3Store:
    return S3Store(client_for_region or creds.s3_client_factory(), default_region=SEOUL,
                   service=creds.endpoint_url or "aws", validates_upload_checksums=False)


@pytest.fixture
def stores(admin: AwsCredentials, gcs_admin, fake_gcs) -> Callable[[Source], Any]:
    s3 = s3_store(admin)
    gcs = GcsStore(gcs_admin.client(), service=fake_gcs.endpoint_url)
    return lambda source: s3 if source.ref.provider == "s3" else gcs


@pytest.fixture
def bucket(make_bucket, admin: AwsCredentials) -> str:
    name = make_bucket(SEOUL, prefix="frz")
    client = admin.client("s3", SEOUL)
    client.put_object(Bucket=name, Key="users/1/a.jpg", Body=b"jpeg bytes")
    client.put_object(Bucket=name, Key="public/logo.png", Body=b"png bytes")
    return name


def server_policy(admin: AwsCredentials, bucket: str) -> str | None:
    try:
        return admin.client("s3", SEOUL).get_bucket_policy(Bucket=bucket)["Policy"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchBucketPolicy"
        return None


def try_put(admin: AwsCredentials, bucket: str, key: str) -> str | None:
    """None when the write was accepted, else the error code."""
    try:
        admin.client("s3", SEOUL).put_object(Bucket=bucket, Key=key, Body=b"new")
        return None
    except ClientError as exc:
        return str(exc.response["Error"].get("Code"))


def audit_events(ledger: Ledger, policy: Policy) -> list[tuple[str, dict[str, Any]]]:
    return [(r["event"], json.loads(r["data"])) for r in ledger.audit_records(policy.migration_id)]


def keys(admin: AwsCredentials, bucket: str) -> list[str]:
    resp = admin.client("s3", SEOUL).list_object_versions(Bucket=bucket)
    return sorted(v["Key"] for v in resp.get("Versions", []) + resp.get("DeleteMarkers", []))


# -- naming and judging: tables ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param("line-2021", "line.2021", id="dash vs dot"),
        pytest.param("line_2021", "line2021", id="underscore vs none"),
    ],
)
def test_sids_are_alphanumeric_and_never_shared_by_ids_differing_in_punctuation(a: str, b: str) -> None:
    assert freeze_sid(a).isalnum() and freeze_sid(b).isalnum()
    assert freeze_sid(a).startswith("ResidencyFreezeline2021")
    assert freeze_sid(a) != freeze_sid(b)
    assert freeze_sid(a) == freeze_sid(a)


PROBE = {"action": "s3:PutObject", "uri": "s3://b/.residency-freeze-probe/x", "at": "T"}


@pytest.mark.parametrize(
    ("probe", "status", "says"),
    [
        pytest.param(dict(PROBE, allowed=False, denied=True, error_code="AccessDenied",
                          error_message="... with an explicit deny in a resource-based policy"),
                     "proven", "refused with AccessDenied", id="AWS explicit deny"),
        pytest.param(dict(PROBE, allowed=False, denied=True, error_code="403", error_message="Forbidden"),
                     "proven", "refused with 403", id="moto bare 403"),
        pytest.param(dict(PROBE, allowed=True, denied=False, error_code=None, deleted=True),
                     "not_proven", NOT_PROVEN_ACCEPTED, id="write accepted"),
        pytest.param(dict(PROBE, allowed=True, denied=False, error_code=None, deleted=False),
                     "not_proven", "could not be deleted", id="write accepted, probe left behind"),
        pytest.param(dict(PROBE, allowed=False, denied=True, error_code="AccessDenied",
                          error_message="... because no identity-based policy allows the s3:PutObject action"),
                     "not_proven", "may not write at all", id="credentials cannot write anyway"),
        pytest.param(dict(PROBE, allowed=False, denied=False, error_code="SlowDown"),
                     "not_proven", "neither an acceptance nor a refusal", id="throttled"),
    ],
)
def test_judge_probe(probe: dict[str, Any], status: str, says: str) -> None:
    got_status, reason = judge_probe(probe)
    assert got_status == status
    assert says in reason


# -- S3 over moto ----------------------------------------------------------------------------

def test_freeze_adds_the_statement_keeps_the_rest_and_unfreeze_restores_the_exact_text(
    admin: AwsCredentials, bucket: str, ledger: Ledger, stores
) -> None:
    original = app_policy(bucket)
    admin.client("s3", SEOUL).put_bucket_policy(Bucket=bucket, Policy=original)
    policy = make_policy(ledger, f"s3://{bucket}")
    sid = freeze_sid(policy.migration_id)

    result = freeze(policy, ledger, stores)

    [entry] = result.buckets
    assert (entry.bucket_uri, entry.provider, entry.action, entry.sid) == (f"s3://{bucket}", "s3", "frozen", sid)
    assert entry.before == original  # the snapshot is the server's text before the change
    assert entry.after == server_policy(admin, bucket)  # ... and the text read back after it
    after = json.loads(entry.after)
    assert after["Id"] == "app-policy"
    assert after["Statement"][0] == json.loads(original)["Statement"][0]  # unrelated statement untouched
    [ours] = [s for s in after["Statement"] if s.get("Sid") == sid]
    assert (ours["Effect"], ours["Principal"], ours["Resource"]) == ("Deny", "*", f"arn:aws:s3:::{bucket}/*")
    assert set(ours["Action"]) == set(FROZEN_ACTIONS)
    assert not {"s3:GetObject", "s3:ListBucket", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"} & set(ours["Action"])
    assert entry.proof is not None and entry.proof["statement_in_place"] is True

    # The evidence: one audit record per bucket with both snapshots, and the phase result.
    [(event, data)] = [e for e in audit_events(ledger, policy) if e[0] == "freeze.bucket"]
    assert (data["action"], data["before"], data["after"], data["sid"]) == ("frozen", original, entry.after, sid)
    phase = ledger.latest_phase(policy.migration_id, "freeze")
    assert phase is not None and phase["result"]["counts"] == {"frozen": 1}
    assert phase["result"]["buckets"][0]["before"] == original

    # Re-running says already frozen and changes nothing.
    again = freeze(policy, ledger, stores)
    assert [b.action for b in again.buckets] == ["already_frozen"]
    assert server_policy(admin, bucket) == entry.after

    undone = unfreeze(policy, ledger, stores)
    [back] = undone.buckets
    assert back.action == "unfrozen"
    assert back.before == entry.after
    assert json.loads(server_policy(admin, bucket)) == json.loads(original)
    assert server_policy(admin, bucket) == original  # nothing else changed: the very text goes back
    assert back.after == original
    assert back.proof is not None and back.proof["status"] == "proven" and back.proof["statement_in_place"] is False
    assert [b.action for b in unfreeze(policy, ledger, stores).buckets] == ["already_unfrozen"]
    assert server_policy(admin, bucket) == original
    assert [e for e, _ in audit_events(ledger, policy)].count("unfreeze.bucket") == 2


def test_probe_outcome_is_recorded_and_reads_still_work(
    admin: AwsCredentials, bucket: str, ledger: Ledger, stores
) -> None:
    policy = make_policy(ledger, f"s3://{bucket}")
    [entry] = freeze(policy, ledger, stores).buckets
    probe = entry.proof["probe"]
    assert probe["action"] == "s3:PutObject"
    assert probe["uri"].startswith(f"s3://{bucket}/{PROBE_FOLDER}")
    assert probe["at"] and entry.proof["read_back_at"]
    store = stores(policy.sources[0])
    ref = ObjectRef("s3", bucket, "users/1/a.jpg")
    if probe["allowed"]:
        # A server that ignores bucket-policy denies: recorded honestly, probe removed at once.
        assert entry.proof["status"] == "not_proven"
        assert entry.proof["reason"].startswith(NOT_PROVEN_ACCEPTED)
        assert probe["deleted"] is True
    else:
        # moto 5.2 enforces the deny on PutObject (a bare 403): the refusal is the proof.
        assert probe["denied"] is True and probe["error_code"] in ("403", "AccessDenied")
        assert entry.proof["status"] == "proven"
        assert try_put(admin, bucket, "users/2/new.jpg") in ("403", "AccessDenied")
    assert not [k for k in keys(admin, bucket) if PROBE_FOLDER in k]
    # The migration's reads are not frozen: listing, HEAD and GET through the store.
    assert [e.ref.key for e in store.list_entries(bucket, "users/")] == ["users/1/a.jpg"]
    assert store.stat(ref).size == len(b"jpeg bytes")
    assert b"".join(store.read(ref)) == b"jpeg bytes"

    unfreeze(policy, ledger, stores)
    assert try_put(admin, bucket, "users/2/new.jpg") is None  # writes are back after the freeze
    assert server_policy(admin, bucket) is None


def test_no_policy_before_means_delete_bucket_policy_after(
    admin: AwsCredentials, bucket: str, ledger: Ledger, stores
) -> None:
    assert server_policy(admin, bucket) is None
    policy = make_policy(ledger, f"s3://{bucket}")
    [entry] = freeze(policy, ledger, stores).buckets
    assert entry.before is None
    assert [s["Sid"] for s in json.loads(entry.after)["Statement"]] == [freeze_sid(policy.migration_id)]

    [back] = unfreeze(policy, ledger, stores).buckets
    assert (back.action, back.after) == ("unfrozen", None)
    assert "deleted the bucket policy" in back.why
    assert server_policy(admin, bucket) is None  # NoSuchBucketPolicy: DeleteBucketPolicy was called


def test_prefix_source_freezes_its_prefix_only(admin: AwsCredentials, bucket: str, ledger: Ledger, stores) -> None:
    policy = make_policy(ledger, f"s3://{bucket}/users/")
    [entry] = freeze(policy, ledger, stores).buckets
    assert entry.resources == (f"arn:aws:s3:::{bucket}/users/*",)
    assert entry.proof["probe"]["uri"].startswith(f"s3://{bucket}/users/{PROBE_FOLDER}")
    if entry.proof["status"] == "proven":  # moto 5.2 matches the deny on the resource
        assert try_put(admin, bucket, "users/3/new.jpg") in ("403", "AccessDenied")
    assert try_put(admin, bucket, "other/new.jpg") is None  # outside the migration's prefix: not frozen
    unfreeze(policy, ledger, stores)


def test_unfreeze_keeps_statements_added_during_the_window(
    admin: AwsCredentials, bucket: str, ledger: Ledger, stores
) -> None:
    original = app_policy(bucket)
    client = admin.client("s3", SEOUL)
    client.put_bucket_policy(Bucket=bucket, Policy=original)
    policy = make_policy(ledger, f"s3://{bucket}")
    [entry] = freeze(policy, ledger, stores).buckets
    during = json.loads(entry.after)
    added = {"Sid": "AddedDuringWindow", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
             "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"}
    during["Statement"].append(added)
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(during))

    [back] = unfreeze(policy, ledger, stores).buckets
    assert back.action == "unfrozen"
    assert json.loads(server_policy(admin, bucket))["Statement"] == [json.loads(original)["Statement"][0], added]


def test_dry_run_changes_nothing(admin: AwsCredentials, bucket: str, ledger: Ledger, stores) -> None:
    original = app_policy(bucket)
    admin.client("s3", SEOUL).put_bucket_policy(Bucket=bucket, Policy=original)
    policy = make_policy(ledger, f"s3://{bucket}")
    sid = freeze_sid(policy.migration_id)

    [dry] = freeze(policy, ledger, stores, dry_run=True).buckets
    assert (dry.action, dry.before, dry.proof) == ("would_freeze", original, None)
    assert [s.get("Sid") for s in json.loads(dry.after)["Statement"]] == ["AppReadOnly", sid]  # what would be written
    assert server_policy(admin, bucket) == original
    assert try_put(admin, bucket, "users/4/new.jpg") is None
    assert list(ledger.audit_records(policy.migration_id)) == []
    assert ledger.latest_phase(policy.migration_id, "freeze") is None

    [frozen] = freeze(policy, ledger, stores).buckets
    [dry_back] = unfreeze(policy, ledger, stores, dry_run=True).buckets
    assert (dry_back.action, dry_back.after) == ("would_unfreeze", original)
    assert server_policy(admin, bucket) == frozen.after  # still frozen
    assert ledger.latest_phase(policy.migration_id, "unfreeze") is None
    unfreeze(policy, ledger, stores)
    assert server_policy(admin, bucket) == original


def test_gcs_source_is_not_frozen_and_the_run_goes_on(
    admin: AwsCredentials, bucket: str, make_gcs_bucket, ledger: Ledger, stores
) -> None:
    gcs_bucket = make_gcs_bucket()
    policy = make_policy(ledger, f"gs://{gcs_bucket}", f"s3://{bucket}")
    result = freeze(policy, ledger, stores)
    gs, s3 = result.buckets
    assert (gs.bucket_uri, gs.provider, gs.action, gs.why) == (f"gs://{gcs_bucket}", "gs", "not_frozen", GCS_WHY)
    assert (gs.before, gs.after, gs.proof) == (None, None, None)
    assert s3.action == "frozen"
    assert result.counts == {"not_frozen": 1, "frozen": 1}
    assert "not_frozen" in [d["action"] for e, d in audit_events(ledger, policy) if e == "freeze.bucket"]
    assert [b.action for b in unfreeze(policy, ledger, stores).buckets] == ["not_frozen", "unfrozen"]


def test_freeze_not_requested_touches_nothing(ledger: Ledger, bucket: str) -> None:
    policy = make_policy(ledger, f"s3://{bucket}", freeze_on=False)

    def no_store(source: Source) -> Any:
        raise AssertionError("no store may be asked for when the freeze is not requested")

    for run in (freeze, unfreeze):
        result = run(policy, ledger, no_store)
        assert (result.requested, result.buckets) == (False, ())
    assert list(ledger.audit_records(policy.migration_id)) == []


def test_unfreeze_lifts_a_freeze_on_record_even_when_the_policy_turned_it_off(
    admin: AwsCredentials, bucket: str, ledger: Ledger, stores
) -> None:
    policy = make_policy(ledger, f"s3://{bucket}")
    freeze(policy, ledger, stores)
    turned_off = dataclasses.replace(policy, cutover=Cutover(freeze=False))
    assert [b.action for b in unfreeze(turned_off, ledger, stores).buckets] == ["unfrozen"]
    assert server_policy(admin, bucket) is None


def test_put_bucket_policy_refused_is_a_permanent_error_naming_bucket_and_permission(
    moto_server, admin: AwsCredentials, bucket: str, ledger: Ledger
) -> None:
    iam = admin.client("iam")
    user = f"reader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Resource": "*",
            "Action": ["s3:GetBucketPolicy", "s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject"],
        }],
    }))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    reader = moto_server.credentials("aws_seoul", key["AccessKeyId"], key["SecretAccessKey"], SEOUL)
    policy = make_policy(ledger, f"s3://{bucket}")
    store = s3_store(reader)

    with pytest.raises(FreezeFailed) as raised:
        freeze(policy, ledger, lambda source: store)

    assert raised.value.permanent is True
    [(uri, error)] = raised.value.failures
    assert uri == f"s3://{bucket}" and isinstance(error, FreezePermissionDenied) and error.permanent
    assert bucket in str(raised.value) and "s3:PutBucketPolicy" in str(raised.value)
    assert "aws_seoul" in str(error) and key["SecretAccessKey"] not in str(error)
    assert server_policy(admin, bucket) is None  # nothing was written
    phase = ledger.latest_phase(policy.migration_id, "freeze")
    assert phase is not None and phase["result"]["counts"] == {"failed": 1}


class IgnoresDenies:
    """SIMULATION of a server that ignores bucket-policy denies (older moto, some S3-compatible servers).

    Wraps a real moto client; for the freeze probe only, it lifts the bucket
    policy around the write and the delete (with the administrator's client)
    and puts it back, so that the real server accepts them.
    """

    def __init__(self, client: Any, admin_client: Any) -> None:
        self._client = client
        self._admin = admin_client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _lifted(self, call: str, **kwargs: Any) -> Any:
        if PROBE_FOLDER not in kwargs.get("Key", ""):
            return getattr(self._client, call)(**kwargs)
        held = self._admin.get_bucket_policy(Bucket=kwargs["Bucket"])["Policy"]
        self._admin.delete_bucket_policy(Bucket=kwargs["Bucket"])
        try:
            return getattr(self._client, call)(**kwargs)
        finally:
            self._admin.put_bucket_policy(Bucket=kwargs["Bucket"], Policy=held)

    def put_object(self, **kwargs: Any) -> Any:
        return self._lifted("put_object", **kwargs)

    def delete_object(self, **kwargs: Any) -> Any:
        return self._lifted("delete_object", **kwargs)


def test_a_write_accepted_despite_the_deny_is_not_proven_and_the_probe_is_deleted(
    admin: AwsCredentials, make_bucket, ledger: Ledger
) -> None:
    bucket = make_bucket(SEOUL, versioned=True, prefix="frzv")
    admin_client = admin.client("s3", SEOUL)
    store = s3_store(admin, lambda region: IgnoresDenies(admin.client("s3", region), admin_client))
    policy = make_policy(ledger, f"s3://{bucket}")

    [entry] = freeze(policy, ledger, lambda source: store).buckets

    assert entry.action == "frozen"
    assert entry.proof["status"] == "not_proven"
    assert entry.proof["reason"].startswith(NOT_PROVEN_ACCEPTED)
    assert entry.proof["probe"]["allowed"] is True and entry.proof["probe"]["deleted"] is True
    assert keys(admin, bucket) == []  # the version itself was deleted: no version, no delete marker left
    recorded = ledger.latest_phase(policy.migration_id, "freeze")["result"]["buckets"][0]["proof"]
    assert recorded["status"] == "not_proven"
    unfreeze(policy, ledger, lambda source: store)
