"""Scale figures for the platform team: inventory, copy + verify, a copy task's memory, the evidence.

Everything runs on one local cloud: a moto server (S3, IAM enforcement on) on
loopback, and the ledger on SQLite (a file in a temp folder) or on the machine's
PostgreSQL (a scratch database ``bench_scale_<pid>``, dropped at the end). Each
measured phase runs in a child process of its own, through the functions the DAG
calls (``residency.pipeline``: Runtime, preflight, run_inventory, copy_shard,
verify_shard, attest_phase, write_evidence), with engine INFO logs going to a file
as a task's log would. Source objects are seeded straight into moto before the
child starts (16 threads of PutObject); seeding time is never part of a figure.

1. **Inventory** of ``--objects`` objects (default 100,000 x 16 B, keys
   ``photos/{i:06d}.jpg``) and of a tenth of them: wall time of
   ``pipeline.run_inventory`` (listing + ledger writes), objects/s, the listing
   and HEAD requests it sent (``ceil(N/1000)`` listing pages expected; a HEAD
   only where the name cannot decide, so 0 here), and its memory (below).
   Flat in N means: peak memory at N is about the same as at N/10.
2. **Copy + verify** of ``--copy-objects`` objects (default 10,000 x 4 KiB)
   S3->S3 with 16 workers (``transfer.workers: 16``, ``shard_size``
   ``--shard-size``), the ledger on SQLite and on PostgreSQL: objects/s of the
   copy phase and of the verify phase, each over every shard run one after the
   other in one process, and HTTP requests per object of each phase.
3. **Memory of a copy task**: one shard of 2,000 x 4 KiB objects
   (``shard_size: 2000``, 16 workers), copied by a child process that does only
   that, as a mapped Airflow task would: its peak RSS, imports included, against
   the 150 MiB target (410 MiB before the clients were shared).
4. **Evidence build** for the ``--objects`` estate of (1): the wall time of
   ``pipeline.write_evidence`` end to end (audit.jsonl, objects.jsonl,
   evidence.json validated against its schema, evidence.html) and its memory.
   The estate is migrated for real (copy, verify, attest on moto) when (2)'s rates
   say that takes under ``--real-budget`` seconds; otherwise the inventoried rows
   are marked VERIFIED and attested directly in the ledger (SQL, as
   ``bench_progress.py`` seeds its rows) and the output says so.

How the figures are measured:

- ``seconds``: ``time.perf_counter`` around the phase call inside the child
  (interpreter start, imports, policy and ledger setup excluded).
- ``requests``: every HTTP request the child's boto3 clients sent during the
  phase, counted by a ``before-send`` hook registered on the sessions the stores'
  clients are made from (SDK retries are off, so one hook call is one request),
  by operation (ListObjectsV2, HeadObject, CopyObject...).
- ``peak RSS``: the child forks itself before importing anything heavy, so its
  high-water mark is its own (``ru_maxrss`` survives ``execve``: a child started
  by this driver would otherwise inherit the driver's). ``process peak`` is the
  highest resident set of the process over its life (imports included: what a
  task's container limit sees); ``phase peak`` is the highest during the phase
  (the kernel's mark is reset at the phase start, ``/proc/self/clear_refs``), and
  ``base`` the resident set when the phase starts. ``tracemalloc peak``: the most
  Python heap the phase held above what was allocated when it started (modules,
  setup), in a separate run of the phase under tracemalloc (which slows it; that
  run is never the timed one).

The machine (2 cores, moto in the same box, other engineers' tests running)
makes every figure noisy: compare figures of one run side by side, and re-run
before quoting an absolute number. The last line is one JSON object with every
figure.

Run: ``python benchmarks/bench_scale.py`` (full), ``--quick`` (5,000 / 1,000
objects, a smoke run), ``--skip-pg`` (SQLite only).
"""

from __future__ import annotations

# Only the standard library at module level: ``--child`` forks before anything heavy is imported.
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

KiB = 1024
MiB = 1024 * KiB
SRC_REGION = "ap-northeast-2"  # Seoul
DST_REGION = "ap-northeast-1"  # Tokyo
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
COPY_TASK_TARGET_MIB = 150
COPY_TASK_OBJECTS = 2_000
WORKERS = 16


# -- the child: phases in a process of their own ---------------------------------------------


