"""The tasks of the purge DAG (``residency_purge``): one function each, no Airflow inside.

The purge deletes the overseas copies whose domestic copy is attested at purge
time, every version of them, after the soak (policy ``purge.soak_hours``, from
the end of the cutover) and an approval of the run (:mod:`residency.purge`). As
in :mod:`residency.pipeline`, each function logs what it will do, calls the
engine, records the result in the ledger and the audit chain, and returns a
small JSON summary (counts; never lists of keys).

``plan`` -> ``propose_purge`` (a dry run, for the approver) -> approval ->
``purge`` (refuses without this run's approval, or before the soak) ->
``evidence`` (``purge-evidence.json`` / ``.html``) -> the run's verdict (:func:`run_note`).

Verdicts (:data:`VERDICTS`): ``PURGED`` (every in-scope object is purged or was
already, the after-listing finds none of them, the audit chain verifies);
``PARTIAL`` (the purge ran and is proven for what it deleted, but in-scope objects
were kept: not attested now, changed since the copy, or a deletion failed; or the
chain does not verify); ``NOT_PURGED`` (no purge ran in this run: rejected, timed
out, refused, failed; or the after-listing still finds a deleted version);
``PLAN`` (a dry run: ``purge-plan.json`` / ``.html``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping

from . import purge as engine
from .errors import PolicyError
from .evidence.chain import atomic_write, export_verified
from .evidence.report import human_bytes
from .ledger import Ledger, now
from .pipeline import Credentials, Runtime, ledger_url, plan_run, require_approval, software_versions, validate_params
from .policy import Policy, load_policy

log = logging.getLogger(__name__)

STEP = "purge"
"""The approval step (the policy's ``approvals.purge`` names who approves it)."""

EVIDENCE_JSON, EVIDENCE_HTML = "purge-evidence.json", "purge-evidence.html"
PLAN_JSON, PLAN_HTML = "purge-plan.json", "purge-plan.html"
AUDIT_FILE = "purge-audit.jsonl"
PURGED, PARTIAL, NOT_PURGED, PLAN = "PURGED", "PARTIAL", "NOT_PURGED", "PLAN"
VERDICTS = (PURGED, PARTIAL, NOT_PURGED, PLAN)
EVIDENCE_VERSION = 1

STATEMENTS = {
    PURGED: "Every overseas object of this migration whose domestic copy is attested has been deleted, every version "
            "and delete marker of it; listing the source prefixes with all versions afterwards finds none of them.",
    PARTIAL: "The purge ran and what it deleted is proven gone, but not every in-scope object was purged:",
    NOT_PURGED: "The overseas copies were not purged by this run:",
    PLAN: "This is a plan from a dry run: nothing was deleted, and it proves nothing.",
}


def plan_purge(
    params: Mapping[str, Any], run: Mapping[str, Any] | None = None, credentials: Credentials | None = None
) -> dict[str, Any]:
    """Validate the params and the policy before any work; a real run is refused here,
    before anyone is asked to approve, when no cutover is recorded, it was rolled back,
    or the soak has not elapsed (:class:`residency.purge.PurgeRefused`, naming
    ``purge.soak_hours``). The purge task checks again when it acts."""
    checked = validate_params(params)
    policy = load_policy(checked["policy_path"])
    ledger = Ledger(ledger_url(policy, credentials, distributed=bool((run or {}).get("distributed"))))
    try:
        ledger.create_schema()
        engine.ensure_schema(ledger)
        at = dt.datetime.now(dt.timezone.utc)
        status = engine.soak_status(policy, ledger, at) if checked["dry_run"] else engine.check_soak(policy, ledger, at)
    finally:
        ledger.dispose()
    plan = {**plan_run(params, run, credentials), "soak": status}
    if plan["policy_sha256"] != policy.sha256:
        raise PolicyError("policy_path", plan["policy_path"], "the file changed while the run was planned; start again")
    log.info("plan: purge the overseas copies of %s; dry_run=%s; soak %s h from the cutover at %s: due at %s",
             policy.migration_id, plan["dry_run"], status["soak_hours"], status["cutover_at"], status["due_at"])
    return plan


def _totals(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The counts of a purge summary (no per-bucket lists): what a task returns to XCom."""
    return {k: v for k, v in summary.items() if k not in ("buckets", "outside_prefixes", "soak")}


def propose_purge(rt: Runtime) -> dict[str, Any]:
    """What approving the purge will delete, for the approver to read (Markdown): a dry
    run of the purge (re-attests now, lists every version; deletes nothing)."""
    rt.begin("propose purge")
    mid = rt.policy.migration_id
    result = engine.purge(rt.policy, rt.ledger, rt.stores_for, dry_run=True, run_id=rt.run_id)
    s = result.summary()
    soak = s["soak"]
    lines = [
        f"**Purge of the overseas copies of migration `{mid}`** (policy sha256 `{rt.policy.sha256[:16]}`)",
        "",
        "Approving **deletes for good** every version and delete marker of these source objects, each only if its "
        "domestic copy is proven again when the purge runs. Nothing has been deleted yet.",
        "",
        f"Soak: `purge.soak_hours` = {soak['soak_hours']:g}; cutover ended {soak['cutover_at'] or 'never'}; "
        f"due at {soak['due_at'] or '—'} ({'elapsed' if soak['elapsed'] else 'NOT elapsed: the purge will refuse'})"
        + (f". **Refused: {soak['refusal']}**" if soak["refusal"] else ""),
        "",
        "| source | objects to delete | versions | delete markers | bytes | already purged | kept (in scope) | "
        "incomplete uploads to abort | remaining abroad |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for uri, b in s["buckets"].items():
        kept = ", ".join(f"{k} {v:,}" for k, v in b["kept"].items()) or "0"
        lines.append(f"| {uri} | **{b['purged_objects']:,}** | {b['purged_versions']:,} | "
                     f"{b['purged_delete_markers']:,} | {human_bytes(b['purged_bytes'])} | {b['already_purged']:,} | "
                     f"{kept} | {b['uploads_aborted']:,} | {b['remaining']['objects']:,} "
                     f"({human_bytes(b['remaining']['bytes'])}) |")
    reasons: dict[str, int] = {}
    for b in s["buckets"].values():
        for reason, c in b["remaining"]["by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + c["objects"]
    for o in s["outside_prefixes"].values():
        for reason, c in o["by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + c["objects"]
    if reasons:
        lines += ["", "Stays abroad (never deleted):", ""]
        lines += [f"- {n:,} object(s): {engine.REASON_WORDS[r]}" for r, n in sorted(reasons.items())]
    lines += ["", "Rejecting deletes nothing; the purge evidence records the rejection."]
    summary = {"markdown": "\n".join(lines), **_totals(s), "soak": soak}
    rt.ledger.record_phase(mid, "propose_purge", s, run_id=rt.run_id)
    rt.ledger.audit(mid, "propose_purge.done", _totals(s))
    log.info("END propose purge: %s", _totals(s))
    return summary


def purge(rt: Runtime) -> dict[str, Any]:
    """Delete (refuses without an approval of this very run, or before the soak; a dry
    run only lists). The whole summary is kept as phase ``purge_run`` of this run."""
    require_approval(rt, STEP)
    rt.begin("purge")
    mid = rt.policy.migration_id
    result = engine.purge(rt.policy, rt.ledger, rt.stores_for, dry_run=rt.dry_run, run_id=rt.run_id)
    s = result.summary()
    rt.ledger.record_phase(mid, "purge_run", s, run_id=rt.run_id)
    rt.ledger.audit(mid, "purge_run.done", _totals(s))
    log.info("END purge: %s", _totals(s))
    return _totals(s)


def default_evidence_dir(policy: Policy, run_id: str | None) -> Path:
    """``<control_dir>/<migration>/purge/<run>``: one folder per run."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id or "manual")
    return Path(policy.control_dir) / policy.migration_id / "purge" / safe


def _approval_problem(approval: Mapping[str, Any] | None) -> str:
    if not approval:
        return "No decision on the purge was recorded for this run: nothing was deleted."
    who, at = approval.get("who"), approval.get("at")
    if approval["decision"] == "rejected":
        return f"The purge was rejected by {who} at {at}: nothing was deleted."
    if approval["decision"] == "timed_out":
        return "Nobody answered the approval of the purge in time (a timeout counts as a rejection): nothing was deleted."
    return (f"The purge was approved by {who} at {at}, but it did not finish in this run (see the purge task's log); "
            "keys it deleted before it stopped are recorded in the ledger and purged on a re-run.")


def build_purge_evidence(
    policy: Policy, *, run: Mapping[str, Any], result: Mapping[str, Any] | None, approval: Mapping[str, Any] | None,
    purged_total: Mapping[str, Any], audit: Mapping[str, Any] | None, software: Mapping[str, Any], dry_run: bool,
) -> dict[str, Any]:
    """The evidence (or, for a dry run, the plan) as one JSON document; see the module docstring.

    Args:
        result: this run's purge summary (:meth:`residency.purge.PurgeResult.summary`), ``None``
            when no purge ran in this run.
        purged_total: every key this migration purged so far, per source bucket (the ledger).
    """
    problems: list[str] = []
    if dry_run:
        verdict = PLAN
    else:
        if result is None:
            problems.append(_approval_problem(approval))
        else:
            for uri, b in result["buckets"].items():
                after = b.get("after") or {}
                if after.get("in_scope_found"):
                    problems.append(f"{uri}: the listing after the purge still finds {after['in_scope_found']:,} "
                                    "version(s) this migration deleted: the purge is not proven (see after).")
                for reason, n in sorted(b["kept"].items()):
                    problems.append(f"{uri}: {n:,} in-scope object(s) kept: {engine.REASON_WORDS[reason]}.")
                if after.get("uploads_open"):
                    problems.append(f"{uri}: {after['uploads_open']:,} incomplete multipart upload(s) still open "
                                    "after the purge.")
        if audit and not audit.get("verified"):
            problems.append(f"The audit log does not verify: {audit.get('error')}.")
        if result is None or any((b.get("after") or {}).get("in_scope_found") for b in result["buckets"].values()):
            verdict = NOT_PURGED
        else:
            verdict = PARTIAL if problems else PURGED
    approval_doc = None
    if approval:
        approval_doc = {"step": STEP, "decision": approval["decision"], "who": approval.get("who"),
                        "when": approval.get("at"), "comment": approval.get("comment"),
                        "recorded_at": approval.get("recorded_at")}
    buckets = result["buckets"] if result else {}
    remaining = []
    for uri, b in buckets.items():
        for reason, c in sorted(b["remaining"]["by_reason"].items()):
            remaining.append({"source": uri, "reason": reason, "why": engine.REASON_WORDS[reason], **c})
    for uri, o in (result or {}).get("outside_prefixes", {}).items():
        for reason, c in sorted(o["by_reason"].items()):
            remaining.append({"source": uri, "reason": reason, "why": engine.REASON_WORDS[reason], **c})
    return {
        "kind": "purge_plan" if dry_run else "purge_evidence",
        "version": EVIDENCE_VERSION,
        "verdict": verdict,
        "statement": STATEMENTS[verdict],
        "problems": problems,
        "migration_id": policy.migration_id,
        "generated_at": now(),
        "policy": {"path": policy.path, "sha256": policy.sha256, "purge": {"soak_hours": engine.soak_hours(policy)}},
        "run": json.loads(json.dumps(dict(run), default=str)),
        "software": dict(software),
        "approval": approval_doc,
        "soak": (result or {}).get("soak"),
        "status": (result or {}).get("status"),
        "buckets": {uri: {k: v for k, v in b.items() if k not in ("remaining", "after")} for uri, b in buckets.items()},
        "remaining_abroad": remaining,
        "remaining_examples": [e for b in buckets.values() for e in b["remaining"]["examples"]]
        + [e for o in (result or {}).get("outside_prefixes", {}).values() for e in o["examples"]],
        "after": None if dry_run else {uri: b.get("after") for uri, b in buckets.items()},
        "purged_by_this_migration": dict(purged_total),
        "audit_log": dict(audit) if audit is not None else None,
    }


def _purged_total(ledger: Ledger, mid: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for row in engine.purged_rows(ledger, mid):
        t = out.setdefault(row["src_bucket_uri"], {"objects": 0, "versions": 0, "delete_markers": 0, "bytes": 0})
        t["objects"] += 1
        t["versions"] += int(row["versions"])
        t["delete_markers"] += int(row["delete_markers"])
        t["bytes"] += int(row["bytes"])
    return out


def write_evidence(rt: Runtime, run: Mapping[str, Any]) -> dict[str, Any]:
    """The purge's evidence (a dry run: its plan), written whether or not the purge ran:
    a rejection, a refusal or a failure is recorded as such."""
    rt.begin("purge evidence")
    mid = rt.policy.migration_id
    out_dir = Path(rt.plan.get("evidence_dir") or default_evidence_dir(rt.policy, rt.run_id))
    out_dir.mkdir(parents=True, exist_ok=True)
    row = rt.ledger.latest_phase(mid, "purge_run")
    result = row["result"] if row and row["run_id"] == rt.run_id else None
    if rt.dry_run and result is None:  # the purge task did not run: the proposal is the same dry run
        row = rt.ledger.latest_phase(mid, "propose_purge")
        result = row["result"] if row and row["run_id"] == rt.run_id else None
    decisions = [a for a in rt.ledger.get_approvals(mid, rt.run_id or "manual") if a["step"] == STEP]
    audit: dict[str, Any] | None = None
    if not rt.dry_run:
        audit = export_verified(rt.ledger, mid, out_dir / AUDIT_FILE)
    doc = build_purge_evidence(
        rt.policy, run={**dict(run), "dry_run": rt.dry_run}, result=result,
        approval=decisions[-1] if decisions else None, purged_total=_purged_total(rt.ledger, mid), audit=audit,
        software=software_versions(), dry_run=rt.dry_run)
    json_path = out_dir / (PLAN_JSON if rt.dry_run else EVIDENCE_JSON)
    html_path = out_dir / (PLAN_HTML if rt.dry_run else EVIDENCE_HTML)
    with atomic_write(json_path) as out:
        out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    with atomic_write(html_path) as out:
        out.write(render_purge_html(doc))
    totals = _totals(result) if result else {}
    rt.ledger.audit(mid, "purge.plan_written" if rt.dry_run else "purge.evidence_written", {
        "verdict": doc["verdict"], "file": str(json_path), "audit_head": (audit or {}).get("head"), **totals})
    summary = {"kind": doc["kind"], "verdict": doc["verdict"], "problems": doc["problems"],
               "evidence_json": str(json_path), "evidence_html": str(html_path),
               "purged_objects": totals.get("purged_objects"), "purged_bytes": totals.get("purged_bytes"),
               "already_purged": totals.get("already_purged"), "kept": totals.get("kept"),
               "remaining_objects": totals.get("remaining_objects")}
    rt.ledger.record_phase(mid, "purge_evidence", summary, run_id=rt.run_id)
    log.info("END purge evidence: %s -> %s (%s)", mid, json_path, doc["verdict"])
    return summary


def run_note(report: Mapping[str, Any]) -> tuple[str, bool]:
    """The run's note for the verdict of :func:`write_evidence`, and whether the run succeeds
    (only PURGED, or a dry run's PLAN)."""
    verdict, where = report["verdict"], report["evidence_html"]
    n, size = report.get("purged_objects") or 0, human_bytes(report.get("purged_bytes") or 0)
    if verdict == PLAN:
        return (f"PLAN (dry run): {n:,} object(s) ({size}) would be purged; "
                f"{report.get('remaining_objects') or 0:,} stay abroad; see {where}"), True
    if verdict == PURGED:
        return (f"PURGED: {n:,} object(s) ({size}) deleted in this run, {report.get('already_purged') or 0:,} "
                f"already purged; {report.get('remaining_objects') or 0:,} out-of-scope object(s) stay abroad "
                f"({where})"), True
    return f"{verdict}: " + " ".join(report["problems"]) + f" (evidence: {where})", False


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Purge {{ "plan" if plan else "evidence" }}: {{ doc.migration_id }}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1b1f24;line-height:1.45}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;width:100%}th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
thead th{background:#f6f8fa}td.num{text-align:right;white-space:nowrap}
.verdict{padding:1rem 1.2rem;border-radius:6px;margin:1rem 0}.ok{background:#dafbe1;border:2px solid #1a7f37}
.bad{background:#ffebe9;border:2px solid #cf222e}.plan{background:#ddf4ff;border:2px solid #0969da}.verdict strong{font-size:1.4rem}
code{font-family:ui-monospace,Consolas,monospace;font-size:.85rem;word-break:break-all}.muted{color:#57606a}
</style></head><body>
<h1>Purge of the overseas copies{{ " (plan)" if plan else "" }}: {{ doc.migration_id }}</h1>
<p class="muted">Generated at {{ doc.generated_at }} for policy {{ doc.policy.path }} (SHA-256 {{ doc.policy.sha256 }});
purge.soak_hours {{ doc.policy.purge.soak_hours }}.</p>
<div class="verdict {{ 'plan' if plan else ('ok' if doc.verdict == 'PURGED' else 'bad') }}">
<strong>{{ doc.verdict }}</strong><p>{{ doc.statement }}</p>
{% if doc.problems %}<ul>{% for p in doc.problems %}<li>{{ p }}</li>{% endfor %}</ul>{% endif %}</div>
<h2>Run, soak and approval</h2>
<table><tbody><tr><th>DAG</th><td>{{ doc.run.dag_id|default(None)|yes }}</td></tr>
<tr><th>Run</th><td>{{ doc.run.run_id|default(None)|yes }}</td></tr>
{% if doc.soak %}<tr><th>Cutover ended</th><td>{{ doc.soak.cutover_at|yes }}</td></tr>
<tr><th>Purge due (cutover + soak)</th><td>{{ doc.soak.due_at|yes }}</td></tr>{% endif %}
<tr><th>Approval</th><td>{% if doc.approval %}{{ doc.approval.decision }} by {{ doc.approval.who|yes }} at {{ doc.approval.when|yes }}{% if doc.approval.comment %} ({{ doc.approval.comment }}){% endif %}{% elif plan %}a dry run asks none{% else %}none recorded{% endif %}</td></tr>
</tbody></table>
<h2>{{ "What the purge would delete" if plan else "What the purge deleted" }}, per source</h2>
<table><thead><tr><th>Source</th><th>In scope</th><th>Attested now</th><th>Objects</th><th>Versions</th><th>Delete markers</th><th>Bytes</th><th>Already purged</th><th>Kept (in scope)</th><th>Incomplete uploads aborted</th><th>Requests</th></tr></thead><tbody>
{% for uri, b in doc.buckets|dictsort %}<tr><td><code>{{ uri }}</code></td><td class="num">{{ b.in_scope|num }}</td><td class="num">{{ b.attested|num }}</td>
<td class="num">{{ b.purged_objects|num }}</td><td class="num">{{ b.purged_versions|num }}</td><td class="num">{{ b.purged_delete_markers|num }}</td>
<td class="num">{{ b.purged_bytes|bytes }}</td><td class="num">{{ b.already_purged|num }}</td>
<td>{% for r, n in b.kept|dictsort %}{{ r }}: {{ n|num }}<br>{% else %}0{% endfor %}</td><td class="num">{{ b.uploads_aborted|num }}</td>
<td>{% for r, n in b.requests|dictsort %}{{ r }}: {{ n|num }}<br>{% endfor %}</td></tr>
{% else %}<tr><td colspan="11">No purge ran in this run.</td></tr>{% endfor %}</tbody></table>
<h2>Remaining abroad, and why</h2>
<table><thead><tr><th>Source</th><th>Why it stays</th><th>Objects</th><th>Versions</th><th>Delete markers</th><th>Bytes</th></tr></thead><tbody>
{% for r in doc.remaining_abroad %}<tr><td><code>{{ r.source }}</code></td><td>{{ r.why }}</td><td class="num">{{ r.objects|num }}</td><td class="num">{{ r.versions|num }}</td><td class="num">{{ r.delete_markers|num }}</td><td class="num">{{ r.bytes|bytes }}</td></tr>
{% else %}<tr><td colspan="6">Nothing listed.</td></tr>{% endfor %}</tbody></table>
{% if doc.remaining_examples %}<table><thead><tr><th>Example</th><th>Reason</th><th>Detail</th></tr></thead><tbody>
{% for e in doc.remaining_examples %}<tr><td><code>{{ e.uri }}</code></td><td>{{ e.reason }}</td><td>{{ e.detail }}</td></tr>{% endfor %}</tbody></table>{% endif %}
{% if doc.after %}<h2>Proof: the source prefixes listed again, every version</h2>
<table><thead><tr><th>Source</th><th>Versions listed</th><th>Deleted versions still listed</th><th>Incomplete uploads open</th></tr></thead><tbody>
{% for uri, a in doc.after|dictsort %}<tr><td><code>{{ uri }}</code></td>{% if a %}<td class="num">{{ a.listed_versions|num }}</td><td class="num">{{ a.in_scope_found|num }}</td><td class="num">{{ a.uploads_open|num }}</td>{% else %}<td colspan="3">not listed</td>{% endif %}</tr>{% endfor %}
</tbody></table>{% endif %}
<h2>Purged by this migration so far (ledger)</h2>
<table><thead><tr><th>Source bucket</th><th>Objects</th><th>Versions</th><th>Delete markers</th><th>Bytes</th></tr></thead><tbody>
{% for uri, t in doc.purged_by_this_migration|dictsort %}<tr><td><code>{{ uri }}</code></td><td class="num">{{ t.objects|num }}</td><td class="num">{{ t.versions|num }}</td><td class="num">{{ t.delete_markers|num }}</td><td class="num">{{ t.bytes|bytes }}</td></tr>
{% else %}<tr><td colspan="5">None.</td></tr>{% endfor %}</tbody></table>
{% if doc.audit_log %}<h2>Audit log</h2><p>{% if doc.audit_log.verified %}{{ doc.audit_log.records|num }} records in <code>{{ doc.audit_log.file }}</code>, chain verified, head <code>{{ doc.audit_log.head }}</code>.{% else %}Does not verify: {{ doc.audit_log.error }}{% endif %}</p>{% endif %}
</body></html>
"""


def render_purge_html(doc: Mapping[str, Any]) -> str:
    """The page of one purge evidence (or plan) document; every value autoescaped."""
    from .evidence.html import environment

    return environment().from_string(_TEMPLATE).render(doc=doc, plan=doc["verdict"] == PLAN)
