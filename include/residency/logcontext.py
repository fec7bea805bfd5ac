"""Run identifiers on every log line of the engine, for log aggregators.

A task works for one migration and one DAG run; :func:`bind` names them once,
and from then on every record logged by a ``residency.*`` logger ends with
``[migration=<id> run=<run id>]``, including lines logged from the copy and
verify worker threads (a record factory, not a context variable, which threads
of a pool would not inherit). Values are identifiers, never secrets.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

_fields: dict[str, str] = {}
_lock = threading.Lock()
_installed = False
_previous = logging.getLogRecordFactory()


def _factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _previous(*args, **kwargs)
    if _fields and isinstance(record.name, str) and record.name.startswith("residency") and isinstance(record.msg, str):
        suffix = " ".join(f"{k}={v}" for k, v in _fields.items()).replace("%", "%%")
        record.msg = f"{record.msg} [{suffix}]"
    return record


def bind(**fields: str | None) -> None:
    """Tag the engine's log lines with ``fields`` (e.g. ``migration=..., run=...``); None values are left out."""
    global _installed
    with _lock:
        _fields.clear()
        _fields.update({k: str(v) for k, v in fields.items() if v})
        if not _installed:
            logging.setLogRecordFactory(_factory)
            _installed = True