def status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakMeter:
    """Peak resident set per phase (VmHWM, reset at each phase start) and over the process."""

    def __init__(self) -> None:
        self.process_peak = status_kib("VmHWM")
        self.resettable = True

    def start_phase(self) -> int:
        self.process_peak = max(self.process_peak, status_kib("VmHWM"))
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets the peak RSS mark of this process (Linux >= 4.0)
        except OSError:
            self.resettable = False
        return status_kib("VmRSS")

    def end_phase(self) -> int | None:
        peak = status_kib("VmHWM")
        self.process_peak = max(self.process_peak, peak)
        return peak if self.resettable else None

    def fold(self) -> None:
        self.process_peak = max(self.process_peak, status_kib("VmHWM"))


class RequestCounter:
    """A boto3 ``before-send`` hook: one call per HTTP request, tallied by operation."""

    def __init__(self) -> None:
        self.ops: Counter = Counter()
        self._lock = threading.Lock()
        self._sessions: set[int] = set()

    def __call__(self, event_name: str = "", **_: Any) -> None:
        with self._lock:
            self.ops[event_name.rsplit(".", 1)[-1]] += 1

    def attach(self, session: Any) -> None:
        """Register on a boto3 session before any client is made from it: clients copy
        the session's handlers when they are created."""
        if id(session) not in self._sessions:
            self._sessions.add(id(session))
            session.events.register("before-send", self)

    def snapshot(self) -> Counter:
        with self._lock:
            return Counter(self.ops)


