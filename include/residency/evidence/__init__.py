"""The evidence of a migration, for auditors who do not read code.

- :mod:`.chain`: the hash-chained audit log (``audit.jsonl``), exported and verified;
- :mod:`.report`: ``evidence.json`` and ``objects.jsonl``: counts read from the
  ledger, the verdict rule by rule (:data:`~.report.COMPLETE_RULES`);
- :mod:`.html`: ``evidence.html``, the same facts as one page (a Jinja2 template).
"""

from .chain import AUDIT_FILE, AuditChainBroken, ChainHead, export_audit_log, verify_audit_log
from .html import render_html, render_plan
from .plan import build_plan, write_plan
from .report import (
    COMPLETE_RULES, EVIDENCE_HTML, EVIDENCE_JSON, FAILURES_CAP, OBJECTS_FILE, EvidenceFiles, ObjectsExport,
    build_evidence, export_objects, load_schema, validate_evidence, write_evidence,
)

__all__ = [
    "AUDIT_FILE", "COMPLETE_RULES", "EVIDENCE_HTML", "EVIDENCE_JSON", "FAILURES_CAP", "OBJECTS_FILE",
    "AuditChainBroken", "ChainHead", "EvidenceFiles", "ObjectsExport", "build_evidence", "export_audit_log",
    "export_objects", "load_schema", "render_html", "validate_evidence", "verify_audit_log", "write_evidence",
    "build_plan", "render_plan", "write_plan",
]
