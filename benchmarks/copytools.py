"""The Python copy tools of the benchmarks, each run in a child process of its own.

``python benchmarks/copytools.py engine|raw`` reads one JSON spec line on stdin
(so that keys never appear in a process list), then copies and writes protocol
lines on stdout:

- ``PHASE {"name", "seconds"}`` after each phase; the driver snapshots the
  request counters and answers one line on stdin before the next phase starts;
- ``RESULT {...}`` at the end: seconds (from the start of the work, imports
  excluded), per-phase seconds, outcome counts, and ``ru_maxrss`` of this process
  (its peak resident set size) with the RSS it had just before the work.

Peak RSS: Linux keeps resource usage across ``execve`` (getrusage(2)), and a
child that the benchmark driver forks starts as a copy of the driver, so its
``ru_maxrss`` would start at the driver's size. Each tool therefore runs in a
process forked from this small interpreter before it imports anything heavy,
whose high-water mark is its own. ``launch`` does the same for rclone: fork,
exec, ``wait4`` (the floor is this interpreter, about 10 MiB).

Tools:

- ``engine``: the project's engine as a DAG task drives it: a policy file,
  :class:`residency.pipeline.Runtime` (ledger, stores built from credentials),
  then ``inventory.run_inventory``, ``transfer.copy_shard`` and
  ``transfer.verify_shard`` for every shard that the inventory returned.
- ``raw``: a plain SDK loop, no ledger and no verification: list the source, then
  boto3 ``CopyObject`` (S3->S3), google-cloud-storage ``rewrite`` (GCS->GCS), or a
  whole-object get then put (across providers), on a thread pool.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


def emit(kind: str, payload: Any) -> None:
    """One protocol line to the benchmark driver."""
    sys.stdout.write(f"{kind} {json.dumps(payload, sort_keys=True)}\n")
    sys.stdout.flush()


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def wait_ack() -> None:
    sys.stdin.readline()


def phase(name: str, started: float) -> float:
    seconds = time.perf_counter() - started
    emit("PHASE", {"name": name, "seconds": seconds})
    wait_ack()
    return seconds


# -- the engine --------------------------------------------------------------------------


def policy_yaml(spec: dict[str, Any], control_dir: Path) -> str:
    src, dst = spec["src"], spec["dst"]
    src_uri = f"{src['provider']}://{src['bucket']}"
    dst_uri = f"{dst['provider']}://{dst['bucket']}"
    src_location = f", location: {src['location']}" if src.get("location") else ""
    dst_location = f", location: {dst['location']}" if dst.get("location") else ""
    return f"""\
migration_id: {spec['migration_id']}
home_jurisdiction: JP
control_dir: {control_dir}
ledger_url: "{spec['ledger_url']}"
sources:
  - {{uri: "{src_uri}", conn_id: src, to: {dst['provider']}{src_location}}}
destinations:
  {dst['provider']}: {{uri: "{dst_uri}", conn_id: dst, key_template: "{{key}}"{dst_location}}}
selection:
  media_types: [image, video, audio]
transfer:
  workers: {spec['workers']}
  shard_size: {spec['shard_size']}