def run_phases(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec['phases']`` through ``residency.pipeline``; figures per phase."""
    meter = PeakMeter()
    tracing = bool(spec.get("tracemalloc"))
    if tracing:
        import tracemalloc

        tracemalloc.start()
    sys.path.insert(0, str(ROOT / "include"))
    import logging

    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=str(workdir / f"{spec['name']}.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from residency import pipeline
    from residency.clients import AwsCredentials

    aws = spec["aws"]
    creds = {
        conn_id: AwsCredentials(
            conn_id=conn_id, access_key_id=aws["access_key_id"], secret_access_key=aws["secret_access_key"],
            region_name=region, endpoint_url=aws["endpoint_url"],
            validates_upload_checksums=False,  # moto stores a client's checksum without checking it
        )
        for conn_id, region in (("src", SRC_REGION), ("dst", DST_REGION))
    }
    counter = RequestCounter()
    for c in creds.values():
        counter.attach(c.session())
    rt = pipeline.Runtime({"policy_path": spec["policy_path"], "evidence_dir": spec.get("evidence_dir") or ""},
                          creds.__getitem__)
    shards = spec.get("shards")
    placements = spec.get("placements")
    phases: dict[str, Any] = {}
    for name in spec["phases"]:
        before = counter.snapshot()
        base = meter.start_phase()
        if tracing:
            tracemalloc.reset_peak()
            traced_base = tracemalloc.get_traced_memory()[0]  # modules and setup: not the phase's
        started = time.perf_counter()
        outcome: dict[str, Any]
        if name == "preflight":
            out = pipeline.preflight(rt)
            placements = out["placements"]
            outcome = {"buckets": out["buckets"]}
        elif name == "inventory":
            out = pipeline.run_inventory(rt, placements)
            shards = out["shards"]
            outcome = {k: out[k] for k in ("objects_listed", "objects_in_scope", "bytes_in_scope", "errors",
                                           "refused", "head_requests", "ledger")}
            outcome["shards"] = len(shards)
        elif name in ("copy", "verify"):
            if not shards:
                raise RuntimeError(f"phase {name}: no shards (run inventory first, or pass them)")
            totals: Counter = Counter()
            methods: Counter = Counter()
            keys = (("objects", "copied", "already_present", "already_verified", "failed") if name == "copy"
                    else ("objects", "verified", "already_verified", "not_copied", "failed"))
            for shard in shards:
                summary = (pipeline.copy_shard if name == "copy" else pipeline.verify_shard)(rt, shard)
                totals.update({k: int(summary.get(k, 0)) for k in keys})
                methods.update(summary.get("methods") or {})
                if name == "verify":
                    totals.update({f"algorithm {a}": n for a, n in (summary.get("algorithms") or {}).items()})
            outcome = {**dict(totals), "methods": dict(methods)}
        elif name == "attest":
            out = pipeline.attest_phase(rt)
            outcome = {k: out.get(k) for k in ("examined", "attested", "requeued", "repaired", "arrived")}
        elif name == "evidence":
            out = pipeline.write_evidence(rt, {"dag_id": "bench_scale", "run_id": spec["name"]})
            files = {p.name: p.stat().st_size for p in Path(out["evidence_json"]).parent.iterdir()}
            outcome = {"complete": out["complete"], "problems": out["problems"], "files_bytes": files,
                       "reconciliation_in_ledger": out["reconciliation"].get("in_ledger"),
                       "reconciliation_attested": out["reconciliation"].get("attested")}
        else:
            raise ValueError(f"unknown phase {name!r}")
        seconds = time.perf_counter() - started
        requests = counter.snapshot()
        requests.subtract(before)
        phases[name] = {
            "seconds": seconds,
            "outcome": outcome,
            "requests": sum(requests.values()),
            "requests_by_operation": {k: v for k, v in requests.most_common() if v},
            "base_rss_kib": base,
            "phase_peak_kib": meter.end_phase(),
            "tracemalloc_peak_bytes": tracemalloc.get_traced_memory()[1] - traced_base if tracing else None,
        }
    rt.ledger.dispose()
    meter.fold()
    return {
        "phases": phases,
        "process_peak_kib": meter.process_peak,
        # the kernel's figure, lowered by the per-phase resets: the peak since the last phase began
        "ru_maxrss_kib_at_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "shards": shards if spec.get("return_shards") else None,
        "placements": placements,
    }


def child_main() -> int:
    """``--child``: one JSON spec line on stdin; ``RESULT {...}`` or ``ERROR {...}`` on stdout."""
    spec = json.loads(sys.stdin.readline())
    pid = os.fork()  # a high-water mark of the work's own (see the module docstring)
    if pid:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    try:
        result = run_phases(spec)
        code = 0
        line = "RESULT " + json.dumps(result)
    except BaseException as exc:  # noqa: BLE001 - reported to the driver exactly, never hidden
        traceback.print_exc()
        code = 1
        line = "ERROR " + json.dumps({"type": type(exc).__name__, "message": str(exc),
                                      "traceback": traceback.format_exc()})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    os._exit(code)


# -- the driver -------------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    pass


def run_child(spec: dict[str, Any], timeout: float = 4 * 3600) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child"],
                          input=json.dumps(spec) + "\n", capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
        if line.startswith("ERROR "):
            err = json.loads(line[len("ERROR "):])
            raise ChildFailed(f"{spec['name']}: {err['type']}: {err['message']}\n{err['traceback']}")
    raise ChildFailed(f"{spec['name']}: exit code {proc.returncode}, no result; stderr:\n{proc.stderr[-4000:]}")


def seed(client: Any, bucket: str, n: int, size: int, workers: int = 16) -> float:
    """``n`` objects ``photos/{i:06d}.jpg`` of ``size`` bytes (distinct bodies); returns seconds."""
    started = time.perf_counter()

    def put(i: int) -> None:
        body = (f"{i:016d}".encode() * (size // 16 + 1))[:size]
        client.put_object(Bucket=bucket, Key=f"photos/{i:06d}.jpg", Body=body, ContentType="image/jpeg")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(put, range(n)):
            pass
    return time.perf_counter() - started


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.moto: Any = None
        self.admin: Any = None
        self.pg_db: str | None = None
        self.figures: dict[str, Any] = {"notes": []}

    # -- setup
    def start(self) -> None:
        sys.path.insert(0, str(ROOT / "include"))
        from residency.localcloud.servers import MotoServer

        self.moto = MotoServer(log_path=self.tmp / "moto.log").start()
        self.admin = self.moto.enforce_auth()
        self.s3 = {r: self.admin.client("s3", r) for r in (SRC_REGION, DST_REGION)}
        if not self.args.skip_pg:
            import psycopg2

            name = f"bench_scale_{os.getpid()}"
            conn = psycopg2.connect(PG_ADMIN, connect_timeout=5)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
                cur.execute(f'CREATE DATABASE "{name}"')
            conn.close()
            self.pg_db = name

    def stop(self) -> None:
        if self.pg_db:
            import psycopg2

            conn = psycopg2.connect(PG_ADMIN, connect_timeout=5)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
            conn.close()
        if self.moto is not None:
            self.moto.stop()

    def ledger_url(self, backend: str, name: str) -> str:
        if backend == "postgresql":
            return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.pg_db}"
        return f"sqlite:///{self.tmp / name / 'ledger.db'}"

    @property
    def estate_backend(self) -> str:
        """The ledger of (1), (3) and (4): PostgreSQL as in production, unless --skip-pg."""
        return "postgresql" if self.pg_db else "sqlite"

    def bucket(self, name: str, region: str) -> str:
        self.s3[region].create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
        return name

    def policy(self, name: str, src: str, dst: str, ledger_url: str, shard_size: int) -> Path:
        workdir = self.tmp / name
        workdir.mkdir(parents=True, exist_ok=True)
        policy = {
            "migration_id": name,
            "home_jurisdiction": "JP",
            "control_dir": str(workdir / "control"),
            "ledger_url": ledger_url,
            "sources": [{"uri": f"s3://{src}", "conn_id": "src"}],
            "destinations": {"s3": {"uri": f"s3://{dst}", "conn_id": "dst"}},
            "transfer": {"workers": WORKERS, "shard_size": shard_size},
        }
        path = workdir / "policy.yaml"
        path.write_text(json.dumps(policy, indent=2))  # JSON is YAML
        return path

    def spec(self, name: str, policy: Path, phases: list[str], **extra: Any) -> dict[str, Any]:
        return {
            "name": name, "policy_path": str(policy), "workdir": str(self.tmp / name / "logs"), "phases": phases,
            "aws": {"access_key_id": self.admin.access_key_id, "secret_access_key": self.admin.secret_access_key,
                    "endpoint_url": self.moto.endpoint_url},
            **extra,
        }

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # -- (1) inventory
    def inventory(self) -> None:
        backend = self.estate_backend
        sizes = sorted({max(1, self.args.objects // 10), self.args.objects})
        rows = []
        for n in sizes:
            src = self.bucket(f"scale-inv-{n}", SRC_REGION)
            dst = self.bucket(f"scale-inv-dst-{n}", DST_REGION)
            seeded = seed(self.s3[SRC_REGION], src, n, 16)
            self.say(f"(1) seeded {n:,} x 16 B into s3://{src} in {seeded:.0f}s")
            name = f"inv-{n}"
            policy = self.policy(name, src, dst, self.ledger_url(backend, name), self.args.shard_size)
            res = run_child(self.spec(name, policy, ["preflight", "inventory"], return_shards=True))
            inv = res["phases"]["inventory"]
            row = {
                "objects": n, "ledger": backend, "seconds": inv["seconds"], "objects_per_s": n / inv["seconds"],
                "listing_requests": inv["requests_by_operation"].get("ListObjectsV2", 0),
                "listing_requests_expected": math.ceil(n / 1000),
                "head_requests": inv["outcome"]["head_requests"],
                "head_requests_sent": inv["requests_by_operation"].get("HeadObject", 0),
                "requests": inv["requests"], "requests_by_operation": inv["requests_by_operation"],
                "in_scope": inv["outcome"]["objects_in_scope"], "shards": inv["outcome"]["shards"],
                "base_rss_mib": inv["base_rss_kib"] / KiB,
                "phase_peak_rss_mib": (inv["phase_peak_kib"] or 0) / KiB,
                "process_peak_rss_mib": res["process_peak_kib"] / KiB,
                "tracemalloc_peak_mib": None,
            }
            if not self.args.no_tracemalloc:
                traced = f"inv-{n}-traced"
                tpolicy = self.policy(traced, src, dst, self.ledger_url(backend, traced), self.args.shard_size)
                tres = run_child(self.spec(traced, tpolicy, ["inventory"], tracemalloc=True,
                                           placements=res["placements"]))
                row["tracemalloc_peak_mib"] = tres["phases"]["inventory"]["tracemalloc_peak_bytes"] / MiB
                row["tracemalloc_run_seconds"] = tres["phases"]["inventory"]["seconds"]
            row["raw_listing_seconds"] = list_bucket(self.s3[SRC_REGION], src)
            self.say(f"(1) inventory of {n:,}: {row['seconds']:.1f}s, {row['objects_per_s']:,.0f} objects/s, "
                     f"process peak {row['process_peak_rss_mib']:.0f} MiB")
            rows.append(row)
            if n == self.args.objects:
                self.estate = {"name": name, "policy": policy, "src": src, "dst": dst, "shards": res["shards"],
                               "placements": res["placements"]}
        small, big = rows[0], rows[-1]
        self.figures["inventory"] = {
            "runs": rows,
            "peak_growth_mib": big["process_peak_rss_mib"] - small["process_peak_rss_mib"],
            "phase_peak_growth_mib": big["phase_peak_rss_mib"] - small["phase_peak_rss_mib"],
            "tracemalloc_growth_mib": (big["tracemalloc_peak_mib"] - small["tracemalloc_peak_mib"]
                                       if big["tracemalloc_peak_mib"] is not None else None),
        }

    # -- (2) copy + verify
    def copy_verify(self) -> None:
        n = self.args.copy_objects
        src = self.bucket("scale-cv-src", SRC_REGION)
        seeded = seed(self.s3[SRC_REGION], src, n, 4 * KiB)
        self.say(f"(2) seeded {n:,} x 4 KiB into s3://{src} in {seeded:.0f}s")
        runs = []
        for backend in ["sqlite"] + (["postgresql"] if self.pg_db else []):
            dst = self.bucket(f"scale-cv-dst-{backend}", DST_REGION)
            name = f"cv-{backend}"
            policy = self.policy(name, src, dst, self.ledger_url(backend, name), self.args.shard_size)
            res = run_child(self.spec(name, policy, ["preflight", "inventory", "copy", "verify"]))
            ph = res["phases"]
            run = {"ledger": backend, "objects": n, "shards": ph["inventory"]["outcome"]["shards"]}
            for phase in ("copy", "verify"):
                p = ph[phase]
                run[phase] = {
                    "seconds": p["seconds"], "objects_per_s": n / p["seconds"],
                    "requests": p["requests"], "requests_per_object": p["requests"] / n,
                    "requests_by_operation": p["requests_by_operation"], "outcome": p["outcome"],
                    "phase_peak_rss_mib": (p["phase_peak_kib"] or 0) / KiB,
                }
            run["process_peak_rss_mib"] = res["process_peak_kib"] / KiB
            run["ok"] = (ph["copy"]["outcome"].get("failed", 0) == 0 and ph["verify"]["outcome"].get("failed", 0) == 0
                         and ph["verify"]["outcome"].get("verified", 0) + ph["verify"]["outcome"].get(
                             "already_verified", 0) == n)
            self.say(f"(2) {backend}: copy {run['copy']['objects_per_s']:.0f} objects/s, verify "
                     f"{run['verify']['objects_per_s']:.0f} objects/s, ok={run['ok']}")
            runs.append(run)
        self.figures["copy_verify"] = {"runs": runs}

    # -- (3) memory of a copy task
    def copy_task_memory(self) -> None:
        n = COPY_TASK_OBJECTS
        backend = self.estate_backend
        src = self.bucket("scale-mem-src", SRC_REGION)
        dst = self.bucket("scale-mem-dst", DST_REGION)
        seed(self.s3[SRC_REGION], src, n, 4 * KiB)
        name = "mem"
        policy = self.policy(name, src, dst, self.ledger_url(backend, name), n)
        inv = run_child(self.spec(f"{name}-inventory", policy, ["preflight", "inventory"], return_shards=True))
        shards = inv["shards"]
        res = run_child(self.spec(f"{name}-copy", policy, ["copy"], shards=shards))
        copy = res["phases"]["copy"]
        peak = res["process_peak_kib"] / KiB
        self.figures["copy_task_memory"] = {
            "objects": n, "workers": WORKERS, "ledger": backend, "shards": len(shards),
            "process_peak_rss_mib": peak, "base_rss_mib": copy["base_rss_kib"] / KiB,
            "copy_phase_peak_rss_mib": (copy["phase_peak_kib"] or 0) / KiB,
            "copied": copy["outcome"].get("copied", 0), "failed": copy["outcome"].get("failed", 0),
            "seconds": copy["seconds"], "target_mib": COPY_TASK_TARGET_MIB,
            "within_target": peak < COPY_TASK_TARGET_MIB,
        }
        self.say(f"(3) copy task of {n:,}: process peak {peak:.0f} MiB")

    # -- (4) evidence
    def evidence(self) -> None:
        estate = self.estate
        n = self.args.objects
        runs = {r["ledger"]: r for r in self.figures.get("copy_verify", {}).get("runs", [])}
        rates = runs.get(self.estate_backend) or runs.get("sqlite")
        mode = self.args.evidence
        estimate = None
        if rates:
            # attest lists both sides and HEADs where a listing is no proof: counted as a second verify
            estimate = n / rates["copy"]["objects_per_s"] + 2 * n / rates["verify"]["objects_per_s"]
        if mode == "auto":
            mode = "real" if estimate is not None and estimate <= self.args.real_budget else "seeded"
        fig: dict[str, Any] = {"objects": n, "ledger": self.estate_backend, "estate": mode,
                               "real_estimate_seconds": estimate}
        if mode == "real":
            self.say(f"(4) migrating the {n:,}-object estate for real (estimate {estimate or 0:.0f}s)")
            res = run_child(self.spec(f"{estate['name']}-migrate", estate["policy"], ["copy", "verify", "attest"],
                                      shards=estate["shards"]))
            fig["migration"] = {p: {"seconds": v["seconds"], "objects_per_s": n / v["seconds"],
                                    "requests_per_object": v["requests"] / n, "outcome": v["outcome"]}
                                for p, v in res["phases"].items()}
        else:
            why = ("--evidence seeded" if self.args.evidence == "seeded" else
                   f"a real migration was estimated at {estimate:.0f}s, over {self.args.real_budget:.0f}s"
                   if estimate is not None else "no copy rate from (2) to estimate a real migration")
            self.say(f"(4) seeding the {n:,} inventoried rows as VERIFIED and attested in the ledger ({why})")
            fig["seeded_because"] = why
            fig["seed_seconds"] = seed_verified(self.ledger_url(self.estate_backend, estate["name"]), estate["name"],
                                                estate["src"])
        out_dir = self.tmp / estate["name"] / "evidence"
        res = run_child(self.spec(f"{estate['name']}-evidence", estate["policy"], ["evidence"],
                                  evidence_dir=str(out_dir)))
        ev = res["phases"]["evidence"]
        fig.update({
            "seconds": ev["seconds"], "objects_per_s": n / ev["seconds"], "complete": ev["outcome"]["complete"],
            "problems": ev["outcome"]["problems"], "files_bytes": ev["outcome"]["files_bytes"],
            "attested_objects": (ev["outcome"]["reconciliation_attested"] or {}).get("objects"),
            "base_rss_mib": ev["base_rss_kib"] / KiB, "phase_peak_rss_mib": (ev["phase_peak_kib"] or 0) / KiB,
            "process_peak_rss_mib": res["process_peak_kib"] / KiB, "requests": ev["requests"],
        })
        self.figures["evidence"] = fig
        self.say(f"(4) evidence of {n:,}: {fig['seconds']:.1f}s, process peak {fig['process_peak_rss_mib']:.0f} MiB")


def list_bucket(client: Any, bucket: str) -> float:
    """Seconds a bare ListObjectsV2 loop takes over the bucket: the emulator's share of an inventory."""
    started = time.perf_counter()
    for _ in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 1000}):
        pass
    return time.perf_counter() - started


