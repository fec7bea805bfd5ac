"""The ledger: per-object state, the single source of truth of a migration.

Keyed by ``(migration_id, src_uri)``; states move
``discovered -> copied -> verified -> cut_over`` or to ``failed`` with a reason.
Every phase reads and writes here, so any phase can be re-run and resumes.
The same database holds the reference journal, bucket inventories, revocation
proofs and the hash-chained audit log, so one transaction can cover an action and
its record.

SQLAlchemy Core; a SQLite file by default, PostgreSQL in production
(``postgresql+psycopg2://...``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

DISCOVERED, COPIED, VERIFIED, CUT_OVER, FAILED = "discovered", "copied", "verified", "cut_over", "failed"
STATES = (DISCOVERED, COPIED, VERIFIED, CUT_OVER, FAILED)
GENESIS = "0" * 64

metadata = sa.MetaData()

objects = sa.Table(
    "residency_objects",
    metadata,
    sa.Column("migration_id", sa.String(128), primary_key=True),
    sa.Column("src_uri", sa.String(2048), primary_key=True),
    sa.Column("src_bucket_uri", sa.String(300), nullable=False, index=True),
    sa.Column("dst_uri", sa.String(2048), nullable=False),
    sa.Column("route", sa.String(16), nullable=False),
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("content_type", sa.String(255)),
    sa.Column("media_type", sa.String(16)),
    sa.Column("src_version", sa.String(255)),
    sa.Column("src_etag", sa.String(255)),
    sa.Column("src_checksums", sa.Text, nullable=False, default="{}"),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("copy_action", sa.String(32)),  # copied | already_present
    sa.Column("copy_method", sa.String(32)),  # server_side | multipart_server_side | streamed
    sa.Column("verify_algorithm", sa.String(16)),
    sa.Column("verify_method", sa.String(32)),  # server_reported | read_back
    sa.Column("dst_checksums", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

buckets = sa.Table(
    "residency_buckets",
    metadata,
    sa.Column("migration_id", sa.String(128), primary_key=True),
    sa.Column("bucket_uri", sa.String(300), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),  # source | destination
    sa.Column("provider", sa.String(8), nullable=False),
    sa.Column("location", sa.String(64)),
    sa.Column("jurisdiction", sa.String(8)),
    sa.Column("placement_source", sa.String(16)),  # discovered | declared
    sa.Column("objects_listed", sa.BigInteger, default=0),
    sa.Column("bytes_listed", sa.BigInteger, default=0),
    sa.Column("objects_in_scope", sa.BigInteger, default=0),
    sa.Column("bytes_in_scope", sa.BigInteger, default=0),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

journal = sa.Table(
    "residency_reference_journal",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("migration_id", sa.String(128), nullable=False, index=True),
    sa.Column("table_name", sa.String(128), nullable=False),
    sa.Column("key_column", sa.String(128), nullable=False),
    sa.Column("key_value", sa.String(255), nullable=False),
    sa.Column("url_column", sa.String(128), nullable=False),
    sa.Column("old_url", sa.Text, nullable=False),
    sa.Column("new_url", sa.Text, nullable=False),
    sa.Column("src_uri", sa.String(2048), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | applied | rolled_back | conflict
    sa.Column("batch", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("migration_id", "table_name", "url_column", "key_value", name="uq_journal_cell"),
)

revocations = sa.Table(
    "residency_revocations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("migration_id", sa.String(128), nullable=False, index=True),
    sa.Column("principal", sa.String(512), nullable=False),
    sa.Column("credential_id", sa.String(255), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("proof", sa.Text, nullable=False),  # JSON
    sa.Column("at", sa.String(40), nullable=False),
)

phases = sa.Table(
    "residency_phases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("migration_id", sa.String(128), nullable=False, index=True),
    sa.Column("phase", sa.String(32), nullable=False),  # preflight | inventory | copy | verify | cutover | residual | revoke
    sa.Column("run_id", sa.String(255)),
    sa.Column("result", sa.Text, nullable=False),  # JSON summary the phase returned
    sa.Column("at", sa.String(40), nullable=False),
)

audit = sa.Table(
    "residency_audit",
    metadata,
    sa.Column("migration_id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of an audit record without its own hash."""
    body = {k: record[k] for k in ("migration_id", "seq", "at", "event", "data", "prev_hash")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Ledger:
    """Access to the ledger database. Cheap to construct; thread-safe engine."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60}
            database = sa.engine.make_url(url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- objects ----------------------------------------------------------
    def upsert_discovered(self, migration_id: str, rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
        """Record inventoried objects; returns counts of ``new``, ``unchanged``, ``requeued``.

        An object seen before keeps its progress, unless the source changed
        (another version or ETag): then it is re-queued as ``discovered`` and
        its old verdict discarded, so a stale copy is never cut over.
        """
        counts = {"new": 0, "unchanged": 0, "requeued": 0}
        rows = list(rows)
        if not rows:
            return counts
        with self.engine.begin() as conn:
            existing = {
                r.src_uri: r
                for r in conn.execute(
                    sa.select(objects.c.src_uri, objects.c.src_version, objects.c.src_etag, objects.c.state)
                    .where(objects.c.migration_id == migration_id)
                    .where(objects.c.src_uri.in_([r["src_uri"] for r in rows]))
                )
            }
            stamp = now()
            for row in rows:
                values = dict(row, migration_id=migration_id, updated_at=stamp)
                values["src_checksums"] = json.dumps(row.get("src_checksums") or {}, sort_keys=True)
                old = existing.get(row["src_uri"])
                if old is None:
                    values.update(state=DISCOVERED, attempts=0)
                    conn.execute(objects.insert().values(**values))
                    counts["new"] += 1
                elif (old.src_version, old.src_etag) != (row.get("src_version"), row.get("src_etag")):
                    values.update(
                        state=DISCOVERED, copy_action=None, copy_method=None, verify_algorithm=None,
                        verify_method=None, dst_checksums=None,
                        reason=f"source changed since previous inventory (was etag {old.src_etag})",
                    )
                    conn.execute(_where_obj(objects.update(), migration_id, row["src_uri"]).values(**values))
                    counts["requeued"] += 1
                else:
                    # Same source version: keep progress, refresh placement fields only.
                    keep = {k: values[k] for k in ("shard", "dst_uri", "route", "updated_at")}
                    conn.execute(_where_obj(objects.update(), migration_id, row["src_uri"]).values(**keep))
                    counts["unchanged"] += 1
        return counts

    def update_object(self, migration_id: str, src_uri: str, **values: Any) -> None:
        for key in ("src_checksums", "dst_checksums"):
            if key in values and not isinstance(values[key], (str, type(None))):
                values[key] = json.dumps(values[key], sort_keys=True)
        values["updated_at"] = now()
        with self.engine.begin() as conn:
            conn.execute(_where_obj(objects.update(), migration_id, src_uri).values(**values))

    def get_object(self, migration_id: str, src_uri: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                _where_obj(sa.select(objects), migration_id, src_uri)
            ).mappings().first()
        return _decode(row) if row else None

    def get_objects(self, migration_id: str, src_uris: Iterable[str]) -> dict[str, dict[str, Any]]:
        uris = list(set(src_uris))
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(uris), 500):
                for row in conn.execute(
                    sa.select(objects)
                    .where(objects.c.migration_id == migration_id)
                    .where(objects.c.src_uri.in_(uris[i : i + 500]))
                ).mappings():
                    out[row["src_uri"]] = _decode(row)
        return out

    def iter_objects(
        self, migration_id: str, states: Iterable[str] | None = None, batch: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Objects of a migration in ``src_uri`` order, fetched in pages (bounded memory)."""
        last = ""
        while True:
            query = (
                sa.select(objects)
                .where(objects.c.migration_id == migration_id)
                .where(objects.c.src_uri > last)
                .order_by(objects.c.src_uri)
                .limit(batch)
            )
            if states is not None:
                query = query.where(objects.c.state.in_(list(states)))
            with self.engine.connect() as conn:
                rows = [_decode(r) for r in conn.execute(query).mappings()]
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1]["src_uri"]

    def object_counts(self, migration_id: str) -> list[dict[str, Any]]:
        """Counts and bytes grouped by source bucket, route, state, copy action, verify algorithm."""
        cols = [
            objects.c.src_bucket_uri, objects.c.route, objects.c.media_type, objects.c.state,
            objects.c.copy_action, objects.c.verify_algorithm, objects.c.verify_method,
        ]
        query = (
            sa.select(*cols, sa.func.count().label("objects"), sa.func.coalesce(sa.func.sum(objects.c.size), 0).label("bytes"))
            .where(objects.c.migration_id == migration_id)
            .group_by(*cols)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # -- buckets ----------------------------------------------------------
    def record_bucket(self, migration_id: str, bucket_uri: str, **values: Any) -> None:
        values["updated_at"] = now()
        with self.engine.begin() as conn:
            found = conn.execute(
                sa.select(buckets.c.bucket_uri)
                .where(buckets.c.migration_id == migration_id)
                .where(buckets.c.bucket_uri == bucket_uri)
            ).first()
            if found:
                conn.execute(
                    buckets.update()
                    .where(buckets.c.migration_id == migration_id)
                    .where(buckets.c.bucket_uri == bucket_uri)
                    .values(**values)
                )
            else:
                conn.execute(buckets.insert().values(migration_id=migration_id, bucket_uri=bucket_uri, **values))

    def get_buckets(self, migration_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    sa.select(buckets).where(buckets.c.migration_id == migration_id).order_by(buckets.c.bucket_uri)
                ).mappings()
            ]

    # -- revocations ------------------------------------------------------
    def record_revocation(
        self, migration_id: str, principal: str, credential_id: str, action: str, proof: Mapping[str, Any]
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                revocations.insert().values(
                    migration_id=migration_id, principal=principal, credential_id=credential_id,
                    action=action, proof=json.dumps(proof, sort_keys=True, default=str), at=now(),
                )
            )

    def get_revocations(self, migration_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(revocations).where(revocations.c.migration_id == migration_id).order_by(revocations.c.id)
            ).mappings()
            return [dict(r, proof=json.loads(r["proof"])) for r in rows]

    # -- phase results ------------------------------------------------------
    def record_phase(self, migration_id: str, phase: str, result: Mapping[str, Any], run_id: str | None = None) -> None:
        """Keep the summary a phase returned; the evidence reads the latest of each."""
        with self.engine.begin() as conn:
            conn.execute(
                phases.insert().values(
                    migration_id=migration_id, phase=phase, run_id=run_id,
                    result=json.dumps(result, sort_keys=True, default=str), at=now(),
                )
            )

    def latest_phase(self, migration_id: str, phase: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(phases)
                .where(phases.c.migration_id == migration_id)
                .where(phases.c.phase == phase)
                .order_by(phases.c.id.desc())
                .limit(1)
            ).mappings().first()
        return dict(row, result=json.loads(row["result"])) if row else None

    # -- audit log ----------------------------------------------------------
    def audit(self, migration_id: str, event: str, data: Mapping[str, Any], conn: Connection | None = None) -> dict[str, Any]:
        """Append a record to the migration's hash chain; returns the record.

        The chain head is read and extended in one transaction; on PostgreSQL the
        head row is locked so concurrent workers cannot fork the chain.
        """
        if conn is None:
            with self.engine.begin() as own:
                return self._append(own, migration_id, event, data)
        return self._append(conn, migration_id, event, data)

    def _append(self, conn: Connection, migration_id: str, event: str, data: Mapping[str, Any]) -> dict[str, Any]:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:m))"), {"m": migration_id})
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("UPDATE residency_audit SET seq = seq WHERE 0")  # take the write lock now
        head = conn.execute(
            sa.select(audit.c.seq, audit.c.hash)
            .where(audit.c.migration_id == migration_id)
            .order_by(audit.c.seq.desc())
            .limit(1)
        ).first()
        record = {
            "migration_id": migration_id,
            "seq": (head.seq + 1) if head else 1,
            "at": now(),
            "event": event,
            "data": json.dumps(data, sort_keys=True, ensure_ascii=False, default=str),
            "prev_hash": head.hash if head else GENESIS,
        }
        record["hash"] = record_hash(record)
        conn.execute(audit.insert().values(**record))
        return record

    def audit_records(self, migration_id: str) -> Iterator[dict[str, Any]]:
        with self.engine.connect() as conn:
            for row in conn.execute(
                sa.select(audit).where(audit.c.migration_id == migration_id).order_by(audit.c.seq)
            ).mappings():
                yield dict(row)


def _where_obj(stmt: Any, migration_id: str, src_uri: str) -> Any:
    return stmt.where(objects.c.migration_id == migration_id).where(objects.c.src_uri == src_uri)


def _decode(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("src_checksums", "dst_checksums"):
        out[key] = json.loads(out[key]) if out.get(key) else {}
    return out


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()
