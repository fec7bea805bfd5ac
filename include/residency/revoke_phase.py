"""The tasks of the revocation DAG (``residency_revoke``): one function each, no Airflow inside.

The revocation closes every foreign access path of the policy's principals
(:func:`residency.foreign_access.revoke_all`, the same code as the migration DAG's
revoke phase), on its own and first if need be: LINE cut the affiliate off at
once, before the migration finished.

``plan`` -> ``propose_revoke`` (a dry run, for the approver) -> approval ->
``revoke`` (refuses without this run's approval) -> ``evidence``: the latest
record of every path with its proof, and a re-check made at writing time of the
AWS paths still open -> the run's verdict (:func:`run_note`).
"""

from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping

from . import foreign_access
from .errors import PolicyError
from .evidence import report as main_report
from .evidence.chain import export_verified
from .pipeline import Credentials, Runtime, plan_run, software_versions
from .pipeline import propose_revoke as propose  # noqa: F401 - the DAG's propose task
from .pipeline import revoke  # noqa: F401 - the DAG's revoke task
from .policy import Policy, load_policy

log = logging.getLogger(__name__)

STEP = "revoke"
REVOKED, PARTIAL, NOT_REVOKED, PLAN = "REVOKED", "PARTIAL", "NOT_REVOKED", "PLAN"


def plan_revoke(params: Mapping[str, Any], run: Mapping[str, Any] | None = None,
                credentials: Credentials | None = None) -> dict[str, Any]:
    """Validate the params and the policy before any work: a policy with no principal is refused."""
    plan = plan_run(params, run, credentials)
    policy = load_policy(plan["policy_path"])
    if not policy.principals:
        raise PolicyError("revoke", [], "the policy names no foreign principal: there is nothing to revoke")
    log.info("plan: close the access paths of %s for %s; dry_run=%s",
             "; ".join(p.label for p in policy.principals), policy.migration_id, plan["dry_run"])
    return plan


def default_evidence_dir(policy: Policy, run_id: str | None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id or "manual")
    return Path(policy.control_dir) / policy.migration_id / "revoke" / safe


def write_evidence(rt: Runtime, run: Mapping[str, Any]) -> dict[str, Any]:
    """``revoke-evidence.json`` / ``.html``: every path's latest record and proof, the approval, and what a
    re-check made now finds still open. A dry run writes this run's proposal as a PLAN."""
    rt.begin("revoke evidence")
    mid = rt.policy.migration_id
    row = rt.ledger.latest_phase(mid, "propose_revoke")
    proposal = row["result"] if row and row["run_id"] == rt.run_id else None
    out_dir = Path(rt.plan.get("evidence_dir") or default_evidence_dir(rt.policy, rt.run_id))
    out_dir.mkdir(parents=True, exist_ok=True)
    verdict = main_report._Verdict()
    records = main_report._revocations(rt.policy, rt.ledger, mid, verdict)
    decisions = [a for a in rt.ledger.get_approvals(mid, rt.run_id or "manual") if a["step"] == STEP]
    problems = [p for p in verdict.problems["revocation"]]
    if rt.dry_run:
        kind, check = PLAN, None
    else:
        try:
            check = foreign_access.recheck(rt.policy, rt.credentials)
        except Exception as exc:  # noqa: BLE001 - a re-check that cannot be made is "not proven", said why
            check = {"error": f"{type(exc).__name__}: {exc}", "open": [], "not_rechecked": []}
            problems.append(f"The re-check at writing time could not be made ({check['error']}): not proven.")
        problems += [f"Still open at {check['at']}: {p}." for p in check["open"]]
        ran = rt.ledger.latest_phase(mid, "revoke")
        if not decisions or decisions[-1].get("decision") != "approved":
            problems.insert(0, "The revocation was not approved in this run: nothing was changed by it.")
        failed = any(r["proof"]["status"] == "failed" for r in records["records"]) or check["open"]
        kind = NOT_REVOKED if failed or not ran or not records["records"] else PARTIAL if problems else REVOKED
    doc = {
        "kind": "revocation", "verdict": kind, "migration_id": mid, "policy_sha256": rt.policy.sha256,
        "software": software_versions(), "run": dict(run), "principals": [p.label for p in rt.policy.principals],
        "approval": decisions[-1] if decisions else None, "problems": problems, "recheck": check,
        "records": records["records"], "plan": (proposal or {}).get("paths") if rt.dry_run else None,
        "audit": export_verified(rt.ledger, mid, out_dir / "revoke-audit.jsonl") if not rt.dry_run else None,
    }
    if doc["audit"] is not None and not doc["audit"]["verified"]:
        problems.append(f"The audit log does not verify: {doc['audit']['error']}.")
        doc["verdict"] = kind = NOT_REVOKED
    name = "revoke-plan" if rt.dry_run else "revoke-evidence"
    json_path, html_path = out_dir / f"{name}.json", out_dir / f"{name}.html"
    json_path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str), encoding="utf-8")
    html_path.write_text(render_html(doc), encoding="utf-8")
    summary = {"verdict": kind, "problems": problems, "evidence_json": str(json_path),
               "evidence_html": str(html_path), "paths": len(records["records"]),
               "proven": sum(1 for r in records["records"] if r["proof"]["status"] == "proven")}
    rt.ledger.record_phase(mid, "revoke_evidence", summary, run_id=rt.run_id)
    log.info("END revoke evidence: %s -> %s (%s)", mid, json_path, kind)
    return summary