def seed_verified(url: str, migration_id: str, src_bucket: str) -> float:
    """Mark every inventoried row VERIFIED and attested, with the fields the engine writes
    for a server-side S3 copy on moto (verified by the MD5 of the copy response, attested
    from the destination listing), and record copy, verify and attest phases in the
    order a real run leaves them."""
    from collections import Counter

    import sqlalchemy as sa

    from residency.attest import AttestResult, SourceAttestation
    from residency.ledger import Ledger, now

    started = time.perf_counter()
    ledger = Ledger(url)
    uri = f"s3://{src_bucket}"
    with ledger.engine.connect() as conn:
        count, size = conn.execute(sa.text("SELECT count(*), coalesce(sum(size), 0) FROM residency_objects "
                                           "WHERE migration_id = :mid"), {"mid": migration_id}).one()
    ledger.record_phase(migration_id, "copy", {"seeded": True, "copied": count})
    ledger.record_phase(migration_id, "verify", {"seeded": True, "verified": count})
    ledger.audit(migration_id, "bench.seeded", {"verified": count, "note": "rows marked verified by bench_scale"})
    stamp = now()  # the attestation's: every row re-proven by it
    with ledger.engine.begin() as conn:
        conn.execute(sa.text(
            "UPDATE residency_objects SET state = 'verified', copy_action = 'copied', copy_method = 'server_side', "
            "verify_algorithm = 'md5', verify_method = 'copy_response', dst_checksums = src_checksums, "
            "dst_etag = src_etag, proof = 'seeded by bench_scale: the MD5 of the copy response equals the source''s', "
            "attested_at = :stamp, attest_method = 'listing_etag', src_checked_at = :stamp, updated_at = :stamp, "
            "attempts = 1 WHERE migration_id = :mid"), {"stamp": stamp, "mid": migration_id})
    attested = SourceAttestation(uri, examined=count, attested=count, attested_bytes=int(size),
                                 methods=Counter({"listing_etag": count}))
    ledger.record_phase(migration_id, "attest", AttestResult("attest", stamp, False, {uri: attested}).summary())
    ledger.dispose()
    return time.perf_counter() - started


