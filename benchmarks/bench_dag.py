"""The whole ``residency_migration`` DAG on case (a) S3, run with ``airflow dags test``.

``bench_copy.py`` calls :func:`measure_dag` on its own local cloud and source
bucket; run alone (``python benchmarks/bench_dag.py --objects 2000``) it starts a
moto server, seeds the bucket and prints its own table and JSON line.

What runs: plan, preflight, inventory, copy_shard and verify_shard (mapped over
the shards), recheck, propose_cutover, propose_revoke, attest, evidence,
check_complete: every task that moves or proves data. ``airflow dags test``
answers no human-in-the-loop approval, so ``approve_cutover``, ``cutover``,
``approve_revoke`` and ``revoke`` are marked successful without running
(``--mark-success-pattern``); the policy names no reference columns and no
principals, so they would change nothing anyway. The evidence therefore records
no approval, and ``check_complete`` may fail the run for that reason alone: the
run's state is reported as it is, with the tasks that failed.

``airflow dags test`` runs the tasks one after another in one process (mapped
instances too), with Airflow's own overhead (DAG parsing, task runner, XCom, the
metadata database of ``AIRFLOW_HOME``, as the Makefile sets it; a private one in
the work folder when unset). The time is the wall time of the process; requests
are counted in a second run through the no-fault proxy, as for the other tools.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import COUNTED, DIRECT, DST_REGION, KiB, MiB, ROOT, SRC_REGION, LocalCloud, Tally  # noqa: E402

DAG_ID = "residency_migration"
MARK_SUCCESS = r"^(approve_cutover|cutover|approve_revoke|revoke)$"
_STATE = re.compile(r"DagRun Finished: .*?state=(\w+)")
_END_TASK = re.compile(r"end task task_id=(\w+) map_index=(-?\d+)")
_DURATION = re.compile(r"DagRun Finished: .*?run_duration=([\d.]+)")
_PHASE = re.compile(r"^(\S+)\s.*?\b(BEGIN|END) ([a-z_ ]+?):")
ENGINE_PHASES = ("inventory", "copy", "verify")


def airflow_env(workdir: Path) -> dict[str, str]:
    """The Makefile's Airflow settings (kept when already set), and a migrated metadata database."""
    env = {
        "AIRFLOW_HOME": os.environ.get("AIRFLOW_HOME") or str(workdir / "airflow-home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": os.environ.get("AIRFLOW__CORE__PLUGINS_FOLDER") or str(ROOT / "plugins"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), str(ROOT / "dags")]),
    }
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    custom_db = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if custom_db or not (home / "airflow.db").exists():
        print(f"airflow db migrate ({home}) ...", flush=True)
        out = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                             env={**os.environ, **env}, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return env


def policy_yaml(migration_id: str, src_bucket: str, dst_bucket: str, control_dir: Path, ledger_url: str,
                workers: int, shard_size: int) -> str:
    return f"""\
migration_id: {migration_id}
home_jurisdiction: JP
control_dir: {control_dir}
ledger_url: "{ledger_url}"
sources:
  - {{uri: "s3://{src_bucket}", conn_id: bench_src}}
destinations:
  s3: {{uri: "s3://{dst_bucket}", conn_id: bench_dst, key_template: "{{key}}"}}
selection:
  media_types: [image, video, audio]
transfer:
  workers: {workers}
  shard_size: {shard_size}
"""


def connection_env(cloud: LocalCloud, mode: str) -> dict[str, str]:
    endpoint = cloud.endpoint("s3", mode)
    env = {}
    for conn_id, region in (("bench_src", SRC_REGION), ("bench_dst", DST_REGION)):
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps({
            "conn_type": "aws", "login": cloud.admin.access_key_id, "password": cloud.admin.secret_access_key,
            "extra": {"region_name": region, "endpoint_url": endpoint, "validates_upload_checksums": False},
        })
    return env


def failed_tasks(log_text: str) -> list[str]:
    """Tasks whose last state update before their ``end task`` line was ``failed`` (as dagrun.py reads it)."""
    failed: set[str] = set()
    last_state = ""
    for line in log_text.splitlines():
        if "new_state=" in line:
            last_state = line.split("new_state=", 1)[1].split()[0]
        elif m := _END_TASK.search(line):
            if last_state == "failed":
                failed.add(m.group(1))
            last_state = ""
    return sorted(failed)


def phase_seconds(log_text: str) -> dict[str, float]:
    """Seconds inside each pipeline phase (its BEGIN to END log lines), summed over mapped instances."""
    import datetime as dt

    begun: dict[str, dt.datetime] = {}
    out: dict[str, float] = {}
    for line in log_text.splitlines():
        m = _PHASE.match(line)
        if not m:
            continue
        try:
            at = dt.datetime.fromisoformat(m.group(1))
        except ValueError:
            continue
        name = m.group(3).strip().replace(" ", "_")
        if m.group(2) == "BEGIN":
            begun[name] = at
        elif name in begun:
            out[name] = out.get(name, 0.0) + (at - begun.pop(name)).total_seconds()
    return out


