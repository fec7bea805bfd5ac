"""The migration under faults: a fault-injecting proxy in front of the emulators.

Transient faults (503 SlowDown, 429, 500, connection resets, truncated bodies)
must be absorbed by retries: the migration completes and every object verifies.
Corruption in transit (bits flipped in request or response bodies) must never
be verified, and a re-run without faults repairs it. A worker killed with
SIGKILL mid-copy leaves nothing marked copied, and a re-run completes.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import time
from dataclasses import replace

import pytest

from residency import inventory, transfer
from residency.ledger import COPIED, VERIFIED, Ledger
from residency.localcloud.faultproxy import FaultProxy, FaultRules
from residency.policy import parse_policy
from residency.retry import RetryPolicy
from residency.stores.s3 import S3Store, S3TransferConfig
from residency.uris import ObjectRef

MiB = 1024 * 1024
FAST_RETRY = RetryPolicy(max_attempts=12, initial_backoff=0.01, max_backoff=0.05, deadline=60)
TRANSIENT = FaultRules(error_rate=0.08, reset_rate=0.04, truncate_rate=0.04, seed=11)
# Bits flip in object bodies (uploads and downloads of bucket/key paths). Control
# responses (XML listings) are protected by TCP and TLS checksums in real life.
CORRUPTING = FaultRules(flip_request_rate=0.15, flip_response_rate=0.15, seed=5,
                        methods=("GET", "PUT"), path_pattern=r"^/[^/?]+/[^?]+")


def body(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // 32 + 1))[:size]


@pytest.fixture
def proxy(moto_server):
    with FaultProxy(moto_server.endpoint_url) as p:
        yield p


def s3_store(creds, service: str) -> S3Store:
    return S3Store(
        creds.s3_client_factory(),
        transfer=S3TransferConfig(multipart_threshold=6 * MiB, part_size=5 * MiB, read_chunk=5 * MiB,
                                  stream_part_size=5 * MiB),
        retry=FAST_RETRY,
        service=service,
        validates_upload_checksums=False,  # moto stores a client's checksum unchecked
    )


@pytest.fixture
def setup(tmp_path, admin, make_bucket, proxy):
    src = make_bucket("ap-northeast-2", versioned=True, prefix="fault-src")
    dst = make_bucket("ap-northeast-1", prefix="fault-dst")
    via_proxy = replace(admin, endpoint_url=proxy.endpoint_url)
    policy = parse_policy({
        "migration_id": f"faults-{src}",
        "home_jurisdiction": "JP",
        "control_dir": str(tmp_path / "control"),
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "sources": [{"uri": f"s3://{src}", "conn_id": "seoul"}],
        "destinations": {"s3": {"uri": f"s3://{dst}", "conn_id": "tokyo"}},
        "transfer": {"multipart_threshold_mb": 6, "part_size_mb": 5, "shard_size": 8, "workers": 4},
    })
    direct = s3_store(admin, "direct")
    data = {f"m/{i:02d} 写真.jpg": body(20_000 + i * 7_919, i) for i in range(14)}
    data["m/long video.mp4"] = body(13 * MiB + 5, 99)
    for key, value in data.items():
        direct.write(ObjectRef("s3", src, key), [value], content_type="video/mp4" if key.endswith("mp4") else "image/jpeg")
    ledger = Ledger(policy.ledger_url)
    ledger.create_schema()
    return {
        "policy": policy, "ledger": ledger, "data": data, "src": src, "dst": dst, "direct": direct,
        # Different service names force the streamed path: every byte crosses the proxy twice.
        "src_store": s3_store(via_proxy, "seoul-service"),
        "dst_store": s3_store(via_proxy, "tokyo-service"),
    }


def migrate(s, src_store=None, dst_store=None):
    src_store, dst_store = src_store or s["src_store"], dst_store or s["dst_store"]
    inv = inventory.run_inventory(s["policy"], s["ledger"], lambda source: src_store)
    copies = [transfer.copy_shard(s["policy"], s["ledger"], sh, src_store, dst_store) for sh in inv.shards]
    verifies = [transfer.verify_shard(s["policy"], s["ledger"], sh, src_store, dst_store) for sh in inv.shards]
    return copies, verifies


def states(s) -> dict[str, str]:
    return {r["src_uri"]: r["state"] for r in s["ledger"].iter_objects(s["policy"].migration_id)}


def assert_destination_matches_source(s) -> None:
    for key, value in s["data"].items():
        dst = ObjectRef("s3", s["dst"], f"{s['src']}/{key}")
        assert b"".join(s["direct"].read(dst)) == value, key


def test_transient_faults_are_retried_and_everything_verifies(setup, proxy):
    proxy.set_rules(TRANSIENT)
    copies, verifies = migrate(setup)
    stats = proxy.stats
    injected = sum(v for k, v in stats.items() if k.startswith(("error_", "reset", "truncate")))
    assert injected >= 5, stats  # the faults really happened
    assert set(states(setup).values()) == {VERIFIED}, [c.failures for c in copies] + [v.failures for v in verifies]
    assert sum(v.verified for v in verifies) == len(setup["data"])
    assert_destination_matches_source(setup)


def test_corruption_in_transit_is_never_verified_and_a_rerun_repairs_it(setup, proxy):
    proxy.set_rules(CORRUPTING)
    copies, verifies = migrate(setup)
    stats = proxy.stats
    assert stats.get("flip_request", 0) + stats.get("flip_response", 0) >= 3, stats
    # Whatever state each object reached, a verified one has exactly the source's bytes.
    for src_uri, state in states(setup).items():
        if state == VERIFIED:
            key = src_uri.split("/", 3)[3]
            dst = ObjectRef("s3", setup["dst"], f"{setup['src']}/{key}")
            assert b"".join(setup["direct"].read(dst)) == setup["data"][key], f"{key} verified but corrupted"
    proxy.set_rules(FaultRules())  # the network heals
    migrate(setup)
    assert set(states(setup).values()) == {VERIFIED}
    assert_destination_matches_source(setup)


def _copy_in_child(policy_path: str, ledger_url: str, shard: dict, src_creds, dst_creds) -> None:
    from residency.policy import load_policy

    policy = load_policy(policy_path)
    transfer.copy_shard(policy, Ledger(ledger_url), shard, s3_store(src_creds, "a"), s3_store(dst_creds, "b"))


def test_worker_killed_mid_copy_leaves_nothing_marked_copied_and_rerun_completes(tmp_path, admin, make_bucket):
    import yaml

    src, dst = make_bucket("ap-northeast-2", prefix="kill-src"), make_bucket("ap-northeast-1", prefix="kill-dst")
    doc = {
        "migration_id": f"kill-{src}", "home_jurisdiction": "JP", "control_dir": str(tmp_path / "control"),
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "sources": [{"uri": f"s3://{src}", "conn_id": "seoul"}],
        "destinations": {"s3": {"uri": f"s3://{dst}", "conn_id": "tokyo"}},
        "transfer": {"multipart_threshold_mb": 6, "part_size_mb": 5, "shard_size": 10, "workers": 1},
    }
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(doc))
    policy = parse_policy(doc, path=str(policy_path))
    direct = s3_store(admin, "direct")
    big = body(120 * MiB, 1)  # 24 parts of 5 MiB: time enough to be killed in the middle
    direct.write(ObjectRef("s3", src, "huge.mp4"), [big[i : i + 8 * MiB] for i in range(0, len(big), 8 * MiB)],
                 content_type="video/mp4")
    ledger = Ledger(policy.ledger_url)
    ledger.create_schema()
    inv = inventory.run_inventory(policy, ledger, lambda s: direct)
    shard = inv.shards[0]

    child = multiprocessing.get_context("spawn").Process(
        target=_copy_in_child, args=(str(policy_path), policy.ledger_url, shard, admin, admin)
    )
    child.start()
    client = admin.client("s3", "ap-northeast-1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the upload is under way
        if client.list_multipart_uploads(Bucket=dst).get("Uploads"):
            parts = client.list_parts(Bucket=dst, Key=f"{src}/huge.mp4",
                                      UploadId=client.list_multipart_uploads(Bucket=dst)["Uploads"][0]["UploadId"])
            if len(parts.get("Parts", [])) >= 2:
                break
        time.sleep(0.05)
    else:
        pytest.fail("the child never started uploading")
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL

    row = ledger.get_object(policy.migration_id, f"s3://{src}/huge.mp4")
    assert row["state"] not in (COPIED, VERIFIED)
    assert [r.key for r in direct.list_objects(dst)] == []  # no partial object is visible

    copies = transfer.copy_shard(policy, ledger, shard, s3_store(admin, "a"), s3_store(admin, "b"))
    verifies = transfer.verify_shard(policy, ledger, shard, s3_store(admin, "a"), s3_store(admin, "b"))
    assert copies.copied == 1 and verifies.verified == 1
    assert hashlib.md5(b"".join(direct.read(ObjectRef("s3", dst, f"{src}/huge.mp4")))).hexdigest() == hashlib.md5(big).hexdigest()


# GCS: bits flip in media downloads (gs->s3 reads) or in upload bodies (s3->gs writes),
# not in the JSON metadata answers (TCP and TLS protect those in real life).
GCS_CORRUPTING = {
    "gs->s3": FaultRules(flip_response_rate=0.3, methods=("GET",), path_pattern="alt=media", seed=5),
    "s3->gs": FaultRules(flip_request_rate=0.3, methods=("PUT", "POST"), path_pattern="^/upload/", seed=5),
}


@pytest.fixture
def gcs_behind_proxy(tmp_path):
    """A fake-gcs-server of its own whose resumable-upload URLs point at the proxy."""
    from residency.localcloud.servers import FakeGcsServer, free_port

    port = free_port()
    with FaultProxy(f"http://127.0.0.1:{port}") as proxy:
        server = FakeGcsServer(port=port, external_url=proxy.endpoint_url, log_path=tmp_path / "gcs.log")
        with server:
            yield server, proxy


@pytest.mark.parametrize("route", ["s3->gs", "gs->s3"])
def test_cross_provider_copies_survive_transient_faults_and_corruption(route, gcs_behind_proxy, moto_server, admin,
                                                                      make_bucket, tmp_path):
    from residency.stores.gcs import GcsStore, GcsTransferConfig

    server, gcs_proxy = gcs_behind_proxy
    gcs_creds = server.credentials("g")
    with FaultProxy(moto_server.endpoint_url) as s3_proxy:
        s3_via = s3_store(replace(admin, endpoint_url=s3_proxy.endpoint_url), "s3")
        gcs_via = GcsStore(replace(gcs_creds, emulator_host=gcs_proxy.endpoint_url).client(),
                           transfer=GcsTransferConfig(chunk_size=256 * 1024, read_chunk=1 * MiB),
                           retry=FAST_RETRY, service="gcs")
        gcs_direct = GcsStore(gcs_creds.client(), service="gcs")
        s3_bucket = make_bucket("ap-northeast-2" if route == "s3->gs" else "ap-northeast-1", versioned=True)
        gcs_bucket = f"g-{s3_bucket}"
        gcs_creds.client().create_bucket(gcs_bucket)
        src_p, dst_p = route.split("->")
        stores = {"s3": (s3_via, s3_store(admin, "s3"), s3_bucket), "gs": (gcs_via, gcs_direct, gcs_bucket)}
        (src_via, src_direct, src_bucket), (dst_via, dst_direct, dst_bucket) = stores[src_p], stores[dst_p]
        data = {f"v/{i:02d} 동영상.mp4": body(300_000 + i * 104_729, i) for i in range(8)}
        data["v/long.mp4"] = body(7 * MiB + 1, 77)
        for key, value in data.items():
            src_direct.write(ObjectRef(src_p, src_bucket, key), [value], content_type="video/mp4")
        policy = parse_policy({
            "migration_id": f"xfault-{s3_bucket}", "home_jurisdiction": "JP",
            "control_dir": str(tmp_path / "c"), "ledger_url": f"sqlite:///{tmp_path / 'l.db'}",
            "sources": [{"uri": f"{src_p}://{src_bucket}", "conn_id": "a", "to": dst_p}],
            "destinations": {dst_p: {"uri": f"{dst_p}://{dst_bucket}", "conn_id": "b"}},
            "transfer": {"multipart_threshold_mb": 6, "part_size_mb": 5, "shard_size": 5, "workers": 3},
        })
        ledger = Ledger(policy.ledger_url)
        ledger.create_schema()
        s = {"policy": policy, "ledger": ledger}

        def check_verified_are_intact() -> None:
            for src_uri, state in states(s).items():
                if state == VERIFIED:
                    key = src_uri.split("/", 3)[3]
                    got = b"".join(dst_direct.read(ObjectRef(dst_p, dst_bucket, f"{src_bucket}/{key}")))
                    assert got == data[key], f"{key} verified but corrupted"

        # Corruption first, on objects not yet copied: whatever gets verified must be intact.
        for proxy in (s3_proxy, gcs_proxy):
            proxy.set_rules(CORRUPTING if proxy is s3_proxy else GCS_CORRUPTING[route])
        migrate(s, src_via, dst_via)
        flips = sum(p.stats.get("flip_request", 0) + p.stats.get("flip_response", 0) for p in (s3_proxy, gcs_proxy))
        assert flips >= 2
        assert gcs_proxy.stats.get("flip_request", 0) + gcs_proxy.stats.get("flip_response", 0) >= 1, gcs_proxy.stats
        check_verified_are_intact()

        # Then transient faults while the re-run repairs what corruption left failed.
        for proxy in (s3_proxy, gcs_proxy):
            proxy.set_rules(TRANSIENT)
        migrate(s, src_via, dst_via)
        check_verified_are_intact()

        for proxy in (s3_proxy, gcs_proxy):
            proxy.set_rules(FaultRules())
        migrate(s, src_via, dst_via)
        assert set(states(s).values()) == {VERIFIED}
        check_verified_are_intact()
