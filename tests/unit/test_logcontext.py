"""Run identifiers on the engine's log lines (for log aggregators)."""

from __future__ import annotations

import logging

from residency import logcontext


def test_engine_lines_carry_the_run_and_others_do_not(caplog):
    caplog.set_level(logging.INFO)
    try:
        logcontext.bind(migration="line-media-jp", run="manual__2026-11-22T00:00:00+00:00")
        logging.getLogger("residency.transfer").info("copy %s: copied %d bytes", "s3://b/k 100%.jpg", 5)
        logging.getLogger("airflow.task").info("not ours")
        logging.makeLogRecord({"msg": "a record rebuilt from a dict (structlog does this)"})
    finally:
        logcontext.bind()
    ours, theirs = caplog.records[0].getMessage(), caplog.records[1].getMessage()
    assert ours == "copy s3://b/k 100%.jpg: copied 5 bytes [migration=line-media-jp run=manual__2026-11-22T00:00:00+00:00]"
    assert theirs == "not ours"
    logging.getLogger("residency.transfer").info("after unbinding")
    assert caplog.records[-1].getMessage() == "after unbinding"