def run_once(cloud: LocalCloud, mode: str, src_bucket: str, *, objects: int, size: int, workers: int,
             shard_size: int, ledger_url: str | None, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    run_dir = workdir / mode
    run_dir.mkdir(parents=True, exist_ok=True)
    dst_bucket = f"bench-a-s3s3-dag-{mode[:3]}"
    cloud.create_bucket("s3", dst_bucket, mode)
    stamp = time.strftime("%Y%m%d%H%M%S")
    policy = run_dir / "policy.yaml"
    migration_id = f"bench-dag-{stamp}-{mode[:3]}"
    policy.write_text(policy_yaml(migration_id, src_bucket, dst_bucket, run_dir / "control",
                                  ledger_url or f"sqlite:///{run_dir / 'ledger.db'}", workers, shard_size))
    conf = {"policy_path": str(policy), "evidence_dir": str(run_dir / "evidence"), "dry_run": False}
    cmd = [str(Path(sys.executable).with_name("airflow")), "dags", "test", DAG_ID, "-c", json.dumps(conf),
           "--mark-success-pattern", MARK_SUCCESS]
    tally = Tally(cloud.proxies)
    tally.start()
    log_path = run_dir / "dag-run.log"
    with log_path.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, **env, **connection_env(cloud, mode)}, stdout=out,
                              stderr=subprocess.STDOUT, timeout=3600)
        seconds = time.perf_counter() - t0
    counted = tally.snapshot()
    text = log_path.read_text(errors="replace")
    states = _STATE.findall(text)
    phases = phase_seconds(text)
    duration = _DURATION.findall(text)
    n, total = cloud.contents("s3", dst_bucket, mode)
    result = {
        "mode": mode, "migration_id": migration_id, "seconds": seconds, "objects": objects, "bytes": objects * size,
        "returncode": proc.returncode,
        "state": states[-1] if states else "unknown",
        "failed_tasks": failed_tasks(text),
        "run_duration": float(duration[-1]) if duration else None, "phase_seconds": phases,
        "engine_phases_seconds": sum(phases.get(p, 0.0) for p in ENGINE_PHASES),
        "marked_success": MARK_SUCCESS, "dst_objects": n, "dst_bytes": total,
        "dst_ok": n == objects and total == objects * size, "log": str(log_path),
    }
    if mode == COUNTED:
        result.update(requests=counted["requests"], requests_per_object=counted["requests"] / max(objects, 1),
                      by_operation=counted["by_operation"])
    print(f"  s3->s3  DAG     {mode:<8}        {seconds:7.2f}s"
          + (f", {counted['requests']} requests" if mode == COUNTED else "")
          + f"  run {result['state']}, dst {'ok' if result['dst_ok'] else f'BROKEN: {n}/{objects}'}"
          + (f"; failed tasks: {', '.join(result['failed_tasks'])}" if result["failed_tasks"] else ""), flush=True)
    return result


def measure_dag(cloud: LocalCloud, src_bucket: str, *, objects: int, size: int, workers: int, shard_size: int,
                ledger_url: str | None, workdir: Path, count: bool = True) -> dict[str, Any]:
    """A timed (direct) and a counted (proxied) ``airflow dags test`` run; see the module docstring."""
    workdir.mkdir(parents=True, exist_ok=True)
    print("DAG (airflow dags test residency_migration) on (a) S3:", flush=True)
    try:
        env = airflow_env(workdir)
    except Exception as exc:  # noqa: BLE001 - the rest of the benchmark stands without it
        print(f"  DAG skipped: {exc}", flush=True)
        return {"skipped": str(exc)}
    out: dict[str, Any] = {
        "how": ("`airflow dags test residency_migration` (tasks run one after another in one process), wall time; "
                f"approvals, cutover and revoke marked success ({MARK_SUCCESS}); AIRFLOW_HOME {env['AIRFLOW_HOME']}"),
    }
    out["timed"] = run_once(cloud, DIRECT, src_bucket, objects=objects, size=size, workers=workers,
                            shard_size=shard_size, ledger_url=ledger_url, workdir=workdir, env=env)
    if count:
        out["counted"] = run_once(cloud, COUNTED, src_bucket, objects=objects, size=size, workers=workers,
                                  shard_size=shard_size, ledger_url=ledger_url, workdir=workdir, env=env)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--size-kib", type=int, default=64)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=0, help="default: one shard")
    parser.add_argument("--ledger-url", default=None)
    parser.add_argument("--no-count", action="store_true")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    size = args.size_kib * KiB
    with tempfile.TemporaryDirectory(prefix="bench-dag-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with LocalCloud(workdir, gcs=False) as cloud:
            keys = [f"img/{i:05d}.jpg" for i in range(args.objects)]
            cloud.seed("s3", "bench-a-src", keys, size, "image/jpeg", workers=args.workers)
            dag = measure_dag(cloud, "bench-a-src", objects=args.objects, size=size, workers=args.workers,
                              shard_size=min(args.shard_size or args.objects, 100_000), ledger_url=args.ledger_url,
                              workdir=workdir / "dag", count=not args.no_count)
            if args.ledger_url:
                from common import drop_migrations

                runs = (dag.get("timed"), dag.get("counted"))
                drop_migrations(args.ledger_url, [d["migration_id"] for d in runs if d])
    t, c = dag.get("timed") or {}, dag.get("counted") or {}
    if t:
        print(f"\n{dag['how']}")
        print(f"{'case':<12} {'objects':>7} {'MiB':>6} {'seconds':>8} {'obj/s':>7} {'req/obj':>8}  run")
        rpo = f"{c['requests_per_object']:.2f}" if c else "-"
        print(f"(a) s3->s3   {t['objects']:>7} {t['bytes'] / MiB:>6.0f} {t['seconds']:>8.2f} "
              f"{t['objects'] / t['seconds']:>7.1f} {rpo:>8}  {t['state']}, dst {'ok' if t['dst_ok'] else 'BROKEN'}")
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in (t.get("phase_seconds") or {}).items())
        print(f"Airflow run_duration {t.get('run_duration')}s; pipeline phases: {phases}")
    print(json.dumps({"bench": "dag", **dag}, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
