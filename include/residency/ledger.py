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
    # The destination object that was verified (its ETag and version as the server
    # reported them then): an attestation proves the same object is still there.
    sa.Column("dst_etag", sa.String(255)),
    sa.Column("dst_version", sa.String(255)),
    sa.Column("proof", sa.Text),  # one sentence: how the verification was made
    sa.Column("attested_at", sa.String(40)),  # stamp of the attest run that last re-proved it
    sa.Column("attest_method", sa.String(32)),  # listing_checksum | listing_etag | head | read_back | reverified
    sa.Column("attest_note", sa.Text),  # e.g. the source was deleted since verification
    sa.Column("src_checked_at", sa.String(40)),  # stamp of the attest run whose source listing saw it unchanged
    # The manifest: the inventory run (its stamp) and the shard that lists the object.
    # Every worker reads its shard from here; no manifest lives on a worker's disk.
    sa.Column("manifest", sa.String(40)),
    # What the source listing said beyond the pins, where it says it (GCS: content
    # type, user metadata, content headers), JSON; NULL where a copy must keep the
    # source's own (S3 lists none of them).
    sa.Column("src_meta", sa.Text),
    sa.Index("ix_residency_objects_dst", "migration_id", "dst_uri"),
    sa.Index("ix_residency_objects_shard", "migration_id", "manifest", "shard"),
    # Progress by bucket, route and state, read from the index alone (the dashboard's counts).
    sa.Index("ix_residency_objects_progress", "migration_id", "src_bucket_uri", "route", "state",
             postgresql_include=["size"]),
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
    sa.Column("objects_out_of_scope", sa.BigInteger, default=0),
    sa.Column("bytes_out_of_scope", sa.BigInteger, default=0),
    sa.Column("objects_unreadable", sa.BigInteger, default=0),
    sa.Column("bytes_unreadable", sa.BigInteger, default=0),
    sa.Column("inventoried_at", sa.String(40)),  # when the listing that counted these began
    sa.Column("inventory_source", sa.Text),  # "listing", or the S3 Inventory report read instead (uri, creation time)
)

unreadable = sa.Table(
    "residency_unreadable",
    metadata,
    sa.Column("migration_id", sa.String(128), primary_key=True),
    sa.Column("src_uri", sa.String(2048), primary_key=True),
    sa.Column("src_bucket_uri", sa.String(300), nullable=False),
    sa.Column("size", sa.BigInteger),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.String(40), nullable=False),
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

