"""Live progress of a migration, read from its ledger: what the managers' page shows.

Everything here is an aggregate query that stays fast on a ledger of millions of
objects: counts by bucket, route and state come from the composite index
``ix_residency_objects_progress`` (an index-only scan on PostgreSQL), the
throughput, ETA and timeline from the small ``residency_progress`` event table
that copy and verify append to every few seconds, and the rest from per-phase
summaries. No request reads object rows one by one; failures are a bounded sample.

The phases recorded by a run are also the phases of the DAG, so the page can say
which one is running: the latest run's phases, in DAG order.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any, Mapping

import sqlalchemy as sa

from .ledger import (
    COPIED, CUT_OVER, DISCOVERED, FAILED, VERIFIED, Ledger, approvals, buckets, now, objects, parse_time, phases,
    progress,
)

#: The DAG's phases, in order (``copy`` and ``verify`` are recorded once per shard).
PHASE_ORDER = ("preflight", "inventory", "copy", "verify", "recheck", "cutover", "revoke", "attest", "evidence")
STATES = (DISCOVERED, COPIED, VERIFIED, CUT_OVER, FAILED)
FAILURE_SAMPLE = 50


def _count() -> dict[str, int]:
    return {"objects": 0, "bytes": 0}




def list_migrations(ledger: Ledger) -> list[dict[str, Any]]:
    """Every migration the ledger knows, with when it last recorded a phase."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            sa.select(phases.c.migration_id, sa.func.max(phases.c.at).label("last_at"), sa.func.count().label("phases"))
            .group_by(phases.c.migration_id)
            .order_by(sa.func.max(phases.c.at).desc())
        ).mappings().all()
    return [dict(r) for r in rows]