# -- output -----------------------------------------------------------------------------------


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3 if abs(value) < 10 else 1)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def human(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n / KiB:.0f} KiB"


def report(fig: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str]] = []
    inv = fig.get("inventory")
    if inv:
        for r in inv["runs"]:
            n = f"{r['objects']:,}"
            rows += [
                (f"(1) inventory {n}: wall time", f"{r['seconds']:.1f} s", f"ledger {r['ledger']}"),
                (f"(1) inventory {n}: rate", f"{r['objects_per_s']:,.0f} obj/s", f"{r['in_scope']:,} in scope"),
                (f"(1) inventory {n}: moto listing alone", f"{r['raw_listing_seconds']:.1f} s",
                 "a bare boto3 ListObjectsV2 loop over the same bucket: the emulator's share of the wall time"),
                (f"(1) inventory {n}: listing requests", f"{r['listing_requests']}",
                 f"expected ceil(N/1000) = {r['listing_requests_expected']}"),
                (f"(1) inventory {n}: HEAD requests", f"{r['head_requests']}",
                 f"sent {r['head_requests_sent']}; all requests {r['requests']}"),
                (f"(1) inventory {n}: peak RSS (process)", f"{r['process_peak_rss_mib']:.0f} MiB",
                 f"phase peak {r['phase_peak_rss_mib']:.0f}, base {r['base_rss_mib']:.0f} MiB"),
            ]
            if r["tracemalloc_peak_mib"] is not None:
                rows.append((f"(1) inventory {n}: Python heap peak", f"{r['tracemalloc_peak_mib']:.1f} MiB",
                             f"above the heap at its start; tracemalloc run took {r['tracemalloc_run_seconds']:.1f} s"))
        heap = (f", Python heap {inv['tracemalloc_growth_mib']:+.1f} MiB" if inv["tracemalloc_growth_mib"] is not None
                else "")
        small, big = inv["runs"][0]["objects"], inv["runs"][-1]["objects"]
        rows.append((f"(1) peak RSS growth {small:,} -> {big:,}", f"{inv['peak_growth_mib']:+.0f} MiB",
                     f"phase peak {inv['phase_peak_growth_mib']:+.0f} MiB{heap}; flat in N: near 0"))
    cv = fig.get("copy_verify")
    if cv:
        for r in cv["runs"]:
            n = f"{r['objects']:,}"
            for phase in ("copy", "verify"):
                p = r[phase]
                ops = ", ".join(f"{k} {v:,}" for k, v in p["requests_by_operation"].items())
                rows.append((f"(2) {phase} {n} x 4 KiB, {r['ledger']}", f"{p['objects_per_s']:,.0f} obj/s",
                             f"{p['seconds']:.1f} s; {p['requests_per_object']:.2f} req/obj ({ops})"))
            rows.append((f"(2) {r['ledger']}: all verified, peak RSS", "ok" if r["ok"] else "NOT OK",
                         f"{r['process_peak_rss_mib']:.0f} MiB, {r['shards']} shards"))
    mem = fig.get("copy_task_memory")
    if mem:
        verdict = "PASS" if mem["within_target"] else "MISS"
        rows.append((f"(3) copy task {mem['objects']:,} x 4 KiB, {mem['workers']} workers: peak RSS",
                     f"{mem['process_peak_rss_mib']:.0f} MiB",
                     f"{verdict} (target < {mem['target_mib']} MiB); base {mem['base_rss_mib']:.0f}, copy phase "
                     f"peak {mem['copy_phase_peak_rss_mib']:.0f} MiB; copied {mem['copied']:,} in "
                     f"{mem['seconds']:.1f} s"))
    ev = fig.get("evidence")
    if ev:
        how = ("migrated for real" if ev["estate"] == "real"
               else "SEEDED: rows marked verified+attested in the ledger, not copied")
        rows.append((f"(4) evidence build {ev['objects']:,} objects", f"{ev['seconds']:.1f} s",
                     f"{ev['objects_per_s']:,.0f} obj/s; ledger {ev['ledger']}; estate {how}"))
        rows.append(("(4) evidence: peak RSS (process)", f"{ev['process_peak_rss_mib']:.0f} MiB",
                     f"phase peak {ev['phase_peak_rss_mib']:.0f}, base {ev['base_rss_mib']:.0f} MiB"))
        files = ", ".join(f"{k} {human(v)}" for k, v in sorted(ev["files_bytes"].items()))
        rows.append(("(4) evidence: verdict, files", "COMPLETE" if ev["complete"] else "INCOMPLETE",
                     f"{ev['attested_objects']} attested; {files}"))
        if ev.get("migration"):
            for p, v in ev["migration"].items():
                rows.append((f"(4) real {p} of the estate", f"{v['objects_per_s']:,.0f} obj/s",
                             f"{v['seconds']:.1f} s; {v['requests_per_object']:.2f} req/obj"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'figure':<{w0}}  {'value':>{w1}}  notes")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:>{w1}}  {c}")
    if ev and ev["problems"]:
        print("evidence problems (the verdict's reasons):")
        for p in ev["problems"]:
            print(f"  - {p}")
    for note in fig["notes"]:
        print(f"note: {note}")


