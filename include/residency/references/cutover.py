"""Cut over the application's references: rewrite URLs of proven copies, journaled.

:func:`cutover` rewrites each URL cell (columns of kind ``url``) whose object the
ledger shows verified, and re-proven by this run's recheck when
``attested_since`` is given, to the same style pointing at the domestic copy:
scheme, addressing, host family (dualstack stays dualstack) and query string are
kept, minus a ``versionId`` / ``generation`` that named the migrated source
version. Everything else stays and is counted as residual with a reason (see
:mod:`.model`). Text and JSON columns are not rewritten by this version; the
residual scan reports their URLs.

A cell the migration already cut over is *repointed* when the destination plan
changed since (the ledger names another destination for its object), and left
alone, counted ``unproven_copy``, when its object is no longer proven; the
journal keeps the application's original value for rollback throughout.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

from sqlalchemy.engine import Engine

from ..ledger import CUT_OVER, VERIFIED, Ledger
from ..policy import HostMapping, Policy
from ..uris import CdnHost, ObjectRef, ParsedUrl, UrlStyle, drop_query_params, format_url, parse_uri, parse_url, redact_url
from . import appdb, journal
from .model import (
    APPLIED, CONFLICTED, NO_DOMESTIC_HOST, PENDING, NOT_ATTESTED, NOT_IN_SCOPE, NOT_VERIFIED, OTHER_VERSION, PRESIGNED,
    UNPROVEN_COPY, CutoverResult,
)

log = logging.getLogger(__name__)

DONE = (VERIFIED, CUT_OVER)

#: The source's host family -> the family written for the destination (same provider).
#: Families a destination may not offer (legacy dash hosts, acceleration, FIPS)
#: become the regional host; website endpoints keep the website style.
_S3_ENDPOINT = {
    "global": "", "regional": "regional", "legacy-dash": "regional", "dualstack": "dualstack",
    "accelerate": "", "accelerate-dualstack": "dualstack", "fips": "regional", "fips-dualstack": "dualstack",
    "website-dash": "website-dot", "website-dot": "website-dot",
}
_GS_ENDPOINT = {"storage": "", "commondatastorage": "commondatastorage", "cloud-console": "cloud-console",
                "api-download": "api-download", "api": "api", "www-api-download": "www-api-download",
                "www-api": "www-api"}


@dataclass
class _Counts:
    scanned: int = 0
    rewritten: int = 0
    already_rewritten: int = 0
    residual: int = 0
    conflicts: int = 0
    ignored: int = 0
    repointed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, other: _Counts) -> None:
        for name in ("scanned", "rewritten", "already_rewritten", "residual", "conflicts", "ignored", "repointed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reasons.update(other.reasons)

    def as_dict(self) -> dict[str, int]:
        out = {
            "scanned": self.scanned, "rewritten": self.rewritten, "already_rewritten": self.already_rewritten,
            "residual": self.residual, "conflicts": self.conflicts, "ignored": self.ignored,
            "repointed": self.repointed,
        }
        out.update({f"residual_{k}": v for k, v in sorted(self.reasons.items())})
        return out


def cdn_hosts(policy: Policy) -> list[CdnHost]:
    """The policy's CDN hostnames in front of source buckets, for the URL parser."""
    refs = policy.references
    out = []
    for h in refs.hosts if refs else ():
        ref = parse_uri(h.bucket_uri)
        out.append(CdnHost(h.host, ref.provider, ref.bucket, h.path_prefix))
    return out


