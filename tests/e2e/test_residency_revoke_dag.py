"""End to end: real `airflow dags test` runs of residency_revoke on the demo estate, before any migration.

LINE cut the affiliate off at once, before the migration finished: this DAG runs
the revocation on its own. The estate (moto with IAM enforced, fake-gcs-server) is
the migration e2e's fixture, one instance for this module. The approval is
answered by the rollback e2e's :class:`Approver` (the REST API's own handler).
What moto enforces, and so what is asserted: role trust on AssumeRole, the role's
deny on its older session, deleted keys; grants and console passwords are proven
by reading the configuration back (the method is asserted).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_residency_migration_dag import airflow_env, estate  # noqa: F401 - the migration's fixtures
from test_residency_rollback_dag import notes, step_run  # noqa: F401 - the run-note fake

pytestmark = pytest.mark.e2e
DAG_ID = "residency_revoke"


def revoke_run(estate, airflow_env, notes, out: Path, approve: str | None, **conf):  # noqa: F811
    return step_run(DAG_ID, estate, airflow_env, notes, out, approve=approve, **conf)


def test_revoke_first_then_rerun_records_already_revoked(estate, airflow_env, notes, tmp_path):  # noqa: F811
    est, _ = estate
    # A dry run changes nothing and lists every path.
    plan_out = tmp_path / "plan"
    outcome, _ = revoke_run(estate, airflow_env, notes, plan_out, None, dry_run=True)
    assert outcome.succeeded, f"{outcome.state}, failed {outcome.failed_tasks}: see {outcome.log_path}"
    plan = json.loads((plan_out / "revoke-plan.json").read_text())
    assert plan["verdict"] == "PLAN" and plan["records"] == []
    assert {p["kind"] for p in plan["plan"]} >= {"access_key", "role_trust", "sessions", "bucket_policy",
                                                 "bucket_acl", "login_profile"}
    assert {p["outcome"] for p in plan["plan"]} == {"would_revoke"}

    out = tmp_path / "approved"
    outcome, asked = revoke_run(estate, airflow_env, notes, out, "Approve")
    assert outcome.succeeded, f"{outcome.state}, failed {outcome.failed_tasks}: see {outcome.log_path}"
    assert "role trust" in asked["body"] and "bucket policy" in asked["body"]
    ev = json.loads((out / "revoke-evidence.json").read_text())
    assert ev["verdict"] == "REVOKED" and ev["problems"] == [] and ev["recheck"]["open"] == []
    proofs = {(r["kind"], r["proof"]["method"], r["proof"]["status"]) for r in ev["records"]}
    assert ("access_key", "denied_attempt", "proven") in proofs
    assert ("role_trust", "denied_attempt", "proven") in proofs
    assert ("sessions", "denied_attempt", "proven") in proofs  # the role session issued before: refused
    assert ("bucket_policy", "read_back", "proven") in proofs and ("bucket_acl", "read_back", "proven") in proofs
    assert ev["audit"]["verified"] and notes.note.startswith("REVOKED: ")

    again = tmp_path / "again"
    outcome, _ = revoke_run(estate, airflow_env, notes, again, "Approve")
    assert outcome.succeeded, f"{outcome.state}, failed {outcome.failed_tasks}: see {outcome.log_path}"
    ev = json.loads((again / "revoke-evidence.json").read_text())
    assert ev["verdict"] == "REVOKED"
    assert {r["proof"]["outcome"] for r in ev["records"]} == {"already_revoked"}
