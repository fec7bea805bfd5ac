"""Inventory, copy and verify against moto server over HTTP."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from residency import checksums, inventory, transfer
from residency.ledger import COPIED, FAILED, VERIFIED, Ledger
from residency.policy import parse_policy
from residency.stores.s3 import S3Store, S3TransferConfig
from residency.uris import ObjectRef

MiB = 1024 * 1024


def body(size: int, seed: int) -> bytes:
    block = hashlib.sha256(f"{seed}".encode()).digest()
    return (block * (size // 32 + 1))[:size]


@pytest.fixture
def env(tmp_path, admin, moto_server, make_bucket):
    src_bucket = make_bucket("ap-northeast-2", versioned=True, prefix="seoul")
    dst_bucket = make_bucket("ap-northeast-1", prefix="tokyo")
    policy = parse_policy(
        {
            "migration_id": f"mig-{src_bucket}",
            "home_jurisdiction": "JP",
            "control_dir": str(tmp_path / "control"),
            "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
            "sources": [{"uri": f"s3://{src_bucket}", "conn_id": "seoul"}],
            "destinations": {"s3": {"uri": f"s3://{dst_bucket}", "conn_id": "tokyo"}},
            "transfer": {"multipart_threshold_mb": 6, "part_size_mb": 5, "shard_size": 4, "workers": 3},
        },
        path=str(tmp_path / "policy.yaml"),
    )
    store = S3Store(
        admin.s3_client_factory(),
        transfer=S3TransferConfig(multipart_threshold=6 * MiB, part_size=5 * MiB, read_chunk=5 * MiB),
        service=moto_server.endpoint_url,
    )
    ledger = Ledger(policy.ledger_url)
    ledger.create_schema()

    class Env:
        pass

    e = Env()
    e.policy, e.store, e.ledger, e.src, e.dst = policy, store, ledger, src_bucket, dst_bucket
    e.put = lambda key, data, ctype="image/jpeg": store.write(
        ObjectRef("s3", src_bucket, key), [data], content_type=ctype, create_only=False
    )
    return e


def run_all(e):
    inv = inventory.run_inventory(e.policy, e.ledger, lambda source: e.store)
    copies = [transfer.copy_shard(e.policy, e.ledger, s, e.store, e.store) for s in inv.shards]
    verifies = [transfer.verify_shard(e.policy, e.ledger, s, e.store, e.store) for s in inv.shards]
    return inv, copies, verifies


def total(results, attr):
    return sum(getattr(r, attr) for r in results)


def _put_selection_cases(env):
    env.put("a/photo.jpg", b"j" * 10)
    env.put("legacy/clip.mp4", b"m" * 10, "application/octet-stream")  # generic type: extension decides
    env.put("mislabelled.jpg", b"{}", "application/json")  # named .jpg, stored as JSON
    env.put("logs/app.log", b"log", "text/plain")
    env.put("voice/메모 1.m4a", b"a" * 10, "audio/mp4")
    env.put("exports/noext", b"x" * 4, "image/png")  # no extension: only the content type can decide


def test_inventory_selects_by_extension_and_heads_only_what_the_name_cannot_decide(env):
    _put_selection_cases(env)
    inv = inventory.run_inventory(env.policy, env.ledger, lambda source: env.store)
    assert inv.objects_listed == 6
    # .jpg/.mp4/.m4a decide by name (the mislabelled .jpg too: the name is what the
    # listing carries); .log is a known non-media type; only "noext" is HEAD'ed.
    assert inv.head_requests == 1
    assert inv.objects_in_scope == 5
    assert inv.by_media_type["image"]["objects"] == 3
    assert inv.by_media_type["video"]["objects"] == 1
    assert inv.by_media_type["audio"]["objects"] == 1
    assert inv.by_jurisdiction["KR"]["objects"] == 5
    records = [r for s in inv.shards for r in env.ledger.iter_shard(env.policy.migration_id, s["manifest"],
                                                                     s["shard"], s["last"])]
    assert sorted(r["src_uri"] for r in records) == sorted(
        f"s3://{env.src}/{k}" for k in ("a/photo.jpg", "legacy/clip.mp4", "mislabelled.jpg", "voice/메모 1.m4a",
                                        "exports/noext")
    )
    assert all(r["dst_uri"].startswith(f"s3://{env.dst}/{env.src}/") for r in records)
    assert all(r["src_version"] for r in records), "a versioned source is listed with versions: each is pinned"


def test_inventory_by_content_type_heads_every_object_and_the_stored_type_wins(env):
    _put_selection_cases(env)
    policy = dataclasses.replace(env.policy, selection=dataclasses.replace(env.policy.selection,
                                                                          decide_by="content_type"))
    inv = inventory.run_inventory(policy, env.ledger, lambda source: env.store)
    assert inv.head_requests == 6
    assert inv.objects_in_scope == 4  # the JSON named .jpg is out; generic octet-stream falls back to the name
    assert inv.by_media_type["image"]["objects"] == 2


def test_copy_and_verify_every_object_including_multipart_and_unicode(env):
    data = {
        "users/1001/アルバム/夏 休み.jpg": body(3000, 1),
        "사진/가족 사진.png": body(70_000, 2),
        "img/a+b%20c.webp": body(10, 3),
        "video/long clip.mp4": body(13 * MiB + 7, 4),  # above the 6 MiB threshold: UploadPartCopy
    }
    for key, value in data.items():
        env.put(key, value, "video/mp4" if key.endswith(".mp4") else "image/jpeg")
    inv, copies, verifies = run_all(env)
    assert len(inv.shards) == 1 and inv.objects_in_scope == 4
    assert total(copies, "copied") == 4 and total(copies, "failed") == 0
    assert sum(c.methods["server_side_multipart"] for c in copies) == 1
    assert total(verifies, "verified") == 4 and total(verifies, "failed") == 0
    for key, value in data.items():
        dst = env.store.stat(ObjectRef("s3", env.dst, f"{env.src}/{key}"))
        assert b"".join(env.store.read(dst.ref)) == value
        # Provenance: object tags where the copy kept the source's own metadata
        # (one CopyObject), metadata where a multipart copy had to name it.
        assert transfer.written_by_us(dst, env.policy.migration_id, f"s3://{env.src}/{key}", env.store)
        assert dst.content_type == ("video/mp4" if key.endswith(".mp4") else "image/jpeg")
        row = env.ledger.get_object(env.policy.migration_id, f"s3://{env.src}/{key}")
        assert row["state"] == VERIFIED
        assert row["verify_algorithm"] in ("crc32c", "md5")
        assert row["dst_checksums"][row["verify_algorithm"]] == (
            checksums.crc32c_hex(value) if row["verify_algorithm"] == "crc32c" else hashlib.md5(value).hexdigest()
        )


def test_rerun_resumes_and_copies_nothing_twice(env):
    for i in range(6):
        env.put(f"p/{i}.png", body(1000 + i, i), "image/png")
    run_all(env)
    inv, copies, verifies = run_all(env)
    assert inv.ledger == {"new": 0, "unchanged": 6, "requeued": 0, "failed": 0}
    assert total(copies, "copied") == 0
    assert total(copies, "already_verified") == 6
    assert total(verifies, "verified") == 0 and total(verifies, "already_verified") == 6


def test_source_changed_between_copy_and_verify_is_never_verified_and_rerun_repairs(env):
    env.put("changing.jpg", b"version one", "image/jpeg")
    env.put("steady.jpg", b"steady", "image/jpeg")
    inv = inventory.run_inventory(env.policy, env.ledger, lambda s: env.store)
    for shard in inv.shards:
        transfer.copy_shard(env.policy, env.ledger, shard, env.store, env.store)
    env.put("changing.jpg", b"version two!", "image/jpeg")  # the application writes meanwhile
    results = [transfer.verify_shard(env.policy, env.ledger, s, env.store, env.store) for s in inv.shards]
    assert total(results, "verified") == 1
    assert sum(r.verdicts["source_changed"] for r in results) == 1
    row = env.ledger.get_object(env.policy.migration_id, f"s3://{env.src}/changing.jpg")
    assert row["state"] == FAILED and "source_changed" in row["reason"]

    inv2, copies, verifies = run_all(env)  # a re-run re-queues the new version and replaces our old copy
    assert inv2.ledger["requeued"] == 1
    assert total(copies, "copied") == 1
    assert total(verifies, "verified") == 1
    dst = ObjectRef("s3", env.dst, f"{env.src}/changing.jpg")
    assert b"".join(env.store.read(dst)) == b"version two!"


def test_a_different_destination_object_is_never_overwritten(env):
    env.put("taken.jpg", b"ours", "image/jpeg")
    foreign = env.store.write(ObjectRef("s3", env.dst, f"{env.src}/taken.jpg"), [b"someone else's"],
                              content_type="image/jpeg")
    inv, copies, verifies = run_all(env)
    assert total(copies, "failed") == 1
    row = env.ledger.get_object(env.policy.migration_id, f"s3://{env.src}/taken.jpg")
    assert row["state"] == FAILED and "DestinationConflict" in row["reason"]
    assert b"".join(env.store.read(foreign.ref)) == b"someone else's"
    assert total(verifies, "verified") == 0


def test_identical_object_already_at_destination_is_counted_not_copied(env):
    env.put("same.png", b"same bytes", "image/png")
    env.store.write(ObjectRef("s3", env.dst, f"{env.src}/same.png"), [b"same bytes"], content_type="image/png")
    inv, copies, verifies = run_all(env)
    assert total(copies, "already_present") == 1 and total(copies, "copied") == 0
    assert total(verifies, "verified") == 1


def test_no_common_hash_falls_back_to_reading_both_sides(env, admin):
    # A legacy multipart upload without additional checksums: its ETag is no MD5 and
    # it has no CRC32C, so nothing on the source side is comparable.
    client = admin.client("s3", "ap-northeast-2")
    data = body(11 * MiB, 9)
    upload = client.create_multipart_upload(Bucket=env.src, Key="legacy.mp4", ContentType="video/mp4")
    parts = []
    for n, start in enumerate(range(0, len(data), 6 * MiB), start=1):
        resp = client.upload_part(Bucket=env.src, Key="legacy.mp4", UploadId=upload["UploadId"], PartNumber=n,
                                  Body=data[start : start + 6 * MiB])
        parts.append({"PartNumber": n, "ETag": resp["ETag"]})
    client.complete_multipart_upload(Bucket=env.src, Key="legacy.mp4", UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})
    src = env.store.stat(ObjectRef("s3", env.src, "legacy.mp4"))
    assert "md5" not in src.checksums and "crc32c" not in src.checksums
    inv, copies, verifies = run_all(env)
    assert total(verifies, "verified") == 1
    assert sum(v.methods["read_back_both"] for v in verifies) == 1


def test_corrupted_destination_is_a_mismatch_not_verified(env):
    env.put("x.jpg", body(5000, 5), "image/jpeg")
    inv = inventory.run_inventory(env.policy, env.ledger, lambda s: env.store)
    for shard in inv.shards:
        transfer.copy_shard(env.policy, env.ledger, shard, env.store, env.store)
    dst = ObjectRef("s3", env.dst, f"{env.src}/x.jpg")
    original = env.store.stat(dst)
    env.store.write(dst, [b"X" + body(5000, 5)[1:]], content_type="image/jpeg",
                    metadata=original.metadata, create_only=False)  # same size, one byte flipped
    results = [transfer.verify_shard(env.policy, env.ledger, s, env.store, env.store) for s in inv.shards]
    assert total(results, "verified") == 0
    assert sum(r.verdicts["mismatch"] for r in results) == 1
    assert env.ledger.get_object(env.policy.migration_id, f"s3://{env.src}/x.jpg")["state"] == FAILED


def test_dry_run_copies_nothing(env):
    env.put("d.jpg", b"dry", "image/jpeg")
    inv = inventory.run_inventory(env.policy, env.ledger, lambda s: env.store)
    results = [transfer.copy_shard(env.policy, env.ledger, s, env.store, env.store, dry_run=True) for s in inv.shards]
    assert total(results, "would_copy") == 1 and total(results, "copied") == 0
    assert list(env.store.list_objects(env.dst)) == []
    assert env.ledger.get_object(env.policy.migration_id, f"s3://{env.src}/d.jpg")["state"] != COPIED


def test_streamed_copy_between_services_preserves_bytes_metadata_and_verifies(env, admin):
    """Stores of different services cannot copy server-side: bytes stream through us."""
    other = S3Store(admin.s3_client_factory(),
                    transfer=S3TransferConfig(multipart_threshold=6 * MiB, part_size=5 * MiB, read_chunk=5 * MiB,
                                              stream_part_size=5 * MiB),
                    service="another-s3-service")
    data = {"s/small.jpg": body(40_000, 21), "s/big clip.mp4": body(17 * MiB + 3, 22)}
    for key, value in data.items():
        env.store.write(ObjectRef("s3", env.src, key), [value], content_type="video/mp4" if key.endswith("mp4") else "image/jpeg",
                        metadata={"uploader-id": "7"}, headers={"cache-control": "max-age=9"}, create_only=False)
    inv = inventory.run_inventory(env.policy, env.ledger, lambda s: env.store)
    copies = [transfer.copy_shard(env.policy, env.ledger, s, env.store, other) for s in inv.shards]
    assert sum(c.methods["streamed"] for c in copies) == 2
    verifies = [transfer.verify_shard(env.policy, env.ledger, s, env.store, other) for s in inv.shards]
    assert total(verifies, "verified") == 2
    for key, value in data.items():
        dst = other.stat(ObjectRef("s3", env.dst, f"{env.src}/{key}"))
        assert dst.metadata["uploader-id"] == "7" and dst.headers["cache-control"] == "max-age=9"
        assert dst.provenance["source-uri"].endswith(key.replace(" ", "%20"))
        assert dst.checksums["crc32c"] == checksums.crc32c_hex(value)
        assert b"".join(other.read(dst.ref)) == value


def test_write_refuses_bytes_that_do_not_match_the_source_checksum(env):
    """A corrupted read never becomes an object: the store checks before creating it."""
    from residency.errors import ChecksumMismatch

    good = body(12 * MiB, 30)
    bad = bytearray(good)
    bad[5] ^= 0x01
    expected = {"crc32c": checksums.crc32c_hex(good)}
    for size in (None, len(good)):  # buffered single part, and multipart when the size is known
        ref = ObjectRef("s3", env.dst, f"refused-{size}.mp4")
        with pytest.raises(ChecksumMismatch):
            env.store.write(ref, [bytes(bad[i : i + MiB]) for i in range(0, len(bad), MiB)],
                            content_type="video/mp4", size=size, expected=expected)
        assert [r.key for r in env.store.list_objects(env.dst, "refused")] == []
