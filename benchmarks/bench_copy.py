"""Copy throughput of the engine against boto3's managed copy, measured in one run.

Both copy the same objects between two buckets of one moto server over HTTP:
- `residency`: inventory is done beforehand; copy_shard + verify_shard, i.e.
  server-side copy *with* pinning, provenance, ledger writes and verification;
- `boto3`: ``client.copy()`` (s3transfer's managed copy, threads), no verification.

Prints objects/s and MiB/s for each and the ratio. The numbers describe this
machine and moto, not AWS; what matters is the ratio measured side by side.
Run: ``make bench`` (or ``python benchmarks/bench_copy.py --objects 300``).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from boto3.s3.transfer import TransferConfig  # noqa: E402

from residency import inventory, transfer  # noqa: E402
from residency.ledger import Ledger  # noqa: E402
from residency.localcloud.servers import MotoServer  # noqa: E402
from residency.policy import parse_policy  # noqa: E402
from residency.stores.s3 import S3Store, S3TransferConfig  # noqa: E402

MiB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--max-kib", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    rng = random.Random(7)
    sizes = [rng.randint(4, args.max_kib) * 1024 for _ in range(args.objects)]

    with tempfile.TemporaryDirectory() as tmp, MotoServer() as server:
        admin = server.enforce_auth()
        seoul, tokyo_a, tokyo_b = "bench-seoul", "bench-tokyo-a", "bench-tokyo-b"
        for bucket, region in ((seoul, "ap-northeast-2"), (tokyo_a, "ap-northeast-1"), (tokyo_b, "ap-northeast-1")):
            admin.client("s3", region).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
        client = admin.client("s3", "ap-northeast-2")
        for i, size in enumerate(sizes):
            client.put_object(Bucket=seoul, Key=f"img/{i:05d}.jpg", Body=rng.randbytes(size), ContentType="image/jpeg")
        total = sum(sizes)

        policy = parse_policy({
            "migration_id": "bench", "home_jurisdiction": "JP", "control_dir": tmp,
            "ledger_url": f"sqlite:///{tmp}/ledger.db",
            "sources": [{"uri": f"s3://{seoul}", "conn_id": "s"}],
            "destinations": {"s3": {"uri": f"s3://{tokyo_a}", "conn_id": "t"}},
            "transfer": {"shard_size": args.objects, "workers": args.workers},
        })
        store = S3Store(admin.s3_client_factory(), transfer=S3TransferConfig(), service=server.endpoint_url)
        ledger = Ledger(policy.ledger_url)
        ledger.create_schema()
        inv = inventory.run_inventory(policy, ledger, lambda s: store)

        t0 = time.perf_counter()
        for shard in inv.shards:
            transfer.copy_shard(policy, ledger, shard, store, store)
            result = transfer.verify_shard(policy, ledger, shard, store, store)
            assert result.failed == 0
        ours = time.perf_counter() - t0

        dst = admin.client("s3", "ap-northeast-1")
        config = TransferConfig(max_concurrency=1)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            list(pool.map(
                lambda i: dst.copy({"Bucket": seoul, "Key": f"img/{i:05d}.jpg"}, tokyo_b, f"img/{i:05d}.jpg", Config=config),
                range(len(sizes)),
            ))
        theirs = time.perf_counter() - t0

    print(f"{args.objects} objects, {total / MiB:.1f} MiB, {args.workers} workers, moto server on loopback")
    print(f"{'tool':<44} {'seconds':>8} {'objects/s':>10} {'MiB/s':>8}")
    for name, secs in (("residency copy+verify (pinned, ledger, proof)", ours), ("boto3 managed copy (no verification)", theirs)):
        print(f"{name:<44} {secs:8.2f} {args.objects / secs:10.1f} {total / MiB / secs:8.1f}")
    print(f"ratio residency/boto3 time: {ours / theirs:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