def new_url(
    parsed: ParsedUrl, dst: ObjectRef, region: str | None, mappings: Mapping[str, HostMapping]
) -> str | None:
    """The URL of ``dst`` in the style of ``parsed``; ``None`` when a CDN has no domestic host."""
    query = drop_query_params(parsed.query, ("versionId", "generation"))
    if parsed.style is UrlStyle.CDN:
        mapping = mappings.get(parsed.host)
        if mapping is None or not mapping.to_host:
            return None
        cdn = CdnHost(mapping.to_host, dst.provider, dst.bucket, mapping.to_path_prefix)
        return format_url(dst, UrlStyle.CDN, query=query, scheme=parsed.scheme or None, fragment=parsed.fragment, cdn=cdn)
    same = parsed.ref.provider == dst.provider
    table = _S3_ENDPOINT if dst.provider == "s3" else _GS_ENDPOINT
    endpoint = table.get(parsed.endpoint, "") if same else ""
    scheme = parsed.scheme if parsed.scheme and (same or parsed.scheme.lower() in ("http", "https")) else None
    try:
        return format_url(dst, parsed.style, region, query, endpoint=endpoint, scheme=scheme, fragment=parsed.fragment)
    except ValueError:  # a host family the destination's style cannot have
        return format_url(dst, parsed.style, region, query, scheme=scheme, fragment=parsed.fragment)


def cutover(
    policy: Policy,
    ledger: Ledger,
    *,
    dst_region: Callable[[ObjectRef], str | None],
    dry_run: bool = False,
    database_url: str | None = None,
    attested_since: str | None = None,
) -> CutoverResult:
    """Rewrite the application's URLs of proven objects to their domestic copies.

    Args:
        policy: needs a ``references`` section; source buckets come from ``sources``.
        ledger: object states, the reference journal and the audit log.
        dst_region: region of a destination object's bucket, for S3 HTTPS URL
            hosts (``None``: the global ``s3.amazonaws.com`` host). Called once
            per destination bucket per run.
        dry_run: compute and log everything ("would rewrite"), write nothing.
        database_url: the application database (from the policy's Airflow
            connection); default: the policy's ``database_url``.
        attested_since: only objects re-proven by an attest run stamped at or
            after this are repointed (the pipeline passes its recheck's stamp);
            ``None``: every verified object.

    Objects become ``cut_over`` (from ``verified`` only) after a page in which at
    least one of their references was rewritten (in this run or an earlier one),
    provided the journal holds no ``conflict`` for any of their references; at the
    end of the run objects ``cut_over`` with a reference in conflict go back to
    ``verified``.

    Raises:
        PolicyError: no ``references`` section, or a configured table or column
            does not exist in the application database (before any work).
    """
    refs = appdb.require_references(policy)
    url = appdb.database_url(refs, database_url)
    migration_id = policy.migration_id
    sources = {s.bucket_uri for s in policy.sources}
    hosts = cdn_hosts(policy)
    mappings = {h.host: h for h in refs.hosts}
    regions: dict[str, str | None] = {}

    def region_of(ref: ObjectRef) -> str | None:
        if ref.bucket_uri not in regions:
            regions[ref.bucket_uri] = dst_region(ref)
        return regions[ref.bucket_uri]

    page = _Page(ledger, migration_id, sources, hosts, mappings, region_of, attested_since, dry_run)
    app = appdb.app_engine(url)
    try:
        columns = appdb.resolve_columns(app, refs)
        url_columns = [c for c in columns if c.spec.kind == "url"]
        skipped = [c.label for c in columns if c.spec.kind != "url"]
        log.info(
            "%s cutover of references in %s: %d column(s) %s, batch size %d%s",
            "DRY RUN:" if dry_run else "starting", appdb.safe_url(url), len(url_columns),
            ", ".join(c.label for c in url_columns), refs.batch_size, " (nothing will be written)" if dry_run else "",
        )
        if skipped:
            log.warning("cutover: columns %s hold text or JSON: not rewritten by this version; the residual scan "
                        "reports every overseas URL in them", ", ".join(skipped))
        batch_no = journal.last_batch(ledger, migration_id)
        batches = 0
        total = _Counts()
        per_column: dict[str, dict[str, int]] = {}
        for column in url_columns:
            col_counts = _Counts()
            for rows in appdb.pages(app, column, refs.batch_size):
                batch_no += 1
                batches += 1
                col_counts.add(page.run(app, column, rows, batch_no))
            per_column[column.label] = col_counts.as_dict()
            total.add(col_counts)

        demoted = 0 if dry_run else journal.demote_conflicted(ledger, migration_id)
        result = CutoverResult(
            scanned=total.scanned, rewritten=total.rewritten, already_rewritten=total.already_rewritten,
            residual=total.residual, residual_by_reason=dict(sorted(total.reasons.items())),
            per_column=per_column, batches=batches, dry_run=dry_run,
            conflicts=total.conflicts, ignored=total.ignored, repointed=total.repointed, skipped_columns=skipped,
        )
        log.info(
            "%scutover done: %d reference(s) scanned, %d %s (%d repointed), %d already rewritten, %d residual %s, "
            "%d conflict(s), %d cell(s) ignored, %d batch(es)",
            "DRY RUN: " if dry_run else "", result.scanned, result.rewritten,
            "would be rewritten" if dry_run else "rewritten", result.repointed, result.already_rewritten,
            result.residual, result.residual_by_reason, result.conflicts, result.ignored, result.batches,
        )
        if demoted:
            log.warning("%d object(s) back from cut_over to verified: a reference of each is in conflict", demoted)
        if not dry_run:
            ledger.audit(migration_id, "cutover.done", dict(asdict(result), demoted_to_verified=demoted))
            ledger.record_phase(migration_id, "cutover", asdict(result))
        return result
    finally:
        app.dispose()


