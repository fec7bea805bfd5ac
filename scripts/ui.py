"""`make ui`: the Airflow UI on the local cloud, for managers to watch and approve a migration.

Starts moto server (S3, IAM, STS, with IAM enforcement on) and fake-gcs-server
(GCS), seeds the demo estate, starts a real local Airflow deployment (API server
and UI, scheduler with LocalExecutor, DAG processor, triggerer) with the
estate's connections and `RESIDENCY_POLICY` set to the estate's policy, prints
the UI's URL and logins, and waits until Ctrl-C (SIGINT) or SIGTERM; then it
stops everything it started. With `--trigger` it also triggers one run of
`residency_migration`. Its files go to `.localcloud/ui/`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from residency.localcloud.deployment import AirflowDeployment, DeploymentError, ROLES  # noqa: E402
from residency.localcloud.estate import SCALES, seed_estate  # noqa: E402
from residency.localcloud.servers import FakeGcsServer, MotoServer, free_port  # noqa: E402
from residency_airflow import NOTE_CONN_ID  # noqa: E402

WORK = ROOT / ".localcloud" / "ui"
DAG_ID = "residency_migration"
log = logging.getLogger("ui")


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def _port(wanted: int | None) -> int:
    """``wanted``, else 8080 when it is free, else any free port."""
    if wanted:
        return wanted
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 8080))
            return 8080
        except OSError:
            return free_port()


def _install_signal_handlers() -> None:
    stopping = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            log.warning("already stopping; please wait")
            return
        stopping = True
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trigger", action="store_true", help=f"trigger one run of {DAG_ID} once the UI is up")
    parser.add_argument("--port", type=int, default=None, help="port of the UI (default: 8080 if free, else any)")
    parser.add_argument("--scale", choices=SCALES, default="demo", help="size of the seeded estate (default: demo)")
    parser.add_argument("--metadata", choices=("auto", "postgresql", "sqlite"), default="auto",
                        help="Airflow metadata database (default: PostgreSQL on 127.0.0.1:5432 if it answers)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "urllib3", "boto3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _install_signal_handlers()

    shutil.rmtree(WORK / "estate", ignore_errors=True)
    (WORK / "estate").mkdir(parents=True)
    evidence_dir = WORK / "evidence"
    try:
        with MotoServer(log_path=WORK / "moto.log") as server, \
                FakeGcsServer(log_path=WORK / "fake-gcs.log") as gcs:
            admin = server.enforce_auth()
            estate = seed_estate(server, admin, WORK / "estate", gcs=gcs, scale=args.scale)
            log.info("seeded %s media objects in %s Seoul buckets", estate.media_objects,
                     len(estate.source_buckets) + len(estate.gcs_source_buckets))
            env = {**estate.connection_env(), "RESIDENCY_POLICY": str(estate.policy_path)}
            deployment = AirflowDeployment(
                WORK / "airflow", dags_folder=ROOT / "dags", plugins_folder=ROOT / "plugins", env=env,
                metadata=args.metadata, api_port=_port(args.port), wait_for_dags=[DAG_ID],
                api_connections={NOTE_CONN_ID: "manager"},  # tasks put the reason a run failed on its note
            )
            with deployment:
                run_url = ""
                if args.trigger:
                    manager = deployment.api("manager")
                    run_id = manager.trigger(DAG_ID, {"policy_path": str(estate.policy_path),
                                                      "evidence_dir": str(evidence_dir), "dry_run": False})
                    run_url = f"{deployment.base_url}/dags/{DAG_ID}/runs/{run_id}"
                _print_banner(deployment, estate.policy_path, evidence_dir, server.endpoint_url,
                              gcs.endpoint_url, run_url)
                while True:
                    deployment.check_alive()
                    time.sleep(1.0)
    except Stop as stop:
        print(f"\n{stop}: stopped the deployment and the local cloud.")
        return 0
    except DeploymentError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


def _print_banner(deployment: AirflowDeployment, policy: Path, evidence_dir: Path, s3_url: str, gcs_url: str,
                  run_url: str) -> None:
    what = {"manager": "administrator", "demo-approver": "may answer approvals",
            "viewer": "read-only"}
    print()
    print(f"Airflow UI:      {deployment.base_url}/   (metadata database: {deployment.backend})")
    print("Logins (user / password, role):")
    for user, password in deployment.users.items():
        print(f"  {user:<14} {password:<20} {ROLES[user]} ({what.get(user, '')})")
    print(f"Trigger DAG {DAG_ID} with policy_path: {policy}")
    print("  (the form's default already is that policy; evidence goes to the policy's control folder,")
    print(f"   or set evidence_dir, e.g. {evidence_dir})")
    if run_url:
        print(f"Triggered a run: {run_url}")
    print(f"Local cloud: moto server (S3, IAM, STS) {s3_url}, fake-gcs-server {gcs_url}")
    print(f"Component logs: {deployment.logs_dir}/<component>.log; task logs in the UI")
    print("Stop: Ctrl-C (or SIGTERM); everything started here is stopped.")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
