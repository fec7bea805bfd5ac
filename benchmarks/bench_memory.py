"""Peak memory of a streamed (cross-service) copy of a large object, against a naive copy.

A 1 GiB object is copied through this machine twice, each time in a fresh child
process that samples its own resident set size (VmRSS) every 10 ms:
- `residency`: the engine's streamed copy (ranged reads, multipart or resumable
  upload, checksums computed in the same pass, source checksum enforced);
- `naive`: what a quick script does: read the whole body, then upload it.

The figure reported is the peak RSS above the child's RSS just before the copy.
The goal for the engine is < 128 MiB for 1 GiB. Run: ``make bench`` or
``python benchmarks/bench_memory.py --gib 1 --route s3->s3``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

MiB = 1024 * 1024
CEILING = 128 * MiB


def rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class PeakSampler:
    def __init__(self) -> None:
        self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.01)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def make_stores(spec: dict):
    """Stores from plain specs (picklable across processes)."""
    from residency.clients import AwsCredentials
    from residency.stores.s3 import S3Store

    def build(side: dict):
        if side["provider"] == "s3":
            creds = AwsCredentials(**side["creds"])
            return S3Store(creds.s3_client_factory(), service=side["service"], validates_upload_checksums=False)
        from residency.clients import GcsCredentials
        from residency.stores.gcs import GcsStore

        return GcsStore(GcsCredentials(**side["creds"]).client(), service=side["service"])

    return build(spec["src"]), build(spec["dst"])


def child(spec: dict, mode: str, queue) -> None:
    from residency import transfer
    from residency.uris import ObjectRef

    src_store, dst_store = make_stores(spec)
    src_ref = ObjectRef(spec["src"]["provider"], spec["src"]["bucket"], spec["key"])
    dst_ref = ObjectRef(spec["dst"]["provider"], spec["dst"]["bucket"], f"{mode}/{spec['key']}")
    src = src_store.stat(src_ref)
    base = rss()
    started = time.perf_counter()
    with PeakSampler() as sampler:
        if mode == "residency":
            transfer._stream_copy("bench", src_store, src, dst_store, dst_ref, {}, dict(src.checksums), create_only=True)
        else:
            whole = b"".join(src_store.read(src_ref, chunk_size=64 * MiB))
            dst_store.write(dst_ref, [whole], content_type=src.content_type, create_only=True, size=len(whole))
            del whole
    queue.put({"mode": mode, "seconds": time.perf_counter() - started, "peak_over_base": sampler.peak - base})


def measure(spec: dict, mode: str) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(spec, mode, queue))
    proc.start()
    result = queue.get(timeout=1800)
    proc.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--route", default="s3->s3", choices=["s3->s3", "s3->gs", "gs->s3"])
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    size = int(args.gib * 1024 * MiB)

    from residency.localcloud.servers import MotoServer
    from residency.uris import ObjectRef

    src_provider, dst_provider = args.route.split("->")
    with tempfile.TemporaryDirectory() as tmp, MotoServer(log_path=Path(tmp) / "moto.log") as moto:
        admin = moto.enforce_auth()
        sides: dict[str, dict] = {}
        gcs_server = None
        for role, provider, bucket, region in (("src", src_provider, "bench-seoul", "ap-northeast-2"),
                                               ("dst", dst_provider, "bench-tokyo", "ap-northeast-1")):
            if provider == "s3":
                admin.client("s3", region).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
                creds = {"conn_id": role, "access_key_id": admin.access_key_id, "secret_access_key": admin.secret_access_key,
                         "region_name": region, "endpoint_url": moto.endpoint_url}
            else:
                from residency.localcloud.servers import FakeGcsServer

                if gcs_server is None:
                    gcs_server = FakeGcsServer(log_path=Path(tmp) / "gcs.log").start()
                gcreds = gcs_server.credentials(role)
                gcreds.client().create_bucket(bucket)
                creds = {"conn_id": role, "project": gcreds.project, "key_path": None, "keyfile_dict": None,
                         "emulator_host": gcreds.emulator_host}
            sides[role] = {"provider": provider, "bucket": bucket, "creds": creds, "service": f"{role}-service"}
        spec = {**sides, "key": "video/huge.mp4"}
        src_store, _ = make_stores(spec)
        block = bytes(range(256)) * (4 * 4096)  # 4 MiB
        chunks = (block for _ in range(size // len(block)))
        t0 = time.perf_counter()
        src_store.write(ObjectRef(src_provider, "bench-seoul", spec["key"]), chunks, content_type="video/mp4", size=size)
        print(f"seeded {size / MiB:.0f} MiB into {src_provider}://bench-seoul in {time.perf_counter() - t0:.1f}s")
        results = [measure(spec, "residency")]
        if not args.skip_naive:
            results.append(measure(spec, "naive"))
        if gcs_server is not None:
            gcs_server.stop()

    print(f"route {args.route}, object {size / MiB:.0f} MiB")
    print(f"{'copy':<12} {'seconds':>8} {'peak RSS over baseline':>24}")
    for r in results:
        print(f"{r['mode']:<12} {r['seconds']:8.1f} {r['peak_over_base'] / MiB:20.1f} MiB")
    ours = results[0]["peak_over_base"]
    verdict = "within" if ours < CEILING else "ABOVE"
    print(f"residency peak {ours / MiB:.1f} MiB: {verdict} the {CEILING // MiB} MiB ceiling")
    if len(results) > 1:
        print(f"ratio naive/residency peak memory: {results[1]['peak_over_base'] / max(ours, 1):.1f}x")
    return 0 if ours < CEILING else 1


if __name__ == "__main__":
    sys.exit(main())