def render_html(doc: Mapping[str, Any]) -> str:
    """One page for the auditor: the verdict, the problems, and one row per path with its proof."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(r['kind'])}</td><td>{e(r['principal'])}</td><td><code>{e(r['credential_id'])}</code></td>"
        f"<td>{e(r['action'])}</td><td>{e(str(r['proof'].get('outcome', '')))}</td>"
        f"<td>{e(r['proof']['status'])} ({e(str(r['proof'].get('method')))})</td><td>{e(r['proof']['reason'])}</td></tr>"
        for r in doc["records"])
    plan = "".join(f"<li>{e(p['kind'])} <code>{e(p['credential_id'])}</code>: {e(p['outcome'])}</li>"
                   for p in doc.get("plan") or [])
    problems = "".join(f"<li>{e(p)}</li>" for p in doc["problems"]) or "<li>none</li>"
    audit = doc["audit"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Revocation {e(doc['migration_id'])}</title>"
        f"</head><body><h1>Revocation of foreign access: {e(doc['verdict'])}</h1>",
        f"<p>Migration <code>{e(doc['migration_id'])}</code>, policy sha256 {e(doc['policy_sha256'][:16])}; "
        f"principals: {e('; '.join(doc['principals']))}.</p><h2>Problems</h2><ul>{problems}</ul>",
        f"<h2>Plan (dry run)</h2><ul>{plan}</ul>" if plan else "",
        "<h2>Paths</h2><table border='1'><tr><th>kind</th><th>principal</th><th>path</th><th>action</th>"
        f"<th>outcome</th><th>proof</th><th>why</th></tr>{rows}</table>",
        f"<p>Audit log: {audit['records']} records, chain verified {audit['verified']}.</p>" if audit else "",
        "</body></html>",
    ]
    return "".join(parts)


def run_note(report: Mapping[str, Any]) -> tuple[str, bool]:
    """The run's note, and whether the run succeeds (REVOKED, or a dry run's PLAN)."""
    verdict, where = report["verdict"], report["evidence_html"]
    if verdict == PLAN:
        return f"PLAN (dry run): nothing was changed; see {where}", True
    if verdict == REVOKED:
        return f"REVOKED: {report['proven']} access path(s), each proven closed ({where})", True
    return f"{verdict}: " + " ".join(report["problems"]) + f" (evidence: {where})", False
