"""Policy validation: every bad field fails before any work, naming the field and value."""

from __future__ import annotations

import copy

import pytest
import yaml

from residency.errors import PolicyError
from residency.pipeline import validate_params
from residency.policy import MiB, load_policy, parse_policy

GOOD = {
    "migration_id": "line-media-jp",
    "home_jurisdiction": "JP",
    "sources": [
        {"uri": "s3://seoul-line-photos", "conn_id": "aws_seoul"},
        {"uri": "s3://seoul-line-media/prefix/", "conn_id": "aws_seoul"},
    ],
    "destinations": {"s3": {"uri": "s3://tokyo-line-media", "conn_id": "aws_tokyo"}},
    "selection": {"media_types": ["image", "video"], "exclude_prefixes": ["tmp/"]},
    "transfer": {"multipart_threshold_mb": 16, "part_size_mb": 8, "shard_size": 50, "workers": 4},
    "references": {
        "database_url": "sqlite:///app.db",
        "columns": [{"table": "photos", "key": "id", "column": "url"}],
    },
    "revoke": [
        {"conn_id": "aws_iam", "user": "line-affiliate-cn", "access_keys": ["AKIAABCDEFGHIJKLMNOP"],
         "probe_conn_id": "affiliate_probe", "probe_uri": "s3://seoul-line-photos"}
    ],
}


