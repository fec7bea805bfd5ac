"""Which migrations the dashboard shows, and where their ledgers are.

The policy files come from ``RESIDENCY_POLICIES`` (paths or globs separated by
``os.pathsep`` or commas), or else ``RESIDENCY_POLICY`` (the DAG's default policy).
Each is loaded with :func:`residency.policy.load_policy`; its ledger is
``policy.ledger_url``, or the Airflow connection ``policy.ledger_conn_id`` read
inside the API server and turned into a URL by
:func:`residency.clients.database_from_fields`.

A policy that does not load becomes an error row naming the file and the reason;
it never stops the page, and no message carries a password.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from residency.policy import redact_db_url

log = logging.getLogger(__name__)

ENV_POLICIES = "RESIDENCY_POLICIES"
ENV_POLICY = "RESIDENCY_POLICY"
_GLOB_CHARS = re.compile(r"[*?\[]")
_USERINFO = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


@dataclass(frozen=True)
class PolicySource:
    """One configured policy file as the dashboard sees it.

    ``ledger_url`` may carry a password (from a connection): it never appears in
    repr, pages or logs; ``ledger_label`` is the redacted form for people.
    """

    path: str
    migration_id: str | None = None
    ledger_label: str | None = None
    ledger_url: str | None = field(default=None, repr=False)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def policies_spec() -> str:
    """The configured policy list: ``RESIDENCY_POLICIES``, else ``RESIDENCY_POLICY``."""
    return os.environ.get(ENV_POLICIES) or os.environ.get(ENV_POLICY) or ""


def expand(spec: str) -> tuple[list[str], list[PolicySource]]:
    """The policy files a spec names, and an error row for each glob that matches nothing.

    Args:
        spec: paths or globs separated by ``os.pathsep`` or commas; ``~`` expands.

    Returns:
        ``(paths, errors)``: paths in the order given (globs sorted), without repeats.
    """
    paths: list[str] = []
    errors: list[PolicySource] = []
    for item in re.split(rf"[,{re.escape(os.pathsep)}]", spec):
        item = os.path.expanduser(item.strip())
        if not item:
            continue
        if _GLOB_CHARS.search(item):
            matches = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not matches:
                errors.append(PolicySource(path=item, error="no policy file matches this pattern"))
            paths.extend(matches)
        else:
            paths.append(item)
    seen: set[str] = set()
    unique = [p for p in paths if not (p in seen or seen.add(p))]
    return unique, errors


def ledger_url_from_connection(conn_id: str) -> str:
    """The ledger URL of an Airflow connection, read where the dashboard runs (the API server).

    Raises:
        airflow.exceptions.AirflowNotFoundException: no such connection.
        ValueError: a connection type that names no database.
    """
    from airflow.models.connection import Connection

    from residency.clients import database_from_fields

    conn = Connection.get_connection_from_secrets(conn_id)
    return database_from_fields(
        conn_id, conn.conn_type, host=conn.host, login=conn.login, password=conn.password,
        schema=conn.schema, port=conn.port, extra=conn.extra_dejson,
    ).url


def load_sources(
    spec: str, connection_url: Callable[[str], str] = ledger_url_from_connection
) -> list[PolicySource]:
    """Every policy of ``spec``, loaded, with its ledger; failures as error rows.

    Args:
        spec: see :func:`expand`.
        connection_url: turns a ``ledger_conn_id`` into a URL (tests pass their own).
    """
    from residency.policy import load_policy

    paths, sources = expand(spec)
    for path in paths:
        try:
            policy = load_policy(path)
        except Exception as exc:  # noqa: BLE001 - one bad file is one error row, never a broken page
            log.warning("residency dashboard: policy %s does not load: %s", path, scrub(str(exc)))
            sources.append(PolicySource(path=path, error=scrub(str(exc))))
            continue
        url = policy.ledger_url
        if url is None:
            try:
                url = connection_url(policy.ledger_conn_id or "")
            except Exception as exc:  # noqa: BLE001 - a missing or wrong connection is an error row
                reason = f"ledger connection {policy.ledger_conn_id!r}: {scrub(str(exc))}"
                log.warning("residency dashboard: policy %s: %s", path, reason)
                sources.append(PolicySource(path=policy.path, migration_id=policy.migration_id, error=reason))
                continue
        sources.append(PolicySource(path=policy.path, migration_id=policy.migration_id,
                                    ledger_label=redact_db_url(url), ledger_url=url))
    return sources


def sqlite_file_missing(url: str) -> str | None:
    """The file of a SQLite URL when it does not exist yet (opening it would create it)."""
    try:
        parsed = sa.engine.make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: let the ledger report it
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return None if Path(database).is_file() else database


def scrub(text: str, *secrets: str | None) -> str:
    """A message without passwords: URL user-info masked, and any known secret replaced."""
    text = _USERINFO.sub(r"\1***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def describe_error(exc: BaseException, *secrets: str | None) -> str:
    """One line for a page: the kind of error and its first line, scrubbed.

    SQLAlchemy errors carry the SQL and a link after the driver's message; the
    driver's own first line is what a person needs.
    """
    inner = getattr(exc, "orig", None) or exc
    first = (str(inner).strip().splitlines() or [""])[0]
    return scrub(f"{type(inner).__name__}: {first}" if first else type(inner).__name__, *secrets)
