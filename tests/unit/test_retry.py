"""Retries: transient errors retried with backoff and a log line each; permanent ones at once."""

from __future__ import annotations

import logging

import pytest

from residency.errors import PermissionDenied, TransientError
from residency.retry import RetryPolicy


def flaky(failures: list[Exception], value: str = "ok"):
    calls = []

    def fn():
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return value

    return fn, calls


def test_transient_errors_are_retried_with_a_log_line_each(caplog):
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.5, max_backoff=4, sleep=sleeps.append)
    fn, calls = flaky([TransientError("s3://b/k", "SlowDown: reduce your request rate"),
                       TransientError("s3://b/k", "503: Service Unavailable")])
    with caplog.at_level(logging.WARNING, logger="residency.retry"):
        assert policy.call("copy s3://b/k", fn) == "ok"
    assert len(calls) == 3
    assert len(sleeps) == 2 and all(0 <= s <= 4 for s in sleeps)  # full jitter, capped
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "SlowDown" in lines[0] and "503" in lines[1]


def test_permanent_errors_are_not_retried():
    sleeps: list[float] = []
    fn, calls = flaky([PermissionDenied("s3://b/k", "AccessDenied")])
    with pytest.raises(PermissionDenied):
        RetryPolicy(sleep=sleeps.append).call("stat", fn)
    assert len(calls) == 1 and sleeps == []


def test_gives_up_after_max_attempts_with_the_last_error():
    fn, calls = flaky([TransientError("u", f"reset {i}") for i in range(10)])
    with pytest.raises(TransientError, match="reset 2"):
        RetryPolicy(max_attempts=3, sleep=lambda s: None).call("read", fn)
    assert len(calls) == 3


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"initial_backoff": 0}, {"initial_backoff": 5, "max_backoff": 1}])
def test_bad_policy_is_refused(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)
