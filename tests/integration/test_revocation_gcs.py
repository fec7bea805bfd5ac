"""GCS revocation over HTTP: fake-gcs-server behind :class:`GcsAccessFake`, a throwaway SQLite ledger.

What is enforced where (a test here proves no more than this):

- fake-gcs-server (real emulator) holds the buckets and objects and answers listings;
  it checks no credential at all.
- :class:`GcsAccessFake` (a FAKE following the public JSON API / IAM API / OAuth
  references) holds HMAC keys, bucket IAM policies, service accounts and their keys,
  issues tokens only for a JWT signed by an existing, enabled key, and checks the
  bucket's bindings on object list/get for its own tokens and for XML API listings
  signed with an HMAC key (SigV4 verified; INACTIVE -> AccessDenied, DELETED ->
  InvalidAccessKeyId). It does not authenticate the admin, does not revoke issued
  tokens and does not check request times: a real server does these too.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from residency.clients import AwsCredentials, GcsCredentials
from residency.errors import PolicyError
from residency.ledger import Ledger
from residency.localcloud.gcs_access_fake import GcsAccessFake
from residency.policy import GcsPrincipal
from residency.revocation_gcs import preflight_gcs, revoke_gcs

OWNER_PROJECT = "residency-local"
FOREIGN_PROJECT = "foreign-proj"
FOREIGN = f"affiliate@{FOREIGN_PROJECT}.iam.gserviceaccount.com"
HOME = f"uploader@{OWNER_PROJECT}.iam.gserviceaccount.com"
MIGRATION = "m-gcs"


class Estate:
    """One foreign service account with an HMAC key, a user-managed key and bindings on two buckets."""

    def __init__(self, fake: GcsAccessFake, src: str, dst: str) -> None:
        self.fake, self.src, self.dst = fake, src, dst
        self.admin = GcsCredentials("gcs-admin", project=OWNER_PROJECT, emulator_host=fake.url,
                                    iam_endpoint=fake.url)
        client = self.admin.client()
        client.bucket(src).blob("media/cat.jpg").upload_from_string(b"meow", retry=None)
        fake.create_service_account(FOREIGN)
        fake.create_service_account(HOME)
        meta, secret = client.create_hmac_key(FOREIGN, project_id=FOREIGN_PROJECT, retry=None)
        self.access_id = meta.access_id
        created = requests.post(f"{fake.url}/v1/projects/-/serviceAccounts/{FOREIGN}/keys", json={}, timeout=10)
        created.raise_for_status()
        self.key_id = created.json()["name"].rsplit("/", 1)[1]
        keyfile = json.loads(base64.b64decode(created.json()["privateKeyData"]))
        self.grant(src, {"roles/storage.objectViewer": [f"serviceAccount:{FOREIGN}", f"serviceAccount:{HOME}"],
                         "roles/storage.legacyBucketReader": [f"serviceAccount:{FOREIGN}"]})
        self.grant(dst, {"roles/storage.objectAdmin": [f"serviceAccount:{HOME}"],
                         "roles/storage.objectViewer": [f"serviceAccount:{FOREIGN}"]})
        self.probes = {
            "hmac-probe": AwsCredentials("hmac-probe", access_key_id=meta.access_id, secret_access_key=secret,
                                         region_name="auto", endpoint_url=fake.url),
            "member-probe": GcsCredentials("member-probe", keyfile_dict=keyfile, api_endpoint=fake.url),
        }

    def grant(self, bucket: str, roles: dict[str, list[str]]) -> None:
        b = self.admin.client().bucket(bucket)
        policy = b.get_iam_policy(requested_policy_version=3, retry=None)
        for role, members in roles.items():
            policy.bindings.append({"role": role, "members": set(members)})
        b.set_iam_policy(policy, retry=None)

    def principal(self, **changes: Any) -> GcsPrincipal:
        fields: dict[str, Any] = dict(
            conn_id="gcs-admin", project=FOREIGN_PROJECT, service_accounts=(FOREIGN,), domain=None, hmac_keys=None,
            hmac_probe_conn_id="hmac-probe", member_probe_conn_id="member-probe", probe_uri=f"gs://{self.src}/media/",
        )
        fields.update(changes)
        return GcsPrincipal(**fields)

    def revoke(self, ledger: Ledger, principal: GcsPrincipal | None = None, dry_run: bool = False) -> list:
        return revoke_gcs(principal or self.principal(), 0, buckets=[self.src, self.dst], admin=self.admin,
                          probes=self.probes.__getitem__, ledger=ledger, migration_id=MIGRATION, dry_run=dry_run)

    def state(self) -> dict[str, Any]:
        """Everything the fake holds that a revocation may change."""
        hmac = requests.get(f"{self.fake.url}/storage/v1/projects/{FOREIGN_PROJECT}/hmacKeys",
                            params={"showDeletedKeys": "true"}, timeout=10).json()["items"]
        keys = requests.get(f"{self.fake.url}/v1/projects/-/serviceAccounts/{FOREIGN}/keys", timeout=10).json()
        return {"hmac": hmac, "keys": keys, "src": self.fake.policy(self.src), "dst": self.fake.policy(self.dst)}


@pytest.fixture
def fake(fake_gcs: Any) -> Iterator[GcsAccessFake]:
    with GcsAccessFake(fake_gcs.endpoint_url, project=OWNER_PROJECT) as f:
        yield f


@pytest.fixture
def estate(fake: GcsAccessFake, make_gcs_bucket: Any) -> Estate:
    return Estate(fake, make_gcs_bucket(prefix="src"), make_gcs_bucket(prefix="dst"))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.create_schema()
    yield led
    led.dispose()


def _by_id(records: list) -> dict[str, Any]:
    return {r.credential_id: r for r in records}


def _without(bindings: list[dict[str, Any]], member: str) -> str:
    """The bindings with ``member`` taken out (and bindings left empty dropped), as canonical JSON bytes."""
    rest = [dict(b, members=sorted(m for m in b["members"] if m != member)) for b in bindings]
    return json.dumps([b for b in rest if b["members"]], sort_keys=True)


def test_revoke_closes_every_path_with_proof(estate: Estate, ledger: Ledger) -> None:
    """HMAC key: allowed, then AccessDenied while INACTIVE (the fake's enforcement), then deleted.
    Bindings: the member is gone from both buckets, everything else byte-identical; the probe bucket's
    binding is proven by a 403 to the member's own token, the other bucket's by read-back.
    Service-account key: the token exchange is refused (invalid_grant) once disabled; then deleted."""
    member = f"serviceAccount:{FOREIGN}"
    before = estate.state()
    recs = _by_id(estate.revoke(ledger))

    hmac = recs[estate.access_id]
    assert (hmac.kind, hmac.outcome, hmac.status, hmac.method) == ("hmac_key", "revoked", "proven", "denied_attempt")
    assert hmac.attempt_before["allowed"] and hmac.attempt_after["error_code"] == "AccessDenied"
    assert hmac.snapshot_after["state"] == "DELETED"

    src = recs[f"gs://{estate.src}#{member}"]
    assert (src.status, src.method, src.attempt_after["error_code"]) == ("proven", "denied_attempt", "403")
    assert src.principal == f"gcs:{member}"
    dst = recs[f"gs://{estate.dst}#{member}"]
    assert (dst.status, dst.method) == ("proven", "read_back")
    after = estate.state()
    for name in ("src", "dst"):
        assert json.dumps(after[name]["bindings"], sort_keys=True) == _without(before[name]["bindings"], member)
        assert member not in json.dumps(after[name])

    key = recs[estate.key_id]
    assert (key.kind, key.status, key.method) == ("service_account_key", "proven", "denied_attempt")
    assert key.attempt_before["allowed"] and key.attempt_after["error_code"] == "invalid_grant"
    left = after["keys"]["keys"]
    assert [k["keyType"] for k in left] == ["SYSTEM_MANAGED"], "the Google-managed key is listed, not touched"

    stored = {r["credential_id"]: r for r in ledger.get_revocations(MIGRATION)}
    assert set(stored) == set(recs) and all(r["proof"]["status"] == "proven" for r in stored.values())
    assert "secret" not in json.dumps([r["proof"] for r in stored.values()]).lower()


def test_rerun_records_already_revoked_and_proves_again(estate: Estate, ledger: Ledger) -> None:
    """A second run finds nothing to change: every path is already_revoked, proven again (HMAC:
    InvalidAccessKeyId for the deleted key; SA key: token refused; the allowed before-attempts of the
    first run count); the probe bucket's binding falls back to read-back since the member's key is gone."""
    estate.revoke(ledger)
    state = estate.state()
    again = _by_id(estate.revoke(ledger))
    assert estate.state() == state
    assert {r.outcome for r in again.values()} == {"already_revoked"}
    assert again[estate.access_id].attempt_after["error_code"] == "InvalidAccessKeyId"
    assert again[estate.access_id].status == "proven" and "earlier run" in again[estate.access_id].reason
    assert again[estate.key_id].status == "proven"
    assert {r.status for r in again.values()} == {"proven"}


def test_dry_run_changes_nothing(estate: Estate, ledger: Ledger) -> None:
    """Dry run: plans and probes (read-only), returns would_revoke, changes and records nothing."""
    before = estate.state()
    recs = estate.revoke(ledger, dry_run=True)
    assert estate.state() == before
    assert {r.outcome for r in recs} == {"would_revoke"} and len(recs) == 4
    assert ledger.get_revocations(MIGRATION) == []


def test_bad_hmac_key_fails_before_anything_changes(estate: Estate, ledger: Ledger) -> None:
    """A named HMAC key the project does not have stops the run at planning, naming the field."""
    before = estate.state()
    with pytest.raises(PolicyError) as err:
        estate.revoke(ledger, estate.principal(hmac_keys=(estate.access_id, "GOOG1EBOGUS")))
    assert err.value.field == "revoke[0].hmac_keys" and err.value.value == "GOOG1EBOGUS"
    assert estate.state() == before and ledger.get_revocations(MIGRATION) == []


def test_unresolvable_probe_names_the_field(estate: Estate, ledger: Ledger) -> None:
    before = estate.state()
    with pytest.raises(PolicyError) as err:
        estate.revoke(ledger, estate.principal(member_probe_conn_id="nope"))
    assert err.value.field == "revoke[0].member_probe_conn_id"
    assert estate.state() == before


def test_preflight(estate: Estate, ledger: Ledger) -> None:
    """Preflight passes on a healthy estate and names the field of a probe that is refused before revocation."""
    kwargs = dict(buckets=[estate.src, estate.dst], admin=estate.admin, probes=estate.probes.__getitem__,
                  ledger=ledger, migration_id=MIGRATION)
    assert preflight_gcs(estate.principal(), 0, **kwargs) == []
    other = estate.admin.client().create_bucket(f"{estate.src}-x", retry=None).name
    problems = preflight_gcs(estate.principal(probe_uri=f"gs://{other}/"), 0, **kwargs)
    assert len(problems) == 2 and all("revoke[0].probe_uri" in p or "hmac_probe" in p for p in problems)


# -- the fake itself -------------------------------------------------------------------------------
def test_fake_refuses_deleting_an_active_hmac_key(estate: Estate) -> None:
    """Per the JSON API reference: a key must be INACTIVE before it is deleted (enforced by the fake)."""
    url = f"{estate.fake.url}/storage/v1/projects/{FOREIGN_PROJECT}/hmacKeys/{estate.access_id}"
    assert requests.delete(url, timeout=10).status_code == 400
    assert requests.get(url, timeout=10).json()["state"] == "ACTIVE"


def test_fake_checks_etags(estate: Estate) -> None:
    """A stale etag is refused with 412 on a bucket policy and on an HMAC key update."""
    url = f"{estate.fake.url}/storage/v1/b/{estate.src}/iam"
    policy = requests.get(url, timeout=10).json()
    assert requests.put(url, json=dict(policy, bindings=[]), timeout=10).status_code == 200
    assert requests.put(url, json=dict(policy, bindings=[]), timeout=10).status_code == 412
    key_url = f"{estate.fake.url}/storage/v1/projects/{FOREIGN_PROJECT}/hmacKeys/{estate.access_id}"
    assert requests.put(key_url, json={"state": "INACTIVE", "etag": "stale"}, timeout=10).status_code == 412


def test_fake_refuses_tokens_of_disabled_keys(estate: Estate) -> None:
    from google.auth.exceptions import RefreshError
    from google.auth.transport.requests import Request

    creds = estate.probes["member-probe"]
    creds.google_credentials().refresh(Request())
    url = f"{estate.fake.url}/v1/projects/-/serviceAccounts/{FOREIGN}/keys/{estate.key_id}:disable"
    assert requests.post(url, json={}, timeout=10).status_code == 200
    with pytest.raises(RefreshError, match="invalid_grant"):
        creds.google_credentials().refresh(Request())
