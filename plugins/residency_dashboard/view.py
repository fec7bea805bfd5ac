"""From ``migration_status()`` to what a manager reads: rows with percentages, phase states, ETA.

Pure functions of the status dict (and of what Airflow says about the run), so
the HTML page and the JSON endpoint say the same thing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping, Sequence

from residency import progress
from residency.ledger import parse_time

#: Seconds between the page's own refreshes while the run is live.
REFRESH_SECONDS = 5
#: Without Airflow's word on the run, a run that recorded something this recently and
#: wrote no evidence yet counts as live.
LIVE_WINDOW = dt.timedelta(minutes=15)

DONE, RUNNING, WAITING, NOT_YET = "done", "running", "waiting for approval", "not yet"


def _count() -> dict[str, int]:
    return {"objects": 0, "bytes": 0}


def _plus(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {"objects": int(a["objects"]) + int(b["objects"]), "bytes": int(a["bytes"]) + int(b["bytes"])}


def pct(part: int | None, whole: int | None) -> float | None:
    """``part`` as a percentage of ``whole`` (one decimal), ``None`` when there is no whole."""
    if part is None or not whole:
        return None
    return round(100.0 * part / whole, 1)


def count_row(label: str, *, listed: Mapping[str, int] | None, in_scope: Mapping[str, int],
              verified: Mapping[str, int], failed: Mapping[str, int], pending: Mapping[str, int],
              **extra: Any) -> dict[str, Any]:
    """One table row: objects and bytes listed / in scope / verified / failed / pending,
    each with its share of the in-scope total."""
    row: dict[str, Any] = {"label": label, **extra}
    for name, value in (("listed", listed), ("in_scope", in_scope), ("verified", verified), ("failed", failed),
                        ("pending", pending)):
        row[name] = None if value is None else {"objects": int(value["objects"]), "bytes": int(value["bytes"])}
    for name in ("verified", "failed", "pending"):
        row[f"{name}_pct"] = {k: pct(row[name][k], row["in_scope"][k]) for k in ("objects", "bytes")}
    return row


def bucket_rows(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for b in status["buckets"]:
        states = b["states"]
        rows.append(count_row(
            b["uri"], listed=b["listed"], in_scope=b["in_scope"], verified=b["verified"],
            failed=states[progress.FAILED], pending=_plus(states[progress.DISCOVERED], states[progress.COPIED]),
            provider=b["provider"], location=b["location"], jurisdiction=b["jurisdiction"] or "unknown",
        ))
    return rows


def jurisdiction_rows(buckets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Bucket rows summed by the jurisdiction of the bucket."""
    sums: dict[str, dict[str, Any]] = {}
    for row in buckets:
        entry = sums.setdefault(row["jurisdiction"], {k: _count() for k in (
            "listed", "in_scope", "verified", "failed", "pending")} | {"buckets": 0})
        entry["buckets"] += 1
        for key in ("listed", "in_scope", "verified", "failed", "pending"):
            entry[key] = _plus(entry[key], row[key])
    return [count_row(j, listed=s["listed"], in_scope=s["in_scope"], verified=s["verified"], failed=s["failed"],
                      pending=s["pending"], buckets=s["buckets"]) for j, s in sorted(sums.items())]


