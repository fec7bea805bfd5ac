"""What a before- and an after-probe prove about one revoked key (no server: the decision table)."""

from __future__ import annotations

from typing import Any

import pytest

from residency.revocation import KeyRevocation, ProofStatus, judge_proof

KEY = "AKIAFOREIGN000000001"
URI = "s3://seoul-line-photos/users/"


def probe(allowed: bool = False, error_code: str | None = None, denied: bool | None = None,
          key: str = KEY, target: str = URI, at: str = "2025-01-01T00:00:00.000+00:00") -> dict[str, Any]:
    if denied is None:
        denied = error_code in ("InvalidAccessKeyId", "AccessDenied")
    return {"at": at, "action": "s3:ListObjectsV2", "target": target, "access_key_id": key,
            "allowed": allowed, "denied": denied, "error_code": None if allowed else error_code}


ALLOWED = probe(allowed=True)
GONE = probe(error_code="InvalidAccessKeyId", at="2025-01-01T00:01:00.000+00:00")


@pytest.mark.parametrize(("before", "after", "status", "words"), [
    pytest.param(ALLOWED, GONE, ProofStatus.PROVEN, ("allowed", "refused with InvalidAccessKeyId"),
                 id="allowed before, refused after"),
    pytest.param(ALLOWED, probe(allowed=True), ProofStatus.FAILED, ("still works",), id="allowed after"),
    pytest.param(None, probe(allowed=True), ProofStatus.FAILED, ("still works",), id="allowed after, no before"),
    pytest.param(ALLOWED, None, ProofStatus.NOT_PROVEN, ("no access attempt",), id="no after-probe"),
    pytest.param(ALLOWED, probe(error_code="NoSuchBucket"), ProofStatus.NOT_PROVEN,
                 ("NoSuchBucket", "neither an allowance nor a refusal"), id="after NoSuchBucket is not a denial"),
    pytest.param(ALLOWED, probe(error_code="EndpointConnectionError"), ProofStatus.NOT_PROVEN,
                 ("EndpointConnectionError",), id="after network error"),
    pytest.param(None, GONE, ProofStatus.NOT_PROVEN, ("no allowed access attempt",), id="no before-probe"),
    pytest.param(probe(error_code="AccessDenied"), GONE, ProofStatus.NOT_PROVEN,
                 ("already refused (AccessDenied)", "proves nothing"), id="refused before"),
    pytest.param(probe(error_code="NoSuchBucket"), GONE, ProofStatus.NOT_PROVEN,
                 ("already failed (NoSuchBucket)",), id="bucket missing before"),
    pytest.param(probe(allowed=True, key="AKIAOTHER00000000001"), GONE, ProofStatus.NOT_PROVEN,
                 ("differ",), id="before made with another key"),
    pytest.param(probe(allowed=True, target="s3://other-bucket/"), GONE, ProofStatus.NOT_PROVEN,
                 ("differ",), id="before made on another target"),
])
def test_judge_proof(before: Any, after: Any, status: ProofStatus, words: tuple[str, ...]) -> None:
    got, reason = judge_proof(before, after)
    assert got == status
    for word in words:
        assert word in reason
    assert reason.endswith(".") and "\n" not in reason
    if after is None:
        assert "succeeded" not in reason and "refused" not in reason  # no attempt: no outcome claimed


def test_a_before_probe_from_an_earlier_run_says_so() -> None:
    status, reason = judge_proof(ALLOWED, GONE, before_from_earlier_run=True)
    assert status == ProofStatus.PROVEN and "recorded by an earlier run" in reason


def test_proof_record_has_exactly_the_documented_fields() -> None:
    rev = KeyRevocation("affiliate", KEY, False, False, None, GONE, True, already_revoked=True,
                        status=ProofStatus.NOT_PROVEN, reason="why.", probe_key=KEY)
    proof = rev.proof()
    assert set(proof) == {"status", "reason", "denied", "before", "after", "deactivated", "deleted",
                          "already_revoked", "user", "probe_key", "kind", "method", "last_used", "delete_due",
                          "outcome"}
    assert proof["status"] == "not_proven" and type(proof["status"]) is str
    assert proof["deleted"] is True  # deleted by an earlier run
