"""The plan report of a dry run: what a real run would do, never a verdict.

A dry run inventories, then walks every later phase without changing anything
(copy "would copy", cutover "would rewrite", revocation lists the keys and probes
them read-only). :func:`write_plan` turns what it recorded into ``plan.json`` and
``plan.html``: objects and bytes that would be copied per route and method,
the requests and bytes on the wire a real run would spend (an estimate from the
engine's own calls, stated as such), references that would be rewritten, and
credentials that would be revoked. It is labelled a plan; it has no ``complete``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from ..ledger import CUT_OVER, VERIFIED, Ledger, now
from ..policy import Policy
from .chain import atomic_write

PLAN_JSON = "plan.json"
PLAN_HTML = "plan.html"
LIST_PAGE = 1000
READ_CHUNK = 8 * 1024 * 1024  # the stores' ranged reads
STREAM_PART = 8 * 1024 * 1024  # the stores' streamed upload parts

#: How each counted request is spent, for the reader of the plan.
REQUEST_NOTES = (
    "inventory: one listing request per 1,000 keys, one metadata request (HEAD) per listed object",
    "copy: the source version is pinned (HEAD), the destination checked (HEAD), then one copy request (server-side) "
    "or ranged reads and an upload (streamed; multipart above the threshold), and the result read (HEAD)",
    "verify: the pinned source and the destination (HEAD each); where the destination's server does not check "
    "checksums itself, the destination is read back",
    "recheck and attest: one listing request per 1,000 keys of each source and destination, twice",
)


def _parts(size: int, part: int) -> int:
    return max(1, math.ceil(size / part))


def estimate_requests(size: int, method: str, *, threshold: int, part_size: int, read_back: bool) -> dict[str, int]:
    """Requests one object costs in a real run, by phase, following the engine's calls."""
    if method == "server_side":
        copy = 1 if size <= threshold else 2 + _parts(size, part_size)
        transfer_bytes = 0
    else:
        uploads = 1 if size <= threshold else 2 + _parts(size, STREAM_PART)
        copy = _parts(size, READ_CHUNK) + uploads
        transfer_bytes = size
    verify = 2 + (_parts(size, READ_CHUNK) if read_back else 0)
    return {"inventory": 1, "copy": 2 + copy + 1, "verify": verify, "through_worker_bytes": transfer_bytes,
            "read_back_bytes": size if read_back else 0}