MEANINGS = """\
What the figures mean:
  (1) wall time of pipeline.run_inventory in a child process (listing + ledger writes, one
      transaction per page of 1,000); listing requests are ListObjectsV2 pages; HEAD requests are
      objects whose name could not decide their selection (none here: every key ends in .jpg).
      Moto listing alone: the same pages listed by a bare boto3 loop (moto's cost, no ledger).
      Peak RSS: process = the child's high-water mark over its life (imports included); phase =
      during the inventory alone; base = resident at its start. Python heap peak: the most Python
      heap the inventory held above what the process held at its start (tracemalloc, in a separate,
      slower run). Flat in N: the peaks at N and N/10 differ by little.
  (2) each phase over every shard, one after the other, 16 worker threads per shard; objects/s =
      objects / phase seconds; req/obj = HTTP requests the phase sent / objects, by operation.
  (3) the peak RSS of a process that runs one copy task (one shard of 2,000 objects) and nothing
      else, imports included: what a worker's memory limit must hold.
  (4) pipeline.write_evidence end to end: audit.jsonl, objects.jsonl, evidence.json (schema-checked)
      and evidence.html, from the ledger of the N-object estate.
  Noise: 2 cores shared by moto, PostgreSQL, this benchmark and other engineers' test runs;
  figures move by tens of percent between runs."""


