"""Catch-up passes against a moto server over HTTP: uploads that arrive after the
inventory are found by listing again with the ledger as the baseline, copied and
verified; passes stop when a listing finds nothing, or when the delta stops shrinking."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from residency import inventory, transfer
from residency.catchup import catch_up
from residency.ledger import Ledger
from residency.policy import parse_policy
from residency.stores.s3 import S3Store

SEOUL, TOKYO = "ap-northeast-2", "ap-northeast-1"


@pytest.fixture
def world(admin, tmp_path) -> dict[str, Any]:
    src, dst = f"src-{uuid.uuid4().hex[:8]}", f"dst-{uuid.uuid4().hex[:8]}"
    client = admin.client("s3", SEOUL)
    client.create_bucket(Bucket=src, CreateBucketConfiguration={"LocationConstraint": SEOUL})
    admin.client("s3", TOKYO).create_bucket(Bucket=dst, CreateBucketConfiguration={"LocationConstraint": TOKYO})
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.create_schema()
    policy = parse_policy({
        "migration_id": "catchup-test", "home_jurisdiction": "JP",
        "sources": [{"uri": f"s3://{src}", "conn_id": "aws"}],
        "destinations": {"s3": {"uri": f"s3://{dst}", "conn_id": "aws"}},
        "ledger_url": ledger.url,
    })
    store = S3Store(admin.s3_client_factory(), default_region=SEOUL, service=admin.endpoint_url)
    return {"client": client, "src": src, "dst": dst, "ledger": ledger, "policy": policy,
            "stores": lambda _source: (store, store)}


def put(world: dict[str, Any], key: str, body: bytes = b"\xff\xd8\xff photo") -> None:
    world["client"].put_object(Bucket=world["src"], Key=key, Body=body, ContentType="image/jpeg")


def migrate(world: dict[str, Any]) -> None:
    """The DAG's inventory, copy and verify of every shard."""
    policy, ledger, stores = world["policy"], world["ledger"], world["stores"]
    result = inventory.run_inventory(policy, ledger, lambda s: stores(s)[0])
    for shard in result.shards:
        store = stores(None)[0]
        transfer.copy_shard(policy, ledger, shard, store, store)
        transfer.verify_shard(policy, ledger, shard, store, store)


def states(world: dict[str, Any]) -> dict[str, str]:
    prefix = f"s3://{world['src']}/"
    return {r["src_uri"].removeprefix(prefix): r["state"] for r in world["ledger"].iter_objects("catchup-test")}


def test_uploads_after_the_inventory_are_copied_and_verified(world):
    for i in range(3):
        put(world, f"a/{i}.jpg")
    migrate(world)
    # The live application: two new photos, and one replaced by another version.
    put(world, "late/1.jpg")
    put(world, "late/2.jpg")
    put(world, "a/0.jpg", b"\xff\xd8\xff edited photo")

    result = catch_up(world["policy"], world["ledger"], world["stores"], max_passes=3)

    first, second = result.passes
    assert (first.new, first.changed, first.to_copy, first.verified, first.failed) == (2, 1, 3, 3, 0)
    assert (second.new, second.changed) == (0, 0)
    assert result.converged and result.remaining == 0 and result.delta == 3
    assert set(states(world).values()) == {"verified"} and len(states(world)) == 5
    dst = world["client"].get_object(Bucket=world["dst"], Key=f"{world['src']}/a/0.jpg")["Body"].read()
    assert dst == b"\xff\xd8\xff edited photo"  # the new version, not the inventoried one


def test_nothing_new_is_one_listing_and_converged(world):
    put(world, "a.jpg")
    migrate(world)
    result = catch_up(world["policy"], world["ledger"], world["stores"], max_passes=3)
    assert len(result.passes) == 1 and result.converged and result.delta == 0
    assert result.stopped_because == "a listing found nothing new or changed"


def test_passes_stop_when_the_delta_does_not_shrink(world, monkeypatch):
    """A writer as fast as the passes: each listing finds as much as the last; the
    passes stop (the final pass under the freeze is what closes the gap)."""
    put(world, "a.jpg")
    migrate(world)
    counter = iter(range(1000))
    real = inventory.run_inventory

    def writer_then_list(*args, **kwargs):
        for _ in range(2):
            put(world, f"live/{next(counter)}.jpg")
        return real(*args, **kwargs)

    monkeypatch.setattr(inventory, "run_inventory", writer_then_list)
    result = catch_up(world["policy"], world["ledger"], world["stores"], max_passes=5)
    assert [p.new for p in result.passes] == [2, 2]
    assert not result.converged and "did not shrink (2 -> 2)" in result.stopped_because
    assert result.remaining == 0  # what each pass found was still copied and verified


def test_dry_run_lists_once_and_copies_nothing(world):
    put(world, "a.jpg")
    migrate(world)
    put(world, "late.jpg")
    result = catch_up(world["policy"], world["ledger"], world["stores"], max_passes=3, dry_run=True)
    assert len(result.passes) == 1 and result.passes[0].new == 1 and result.passes[0].copied == 0
    assert states(world)["late.jpg"] == "discovered"
