"""What the copy benchmarks share: the local cloud, request counting, seeding, checks.

:class:`LocalCloud` starts, on loopback:

- one moto server (S3, IAM enforcement on) and a :class:`CountingProxy` in front
  of it. Timed runs talk to moto directly; counted runs talk to the proxy. Both
  reach the same server and the same source buckets.
- two fake-gcs-servers seeded with the same data: ``direct`` for timed runs, and
  ``counted`` behind its own :class:`CountingProxy`, started with the proxy as its
  external URL so that the URLs it hands out (resumable-upload sessions, media
  links) lead back through the proxy and every request is counted. One server
  cannot serve both: it writes one external URL into those answers.

:class:`CountingProxy` is the project's :class:`FaultProxy` with no faults; its
``stats['requests']`` is the count that the benchmarks report. It also tallies
requests by kind of operation (method, path and query, and the one header that
tells a copy from an upload) to show what dominates; that breakdown reads a
private hook of the proxy and is informative only.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "include") not in sys.path:
    sys.path.insert(0, str(ROOT / "include"))

from residency.localcloud.faultproxy import FaultProxy  # noqa: E402
from residency.localcloud.servers import FakeGcsServer, MotoServer, free_port  # noqa: E402

KiB = 1024
MiB = 1024 * KiB

SRC_REGION = "ap-northeast-2"  # Seoul
DST_REGION = "ap-northeast-1"  # Tokyo
GCS_SRC_LOCATION = "asia-northeast3"
GCS_DST_LOCATION = "asia-northeast1"
GCS_PROJECT = "residency-bench"

DIRECT, COUNTED = "direct", "counted"


# -- request counting ----------------------------------------------------------------


def classify(method: str, target: str, headers: Any = None) -> str:
    """A short name for one S3 (path style) or GCS JSON API request."""
    path, _, query = target.partition("?")
    q = parse_qs(query, keep_blank_values=True)
    header = (lambda name: headers.get(name) if headers is not None else None)
    if path.startswith("/upload/storage/"):
        kind = (q.get("uploadType") or ["?"])[0]
        if kind == "resumable":
            return f"gcs resumable {method} (chunk/status)" if "upload_id" in q else "gcs resumable start"
        return f"gcs upload ({kind})"
    if path.startswith("/download/storage/"):
        return "gcs download"
    if path.startswith("/storage/v1/"):
        parts = path.split("/")  # '', storage, v1, b, BUCKET, o, OBJECT, [rewriteTo, b, B, o, O]
        if len(parts) <= 5:
            return f"gcs bucket {method}"
        if len(parts) == 6:
            return "gcs list objects" if method == "GET" else f"gcs {method} objects"
        rest = "/".join(parts[6:])
        if "/rewriteTo/" in path:
            return "gcs rewrite"
        if "/copyTo/" in path:
            return "gcs copyTo"
        if rest.endswith("/compose"):
            return "gcs compose"
        if method == "GET":
            return "gcs download (alt=media)" if "media" in q.get("alt", []) else "gcs get metadata"
        return f"gcs {method} object"
    # S3, path style: /bucket[/key]
    bucket_and_key = path.lstrip("/").split("/", 1)
    if len(bucket_and_key) == 1 or not bucket_and_key[1]:
        if "list-type" in q:
            return "s3 ListObjectsV2"
        if "versions" in q:
            return "s3 ListObjectVersions"
        if "location" in q:
            return "s3 GetBucketLocation"
        if "delete" in q:
            return "s3 DeleteObjects"
        if "uploads" in q:
            return "s3 ListMultipartUploads"
        if method == "GET":
            return "s3 ListObjects (v1)"
        return f"s3 bucket {method} {','.join(sorted(q)) or ''}".rstrip()
    copy = bool(header("x-amz-copy-source"))
    if method == "HEAD":
        return "s3 HeadObject"
    if method == "GET":
        if "attributes" in q:
            return "s3 GetObjectAttributes"
        if "tagging" in q:
            return "s3 GetObjectTagging"
        return "s3 GetObject (range)" if header("Range") else "s3 GetObject"
    if method == "PUT":
        if "partNumber" in q:
            return "s3 UploadPartCopy" if copy else "s3 UploadPart"
        if "tagging" in q:
            return "s3 PutObjectTagging"
        if headers is None:
            return "s3 PutObject or CopyObject"
        return "s3 CopyObject" if copy else "s3 PutObject"
    if method == "POST":
        if "uploads" in q:
            return "s3 CreateMultipartUpload"
        if "uploadId" in q:
            return "s3 CompleteMultipartUpload"
        return "s3 POST object"
    if method == "DELETE":
        return "s3 AbortMultipartUpload" if "uploadId" in q else "s3 DeleteObject"
    return f"s3 {method} object"


class CountingProxy(FaultProxy):
    """A :class:`FaultProxy` without faults that also tallies requests by operation.

    ``stats['requests']`` (the proxy's own counter) is the figure reported;
    :attr:`by_operation` is a breakdown for reading. It hooks the proxy's
    per-request fault draw, and finds the request headers in the calling
    handler's frame (to tell ``CopyObject`` from ``PutObject``); if a change of
    the proxy breaks that, the breakdown degrades, the count does not.
    """

    def __init__(self, upstream: str, **kwargs: Any) -> None:
        super().__init__(upstream, **kwargs)
        self._ops: Counter = Counter()
        self._ops_lock = threading.Lock()

    def _draw(self, method: str, target: str):  # type: ignore[override]
        headers = None
        try:
            caller = sys._getframe(1).f_locals.get("self")
            headers = getattr(caller, "headers", None)
        except Exception:  # noqa: BLE001 - informative only
            pass
        try:
            name = classify(method, target, headers)
        except Exception:  # noqa: BLE001 - informative only
            name = f"{method} ?"
        with self._ops_lock:
            self._ops[name] += 1
        return super()._draw(method, target)

    @property
    def by_operation(self) -> dict[str, int]:
        with self._ops_lock:
            return dict(self._ops)

    def reset_stats(self) -> None:
        super().reset_stats()
        lock = getattr(self, "_ops_lock", None)
        if lock is not None:
            with lock:
                self._ops.clear()


class Tally:
    """Requests through a set of proxies since :meth:`start`, as totals and by operation."""

    def __init__(self, proxies: Iterable[CountingProxy]) -> None:
        self.proxies = list(proxies)

    def start(self) -> None:
        for proxy in self.proxies:
            proxy.reset_stats()

    def snapshot(self) -> dict[str, Any]:
        ops: Counter = Counter()
        requests = 0
        for proxy in self.proxies:
            requests += proxy.stats["requests"]
            ops.update(proxy.by_operation)
        return {"requests": requests, "by_operation": dict(ops.most_common())}


def diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    ops = Counter(after["by_operation"])
    ops.subtract(before["by_operation"])
    return {"requests": after["requests"] - before["requests"],
            "by_operation": {k: v for k, v in ops.most_common() if v}}


# -- the local cloud -------------------------------------------------------------------


def body(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class LocalCloud:
    """Moto and fake-gcs-server on loopback, with counting proxies; see the module docstring."""

    def __init__(self, workdir: Path, *, gcs: bool = True) -> None:
        self.workdir = workdir
        self.with_gcs = gcs
        self.moto = MotoServer(log_path=workdir / "moto.log")
        self.moto_proxy: CountingProxy | None = None
        self.gcs_direct: FakeGcsServer | None = None
        self.gcs_counted: FakeGcsServer | None = None
        self.gcs_proxy: CountingProxy | None = None
        self.admin = None

    def __enter__(self) -> "LocalCloud":
        try:
            self.moto.start()
            self.admin = self.moto.enforce_auth()
            self.moto_proxy = CountingProxy(self.moto.endpoint_url).start()
            if self.with_gcs:
                self.gcs_direct = FakeGcsServer(log_path=self.workdir / "gcs-direct.log").start()
                port = free_port()
                self.gcs_proxy = CountingProxy(f"http://127.0.0.1:{port}").start()
                self.gcs_counted = FakeGcsServer(port=port, external_url=self.gcs_proxy.endpoint_url,
                                                 log_path=self.workdir / "gcs-counted.log").start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for thing in (self.gcs_counted, self.gcs_proxy, self.gcs_direct, self.moto_proxy, self.moto):
            if thing is not None:
                try:
                    thing.stop()
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass

    # -- endpoints and clients ------------------------------------------------------

    @property
    def proxies(self) -> list[CountingProxy]:
        return [p for p in (self.moto_proxy, self.gcs_proxy) if p is not None]

    def endpoint(self, provider: str, mode: str) -> str:
        """Where a tool reaches ``provider`` in ``mode`` (direct: the server; counted: its proxy)."""
        if provider == "s3":
            return self.moto.endpoint_url if mode == DIRECT else self.moto_proxy.endpoint_url
        if mode == DIRECT:
            return self.gcs_direct.endpoint_url
        return self.gcs_proxy.endpoint_url

    def aws(self) -> dict[str, str]:
        return {"access_key_id": self.admin.access_key_id, "secret_access_key": self.admin.secret_access_key}

    def s3(self, region: str = SRC_REGION) -> Any:
        """An admin S3 client straight to moto (setup and checks, never counted)."""
        return replace(self.admin, region_name=region).client("s3", region)  # 32 pooled connections

    def gcs(self, mode: str) -> Any:
        """A GCS client straight to the server of ``mode`` (setup and checks, never counted)."""
        server = self.gcs_direct if mode == DIRECT else self.gcs_counted
        return server.credentials("bench", GCS_PROJECT).client()

    def gcs_servers(self) -> list[str]:
        return [DIRECT, COUNTED] if self.with_gcs else []

    # -- buckets ---------------------------------------------------------------------

    def create_bucket(self, provider: str, bucket: str, mode: str, region: str = DST_REGION) -> None:
        if provider == "s3":
            self.s3(region).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
        else:
            self.gcs(mode).create_bucket(bucket)

    def seed(self, provider: str, bucket: str, keys: list[str], size: int, content_type: str,
             workers: int = 16) -> None:
        """Create ``bucket`` (Seoul) and upload ``keys``, each ``size`` bytes of seeded random data.

        For GCS the same objects go to both servers (direct and counted).
        """
        def put_s3(i_key: tuple[int, str]) -> None:
            i, key = i_key
            client.put_object(Bucket=bucket, Key=key, Body=body(i, size), ContentType=content_type)

        if provider == "s3":
            self.create_bucket("s3", bucket, DIRECT, SRC_REGION)
            client = self.s3(SRC_REGION)
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(put_s3, enumerate(keys)))
            return
        for mode in self.gcs_servers():
            gclient = self.gcs(mode)
            gbucket = gclient.create_bucket(bucket)

            def put_gcs(i_key: tuple[int, str], gbucket: Any = gbucket) -> None:
                i, key = i_key
                gbucket.blob(key).upload_from_string(body(i, size), content_type=content_type)

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(put_gcs, enumerate(keys)))

    def contents(self, provider: str, bucket: str, mode: str) -> tuple[int, int]:
        """(objects, bytes) in ``bucket``, listed straight from the server (not counted)."""
        n = total = 0
        if provider == "s3":
            for page in self.s3(DST_REGION).get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    n += 1
                    total += obj["Size"]
        else:
            for blob in self.gcs(mode).list_blobs(bucket):
                n += 1
                total += blob.size or 0
        return n, total

    def empty(self, provider: str, bucket: str, mode: str) -> None:
        """Delete every object of ``bucket`` (frees the emulators' memory between runs)."""
        if provider == "s3":
            client = self.s3(DST_REGION)
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        else:
            gclient = self.gcs(mode)
            blobs = list(gclient.list_blobs(bucket))
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda b: b.delete(), blobs))


