"""The residual scan: every reference that still points overseas, and why.

Run at evidence time, never reused from an earlier phase. It reads every
configured column (URL, text and JSON kinds alike, see :mod:`.cells`) and reports:

- every URL of an object in an overseas bucket (any S3 or GCS style, and the
  CDN hostnames the policy maps to a bucket), with its reason (:mod:`.model`);
- every mention of an overseas bucket name or CDN hostname that is not inside a
  recognised URL (``unrecognised``: a URL style the parser does not know);
- every URL of a domestic copy of this migration that is not verified and
  re-proven by the latest attest run (``unproven_copy``), and cells still
  pointing at a destination the plan no longer names (``stale_destination``).

Each finding blocks a COMPLETE verdict unless one of the policy's
``references.accepted_residual`` rules covers it; accepted ones are counted per
rule with the policy's reason. Read-only on the application database.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict
from typing import Any, Callable, Iterable, Mapping

from ..ledger import CUT_OVER, VERIFIED, Ledger
from ..policy import Policy
from ..uris import CdnHost, ParsedUrl, UrlStyle, redact_url
from . import appdb, journal
from .cells import scan_cell
from .cutover import cdn_hosts
from .model import (
    CONFLICT, CONFLICTED, MAX_EXAMPLES, NO_DOMESTIC_HOST, NOT_ATTESTED, NOT_IN_SCOPE, NOT_REWRITTEN, NOT_VERIFIED,
    OTHER_VERSION, PRESIGNED, ROLLED_BACK, ROLLED_BACK_STATE, STALE_DESTINATION, UNPROVEN_COPY, UNRECOGNISED, Finding,
    ResidualReport,
)

log = logging.getLogger(__name__)

DONE = (VERIFIED, CUT_OVER)


def domestic_hosts(policy: Policy) -> list[CdnHost]:
    """The domestic CDN hostnames the policy names, as hosts of the destination buckets."""
    out = []
    refs = policy.references
    for h in refs.hosts if refs else ():
        if not h.to_host:
            continue
        source = next((s for s in policy.sources if s.bucket_uri == h.bucket_uri), None)
        if source is None:
            continue
        dst = policy.destination_for(source).ref
        out.append(CdnHost(h.to_host, dst.provider, dst.bucket, h.to_path_prefix))
    return out


def overseas_matcher(
    policy: Policy, overseas_buckets: Iterable[str] | None
) -> tuple[Callable[[ParsedUrl], bool], list[str]]:
    """Whether a parsed URL names an overseas bucket, and the names worth a mention.

    ``overseas_buckets``: bucket names (a name matches a bucket of either provider)
    or bucket URIs; default: the policy's sources. The mention names are the bucket
    names and the policy's CDN hostnames in front of source buckets.
    """
    names: set[str] = set()
    uris: set[str] = set()
    for item in overseas_buckets if overseas_buckets is not None else (s.bucket_uri for s in policy.sources):
        (uris if "://" in item else names).add(item.rstrip("/"))
    mention = sorted({u.split("://", 1)[1] for u in uris} | names | {h.host for h in cdn_hosts(policy)})
    return (lambda p: p.ref.bucket in names or p.ref.bucket_uri in uris), mention


def scan_residual(
    policy: Policy,
    ledger: Ledger,
    overseas_buckets: Iterable[str] | None = None,
    *,
    database_url: str | None = None,
    attest_stamp: str | None = None,
) -> ResidualReport:
    """Find every reference that keeps the migration from being complete.

    Args:
        overseas_buckets: bucket names (``seoul-line-photos``) or bucket URIs
            (``s3://seoul-line-photos``); a name matches a bucket of either
            provider. Default: the policy's sources.
        database_url: the application database; default: the policy's ``database_url``.
        attest_stamp: the stamp of the latest attest run; references to domestic
            copies (and verified objects) not re-proven by it are reported.
            ``None``: verification alone counts.

    The report is kept with ``ledger.record_phase(..., "residual", ...)`` and an
    audit record ``residual.scan``.
    """
    refs = appdb.require_references(policy)
    url = appdb.database_url(refs, database_url)
    mid = policy.migration_id
    overseas, mention_names = overseas_matcher(policy, overseas_buckets)
    hosts = cdn_hosts(policy) + domestic_hosts(policy)
    destinations = {d.ref.bucket_uri for d in policy.destinations.values()}
    mappings = {h.host: h for h in refs.hosts}

    scan = _Scan(policy, attest_stamp)
    app = appdb.app_engine(url)
    try:
        for column in appdb.resolve_columns(app, refs):
            stats = scan.per_column.setdefault(column.label, Counter(cells=0, references=0, residual=0, accepted=0))
            for rows in appdb.pages(app, column, refs.batch_size):
                stats["cells"] += len(rows)
                cells = [(key, scan_cell(value, column.spec.kind, hosts, mention_names), value) for key, value in rows]
                entries = journal.journal_rows(ledger, mid, column, [str(k) for k, _, _ in cells])
                abroad = [p.ref.uri for _, c, _ in cells for _, p in c.urls if overseas(p)]
                at_home = [p.ref.uri for _, c, _ in cells for _, p in c.urls if p.ref.bucket_uri in destinations]
                by_src = ledger.get_objects(mid, abroad + [e["src_uri"] for e in entries.values()])
                by_dst = ledger.objects_by_dst(mid, at_home) if at_home else {}
                for key, cell, value in cells:
                    entry = entries.get(str(key))
                    for text, parsed in cell.urls:
                        if overseas(parsed):
                            stats["references"] += 1
                            reason = _overseas_reason(parsed, by_src.get(parsed.ref.uri), entry, mappings, attest_stamp)
                            scan.add(column.label, str(key), reason, parsed.ref.uri, text, by_src.get(parsed.ref.uri))
                        elif parsed.ref.bucket_uri in destinations:
                            obj = by_dst.get(parsed.ref.uri)
                            reason = _domestic_reason(obj, entry, value, parsed, by_src, attest_stamp)
                            if obj is not None or reason is not None:
                                stats["references"] += 1
                            if reason is None:
                                scan.domestic_ok += obj is not None
                            else:
                                src = obj["src_uri"] if obj else (entry or {}).get("src_uri")
                                scan.add(column.label, str(key), reason, src, text, obj)
                    for excerpt in cell.unexplained:
                        stats["references"] += 1
                        scan.add(column.label, str(key), UNRECOGNISED, None, excerpt, None)
                stats["residual"] = scan.blocking_by_column[column.label]
                stats["accepted"] = scan.accepted_by_column[column.label]
        report = scan.report()
        log.info(
            "residual scan: %d cell(s) scanned, %d reference(s) to the overseas buckets %s or to copies; %d block "
            "completeness %s, %d accepted by the policy, %d point at proven domestic copies",
            report.cells_scanned, report.references, mention_names, report.residual, report.by_reason or "",
            report.accepted, report.domestic_ok,
        )
        summary = {k: v for k, v in asdict(report).items() if k != "examples"}
        summary["overseas_buckets"] = mention_names
        ledger.audit(mid, "residual.scan", summary)
        ledger.record_phase(mid, "residual", asdict(report))
        return report
    finally:
        app.dispose()


def _overseas_reason(
    parsed: ParsedUrl,
    obj: Mapping[str, Any] | None,
    entry: Mapping[str, Any] | None,
    mappings: Mapping[str, Any],
    attest_stamp: str | None,
) -> str:
    if parsed.presigned:
        return PRESIGNED
    if obj is None:
        return NOT_IN_SCOPE
    if parsed.version and parsed.version != (obj.get("src_version") or ""):
        return OTHER_VERSION
    if obj["state"] not in DONE:
        return NOT_VERIFIED
    if entry is not None and entry["state"] == CONFLICTED:
        return CONFLICT
    if entry is not None and entry["state"] == ROLLED_BACK_STATE:
        return ROLLED_BACK
    if parsed.style is UrlStyle.CDN and not getattr(mappings.get(parsed.host), "to_host", None):
        return NO_DOMESTIC_HOST
    if attest_stamp is not None and obj.get("attested_at") != attest_stamp:
        return NOT_ATTESTED
    return NOT_REWRITTEN


def _domestic_reason(
    obj: Mapping[str, Any] | None,
    entry: Mapping[str, Any] | None,
    value: Any,
    parsed: ParsedUrl,
    by_src: Mapping[str, Mapping[str, Any]],
    attest_stamp: str | None,
) -> str | None:
    """Why a URL of a destination bucket is not a proven copy, or ``None``."""
    if obj is None:
        # Not a copy the ledger knows at this place; if the migration wrote it into
        # this cell, the plan has moved the object's destination since.
        if entry is not None and value == entry["new_url"]:
            src = by_src.get(entry["src_uri"])
            if src is not None and src["dst_uri"] != parsed.ref.uri:
                return STALE_DESTINATION
        return None
    if obj["state"] not in DONE:
        return UNPROVEN_COPY
    if attest_stamp is not None and obj.get("attested_at") != attest_stamp:
        return UNPROVEN_COPY
    return None


class _Scan:
    """Findings, counted and sampled; the policy's accepted rules applied."""

    def __init__(self, policy: Policy, attest_stamp: str | None) -> None:
        self.rules = policy.references.accepted_residual if policy.references else ()
        self.attest_stamp = attest_stamp
        self.per_column: dict[str, Counter] = {}
        self.by_reason: Counter[str] = Counter()
        self.by_rule: Counter[int] = Counter()
        self.blocking_by_column: Counter[str] = Counter()
        self.accepted_by_column: Counter[str] = Counter()
        self.blocking_examples: list[Finding] = []
        self.accepted_examples: list[Finding] = []
        self.domestic_ok = 0

    def add(self, column: str, key: str, reason: str, object_uri: str | None, excerpt: str,
            obj: Mapping[str, Any] | None) -> None:
        rule = next((i for i, r in enumerate(self.rules) if r.matches(object_uri, column, key)), None)
        finding = Finding(column, key, reason, object_uri, redact_url(excerpt)[:300],
                          obj["state"] if obj else None, self.rules[rule].reason if rule is not None else None)
        if rule is None:
            self.by_reason[reason] += 1
            self.blocking_by_column[column] += 1
            if len(self.blocking_examples) < MAX_EXAMPLES:
                self.blocking_examples.append(finding)
        else:
            self.by_rule[rule] += 1
            self.accepted_by_column[column] += 1
            if len(self.accepted_examples) < MAX_EXAMPLES:
                self.accepted_examples.append(finding)

    def report(self) -> ResidualReport:
        examples = self.blocking_examples + self.accepted_examples[: max(0, MAX_EXAMPLES - len(self.blocking_examples))]
        return ResidualReport(
            cells_scanned=sum(c["cells"] for c in self.per_column.values()),
            residual=sum(self.by_reason.values()),
            by_reason=dict(sorted(self.by_reason.items())),
            examples=[f.as_dict() for f in examples],
            per_column={k: dict(v) for k, v in self.per_column.items()},
            accepted=sum(self.by_rule.values()),
            accepted_by_rule=[
                {"rule": self.rules[i].describe(), "reason": self.rules[i].reason, "references": self.by_rule[i]}
                for i in sorted(self.by_rule)
            ],
            references=sum(c["references"] for c in self.per_column.values()),
            domestic_ok=self.domestic_ok,
            attest_stamp=self.attest_stamp,
        )

