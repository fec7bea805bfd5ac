"""The tamper-evident audit log export and the evidence report auditors read.

Three files come out of a migration, written side by side by :func:`write_evidence`:

- ``audit.jsonl``: the ledger's hash-chained audit log, one record per line.
  Each line holds ``migration_id``, ``seq``, ``at``, ``event``, ``data`` (the
  event's details as a JSON object, for reading), ``data_json`` (the exact string
  the ledger stored and hashed), ``prev_hash`` and ``hash``. The hash of a record
  is :func:`residency.ledger.record_hash` over the record with ``data`` set to
  ``data_json``; the export keeps that string verbatim rather than re-serialising
  ``data``, because a JSON round trip is not guaranteed to give back the same
  bytes (key order of non-string keys, ``default=str`` values). The verifier
  checks that ``data`` and ``data_json`` say the same thing, so neither can be
  edited alone.
- ``objects.jsonl``: one line per object of the migration, every state, with its
  source and destination checksums: the per-object proof.
- ``evidence.json`` (validated against ``schemas/evidence.schema.json``, which
  ships with this module) and ``evidence.html``, the same facts as one
  self-contained page.

A chain proves order and integrity only relative to a trusted head: anyone who
rewrites the whole file can recompute every hash. The head and record count are
therefore stated in ``evidence.json`` (and remain in the ledger database), and
:func:`verify_audit_log` takes the expected head to detect a truncated tail.

Every count in the evidence is read from the ledger, never from task return
values; phase results (cutover, residual scan) are the summaries the phases
recorded in the ledger with :meth:`Ledger.record_phase`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import html
import json
import logging
import os
import platform
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import sqlalchemy as sa

from . import __version__
from .errors import ResidencyError
from .ledger import (
    CUT_OVER, FAILED, GENESIS, VERIFIED, Ledger, journal, now, record_hash,
)
from .policy import Policy

log = logging.getLogger(__name__)

EVIDENCE_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "evidence.schema.json"
AUDIT_FILE = "audit.jsonl"
OBJECTS_FILE = "objects.jsonl"
EVIDENCE_JSON = "evidence.json"
EVIDENCE_HTML = "evidence.html"
FAILURES_CAP = 200
"""At most this many failed objects are listed per source bucket; objects.jsonl has all."""
SAMPLE_SIZE = 50
PHASES = ("preflight", "inventory", "copy", "verify", "cutover", "residual", "revoke")

_AUDIT_KEYS = ("migration_id", "seq", "at", "event", "data", "data_json", "prev_hash", "hash")

# Count categories of a source bucket, route and the reconciliation, in display order,
# with the words an auditor reads in the HTML page.
COUNT_LABELS: dict[str, str] = {
    "inventoried": "Listed in the bucket (all objects)",
    "in_scope": "In scope (media selected by the policy)",
    "in_ledger": "Tracked object by object in the ledger",
    "copied": "Copied by this migration",
    "already_present": "Already at the destination with the same content (not copied again)",
    "verified": "Verified by checksum (including those cut over)",
    "cut_over": "Application references cut over",
    "failed": "Failed (not migrated)",
    "failed_before_copy": "Failed before any copy existed",
    "failed_after_copy": "Failed after copying (for example checksum mismatch)",
    "pending": "Pending (neither verified nor failed)",
}
METHOD_LABELS = {
    "server_reported": "checksum reported by both storage servers",
    "read_back": "destination read back and hashed",
}

RULES: tuple[str, ...] = (
    "Listed objects are every object the inventory saw in a source bucket; in-scope objects are the "
    "media files among them that the policy selects for migration.",
    "Copied objects were written to the destination by this migration; already-present objects were "
    "found at the destination with the same content and were not written again.",
    "An object counts as verified only when a checksum that both the source and the destination have "
    "(or that was computed from the source bytes and from the destination read back) is equal. "
    "Equal sizes or multipart ETags are never accepted as proof.",
    "Verified objects include those whose application references were cut over.",
    "Rule 1: objects in scope according to the inventory = objects tracked in the ledger.",
    "Rule 2: objects in scope = verified + failed. Nothing may remain pending.",
    "Rule 3: copied + already present = verified + failed after copying. Every object that reached "
    "the destination was either verified or recorded as failed.",
    "When nothing failed, the rules reduce to: in scope = copied + already present = verified.",
    "The rules hold for object counts and for byte totals alike, for each source bucket and in total.",
    "Application references are rewritten only for verified objects; a reference left pointing at a "
    "source object that was not verified (reason not_verified) makes the migration incomplete.",
    "A foreign credential counts as revoked only when an access attempt made with it after the "
    "revocation was denied by the server.",
    "The audit log is a hash chain: each record's hash covers its content and the previous record's "
    "hash, so any edit, deletion, insertion or reordering changes every later hash. The record count "
    "and the hash of the last record (the chain head) are stated in this report.",
    "The migration is complete only when no object failed or is pending, every in-scope object is "
    "verified, the rules balance, no reference to an unverified object remains, every revocation was "
    "proven by a denied access, destinations lie in the home jurisdiction, and the report does not "
    "come from a dry run.",
)


class AuditChainBroken(ResidencyError):
    """The audit log does not verify: a record was edited, removed, inserted or moved.

    Attributes:
        seq: the sequence number at which the chain stops verifying (for a missing
            record, the first missing sequence number).
        reason: what was found there.
    """

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"audit chain broken at seq {seq}: {reason}")


@dataclass(frozen=True)
class ChainHead:
    """How many records a chain holds and the hash of the last one (``GENESIS`` when empty)."""

    records: int
    head: str


@dataclass(frozen=True)
class ObjectsExport:
    """The per-object file: its name inside the evidence folder, line count and SHA-256."""

    file: str
    records: int
    sha256: str


@dataclass(frozen=True)
class EvidenceFiles:
    """What :func:`write_evidence` wrote."""

    out_dir: Path
    audit_log: Path
    objects: Path
    evidence_json: Path
    evidence_html: Path
    evidence: dict[str, Any] = field(repr=False)
    complete: bool = False


# -- the audit chain ----------------------------------------------------------------

class _ChainChecker:
    """Checks records one by one, in file or database order."""

    def __init__(self) -> None:
        self.records = 0
        self.head = GENESIS
        self.migration_id: str | None = None

    def check(self, record: Mapping[str, Any]) -> None:
        expected = self.records + 1
        seq = record["seq"]
        if seq != expected:
            if isinstance(seq, int) and not isinstance(seq, bool) and seq > expected:
                reason = (f"found seq {seq} where seq {expected} was expected: "
                          f"record {expected} is missing or records were reordered")
            else:
                reason = (f"found seq {seq!r} where seq {expected} was expected: "
                          "a record was inserted, duplicated or moved")
            raise AuditChainBroken(expected, reason)
        if self.migration_id is None:
            self.migration_id = record["migration_id"]
        elif record["migration_id"] != self.migration_id:
            raise AuditChainBroken(seq, f"record belongs to migration {record['migration_id']!r}, "
                                        f"the log to {self.migration_id!r}")
        if record["prev_hash"] != self.head:
            raise AuditChainBroken(seq, "prev_hash is not the hash of the previous record: "
                                        "a record before it was removed, inserted or edited")
        if record_hash(record) != record["hash"]:
            raise AuditChainBroken(seq, "the hash does not match the record's content: the record was edited")
        self.records = seq
        self.head = record["hash"]

    @property
    def chain_head(self) -> ChainHead:
        return ChainHead(self.records, self.head)


def export_audit_log(ledger: Ledger, migration_id: str, path: Path) -> ChainHead:
    """Write the migration's audit chain as JSON Lines, verifying it on the way.

    Records are streamed from the database; the file is replaced atomically.

    Raises:
        AuditChainBroken: the chain in the database itself does not verify
            (nothing is written then: evidence must not vouch for a broken chain).
    """
    checker = _ChainChecker()
    with _atomic_write(Path(path)) as out:
        for row in ledger.audit_records(migration_id):
            checker.check(row)
            line = {
                "migration_id": row["migration_id"],
                "seq": row["seq"],
                "at": row["at"],
                "event": row["event"],
                "data": json.loads(row["data"]),
                "data_json": row["data"],
                "prev_hash": row["prev_hash"],
                "hash": row["hash"],
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    head = checker.chain_head
    log.info("exported audit log of %s to %s: %s records, head %s", migration_id, path, head.records, head.head)
    return head


def verify_audit_log(path: Path, expect: ChainHead | None = None) -> ChainHead:
    """Recompute every hash of an exported audit log; return its head.

    Args:
        path: an ``audit.jsonl`` written by :func:`export_audit_log`.
        expect: the head stated in the evidence (or read from the ledger). Without
            it, records removed from the *end* of the file cannot be detected.

    Raises:
        AuditChainBroken: on any edited, removed, inserted or reordered record, a
            line that is not a complete record, or a head other than ``expect``.
    """
    checker = _ChainChecker()
    with open(path, encoding="utf-8") as lines:
        for lineno, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            expected = checker.records + 1
            try:
                line = json.loads(text)
            except json.JSONDecodeError as exc:
                raise AuditChainBroken(expected, f"line {lineno} is not valid JSON ({exc.msg})") from exc
            if not isinstance(line, dict) or any(k not in line for k in _AUDIT_KEYS):
                missing = [k for k in _AUDIT_KEYS if not isinstance(line, dict) or k not in line]
                raise AuditChainBroken(expected, f"line {lineno} is not an audit record (missing {', '.join(missing)})")
            if not isinstance(line["data_json"], str):
                raise AuditChainBroken(expected, f"line {lineno}: data_json is not a string")
            # Same order as in the database: position first, then content.
            record = {k: line[k] for k in ("migration_id", "seq", "at", "event", "prev_hash", "hash")}
            record["data"] = line["data_json"]
            if line["seq"] == expected:
                try:
                    stored = json.loads(line["data_json"])
                except json.JSONDecodeError as exc:
                    raise AuditChainBroken(expected, "data_json is not valid JSON") from exc
                if stored != line["data"]:
                    raise AuditChainBroken(expected, "data does not match data_json (the stored, hashed form): "
                                                     "the record was edited")
            checker.check(record)
    head = checker.chain_head
    if expect is not None and (head.records, head.head) != (expect.records, expect.head):
        seq = min(head.records, expect.records) + 1
        raise AuditChainBroken(
            seq, f"the log ends at seq {head.records} with head {head.head}, but {expect.records} records "
                 f"with head {expect.head} were expected: records were removed from or added to the end",
        )
    return head


# -- the per-object file --------------------------------------------------------------

def export_objects(ledger: Ledger, migration_id: str, path: Path) -> ObjectsExport:
    """Write every object of the migration, any state, as JSON Lines (bounded memory)."""
    digest = hashlib.sha256()
    records = 0
    with _atomic_write(Path(path)) as out:
        for obj in ledger.iter_objects(migration_id):
            line = json.dumps({
                "src_uri": obj["src_uri"],
                "dst_uri": obj["dst_uri"],
                "route": obj["route"],
                "state": obj["state"],
                "size": obj["size"],
                "src_version": obj.get("src_version"),
                "copy_action": obj.get("copy_action"),
                "copy_method": obj.get("copy_method"),
                "verify_algorithm": obj.get("verify_algorithm"),
                "verify_method": obj.get("verify_method"),
                "src_checksums": obj.get("src_checksums") or {},
                "dst_checksums": obj.get("dst_checksums") or {},
                "reason": obj.get("reason"),
                "updated_at": obj.get("updated_at"),
            }, ensure_ascii=False, sort_keys=True) + "\n"
            out.write(line)
            digest.update(line.encode("utf-8"))
            records += 1
    return ObjectsExport(Path(path).name, records, digest.hexdigest())


# -- the evidence -------------------------------------------------------------------

class _Tally:
    """Objects and bytes per count category."""

    def __init__(self) -> None:
        self.values: dict[str, list[int]] = {k: [0, 0] for k in COUNT_LABELS}

    def add(self, category: str, objects: int, size: int) -> None:
        self.values[category][0] += objects
        self.values[category][1] += size

    def add_row(self, state: str | None, copy_action: str | None, objects: int, size: int) -> None:
        self.add("in_ledger", objects, size)
        if copy_action in ("copied", "already_present"):
            self.add(copy_action, objects, size)
        if state in (VERIFIED, CUT_OVER):
            self.add("verified", objects, size)
            if state == CUT_OVER:
                self.add("cut_over", objects, size)
        elif state == FAILED:
            self.add("failed", objects, size)
            self.add("failed_after_copy" if copy_action in ("copied", "already_present") else "failed_before_copy",
                     objects, size)
        else:  # discovered, copied, or anything a later version adds
            self.add("pending", objects, size)

    def get(self, category: str) -> dict[str, int]:
        objects, size = self.values[category]
        return {"objects": objects, "bytes": size}

    def as_dict(self, categories: Iterable[str] = COUNT_LABELS) -> dict[str, dict[str, int]]:
        return {k: self.get(k) for k in categories}


def _plus(*counts: Mapping[str, int]) -> dict[str, int]:
    return {"objects": sum(c["objects"] for c in counts), "bytes": sum(c["bytes"] for c in counts)}


def _checks(c: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    """The reconciliation rules, evaluated on one set of counts."""
    out = []
    for check_id, statement, left, right in (
        ("inventory_matches_ledger", "in scope by the inventory = tracked in the ledger",
         c["in_scope"], c["in_ledger"]),
        ("in_scope_settled", "in scope = verified + failed",
         c["in_scope"], _plus(c["verified"], c["failed"])),
        ("copies_accounted", "copied + already present = verified + failed after copying",
         _plus(c["copied"], c["already_present"]), _plus(c["verified"], c["failed_after_copy"])),
    ):
        out.append({"id": check_id, "statement": statement, "left": dict(left), "right": right,
                    "holds": dict(left) == right})
    return out


def build_evidence(
    policy: Policy,
    ledger: Ledger,
    *,
    run: Mapping[str, Any],
    software: Mapping[str, Any],
    audit_head: ChainHead,
    objects_export: ObjectsExport | None = None,
    approvals: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Assemble the evidence document from the ledger.

    Args:
        policy: the policy the run obeyed (its path and SHA-256 are stated).
        ledger: the migration's ledger; every count is read from it.
        run: facts of the run (``dag_id``, ``run_id``, ``logical_date``, ``dry_run``...).
        software: versions (``residency``, ``airflow``, ``boto3``...); ``residency``
            and ``python`` are filled in when missing.
        audit_head: what :func:`export_audit_log` returned.
        objects_export: what :func:`export_objects` returned; without it the
            evidence is incomplete (no per-object proof).
        approvals: recorded approvals, each ``{who, when, step, decision}``.

    Returns:
        A JSON-ready dict matching ``schemas/evidence.schema.json``; ``complete``
        is true only when ``problems`` is empty.
    """
    mid = policy.migration_id
    problems: list[str] = []

    bucket_rows = ledger.get_buckets(mid)
    source_rows = {b["bucket_uri"]: b for b in bucket_rows if b["role"] == "source"}
    destination_rows = [b for b in bucket_rows if b["role"] == "destination"]

    per_source: dict[str, _Tally] = {}
    media: dict[str, Counter[str]] = {}
    media_bytes: dict[str, Counter[str]] = {}
    per_route: dict[str, _Tally] = {}
    route_algorithms: dict[str, Counter[str]] = {}
    route_methods: dict[str, Counter[str]] = {}
    for row in ledger.object_counts(mid):
        n, size = int(row["objects"]), int(row["bytes"] or 0)
        src = row["src_bucket_uri"]
        per_source.setdefault(src, _Tally()).add_row(row["state"], row["copy_action"], n, size)
        media.setdefault(src, Counter())[row["media_type"] or "unknown"] += n
        media_bytes.setdefault(src, Counter())[row["media_type"] or "unknown"] += size
        route = row["route"]
        per_route.setdefault(route, _Tally()).add_row(row["state"], row["copy_action"], n, size)
        route_algorithms.setdefault(route, Counter())
        route_methods.setdefault(route, Counter())
        if row["state"] in (VERIFIED, CUT_OVER):
            route_algorithms[route][row["verify_algorithm"] or "none"] += n
            route_methods[route][row["verify_method"] or "none"] += n

    failures, truncated = _failures(ledger, mid)

    # -- sources
    sources = []
    total = _Tally()
    for uri in sorted(set(source_rows) | set(per_source)):
        b = source_rows.get(uri)
        tally = per_source.get(uri, _Tally())
        if b is not None:
            tally.add("inventoried", int(b["objects_listed"] or 0), int(b["bytes_listed"] or 0))
            tally.add("in_scope", int(b["objects_in_scope"] or 0), int(b["bytes_in_scope"] or 0))
        else:
            problems.append(f"{uri}: objects from this bucket are in the ledger, but the bucket has no "
                            "inventory record as a source.")
        for k, (o, s) in tally.values.items():
            total.add(k, o, s)
        counts = tally.as_dict()
        checks = _checks(counts)
        sources.append({
            "uri": uri,
            "provider": b["provider"] if b else uri.split("://", 1)[0],
            "region": b["location"] if b else None,
            "jurisdiction": b["jurisdiction"] if b else None,
            "placement_source": b["placement_source"] if b else None,
            "counts": counts,
            "media_types": {m: {"objects": media[uri][m], "bytes": media_bytes[uri][m]}
                            for m in sorted(media.get(uri, {}))},
            "checks": checks,
            "balanced": all(c["holds"] for c in checks),
            "failures": failures.get(uri, []),
            "failures_truncated": truncated.get(uri, 0),
        })
        problems.extend(_source_problems(uri, counts, checks))
    if not sources:
        problems.append("No source bucket is recorded in the ledger: nothing was inventoried.")
    for src in policy.sources:
        if src.bucket_uri not in source_rows:
            problems.append(f"{src.bucket_uri}: this source bucket is named in the policy but has no "
                            "inventory record in the ledger.")

    # -- destinations
    destinations = []
    for b in destination_rows:
        in_home = b["jurisdiction"] is not None and b["jurisdiction"] == policy.home_jurisdiction
        destinations.append({
            "uri": b["bucket_uri"],
            "provider": b["provider"],
            "region": b["location"],
            "jurisdiction": b["jurisdiction"],
            "placement_source": b["placement_source"],
            "in_home_jurisdiction": in_home,
        })
        if not in_home:
            where = b["jurisdiction"] or "an unknown or multi-country location"
            problems.append(f"Destination {b['bucket_uri']} is in {where} ({b['location']}), outside the home "
                            f"jurisdiction {policy.home_jurisdiction}.")
    recorded_destinations = {b["bucket_uri"] for b in destination_rows}
    for dst in policy.destinations.values():
        if dst.ref.bucket_uri not in recorded_destinations:
            problems.append(f"Destination {dst.ref.bucket_uri} is named in the policy but its location was "
                            "never recorded, so its jurisdiction is not proven.")

    # -- routes
    routes = []
    algorithms: set[str] = set()
    for route in sorted(per_route):
        tally = per_route[route]
        algos = dict(sorted(route_algorithms[route].items()))
        algorithms.update(a for a in algos if a != "none")
        routes.append({
            "route": route,
            "counts": tally.as_dict(k for k in COUNT_LABELS if k not in ("inventoried", "in_scope")),
            "algorithms": algos,
            "methods": dict(sorted(route_methods[route].items())),
        })

    # -- reconciliation
    totals = total.as_dict()
    total_checks = _checks(totals)
    balanced = all(c["holds"] for c in total_checks) and all(s["balanced"] for s in sources)
    reconciliation = {**totals, "checks": total_checks, "balanced": balanced}

    # -- references
    references = _references(policy, ledger, mid, problems)

    # -- revocations
    records = []
    for r in ledger.get_revocations(mid):
        proof = dict(r["proof"]) if isinstance(r["proof"], Mapping) else {"value": r["proof"]}
        denied = proof.get("denied")
        proof["denied"] = denied if isinstance(denied, bool) else None
        proof.setdefault("before", None)
        proof.setdefault("after", None)
        records.append({
            "principal": r["principal"], "credential_id": r["credential_id"], "action": r["action"],
            "at": r["at"], "proof": proof,
        })
        if proof["denied"] is None:
            problems.append(f"Credential {r['credential_id']} of {r['principal']} ({r['action']}) has no denial "
                            "proof: no access attempt was recorded after the revocation.")
        elif not proof["denied"]:
            problems.append(f"Credential {r['credential_id']} of {r['principal']} ({r['action']}) was not "
                            "denied: an access attempt after the revocation succeeded.")
    if policy.revocations and not records:
        names = ", ".join(p.user for p in policy.revocations)
        problems.append(f"The policy names foreign principals to revoke ({names}), but no revocation is recorded.")
    revocations = {"all_denied": all(r["proof"]["denied"] is True for r in records), "records": records}

    # -- files, run
    if audit_head.records == 0:
        problems.append("The audit log is empty: no action of this migration was recorded.")
    objects_file = None
    if objects_export is None:
        problems.append("The per-object file with every object's checksums was not written.")
    else:
        objects_file = {"file": objects_export.file, "records": objects_export.records,
                        "sha256": objects_export.sha256}
        if objects_export.records != totals["in_ledger"]["objects"]:
            problems.append(f"The per-object file holds {objects_export.records} objects but the ledger counts "
                            f"{totals['in_ledger']['objects']}: the ledger changed while the report was written.")
    if run.get("dry_run"):
        problems.append("This report comes from a dry run, which changes nothing; it cannot prove a migration.")
    if not balanced and all(s["balanced"] for s in sources):
        # Cannot happen while totals are sums of the buckets; kept so a verdict always has a reason.
        problems.append("The reconciliation of the totals does not balance.")

    soft = {"residency": __version__, "python": platform.python_version(), **dict(software)}

    return {
        "evidence_version": EVIDENCE_VERSION,
        "migration_id": mid,
        "generated_at": now(),
        "complete": not problems,
        "problems": problems,
        "policy": {"path": policy.path, "sha256": policy.sha256, "home_jurisdiction": policy.home_jurisdiction},
        "run": _jsonable(dict(run)),
        "software": _jsonable(soft),
        "phases": _phases(ledger, mid),
        "sources": sources,
        "destinations": destinations,
        "routes": routes,
        "checksum_algorithms": sorted(algorithms),
        "reconciliation": reconciliation,
        "references": references,
        "revocations": revocations,
        "approvals": [_jsonable(dict(a)) for a in approvals],
        "audit_log": {"file": AUDIT_FILE, "records": audit_head.records, "head": audit_head.head},
        "objects_file": objects_file,
        "objects_sample": _sample(ledger, mid),
        "rules": list(RULES),
    }