# -- rclone ------------------------------------------------------------------------------


def ensure_rclone() -> str:
    """The rclone executable; installs Debian's package when none is on PATH."""
    found = shutil.which("rclone")
    if found:
        return found
    print("rclone not on PATH: apt-get install -y rclone", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-qq", "rclone"], env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "rclone"], env=env, check=True)
    found = shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone is still not on PATH after apt-get install")
    return found


def rclone_version(exe: str) -> str:
    out = subprocess.run([exe, "version"], capture_output=True, text=True, env=rclone_base_env()).stdout
    return out.splitlines()[0] if out else "rclone (unknown version)"


def rclone_base_env() -> dict[str, str]:
    """rclone's environment: AWS_CA_BUNDLE unset (with it, rclone refuses an HTTP endpoint)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env.pop("AWS_CA_BUNDLE", None)
    return env


def rclone_env(cloud: LocalCloud, mode: str, config_path: Path) -> dict[str, str]:
    """Remotes ``s3:`` (moto) and ``gs:`` (fake-gcs-server) as RCLONE_CONFIG_* variables."""
    config_path.touch()
    env = rclone_base_env()
    env.update({
        "RCLONE_CONFIG": str(config_path),
        "RCLONE_CONFIG_S3_TYPE": "s3",
        "RCLONE_CONFIG_S3_PROVIDER": "Other",  # moto: a generic S3-compatible server
        "RCLONE_CONFIG_S3_ACCESS_KEY_ID": cloud.admin.access_key_id,
        "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": cloud.admin.secret_access_key,
        "RCLONE_CONFIG_S3_ENDPOINT": cloud.endpoint("s3", mode),
        "RCLONE_CONFIG_S3_REGION": SRC_REGION,
        "RCLONE_CONFIG_S3_FORCE_PATH_STYLE": "true",
        "RCLONE_CONFIG_S3_NO_CHECK_BUCKET": "true",
    })
    if cloud.with_gcs:
        env.update({
            "RCLONE_CONFIG_GS_TYPE": "google cloud storage",
            "RCLONE_CONFIG_GS_ENDPOINT": cloud.endpoint("gs", mode) + "/storage/v1/",
            "RCLONE_CONFIG_GS_ANONYMOUS": "true",  # the emulator checks no credentials
            "RCLONE_CONFIG_GS_NO_CHECK_BUCKET": "true",
            "RCLONE_CONFIG_GS_BUCKET_POLICY_ONLY": "true",
        })
    return env


# -- what else the machine was doing ----------------------------------------------------------


class CpuMeter:
    """CPU time this benchmark used (driver, reaped children, the emulators) against the whole machine's.

    The difference is what *other* processes took while the benchmark ran: on a
    shared machine that, not the load average (which counts the benchmark's own
    threads), says whether the timings were disturbed.
    """

    def __init__(self, servers: Iterable[Any] = ()) -> None:
        self.servers = list(servers)
        self.tick = os.sysconf("SC_CLK_TCK")
        self.cpus = os.cpu_count() or 1

    def _machine_busy(self) -> float:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return (user + nice + system + irq + softirq + steal) / self.tick

    def _ours(self) -> float:
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        for server in self.servers:
            proc = getattr(server, "_proc", None)
            if proc is None:
                continue
            try:
                with open(f"/proc/{proc.pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime
            except OSError:
                pass
        return total

    def snapshot(self) -> tuple[float, float, float]:
        return (time.monotonic(), self._machine_busy(), self._ours())

    def other_share(self, before: tuple[float, float, float], after: tuple[float, float, float]) -> float | None:
        """Fraction of the machine's CPUs that other processes used between two snapshots."""
        wall = after[0] - before[0]
        if wall <= 0:
            return None
        others = (after[1] - before[1]) - (after[2] - before[2])
        return max(0.0, others) / (wall * self.cpus)


# -- a shared ledger ---------------------------------------------------------------------


def drop_migrations(ledger_url: str, migration_ids: Iterable[str]) -> int:
    """Delete the benchmark's migrations from a shared ledger database; returns the rows deleted."""
    import sqlalchemy as sa

    from residency.ledger import metadata

    ids = sorted(set(migration_ids))
    if not ids:
        return 0
    engine = sa.create_engine(ledger_url)
    deleted = 0
    try:
        inspector = sa.inspect(engine)
        with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                if "migration_id" in table.c and inspector.has_table(table.name):
                    deleted += conn.execute(table.delete().where(table.c.migration_id.in_(ids))).rowcount or 0
    finally:
        engine.dispose()
    return deleted
