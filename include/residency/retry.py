"""Retries: tenacity with full-jitter exponential backoff and a total deadline.

Only :class:`~residency.errors.TransientError` is retried (throttling, 5xx,
connection resets, timeouts); permanent errors (403, 404, bad request) surface at
once. SDK clients are built with their own retries off (see
:mod:`residency.connections`) so that attempts do not multiply.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import tenacity

from .errors import ResidencyError, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. ``sleep`` is injectable so tests never wait for real."""

    max_attempts: int = 8
    initial_backoff: float = 0.2
    max_backoff: float = 20.0
    deadline: float = 300.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff <= 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("backoff must satisfy 0 < initial_backoff <= max_backoff")

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; retry transient errors; log each retry with its reason."""

        def _log_retry(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "retry %s: attempt %d failed (%s); next try in %.2fs",
                what,
                state.attempt_number,
                exc,
                state.next_action.sleep if state.next_action else 0.0,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            wait=tenacity.wait_random_exponential(
                multiplier=self.initial_backoff, max=self.max_backoff
            ),
            stop=tenacity.stop_after_attempt(self.max_attempts)
            | tenacity.stop_after_delay(self.deadline),
            sleep=self.sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        return retrying(fn)

    def call_translated(
        self, what: str, uri: str, fn: Callable[[], T], translate: Callable[[Exception, str], Exception]
    ) -> T:
        """Like :meth:`call` for an SDK call: its exceptions become the project's own
        (``translate`` re-raises kinds it does not know) before retrying is decided."""

        def attempt() -> T:
            try:
                return fn()
            except ResidencyError:
                raise
            except Exception as exc:
                raise translate(exc, uri) from exc

        return self.call(f"{what} {uri}", attempt)


DEFAULT_RETRY = RetryPolicy()