def build_plan(
    policy: Policy,
    ledger: Ledger,
    *,
    run: Mapping[str, Any],
    methods: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The plan document.

    Args:
        run: facts of the (dry) run; its ``run_id`` selects the phases it recorded.
        methods: per source bucket URI, ``{"method": "server_side" | "streamed",
            "read_back": bool}`` as the stores of the run would copy and verify.
    """
    mid = policy.migration_id
    per_route: dict[str, Counter] = {}
    requests: Counter = Counter()
    totals: Counter = Counter()
    for obj in ledger.iter_objects(mid):
        if obj["state"] in (VERIFIED, CUT_OVER):
            totals["already_verified"] += 1
            continue
        if obj["state"] == "failed" and (obj.get("reason") or "").startswith("refused at inventory"):
            totals["refused"] += 1
            continue
        how = methods.get(obj["src_bucket_uri"], {"method": "streamed", "read_back": True})
        method = how["method"] if obj["size"] <= policy.transfer.multipart_threshold else f"{how['method']}_multipart"
        route = per_route.setdefault(obj["route"], Counter())
        route[f"{method}_objects"] += 1
        route[f"{method}_bytes"] += obj["size"]
        route["objects"] += 1
        route["bytes"] += obj["size"]
        cost = estimate_requests(obj["size"], how["method"], threshold=policy.transfer.multipart_threshold,
                                 part_size=policy.transfer.part_size, read_back=how["read_back"])
        for key, value in cost.items():
            requests[key] += value
    listed = sum(int(b["objects_listed"] or 0) for b in ledger.get_buckets(mid) if b["role"] == "source")
    in_plan = sum(r["objects"] for r in per_route.values())
    requests["inventory"] += math.ceil(listed / LIST_PAGE) + (listed - in_plan - totals["already_verified"])
    requests["attest"] = 2 * 2 * math.ceil(max(1, listed) / LIST_PAGE)
    total_bytes = sum(r["bytes"] for r in per_route.values())
    run_id = run.get("run_id")
    cutover = _phase_of_run(ledger, mid, "cutover", run_id)
    revoke = _phase_of_run(ledger, mid, "revoke", run_id)
    request_total = sum(v for k, v in requests.items() if not k.endswith("_bytes"))
    return {
        "kind": "plan",
        "plan_version": 1,
        "migration_id": mid,
        "generated_at": now(),
        "policy": {"path": policy.path, "sha256": policy.sha256, "home_jurisdiction": policy.home_jurisdiction},
        "run": json.loads(json.dumps(dict(run), default=str)),
        "statement": "This is a plan from a dry run: nothing was copied, rewritten or revoked, and it proves nothing.",
        "routes": {r: dict(sorted(c.items())) for r, c in sorted(per_route.items())},
        "objects_to_copy": in_plan,
        "bytes_to_copy": total_bytes,
        "already_verified": totals["already_verified"],
        "refused_at_inventory": totals["refused"],
        "requests_estimate": {
            "by_phase": {k: v for k, v in sorted(requests.items()) if not k.endswith("_bytes")},
            "total": request_total,
            "per_object": round(request_total / in_plan, 2) if in_plan else 0,
            "notes": list(REQUEST_NOTES),
        },
        "bytes_on_the_wire": {
            "leaving_the_source_region": total_bytes,
            "through_the_worker": requests["through_worker_bytes"],
            "read_back_for_verification": requests["read_back_bytes"],
        },
        "references": _references(cutover) if cutover else None,
        "revocations": [
            {"user": k["principal"].rsplit("/", 1)[-1], "access_key_id": k["credential_id"],
             "already_revoked": k.get("outcome") == "already_revoked"}
            for k in (revoke or {}).get("paths", []) if k.get("kind") == "access_key"
        ] if revoke else [],
        # Every access path the revocation would change: keys, console passwords, sessions, role trust
        # entries, bucket grants, GCS HMAC keys, bucket IAM members, service-account keys.
        "access_paths": [
            {"kind": p.get("kind"), "principal": p.get("principal"), "path": p.get("credential_id"),
             "action": p.get("action", "deactivate+delete"), "outcome": p.get("outcome")}
            for p in (revoke or {}).get("paths", [])
        ] if revoke else [],
    }


#: Residual reasons of a dry-run cutover that a real run resolves by verifying the object first.
_PENDING_REASONS = ("not_verified", "not_attested")


def _references(cutover: Mapping[str, Any]) -> dict[str, Any]:
    """A dry run verifies nothing, so its cutover leaves references to objects still to
    be copied as not verified: a real run rewrites those once they are verified."""
    by_reason = dict(cutover.get("residual_by_reason") or {})
    pending = sum(int(by_reason.pop(r, 0)) for r in _PENDING_REASONS)
    return {"would_rewrite": int(cutover.get("rewritten") or 0) + pending,
            "already_rewritten": int(cutover.get("already_rewritten") or 0),
            "would_stay": sum(int(v) for v in by_reason.values()), "would_stay_by_reason": by_reason,
            "columns": sorted(cutover.get("per_column") or {})}


def _phase_of_run(ledger: Ledger, mid: str, phase: str, run_id: str | None) -> dict[str, Any] | None:
    row = ledger.latest_phase(mid, phase)
    if row is None or (run_id and row["run_id"] != run_id):
        return None
    return row["result"]


def write_plan(policy: Policy, ledger: Ledger, out_dir: Path, *, run: Mapping[str, Any],
               methods: Mapping[str, Mapping[str, Any]]) -> tuple[Path, Path, dict[str, Any]]:
    """Write ``plan.json`` and ``plan.html`` into ``out_dir``; returns their paths and the plan."""
    from .html import render_plan

    plan = build_plan(policy, ledger, run=run, methods=methods)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / PLAN_JSON, out_dir / PLAN_HTML
    with atomic_write(json_path) as out:
        out.write(json.dumps(plan, indent=2, ensure_ascii=False) + "\n")
    with atomic_write(html_path) as out:
        out.write(render_plan(plan))
    ledger.audit(policy.migration_id, "plan.written", {"objects_to_copy": plan["objects_to_copy"],
                                                       "bytes_to_copy": plan["bytes_to_copy"], "file": str(json_path)})
    return json_path, html_path, plan
