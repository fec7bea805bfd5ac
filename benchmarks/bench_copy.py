"""Copy throughput and requests per object: the engine against rclone and a raw SDK loop.

What is measured (one run, one local cloud, the same data, the same concurrency):

(a) ``--objects`` x ``--size-kib`` objects (default 2,000 x 64 KiB) S3->S3 on moto
    server and GCS->GCS on fake-gcs-server;
(b) ``--big`` x ``--big-mib`` objects (default 8 x 64 MiB) across providers,
    S3->GCS and GCS->S3.

Tools, each with ``--workers`` (default 16) concurrent copies:

- ``engine``: the project's own path, as a DAG task runs it: a policy file, the
  ledger (SQLite in a temp folder, or ``--ledger-url``), stores built from
  credentials by ``pipeline.Runtime``, then inventory + copy + verify of every
  shard the inventory returns (one shard per source unless ``--shard-size``);
  engine INFO logs go to a file, as a task's log would. Proof per object included.
- ``rclone``: ``rclone copy --checksum --transfers W --checkers W`` (Debian's
  package, installed with apt-get when missing), remotes from RCLONE_CONFIG_*
  variables, AWS_CA_BUNDLE unset. Server-side copy within a provider; rclone
  checks the hash of what it uploaded.
- ``raw``: a plain SDK loop, no ledger, no verification: list the source, then
  boto3 CopyObject (S3->S3), google-cloud-storage rewrite (GCS->GCS), or
  get-whole-object + put (across providers).
- ``DAG`` (case (a) S3 only, unless ``--no-dag``): ``airflow dags test
  residency_migration`` on the same source bucket; see ``bench_dag.py``.

How to read the table:

- ``seconds`` comes from *direct* runs (tool -> server): the median of
  ``--repeat`` runs (default 3; ``range`` shows the fastest and slowest), the
  order of the tools rotated between repeats, after an untimed warm-up copy of a
  few objects per route. For the Python tools it is measured inside the child
  process from the start of the work (imports and interpreter start excluded;
  the engine's ledger and store setup included); for rclone and the DAG it is
  the wall time of the process. The DAG is run once.
- ``req/obj``: every HTTP request the tool sent, counted in a second, *proxied*
  run of the same tool on the same data into another fresh bucket: a
  :class:`FaultProxy` with no faults sits in front of each server and its
  ``stats['requests']`` is read (listing, copy, verification, everything),
  divided by the number of objects. The proxy slows things, so its run is never
  the one timed (its time is in the JSON as ``counted_run_seconds``). The
  engine's requests are also split by phase (inventory, copy, verify), and
  every tool's by kind of operation, below the table.
- ``x engine``: how many times faster the engine is than this tool
  (``tool seconds / engine seconds``; > 1: the engine is faster; on the DAG
  row: how much longer the whole DAG takes than the engine alone).
- ``peak RSS``: ``ru_maxrss`` of the tool's process (getrusage in the Python
  children, wait4 for rclone), the highest of the repeats. Each tool process
  is forked from a small launcher: Linux keeps ``ru_maxrss`` across exec, so a
  child forked straight from this (large) driver would report the driver's size.
- ``dst``: after every run the destination bucket (fresh for each run) is
  listed straight from the server; a run is ``ok`` only when it holds every
  object with the right total size. A broken tool is never reported as fast.
- The header says how much of the machine's CPU *other* processes took during
  the timed runs (``/proc/stat`` minus this benchmark's own processes and
  emulators); above 10% in a run, the timings are flagged as disturbed.

The target lines (PASS/MISS, never assertions): on (a) S3 the engine sends at
most 1.2 requests per object and is at least 1.0x rclone's speed and 0.7x the raw
loop's; on (b) it reaches at least 0.8x the raw get+put loop; and its peak RSS is
flat in object size ((b) vs (a): less than 128 MiB more) and in object count
((a) S3 at ``--objects`` vs a tenth of them: less than 32 MiB more).
The last line is one JSON object with every figure. The numbers describe this
machine and these emulators, not a cloud; the ratios measured side by side are
what matters.

Run: ``make bench`` (``make bench BENCH_ARGS=--quick`` for a smoke run), or
``python benchmarks/bench_copy.py --quick``; ``--no-dag`` skips the Airflow run,
``--routes 's3->s3'`` and ``--tools engine,raw`` narrow it, ``--repeat 1`` halves
the time, ``--ledger-url postgresql+psycopg2://postgres@127.0.0.1:5432/test`` runs
the engine and the DAG on PostgreSQL (their migrations are deleted at the end
unless ``--keep-ledger``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    COUNTED, DIRECT, DST_REGION, GCS_DST_LOCATION, GCS_PROJECT, GCS_SRC_LOCATION, ROOT, SRC_REGION, KiB, LocalCloud,
    CpuMeter, MiB, Tally, diff, drop_migrations, ensure_rclone, rclone_env, rclone_version,
)

PYTHON = sys.executable
TOOLS = ("engine", "rclone", "raw")
ROUTES = ("s3->s3", "gs->gs", "s3->gs", "gs->s3")
CASE_OF = {"s3->s3": "a", "gs->gs": "a", "s3->gs": "b", "gs->s3": "b"}

REQ_PER_OBJECT_MAX = 1.2
VS_RCLONE_MIN = 1.0
VS_RAW_MIN_A = 0.7
VS_RAW_MIN_B = 0.8
SIZE_GROWTH_MAX = 128 * MiB
COUNT_GROWTH_MAX = 32 * MiB
OTHER_CPU_NOISY = 0.10  # share of the CPUs other processes took in a run beyond which timings are flagged


class Bench:
    def __init__(self, args: argparse.Namespace, cloud: LocalCloud, workdir: Path) -> None:
        self.args = args
        self.cloud = cloud
        self.workdir = workdir
        self.rclone = ensure_rclone() if "rclone" in args.tools else None
        self.runs: list[dict[str, Any]] = []
        self.cpu = CpuMeter([cloud.moto, cloud.gcs_direct, cloud.gcs_counted])
        self.stamp = time.strftime("%Y%m%d%H%M%S")

    # -- data ------------------------------------------------------------------------

    def case(self, route: str) -> dict[str, Any]:
        a = self.args
        if CASE_OF[route] == "a":
            return {"case": "a", "objects": a.objects, "size": a.size_kib * KiB, "bucket": "bench-a-src",
                    "keys": [f"img/{i:05d}.jpg" for i in range(a.objects)], "content_type": "image/jpeg"}
        return {"case": "b", "objects": a.big, "size": a.big_mib * MiB, "bucket": "bench-b-src",
                "keys": [f"video/{i:03d}.mp4" for i in range(a.big)], "content_type": "video/mp4"}

    def seed(self, routes: list[str]) -> None:
        done: set[tuple[str, str]] = set()
        for route in routes:
            case = self.case(route)
            provider = route.split("->")[0]
            if (provider, case["bucket"]) in done:
                continue
            t0 = time.perf_counter()
            self.cloud.seed(provider, case["bucket"], case["keys"], case["size"], case["content_type"],
                            workers=self.args.workers)
            done.add((provider, case["bucket"]))
            print(f"seeded {provider}://{case['bucket']}: {case['objects']} x {case['size'] / KiB:.0f} KiB in "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)

    # -- one run ---------------------------------------------------------------------

    def side(self, provider: str, bucket: str, mode: str, role: str) -> dict[str, Any]:
        out = {"provider": provider, "bucket": bucket, "endpoint": self.cloud.endpoint(provider, mode),
               "region": SRC_REGION if role == "src" else DST_REGION}
        if provider == "gs":  # the emulator reports one location for every bucket: declare it
            out["location"] = GCS_SRC_LOCATION if role == "src" else GCS_DST_LOCATION
        return out

    def run(self, route: str, tool: str, mode: str, *, src_bucket: str | None = None, objects: int | None = None,
            label: str = "", probe: str | None = None) -> dict[str, Any]:
        case = self.case(route)
        src_p, dst_p = route.split("->")
        src_bucket = src_bucket or case["bucket"]
        objects = case["objects"] if objects is None else objects
        expect_bytes = objects * case["size"]
        tag = f"{case['case']}-{src_p}{dst_p}-{tool}-{mode[:3]}{label}"
        dst_bucket = f"bench-{tag}"
        self.cloud.create_bucket(dst_p, dst_bucket, mode)
        run_dir = self.workdir / tag
        run_dir.mkdir(parents=True, exist_ok=True)
        tally = Tally(self.cloud.proxies)
        tally.start()
        cpu_before = self.cpu.snapshot()
        spec = {
            "src": self.side(src_p, src_bucket, mode, "src"), "dst": self.side(dst_p, dst_bucket, mode, "dst"),
            "aws": self.cloud.aws(), "gcs_project": GCS_PROJECT, "workers": self.args.workers, "workdir": str(run_dir),
            "shard_size": min(self.args.shard_size or max(objects, 1), 100_000),
            "migration_id": f"bench-{self.stamp}-{tag}",
            "ledger_url": self.args.ledger_url or f"sqlite:///{run_dir / 'ledger.db'}",
            "limit": objects,
        }
        if tool == "rclone":
            result = self._rclone(spec, run_dir, mode)
        else:
            result = self._child(tool, spec, run_dir, tally if mode == COUNTED else None)
        counted = tally.snapshot()
        other_cpu = self.cpu.other_share(cpu_before, self.cpu.snapshot())
        n, size = self.cloud.contents(dst_p, dst_bucket, mode)
        result.update({
            "case": case["case"], "route": route, "tool": tool, "mode": mode, "objects": objects,
            "bytes": expect_bytes, "dst_objects": n, "dst_bytes": size, "probe": probe, "other_cpu": other_cpu,
            **({"migration_id": spec["migration_id"]} if tool == "engine" else {}),
            "dst_ok": n == objects and size == expect_bytes and result.get("ok", True),
        })
        if mode == COUNTED:
            result["requests"] = counted["requests"]
            result["requests_per_object"] = counted["requests"] / max(objects, 1)
            result["by_operation"] = counted["by_operation"]
        if expect_bytes > 64 * MiB:
            self.cloud.empty(dst_p, dst_bucket, mode)
        status = "ok" if result["dst_ok"] else f"BROKEN: dst holds {n}/{objects} objects, {size}/{expect_bytes} bytes"
        extra = f", {result['requests']} requests" if mode == COUNTED else ""
        secs = f"{result['seconds']:7.2f}s" if result.get("seconds") is not None else "  failed"
        print(f"  {route:<7} {tool:<7} {mode:<8}{label:<7} {secs}{extra}  dst {status}", flush=True)
        if probe == "warm-up":
            self.cloud.empty(dst_p, dst_bucket, mode)
        return result

    def _child(self, tool: str, spec: dict[str, Any], run_dir: Path, tally: Tally | None) -> dict[str, Any]:
        with open(run_dir / f"{tool}.stderr", "w") as err:
            proc = subprocess.Popen([PYTHON, str(Path(__file__).with_name("copytools.py")), tool],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                    cwd=str(ROOT))
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(spec) + "\n")
            proc.stdin.flush()
            result: dict[str, Any] = {}
            phase_requests: dict[str, Any] = {}
            before = tally.snapshot() if tally else None
            for line in proc.stdout:
                kind, _, payload = line.rstrip("\n").partition(" ")
                if kind == "PHASE":
                    name = json.loads(payload)["name"]
                    if tally is not None:
                        now = tally.snapshot()
                        phase_requests[name] = diff(now, before)
                        before = now
                    proc.stdin.write("\n")
                    proc.stdin.flush()
                elif kind == "RESULT":
                    result = json.loads(payload)
            proc.stdin.close()
            code = proc.wait()
        if code != 0 or not result:
            lines = (run_dir / f"{tool}.stderr").read_text(errors="replace").strip().splitlines()
            reason = lines[-1] if lines else f"exit {code}"
            print(f"    {tool} FAILED (exit {code}): {reason}  [{run_dir / f'{tool}.stderr'}]", flush=True)
            return {"ok": False, "seconds": None, "error": reason}
        result["peak_rss"] = result.pop("ru_maxrss_kib") * KiB
        result["vm_hwm"] = result.pop("vm_hwm_kib") * KiB
        result["base_rss"] = result.pop("base_rss_kib") * KiB
        if phase_requests:
            result["phase_requests"] = phase_requests
        return result

    def _rclone(self, spec: dict[str, Any], run_dir: Path, mode: str) -> dict[str, Any]:
        assert self.rclone is not None
        env = rclone_env(self.cloud, mode, run_dir / "rclone.conf")
        src, dst = spec["src"], spec["dst"]
        w = str(self.args.workers)
        cmd = [self.rclone, "copy", "--checksum", "--transfers", w, "--checkers", w, "-v", "--stats", "0",
               f"{src['provider']}:{src['bucket']}", f"{dst['provider']}:{dst['bucket']}"]
        out = run_dir / "rclone.result.json"
        launcher = [PYTHON, str(Path(__file__).with_name("copytools.py")), "launch", str(out), *cmd]
        with open(run_dir / "rclone.log", "w") as log:
            code = subprocess.run(launcher, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        got = json.loads(out.read_text()) if out.exists() else {"seconds": None, "exit_code": code, "ru_maxrss_kib": 0}
        if got["exit_code"] != 0:
            print(f"    rclone exited {got['exit_code']}; see {run_dir / 'rclone.log'}", flush=True)
        return {"seconds": got["seconds"], "ok": got["exit_code"] == 0, "peak_rss": got["ru_maxrss_kib"] * KiB,
                "exit_code": got["exit_code"]}

    # -- the whole benchmark -----------------------------------------------------------

    def warm_up(self, route: str) -> None:
        """An untimed raw copy of a few objects, so that no tool pays the servers' first requests."""
        case = self.case(route)
        few = max(1, min(case["objects"], 2 * self.args.workers, 64 * MiB // case["size"]))
        self.run(route, "raw", DIRECT, objects=few, label="-warm", probe="warm-up")

    def measure(self) -> None:
        tools = list(self.args.tools)
        for route in self.args.routes:
            print(f"route {route}:", flush=True)
            self.warm_up(route)
            for rep in range(self.args.repeat):
                order = tools[rep % len(tools):] + tools[:rep % len(tools)]  # nobody always goes first
                for tool in order:
                    label = f"-r{rep + 1}" if self.args.repeat > 1 else ""
                    self.runs.append(self.run(route, tool, DIRECT, label=label))
            if not self.args.no_count:
                for tool in tools:
                    self.runs.append(self.run(route, tool, COUNTED))
        if "engine" in self.args.tools and "s3->s3" in self.args.routes and self.args.objects >= 10:
            tenth = max(self.args.objects // 10, 1)
            case = self.case("s3->s3")
            self.cloud.seed("s3", "bench-a-src-tenth", case["keys"][:tenth], case["size"], case["content_type"],
                            workers=self.args.workers)
            print(f"memory probe: engine s3->s3 on a tenth of the objects ({tenth}):", flush=True)
            self.runs.append(self.run("s3->s3", "engine", DIRECT, src_bucket="bench-a-src-tenth", objects=tenth,
                                      label="-tenth", probe="tenth"))

    def find(self, route: str, tool: str, mode: str = DIRECT, probe: str | None = None) -> dict[str, Any] | None:
        """The run of ``tool`` on ``route``; for repeated runs the median one (by seconds), with every
        sample in ``samples`` and the highest peak RSS of them all. A broken run wins: it is never hidden."""
        runs = [r for r in self.runs
                if r["route"] == route and r["tool"] == tool and r["mode"] == mode and r.get("probe") == probe]
        if not runs:
            return None
        broken = [r for r in runs if not r["dst_ok"] or r.get("seconds") is None]
        if broken:
            return broken[0]
        if len(runs) == 1:
            return runs[0]
        samples = sorted(r["seconds"] for r in runs)
        middle = statistics.median_low(samples)
        chosen = dict(next(r for r in runs if r["seconds"] == middle))
        chosen["samples"] = samples
        chosen["peak_rss"] = max(r.get("peak_rss") or 0 for r in runs) or None
        return chosen

    def summary(self) -> dict[str, Any]:
        """Per route and tool: the figures of the table, for the JSON line."""
        out: dict[str, Any] = {}
        for route in self.args.routes:
            engine = self.find(route, "engine")
            for tool in self.args.tools:
                r, c = self.find(route, tool), self.find(route, tool, COUNTED)
                if r is None:
                    continue
                secs = speed(r)
                out.setdefault(route, {})[tool] = {
                    "objects": r["objects"], "bytes": r["bytes"], "seconds": secs,
                    "seconds_samples": r.get("samples") or ([secs] if secs else []),
                    "objects_per_second": r["objects"] / secs if secs else None,
                    "mib_per_second": r["bytes"] / MiB / secs if secs else None,
                    "engine_speedup": (secs / engine["seconds"]
                                       if secs and speed(engine) and tool != "engine" else None),
                    "requests": c.get("requests") if c else None,
                    "requests_per_object": c.get("requests_per_object") if c else None,
                    "requests_by_operation": c.get("by_operation") if c else None,
                    "counted_run_seconds": c.get("seconds") if c else None,
                    "peak_rss": r.get("peak_rss"), "phases": r.get("phases"),
                    "phase_requests": c.get("phase_requests") if c else None,
                    "dst_ok": bool(r["dst_ok"] and (c is None or c["dst_ok"])),
                    "error": r.get("error") or (c or {}).get("error"),
                }
        return out


# -- report ------------------------------------------------------------------------------


def speed(r: dict[str, Any] | None) -> float | None:
    if not r or not r.get("dst_ok") or not r.get("seconds"):
        return None
    return r["seconds"]


def table(bench: Bench, dag: dict[str, Any] | None) -> list[str]:
    lines = []
    head = (f"{'case':<12} {'tool':<7} {'objects':>7} {'MiB':>7} {'seconds':>8} {'range':>13} {'obj/s':>8} "
            f"{'MiB/s':>7} {'x engine':>8} {'req/obj':>8} {'peak RSS':>9}  dst")
    lines.append(head)
    lines.append("-" * len(head))
    for route in bench.args.routes:
        engine = bench.find(route, "engine")
        for tool in bench.args.tools:
            r = bench.find(route, tool)
            if r is None:
                continue
            c = bench.find(route, tool, COUNTED)
            rpo = f"{c['requests_per_object']:.2f}" if c and c.get("dst_ok") and "requests_per_object" in c else "-"
            rss = f"{r['peak_rss'] / MiB:.0f} MiB" if r.get("peak_rss") else "-"
            broken = [x for x in (r, c) if x is not None and not x["dst_ok"]]
            dst = "ok" if not broken else "BROKEN: " + (broken[0].get("error") or
                                                         f"dst holds {broken[0]['dst_objects']}/{broken[0]['objects']}")
            if not speed(r):
                lines.append(f"({CASE_OF[route]}) {route:<7} {tool:<7} {r['objects']:>7} {r['bytes'] / MiB:>7.0f} "
                             f"{'-':>8} {'-':>13} {'-':>8} {'-':>7} {'-':>8} {rpo:>8} {rss:>9}  {dst[:100]}")
                continue
            secs = r["seconds"]
            ratio = "-" if tool == "engine" or not speed(engine) else f"{secs / engine['seconds']:.2f}"
            spread = f"{min(r['samples']):.2f}-{max(r['samples']):.2f}" if r.get("samples") else "-"
            lines.append(
                f"({CASE_OF[route]}) {route:<7} {tool:<7} {r['objects']:>7} {r['bytes'] / MiB:>7.0f} {secs:>8.2f} "
                f"{spread:>13} {r['objects'] / secs:>8.1f} {r['bytes'] / MiB / secs:>7.1f} {ratio:>8} {rpo:>8} "
                f"{rss:>9}  {dst}"
            )
        if route == "s3->s3" and dag:
            t, c = dag.get("timed") or {}, dag.get("counted") or {}
            if t:
                secs = t["seconds"]
                ratio = f"{secs / engine['seconds']:.2f}" if speed(engine) else "-"
                rpo = f"{c['requests_per_object']:.2f}" if c.get("requests_per_object") is not None else "-"
                dst = "ok" if t.get("dst_ok") and c.get("dst_ok", True) else "BROKEN"
                lines.append(
                    f"(a) {route:<7} {'DAG':<7} {t['objects']:>7} {t['bytes'] / MiB:>7.0f} {secs:>8.2f} "
                    f"{'1 run':>13} {t['objects'] / secs:>8.1f} {t['bytes'] / MiB / secs:>7.1f} {ratio:>8} {rpo:>8} "
                    f"{'-':>9}  "
                    f"{dst} (run {t.get('state')})"
                )
    return lines


def details(bench: Bench) -> list[str]:
    lines = []
    for r in bench.runs:
        if r["mode"] != COUNTED:
            continue
        top = ", ".join(f"{k} {v}" for k, v in list(r.get("by_operation", {}).items())[:10])
        lines.append(f"  {r['route']:<7} {r['tool']:<7} {r.get('requests', 0):>6} requests: {top}")
        for name, p in (r.get("phase_requests") or {}).items():
            ops = ", ".join(f"{k} {v}" for k, v in list(p["by_operation"].items())[:8])
            secs = (bench.find(r["route"], r["tool"]) or {}).get("phases", {}).get(name)
            timing = f" {secs:.2f}s (direct)," if secs is not None else ""
            lines.append(f"      {name:<9}{timing} {p['requests']} requests: {ops}")
    return lines


def dag_lines(dag: dict[str, Any]) -> list[str]:
    t, c = dag["timed"], dag.get("counted") or {}
    phases = ", ".join(f"{k} {v:.2f}s" for k, v in (t.get("phase_seconds") or {}).items())
    duration = f"{t['run_duration']:.1f}s" if t.get("run_duration") else "?"
    lines = [f"  DAG: process {t['seconds']:.1f}s, Airflow run_duration {duration}, inside the pipeline phases "
             f"{sum((t.get('phase_seconds') or {}).values()):.1f}s ({phases})"]
    if c.get("by_operation"):
        top = ", ".join(f"{k} {v}" for k, v in list(c["by_operation"].items())[:10])
        lines.append(f"  DAG: {c['requests']} requests: {top}")
    return lines


def targets(bench: Bench) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, ok: bool | None, unit: str, note: str = "") -> None:
        verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
        out.append({"target": name, "value": value, "limit": limit, "verdict": verdict, "unit": unit, "note": note})

    def ratio(route: str, other: str) -> float | None:
        e, o = speed(bench.find(route, "engine")), speed(bench.find(route, other))
        return None if e is None or o is None else o / e

    if "s3->s3" in bench.args.routes:
        c = bench.find("s3->s3", "engine", COUNTED)
        rpo = c.get("requests_per_object") if c and c.get("dst_ok") else None
        add("(a) S3: engine requests per object", rpo, REQ_PER_OBJECT_MAX,
            None if rpo is None else rpo <= REQ_PER_OBJECT_MAX, "<= requests/object")
        for other, limit in (("rclone", VS_RCLONE_MIN), ("raw", VS_RAW_MIN_A)):
            v = ratio("s3->s3", other)
            add(f"(a) S3: engine speed vs {other}", v, limit, None if v is None else v >= limit, ">= x")
    for route in ("s3->gs", "gs->s3"):
        if route in bench.args.routes:
            v = ratio(route, "raw")
            add(f"(b) {route}: engine speed vs raw get+put", v, VS_RAW_MIN_B, None if v is None else v >= VS_RAW_MIN_B,
                ">= x")
    a_peaks = [r["peak_rss"] for r in bench.runs
               if r["tool"] == "engine" and r["case"] == "a" and r["mode"] == DIRECT and not r.get("probe")
               and r.get("peak_rss")]
    b_peaks = [r["peak_rss"] for r in bench.runs
               if r["tool"] == "engine" and r["case"] == "b" and r["mode"] == DIRECT and r.get("peak_rss")]
    if a_peaks and b_peaks:
        growth = max(b_peaks) - max(a_peaks)
        add("engine peak RSS flat in object size: (b) minus (a)", growth / MiB, SIZE_GROWTH_MAX / MiB,
            growth < SIZE_GROWTH_MAX, "< MiB",
            f"(b) {bench.args.big_mib} MiB objects {max(b_peaks) / MiB:.0f} MiB vs (a) {bench.args.size_kib} KiB "
            f"objects {max(a_peaks) / MiB:.0f} MiB")
    full, tenth = bench.find("s3->s3", "engine"), bench.find("s3->s3", "engine", probe="tenth")
    if full and tenth and full.get("peak_rss") and tenth.get("peak_rss"):
        growth = full["peak_rss"] - tenth["peak_rss"]
        add("engine peak RSS flat in object count: (a) S3 N minus N/10", growth / MiB, COUNT_GROWTH_MAX / MiB,
            growth < COUNT_GROWTH_MAX, "< MiB",
            f"{full['objects']} objects {full['peak_rss'] / MiB:.0f} MiB vs {tenth['objects']} objects "
            f"{tenth['peak_rss'] / MiB:.0f} MiB")
    return out


def software() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("boto3", "botocore", "google-cloud-storage", "moto", "sqlalchemy", "apache-airflow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=2000, help="case (a): number of small objects")
    parser.add_argument("--size-kib", type=int, default=64, help="case (a): object size in KiB")
    parser.add_argument("--big", type=int, default=8, help="case (b): number of large objects")
    parser.add_argument("--big-mib", type=int, default=64, help="case (b): object size in MiB")
    parser.add_argument("--workers", type=int, default=16, help="concurrent copies, the same for every tool")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed runs per tool and route, the median is reported (default 3; 1 with --quick)")
    parser.add_argument("--shard-size", type=int, default=0, help="engine shard size (default: one shard per source)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 x 64 KiB, 2 x 8 MiB")
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated subset of " + ",".join(ROUTES))
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ",".join(TOOLS))
    parser.add_argument("--ledger-url", default=None,
                        help="engine ledger, e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/test "
                             "(default: SQLite in a temp folder per run)")
    parser.add_argument("--keep-ledger", action="store_true",
                        help="with --ledger-url: keep the benchmark's migrations (default: delete them at the end)")
    parser.add_argument("--no-count", action="store_true", help="skip the proxied runs that count requests")
    parser.add_argument("--no-dag", action="store_true", help="skip the `airflow dags test` run of case (a) S3")
    parser.add_argument("--workdir", default=None, help="keep logs, ledgers and policies here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        for flag, value in (("--objects", 100), ("--big", 2), ("--big-mib", 8)):
            if flag not in given:
                setattr(args, flag[2:].replace("-", "_"), value)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    args.routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [r for r in args.routes if r not in ROUTES] + [t for t in args.tools if t not in TOOLS]
    if bad:
        parser.error(f"unknown route or tool: {', '.join(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-copy-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        needs_gcs = any("gs" in r for r in args.routes)
        with LocalCloud(workdir, gcs=needs_gcs) as cloud:
            bench = Bench(args, cloud, workdir)
            print(f"local cloud: moto {cloud.moto.endpoint_url} (proxy {cloud.moto_proxy.endpoint_url})"
                  + (f"; fake-gcs-server direct {cloud.gcs_direct.endpoint_url}, counted "
                     f"{cloud.gcs_counted.endpoint_url} (proxy {cloud.gcs_proxy.endpoint_url})" if needs_gcs else ""),
                  flush=True)
            bench.seed(args.routes)
            bench.measure()
            dag = None
            if not args.no_dag and "s3->s3" in args.routes:
                from bench_dag import measure_dag

                case = bench.case("s3->s3")
                dag = measure_dag(cloud, case["bucket"], objects=case["objects"], size=case["size"],
                                  workers=args.workers, shard_size=min(args.shard_size or case["objects"], 100_000),
                                  ledger_url=args.ledger_url, workdir=workdir / "dag",
                                  count=not args.no_count)
            if args.ledger_url and not args.keep_ledger:
                ids = [r["migration_id"] for r in bench.runs if r.get("migration_id")]
                ids += [d["migration_id"] for d in ((dag or {}).get("timed"), (dag or {}).get("counted")) if d]
                dropped = drop_migrations(args.ledger_url, ids)
                print(f"ledger: removed the {len(ids)} benchmark migrations ({dropped} rows) from {args.ledger_url}",
                      flush=True)
            rclone = rclone_version(bench.rclone) if bench.rclone else None
            results = targets(bench)
            rows = table(bench, dag)
            more = details(bench)

    print()
    print(f"copy benchmark: {os.cpu_count()} CPUs, {args.workers} workers for every tool; moto server and "
          f"fake-gcs-server on loopback; {rclone or ''}")
    print(f"(a) {args.objects} x {args.size_kib} KiB; (b) {args.big} x {args.big_mib} MiB.  seconds: median of "
          f"{args.repeat} direct run(s) (tool -> server), after a warm-up; req/obj: a second run of the same tool "
          "and data through a no-fault FaultProxy in front of each server, stats['requests'] / objects (every "
          "request: listing, copy, verification).")
    print("x engine: tool seconds / engine seconds (> 1: the engine is faster).  peak RSS: ru_maxrss of the "
          "tool's process.  dst: destination listed from the server after each run (count and bytes).")
    if dag and dag.get("timed"):
        print(f"DAG: {dag['how']}")
    others = [r["other_cpu"] for r in bench.runs if r.get("other_cpu") is not None and r["mode"] == DIRECT]
    if others:
        busy = max(others) > OTHER_CPU_NOISY
        print(f"other processes on this machine used {statistics.mean(others):.0%} of its CPUs during the timed runs "
              f"on average, {max(others):.0%} at most in one run"
              + ("  ** timings disturbed by other work: compare the ranges **" if busy else ""))
    print()
    for line in rows:
        print(line)
    print()
    print("requests by operation (proxied runs; engine by phase):")
    for line in more:
        print(line)
    if dag and dag.get("timed"):
        for line in dag_lines(dag):
            print(line)
    print()
    for t in results:
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        print(f"{t['verdict']:<4} {t['target']}: {value} (target {t['unit']} {t['limit']})"
              + (f"  [{t['note']}]" if t["note"] else ""))
    summary = {
        "bench": "copy",
        "config": {"objects": args.objects, "size_kib": args.size_kib, "big": args.big, "big_mib": args.big_mib,
                   "workers": args.workers, "shard_size": args.shard_size or "one per source",
                   "repeat": args.repeat,
                   "routes": args.routes, "tools": args.tools, "ledger": "postgresql" if args.ledger_url else "sqlite",
                   "cpus": os.cpu_count(), "rclone": rclone, "software": software(),
                   "other_cpu_during_timed_runs": {"mean": statistics.mean(others), "max": max(others)}
                   if others else None},
        "method": {"seconds": "direct run; python tools timed inside their process (imports excluded), rclone and "
                              "the DAG by process wall time",
                   "requests": "separate proxied run of the same tool and data; FaultProxy (no faults) "
                               "stats['requests'] summed over the proxies in front of moto and fake-gcs-server"},
        "results": bench.summary(),
        "runs": bench.runs,
        "dag": dag,
        "targets": results,
        "total_seconds": time.perf_counter() - started,
    }
    print(json.dumps(summary, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