"""


def credentials_for(spec: dict[str, Any]) -> Callable[[str], Any]:
    from residency.clients import AwsCredentials, GcsCredentials

    def one(side: dict[str, Any], conn_id: str) -> Any:
        if side["provider"] == "s3":
            return AwsCredentials(
                conn_id=conn_id, access_key_id=spec["aws"]["access_key_id"],
                secret_access_key=spec["aws"]["secret_access_key"], region_name=side["region"],
                endpoint_url=side["endpoint"],
                validates_upload_checksums=False,  # moto stores a client's checksum without checking it
            )
        return GcsCredentials(conn_id=conn_id, project=spec["gcs_project"], emulator_host=side["endpoint"])

    creds = {"src": one(spec["src"], "src"), "dst": one(spec["dst"], "dst")}
    return creds.__getitem__


def run_engine(spec: dict[str, Any]) -> dict[str, Any]:
    import logging

    sys.path.insert(0, str(ROOT / "include"))
    from residency import inventory, transfer
    from residency.pipeline import Runtime

    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=str(workdir / "engine.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3", "google", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    policy_path = workdir / "policy.yaml"
    policy_path.write_text(policy_yaml(spec, workdir / "control"))
    credentials = credentials_for(spec)
    base_rss = proc_status_kib("VmRSS")
    phases: dict[str, float] = {}

    started = t0 = time.perf_counter()
    rt = Runtime({"policy_path": str(policy_path)}, credentials)
    inv = inventory.run_inventory(rt.policy, rt.ledger, rt.source_store)
    shards = list(inv.shards)
    phases["inventory"] = phase("inventory", t0)

    t0 = time.perf_counter()
    copy = {"copied": 0, "already_present": 0, "failed": 0, "methods": {}}
    for shard in shards:
        src_store, dst_store = rt.stores_for(rt.source_for_bucket(shard["source"]))
        result = transfer.copy_shard(rt.policy, rt.ledger, shard, src_store, dst_store)
        copy["copied"] += getattr(result, "copied", 0)
        copy["already_present"] += getattr(result, "already_present", 0)
        copy["failed"] += getattr(result, "failed", 0)
        for method, n in dict(getattr(result, "methods", {}) or {}).items():
            copy["methods"][method] = copy["methods"].get(method, 0) + n
    phases["copy"] = phase("copy", t0)

    t0 = time.perf_counter()
    verify = {"verified": 0, "failed": 0, "algorithms": {}, "methods": {}}
    for shard in shards:
        src_store, dst_store = rt.stores_for(rt.source_for_bucket(shard["source"]))
        result = transfer.verify_shard(rt.policy, rt.ledger, shard, src_store, dst_store)
        verify["verified"] += getattr(result, "verified", 0)
        verify["failed"] += getattr(result, "failed", 0)
        for key in ("algorithms", "methods"):
            for name, n in dict(getattr(result, key, {}) or {}).items():
                verify[key][name] = verify[key].get(name, 0) + n
    phases["verify"] = phase("verify", t0)
    seconds = sum(phases.values())
    return {
        "seconds": seconds, "wall_seconds": time.perf_counter() - started, "phases": phases,
        "shards": len(shards), "in_scope": getattr(inv, "objects_in_scope", None),
        "copy": copy, "verify": verify,
        "ok": copy["failed"] == 0 and verify["failed"] == 0,
        "base_rss_kib": base_rss,
    }


# -- the raw SDK loop ----------------------------------------------------------------------


def s3_client(spec: dict[str, Any], side: dict[str, Any]) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=spec["aws"]["access_key_id"], aws_secret_access_key=spec["aws"]["secret_access_key"],
        region_name=side["region"],
    )
    return session.client("s3", endpoint_url=side["endpoint"], config=Config(
        max_pool_connections=spec["workers"] + 4, s3={"addressing_style": "path"}))


def gcs_client(spec: dict[str, Any], side: dict[str, Any]) -> Any:
    import requests
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=spec["gcs_project"], credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": side["endpoint"]})
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=spec["workers"] + 4)
    client._http.mount("http://", adapter)  # as many pooled connections as workers
    return client


def run_raw(spec: dict[str, Any]) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    src, dst = spec["src"], spec["dst"]
    route = f"{src['provider']}->{dst['provider']}"
    base_rss = proc_status_kib("VmRSS")
    started = time.perf_counter()

    if src["provider"] == "s3":
        s3_src = s3_client(spec, src)
        pages = s3_src.get_paginator("list_objects_v2").paginate(Bucket=src["bucket"])
        items = [(o["Key"], o["Size"]) for page in pages for o in page.get("Contents", [])]
    else:
        g_src = gcs_client(spec, src)
        items = list(g_src.list_blobs(src["bucket"]))
    items = items[: spec.get("limit") or len(items)]  # a warm-up copies a few
    listed = time.perf_counter() - started

    if route == "s3->s3":
        s3_dst = s3_client(spec, dst)

        def one(item: Any) -> None:
            key = item[0]
            s3_dst.copy_object(Bucket=dst["bucket"], Key=key, CopySource={"Bucket": src["bucket"], "Key": key})
    elif route == "gs->gs":
        dst_bucket = g_src.bucket(dst["bucket"])

        def one(blob: Any) -> None:
            token, _, _ = dst_bucket.blob(blob.name).rewrite(blob)
            while token is not None:
                token, _, _ = dst_bucket.blob(blob.name).rewrite(blob, token=token)
    elif route == "s3->gs":
        dst_bucket = gcs_client(spec, dst).bucket(dst["bucket"])

        def one(item: Any) -> None:
            got = s3_src.get_object(Bucket=src["bucket"], Key=item[0])
            data = got["Body"].read()
            dst_bucket.blob(item[0]).upload_from_string(data, content_type=got.get("ContentType"))
    else:  # gs->s3
        s3_dst = s3_client(spec, dst)

        def one(blob: Any) -> None:
            data = blob.download_as_bytes()
            s3_dst.put_object(Bucket=dst["bucket"], Key=blob.name, Body=data, ContentType=blob.content_type)

    with ThreadPoolExecutor(max_workers=spec["workers"]) as pool:
        list(pool.map(one, items))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "phases": {"list": listed, "copy": seconds - listed}, "objects": len(items),
            "ok": True, "base_rss_kib": base_rss}


def launch(result_path: str, cmd: list[str]) -> int:
    """Run ``cmd`` in a process forked from here; write its seconds, exit code and ru_maxrss to ``result_path``."""
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    Path(result_path).write_text(json.dumps({"seconds": time.perf_counter() - started, "exit_code": code,
                                             "ru_maxrss_kib": usage.ru_maxrss}))
    return code


def main() -> int:
    tool = sys.argv[1]
    if tool == "launch":
        return launch(sys.argv[2], sys.argv[3:])
    pid = os.fork()  # see the module docstring: a high-water mark of the tool's own
    if pid:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    spec = json.loads(sys.stdin.readline())
    result = run_engine(spec) if tool == "engine" else run_raw(spec)
    result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["vm_hwm_kib"] = proc_status_kib("VmHWM")
    emit("RESULT", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
