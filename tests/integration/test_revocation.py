"""Revocation of a foreign party's IAM keys against a moto server over HTTP, auth enforced.

moto enforces identity policies and rejects deleted access keys once
``enforce_auth()`` ran; it ignores inactive keys, so these tests claim denial
only after deletion (as the engine does).
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from residency.clients import AwsCredentials
from residency.errors import PolicyError
from residency.ledger import Ledger
from residency.localcloud.servers import MotoServer
from residency.policy import Policy, parse_policy
from residency.revocation import RevocationNotProven, revoke

SEOUL = "ap-northeast-2"
BUCKET = "seoul-line-photos"


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[MotoServer, AwsCredentials]]:
    server = MotoServer().start()
    try:
        admin = server.enforce_auth()
        s3 = admin.client("s3", SEOUL)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": SEOUL})
        s3.put_object(Bucket=BUCKET, Key="users/1/a.jpg", Body=b"jpeg")
        yield server, admin
    finally:
        server.stop()


class Foreign:
    """An IAM user of the foreign affiliate with an S3 read policy and access keys."""

    def __init__(self, server: MotoServer, admin: AwsCredentials, keys: int = 1) -> None:
        self.server = server
        self.user = f"affiliate-{uuid.uuid4().hex[:8]}"
        self.iam = admin.client("iam")
        self.iam.create_user(UserName=self.user)
        self.iam.put_user_policy(
            UserName=self.user, PolicyName="s3-read",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"],
            }]}),
        )
        self.keys = [self.iam.create_access_key(UserName=self.user)["AccessKey"] for _ in range(keys)]

    def creds(self, index: int = 0) -> AwsCredentials:
        key = self.keys[index]
        return self.server.credentials("foreign_probe", key["AccessKeyId"], key["SecretAccessKey"], SEOUL)

    def listed(self) -> dict[str, str]:
        meta = self.iam.list_access_keys(UserName=self.user)["AccessKeyMetadata"]
        return {k["AccessKeyId"]: k["Status"] for k in meta}


@pytest.fixture
def foreign(moto: tuple[MotoServer, AwsCredentials]) -> Foreign:
    return Foreign(*moto)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.create_schema()
    yield led
    led.dispose()


def make_policy(ledger: Ledger, user: str, access_keys: Any) -> Policy:
    return parse_policy({
        "migration_id": f"test-revoke-{uuid.uuid4().hex[:8]}",
        "home_jurisdiction": "JP",
        "sources": [{"uri": f"s3://{BUCKET}", "conn_id": "aws_seoul"}],
        "destinations": {"s3": {"uri": "s3://tokyo-line-media", "conn_id": "aws_tokyo"}},
        "revoke": [{
            "provider": "aws", "conn_id": "aws_admin", "user": user, "access_keys": access_keys,
            "probe_conn_id": "foreign_probe", "probe_uri": f"s3://{BUCKET}/users/",
        }],
        "ledger_url": ledger.url,
    })


def run(policy: Policy, ledger: Ledger, admin: AwsCredentials, probe: AwsCredentials, **kw: Any) -> Any:
    def iam_credentials(conn_id: str) -> AwsCredentials:
        assert conn_id == "aws_admin"
        return admin

    def probe_credentials(conn_id: str) -> AwsCredentials:
        assert conn_id == "foreign_probe"
        return probe

    return revoke(policy, ledger, iam_credentials=iam_credentials, probe_credentials=probe_credentials, **kw)


def test_revoke_deletes_the_key_and_proves_denial(
    moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    _, admin = moto
    key_id = foreign.keys[0]["AccessKeyId"]
    policy = make_policy(ledger, foreign.user, [key_id])
    caplog.set_level(logging.INFO, logger="residency.revocation")

    result = run(policy, ledger, admin, foreign.creds())

    assert (result.principals, result.keys_revoked, result.keys_denied, result.dry_run) == (1, 1, 1, False)
    [rev] = result.revocations
    assert (rev.user, rev.access_key_id, rev.deactivated, rev.deleted, rev.denied) == (
        foreign.user, key_id, True, True, True)
    assert rev.probe_before is not None and rev.probe_before["allowed"] is True
    assert rev.probe_before["error_code"] is None
    assert rev.probe_after is not None and rev.probe_after["allowed"] is False
    assert rev.probe_after["error_code"] == "InvalidAccessKeyId"
    assert foreign.listed() == {}

    [record] = ledger.get_revocations(policy.migration_id)
    assert record["principal"] == f"aws:iam::user/{foreign.user}"
    assert (record["credential_id"], record["action"]) == (key_id, "deactivate+delete")
    assert record["proof"]["denied"] is True
    assert record["proof"]["before"]["allowed"] is True
    assert record["proof"]["after"]["error_code"] == "InvalidAccessKeyId"
    events = [r["event"] for r in ledger.audit_records(policy.migration_id)]
    assert events == ["revoke.key.start", "revoke.key", "revoke.done"]
    phase = ledger.latest_phase(policy.migration_id, "revoke")
    assert phase is not None and phase["result"]["keys_denied"] == 1

    assert f"deactivated access key {key_id} of IAM user {foreign.user}" in caplog.messages
    assert f"deleted access key {key_id} of IAM user {foreign.user}" in caplog.messages
    assert foreign.keys[0]["SecretAccessKey"] not in caplog.text


@pytest.mark.parametrize("access_keys", [pytest.param("named", id="named key"), pytest.param("all", id="all keys")])
def test_rerun_is_idempotent_and_records_the_denial_again(
    moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger, access_keys: str
) -> None:
    _, admin = moto
    key_id = foreign.keys[0]["AccessKeyId"]
    policy = make_policy(ledger, foreign.user, [key_id] if access_keys == "named" else "all")
    run(policy, ledger, admin, foreign.creds())

    again = run(policy, ledger, admin, foreign.creds())

    assert (again.keys_revoked, again.keys_already_revoked, again.keys_denied) == (0, 1, 1)
    [rev] = again.revocations
    assert rev.already_revoked and not rev.deleted and rev.denied
    assert rev.probe_after is not None and rev.probe_after["error_code"] == "InvalidAccessKeyId"
    records = ledger.get_revocations(policy.migration_id)
    assert [r["proof"]["denied"] for r in records] == [True, True]
    assert records[1]["proof"]["already_revoked"] is True


def test_dry_run_changes_nothing(moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger) -> None:
    _, admin = moto
    key_id = foreign.keys[0]["AccessKeyId"]
    policy = make_policy(ledger, foreign.user, "all")

    result = run(policy, ledger, admin, foreign.creds(), dry_run=True)

    assert result.dry_run and result.keys_revoked == 0 and result.keys_denied == 0
    assert [(r.access_key_id, r.deactivated, r.deleted) for r in result.revocations] == [(key_id, False, False)]
    assert result.revocations[0].probe_before is not None and result.revocations[0].probe_before["allowed"]
    assert foreign.listed() == {key_id: "Active"}
    assert foreign.creds().client("s3").list_objects_v2(Bucket=BUCKET, MaxKeys=1)["KeyCount"] == 1
    assert ledger.get_revocations(policy.migration_id) == []
    assert list(ledger.audit_records(policy.migration_id)) == []


def test_named_key_that_never_existed_fails_before_any_change(
    moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger
) -> None:
    _, admin = moto
    real = foreign.keys[0]["AccessKeyId"]
    policy = make_policy(ledger, foreign.user, [real, "AKIANEVEREXISTED0000"])

    with pytest.raises(PolicyError) as err:
        run(policy, ledger, admin, foreign.creds())

    assert err.value.field == "revoke[0].access_keys"
    assert err.value.value == "AKIANEVEREXISTED0000"
    assert foreign.listed() == {real: "Active"}  # planned before acting: the real key was not touched
    assert ledger.get_revocations(policy.migration_id) == []


def test_probe_key_not_revoked_is_not_proven(
    moto: tuple[MotoServer, AwsCredentials], ledger: Ledger
) -> None:
    server, admin = moto
    foreign = Foreign(server, admin, keys=2)
    revoked, kept = foreign.keys[0]["AccessKeyId"], foreign.keys[1]["AccessKeyId"]
    policy = make_policy(ledger, foreign.user, [revoked])

    with pytest.raises(RevocationNotProven) as err:
        run(policy, ledger, admin, foreign.creds(1))  # the affiliate still holds the other key

    assert kept in str(err.value)
    assert foreign.listed() == {kept: "Active"}
    [record] = ledger.get_revocations(policy.migration_id)  # recorded before raising
    assert record["credential_id"] == revoked and record["proof"]["denied"] is False
    phase = ledger.latest_phase(policy.migration_id, "revoke")
    assert phase is not None and phase["result"]["not_proven"]
