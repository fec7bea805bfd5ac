"""The tamper-evident audit log: export the ledger's hash chain, and verify one.

``audit.jsonl`` holds one record per line: ``migration_id``, ``seq``, ``at``,
``event``, ``data`` (the event's details as a JSON object, for reading),
``data_json`` (the exact string the ledger stored and hashed), ``prev_hash`` and
``hash``. The hash of a record is :func:`residency.ledger.record_hash` over the
record with ``data`` set to ``data_json``; the export keeps that string verbatim
rather than re-serialising ``data``, because a JSON round trip is not guaranteed
to give back the same bytes. The verifier checks that ``data`` and ``data_json``
say the same thing, so neither can be edited alone.

A chain proves order and integrity only relative to a trusted head: anyone who
rewrites the whole file can recompute every hash. The head and record count are
therefore stated in ``evidence.json`` (and remain in the ledger database), and
:func:`verify_audit_log` takes the expected head to detect a truncated tail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import ResidencyError
from ..ledger import GENESIS, Ledger, record_hash

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"
_AUDIT_KEYS = ("migration_id", "seq", "at", "event", "data", "data_json", "prev_hash", "hash")


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
    with atomic_write(Path(path)) as out:
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


def export_verified(ledger: Ledger, migration_id: str, path: Path) -> dict[str, Any]:
    """Export the chain to ``path`` and verify the file as written against the ledger's head.

    Returns the evidence's ``audit_log`` entry: ``{file, records, head, verified, error}``;
    a broken chain is ``verified: False`` with the reason (logged), never an exception.
    """
    try:
        head = export_audit_log(ledger, migration_id, path)
        verify_audit_log(path, expect=head)
        return {"file": path.name, "records": head.records, "head": head.head, "verified": True, "error": None}
    except AuditChainBroken as exc:
        log.error("audit chain of %s: %s", migration_id, exc)
        return {"file": None, "records": None, "head": None, "verified": False, "error": str(exc)}


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


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Any]:
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