def _source_problems(uri: str, c: Mapping[str, Mapping[str, int]], checks: list[dict[str, Any]]) -> list[str]:
    out = []
    in_scope = c["in_scope"]["objects"]
    if c["failed"]["objects"]:
        out.append(f"{uri}: {c['failed']['objects']:,} of {in_scope:,} in-scope objects failed, "
                   f"{_human_bytes(c['failed']['bytes'])} in total, and were not migrated; each is listed with "
                   "its reason under this bucket.")
    if c["pending"]["objects"]:
        out.append(f"{uri}: {c['pending']['objects']:,} of {in_scope:,} in-scope objects are neither verified nor "
                   "failed: the copy or verify phase did not finish for them.")
    by_id = {ch["id"]: ch for ch in checks}
    inv = by_id["inventory_matches_ledger"]
    if not inv["holds"]:
        out.append(f"{uri}: the inventory counted {inv['left']['objects']:,} objects ({inv['left']['bytes']:,} bytes) "
                   f"in scope but the ledger tracks {inv['right']['objects']:,} ({inv['right']['bytes']:,} bytes).")
    cop = by_id["copies_accounted"]
    if not cop["holds"]:
        out.append(f"{uri}: copied plus already present ({cop['left']['objects']:,} objects, {cop['left']['bytes']:,} "
                   f"bytes) does not equal verified plus failed after copying ({cop['right']['objects']:,} objects, "
                   f"{cop['right']['bytes']:,} bytes).")
    return out