def main() -> int:
    if "--child" in sys.argv[1:]:
        return child_main()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000, help="objects of the inventory and evidence estate")
    parser.add_argument("--copy-objects", type=int, default=10_000, help="objects copied and verified in (2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5,000 / 1,000 objects")
    parser.add_argument("--skip-pg", action="store_true", help="SQLite ledgers only")
    parser.add_argument("--shard-size", type=int, default=1000, help="objects per shard (policy transfer.shard_size)")
    parser.add_argument("--evidence", choices=("auto", "real", "seeded"), default="auto",
                        help="migrate the estate of (1) for real, or seed its rows as verified; auto: by (2)'s rates")
    parser.add_argument("--real-budget", type=float, default=600.0,
                        help="auto: migrate for real when (2)'s rates say it takes at most this many seconds")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the tracemalloc runs of (1)")
    parser.add_argument("--only", default="1,2,3,4", help="which figures, e.g. 1,4 (4 needs 1)")
    args = parser.parse_args()
    if args.quick:
        args.objects, args.copy_objects = 5_000, 1_000
    only = {int(x) for x in args.only.split(",") if x.strip()}
    if 4 in only:
        only.add(1)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start()
            for figure, step in ((1, bench.inventory), (2, bench.copy_verify), (3, bench.copy_task_memory),
                                 (4, bench.evidence)):
                if figure in only:
                    try:
                        step()
                    except ChildFailed as exc:
                        bench.figures["notes"].append(f"({figure}) FAILED in the engine: {exc}")
                        bench.say(f"({figure}) FAILED: {exc}")
                        if figure == 1:
                            only.discard(4)
        finally:
            bench.stop()
    fig = bench.figures
    fig["args"] = {"objects": args.objects, "copy_objects": args.copy_objects, "shard_size": args.shard_size,
                   "workers": WORKERS, "pg": not args.skip_pg, "cpus": os.cpu_count(),
                   "load_average_at_end": os.getloadavg()[0]}
    fig["wall_seconds"] = time.perf_counter() - started
    print(f"objects {args.objects:,} (inventory, evidence), {args.copy_objects:,} (copy + verify); "
          f"{WORKERS} workers; shard_size {args.shard_size}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs; total {fig['wall_seconds']:.0f}s")
    report(fig)
    print(MEANINGS)
    print(json.dumps(rounded(fig), sort_keys=True))
    return 0 if not any("FAILED" in n for n in fig["notes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
