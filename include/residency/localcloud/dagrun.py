"""Run a DAG once with ``airflow dags test`` in a child process (no Airflow import here).

Used by ``make demo`` and the end-to-end test: the run is a real Airflow run
(DAG parsing, params validation, mapped tasks, XCom, trigger rules) against the
metadata database of ``AIRFLOW_HOME``; its task logs go to ``log_path``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

_STATE = re.compile(r"DagRun Finished: .*?state=(\w+)")
_END_TASK = re.compile(r"end task task_id=(\w+) map_index=(-?\d+)")


@dataclass(frozen=True)
class DagRunOutcome:
    returncode: int
    state: str  # success | failed | unknown
    log_path: Path
    failed_tasks: tuple[str, ...]

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and self.state == "success"


def run_dag_test(
    dag_id: str,
    conf: Mapping[str, object],
    *,
    env: Mapping[str, str],
    log_path: Path,
    timeout: float = 1800,
) -> DagRunOutcome:
    """Run ``airflow dags test DAG_ID -c CONF`` and report how the run ended."""
    airflow = Path(sys.executable).with_name("airflow")
    full_env = dict(os.environ)
    full_env.update(env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as out:
        proc = subprocess.run(
            [str(airflow), "dags", "test", dag_id, "-c", json.dumps(dict(conf))],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            timeout=timeout,
        )
    text = log_path.read_text(encoding="utf-8", errors="replace")
    states = _STATE.findall(text)
    failed: set[str] = set()
    last_state = ""
    for line in text.splitlines():
        if "new_state=" in line:
            last_state = line.split("new_state=", 1)[1].split()[0]
        elif match := _END_TASK.search(line):
            if last_state == "failed":
                failed.add(match.group(1))
            last_state = ""
    return DagRunOutcome(proc.returncode, states[-1] if states else "unknown", log_path, tuple(sorted(failed)))