def _failures(ledger: Ledger, mid: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    listed: dict[str, list[dict[str, Any]]] = {}
    truncated: dict[str, int] = {}
    for obj in ledger.iter_objects(mid, states=[FAILED]):
        bucket = obj["src_bucket_uri"]
        items = listed.setdefault(bucket, [])
        if len(items) < FAILURES_CAP:
            items.append({"src_uri": obj["src_uri"], "reason": obj.get("reason") or "no reason recorded"})
        else:
            truncated[bucket] = truncated.get(bucket, 0) + 1
    return listed, truncated


def _sample(ledger: Ledger, mid: str) -> list[dict[str, Any]]:
    out = []
    for obj in ledger.iter_objects(mid, states=[VERIFIED, CUT_OVER], batch=SAMPLE_SIZE):
        algorithm = obj.get("verify_algorithm")
        out.append({
            "src_uri": obj["src_uri"],
            "dst_uri": obj["dst_uri"],
            "size": obj["size"],
            "algorithm": algorithm,
            "src_checksum": (obj.get("src_checksums") or {}).get(algorithm) if algorithm else None,
            "dst_checksum": (obj.get("dst_checksums") or {}).get(algorithm) if algorithm else None,
            "method": obj.get("verify_method"),
        })
        if len(out) >= SAMPLE_SIZE:
            break
    return out


def _phases(ledger: Ledger, mid: str) -> list[dict[str, Any]]:
    out = []
    for phase in PHASES:
        row = ledger.latest_phase(mid, phase)
        if row:
            out.append({"phase": phase, "at": row["at"], "run_id": row["run_id"]})
    return out


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _references(policy: Policy, ledger: Ledger, mid: str, problems: list[str]) -> dict[str, Any]:
    cutover_row = ledger.latest_phase(mid, "cutover")
    residual_row = ledger.latest_phase(mid, "residual")
    cutover = None
    if cutover_row:
        res = cutover_row["result"]
        cutover = {
            "at": cutover_row["at"], "run_id": cutover_row["run_id"],
            **{k: _int_or_none(res.get(k)) for k in ("scanned", "rewritten", "already_rewritten", "residual")},
            "residual_by_reason": _jsonable(dict(res.get("residual_by_reason") or {})),
            "per_column": _jsonable(res.get("per_column")),
        }
    residual = None
    if residual_row:
        res = residual_row["result"]
        residual = {
            "at": residual_row["at"], "run_id": residual_row["run_id"],
            "cells_scanned": _int_or_none(res.get("cells_scanned")),
            "residual": _int_or_none(res.get("residual")),
            "by_reason": _jsonable(dict(res.get("by_reason") or {})),
            "examples": _jsonable(res.get("examples") or []),
        }
    with ledger.engine.connect() as conn:
        journal_counts = {
            state: int(n)
            for state, n in conn.execute(
                sa.select(journal.c.state, sa.func.count())
                .where(journal.c.migration_id == mid)
                .group_by(journal.c.state)
                .order_by(journal.c.state)
            )
        }
    # The residual scan runs after the cutover and is the authoritative answer.
    by_reason = residual["by_reason"] if residual else (cutover["residual_by_reason"] if cutover else {})
    not_verified = _int_or_none(by_reason.get("not_verified")) or 0
    configured = policy.references is not None
    if configured and cutover is None:
        problems.append("The policy names application database columns, but no reference cutover is recorded.")
    if configured and residual is None:
        problems.append("The policy names application database columns, but no residual reference scan is "
                        "recorded, so references left pointing at the source buckets are unknown.")
    if not_verified:
        problems.append(f"{not_verified:,} application references still point at source objects that were not "
                        "verified (reason not_verified), so they could not be rewritten.")
    return {
        "configured": configured,
        "cutover": cutover,
        "residual_scan": residual,
        "journal": journal_counts,
        "residual_not_verified": not_verified,
    }


def _jsonable(value: Any) -> Any:
    """A copy of ``value`` made of JSON types only (dates and the like become strings)."""
    return json.loads(json.dumps(value, default=str))


# -- schema -------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The evidence JSON Schema (draft 2020-12) that ships with this module."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_evidence(evidence: Mapping[str, Any]) -> None:
    """Check an evidence document against the shipped schema.

    Raises:
        ValueError: naming the JSON path of the most relevant error and what is wrong.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator(load_schema())
    error = best_match(validator.iter_errors(evidence))
    if error is not None:
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise ValueError(f"evidence does not match its schema at {path}: {error.message}")


# -- HTML ---------------------------------------------------------------------------

def _e(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return html.escape(str(value), quote=True)


def _human_bytes(n: int) -> str:
    """``1.2 MiB (1,258,291 bytes)``: readable and exact."""
    if n < 1024:
        return f"{n:,} bytes"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        size /= 1024
        if size < 1024 or unit == "EiB":
            return f"{size:,.1f} {unit} ({n:,} bytes)"
    raise AssertionError("unreachable")


def _count_cells(c: Mapping[str, int]) -> str:
    return f"<td class=num>{c['objects']:,}</td><td class=num>{_e(_human_bytes(c['bytes']))}</td>"


def _table(headers: Sequence[str], rows: Iterable[str], empty: str = "None recorded.") -> str:
    body = "".join(rows)
    if not body:
        return f"<p class=muted>{_e(empty)}</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f"<table class=kv><tbody>{rows}</tbody></table>"


def _pre(value: Any) -> str:
    return f"<pre>{_e(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))}</pre>"


def _counter(values: Mapping[str, int], labels: Mapping[str, str] | None = None) -> str:
    labels = labels or {}
    return "<br>".join(f"{_e(labels.get(k, k))}: {int(v):,}" for k, v in values.items()) or "—"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:72rem;
padding:0 1rem;color:#1b1f24;line-height:1.45}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;width:100%}th,td{border:1px solid #d0d7de;padding:.3rem .5rem;
text-align:left;vertical-align:top}thead th{background:#f6f8fa}td.num{text-align:right;white-space:nowrap}
table.kv th{width:16rem;background:#f6f8fa}.verdict{padding:1rem 1.2rem;border-radius:6px;margin:1rem 0}
.ok{background:#dafbe1;border:2px solid #1a7f37}.bad{background:#ffebe9;border:2px solid #cf222e}
.verdict strong{font-size:1.4rem}code,pre{font-family:ui-monospace,Consolas,monospace;font-size:.85rem}
pre{white-space:pre-wrap;word-break:break-all;margin:0}.muted{color:#57606a}td.yes{color:#1a7f37}
td.no{color:#cf222e;font-weight:bold}
"""


def render_html(evidence: Mapping[str, Any]) -> str:
    """One self-contained page (no scripts, no external assets); every value escaped."""
    ev = evidence
    parts: list[str] = []
    add = parts.append
    complete = ev["complete"]
    add(f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>Migration evidence: {_e(ev['migration_id'])}</title><style>{_CSS}</style></head><body>")
    add(f"<h1>Data residency migration evidence: {_e(ev['migration_id'])}</h1>")
    add(f"<p class=muted>Generated at {_e(ev['generated_at'])}. Every number below is read from the "
        "migration ledger.</p>")

    # Verdict
    if complete:
        add("<div class='verdict ok'><strong>COMPLETE</strong><p>Every in-scope object was copied and verified, "
            "nothing failed, no application reference points at an unverified object, and every revoked "
            "credential was proven denied.</p></div>")
    else:
        items = "".join(f"<li>{_e(p)}</li>" for p in ev["problems"])
        add(f"<div class='verdict bad'><strong>INCOMPLETE</strong><p>The migration is not complete for these "
            f"reasons:</p><ul>{items}</ul></div>")

    # Run facts
    add("<h2>What ran</h2>")
    pol = ev["policy"]
    add(_kv([("Policy file", pol["path"]), ("Policy SHA-256", pol["sha256"]),
             ("Home jurisdiction", pol["home_jurisdiction"])]
            + [(f"Run: {k}", v) for k, v in ev["run"].items()]
            + [(f"Software: {k}", v) for k, v in ev["software"].items()]))
    if ev.get("phases"):
        add(_table(["Phase", "Last recorded at", "Run"],
                   (f"<tr><td>{_e(p['phase'])}</td><td>{_e(p['at'])}</td><td>{_e(p['run_id'])}</td></tr>"
                    for p in ev["phases"])))

    # Reconciliation
    rec = ev["reconciliation"]
    add("<h2>Reconciliation (all source buckets)</h2>")
    add(f"<p>The counts {'balance' if rec['balanced'] else '<strong>do not balance</strong>'}.</p>")
    add(_table(["Count", "Objects", "Bytes"],
               (f"<tr><td>{_e(label)}</td>{_count_cells(rec[key])}</tr>" for key, label in COUNT_LABELS.items())))
    add(_checks_table(rec["checks"]))

    # Sources
    add("<h2>Source buckets</h2>")
    for s in ev["sources"]:
        add(f"<h3>{_e(s['uri'])}</h3>")
        add(_kv([("Provider", s["provider"]), ("Region or location", s["region"]),
                 ("Jurisdiction (country)", s["jurisdiction"]),
                 ("Location known from", _placement_words(s["placement_source"])),
                 ("Counts balance", s["balanced"])]))
        add(_table(["Count", "Objects", "Bytes"],
                   (f"<tr><td>{_e(label)}</td>{_count_cells(s['counts'][key])}</tr>"
                    for key, label in COUNT_LABELS.items())))
        if s["media_types"]:
            add(_table(["Media type", "Objects", "Bytes"],
                       (f"<tr><td>{_e(m)}</td>{_count_cells(c)}</tr>" for m, c in s["media_types"].items())))
        if not s["balanced"]:
            add(_checks_table(s["checks"]))
        if s["failures"]:
            add("<h4>Failed objects</h4>")
            add(_table(["Source object", "Reason"],
                       (f"<tr><td><code>{_e(f['src_uri'])}</code></td><td>{_e(f['reason'])}</td></tr>"
                        for f in s["failures"])))
            if s["failures_truncated"]:
                add(f"<p>… and {s['failures_truncated']:,} more failed objects, all listed in "
                    f"{_e((ev.get('objects_file') or {}).get('file', OBJECTS_FILE))}.</p>")

    # Destinations
    add("<h2>Destination buckets</h2>")
    add(_table(["Bucket", "Provider", "Region or location", "Jurisdiction (country)", "Location known from",
                f"In home jurisdiction ({pol['home_jurisdiction']})"],
               (f"<tr><td>{_e(d['uri'])}</td><td>{_e(d['provider'])}</td><td>{_e(d['region'])}</td>"
                f"<td>{_e(d['jurisdiction'])}</td><td>{_e(_placement_words(d['placement_source']))}</td>"
                f"<td class={'yes' if d['in_home_jurisdiction'] else 'no'}>{_e(d['in_home_jurisdiction'])}</td></tr>"
                for d in ev["destinations"])))

    # Routes
    add("<h2>Copy routes (source provider to destination provider)</h2>")
    add(_table(["Route", "Copied", "Already present", "Verified", "Failed", "Checksum used to verify (objects)",
                "How the destination checksum was obtained (objects)"],
               (f"<tr><td>{_e(r['route'])}</td>"
                + "".join(f"<td class=num>{r['counts'][k]['objects']:,}<br>"
                          f"{_e(_human_bytes(r['counts'][k]['bytes']))}</td>"
                          for k in ("copied", "already_present", "verified", "failed"))
                + f"<td>{_counter(r['algorithms'])}</td><td>{_counter(r['methods'], METHOD_LABELS)}</td></tr>"
                for r in ev["routes"])))
    algos = ", ".join(ev["checksum_algorithms"]) or "none"
    add(f"<p>Checksum algorithms used: {_e(algos)}.</p>")

    # References
    add(_references_html(ev["references"]))

    # Revocations
    rv = ev["revocations"]
    add("<h2>Foreign credentials revoked</h2>")
    verdict = rv["all_denied"] if rv["records"] else "no revocations recorded"
    add(f"<p>Every revoked credential proven denied: <strong>{_e(verdict)}</strong>.</p>")
    add(_table(["Principal", "Credential", "Action", "When", "Access attempt before", "Access attempt after",
                "Denied after revocation"],
               (f"<tr><td>{_e(r['principal'])}</td><td><code>{_e(r['credential_id'])}</code></td>"
                f"<td>{_e(r['action'])}</td><td>{_e(r['at'])}</td><td>{_pre(r['proof'].get('before'))}</td>"
                f"<td>{_pre(r['proof'].get('after'))}</td>"
                f"<td class={'yes' if r['proof']['denied'] else 'no'}>"
                f"{_e(r['proof']['denied'] if r['proof']['denied'] is not None else 'not tested')}</td></tr>"
                for r in rv["records"])))

    # Approvals
    add("<h2>Approvals</h2>")
    add(_table(["Who", "When", "Step", "Decision"],
               (f"<tr><td>{_e(a.get('who'))}</td><td>{_e(a.get('when'))}</td><td>{_e(a.get('step'))}</td>"
                f"<td>{_e(a.get('decision'))}</td></tr>" for a in ev["approvals"]),
               empty="No approvals recorded."))

    # Audit log
    al = ev["audit_log"]
    add("<h2>Audit log</h2>")
    add(_kv([("File", al["file"]), ("Records", f"{al['records']:,}"),
             ("Chain head (hash of the last record)", al["head"])]))
    add("<p>To check the log, recompute each record's SHA-256 over its canonical JSON (with <code>data</code> set "
        "to the stored <code>data_json</code> string and without <code>hash</code>), confirm it equals "
        "<code>hash</code>, that <code>prev_hash</code> equals the previous record's hash, and that the last hash "
        "equals the chain head above.</p>")

    # Rules
    add("<h2>How to read the counts</h2><ol>")
    add("".join(f"<li>{_e(rule)}</li>" for rule in ev["rules"]))
    add("</ol>")

    # Sample
    add("<h2>Sample of verified objects, for spot checks</h2>")
    of = ev.get("objects_file")
    if of:
        add(f"<p>All {of['records']:,} objects, in every state and with all their checksums, are in "
            f"<code>{_e(of['file'])}</code> (SHA-256 <code>{_e(of['sha256'])}</code>). The first "
            f"{len(ev['objects_sample'])} verified objects:</p>")
    add(_table(["Source object", "Destination object", "Size", "Checksum algorithm", "Source checksum",
                "Destination checksum", "How the destination checksum was obtained"],
               (f"<tr><td><code>{_e(o['src_uri'])}</code></td><td><code>{_e(o['dst_uri'])}</code></td>"
                f"<td class=num>{_e(_human_bytes(o['size']))}</td><td>{_e(o['algorithm'])}</td>"
                f"<td><code>{_e(o['src_checksum'])}</code></td><td><code>{_e(o['dst_checksum'])}</code></td>"
                f"<td>{_e(METHOD_LABELS.get(o['method'] or '', o['method']))}</td></tr>"
                for o in ev["objects_sample"]),
               empty="No verified objects."))
    add("</body></html>\n")
    return "".join(parts)


def _placement_words(source: str | None) -> str | None:
    return {"discovered": "asked the provider's API", "declared": "declared in the policy (not verifiable by API)"}.get(
        source or "", source)


def _checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    return _table(
        ["Rule", "Left side (objects / bytes)", "Right side (objects / bytes)", "Holds"],
        (f"<tr><td>{_e(c['statement'])}</td><td class=num>{c['left']['objects']:,} / {c['left']['bytes']:,}</td>"
         f"<td class=num>{c['right']['objects']:,} / {c['right']['bytes']:,}</td>"
         f"<td class={'yes' if c['holds'] else 'no'}>{_e(c['holds'])}</td></tr>" for c in checks),
    )


def _references_html(ref: Mapping[str, Any]) -> str:
    out = ["<h2>Application references</h2>"]
    if not ref["configured"]:
        out.append("<p>The policy names no application database columns.</p>")
    c = ref["cutover"]
    if c:
        out.append("<h3>Cutover</h3>")
        out.append(_kv([("Recorded at", c["at"]), ("Cells scanned", c["scanned"]),
                        ("Rewritten to the destination", c["rewritten"]),
                        ("Already rewritten by an earlier run", c["already_rewritten"]),
                        ("Left pointing at the source", c["residual"])]))
        if c["residual_by_reason"]:
            out.append(_table(["Reason left unchanged", "References"],
                              (f"<tr><td>{_e(k)}</td><td class=num>{_e(v)}</td></tr>"
                               for k, v in c["residual_by_reason"].items())))
        if c["per_column"]:
            out.append("<p>Per column:</p>" + _pre(c["per_column"]))
    elif ref["configured"]:
        out.append("<p><strong>No cutover recorded.</strong></p>")
    r = ref["residual_scan"]
    if r:
        out.append("<h3>Residual scan after cutover</h3>")
        out.append(_kv([("Recorded at", r["at"]), ("Cells scanned", r["cells_scanned"]),
                        ("References still pointing at a source bucket", r["residual"])]))
        if r["by_reason"]:
            out.append(_table(["Reason", "References"],
                              (f"<tr><td>{_e(k)}</td><td class=num>{_e(v)}</td></tr>"
                               for k, v in r["by_reason"].items())))
        if r["examples"]:
            out.append("<p>Examples:</p>" + _pre(r["examples"]))
    elif ref["configured"]:
        out.append("<p><strong>No residual scan recorded.</strong></p>")
    out.append(f"<p>References to objects that were not verified: <strong>{ref['residual_not_verified']:,}"
               "</strong>.</p>")
    if ref["journal"]:
        out.append(_table(["Rollback journal state", "Cells"],
                          (f"<tr><td>{_e(k)}</td><td class=num>{v:,}</td></tr>" for k, v in ref["journal"].items())))
    return "".join(out)


# -- writing ------------------------------------------------------------------------

@contextlib.contextmanager
def _atomic_write(path: Path) -> Iterator[Any]:
    """Write to a temporary file beside ``path`` and rename it into place on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            yield out
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; evidence is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_evidence(
    policy: Policy,
    ledger: Ledger,
    out_dir: Path,
    *,
    run: Mapping[str, Any],
    software: Mapping[str, Any],
    approvals: Sequence[Mapping[str, Any]] = (),
) -> EvidenceFiles:
    """Write ``audit.jsonl``, ``objects.jsonl``, ``evidence.json`` and ``evidence.html`` into ``out_dir``.

    The evidence is validated against the schema before ``evidence.json`` and
    ``evidence.html`` are written.

    Raises:
        AuditChainBroken: the ledger's audit chain does not verify.
        ValueError: the evidence does not match its schema (a bug, not a data problem).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mid = policy.migration_id
    audit_path = out_dir / AUDIT_FILE
    objects_path = out_dir / OBJECTS_FILE
    head = export_audit_log(ledger, mid, audit_path)
    objects_export = export_objects(ledger, mid, objects_path)
    evidence = build_evidence(policy, ledger, run=run, software=software, audit_head=head,
                              objects_export=objects_export, approvals=approvals)
    validate_evidence(evidence)
    json_path, html_path = out_dir / EVIDENCE_JSON, out_dir / EVIDENCE_HTML
    with _atomic_write(json_path) as out:
        out.write(json.dumps(evidence, indent=2, ensure_ascii=False) + "\n")
    with _atomic_write(html_path) as out:
        out.write(render_html(evidence))
    rec = evidence["reconciliation"]
    log.info(
        "evidence for %s written to %s: %s; in scope %s, verified %s, failed %s; audit records %s head %s",
        mid, out_dir, "COMPLETE" if evidence["complete"] else "INCOMPLETE", rec["in_scope"]["objects"],
        rec["verified"]["objects"], rec["failed"]["objects"], head.records, head.head,
    )
    for problem in evidence["problems"]:
        log.info("evidence problem: %s", problem)
    return EvidenceFiles(out_dir, audit_path, objects_path, json_path, html_path, evidence, evidence["complete"])