def migration_status(
    ledger: Ledger,
    migration_id: str,
    *,
    run_id: str | None = None,
    at: dt.datetime | None = None,
    window: dt.timedelta = dt.timedelta(minutes=5),
) -> dict[str, Any]:
    """The page's data for one migration (and, with ``run_id``, that run's phases).

    Args:
        run_id: a DAG run; default: the latest run that recorded a phase.
        at: "now" (tests pass a fixed time).
        window: the span over which throughput is measured.

    Returns:
        A JSON-ready dict: ``phases``, ``buckets``, ``jurisdictions``, ``routes``,
        ``totals``, ``throughput``, ``eta_seconds``, ``timeline``, ``references``,
        ``revocations``, ``approvals``, ``failures``, ``evidence``.
    """
    at = at or dt.datetime.now(dt.timezone.utc)
    with ledger.engine.connect() as conn:
        run_id = run_id or conn.execute(
            sa.select(phases.c.run_id).where(phases.c.migration_id == migration_id)
            .where(phases.c.run_id.is_not(None)).order_by(phases.c.id.desc()).limit(1)
        ).scalar()
        phase_rows = conn.execute(
            sa.select(phases).where(phases.c.migration_id == migration_id).order_by(phases.c.id)
        ).mappings().all()
        bucket_rows = conn.execute(
            sa.select(buckets).where(buckets.c.migration_id == migration_id).order_by(buckets.c.bucket_uri)
        ).mappings().all()
        state_rows = conn.execute(
            sa.select(objects.c.src_bucket_uri, objects.c.route, objects.c.state, sa.func.count().label("n"),
                      sa.func.coalesce(sa.func.sum(objects.c.size), 0).label("b"))
            .where(objects.c.migration_id == migration_id)
            .group_by(objects.c.src_bucket_uri, objects.c.route, objects.c.state)
        ).mappings().all()
        failures = conn.execute(
            sa.select(objects.c.src_uri, objects.c.reason, objects.c.updated_at)
            .where(objects.c.migration_id == migration_id).where(objects.c.state == FAILED)
            .order_by(objects.c.updated_at.desc()).limit(FAILURE_SAMPLE)
        ).mappings().all()
        events = conn.execute(
            sa.select(progress.c.at, progress.c.phase, progress.c.outcome, progress.c.objects, progress.c.bytes)
            .where(progress.c.migration_id == migration_id).where(progress.c.run_id == run_id)
            .order_by(progress.c.at)
        ).mappings().all() if run_id else []
        approval_rows = conn.execute(
            sa.select(approvals).where(approvals.c.migration_id == migration_id).where(approvals.c.run_id == run_id)
            .order_by(approvals.c.id)
        ).mappings().all() if run_id else []

    # -- phases of the run
    run_phases: dict[str, dict[str, Any]] = {}
    latest: dict[str, Mapping[str, Any]] = {}
    for row in phase_rows:
        latest[row["phase"]] = row
        if row["run_id"] == run_id:
            entry = run_phases.setdefault(row["phase"], {"phase": row["phase"], "count": 0, "first_at": row["at"]})
            entry.update(count=entry["count"] + 1, last_at=row["at"])

    # -- counts by bucket, route, jurisdiction
    meta = {b["bucket_uri"]: b for b in bucket_rows}
    per_bucket: dict[str, dict[str, Any]] = {}
    per_route: dict[str, dict[str, dict[str, int]]] = {}
    totals = {s: _count() for s in STATES}
    for row in state_rows:
        n, b = int(row["n"]), int(row["b"] or 0)
        bucket = per_bucket.setdefault(row["src_bucket_uri"], {s: _count() for s in STATES})
        route = per_route.setdefault(row["route"], {s: _count() for s in STATES})
        for target in (bucket[row["state"]], route[row["state"]], totals[row["state"]]):
            target["objects"] += n
            target["bytes"] += b
    bucket_list = []
    jurisdictions: dict[str, dict[str, Any]] = {}
    for uri in sorted(set(per_bucket) | {u for u, b in meta.items() if b["role"] == "source"}):
        b = meta.get(uri, {})
        states = per_bucket.get(uri, {s: _count() for s in STATES})
        entry = {
            "uri": uri, "provider": b.get("provider") or uri.split("://", 1)[0], "location": b.get("location"),
            "jurisdiction": b.get("jurisdiction"),
            "listed": {"objects": int(b.get("objects_listed") or 0), "bytes": int(b.get("bytes_listed") or 0)},
            "in_scope": {"objects": int(b.get("objects_in_scope") or 0), "bytes": int(b.get("bytes_in_scope") or 0)},
            "out_of_scope": {"objects": int(b.get("objects_out_of_scope") or 0),
                             "bytes": int(b.get("bytes_out_of_scope") or 0)},
            "unreadable": {"objects": int(b.get("objects_unreadable") or 0),
                           "bytes": int(b.get("bytes_unreadable") or 0)},
            "states": states,
            "verified": _plus(states[VERIFIED], states[CUT_OVER]),
        }
        bucket_list.append(entry)
        j = jurisdictions.setdefault(entry["jurisdiction"] or "unknown", {
            "in_scope": _count(), "verified": _count(), "failed": _count(), "buckets": 0})
        j["buckets"] += 1
        for key, value in (("in_scope", entry["in_scope"]), ("verified", entry["verified"]),
                           ("failed", states[FAILED])):
            j[key] = _plus(j[key], value)
    destinations = [
        {"uri": b["bucket_uri"], "provider": b["provider"], "location": b["location"], "jurisdiction": b["jurisdiction"]}
        for b in bucket_rows if b["role"] == "destination"
    ]

    in_scope = _count()
    for entry in bucket_list:
        in_scope = _plus(in_scope, entry["in_scope"])
    verified = _plus(totals[VERIFIED], totals[CUT_OVER])
    remaining = {k: max(0, in_scope[k] - verified[k] - totals[FAILED][k]) for k in ("objects", "bytes")}

    # -- throughput, ETA, timeline from this run's events
    throughput, timeline, rate = _rates(events, at, window)
    if not remaining["objects"]:
        eta: float | None = 0.0
    else:
        eta = round(remaining["objects"] / rate, 1) if rate > 0 else None  # nothing verified lately: unknown

    return {
        "migration_id": migration_id,
        "run_id": run_id,
        "generated_at": now(),
        "phases": _phase_list(run_phases),
        "buckets": bucket_list,
        "destinations": destinations,
        "jurisdictions": jurisdictions,
        "routes": {r: {**s, "verified": _plus(s[VERIFIED], s[CUT_OVER])} for r, s in sorted(per_route.items())},
        "totals": {"in_scope": in_scope, "verified": verified, "cut_over": totals[CUT_OVER], "failed": totals[FAILED],
                   "pending": _plus(totals[DISCOVERED], totals[COPIED]), "remaining": remaining},
        "throughput": throughput,
        "eta_seconds": eta,
        "timeline": timeline,
        "references": _latest_result(latest, "cutover", ("scanned", "rewritten", "repointed", "already_rewritten",
                                                          "residual", "conflicts", "residual_by_reason")),
        "residual": _latest_result(latest, "residual", ("cells_scanned", "residual", "by_reason", "accepted")),
        "attestation": _latest_result(latest, "attest", ("stamp", "examined", "attested", "repaired", "arrived",
                                                          "dst_missing", "dst_changed", "src_changed")),
        "revocations": _revocations(ledger, migration_id),
        "approvals": [{k: r[k] for k in ("step", "decision", "who", "at", "comment")} for r in approval_rows],
        "failures": [dict(f) for f in failures],
        "failures_total": totals[FAILED]["objects"],
        "evidence": _latest_result(latest, "evidence", ("evidence_json", "evidence_html", "complete", "kind",
                                                         "problems")),
    }