#: The objects whose URLs the cutover wrote into each journaled cell (a text or
#: JSON cell may hold several). Indexed by object, so that marking objects
#: ``cut_over`` (no reference in conflict) costs one index lookup per object.
journal_objects = sa.Table(
    "residency_reference_objects",
    metadata,
    sa.Column("journal_id", sa.Integer, nullable=False),
    sa.Column("migration_id", sa.String(128), nullable=False),
    sa.Column("src_uri", sa.String(2048), nullable=False),
    sa.Index("ix_residency_reference_objects_journal", "journal_id"),
    sa.Index("ix_residency_reference_objects_src", "migration_id", "src_uri"),
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

progress = sa.Table(
    "residency_progress",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("migration_id", sa.String(128), nullable=False),
    sa.Column("run_id", sa.String(255)),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("phase", sa.String(32), nullable=False),  # copy | verify | attest
    sa.Column("src_bucket_uri", sa.String(300), nullable=False),
    sa.Column("route", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),  # copied | already_present | verified | failed | ...
    sa.Column("objects", sa.BigInteger, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Index("ix_residency_progress_at", "migration_id", "at"),
)

approvals = sa.Table(
    "residency_approvals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("migration_id", sa.String(128), nullable=False, index=True),
    sa.Column("run_id", sa.String(255), nullable=False),
    sa.Column("step", sa.String(32), nullable=False),  # cutover | revoke
    sa.Column("decision", sa.String(16), nullable=False),  # approved | rejected | timed_out
    sa.Column("who", sa.String(255)),
    sa.Column("at", sa.String(40)),
    sa.Column("comment", sa.Text),
    sa.Column("recorded_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("migration_id", "run_id", "step", name="uq_approval_step"),
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


def parse_time(value: object) -> dt.datetime | None:
    """An ISO 8601 stamp as the ledger (or a server) writes it, as an aware datetime
    (UTC when no offset is given); ``None`` for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of an audit record without its own hash."""
    body = {k: record[k] for k in ("migration_id", "seq", "at", "event", "data", "prev_hash")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Ledger:
    """Access to the ledger database. Cheap to construct; thread-safe engine."""

    def __init__(self, url: str, run_id: str | None = None) -> None:
        self.url = url
        #: The DAG run this process works for: stamped on progress events.
        self.run_id = run_id
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
        """Create the tables, and add what a newer version of this module declares
        to tables an older one created (nullable columns and indexes only)."""
        had_links = sa.inspect(self.engine).has_table(journal_objects.name)
        metadata.create_all(self.engine)
        inspector = sa.inspect(self.engine)
        if not had_links:  # a journal written before the link table: one object per cell
            with self.engine.begin() as conn:
                conn.execute(journal_objects.insert().from_select(
                    ["journal_id", "migration_id", "src_uri"],
                    sa.select(journal.c.id, journal.c.migration_id, journal.c.src_uri),
                ))
        with self.engine.begin() as conn:
            for table in metadata.sorted_tables:
                have = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in have:
                        kind = column.type.compile(dialect=conn.dialect)
                        conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
            for table in metadata.sorted_tables:
                for index in table.indexes:
                    index.create(conn, checkfirst=True)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- objects ----------------------------------------------------------
    def upsert_discovered(self, migration_id: str, rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
        """Record inventoried objects; returns counts of ``new``, ``unchanged``, ``requeued``, ``failed``.

        An object seen before keeps its progress unless the verification it holds
        no longer applies: the source changed (another version or ETag), or the
        destination plan changed (another destination URI). Then it is re-queued as
        ``discovered`` and its old verdict discarded, so that a stale copy, or a copy
        at a place the plan no longer names, is never counted or cut over. A row
        that arrives with ``state`` ``failed`` (refused at inventory, e.g. a key too
        long for the destination) is recorded as failed with its ``reason``.
        """
        counts = {"new": 0, "unchanged": 0, "requeued": 0, "failed": 0}
        rows = list(rows)
        if not rows:
            return counts
        with self.engine.begin() as conn:
            existing = {
                r.src_uri: r
                for r in conn.execute(
                    sa.select(objects.c.src_uri, objects.c.src_version, objects.c.src_etag, objects.c.state,
                              objects.c.dst_uri, objects.c.reason)
                    .where(objects.c.migration_id == migration_id)
                    .where(objects.c.src_uri.in_([r["src_uri"] for r in rows]))
                )
            }
            stamp = now()
            inserts = []
            updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in rows:
                values = dict(row, migration_id=migration_id, updated_at=stamp)
                values["src_checksums"] = json.dumps(row.get("src_checksums") or {}, sort_keys=True)
                if not isinstance(values.get("src_meta"), (str, type(None))):
                    values["src_meta"] = json.dumps(values["src_meta"], sort_keys=True)
                refused = values.pop("state", None) == FAILED
                reason = values.pop("reason", None)
                old = existing.get(row["src_uri"])
                if refused:
                    values.update(state=FAILED, reason=reason, **_NO_VERDICT)
                    counts["failed"] += 1
                    if old is None:
                        inserts.append(dict(values, attempts=0))
                    else:
                        _group_update(updates, row["src_uri"], _without_keys(values))
                    continue
                if old is None:
                    inserts.append(dict(values, state=DISCOVERED, attempts=0))
                    counts["new"] += 1
                elif (old.src_version, old.src_etag) != (row.get("src_version"), row.get("src_etag")):
                    values.update(state=DISCOVERED, reason=f"source changed since previous inventory (was etag "
                                                          f"{old.src_etag}, version {old.src_version})", **_NO_VERDICT)
                    _group_update(updates, row["src_uri"], _without_keys(values))
                    counts["requeued"] += 1
                elif old.dst_uri != row["dst_uri"]:
                    values.update(state=DISCOVERED, reason=f"destination plan changed (was {old.dst_uri}): "
                                                          "copied and verified again at the new destination",
                                  **_NO_VERDICT)
                    _group_update(updates, row["src_uri"], _without_keys(values))
                    counts["requeued"] += 1
                else:
                    # Same source version, same destination: keep progress; a failure
                    # recorded at inventory (no longer refused now) gets another chance.
                    keep = {k: values[k] for k in ("shard", "route", "updated_at", "manifest", "src_meta") if k in values}
                    if old.state == FAILED and (old.reason or "").startswith(INVENTORY_REFUSAL):
                        keep.update(state=DISCOVERED, reason=None)
                    _group_update(updates, row["src_uri"], keep)
                    counts["unchanged"] += 1
            _bulk_update(conn, migration_id, updates)
            if inserts:
                # executemany needs one set of keys for every row
                names = set().union(*inserts)
                conn.execute(objects.insert(), [{n: r.get(n) for n in names} for r in inserts])
        return counts

    def requeue(self, migration_id: str, src_uri: str, reason: str) -> None:
        """Back to ``discovered``, forgetting the verdict: the object is copied and verified again."""
        self.update_object(migration_id, src_uri, state=DISCOVERED, reason=reason, **_NO_VERDICT)

    def repin(self, migration_id: str, src_uri: str, *, version: str | None, etag: str | None, size: int,
              checksums: Mapping[str, str], content_type: str | None, reason: str) -> None:
        """The source now holds another version: pin that one and re-queue the object
        (its old verdict belongs to the old version). The source bucket's listed and
        in-scope byte counts follow the new size, so the counts still reconcile."""
        old = self.get_object(migration_id, src_uri)
        self.update_object(
            migration_id, src_uri, state=DISCOVERED, reason=reason, src_version=version, src_etag=etag, size=size,
            src_checksums=dict(checksums), content_type=content_type, **_NO_VERDICT,
        )
        if old is not None and old["size"] != size:
            delta = size - old["size"]
            with self.engine.begin() as conn:
                conn.execute(
                    buckets.update()
                    .where(buckets.c.migration_id == migration_id)
                    .where(buckets.c.bucket_uri == old["src_bucket_uri"])
                    .values(bytes_listed=buckets.c.bytes_listed + delta, bytes_in_scope=buckets.c.bytes_in_scope + delta,
                            updated_at=now())
                )

    def objects_by_dst(self, migration_id: str, dst_uris: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Ledger rows by destination URI (uses the ``dst_uri`` index)."""
        return self._objects_in(migration_id, objects.c.dst_uri, dst_uris)

    def _objects_in(self, migration_id: str, column: sa.Column[Any], values: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Rows whose ``column`` is one of ``values``, keyed by it; 500 values a query."""
        wanted = list(set(values))
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                for row in conn.execute(
                    sa.select(objects).where(objects.c.migration_id == migration_id)
                    .where(column.in_(wanted[i : i + 500]))
                ).mappings():
                    out[row[column.name]] = decode_row(row)
        return out

    def mark_attested(self, migration_id: str, stamp: str, proofs: Iterable[tuple[str, str, str | None]]) -> None:
        """Record ``(src_uri, method, note)`` as re-proven by the attest run ``stamp``,
        in one transaction; only objects still verified or cut over are touched."""
        params = [{"m": migration_id, "u": uri, "a": stamp, "meth": method, "note": note} for uri, method, note in proofs]
        if not params:
            return
        stmt = (
            objects.update()
            .where(objects.c.migration_id == sa.bindparam("m"))
            .where(objects.c.src_uri == sa.bindparam("u"))
            .where(sa.or_(objects.c.state == VERIFIED, objects.c.state == CUT_OVER))
            .values(attested_at=sa.bindparam("a"), attest_method=sa.bindparam("meth"),
                    attest_note=sa.bindparam("note"))
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, params)

    def iter_unstamped(
        self, migration_id: str, src_bucket_uri: str, stamp: str, column: str = "attested_at", batch: int = 500
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of verified objects of one source whose ``column`` (``attested_at`` or
        ``src_checked_at``) does not carry the attest run's ``stamp`` yet."""
        col = objects.c[column]
        last = ""
        while True:
            query = (
                sa.select(objects)
                .where(objects.c.migration_id == migration_id)
                .where(objects.c.src_bucket_uri == src_bucket_uri)
                .where(objects.c.state.in_([VERIFIED, CUT_OVER]))
                .where(sa.or_(col.is_(None), col != stamp))
                .where(objects.c.src_uri > last)
                .order_by(objects.c.src_uri)
                .limit(batch)
            )
            with self.engine.connect() as conn:
                rows = [decode_row(r) for r in conn.execute(query).mappings()]
            if not rows:
                return
            yield rows
            last = rows[-1]["src_uri"]

    def has_versions(self, migration_id: str, src_bucket_uri: str) -> bool:
        """Whether any object of the source was pinned by a version id (a versioned bucket)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(objects.c.src_uri)
                .where(objects.c.migration_id == migration_id)
                .where(objects.c.src_bucket_uri == src_bucket_uri)
                .where(objects.c.src_version.is_not(None))
                .limit(1)
            ).first() is not None

    def attested_counts(self, migration_id: str, stamp: str | None) -> list[dict[str, Any]]:
        """Objects and bytes re-proven by the attest run ``stamp``, by source bucket and route."""
        if stamp is None:
            return []
        cols = [objects.c.src_bucket_uri, objects.c.route]
        query = (
            sa.select(*cols, sa.func.count().label("objects"), sa.func.coalesce(sa.func.sum(objects.c.size), 0).label("bytes"))
            .where(objects.c.migration_id == migration_id)
            .where(objects.c.state.in_([VERIFIED, CUT_OVER]))
            .where(objects.c.attested_at == stamp)
            .group_by(*cols)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # -- objects the inventory listed but could not read ---------------------
    def replace_unreadable(self, migration_id: str, bucket_uri: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """The unreadable objects of one source, as its latest inventory found them
        (an object read successfully since is no longer listed)."""
        stamp = now()
        values = [
            {"migration_id": migration_id, "src_uri": r["src_uri"], "src_bucket_uri": bucket_uri,
             "size": r.get("size"), "reason": r["reason"], "at": stamp}
            for r in rows
        ]
        with self.engine.begin() as conn:
            conn.execute(
                unreadable.delete()
                .where(unreadable.c.migration_id == migration_id)
                .where(unreadable.c.src_bucket_uri == bucket_uri)
            )
            if values:
                conn.execute(unreadable.insert(), values)

    def get_unreadable(self, migration_id: str, bucket_uri: str | None = None) -> list[dict[str, Any]]:
        """The objects the latest inventory listed but could not read (of one source bucket, or all)."""
        query = (
            sa.select(unreadable).where(unreadable.c.migration_id == migration_id)
            .order_by(unreadable.c.src_bucket_uri, unreadable.c.src_uri)
        )
        if bucket_uri is not None:
            query = query.where(unreadable.c.src_bucket_uri == bucket_uri)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def update_object(self, migration_id: str, src_uri: str, **values: Any) -> None:
        self.update_objects(migration_id, [(src_uri, values)])

    def update_objects(self, migration_id: str, updates: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        """Apply ``(src_uri, values)`` updates in one transaction: one executemany per
        set of column names, never a transaction per object. Returns how many."""
        stamp = now()
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        count = 0
        for src_uri, values in updates:
            _group_update(groups, src_uri, dict(values, updated_at=stamp))
            count += 1
        if not groups:
            return 0
        with self.engine.begin() as conn:
            _bulk_update(conn, migration_id, groups)
        return count

    def iter_shard(self, migration_id: str, manifest: str | None, first: int, last: int | None = None,
                   batch: int = 2000) -> Iterator[dict[str, Any]]:
        """The rows of shards ``first..last`` of one inventory's manifest, in shard and
        ``src_uri`` order, fetched in pages (bounded memory; any worker can read them)."""
        last = first if last is None else last
        cursor: tuple[int, str] = (first, "")
        while True:
            query = (
                sa.select(objects).where(objects.c.migration_id == migration_id)
                .where(objects.c.shard.between(first, last))
                .where(sa.tuple_(objects.c.shard, objects.c.src_uri) > sa.tuple_(sa.literal(cursor[0]),
                                                                                 sa.literal(cursor[1])))
                .order_by(objects.c.shard, objects.c.src_uri).limit(batch)
            )
            query = query.where(objects.c.manifest == manifest) if manifest else query.where(objects.c.manifest.is_(None))
            with self.engine.connect() as conn:
                rows = [decode_row(r) for r in conn.execute(query).mappings()]
            yield from rows
            if len(rows) < batch:
                return
            cursor = (rows[-1]["shard"], rows[-1]["src_uri"])

    def get_object(self, migration_id: str, src_uri: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                _where_obj(sa.select(objects), migration_id, src_uri)
            ).mappings().first()
        return decode_row(row) if row else None

    def get_objects(self, migration_id: str, src_uris: Iterable[str]) -> dict[str, dict[str, Any]]:
        return self._objects_in(migration_id, objects.c.src_uri, src_uris)

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
                rows = [decode_row(r) for r in conn.execute(query).mappings()]
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

    # -- progress events (the dashboard's throughput, ETA and timeline) ---------
    def record_progress(self, migration_id: str, phase: str, events: Iterable[Mapping[str, Any]]) -> None:
        """Append counts ``{src_bucket_uri, route, outcome, objects, bytes}`` of one phase, in one transaction."""
        stamp = now()
        rows = [dict(e, migration_id=migration_id, run_id=self.run_id, at=stamp, phase=phase) for e in events
                if e.get("objects")]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(progress.insert(), rows)

    # -- approvals ------------------------------------------------------------
    def record_approval(self, migration_id: str, run_id: str, step: str, decision: str, *, who: str | None,
                        at: str | None, comment: str | None) -> bool:
        """Record the human decision on one irreversible step of one run, once, with an
        audit record; returns False when it was already recorded."""
        with self.engine.begin() as conn:
            found = conn.execute(
                sa.select(approvals.c.id).where(approvals.c.migration_id == migration_id)
                .where(approvals.c.run_id == run_id).where(approvals.c.step == step)
            ).first()
            if found:
                return False
            values = {"migration_id": migration_id, "run_id": run_id, "step": step, "decision": decision,
                      "who": who, "at": at, "comment": comment, "recorded_at": now()}
            conn.execute(approvals.insert().values(**values))
            self.audit(migration_id, f"approval.{step}", {k: v for k, v in values.items() if k != "migration_id"},
                       conn=conn)
        return True

    def get_approvals(self, migration_id: str, run_id: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(approvals).where(approvals.c.migration_id == migration_id).order_by(approvals.c.id)
        if run_id is not None:
            query = query.where(approvals.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

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


#: What a re-queued object forgets: no verdict may outlive the pair it was made for.
_NO_VERDICT: dict[str, Any] = {
    "copy_action": None, "copy_method": None, "verify_algorithm": None, "verify_method": None,
    "dst_checksums": None, "dst_etag": None, "dst_version": None, "proof": None,
    "attested_at": None, "attest_method": None, "attest_note": None, "src_checked_at": None,
}

#: Reasons recorded by the inventory itself start with this.
INVENTORY_REFUSAL = "refused at inventory: "


def _where_obj(stmt: Any, migration_id: str, src_uri: str) -> Any:
    return stmt.where(objects.c.migration_id == migration_id).where(objects.c.src_uri == src_uri)


def _without_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in ("migration_id", "src_uri")}


def _group_update(groups: dict[tuple[str, ...], list[dict[str, Any]]], src_uri: str, values: dict[str, Any]) -> None:
    """Add one object's update to ``groups`` (keyed by its column names), JSON columns encoded."""
    for key in ("src_checksums", "dst_checksums", "src_meta"):
        if key in values and not isinstance(values[key], (str, type(None))):
            values[key] = json.dumps(values[key], sort_keys=True)
    groups.setdefault(tuple(sorted(values)), []).append(
        {**{f"v_{k}": v for k, v in values.items()}, "b_src_uri": src_uri}
    )


def _bulk_update(conn: Connection, migration_id: str, groups: Mapping[tuple[str, ...], list[dict[str, Any]]]) -> None:
    """One executemany UPDATE per set of column names (see :func:`_group_update`)."""
    for names, params in groups.items():
        stmt = (
            objects.update()
            .where(objects.c.migration_id == migration_id)
            .where(objects.c.src_uri == sa.bindparam("b_src_uri"))
            .values({n: sa.bindparam(f"v_{n}") for n in names})
        )
        conn.execute(stmt, params)


def decode_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of ``residency_objects`` with its checksum columns decoded from JSON."""
    out = dict(row)
    for key in ("src_checksums", "dst_checksums"):
        out[key] = json.loads(out[key]) if out.get(key) else {}
    if out.get("src_meta"):
        out["src_meta"] = json.loads(out["src_meta"])
    return out


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()
