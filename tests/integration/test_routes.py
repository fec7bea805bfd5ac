"""All four copy routes, s3->s3, s3->gs, gs->gs, gs->s3, against moto and fake-gcs-server.

Each route copies the same awkward set of objects (unicode keys, a streamed
multipart-sized one, custom metadata and content headers), verifies them, and
checks the metadata round trip and the provenance written at the destination.
"""

from __future__ import annotations

import hashlib

import pytest

from residency import checksums, inventory, transfer
from residency.ledger import VERIFIED, Ledger
from residency.policy import parse_policy
from residency.stores.gcs import GcsStore, GcsTransferConfig
from residency.stores.s3 import S3Store, S3TransferConfig
from residency.uris import ObjectRef

MiB = 1024 * 1024
ROUTES = ["s3->s3", "s3->gs", "gs->gs", "gs->s3"]
HEADERS = {
    "cache-control": "public, max-age=86400",
    "content-disposition": 'inline; filename="natsu.jpg"',
    "content-language": "ja",
}


def body(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // 32 + 1))[:size]


OBJECTS = {
    "users/1001/アルバム/夏 休み.jpg": (body(48_000, 1), "image/jpeg"),
    "사진/2021/가족 사진.png": (body(9_000, 2), "image/png"),
    "img/a+b%20c.webp": (body(700, 3), "image/webp"),
    "deep/a/b/c/d/e/clip.mp4": (body(9 * MiB + 11, 4), "video/mp4"),  # several parts / chunks
    "voice/memo.m4a": (body(0, 5), "audio/mp4"),  # empty media object
}


@pytest.fixture
def stores(admin, moto_server, gcs_admin, fake_gcs):
    s3 = S3Store(admin.s3_client_factory(),
                 transfer=S3TransferConfig(multipart_threshold=6 * MiB, part_size=5 * MiB, read_chunk=5 * MiB,
                                           stream_part_size=5 * MiB),
                 service=moto_server.endpoint_url, validates_upload_checksums=False)
    gs = GcsStore(gcs_admin.client(), transfer=GcsTransferConfig(chunk_size=1 * MiB, read_chunk=2 * MiB),
                  service=fake_gcs.endpoint_url)
    return {"s3": s3, "gs": gs}


@pytest.fixture
def make(make_bucket, make_gcs_bucket):
    def bucket(provider: str, role: str) -> str:
        if provider == "s3":
            return make_bucket("ap-northeast-2" if role == "src" else "ap-northeast-1", versioned=role == "src", prefix=role)
        return make_gcs_bucket(prefix=role)

    return bucket


@pytest.mark.parametrize("route", ROUTES)
def test_route_copies_verifies_and_keeps_metadata(route, stores, make, tmp_path):
    src_p, dst_p = route.split("->")
    src_bucket, dst_bucket = make(src_p, "src"), make(dst_p, "dst")
    src_store, dst_store = stores[src_p], stores[dst_p]
    for key, (data, ctype) in OBJECTS.items():
        src_store.write(ObjectRef(src_p, src_bucket, key), [data], content_type=ctype,
                        metadata={"uploader-id": "1001"}, headers=HEADERS)
    policy = parse_policy({
        "migration_id": f"route-{src_bucket}",
        "home_jurisdiction": "JP",
        "control_dir": str(tmp_path / "control"),
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "sources": [{"uri": f"{src_p}://{src_bucket}", "conn_id": "src", "to": dst_p, "location": "asia-northeast3"}],
        "destinations": {dst_p: {"uri": f"{dst_p}://{dst_bucket}", "conn_id": "dst", "location": "asia-northeast1"}},
        "transfer": {"multipart_threshold_mb": 6, "part_size_mb": 5, "shard_size": 3, "workers": 3},
    })
    ledger = Ledger(policy.ledger_url)
    ledger.create_schema()
    inv = inventory.run_inventory(policy, ledger, lambda s: src_store)
    assert inv.objects_in_scope == len(OBJECTS)
    copies = [transfer.copy_shard(policy, ledger, s, src_store, dst_store) for s in inv.shards]
    verifies = [transfer.verify_shard(policy, ledger, s, src_store, dst_store) for s in inv.shards]
    assert sum(c.failed for c in copies) == 0, [c.failures for c in copies]
    assert sum(v.verified for v in verifies) == len(OBJECTS), [v.failures for v in verifies]
    method = "server_side" if src_p == dst_p else "streamed"
    assert sum(c.methods[method] + c.methods[f"{method}_multipart"] for c in copies) == len(OBJECTS)

    rows = {r["src_uri"]: r for r in ledger.iter_objects(policy.migration_id)}
    assert {r["route"] for r in rows.values()} == {route}
    for key, (data, ctype) in OBJECTS.items():
        src_uri = f"{src_p}://{src_bucket}/{key}"
        assert rows[src_uri]["state"] == VERIFIED
        dst = dst_store.stat(ObjectRef(dst_p, dst_bucket, f"{src_bucket}/{key}"))
        assert b"".join(dst_store.read(dst.ref)) == data
        assert dst.content_type == ctype
        assert {h: dst.headers.get(h) for h in HEADERS} == HEADERS
        assert dst.metadata["uploader-id"] == "1001"
        assert transfer.written_by_us(dst, policy.migration_id, src_uri, dst_store)
        algorithm = rows[src_uri]["verify_algorithm"]
        assert algorithm in ("crc32c", "md5")
        assert rows[src_uri]["dst_checksums"][algorithm] == (
            checksums.crc32c_hex(data) if algorithm == "crc32c" else hashlib.md5(data).hexdigest()
        )


def test_source_changed_mid_stream_is_never_mixed(stores, make, tmp_path):
    """The source is overwritten between inventory and copy: the copy refuses, a re-run re-queues."""
    src_bucket, dst_bucket = make("gs", "src"), make("s3", "dst")
    gs, s3 = stores["gs"], stores["s3"]
    ref = ObjectRef("gs", src_bucket, "v/clip.mp4")
    gs.write(ref, [body(3 * MiB, 1)], content_type="video/mp4")
    policy = parse_policy({
        "migration_id": f"changed-{src_bucket}", "home_jurisdiction": "JP",
        "control_dir": str(tmp_path / "c"), "ledger_url": f"sqlite:///{tmp_path / 'l.db'}",
        "sources": [{"uri": f"gs://{src_bucket}", "conn_id": "g", "to": "s3"}],
        "destinations": {"s3": {"uri": f"s3://{dst_bucket}", "conn_id": "s"}},
    })
    ledger = Ledger(policy.ledger_url)
    ledger.create_schema()
    inv = inventory.run_inventory(policy, ledger, lambda s: gs)
    gs.write(ref, [body(3 * MiB, 2)], content_type="video/mp4", create_only=False)  # a new generation
    result = transfer.copy_shard(policy, ledger, inv.shards[0], gs, s3)
    assert result.failed == 1 and "SourceChanged" in result.failures[0]["reason"]
    assert list(s3.list_objects(dst_bucket)) == []
    inv = inventory.run_inventory(policy, ledger, lambda s: gs)
    assert inv.ledger["requeued"] == 1
    transfer.copy_shard(policy, ledger, inv.shards[0], gs, s3)
    assert transfer.verify_shard(policy, ledger, inv.shards[0], gs, s3).verified == 1
    assert b"".join(s3.read(ObjectRef("s3", dst_bucket, f"{src_bucket}/v/clip.mp4"))) == body(3 * MiB, 2)


@pytest.mark.parametrize("route", ["s3->gs", "gs->gs"])
def test_policy_asking_for_sha256_proves_every_object_with_it(route, stores, make, tmp_path):
    """SHA-256 from the streamed bytes (or the source read back) must equal the destination's."""
    src_p, dst_p = route.split("->")
    src_bucket, dst_bucket = make(src_p, "src"), make(dst_p, "dst")
    src_store, dst_store = stores[src_p], stores[dst_p]
    data = {"a/夏.jpg": body(70_000, 8), "b/clip.mp4": body(7 * MiB, 9)}
    for key, value in data.items():
        src_store.write(ObjectRef(src_p, src_bucket, key), [value], content_type="image/jpeg")
    policy = parse_policy({
        "migration_id": f"sha-{src_bucket}", "home_jurisdiction": "JP",
        "control_dir": str(tmp_path / "c"), "ledger_url": f"sqlite:///{tmp_path / 'l.db'}",
        "sources": [{"uri": f"{src_p}://{src_bucket}", "conn_id": "a", "to": dst_p}],
        "destinations": {dst_p: {"uri": f"{dst_p}://{dst_bucket}", "conn_id": "b"}},
        "transfer": {"sha256": True},
    })
    ledger = Ledger(policy.ledger_url)
    ledger.create_schema()
    inv = inventory.run_inventory(policy, ledger, lambda s: src_store)
    for shard in inv.shards:
        transfer.copy_shard(policy, ledger, shard, src_store, dst_store)
        assert transfer.verify_shard(policy, ledger, shard, src_store, dst_store).verified == len(data)
    for row in ledger.iter_objects(policy.migration_id):
        key = row["src_uri"].split("/", 3)[3]
        assert row["verify_algorithm"] == "sha256"
        assert row["dst_checksums"]["sha256"] == hashlib.sha256(data[key]).hexdigest()
        # Streamed copies hashed the bytes on the way; server-side copies read the source back.
        assert row["verify_method"] == ("read_back" if src_p != dst_p else "read_back_both")
