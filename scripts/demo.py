"""`make demo`: a whole Seoul -> Tokyo migration on the local cloud and a real Airflow.

Starts moto server on loopback (S3, IAM, STS, with IAM enforcement on) and
fake-gcs-server (GCS), seeds the overseas estate (S3 and GCS buckets, routed
s3->s3, s3->gs, gs->gs and gs->s3) and the application database, starts a local
Airflow deployment (API server, scheduler with LocalExecutor, DAG processor,
triggerer), triggers the `residency_migration` DAG through the REST API and
answers its two approvals (cutover, revocation) through the REST API as the named
user `demo-approver`, the same path a manager's click in the UI takes. Then it
triggers `residency_purge` (the Seoul copies, approved the same way) and
`residency_revoke` once more (every path must read "already revoked"), prints a summary, writes demo-output/ (the evidence and every task's log, fetched
through the API), stops what it started, and exits non-zero unless the migration
fully succeeded.

`make demo EXECUTOR=celery` (or `--executor celery`, or the environment variable
EXECUTOR) runs the same migration on the CeleryExecutor: Redis on 127.0.0.1:6379
as the broker, the metadata database and Celery's results on the machine's
PostgreSQL, the ledger in a PostgreSQL database of its own (`residency_demo_ledger`,
recreated on each run and left for inspection), and two Celery workers, each with
its own home, working and temporary directories. It prints which worker ran each
copy and verify task instance and checks the evidence counts against the estate's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from residency.localcloud.deployment import (  # noqa: E402
    PG_HOST, PG_PORT, PG_USER, AirflowDeployment, create_database, drop_database,
)
from residency.localcloud.estate import seed_estate, upload_late  # noqa: E402
from residency.localcloud.servers import FakeGcsServer, MotoServer  # noqa: E402

DAG_ID = "residency_migration"
PURGE_DAG = "residency_purge"
REVOKE_DAG = "residency_revoke"
APPROVER = "demo-approver"
NOTE_CONN_ID = "residency_airflow_api"  # residency_airflow.NOTE_CONN_ID, without importing Airflow here

OUT = ROOT / "demo-output"
WORK = ROOT / ".localcloud" / "demo"
EXECUTORS = ("local", "celery")
#: The ledger of `make demo EXECUTOR=celery`: workers that share no disk share no SQLite file.
CELERY_LEDGER_DB = "residency_demo_ledger"
CELERY_WORKERS = 2


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executor", choices=EXECUTORS, default=os.environ.get("EXECUTOR") or "local",
                        help="local (LocalExecutor, the default) or celery (CeleryExecutor with two workers); "
                             "default: $EXECUTOR, else local")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.executor not in EXECUTORS:  # $EXECUTOR is not checked by argparse's choices
        print(f"EXECUTOR must be one of {', '.join(EXECUTORS)}, got {args.executor!r}")
        return 2
    celery = args.executor == "celery"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "urllib3", "boto3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    shutil.rmtree(WORK, ignore_errors=True)
    shutil.rmtree(OUT, ignore_errors=True)
    WORK.mkdir(parents=True)
    OUT.mkdir(parents=True)
    ledger_url = None
    if celery:
        drop_database(CELERY_LEDGER_DB)
        create_database(CELERY_LEDGER_DB)
        ledger_url = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{CELERY_LEDGER_DB}"

    with MotoServer(log_path=WORK / "moto.log") as server, FakeGcsServer(log_path=WORK / "fake-gcs.log") as gcs:
        admin = server.enforce_auth()
        print(f"local cloud: moto server (S3, IAM, STS) on {server.endpoint_url}, IAM enforcement on; "
              f"fake-gcs-server (GCS) on {gcs.endpoint_url}")
        estate = seed_estate(server, admin, WORK, gcs=gcs, scale="demo", ledger_url=ledger_url)
        print(
            f"seeded: {len(estate.source_buckets) + len(estate.gcs_source_buckets)} Seoul buckets (S3 and GCS), "
            f"{estate.media_objects} media objects "
            f"({human(estate.media_bytes)}), {estate.other_objects} non-media objects, "
            f"{estate.references} URL references in {estate.app_db_url}"
        )
        if celery:
            print(f"ledger: {ledger_url} (PostgreSQL: the workers share no disk)")
            print(f"starting a local Airflow (API server, scheduler with the CeleryExecutor, DAG processor, "
                  f"triggerer, {CELERY_WORKERS} Celery workers) ...")
        else:
            print("starting a local Airflow (API server, scheduler with the LocalExecutor, DAG processor, triggerer) ...")
        with AirflowDeployment(WORK / "airflow", dags_folder=ROOT / "dags", plugins_folder=ROOT / "plugins",
                               env={**estate.connection_env(), "RESIDENCY_POLICY": str(estate.policy_path)},
                               wait_for_dags=[DAG_ID, PURGE_DAG, REVOKE_DAG], api_connections={NOTE_CONN_ID: "manager"},
                               executor=args.executor, workers=CELERY_WORKERS) as airflow:
            if celery:
                print(f"Airflow at {airflow.base_url} ({airflow.backend} metadata), CeleryExecutor: broker "
                      f"{airflow.broker_url}, results in PostgreSQL, workers "
                      + ", ".join(f"{w.name} ({w.celery_hostname}, hostname {w.address}, home {w.home})"
                                  for w in airflow.celery_workers))
            else:
                print(f"Airflow at {airflow.base_url} ({airflow.backend} metadata), LocalExecutor")
            print(f"triggering {DAG_ID} ...")
            t0 = time.monotonic()
            outcome = _run(airflow, estate, admin, gcs)
            dag_seconds = time.monotonic() - t0
            workers_line = _print_workers(airflow, outcome["tasks"]) if celery else None
            after = _purge_and_revoke_again(airflow, estate) if outcome["state"] == "success" else {}

    evidence_path = OUT / "evidence.json"
    if not evidence_path.exists():
        print(f"FAILED: no evidence was written; DAG run state {outcome['state']}; task logs in {OUT / 'task-logs'}")
        return 1
    evidence = json.loads(evidence_path.read_text())
    rec = evidence["reconciliation"]
    refs = evidence.get("references", {}).get("cutover") or {}
    residual = evidence.get("references", {}).get("residual_scan") or {}
    print()
    print(f"migration {evidence['migration_id']}  policy sha256:{evidence['policy']['sha256'][:16]}")
    for src in evidence["sources"]:
        c = src["counts"]
        print(
            f"  {src['uri']:<28} {src['region']} ({src['jurisdiction']}, {src.get('placement_source', '?')}): "
            f"listed {c['inventoried']['objects']}, "
            f"in scope {c['in_scope']['objects']} ({human(c['in_scope']['bytes'])}), "
            f"verified {c['verified']['objects']}, failed {c['failed']['objects']}"
        )
    for route in evidence.get("routes", []):
        c = route["counts"]
        print(
            f"  route {route['route']}: copied {c['copied']['objects']}, already present {c['already_present']['objects']}, "
            f"verified {c['verified']['objects']} ({human(c['verified']['bytes'])}) by "
            f"{', '.join(f'{k} x{v}' for k, v in route['algorithms'].items())} "
            f"({', '.join(f'{k} x{v}' for k, v in route['methods'].items())})"
        )
    print(
        f"  reconciliation: in scope {rec['in_scope']['objects']} = copied {rec['copied']['objects']} + already present "
        f"{rec['already_present']['objects']}; verified {rec['verified']['objects']}; failed {rec['failed']['objects']}; "
        f"balanced: {rec.get('balanced')}"
    )
    attestation = evidence.get("attestation") or {}
    print(
        f"  attested just before the report: {rec['attested']['objects']} of {rec['verified']['objects']} verified "
        f"objects re-proven; repaired {attestation.get('repaired', 0)}; media arrived since the inventory: "
        f"{attestation.get('arrived', 0)}"
    )
    print(
        f"  references: scanned {refs.get('scanned', 0)}, rewritten {refs.get('rewritten', 0)}, "
        f"already rewritten {refs.get('already_rewritten', 0)}; scanned again for the report: "
        f"{residual.get('residual', 0)} still pointing overseas {residual.get('by_reason', {})}, "
        f"{residual.get('accepted', 0)} accepted by the policy with a reason"
    )
    live = evidence.get("live_cutover") or {}
    for name in ("catch_up", "final_pass"):
        phase = live.get(name) or {}
        if phase.get("passes") is not None:
            print(f"  {name.replace('_', ' ')}: {len(phase['passes'])} pass(es), {phase.get('delta', 0)} object(s) new or "
                  f"changed since the listing before, {phase.get('remaining', 0)} not verified after it "
                  f"({phase.get('stopped_because')})")
    for bucket in (live.get("freeze") or {}).get("buckets", []):
        proof = bucket.get("proof") or {}
        print(f"  freeze {bucket['bucket_uri']}: {bucket['action']}"
              + (f", {proof.get('status')}: {proof.get('reason')}" if proof else f" ({bucket.get('why')})"))
    for bucket in (live.get("unfreeze") or {}).get("buckets", []):
        print(f"  unfreeze {bucket['bucket_uri']}: {bucket['action']}")
    for rule in residual.get("accepted_by_rule", []):
        print(f"    accepted {rule['references']} ({rule['rule']}): {rule['reason']}")
    for rev in evidence.get("revocations", {}).get("records", []):
        proof = rev["proof"]
        print(f"  revoked {rev.get('kind', 'access_key').replace('_', ' ')} {rev['credential_id']} of "
              f"{rev['principal']}: {proof.get('status')} by {str(proof.get('method')).replace('_', ' ')} "
              f"({proof.get('reason')})")
    for approval in evidence.get("approvals", []):
        print(f"  approval of the {approval['step']}: {approval['decision']} by {approval['who']} at {approval['when']}")
    print(f"  audit log: {evidence['audit_log']['records']} records, chain head {evidence['audit_log']['head'][:16]}")
    print(f"evidence: {OUT / 'evidence.json'}  {OUT / 'evidence.html'}")
    expected = _expected_counts(estate, outcome["late"])
    found = _evidence_counts(evidence)
    same = found == expected
    print(f"executor: {args.executor}{' (' + workers_line + ')' if workers_line else ''}; evidence counts "
          f"{'equal' if same else 'DIFFER from'} the seeded estate's (what the embedded LocalExecutor run reports): "
          f"{found}" + ("" if same else f" != {expected}"))
    print(f"DAG run {outcome['run_id']}: {outcome['state']} in {dag_seconds:.0f}s; demo total "
          f"{time.monotonic() - started:.0f}s; run note: {outcome['note']!r}")
    for rule in evidence.get("complete_rules", []):
        print(f"  rule {rule['id']:<12} {'holds' if rule['holds'] else 'FAILS: ' + '; '.join(rule['problems'])}")
    purge_ok = _print_after(after)
    if outcome["state"] != "success" or not evidence.get("complete") or not same or not purge_ok:
        print("MIGRATION NOT COMPLETE:", "; ".join(evidence.get("problems", [])) or f"DAG run {outcome['state']}",
              f"failed tasks: {', '.join(outcome['failed']) or '-'}")
        return 1
    print("MIGRATION COMPLETE")
    return 0


def _run(airflow: AirflowDeployment, estate, admin, gcs) -> dict:
    """Trigger the DAG as ``manager``, answer each approval as ``demo-approver`` through
    the REST API (printing what it approved), wait for the end, fetch every task's log.

    The application stays live meanwhile: photos are uploaded (and linked from new chat
    messages) once the inventory is done, and again while the cutover waits for its
    approval; the catch-up passes and the final pass must find and migrate them."""
    manager, approver = airflow.api("manager"), airflow.api(APPROVER)
    run_id = manager.trigger(DAG_ID, {"policy_path": str(estate.policy_path), "evidence_dir": str(OUT),
                                      "dry_run": False})
    answered: set[str] = set()
    late: list = []

    def upload(wave: int, when: str) -> None:
        late.append(upload_late(estate, admin, gcs, wave))
        print(f"  the app uploaded {late[-1].objects} photos {when}, each linked from a new chat message: "
              + ", ".join(late[-1].uris))

    def answer(_api, _run) -> None:
        if not late and any(t["task_id"] == "inventory" and t["state"] == "success"
                            for t in manager.task_instances(DAG_ID, run_id)):
            upload(1, "after the inventory")
        for request in approver.pending_approvals(DAG_ID, run_id):
            task_id = request["task_instance"]["task_id"]
            if task_id in answered:
                continue
            if task_id == "approve_cutover" and len(late) == 1:
                upload(2, "while the cutover waited for its approval")
            approver.respond(DAG_ID, run_id, task_id, "Approve",
                             {"comment": "approved unattended by make demo"}, request["task_instance"]["map_index"])
            answered.add(task_id)
            print(f"  {task_id}: \"{request.get('subject')}\" approved through Airflow's REST API as {APPROVER!r}")

    state = manager.wait_for_run(DAG_ID, run_id, timeout=1800, on_poll=answer)
    tasks = manager.task_instances(DAG_ID, run_id)
    logs = OUT / "task-logs"
    logs.mkdir(parents=True, exist_ok=True)
    for t in tasks:
        if t["state"] in ("success", "failed") and t["try_number"]:
            name = t["task_id"] + (f"-{t['map_index']:03d}" if t["map_index"] >= 0 else "")
            (logs / f"{name}.log").write_text(
                manager.task_log(DAG_ID, run_id, t["task_id"], t["try_number"], t["map_index"]), encoding="utf-8")
    return {"run_id": run_id, "state": state, "note": manager.run_note(DAG_ID, run_id), "late": late,
            "failed": sorted({t["task_id"] for t in tasks if t["state"] == "failed"}), "tasks": tasks}


def _run_dag(airflow: AirflowDeployment, dag_id: str, conf: dict) -> dict:
    """Trigger ``dag_id`` as ``manager``, approve what it asks as ``demo-approver``, wait for the end."""
    manager, approver = airflow.api("manager"), airflow.api(APPROVER)
    run_id = manager.trigger(dag_id, conf)

    def answer(_api, _run) -> None:
        for request in approver.pending_approvals(dag_id, run_id):
            task_id = request["task_instance"]["task_id"]
            approver.respond(dag_id, run_id, task_id, "Approve", {"comment": "approved unattended by make demo"},
                             request["task_instance"]["map_index"])
            print(f"  {task_id}: \"{request.get('subject')}\" approved through Airflow's REST API as {APPROVER!r}")

    state = manager.wait_for_run(dag_id, run_id, timeout=900, on_poll=answer)
    return {"run_id": run_id, "state": state, "note": manager.run_note(dag_id, run_id)}


def _purge_and_revoke_again(airflow: AirflowDeployment, estate) -> dict:
    """After the migration: purge the Seoul copies (policy purge.soak_hours is 0 in the demo), then run the
    revocation again on its own, which must find every path already closed."""
    out = {}
    print(f"triggering {PURGE_DAG} (the Seoul copies whose Tokyo copy is re-attested now) ...")
    out["purge"] = _run_dag(airflow, PURGE_DAG, {"policy_path": str(estate.policy_path),
                                                 "evidence_dir": str(OUT / "purge"), "dry_run": False})
    print(f"triggering {REVOKE_DAG} again (a re-run: every path must read 'already revoked') ...")
    out["revoke"] = _run_dag(airflow, REVOKE_DAG, {"policy_path": str(estate.policy_path),
                                                   "evidence_dir": str(OUT / "revoke"), "dry_run": False})
    return out


def _print_after(after: dict) -> bool:
    """Print the purge's and the re-run revocation's outcome; True when both succeeded."""
    if not after:
        return False
    ok = True
    purge_path = OUT / "purge" / "purge-evidence.json"
    if purge_path.exists():
        doc = json.loads(purge_path.read_text())
        for uri, b in doc["buckets"].items():
            print(f"  purged {uri}: {b['purged_objects']} objects, {b['purged_versions']} versions, "
                  f"{b['purged_delete_markers']} delete markers, {human(b['purged_bytes'])}; "
                  f"{b['uploads_aborted']} incomplete uploads aborted; already purged {b['already_purged']}")
        for r in doc.get("remaining_abroad") or []:
            print(f"  remaining abroad in {r['source']}: {r['objects']} objects ({human(r['bytes'])}), "
                  f"{r['reason']}: {r['why']}")
    revoke_path = OUT / "revoke" / "revoke-evidence.json"
    if revoke_path.exists():
        doc = json.loads(revoke_path.read_text())
        outcomes: dict[str, int] = {}
        for r in doc["records"]:
            outcomes[r["proof"].get("outcome", "?")] = outcomes.get(r["proof"].get("outcome", "?"), 0) + 1
        print(f"  revocation re-run: {doc['verdict']}; {len(doc['records'])} paths: {outcomes}; still open now: "
              f"{len((doc.get('recheck') or {}).get('open', []))}")
    for name, run in after.items():
        print(f"  {name} DAG run {run['run_id']}: {run['state']}; note: {run['note']!r}")
        ok = ok and run["state"] == "success"
    return ok


def _print_workers(airflow: AirflowDeployment, tasks: list[dict]) -> str:
    """Which Celery worker ran each copy and verify task instance (the REST API's
    ``hostname``: each worker reports its own address); returns a one-line tally."""
    print("task instances per worker (hostname from the REST API):")
    tally: dict[str, int] = {w.name: 0 for w in airflow.celery_workers}
    for t in sorted(tasks, key=lambda t: (t["map_index"], t["task_id"])):
        if not t["task_id"].startswith(("copy_to_", "verify_to_")) or t["state"] != "success":
            continue
        worker = airflow.worker_of(t.get("hostname"))
        name = worker.name if worker else f"unknown host {t.get('hostname')!r}"
        tally[name] = tally.get(name, 0) + 1
        print(f"  {t['task_id']:<12} {t.get('rendered_map_index') or t['map_index']:<52} {name} ({t.get('hostname')})")
    line = ", ".join(f"{name} ran {n} copy/verify task instances" for name, n in tally.items())
    busy = [name for name, n in tally.items() if n and not name.startswith("unknown")]
    print(f"  {line}" + ("" if len(busy) == len(airflow.celery_workers)
                         else f"; NOTE: only {', '.join(busy) or 'no worker'} took copy/verify work"))
    return line


def _expected_counts(estate, late: list) -> dict:
    """What a complete run of the seeded estate (and the uploads made during the run)
    reports, whichever executor ran it."""
    routes = {r: c["objects"] for r, c in sorted(estate.routes.items())}
    for wave in late:
        for uri in wave.uris:
            route = "gs->gs" if uri.startswith("gs://") else "s3->s3"
            routes[route] = routes.get(route, 0) + 1
    objects = estate.media_objects + sum(w.objects for w in late)
    return {"in_scope": objects, "verified": objects, "failed": 0,
            "in_scope_bytes": estate.media_bytes + sum(w.bytes for w in late), "routes": routes}


def _evidence_counts(evidence: dict) -> dict:
    rec = evidence["reconciliation"]
    return {"in_scope": rec["in_scope"]["objects"], "verified": rec["verified"]["objects"],
            "failed": rec["failed"]["objects"], "in_scope_bytes": rec["in_scope"]["bytes"],
            "routes": {r["route"]: r["counts"]["verified"]["objects"] for r in sorted(
                evidence.get("routes", []), key=lambda r: r["route"])}}


if __name__ == "__main__":
    sys.exit(main())