def with_change(path: str, value):
    doc = copy.deepcopy(GOOD)
    target = doc
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if value is KeyError:
        del target[int(last) if last.isdigit() else last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return doc


def test_good_policy_parses(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(GOOD, allow_unicode=True))
    policy = load_policy(path)
    assert policy.migration_id == "line-media-jp"
    assert len(policy.sha256) == 64
    assert policy.transfer.multipart_threshold == 16 * MiB
    assert policy.sources[1].prefix == "prefix/"
    assert policy.route(policy.sources[0]) == "s3->s3"
    assert policy.references.database_url == f"sqlite:///{tmp_path / 'app.db'}"  # relative to the policy
    assert policy.ledger_url.startswith("sqlite:///") and str(tmp_path) in policy.ledger_url
    dst = policy.destination_for(policy.sources[0]).dst_ref(policy.sources[0].ref.with_key("a/b.jpg"))
    assert dst.uri == "s3://tokyo-line-media/seoul-line-photos/a/b.jpg"


@pytest.mark.parametrize(
    "path, value, field",
    [
        pytest.param("migration_id", "Bad Id!", "migration_id", id="migration id charset"),
        pytest.param("migration_id", KeyError, "migration_id", id="missing migration id"),
        pytest.param("home_jurisdiction", "Japan", "home_jurisdiction", id="country not iso"),
        pytest.param("sources", [], "sources", id="no sources"),
        pytest.param("sources.0.uri", "https://seoul", "sources[0].uri", id="source uri scheme"),
        pytest.param("sources.0.conn_id", "bad conn id", "sources[0].conn_id", id="conn id charset"),
        pytest.param("sources.1.uri", "s3://seoul-line-photos", "sources[1].uri", id="listed twice"),
        pytest.param("sources.0.to", "gs", "sources[0].to", id="route without destination"),
        pytest.param("sources.0.colour", "red", "sources[0].colour", id="unknown source field"),
        pytest.param("destinations.s3.uri", "gs://tokyo", "destinations.s3.uri", id="destination provider mismatch"),
        pytest.param("destinations.s3.key_template", "{bucket}/x", "destinations.s3.key_template",
                     id="template without key"),
        pytest.param("destinations.s3.uri", "s3://seoul-line-photos", "sources[0].uri", id="source is destination"),
        pytest.param("selection.media_types", ["image", "pdf"], "selection.media_types", id="media type"),
        pytest.param("transfer.part_size_mb", 4, "transfer.part_size_mb", id="part below s3 minimum"),
        pytest.param("transfer.part_size_mb", 32, "transfer.part_size_mb", id="part above threshold"),
        pytest.param("transfer.workers", "8", "transfer.workers", id="workers not int"),
        pytest.param("transfer.shard_size", 0, "transfer.shard_size", id="shard size zero"),
        pytest.param("references.columns", [{"table": "photos; drop", "key": "id", "column": "url"}],
                     "references.columns[0].table", id="sql identifier"),
        pytest.param("references.database_url", "app.db", "references.database_url", id="db url"),
        pytest.param("revoke.0.access_keys", ["not-a-key"], "revoke[0].access_keys", id="access key id"),
        pytest.param("revoke.0.user", "a b", "revoke[0].user", id="iam user name"),
        pytest.param("revoke.0.probe_uri", KeyError, "revoke[0].probe_uri", id="probe without uri"),
        pytest.param("unexpected", 1, "unexpected", id="unknown top-level field"),
        # State 8: a selection or sources that would silently select everything, or twice.
        pytest.param("selection.exclude_prefixes", ["tmp/", ""], "selection.exclude_prefixes[1]",
                     id="empty exclude prefix excludes everything"),
        pytest.param("sources.1.uri", "s3://seoul-line-photos/2021/", "sources[1].uri",
                     id="prefix inside a whole-bucket source"),
        pytest.param("sources.0.uri", "s3://seoul-line-media/pre", "sources[1].uri",
                     id="prefix that is a string prefix of another"),
        # State 10: a probe on another provider proves nothing about an IAM key.
        pytest.param("revoke.0.probe_uri", "gs://seoul-line-photos", "revoke[0].probe_uri", id="probe on gcs"),
        pytest.param("references.columns", [{"table": "t", "key": "id", "column": "c", "kind": "xml"}],
                     "references.columns[0].kind", id="column kind"),
        pytest.param("references.columns", [{"table": "t", "key": "id", "column": "c"},
                                            {"table": "t", "key": "id", "column": "c", "kind": "text"}],
                     "references.columns[1].column", id="column listed twice"),
        pytest.param("references.accepted_residual", [{"uri": "s3://seoul-line-media/logs/*"}],
                     "references.accepted_residual[0].reason", id="accepted residual without reason"),
        pytest.param("references.accepted_residual", [{"reason": "kept abroad on purpose"}],
                     "references.accepted_residual[0]", id="accepted residual matching nothing"),
        pytest.param("references.hosts", [{"host": "CDN.example.kr", "bucket": "s3://seoul-line-photos"}],
                     "references.hosts[0].host", id="cdn host not lower case"),
        pytest.param("references.hosts", [{"host": "cdn.example.kr", "bucket": "s3://seoul-line-photos/p"}],
                     "references.hosts[0].bucket", id="cdn bucket with a key"),
        pytest.param("references.conn_id", "app_db", "references.database_url", id="conn id and url both"),
        pytest.param("approvals", {"approvers": "alice"}, "approvals.approvers", id="approvers not a list"),
        pytest.param("approvals", {"cutover": {"timeout_hours": 0}}, "approvals.cutover.timeout_hours",
                     id="timeout not positive"),
        pytest.param("approvals", {"delete": {}}, "approvals.delete", id="unknown approval step"),
        pytest.param("selection.decide_by", "magic", "selection.decide_by", id="decide_by"),
        pytest.param("sources.0.decide_by", "size", "sources[0].decide_by", id="source decide_by"),
        pytest.param("sources.0.inventory_report", "s3://reports/seoul/data/x.csv.gz", "sources[0].inventory_report",
                     id="report that is not a manifest"),
        pytest.param("sources.0.inventory_report", "gs://reports/manifest.json", "sources[0].inventory_report",
                     id="report on gcs"),
        pytest.param("transfer.shard_mb", 0, "transfer.shard_mb", id="shard bytes zero"),
        pytest.param("cutover", {"catch_up_passes": -1}, "cutover.catch_up_passes", id="negative catch-up passes"),
        pytest.param("cutover", {"freeze": "yes"}, "cutover.freeze", id="freeze not a boolean"),
        pytest.param("cutover", {"thaw": True}, "cutover.thaw", id="unknown cutover field"),
        pytest.param("references.columns.0", {"table": "photos", "key": "id", "column": "url", "paths": ["$.a"]},
                     "references.columns[0].paths", id="paths on a url column"),
        pytest.param("references.columns.0", {"table": "t", "key": "id", "column": "doc", "kind": "json",
                                              "paths": ["$.a", "avatar.url"]},
                     "references.columns[0].paths[1]", id="json path without $"),
        pytest.param("references.discover", {"schemas": ["bad schema"]}, "references.discover.schemas",
                     id="discover schema not an identifier"),
        pytest.param("references.discover", {"exclude": ["a.b.c"]}, "references.discover.exclude",
                     id="discover exclude too deep"),
    ],
)
def test_bad_field_is_named_with_its_value(path, value, field):
    with pytest.raises(PolicyError) as err:
        parse_policy(with_change(path, value))
    assert err.value.field == field
    assert f"'{field}'" in str(err.value)
    if value is not KeyError and field == path.replace(".0.", "[0].").replace(".1.", "[1]."):
        assert repr(value) in str(err.value)


def test_two_sources_into_one_destination_need_the_source_bucket_in_the_template():
    doc = with_change("destinations.s3.key_template", "{key}")
    with pytest.raises(PolicyError) as err:
        parse_policy(doc)
    assert err.value.field == "destinations.s3.key_template" and "collide" in err.value.reason


def test_destination_prefix_without_slash_is_a_folder():
    doc = with_change("destinations.s3.uri", "s3://tokyo-line-media/migrated")
    policy = parse_policy(doc)
    source = policy.sources[0]
    destination = policy.destination_for(source)
    assert destination.ref.key == "migrated/"
    assert destination.dst_ref(source.ref.with_key("a.jpg")).uri == "s3://tokyo-line-media/migrated/seoul-line-photos/a.jpg"
    assert destination.key_prefix(policy.sources[1]) == "migrated/seoul-line-media/prefix/"


@pytest.mark.parametrize("field, url", [
    ("references.database_url", "postgresql+psycopg2://app:s3cr3t-pw@db.example/app"),
    ("ledger_url", "postgresql://residency:s3cr3t-pw@db.example/residency"),
])
def test_a_password_in_the_policy_is_refused_without_printing_it(field, url):
    doc = copy.deepcopy(GOOD)
    if field == "ledger_url":
        doc["ledger_url"] = url
    else:
        doc["references"]["database_url"] = url
    with pytest.raises(PolicyError) as err:
        parse_policy(doc)
    assert err.value.field == field
    assert "s3cr3t-pw" not in str(err.value) and "***" in str(err.value)
    assert "Airflow connection" in str(err.value)


def test_a_malformed_database_url_never_prints_its_password():
    doc = copy.deepcopy(GOOD)
    doc["references"]["database_url"] = "postgresql+psycopg2://app:s3cr3t-pw@db.example:notaport/app"
    with pytest.raises(PolicyError) as err:
        parse_policy(doc)
    assert "s3cr3t-pw" not in str(err.value)


def test_databases_by_connection_and_accepted_residual():
    doc = copy.deepcopy(GOOD)
    doc["ledger_conn_id"] = "residency_ledger"
    doc["references"] = {
        "conn_id": "app_db",
        "columns": [{"table": "messages", "key": "id", "column": "body", "kind": "text"},
                    {"table": "settings", "key": "id", "column": "prefs", "kind": "json"}],
        "hosts": [{"host": "media.line-cdn.kr", "bucket": "s3://seoul-line-photos", "to_host": "media.line-cdn.jp"}],
        "accepted_residual": [{"uri": "s3://seoul-line-media/logs/*", "reason": "logs are not media; they stay"},
                              {"column": "messages.body", "key": 17, "reason": "a quoted link in a support ticket"}],
    }
    policy = parse_policy(doc)
    assert policy.ledger_url is None and policy.ledger_conn_id == "residency_ledger"
    refs = policy.references
    assert refs.database_url is None and refs.conn_id == "app_db"
    assert [c.kind for c in refs.columns] == ["text", "json"]
    assert refs.hosts[0].to_host == "media.line-cdn.jp"
    logs, ticket = refs.accepted_residual
    assert logs.matches("s3://seoul-line-media/logs/2021/a.log", "messages.body", "1")
    assert not logs.matches("s3://seoul-line-media/photos/a.jpg", "messages.body", "1")
    assert ticket.matches(None, "messages.body", "17") and not ticket.matches(None, "messages.body", "18")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(PolicyError, match="policy_path"):
        load_policy(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)


@pytest.mark.parametrize(
    "params, field",
    [({}, "params.policy_path"), ({"policy_path": "  "}, "params.policy_path"),
     ({"policy_path": "p.yaml", "dry_run": "yes"}, "params.dry_run")],
)
def test_bad_params(params, field):
    with pytest.raises(PolicyError) as err:
        validate_params(params)
    assert err.value.field == field


def test_selection_rules():
    policy = parse_policy(GOOD)
    sel = policy.selection
    assert sel.media_type("a.JPG", "image/jpeg") == "image"
    assert sel.media_type("a.bin", "image/png; charset=binary") == "image"
    assert sel.media_type("a.mp4", "application/octet-stream") == "video"
    assert sel.media_type("a.jpg", "application/json") is None
    assert sel.media_type("a.mp3", "audio/mpeg") is None  # audio not selected by this policy
    assert sel.media_type("tmp/a.jpg", "image/jpeg") is None  # excluded prefix


def test_selection_by_name_decides_only_what_a_name_can():
    sel = parse_policy(GOOD).selection
    assert sel.decide_by == "extension"
    assert sel.by_name("a/b.JPG") == (True, "image")
    assert sel.by_name("a/b.json") == (True, None)  # a known type that is no media
    assert sel.by_name("logs/app.log") == (True, None)
    assert sel.by_name("a/noext") == (False, None)  # only the content type can tell
    assert sel.by_name("a/b.unknownext") == (False, None)
    assert sel.by_name("tmp/a.jpg") == (True, None)  # excluded prefix
    assert sel.by_name("a/b.mp3") == (True, None)  # audio, which this policy does not select


def test_shipped_example_policy_is_valid():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "include" / "policies" / "example.yaml"
    policy = load_policy(example)
    assert policy.migration_id == "line-media-jp"
    assert policy.revocations[0].access_keys is None  # "all"



def test_approvals_default_then_per_step():
    doc = copy.deepcopy(GOOD)
    doc["approvals"] = {"approvers": ["alice"], "timeout_hours": 48, "revoke": {"approvers": ["carol", "dave"]}}
    policy = parse_policy(doc)
    assert policy.approvals["cutover"].approvers == ("alice",) and policy.approvals["cutover"].timeout_hours == 48
    assert policy.approvals["revoke"].approvers == ("carol", "dave") and policy.approvals["revoke"].timeout_hours == 48
    assert parse_policy(GOOD).approvals["cutover"].approvers == ()  # default: any user allowed to answer


def test_cutover_and_discovery_defaults_and_json_paths():
    policy = parse_policy(GOOD)
    assert (policy.cutover.catch_up_passes, policy.cutover.freeze) == (3, False)
    assert policy.references.discover is not None and policy.references.discover.schemas == (None,)
    doc = with_change("references.discover", False)
    doc["references"]["columns"].append({"table": "users", "key": "id", "column": "prefs", "kind": "json",
                                         "paths": ["$.avatar.url", "$..href"]})
    doc["cutover"] = {"catch_up_passes": 0, "freeze": True}
    policy = parse_policy(doc)
    assert policy.references.discover is None and policy.references.columns[1].paths == ("$.avatar.url", "$..href")
    assert (policy.cutover.catch_up_passes, policy.cutover.freeze) == (0, True)
