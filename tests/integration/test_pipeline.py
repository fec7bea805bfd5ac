"""Pipeline phases as the DAG calls them, against moto server: preflight refuses before any work."""

from __future__ import annotations

import pytest
import yaml

from residency import pipeline
from residency.errors import JurisdictionError, PolicyError


def write_policy(tmp_path, src: str, dst: str, **dest_extra) -> str:
    doc = {
        "migration_id": "preflight-test",
        "home_jurisdiction": "JP",
        "control_dir": "control",
        "sources": [{"uri": f"s3://{src}", "conn_id": "seoul"}],
        "destinations": {"s3": {"uri": f"s3://{dst}", "conn_id": "tokyo", **dest_extra}},
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def creds(admin):
    return lambda conn_id: admin


def test_destination_outside_home_jurisdiction_is_refused(tmp_path, make_bucket, creds, admin):
    src = make_bucket("ap-northeast-2")
    wrong = make_bucket("ap-northeast-2", prefix="not-home")  # a "destination" that is in Seoul
    admin.client("s3", "ap-northeast-2").put_object(Bucket=src, Key="a.jpg", Body=b"x", ContentType="image/jpeg")
    plan = pipeline.plan_run({"policy_path": write_policy(tmp_path, src, wrong)})
    rt = pipeline.Runtime(plan, creds)
    with pytest.raises(JurisdictionError, match=r"ap-northeast-2 \(jurisdiction KR\), not in JP: refused"):
        pipeline.preflight(rt)
    assert list(rt.ledger.iter_objects("preflight-test")) == []
    events = [r["event"] for r in rt.ledger.audit_records("preflight-test")]
    assert events == ["run.planned", "preflight.refused"]


def test_preflight_maps_every_bucket_and_records_declared_locations(tmp_path, make_bucket, creds):
    src = make_bucket("ap-northeast-2")
    dst = make_bucket("ap-northeast-1")
    plan = pipeline.plan_run({"policy_path": write_policy(tmp_path, src, dst)})
    result = pipeline.preflight(pipeline.Runtime(plan, creds))
    assert result["placements"][f"s3://{src}"]["jurisdiction"] == "KR"
    assert result["placements"][f"s3://{dst}"]["jurisdiction"] == "JP"
    assert result["placements"][f"s3://{dst}"]["source"] == "discovered"


def test_unreachable_source_is_named(tmp_path, make_bucket, creds):
    dst = make_bucket("ap-northeast-1")
    plan = pipeline.plan_run({"policy_path": write_policy(tmp_path, "no-such-bucket-anywhere", dst)})
    with pytest.raises(JurisdictionError, match="source s3://no-such-bucket-anywhere is not reachable with seoul"):
        pipeline.preflight(pipeline.Runtime(plan, creds))


def test_policy_changed_after_planning_is_refused(tmp_path, make_bucket, creds):
    path = write_policy(tmp_path, make_bucket("ap-northeast-2"), make_bucket("ap-northeast-1"))
    plan = pipeline.plan_run({"policy_path": path})
    with open(path, "a") as fh:
        fh.write("# edited\n")
    with pytest.raises(PolicyError, match="changed since this run was planned"):
        pipeline.Runtime(plan, creds)


def test_a_sqlite_ledger_is_refused_when_tasks_run_on_several_workers(tmp_path, pg_url):
    """Celery/Kubernetes workers share no disk: the manifest and every object's state must be
    in a database all of them reach. The refusal comes at ``plan``, before any work, naming the field."""
    path = write_policy(tmp_path, "seoul-src", "tokyo-dst")
    with pytest.raises(PolicyError) as refused:
        pipeline.plan_run({"policy_path": path}, {"run_id": "r1", "distributed": True})
    assert refused.value.field == "ledger_url" and "several workers" in str(refused.value)
    assert not (tmp_path / "control").exists() or not any((tmp_path / "control").rglob("*.db"))
    doc = yaml.safe_load(open(path))
    doc["ledger_url"] = pg_url
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(doc))
    plan = pipeline.plan_run({"policy_path": path}, {"run_id": "r1", "distributed": True})
    assert plan["run"]["distributed"] is True
    pipeline.plan_run({"policy_path": path}, {"run_id": "r1", "distributed": False})  # one machine: either is fine