@dataclass
class _Page:
    """Cuts over one page of one column (the steps of the write-ahead journal)."""

    ledger: Ledger
    migration_id: str
    sources: set[str]
    hosts: list[CdnHost]
    mappings: Mapping[str, HostMapping]
    region_of: Callable[[ObjectRef], str | None]
    attested_since: str | None
    dry_run: bool

    def proven(self, obj: Mapping[str, Any] | None) -> str | None:
        """Why ``obj`` may not be pointed at, or ``None`` when it may."""
        if obj is None:
            return NOT_IN_SCOPE
        if obj["state"] not in DONE:
            return NOT_VERIFIED
        if self.attested_since is not None and (obj.get("attested_at") or "") < self.attested_since:
            return NOT_ATTESTED
        return None

    def target(self, parsed: ParsedUrl, obj: Mapping[str, Any]) -> str | None:
        dst = parse_uri(obj["dst_uri"], "ledger dst_uri")
        return new_url(parsed, dst, self.region_of(dst), self.mappings)

    def run(self, app: Engine, column: appdb.AppColumn, rows: Sequence[Any], batch_no: int) -> _Counts:
        counts = _Counts()
        mid = self.migration_id
        journaled = journal.journal_rows(self.ledger, mid, column, [str(k) for k, _ in rows])
        already: list[Mapping[str, Any]] = []
        rewrites: list[journal.Rewrite] = []
        candidates: list[tuple[Any, str, ParsedUrl]] = []
        repoints: list[tuple[Any, str, Mapping[str, Any]]] = []
        for key, value in rows:
            entry = journaled.get(str(key))
            if entry is not None and isinstance(value, str) and value == entry["new_url"] and entry["state"] in (
                APPLIED, PENDING, CONFLICTED
            ):
                repoints.append((key, value, entry))
                continue
            parsed = parse_url(value, self.hosts) if isinstance(value, str) else None
            if parsed is None or parsed.ref.bucket_uri not in self.sources:
                counts.ignored += 1
                continue
            candidates.append((key, value, parsed))

        wanted = [p.ref.uri for _, _, p in candidates] + [e["src_uri"] for _, _, e in repoints]
        found = self.ledger.get_objects(mid, wanted) if wanted else {}

        # Cells already cut over: still right, repointed after a plan change, or unproven now.
        for key, value, entry in repoints:
            obj = found.get(entry["src_uri"])
            original = parse_url(entry["old_url"], self.hosts)
            why = self.proven(obj)
            target = self.target(original, obj) if why is None and original is not None else None
            if target == value:
                already.append(entry)
            elif target is not None:
                rewrites.append(journal.Rewrite(key, str(key), value, target, entry["src_uri"], entry["id"],
                                                entry["old_url"]))
                counts.repointed += 1
            else:
                self._residual(counts, column, key, value, UNPROVEN_COPY)

        for key, value, parsed in candidates:
            obj = found.get(parsed.ref.uri)
            if parsed.presigned:
                reason: str | None = PRESIGNED
            elif obj is not None and parsed.version and parsed.version != (obj.get("src_version") or ""):
                reason = OTHER_VERSION
            else:
                reason = self.proven(obj)
            target = None
            if reason is None:
                target = self.target(parsed, obj)
                reason = NO_DOMESTIC_HOST if target is None else None
            if reason is not None:
                self._residual(counts, column, key, value, reason)
                continue
            entry = journaled.get(str(key))
            rewrites.append(journal.Rewrite(key, str(key), value, target, parsed.ref.uri,
                                            entry["id"] if entry else None, value))

        counts.scanned = len(repoints) + len(candidates)
        counts.already_rewritten = len(already)

        if self.dry_run:
            for r in rewrites:
                log.info("would rewrite %s %s=%s: %s -> %s", column.label, column.spec.key, r.key_value,
                         redact_url(r.old), redact_url(r.new))
            counts.rewritten = len(rewrites)
            _log_batch(column, batch_no, counts, self.dry_run)
            return counts

        if rewrites:
            journal.journal_pending(self.ledger, mid, column, rewrites, batch_no)
            with app.begin() as conn:
                outcomes = [(r, appdb.cas(conn, column, r.key, r.old, r.new)) for r in rewrites]
        else:
            outcomes = []

        applied_ids: list[int] = []
        conflict_ids: list[int] = []
        touched: set[str] = {e["src_uri"] for e in already}
        ids = journal.journal_ids(self.ledger, mid, column, [r.key_value for r in rewrites]) if rewrites else {}
        for r, ok in outcomes:
            if ok:
                applied_ids.append(ids[r.key_value])
                touched.add(r.src_uri)
                counts.rewritten += 1
                log.info("cutover %s %s=%s: %s -> %s", column.label, column.spec.key, r.key_value,
                         redact_url(r.old), redact_url(r.new))
            else:
                conflict_ids.append(ids[r.key_value])
                counts.conflicts += 1
                log.warning(
                    "conflict %s %s=%s: the application changed the cell since it was read; not overwritten "
                    "(expected %s)", column.label, column.spec.key, r.key_value, redact_url(r.old),
                )
        reconciled = [e["id"] for e in already if e["state"] != APPLIED]
        with self.ledger.engine.begin() as lconn:
            journal.set_journal_state(lconn, applied_ids + reconciled, APPLIED)
            journal.set_journal_state(lconn, conflict_ids, CONFLICTED)
            marked = journal.mark_cut_over(lconn, mid, touched)
            self.ledger.audit(
                mid, "cutover.batch",
                dict(counts.as_dict(), table=column.spec.table, column=column.spec.column, batch=batch_no,
                     reconciled_pending=len(reconciled), objects_cut_over=marked),
                conn=lconn,
            )
        if reconciled:
            log.info("%s batch %d: %d pending journal row(s) of an earlier run found applied", column.label,
                     batch_no, len(reconciled))
        _log_batch(column, batch_no, counts, self.dry_run)
        return counts

    @staticmethod
    def _residual(counts: _Counts, column: appdb.AppColumn, key: Any, value: str, reason: str) -> None:
        counts.residual += 1
        counts.reasons[reason] += 1
        log.debug("residual %s %s=%s: %s (%s)", column.label, column.spec.key, key, redact_url(value), reason)


def _log_batch(column: appdb.AppColumn, batch_no: int, counts: _Counts, dry_run: bool) -> None:
    log.info(
        "%scutover batch %d %s: %d reference(s), %d %s, %d already rewritten, %d residual %s, %d conflict(s), "
        "%d ignored", "DRY RUN: " if dry_run else "", batch_no, column.label, counts.scanned, counts.rewritten,
        "would be rewritten" if dry_run else "rewritten", counts.already_rewritten, counts.residual,
        dict(counts.reasons), counts.conflicts, counts.ignored,
    )
