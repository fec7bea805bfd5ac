"""The migrations the dashboard knows, and their status, read through ``residency.progress``.

Per request the ledgers are asked only ``progress.list_migrations`` and
``progress.migration_status`` (aggregate queries on indexed columns, never object
rows), each cached for :data:`STATUS_TTL` seconds per ledger, migration and run,
so a page that refreshes itself every few seconds in many browsers costs each
ledger one query set per period.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import sqlalchemy as sa

from residency import progress
from residency.ledger import Ledger

from .cache import TTLCache
from .sources import (
    PolicySource, describe_error, ledger_url_from_connection, load_sources, policies_spec, sqlite_file_missing,
)

log = logging.getLogger(__name__)

#: Seconds a ledger answer is reused (the pages refresh every few seconds).
STATUS_TTL = 2.0
#: Seconds the policy files and connections are reused before they are read again.
SOURCES_TTL = 10.0


@dataclass(frozen=True)
class Migration:
    """A migration in a ledger, or named by a policy whose run has not written yet."""

    migration_id: str
    ledger_label: str
    ledger_url: str = field(repr=False)
    policies: tuple[str, ...] = ()
    last_at: str | None = None
    phases: int = 0
    ledger_missing: bool = False  # a SQLite ledger file no run has created yet

    @property
    def started(self) -> bool:
        return self.phases > 0


@dataclass(frozen=True)
class ErrorRow:
    """Something the dashboard could not read: a policy file, a connection or a ledger."""

    error: str
    policy: str | None = None
    ledger: str | None = None


@dataclass(frozen=True)
class Catalogue:
    migrations: tuple[Migration, ...]
    errors: tuple[ErrorRow, ...]

    def find(self, migration_id: str) -> Migration | None:
        return next((m for m in self.migrations if m.migration_id == migration_id), None)


class Dashboard:
    """The dashboard's read side: policies -> ledgers -> migrations -> status.

    Args:
        spec: returns the configured policy list (default: the environment, read
            on every refresh so a changed variable takes effect without a restart
            of anything but the API server's environment).
        connection_url: turns a ``ledger_conn_id`` into a URL.
        status_ttl: seconds a ledger answer is reused.
        sources_ttl: seconds the policy files are reused.
        clock: a monotonic clock.
    """

    def __init__(
        self,
        spec: Callable[[], str] = policies_spec,
        *,
        connection_url: Callable[[str], str] = ledger_url_from_connection,
        status_ttl: float = STATUS_TTL,
        sources_ttl: float = SOURCES_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spec = spec
        self._connection_url = connection_url
        self._sources: TTLCache[list[PolicySource]] = TTLCache(sources_ttl, clock)
        self._catalogue: TTLCache[Catalogue] = TTLCache(status_ttl, clock)
        self._status: TTLCache[dict[str, Any]] = TTLCache(status_ttl, clock)
        self._ledgers: dict[str, Ledger] = {}
        self._lock = threading.Lock()

    # -- configuration ------------------------------------------------------
    def sources(self) -> list[PolicySource]:
        spec = self._spec()
        return self._sources.get(spec, lambda: load_sources(spec, self._connection_url))

    def configured(self) -> bool:
        return bool(self._spec().strip())

    def ledger(self, url: str) -> Ledger:
        """One ledger (engine and pool) per URL for the life of the process."""
        with self._lock:
            ledger = self._ledgers.get(url)
            if ledger is None:
                ledger = self._ledgers[url] = Ledger(url)
            return ledger

    # -- reads ----------------------------------------------------------------
    def catalogue(self) -> Catalogue:
        """Every migration of every configured ledger, and what could not be read."""
        sources = self.sources()
        return self._catalogue.get(tuple((s.path, s.migration_id, s.ledger_label, s.error) for s in sources),
                                   lambda: self._build_catalogue(sources))

    def status(self, migration: Migration, run_id: str | None = None) -> dict[str, Any] | None:
        """``progress.migration_status`` of a migration (``None`` while its SQLite ledger does not exist).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the ledger cannot be read.
        """
        if migration.ledger_missing and sqlite_file_missing(migration.ledger_url):
            return None
        key = (migration.ledger_url, migration.migration_id, run_id)
        return self._status.get(key, lambda: progress.migration_status(
            self.ledger(migration.ledger_url), migration.migration_id, run_id=run_id))

    def find_run(self, run_id: str, policy_path: str | None = None) -> Migration | None:
        """The migration a DAG run works on: the one whose ledger recorded a phase of that run,
        else the configured policy the run was triggered with (``policy_path`` from its conf)."""
        catalogue = self.catalogue()
        for migration in catalogue.migrations:
            if not migration.started:
                continue
            try:
                status = self.status(migration, run_id)
            except sa.exc.SQLAlchemyError as exc:
                log.warning("residency dashboard: ledger %s unreadable while looking for run %s: %s",
                            migration.ledger_label, run_id, describe_error(exc, _password(migration.ledger_url)))
                continue
            if status and any(p.get("count") for p in status["phases"]):
                return migration
        if policy_path:
            wanted = _resolved(policy_path)
            for migration in catalogue.migrations:
                if any(_resolved(p) == wanted for p in migration.policies):
                    return migration
        return None

    def _build_catalogue(self, sources: list[PolicySource]) -> Catalogue:
        errors = [ErrorRow(error=s.error, policy=s.path, ledger=s.ledger_label) for s in sources if not s.ok]
        by_ledger: dict[str, list[PolicySource]] = {}
        for source in sources:
            if source.ok and source.ledger_url:
                by_ledger.setdefault(source.ledger_url, []).append(source)
        migrations: list[Migration] = []
        seen: set[str] = set()
        for url, group in by_ledger.items():
            label = group[0].ledger_label or ""
            named: dict[str, list[str]] = {}
            for source in group:
                named.setdefault(source.migration_id or "", []).append(source.path)
            missing = sqlite_file_missing(url)
            rows: list[dict[str, Any]] = []
            if missing is None:
                try:
                    rows = progress.list_migrations(self.ledger(url))
                except sa.exc.SQLAlchemyError as exc:
                    reason = describe_error(exc, _password(url))
                    log.warning("residency dashboard: ledger %s unreadable: %s", label, reason)
                    errors.append(ErrorRow(error=f"the ledger cannot be read: {reason}", ledger=label,
                                           policy=", ".join(s.path for s in group)))
                    continue
            for row in rows:
                mid = row["migration_id"]
                migrations.append(Migration(
                    migration_id=mid, ledger_label=label, ledger_url=url, policies=tuple(named.pop(mid, ())),
                    last_at=row["last_at"], phases=int(row["phases"] or 0)))
            for mid, paths in named.items():  # named by a policy, nothing recorded yet
                migrations.append(Migration(migration_id=mid, ledger_label=label, ledger_url=url,
                                            policies=tuple(paths), ledger_missing=missing is not None))
        unique: list[Migration] = []
        for migration in migrations:
            if migration.migration_id in seen:
                errors.append(ErrorRow(
                    error=f"migration {migration.migration_id!r} is also in another ledger; this page shows the "
                          "first one only",
                    ledger=migration.ledger_label, policy=", ".join(migration.policies) or None))
                continue
            seen.add(migration.migration_id)
            unique.append(migration)
        return Catalogue(migrations=tuple(unique), errors=tuple(errors))


def _password(url: str) -> str | None:
    try:
        return sa.engine.make_url(url).password
    except Exception:  # noqa: BLE001 - no password to hide in a string that is not a URL
        return None


def _resolved(path: str) -> str:
    try:
        from pathlib import Path

        return str(Path(path).expanduser().resolve())
    except OSError:
        return path
