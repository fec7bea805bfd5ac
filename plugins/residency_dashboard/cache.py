"""A small time-to-live cache: one computation per key at a time, kept for a few seconds.

The dashboard's pages refresh themselves every few seconds and several managers may
watch the same migration: each ledger is asked once per key and period, however
many requests arrive.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    """Values by key for ``ttl`` seconds.

    Concurrent requests for the same key wait for one computation instead of each
    running it. A computation that raises is not cached: the next request tries again.

    Args:
        ttl: seconds a value is served after it was computed.
        clock: a monotonic clock (tests pass their own).
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl < 0:
            raise ValueError(f"ttl must be >= 0, got {ttl!r}")
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[Hashable, tuple[float, V]] = {}
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value of ``key``, or ``compute()`` stored for ``ttl`` seconds."""
        with self._lock:
            hit = self._fresh(key)
            if hit is not None:
                return hit[1]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._fresh(key)
                if hit is not None:
                    return hit[1]
            value = compute()
            with self._lock:
                now = self._clock()
                self._values[key] = (now + self.ttl, value)
                self._prune(now)
            return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def _fresh(self, key: Hashable) -> tuple[float, V] | None:
        hit = self._values.get(key)
        return hit if hit is not None and hit[0] > self._clock() else None

    def _prune(self, now: float) -> None:
        # Keys come from URLs (migration, run): drop what expired so the map stays small.
        if len(self._values) > 256:
            for key in [k for k, (expires, _) in self._values.items() if expires <= now]:
                self._values.pop(key, None)
                self._key_locks.pop(key, None)
