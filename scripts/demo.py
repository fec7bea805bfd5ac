"""`make demo`: a whole Seoul -> Tokyo migration on the local cloud.

Starts moto server on loopback (S3, IAM, STS, with IAM enforcement on) and
fake-gcs-server (GCS), seeds the overseas estate (S3 and GCS buckets, routed
s3->s3, s3->gs, gs->gs and gs->s3) and the application database, runs the `residency_migration`
DAG with `airflow dags test`, prints a summary, writes demo-output/, stops what it
started, and exits non-zero unless the migration fully succeeded.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from residency.localcloud.dagrun import run_dag_test  # noqa: E402
from residency.localcloud.estate import seed_estate  # noqa: E402
from residency.localcloud.servers import FakeGcsServer, MotoServer  # noqa: E402

OUT = ROOT / "demo-output"
WORK = ROOT / ".localcloud" / "demo"


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "urllib3", "boto3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    shutil.rmtree(WORK, ignore_errors=True)
    shutil.rmtree(OUT, ignore_errors=True)
    WORK.mkdir(parents=True)
    OUT.mkdir(parents=True)

    with MotoServer(log_path=WORK / "moto.log") as server, FakeGcsServer(log_path=WORK / "fake-gcs.log") as gcs:
        admin = server.enforce_auth()
        print(f"local cloud: moto server (S3, IAM, STS) on {server.endpoint_url}, IAM enforcement on; "
              f"fake-gcs-server (GCS) on {gcs.endpoint_url}")
        estate = seed_estate(server, admin, WORK, gcs=gcs, scale="demo")
        print(
            f"seeded: {len(estate.source_buckets) + len(estate.gcs_source_buckets)} Seoul buckets (S3 and GCS), "
            f"{estate.media_objects} media objects "
            f"({human(estate.media_bytes)}), {estate.other_objects} non-media objects, "
            f"{estate.references} URL references in {estate.app_db_url}"
        )
        print(f"running DAG residency_migration (task logs: {OUT / 'dag-run.log'}) ...")
        t0 = time.monotonic()
        outcome = run_dag_test(
            "residency_migration",
            {"policy_path": str(estate.policy_path), "evidence_dir": str(OUT), "dry_run": False},
            env=estate.connection_env(),
            log_path=OUT / "dag-run.log",
        )
        dag_seconds = time.monotonic() - t0

    evidence_path = OUT / "evidence.json"
    if not evidence_path.exists():
        print(f"FAILED: no evidence was written; DAG run state {outcome.state}; see {outcome.log_path}")
        print("\n".join(outcome.log_path.read_text(errors="replace").splitlines()[-40:]))
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
    for rule in residual.get("accepted_by_rule", []):
        print(f"    accepted {rule['references']} ({rule['rule']}): {rule['reason']}")
    for rev in evidence.get("revocations", {}).get("records", []):
        proof = rev["proof"]
        print(f"  revoked {rev['principal']} key {rev['credential_id']}: {proof.get('status')} ({proof.get('reason')})")
    print(f"  audit log: {evidence['audit_log']['records']} records, chain head {evidence['audit_log']['head'][:16]}")
    print(f"evidence: {OUT / 'evidence.json'}  {OUT / 'evidence.html'}")
    print(f"DAG run: {outcome.state} in {dag_seconds:.0f}s; demo total {time.monotonic() - started:.0f}s")
    for rule in evidence.get("complete_rules", []):
        print(f"  rule {rule['id']:<12} {'holds' if rule['holds'] else 'FAILS: ' + '; '.join(rule['problems'])}")
    if not outcome.succeeded or not evidence.get("complete"):
        print("MIGRATION NOT COMPLETE:", "; ".join(evidence.get("problems", [])) or f"DAG run {outcome.state}",
              f"failed tasks: {', '.join(outcome.failed_tasks) or '-'}")
        return 1
    print("MIGRATION COMPLETE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
