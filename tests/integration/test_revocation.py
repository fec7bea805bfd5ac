"""Revocation of a foreign party's IAM keys against a moto server over HTTP, auth enforced.

What this moto server enforces once ``enforce_auth()`` ran, and so what these
tests may claim: identity policies (a user without ``s3:ListBucket`` on a bucket
gets ``AccessDenied``) and deleted access keys (``InvalidAccessKeyId``). It
accepts *inactive* keys and ignores bucket-policy denies, so no test claims a
denial before deletion or from a bucket policy. ``NoSuchBucket`` comes only for
a user allowed to list any bucket. The throttled after-probe goes through the
project's fault proxy (a real HTTP hop that answers 503 SlowDown).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from typing import Any, Callable, Iterator

import pytest
from botocore.exceptions import ClientError

from residency.clients import AwsCredentials
from residency.errors import PolicyError
from residency.ledger import Ledger
from residency.localcloud.faultproxy import FaultProxy, FaultRules
from residency.localcloud.servers import MotoServer
from residency.policy import Policy, parse_policy
from residency.revocation import RevocationNotProven, preflight_check, revoke

SEOUL = "ap-northeast-2"
BUCKET = "seoul-line-photos"
PRIVATE = "seoul-line-private"  # a bucket the affiliate may not list
MISSING = "seoul-line-gone"  # no such bucket
PROOF_FIELDS = {
    "status", "reason", "denied", "before", "after", "deactivated", "deleted", "already_revoked", "user", "probe_key",
    "kind", "method", "last_used", "delete_due", "outcome",
}
PROBE_FIELDS = {"at", "action", "target", "access_key_id", "allowed", "denied", "error_code"}


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[MotoServer, AwsCredentials]]:
    server = MotoServer().start()
    try:
        admin = server.enforce_auth()
        s3 = admin.client("s3", SEOUL)
        for bucket in (BUCKET, PRIVATE):
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": SEOUL})
            s3.put_object(Bucket=bucket, Key="users/1/a.jpg", Body=b"jpeg")
        yield server, admin
    finally:
        server.stop()


class Foreign:
    """An IAM user of the foreign affiliate with an S3 read policy on ``resources`` and access keys.

    ``resources=()`` gives the user no policy at all: moto refuses its S3 requests.
    """

    def __init__(
        self, server: MotoServer, admin: AwsCredentials, keys: int = 1, resources: tuple[str, ...] = (BUCKET,)
    ) -> None:
        self.server = server
        self.user = f"affiliate-{uuid.uuid4().hex[:8]}"
        self.iam = admin.client("iam")
        self.iam.create_user(UserName=self.user)
        if resources:
            arns = [arn for r in resources
                    for arn in ((f"arn:aws:s3:::{r}", f"arn:aws:s3:::{r}/*") if r != "*" else ("*",))]
            self.iam.put_user_policy(
                UserName=self.user, PolicyName="s3-read",
                PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": arns,
                }]}),
            )
        self.keys = [self.iam.create_access_key(UserName=self.user)["AccessKey"] for _ in range(keys)]

    def key_id(self, index: int = 0) -> str:
        return self.keys[index]["AccessKeyId"]

    def creds(self, index: int = 0, endpoint_url: str | None = None) -> AwsCredentials:
        key = self.keys[index]
        creds = self.server.credentials("foreign_probe", key["AccessKeyId"], key["SecretAccessKey"], SEOUL)
        return dataclasses.replace(creds, endpoint_url=endpoint_url) if endpoint_url else creds

    def listed(self) -> dict[str, str]:
        meta = self.iam.list_access_keys(UserName=self.user)["AccessKeyMetadata"]
        return {k["AccessKeyId"]: k["Status"] for k in meta}


@pytest.fixture
def foreign(moto: tuple[MotoServer, AwsCredentials]) -> Foreign:
    return Foreign(*moto)


def make_policy(ledger: Ledger, user: str, access_keys: Any, probe_uri: str = f"s3://{BUCKET}/users/") -> Policy:
    return parse_policy({
        "migration_id": f"test-revoke-{uuid.uuid4().hex[:8]}",
        "home_jurisdiction": "JP",
        "sources": [{"uri": f"s3://{BUCKET}", "conn_id": "aws_seoul"}],
        "destinations": {"s3": {"uri": "s3://tokyo-line-media", "conn_id": "aws_tokyo"}},
        "revoke": [{
            "provider": "aws", "conn_id": "aws_admin", "user": user, "access_keys": access_keys,
            "probe_conn_id": "foreign_probe", "probe_uri": probe_uri,
        }],
        "ledger_url": ledger.url,
    })


def lookups(admin: AwsCredentials, probe: AwsCredentials) -> dict[str, Callable[[str], AwsCredentials]]:
    """The two credential callables, as a DAG builds them from Airflow connections."""

    def iam_credentials(conn_id: str) -> AwsCredentials:
        assert conn_id == "aws_admin"
        return admin

    def probe_credentials(conn_id: str) -> AwsCredentials:
        if conn_id != "foreign_probe":
            raise KeyError(conn_id)  # what a connection lookup does for an unknown id
        return probe

    return {"iam_credentials": iam_credentials, "probe_credentials": probe_credentials}


def run(policy: Policy, ledger: Ledger, admin: AwsCredentials, probe: AwsCredentials, **kw: Any) -> Any:
    return revoke(policy, ledger, **lookups(admin, probe), **kw)


def preflight(policy: Policy, ledger: Ledger, admin: AwsCredentials, probe: AwsCredentials) -> list[str]:
    return preflight_check(policy, ledger, **lookups(admin, probe))


def assert_probe(probe: Any, key_id: str, allowed: bool, denied: bool, error_code: str | None) -> None:
    assert isinstance(probe, dict) and set(probe) == PROBE_FIELDS
    assert (probe["access_key_id"], probe["action"]) == (key_id, "s3:ListObjectsV2")
    assert (probe["allowed"], probe["denied"], probe["error_code"]) == (allowed, denied, error_code)


def nothing_recorded(ledger: Ledger, policy: Policy) -> bool:
    mid = policy.migration_id
    return (ledger.get_revocations(mid) == [] and list(ledger.audit_records(mid)) == []
            and ledger.latest_phase(mid, "revoke") is None)


# -- revoke ------------------------------------------------------------------


def test_revoke_deletes_the_key_and_proves_denial(
    moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    _, admin = moto
    key_id = foreign.key_id()
    policy = make_policy(ledger, foreign.user, [key_id])
    caplog.set_level(logging.INFO, logger="residency.revocation")

    result = run(policy, ledger, admin, foreign.creds())

    assert (result.principals, result.keys_revoked, result.keys_denied, result.dry_run) == (1, 1, 1, False)
    assert (result.keys_proven, result.keys_not_proven, result.keys_failed) == (1, 0, 0)
    [rev] = result.revocations
    assert (rev.user, rev.access_key_id, rev.deactivated, rev.deleted, rev.denied, rev.status) == (
        foreign.user, key_id, True, True, True, "proven")
    assert_probe(rev.probe_before, key_id, allowed=True, denied=False, error_code=None)
    assert_probe(rev.probe_after, key_id, allowed=False, denied=True, error_code="InvalidAccessKeyId")
    assert foreign.listed() == {}

    [record] = ledger.get_revocations(policy.migration_id)
    assert record["principal"] == f"aws:iam::user/{foreign.user}"
    assert (record["credential_id"], record["action"]) == (key_id, "deactivate+delete")
    proof = record["proof"]
    assert set(proof) == PROOF_FIELDS
    assert (proof["status"], proof["denied"], proof["deactivated"], proof["deleted"], proof["already_revoked"]) == (
        "proven", True, True, True, False)
    assert (proof["user"], proof["probe_key"]) == (foreign.user, key_id)
    assert proof["before"] == rev.probe_before and proof["after"] == rev.probe_after
    assert "InvalidAccessKeyId" in proof["reason"] and proof["before"]["at"] in proof["reason"]
    events = [r["event"] for r in ledger.audit_records(policy.migration_id)]
    assert events == ["revoke.key.start", "revoke.key", "revoke.done"]
    phase = ledger.latest_phase(policy.migration_id, "revoke")
    assert phase is not None and (phase["result"]["keys_denied"], phase["result"]["keys_proven"]) == (1, 1)
    assert (phase["result"]["failed"], phase["result"]["not_proven"]) == ([], [])

    assert f"deactivated access key {key_id} of IAM user {foreign.user}" in caplog.messages
    assert f"deleted access key {key_id} of IAM user {foreign.user}" in caplog.messages
    assert foreign.keys[0]["SecretAccessKey"] not in caplog.text
    assert foreign.keys[0]["SecretAccessKey"] not in json.dumps(ledger.get_revocations(policy.migration_id))


@pytest.mark.parametrize("access_keys", [pytest.param("named", id="named key"), pytest.param("all", id="all keys")])
def test_rerun_is_proven_with_the_recorded_before_probe(
    moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger, access_keys: str
) -> None:
    _, admin = moto
    key_id = foreign.key_id()
    policy = make_policy(ledger, foreign.user, [key_id] if access_keys == "named" else "all")
    first = run(policy, ledger, admin, foreign.creds())

    again = run(policy, ledger, admin, foreign.creds())

    assert (again.keys_revoked, again.keys_already_revoked, again.keys_denied, again.keys_proven) == (0, 1, 1, 1)
    [rev] = again.revocations
    assert rev.already_revoked and not rev.deleted and rev.denied and rev.status == "proven"
    # this run's before-probe was refused (the key is gone): the proof rests on the first run's allowed one
    assert rev.probe_before == first.revocations[0].probe_before
    assert_probe(rev.probe_before, key_id, allowed=True, denied=False, error_code=None)
    assert_probe(rev.probe_after, key_id, allowed=False, denied=True, error_code="InvalidAccessKeyId")
    assert rev.probe_after["at"] > first.revocations[0].probe_after["at"]  # probed again, not copied
    assert "earlier run" in rev.reason
    records = ledger.get_revocations(policy.migration_id)
    assert [(r["proof"]["status"], r["proof"]["denied"]) for r in records] == [("proven", True), ("proven", True)]
    assert (records[1]["proof"]["already_revoked"], records[1]["proof"]["deleted"]) == (True, True)


def test_rerun_without_an_allowed_before_probe_on_record_is_not_proven(
    moto: tuple[MotoServer, AwsCredentials], ledger: Ledger
) -> None:
    server, admin = moto
    foreign = Foreign(server, admin, resources=())  # refused before the revocation as well
    key_id = foreign.key_id()
    policy = make_policy(ledger, foreign.user, [key_id])
    run(policy, ledger, admin, foreign.creds())

    again = run(policy, ledger, admin, foreign.creds())

    [rev] = again.revocations
    assert rev.already_revoked and rev.denied and rev.status == "not_proven"
    assert_probe(rev.probe_before, key_id, allowed=False, denied=True, error_code="InvalidAccessKeyId")
    assert "before the revocation was already refused" in rev.reason


@pytest.mark.parametrize(("resources", "probe_uri", "code"), [
    pytest.param((), f"s3://{BUCKET}/users/", "AccessDenied", id="user without s3 permissions"),
    pytest.param((BUCKET,), f"s3://{PRIVATE}/users/", "AccessDenied", id="bucket the affiliate cannot read"),
    pytest.param(("*",), f"s3://{MISSING}/", "NoSuchBucket", id="missing bucket is not a denial"),
])
def test_before_probe_not_allowed_is_not_proven(
    moto: tuple[MotoServer, AwsCredentials], ledger: Ledger, caplog: pytest.LogCaptureFixture,
    resources: tuple[str, ...], probe_uri: str, code: str,
) -> None:
    server, admin = moto
    foreign = Foreign(server, admin, resources=resources)
    key_id = foreign.key_id()
    policy = make_policy(ledger, foreign.user, [key_id], probe_uri=probe_uri)
    caplog.set_level(logging.INFO, logger="residency.revocation")

    result = run(policy, ledger, admin, foreign.creds())  # no RevocationNotProven: nothing still works

    assert foreign.listed() == {}  # revoked all the same
    assert (result.keys_revoked, result.keys_denied, result.keys_proven, result.keys_not_proven) == (1, 1, 0, 1)
    [record] = ledger.get_revocations(policy.migration_id)
    proof = record["proof"]
    assert set(proof) == PROOF_FIELDS and proof["status"] == "not_proven"
    assert_probe(proof["before"], key_id, allowed=False, denied=code != "NoSuchBucket", error_code=code)
    assert_probe(proof["after"], key_id, allowed=False, denied=True, error_code="InvalidAccessKeyId")
    assert proof["denied"] is True  # the after-probe was refused; it just proves nothing
    assert f"({code})" in proof["reason"] and "proves nothing" in proof["reason"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(key_id in m and "NOT_PROVEN" in m for m in warnings)
    phase = ledger.latest_phase(policy.migration_id, "revoke")
    assert phase is not None and phase["result"]["failed"] == [] and len(phase["result"]["not_proven"]) == 1


def test_key_no_probe_holds_is_not_proven(moto: tuple[MotoServer, AwsCredentials], ledger: Ledger) -> None:
    server, admin = moto
    foreign = Foreign(server, admin, keys=2)
    probed, other = foreign.key_id(0), foreign.key_id(1)
    policy = make_policy(ledger, foreign.user, "all")

    result = run(policy, ledger, admin, foreign.creds(0))

    assert foreign.listed() == {}
    assert (result.keys_revoked, result.keys_denied, result.keys_proven, result.keys_not_proven) == (2, 1, 1, 1)
    proofs = {r["credential_id"]: r["proof"] for r in ledger.get_revocations(policy.migration_id)}
    assert proofs[probed]["status"] == "proven"
    unprobed = proofs[other]
    assert set(unprobed) == PROOF_FIELDS
    assert (unprobed["status"], unprobed["denied"], unprobed["before"], unprobed["after"]) == (
        "not_proven", None, None, None)
    assert (unprobed["deleted"], unprobed["probe_key"]) == (True, probed)
    assert "no probe holds this key" in unprobed["reason"] and probed in unprobed["reason"]
    assert "succeeded" not in unprobed["reason"] and "refused" not in unprobed["reason"]


def test_after_probe_that_fails_otherwise_is_not_proven(
    moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger
) -> None:
    server, admin = moto
    key_id = foreign.key_id()
    policy = make_policy(ledger, foreign.user, [key_id])
    with FaultProxy(server.endpoint_url) as proxy:
        rules = _second_listing_throttled(proxy, admin)

        proxy.set_rules(rules)  # restart the sequence: the before-probe passes, the after-probe is throttled
        result = run(policy, ledger, admin, foreign.creds(endpoint_url=proxy.endpoint_url))

        assert proxy.stats["error_503"] == 1
    assert foreign.listed() == {}
    [rev] = result.revocations
    assert (rev.status, rev.denied) == ("not_proven", False)
    assert_probe(rev.probe_before, key_id, allowed=True, denied=False, error_code=None)
    assert_probe(rev.probe_after, key_id, allowed=False, denied=False, error_code="SlowDown")
    assert "SlowDown" in rev.reason and "neither an allowance nor a refusal" in rev.reason


def _second_listing_throttled(proxy: FaultProxy, admin: AwsCredentials) -> FaultRules:
    """Seeded rules under which the proxy passes the first object listing and answers the second with 503."""
    s3 = dataclasses.replace(admin, endpoint_url=proxy.endpoint_url, region_name=SEOUL).client("s3")
    for seed in range(200):
        rules = FaultRules(error_rate=0.5, error_statuses=(503,), methods=("GET",), path_pattern="list-type=2",
                           seed=seed, max_faults=1)
        proxy.set_rules(rules)
        pattern = []
        for _ in range(2):
            try:
                s3.list_objects_v2(Bucket=BUCKET, MaxKeys=1)
                pattern.append("ok")
            except ClientError as exc:
                pattern.append(exc.response["Error"]["Code"])
        if pattern == ["ok", "SlowDown"]:
            proxy.reset_stats()
            return rules
    raise AssertionError("no seed throttles exactly the second listing")


def test_dry_run_changes_nothing(moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger) -> None:
    _, admin = moto
    key_id = foreign.key_id()
    policy = make_policy(ledger, foreign.user, "all")

    result = run(policy, ledger, admin, foreign.creds(), dry_run=True)

    assert result.dry_run and result.keys_revoked == 0 and result.keys_denied == 0
    assert (result.keys_proven, result.keys_not_proven) == (0, 1)
    [rev] = result.revocations
    assert (rev.access_key_id, rev.deactivated, rev.deleted, rev.denied, rev.probe_after) == (
        key_id, False, False, None, None)
    assert (rev.status, rev.reason) == ("not_proven", "dry run: nothing was revoked.")
    assert_probe(rev.probe_before, key_id, allowed=True, denied=False, error_code=None)
    assert foreign.listed() == {key_id: "Active"}
    assert foreign.creds().client("s3").list_objects_v2(Bucket=BUCKET, MaxKeys=1)["KeyCount"] == 1
    assert nothing_recorded(ledger, policy)


def test_named_key_that_never_existed_fails_before_any_change(
    moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger
) -> None:
    _, admin = moto
    real = foreign.key_id()
    policy = make_policy(ledger, foreign.user, [real, "AKIANEVEREXISTED0000"])

    with pytest.raises(PolicyError) as err:
        run(policy, ledger, admin, foreign.creds())

    assert err.value.field == "revoke[0].access_keys"
    assert err.value.value == "AKIANEVEREXISTED0000"
    assert foreign.listed() == {real: "Active"}  # planned before acting: the real key was not touched
    assert nothing_recorded(ledger, policy)


def test_unknown_probe_connection_fails_before_any_change(
    moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger
) -> None:
    _, admin = moto
    policy = make_policy(ledger, foreign.user, "all")

    def probe_credentials(conn_id: str) -> AwsCredentials:
        raise KeyError(conn_id)

    with pytest.raises(PolicyError) as err:
        revoke(policy, ledger, iam_credentials=lambda _: admin, probe_credentials=probe_credentials)

    assert (err.value.field, err.value.value) == ("revoke[0].probe_conn_id", "foreign_probe")
    assert foreign.listed() == {foreign.key_id(): "Active"}
    assert nothing_recorded(ledger, policy)


def test_key_that_still_works_fails_and_raises_after_recording(
    moto: tuple[MotoServer, AwsCredentials], ledger: Ledger
) -> None:
    server, admin = moto
    foreign = Foreign(server, admin, keys=2)
    revoked, kept = foreign.key_id(0), foreign.key_id(1)
    policy = make_policy(ledger, foreign.user, [revoked])

    with pytest.raises(RevocationNotProven) as err:
        run(policy, ledger, admin, foreign.creds(1))  # the affiliate still holds the other key

    assert kept in str(err.value) and "still works" in str(err.value)
    assert foreign.listed() == {kept: "Active"}
    records = {r["credential_id"]: r for r in ledger.get_revocations(policy.migration_id)}  # recorded before raising
    assert set(records) == {revoked, kept}
    unprobed = records[revoked]["proof"]
    assert (unprobed["status"], unprobed["denied"], unprobed["before"], unprobed["after"]) == (
        "not_proven", None, None, None)
    assert "no probe holds this key" in unprobed["reason"]
    still = records[kept]
    assert still["action"] == "none"
    assert (still["proof"]["status"], still["proof"]["denied"], still["proof"]["deleted"]) == ("failed", False, False)
    assert_probe(still["proof"]["after"], kept, allowed=True, denied=False, error_code=None)
    assert "still works" in still["proof"]["reason"]
    phase = ledger.latest_phase(policy.migration_id, "revoke")
    assert phase is not None and phase["result"]["keys_failed"] == 1
    assert len(phase["result"]["failed"]) == 1 and kept in phase["result"]["failed"][0]


# -- preflight_check --------------------------------------------------------


def test_preflight_of_a_good_setup_finds_nothing_and_writes_nothing(
    moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger
) -> None:
    _, admin = moto
    policy = make_policy(ledger, foreign.user, [foreign.key_id()])

    assert preflight(policy, ledger, admin, foreign.creds()) == []

    assert foreign.listed() == {foreign.key_id(): "Active"}
    assert nothing_recorded(ledger, policy)


@pytest.mark.parametrize("case", [
    pytest.param("missing user", id="missing user"),
    pytest.param("missing key", id="missing named key"),
    pytest.param("probe refused", id="probe refused before revocation"),
    pytest.param("unknown probe conn", id="probe connection id unknown"),
    pytest.param("probe key not revoked", id="probe key not among the keys to revoke"),
])
def test_preflight_reports_one_problem_naming_the_field(
    moto: tuple[MotoServer, AwsCredentials], ledger: Ledger, case: str
) -> None:
    server, admin = moto
    foreign = Foreign(server, admin, keys=2)
    user, keys, probe_uri, field = foreign.user, [foreign.key_id()], f"s3://{BUCKET}/users/", ""
    probe_conn = "foreign_probe"
    if case == "missing user":
        user, field = f"affiliate-gone-{uuid.uuid4().hex[:6]}", "revoke[0].user"
    elif case == "missing key":
        keys, field = [foreign.key_id(), "AKIANEVEREXISTED0000"], "revoke[0].access_keys = 'AKIANEVEREXISTED0000'"
    elif case == "probe refused":
        probe_uri, field = f"s3://{PRIVATE}/users/", "revoke[0].probe_uri"
    elif case == "unknown probe conn":
        probe_conn, field = "foreign_probe_typo", "revoke[0].probe_conn_id = 'foreign_probe_typo'"
    else:
        keys, field = [foreign.key_id(1)], "revoke[0].probe_conn_id"
    policy = make_policy(ledger, user, keys, probe_uri=probe_uri)
    policy = dataclasses.replace(policy, revocations=(
        dataclasses.replace(policy.revocations[0], probe_conn_id=probe_conn),))

    problems = preflight(policy, ledger, admin, foreign.creds())

    assert len(problems) == 1, problems
    assert problems[0].startswith(field) and f"aws:iam::user/{user}" in problems[0]
    assert foreign.listed() == {foreign.key_id(0): "Active", foreign.key_id(1): "Active"}
    assert nothing_recorded(ledger, policy)
    assert foreign.keys[0]["SecretAccessKey"] not in problems[0]


def test_preflight_after_revocation_trusts_the_ledger(
    moto: tuple[MotoServer, AwsCredentials], foreign: Foreign, ledger: Ledger
) -> None:
    _, admin = moto
    policy = make_policy(ledger, foreign.user, [foreign.key_id()])
    run(policy, ledger, admin, foreign.creds())
    before = len(list(ledger.audit_records(policy.migration_id)))

    # the key is gone and the probe is now refused, but this migration revoked it: nothing to report
    assert preflight(policy, ledger, admin, foreign.creds()) == []
    assert len(list(ledger.audit_records(policy.migration_id))) == before