def _plus(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {"objects": a["objects"] + b["objects"], "bytes": a["bytes"] + b["bytes"]}


def _phase_list(run_phases: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in PHASE_ORDER:
        entry = run_phases.get(name)
        out.append({"phase": name, "state": "done" if entry else "not yet", **(dict(entry) if entry else {})})
    return out


def _rates(
    events: list[Mapping[str, Any]], at: dt.datetime, window: dt.timedelta
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Rates over ``window`` (rounded for display), a per-minute cumulative timeline,
    and the exact verified objects per second (for the ETA)."""
    since = at - window
    recent = Counter()
    per_minute: dict[str, Counter] = {}
    first: dt.datetime | None = None
    for e in events:
        when = parse_time(e["at"])
        if when is None:
            continue
        first = first or when
        minute = e["at"][:16]
        bucket = per_minute.setdefault(minute, Counter())
        bucket[f"{e['outcome']}_objects"] += int(e["objects"])
        bucket[f"{e['outcome']}_bytes"] += int(e["bytes"])
        if when >= since:
            recent[f"{e['outcome']}_objects"] += int(e["objects"])
            recent[f"{e['outcome']}_bytes"] += int(e["bytes"])
    span = max(1.0, min(window.total_seconds(), (at - first).total_seconds() if first else window.total_seconds()))
    throughput = {
        "window_s": span,
        "verified_objects_per_s": round(recent["verified_objects"] / span, 3),
        "verified_bytes_per_s": round(recent["verified_bytes"] / span, 1),
        "copied_objects_per_s": round(recent["copied_objects"] / span, 3),
        "copied_bytes_per_s": round(recent["copied_bytes"] / span, 1),
    }
    timeline = []
    cumulative = Counter()
    for minute in sorted(per_minute):
        cumulative.update(per_minute[minute])
        timeline.append({"minute": minute, **{k: cumulative[k] for k in (
            "copied_objects", "copied_bytes", "verified_objects", "verified_bytes", "failed_objects")}})
    return throughput, timeline, recent["verified_objects"] / span


def _latest_result(latest: Mapping[str, Mapping[str, Any]], phase: str, keys: tuple[str, ...]) -> dict[str, Any] | None:
    row = latest.get(phase)
    if row is None:
        return None
    result = json.loads(row["result"])
    return {"at": row["at"], "run_id": row["run_id"], **{k: result.get(k) for k in keys}}


def _revocations(ledger: Ledger, migration_id: str) -> list[dict[str, Any]]:
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ledger.get_revocations(migration_id):
        latest[(r["principal"], r["credential_id"])] = r
    return [
        {"principal": r["principal"], "credential_id": r["credential_id"], "at": r["at"],
         "kind": (r["proof"] or {}).get("kind") or "access_key",
         "method": (r["proof"] or {}).get("method") or "denied_attempt",
         "status": (r["proof"] or {}).get("status") or "not_proven", "reason": (r["proof"] or {}).get("reason", "")}
        for r in latest.values()
    ]
