"""Cut over the application's references: rewrite URLs of proven copies, journaled.

:func:`cutover` rewrites each URL whose object the ledger shows verified, and
re-proven by this run's recheck when ``attested_since`` is given, to the same
style pointing at the domestic copy: scheme, addressing, host family (dualstack
stays dualstack) and query string are kept, minus a ``versionId`` /
``generation`` that named the migrated source version. Everything else stays and
is counted as residual with a reason (see :mod:`.model`).

A URL is rewritten in place, wherever it is in the cell (:mod:`.cells`): a URL
cell, text with URLs in it, or a JSON document (strings at any depth, or at the
column's ``paths``). Everything around a URL stays byte-identical; in JSON the
new URL is escaped as the old one was. Cells are read in pages of
``references.batch_size`` and every query touches only the page's rows through
an index, so the cost is linear in the number of cells and memory is bounded.

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
from urllib.parse import quote, unquote

from sqlalchemy.engine import Engine

from ..ledger import CUT_OVER, VERIFIED, Ledger
from ..policy import HostMapping, Policy
from ..uris import CdnHost, ObjectRef, ParsedUrl, UrlStyle, drop_query_params, format_url, parse_uri, redact_url
from . import appdb, journal
from . import cells as cells_mod
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
#: Regions whose buckets answer virtual-hosted requests on the legacy global host
#: ``BUCKET.s3.amazonaws.com`` (launched before 20 March 2019, AWS S3 User Guide,
#: "Legacy global endpoint"); a path-style request there is redirected, so only the
#: virtual-hosted style keeps the global host, and only for these regions.
_GLOBAL_HOST_REGIONS = frozenset({
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "sa-east-1", "eu-west-1", "eu-west-2",
    "eu-west-3", "eu-central-1", "eu-north-1", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-south-1",
    "ap-southeast-1", "ap-southeast-2",
})
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
    """The URL of ``dst`` in the style of ``parsed``; ``None`` when a CDN has no domestic host.

    Kept from ``parsed``: the style and host family where the destination has it,
    the scheme as written, the query string (minus ``versionId`` / ``generation``,
    which named the source's version), the fragment, and the source key's own
    percent-encoding where the destination key ends with the source key.
    """
    query = drop_query_params(parsed.query, ("versionId", "generation"))
    if parsed.style is UrlStyle.CDN:
        mapping = mappings.get(parsed.host)
        if mapping is None or not mapping.to_host:
            return None
        cdn = CdnHost(mapping.to_host, dst.provider, dst.bucket, mapping.to_path_prefix)
        url = format_url(dst, UrlStyle.CDN, query=query, scheme=parsed.scheme or None, fragment=parsed.fragment, cdn=cdn)
        return _keep_encoding(url, parsed, dst)
    same = parsed.ref.provider == dst.provider
    table = _S3_ENDPOINT if dst.provider == "s3" else _GS_ENDPOINT
    endpoint = table.get(parsed.endpoint, "") if same else ""
    if same and parsed.endpoint == "global" and parsed.style is UrlStyle.S3_VIRTUAL and region in _GLOBAL_HOST_REGIONS:
        endpoint = "global"
    scheme = parsed.scheme if parsed.scheme and (same or parsed.scheme.lower() in ("http", "https")) else None
    try:
        url = format_url(dst, parsed.style, region, query, endpoint=endpoint, scheme=scheme, fragment=parsed.fragment)
    except ValueError:  # a host family the destination's style cannot have
        url = format_url(dst, parsed.style, region, query, scheme=scheme, fragment=parsed.fragment)
    return _keep_encoding(url, parsed, dst)


def _keep_encoding(url: str, parsed: ParsedUrl, dst: ObjectRef) -> str:
    """``url`` with the source key written as the old URL wrote it (``%7E`` or ``~``,
    raw UTF-8 or escapes), where that is the same key and ``url`` ends with it."""
    raw, key = parsed.raw_key, parsed.ref.key
    if not raw or not dst.key.endswith(key) or "://" not in url:
        return url
    cut = min((i for i in (url.find("?", url.index("://") + 3), url.find("#")) if i >= 0), default=len(url))
    head, tail = url[:cut], url[cut:]
    if parsed.style in (UrlStyle.S3_URI, UrlStyle.GS_URI):
        return url  # keys are verbatim in URIs
    if unquote(raw) != key:
        return url
    for safe in ("/~", "~", ""):
        written = quote(key, safe=safe)
        if written and head.endswith(written):
            return head[: -len(written)] + raw + tail
    return url


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
        log.info(
            "%s cutover of references in %s: %d column(s) %s, batch size %d%s",
            "DRY RUN:" if dry_run else "starting", appdb.safe_url(url), len(columns),
            ", ".join(f"{c.label} ({c.spec.kind})" for c in columns), refs.batch_size,
            " (nothing will be written)" if dry_run else "",
        )
        batch_no = journal.last_batch(ledger, migration_id)
        batches = 0
        total = _Counts()
        per_column: dict[str, dict[str, int]] = {}
        for column in columns:
            col_counts = _Counts()
            for rows in appdb.pages(app, column, refs.batch_size):
                batch_no += 1
                batches += 1
                col_counts.add(page.run(app, column, rows, batch_no))
            per_column[column.label] = col_counts.as_dict()
            total.add(col_counts)

        demoted = 0 if dry_run else journal.demote_conflicted(ledger, migration_id, page.conflicted)
        result = CutoverResult(
            scanned=total.scanned, rewritten=total.rewritten, already_rewritten=total.already_rewritten,
            residual=total.residual, residual_by_reason=dict(sorted(total.reasons.items())),
            per_column=per_column, batches=batches, dry_run=dry_run,
            conflicts=total.conflicts, ignored=total.ignored, repointed=total.repointed,
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


@dataclass(frozen=True)
class _Cell:
    """One cell with object URLs: ``base`` is what they are read from (the original
    when ``ours``, the journal row of a cell the migration rewrote, is set)."""

    key: Any
    value: str
    base: str
    spots: list[cells_mod.Spot]
    ours: Mapping[str, Any] | None
    entry: Mapping[str, Any] | None


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
    conflicted: set[str] = field(default_factory=set)  # objects of cells found in conflict in this run

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
        kind, paths = column.spec.kind, column.spec.paths
        journaled = journal.journal_rows(self.ledger, mid, column, [str(k) for k, _ in rows])
        # Each cell is read from its original (the journal's, when the migration already
        # rewrote it and it still holds what was written), so a re-run recomputes the
        # same text, or a repointed one after the plan changed.
        cells: list[_Cell] = []
        for key, raw in rows:
            value = cells_mod.as_text(raw)
            if value is None:
                counts.ignored += 1
                continue
            entry = journaled.get(str(key))
            ours = entry is not None and value == entry["new_url"] and entry["state"] in (APPLIED, PENDING, CONFLICTED)
            base = entry["old_url"] if ours else value
            spots = [s for s in cells_mod.locate(base, kind, self.hosts, paths) if s.parsed.ref.bucket_uri in self.sources]
            if not spots:
                counts.ignored += 1
                continue
            cells.append(_Cell(key, value, base, spots, entry if ours else None, entry))
        found = self.ledger.get_objects(mid, sorted({s.parsed.ref.uri for c in cells for s in c.spots}))
        written_before = journal.linked_objects(self.ledger, [c.ours["id"] for c in cells if c.ours])

        rewrites: list[journal.Rewrite] = []
        changed: dict[str, tuple[int, bool]] = {}  # key -> (URLs changed, a repoint of a cell already ours)
        touched: set[str] = set()
        reconciled: list[int] = []
        for cell in cells:
            changes: list[tuple[cells_mod.Spot, str]] = []
            reasons: list[tuple[cells_mod.Spot, str]] = []
            for spot in cell.spots:
                obj = found.get(spot.parsed.ref.uri)
                reason, target = self.decide(spot.parsed, obj)
                if target is None:
                    reasons.append((spot, reason))
                else:
                    changes.append((spot, target))
            new = cells_mod.rewrite(cell.base, changes)
            objs = tuple(dict.fromkeys(s.parsed.ref.uri for s, _ in changes))
            counts.scanned += len(cell.spots)
            if cell.ours is not None:
                before = written_before.get(cell.ours["id"], set())
                lost = [s for s, _ in reasons if s.parsed.ref.uri in before]
                if new == cell.value:
                    counts.already_rewritten += len(changes)
                    touched.update(objs)
                    if cell.ours["state"] != APPLIED:
                        reconciled.append(cell.ours["id"])
                    self._residuals(counts, column, cell.key, reasons)
                    continue
                if lost:
                    # A copy this cell points at is no longer proven: leave the cell alone,
                    # never move a reference back overseas on our own.
                    counts.already_rewritten += len(changes)
                    self._residuals(counts, column, cell.key, [(s, UNPROVEN_COPY) if s in lost else (s, r)
                                                                for s, r in reasons])
                    continue
            elif not changes:
                self._residuals(counts, column, cell.key, reasons)
                continue
            self._residuals(counts, column, cell.key, reasons)
            entry = cell.ours or cell.entry
            rewrites.append(journal.Rewrite(cell.key, str(cell.key), cell.value, new, objs,
                                            entry["id"] if entry else None, cell.base))
            changed[str(cell.key)] = (len(changes), cell.ours is not None)

        if self.dry_run:
            for r in rewrites:
                log.info("would rewrite %s %s=%s: %s -> %s", column.label, column.spec.key, r.key_value,
                         cells_mod.shown(r.old), cells_mod.shown(r.new))
                counts.rewritten += changed[r.key_value][0]
                counts.repointed += changed[r.key_value][0] if changed[r.key_value][1] else 0
            _log_batch(column, batch_no, counts, self.dry_run)
            return counts

        ids = journal.journal_pending(self.ledger, mid, column, rewrites, batch_no) if rewrites else {}
        if rewrites:
            with app.begin() as conn:
                outcomes = [(r, appdb.cas(conn, column, r.key, r.old, r.new)) for r in rewrites]
        else:
            outcomes = []

        applied_ids: list[int] = []
        conflict_ids: list[int] = []
        for r, ok in outcomes:
            n, repoint = changed[r.key_value]
            if ok:
                applied_ids.append(ids[r.key_value])
                touched.update(r.src_uris)
                counts.rewritten += n
                counts.repointed += n if repoint else 0
                log.info("cutover %s %s=%s: %s -> %s", column.label, column.spec.key, r.key_value,
                         cells_mod.shown(r.old), cells_mod.shown(r.new))
            else:
                conflict_ids.append(ids[r.key_value])
                self.conflicted.update(r.src_uris)
                counts.conflicts += n
                log.warning(
                    "conflict %s %s=%s: the application changed the cell since it was read; not overwritten "
                    "(expected %s)", column.label, column.spec.key, r.key_value, cells_mod.shown(r.old),
                )
        with self.ledger.engine.begin() as lconn:
            journal.set_journal_state(lconn, applied_ids + reconciled, APPLIED)
            journal.set_journal_state(lconn, conflict_ids, CONFLICTED)
            marked = journal.mark_cut_over(lconn, mid, touched)
            self.ledger.audit(
                mid, "cutover.batch",
                dict(counts.as_dict(), table=column.spec.table, column=column.spec.column, kind=kind, batch=batch_no,
                     reconciled_pending=len(reconciled), objects_cut_over=marked),
                conn=lconn,
            )
        if reconciled:
            log.info("%s batch %d: %d pending journal row(s) of an earlier run found applied", column.label,
                     batch_no, len(reconciled))
        _log_batch(column, batch_no, counts, self.dry_run)
        return counts

    def decide(self, parsed: ParsedUrl, obj: Mapping[str, Any] | None) -> tuple[str, str | None]:
        """``(reason, None)`` when this URL stays, ``("", new URL)`` when it is rewritten."""
        if parsed.presigned:
            return PRESIGNED, None
        if obj is not None and parsed.version and parsed.version != (obj.get("src_version") or ""):
            return OTHER_VERSION, None
        reason = self.proven(obj)
        if reason is not None:
            return reason, None
        target = self.target(parsed, obj)
        return (NO_DOMESTIC_HOST, None) if target is None else ("", target)

    def _residuals(self, counts: _Counts, column: appdb.AppColumn, key: Any,
                   reasons: Sequence[tuple[cells_mod.Spot, str]]) -> None:
        for spot, reason in reasons:
            self._residual(counts, column, key, spot.url, reason)

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
