"""Every AWS access path of a foreign party closed, against a moto server over HTTP, auth enforced.

What moto 5.2.5 enforces, and so what these tests may claim:
- role trust policies on ``sts:AssumeRole`` (a removed trust entry gives ``AccessDenied``);
- a role's inline policies on its sessions: the session-revocation deny refuses an
  older session. moto evaluates no ``DateLessThan`` condition (the deny refuses
  newer sessions too), so no test claims that a *newer* session still works;
- deleted access keys (``InvalidAccessKeyId``).
It does not evaluate bucket-policy or ACL grants by principal, and cannot use a
``GetSessionToken`` session: those paths are proven by reading the configuration
back, and the tests assert exactly that method.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterator

import pytest

from residency import foreign_access
from residency.clients import AwsCredentials
from residency.errors import PolicyError
from residency.ledger import Ledger
from residency.localcloud.servers import MotoServer
from residency.policy import parse_policy

SEOUL = "ap-northeast-2"
BUCKET = "seoul-paths-photos"
TOKYO_BUCKET = "tokyo-paths-photos"
FOREIGN_ACCOUNT = "999988887777"
CANONICAL = "b2" * 32


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[MotoServer, AwsCredentials]]:
    server = MotoServer().start()
    try:
        admin = server.enforce_auth()
        admin.client("s3", SEOUL).create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": SEOUL})
        admin.client("s3", SEOUL).put_object(Bucket=BUCKET, Key="users/1/a.jpg", Body=b"jpeg")
        admin.client("s3", "ap-northeast-1").create_bucket(
            Bucket=TOKYO_BUCKET, CreateBucketConfiguration={"LocationConstraint": "ap-northeast-1"})
        yield server, admin
    finally:
        server.stop()


def _doc(statements: list[dict[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


class Party:
    """A foreign user with a key, a console password, a role that trusts it (and a domestic user), and grants
    to its account in the bucket policy and the ACL of the Seoul bucket (plus a domestic grant that must stay)."""

    def __init__(self, server: MotoServer, admin: AwsCredentials) -> None:
        tag = uuid.uuid4().hex[:8]
        self.user, self.role, self.domestic = f"affiliate-{tag}", f"reader-{tag}", f"domestic-{tag}"
        iam = self.iam = admin.client("iam")
        account = admin.client("sts").get_caller_identity()["Account"]
        for user in (self.user, self.domestic):
            iam.create_user(UserName=user, Tags=[{"Key": "party", "Value": f"affiliate-{tag}" if user == self.user
                                                  else "home"}])
        iam.put_user_policy(UserName=self.user, PolicyName="p", PolicyDocument=_doc([
            {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject", "sts:AssumeRole"], "Resource": "*"}]))
        key = iam.create_access_key(UserName=self.user)["AccessKey"]
        self.key_id = key["AccessKeyId"]
        self.probe = server.credentials("probe", key["AccessKeyId"], key["SecretAccessKey"], SEOUL)
        iam.create_login_profile(UserName=self.user, Password="Affiliate-Pass-2021!")
        self.user_arn = f"arn:aws:iam::{account}:user/{self.user}"
        self.domestic_arn = f"arn:aws:iam::{account}:user/{self.domestic}"
        iam.create_role(RoleName=self.role, AssumeRolePolicyDocument=_doc([{
            "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": [self.user_arn, self.domestic_arn]}}]))
        iam.put_role_policy(RoleName=self.role, PolicyName="read", PolicyDocument=_doc([
            {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": "*"}]))
        self.s3 = admin.client("s3", SEOUL)
        self.domestic_statement = {"Sid": "Home", "Effect": "Allow", "Principal": {"AWS": self.domestic_arn},
                                   "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}
        self.s3.put_bucket_policy(Bucket=BUCKET, Policy=_doc([
            {"Sid": "Affiliate", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{FOREIGN_ACCOUNT}:root"},
             "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}, self.domestic_statement]))
        acl = self.s3.get_bucket_acl(Bucket=BUCKET)
        self.owner_grants = acl["Grants"]
        self.s3.put_bucket_acl(Bucket=BUCKET, AccessControlPolicy={"Owner": acl["Owner"], "Grants": acl["Grants"] + [
            {"Grantee": {"Type": "CanonicalUser", "ID": CANONICAL}, "Permission": "READ"}]})
        self.tag = ("party", f"affiliate-{tag}")


@pytest.fixture
def party(moto: tuple[MotoServer, AwsCredentials]) -> Party:
    return Party(*moto)


def _policy(tmp_path: Any, party: Party, **principal: Any) -> Any:
    entry = {"provider": "aws", "conn_id": "iam", "account": FOREIGN_ACCOUNT, "canonical_ids": [CANONICAL],
             "probe_conn_id": "probe", "probe_uri": f"s3://{BUCKET}/users/", **principal}
    return parse_policy({
        "migration_id": f"paths-{uuid.uuid4().hex[:8]}", "home_jurisdiction": "JP",
        "sources": [{"uri": f"s3://{BUCKET}", "conn_id": "src"}],
        "destinations": {"s3": {"uri": f"s3://{TOKYO_BUCKET}", "conn_id": "dst"}},
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}", "revoke": [entry],
    }, path=str(tmp_path / "policy.yaml"))


def _run(policy: Any, admin: AwsCredentials, party: Party, **kw: Any) -> tuple[dict[str, Any], Ledger]:
    ledger = Ledger(policy.ledger_url)
    ledger.create_schema()
    creds = {"iam": admin, "probe": party.probe}
    return foreign_access.revoke_all(policy, ledger, credentials=creds.__getitem__, **kw), ledger


def _by_kind(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["kind"] + ":" + r["credential_id"].rsplit(":", 1)[-1]: r for r in summary["paths"]}


def _records(ledger: Ledger, mid: str) -> dict[str, dict[str, Any]]:
    latest = {}
    for r in ledger.get_revocations(mid):
        latest[r["credential_id"]] = r
    return latest


def test_every_path_is_closed_with_its_proof(tmp_path: Any, moto: Any, party: Party) -> None:
    _, admin = moto
    policy = _policy(tmp_path, party, user=party.user)
    summary, ledger = _run(policy, admin, party)
    records = _records(ledger, policy.migration_id)
    role_arn = next(r["Arn"] for r in party.iam.list_roles()["Roles"] if r["RoleName"] == party.role)

    trust = records[f"role_trust:{role_arn}"]["proof"]
    assert (trust["status"], trust["method"]) == ("proven", "denied_attempt")
    assert trust["before"]["allowed"] is True and trust["after"]["error_code"] == "AccessDenied"
    assert trust["removed"] == [party.user_arn]
    assert trust["snapshot_after"]["Statement"][0]["Principal"]["AWS"] == party.domestic_arn  # the domestic entry stays

    role_sessions = records[f"sessions:{role_arn}"]["proof"]
    assert (role_sessions["status"], role_sessions["method"]) == ("proven", "denied_attempt")
    assert role_sessions["before"]["allowed"] is True and role_sessions["after"]["error_code"] == "AccessDenied"
    deny = party.iam.get_role_policy(RoleName=party.role, PolicyName="ResidencyRevokeOlderSessions")["PolicyDocument"]
    assert deny["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"] == summary["sessions_issued_before"]

    grant = records[f"bucket_policy:s3://{BUCKET}"]["proof"]
    assert (grant["status"], grant["method"]) == ("proven", "read_back")
    assert json.loads(party.s3.get_bucket_policy(Bucket=BUCKET)["Policy"])["Statement"] == [party.domestic_statement]
    acl = records[f"bucket_acl:s3://{BUCKET}"]["proof"]
    assert (acl["status"], acl["method"]) == ("proven", "read_back")
    assert party.s3.get_bucket_acl(Bucket=BUCKET)["Grants"] == party.owner_grants

    key = records[party.key_id]["proof"]
    assert (key["status"], key["outcome"]) == ("proven", "revoked") and key["after"]["error_code"] == "InvalidAccessKeyId"
    assert key["last_used"] is not None  # the probes used it: IAM recorded the last use, before the delete
    login = records[f"login_profile:{party.user_arn}"]["proof"]
    assert (login["status"], login["method"]) == ("proven", "read_back")
    user_sessions = records[f"sessions:{party.user_arn}"]["proof"]
    assert (user_sessions["status"], user_sessions["method"]) == ("proven", "read_back")  # no session usable in moto
    assert summary["failed"] == [] and summary["by_status"] == {"proven": 7}


def test_rerun_records_already_revoked_and_changes_nothing(tmp_path: Any, moto: Any, party: Party) -> None:
    _, admin = moto
    policy = _policy(tmp_path, party, user=party.user)
    _run(policy, admin, party)
    before = party.s3.get_bucket_policy(Bucket=BUCKET)["Policy"]
    summary, _ = _run(policy, admin, party)
    outcomes = {(r["kind"], r["outcome"], r["status"]) for r in summary["paths"]}
    assert ("access_key", "already_revoked", "proven") in outcomes
    assert ("bucket_policy", "already_revoked", "proven") in outcomes
    assert ("role_trust", "already_revoked", "proven") in outcomes
    assert ("sessions", "already_revoked", "proven") in outcomes
    assert ("login_profile", "already_revoked", "proven") in outcomes
    assert sum(1 for r in summary["paths"] if r["kind"] == "sessions") == 2  # the role's and the user's
    assert not [r for r in summary["paths"] if r["outcome"] == "revoked"]
    assert party.s3.get_bucket_policy(Bucket=BUCKET)["Policy"] == before


def test_dry_run_lists_every_change_and_changes_nothing(tmp_path: Any, moto: Any, party: Party) -> None:
    _, admin = moto
    policy = _policy(tmp_path, party, tag={party.tag[0]: party.tag[1]})  # selected by tag
    bucket_policy = party.s3.get_bucket_policy(Bucket=BUCKET)["Policy"]
    summary, ledger = _run(policy, admin, party, dry_run=True)
    kinds = sorted({r["kind"] for r in summary["paths"]})
    assert kinds == ["access_key", "bucket_acl", "bucket_policy", "login_profile", "role_trust", "sessions"]
    assert {r["outcome"] for r in summary["paths"]} == {"would_revoke"}
    assert ledger.get_revocations(policy.migration_id) == []
    assert party.s3.get_bucket_policy(Bucket=BUCKET)["Policy"] == bucket_policy
    assert party.iam.list_access_keys(UserName=party.user)["AccessKeyMetadata"][0]["Status"] == "Active"
    assert party.iam.get_login_profile(UserName=party.user)["LoginProfile"]
    assert not [u for r in summary["paths"] for u in [r["principal"]] if party.domestic in u]  # tag chose one user


def test_key_soak_deactivates_first_and_deletes_later(tmp_path: Any, moto: Any, party: Party) -> None:
    _, admin = moto
    policy = _policy(tmp_path, party, user=party.user, delete_after_hours=24)
    policy = type(policy)(**{**policy.__dict__, "revocations": tuple(
        p.__class__(**{**p.__dict__, "probe_conn_id": None, "probe_uri": None}) for p in policy.revocations)})
    summary, ledger = _run(policy, admin, party)
    [key] = [r for r in summary["paths"] if r["kind"] == "access_key"]
    assert key["outcome"] == "pending"
    assert party.iam.list_access_keys(UserName=party.user)["AccessKeyMetadata"][0]["Status"] == "Inactive"
    proof = _records(ledger, policy.migration_id)[party.key_id]["proof"]
    assert proof["deleted"] is False and proof["delete_due"] and proof["last_used"] is None  # never used: no probe


def test_account_only_principal_needs_no_user(tmp_path: Any, moto: Any, party: Party) -> None:
    _, admin = moto
    policy = _policy(tmp_path, party, probe_conn_id=None, probe_uri=None)
    summary, _ = _run(policy, admin, party)
    assert sorted(r["kind"] for r in summary["paths"]) == ["bucket_acl", "bucket_policy"]
    assert party.iam.list_access_keys(UserName=party.user)["AccessKeyMetadata"]  # users untouched


@pytest.mark.parametrize("entry, field", [
    ({"provider": "aws", "conn_id": "iam"}, "revoke[0]"),
    ({"provider": "aws", "conn_id": "iam", "account": "12345"}, "revoke[0].account"),
    ({"provider": "aws", "conn_id": "iam", "tag": {"a": 1}}, "revoke[0].tag"),
    ({"provider": "aws", "conn_id": "iam", "account": FOREIGN_ACCOUNT, "canonical_ids": ["xyz"]},
     "revoke[0].canonical_ids"),
    ({"provider": "aws", "conn_id": "iam", "user": "u", "delete_after_hours": -1}, "revoke[0].delete_after_hours"),
    ({"provider": "aws", "conn_id": "iam", "tag": {"a": "b"}, "access_keys": ["AKIAAAAAAAAAAAAAAAAA"]},
     "revoke[0].access_keys"),
    ({"provider": "gcs", "conn_id": "g", "project": "residency-local"}, "revoke[0]"),
    ({"provider": "gcs", "conn_id": "g", "project": "residency-local", "domain": "-bad"}, "revoke[0].domain"),
    ({"provider": "gcs", "conn_id": "g", "project": "residency-local", "service_accounts": ["x@affiliate.example"],
      "probe_uri": "s3://b"}, "revoke[0].probe_uri"),
    ({"provider": "azure", "conn_id": "g"}, "revoke[0].provider"),
])
def test_bad_principal_names_the_field(tmp_path: Any, entry: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy({"migration_id": "bad-principal", "home_jurisdiction": "JP",
                      "sources": [{"uri": f"s3://{BUCKET}", "conn_id": "src"}],
                      "destinations": {"s3": {"uri": f"s3://{TOKYO_BUCKET}", "conn_id": "dst"}},
                      "revoke": [entry]})
    assert err.value.field == field


def test_a_wrong_key_id_fails_before_any_path_changes(tmp_path: Any, moto: Any, party: Party) -> None:
    """Keys are planned with everything else: the trust policy, the grants and the password stay as they were."""
    _, admin = moto
    policy = _policy(tmp_path, party, user=party.user, access_keys=["AKIANOSUCHKEY0000000"])
    bucket_policy = party.s3.get_bucket_policy(Bucket=BUCKET)["Policy"]
    trust = party.iam.get_role(RoleName=party.role)["Role"]["AssumeRolePolicyDocument"]
    with pytest.raises(PolicyError) as err:
        _run(policy, admin, party)
    assert (err.value.field, err.value.value) == ("revoke[0].access_keys", "AKIANOSUCHKEY0000000")
    assert party.s3.get_bucket_policy(Bucket=BUCKET)["Policy"] == bucket_policy
    assert party.iam.get_role(RoleName=party.role)["Role"]["AssumeRolePolicyDocument"] == trust
    assert party.iam.get_login_profile(UserName=party.user)["LoginProfile"]