def route_rows(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per copy route; a route has no listing of its own, so "in scope" is what the ledger holds for it."""
    rows = []
    for route, states in status["routes"].items():
        # The read model's route "verified" already counts cut_over objects: add each state once.
        in_ledger = _count()
        for key in (progress.DISCOVERED, progress.COPIED, "verified", progress.FAILED):
            in_ledger = _plus(in_ledger, states[key])
        rows.append(count_row(route, listed=None, in_scope=in_ledger, verified=states["verified"],
                              failed=states[progress.FAILED],
                              pending=_plus(states[progress.DISCOVERED], states[progress.COPIED])))
    return rows


def total_row(buckets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    sums = {k: _count() for k in ("listed", "in_scope", "verified", "failed", "pending")}
    for row in buckets:
        for key in sums:
            sums[key] = _plus(sums[key], row[key])
    return count_row("all source buckets", **sums)


def _state_total(status: Mapping[str, Any], state: str) -> int:
    return sum(int(b["states"][state]["objects"]) for b in status["buckets"])




def last_activity(status: Mapping[str, Any]) -> dt.datetime | None:
    """When the run last recorded a phase or a progress event."""
    stamps = [parse_time(p.get("last_at")) for p in status["phases"]]
    if status["timeline"]:
        stamps.append(parse_time(status["timeline"][-1]["minute"]))  # the minute's start: events are per minute
    stamps = [s for s in stamps if s is not None]
    return max(stamps) if stamps else None


def liveness(status: Mapping[str, Any] | None, dag_run_state: str | None, *, known: bool,
             now: dt.datetime | None = None) -> tuple[bool, str]:
    """Whether the run is still going, and why the page thinks so.

    Args:
        dag_run_state: the state Airflow records for the run, when it was found.
        known: whether Airflow's metadata answered (``False``: unreadable or no such run).
    """
    if known and dag_run_state is not None:
        live = dag_run_state in ("queued", "running")
        return live, f"Airflow says the DAG run is {dag_run_state}."
    if status is None:
        return False, "Nothing recorded yet."
    now = now or dt.datetime.now(dt.timezone.utc)
    recorded = [p for p in status["phases"] if p.get("count")]
    if not recorded:
        return False, "This run recorded no phase."
    if any(p["phase"] == "evidence" for p in recorded):
        return False, "This run wrote its evidence."
    last = last_activity(status)
    if last is not None and now - last <= LIVE_WINDOW:
        return True, (f"The run last recorded progress at {last.isoformat(timespec='seconds')} and wrote no "
                      "evidence yet (Airflow's metadata did not say more).")
    return False, "The run recorded nothing for a while and wrote no evidence (stopped?)."


def phase_rows(status: Mapping[str, Any], *, live: bool, waiting: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Each phase of the run in DAG order: done, running, waiting for approval, or not yet.

    Args:
        status: ``migration_status()`` of the run.
        live: whether the run is still going (see :func:`liveness`).
        waiting: task ids of the run's human-in-the-loop requests still unanswered.

    ``running`` and ``waiting for approval`` are inferred, while the run is live:
    a phase whose name a waiting task id contains (``approve_cutover``) waits for
    approval; copy (verify) still runs while objects wait to be copied (verified)
    and no later phase has started; otherwise the phase after the last one done is
    next (waiting for approval if an unanswered request names no phase).
    """
    phases = status["phases"]
    done = [p["state"] == "done" for p in phases]
    last = max((i for i, d in enumerate(done) if d), default=-1)
    order = {p["phase"]: i for i, p in enumerate(phases)}
    unfinished = {"copy": _state_total(status, progress.DISCOVERED), "verify": _state_total(status, progress.COPIED)}
    rows = []
    inferred = False
    for i, p in enumerate(phases):
        state = DONE if done[i] else NOT_YET
        if live and not done[i] and any(p["phase"] in task_id for task_id in waiting):
            state, inferred = WAITING, True
        elif live and done[i] and unfinished.get(p["phase"]) and last <= order["verify"]:
            state, inferred = RUNNING, True
        rows.append({"phase": p["phase"], "state": state, "count": p.get("count", 0),
                     "first_at": p.get("first_at"), "last_at": p.get("last_at")})
    if live and not inferred and last + 1 < len(rows):
        rows[last + 1]["state"] = WAITING if waiting else RUNNING
    return rows


def eta_text(status: Mapping[str, Any]) -> str:
    remaining = status["totals"]["remaining"]["objects"]
    eta = status["eta_seconds"]
    if not remaining:
        return "nothing remains"
    if eta is None:
        return "unknown: nothing was verified during the last window"
    return f"about {duration(eta)}"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} days {hours % 24} h"


def summary(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The list page's line for a migration."""
    if status is None:
        return {"run_id": None, "in_scope": _count(), "verified": _count(), "failed": _count(), "remaining": _count(),
                "verified_pct": None, "complete": None, "phases_done": 0}
    totals = status["totals"]
    evidence = status.get("evidence") or {}
    return {
        "run_id": status["run_id"],
        "in_scope": totals["in_scope"],
        "verified": totals["verified"],
        "failed": totals["failed"],
        "remaining": totals["remaining"],
        "verified_pct": pct(totals["verified"]["objects"], totals["in_scope"]["objects"]),
        "complete": evidence.get("complete"),
        "phases_done": sum(1 for p in status["phases"] if p["state"] == "done"),
    }
