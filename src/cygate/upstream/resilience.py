"""Resilience for one upstream: a circuit breaker, a bulkhead and a retry budget.

All three are per worker process (one event loop, no locks): each Granian worker protects itself,
so a breaker opens in every worker that sees the failures. That keeps the hot path free of
shared state; see ``docs/upstreams.md``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Bulkhead", "CircuitBreaker", "RetryBudget", "Shed"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class Shed(Exception):
    """The bulkhead refused the request (queue full, or waited too long in the queue)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive failures; open answers at once
    for ``open_seconds``; then half-open lets ``half_open_requests`` probes through: as many
    successes close it, any failure opens it again (for the same time).

    ``on_change(old, new)`` is called on every transition (metrics, log).
    """

    __slots__ = (
        "_clock",
        "_failures",
        "_in_flight",
        "_on_change",
        "_opened_at",
        "_successes",
        "failure_threshold",
        "half_open_requests",
        "open_seconds",
        "state",
    )

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        open_seconds: float = 10.0,
        half_open_requests: int = 1,
        on_change: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self.half_open_requests = half_open_requests
        self.state = CLOSED
        self._failures = 0
        self._successes = 0
        self._in_flight = 0
        self._opened_at = 0.0
        self._on_change = on_change
        self._clock = clock

    def _move(self, new: str) -> None:
        old, self.state = self.state, new
        if new == OPEN:
            self._opened_at = self._clock()
        self._failures = self._successes = self._in_flight = 0
        if self._on_change is not None and old != new:
            self._on_change(old, new)

    def allow(self) -> bool:
        """May a request go to the upstream now? (A half-open admission must be followed by
        exactly one :meth:`record`.)"""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            if self._clock() - self._opened_at < self.open_seconds:
                return False
            self._move(HALF_OPEN)
        if self._in_flight >= self.half_open_requests:
            return False
        self._in_flight += 1
        return True

    def record(self, ok: bool) -> None:
        """The outcome of one admitted request."""
        state = self.state
        if state == CLOSED:
            if ok:
                self._failures = 0
            else:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._move(OPEN)
        elif state == HALF_OPEN:
            self._in_flight = max(0, self._in_flight - 1)
            if not ok:
                self._move(OPEN)
            else:
                self._successes += 1
                if self._successes >= self.half_open_requests:
                    self._move(CLOSED)
        # OPEN: an outcome of a request admitted before it opened changes nothing.

    def release(self) -> None:
        """An admitted request ended without a verdict on the upstream (shed, client gone)."""
        if self.state == HALF_OPEN and self._in_flight:
            self._in_flight -= 1

    def retry_after(self) -> int:
        """Whole seconds until the breaker lets a probe through (at least 1)."""
        if self.state != OPEN:
            return 1
        left = self.open_seconds - (self._clock() - self._opened_at)
        return max(1, math.ceil(left))

    def view(self) -> dict[str, object]:
        out: dict[str, object] = {"state": self.state, "consecutive_failures": self._failures}
        if self.state == OPEN:
            out["retry_after"] = self.retry_after()
        return out


class Bulkhead:
    """At most ``max_concurrent`` requests in flight to the upstream; up to ``max_queue`` more
    wait (first come, first served) at most ``queue_timeout`` seconds; the rest are shed at
    once, so one slow upstream cannot tie up the whole worker."""

    __slots__ = ("_waiters", "active", "max_concurrent", "max_queue", "queue_timeout")

    def __init__(self, *, max_concurrent: int, max_queue: int, queue_timeout: float) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot without waiting (PERF: the common case creates no future)."""
        if self.active < self.max_concurrent and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Take a slot, waiting in the queue (at most ``timeout``, or the queue timeout, if
        shorter) if there is room; raise :class:`Shed` if not."""
        if self.try_acquire():
            return
        if len(self._waiters) >= self.max_queue:
            raise Shed("queue full")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            wait = self.queue_timeout if timeout is None else min(timeout, self.queue_timeout)
            async with asyncio.timeout(wait):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as the wait ended: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise Shed("queue timeout") from None
            raise

    def release(self) -> None:
        """Give the slot back, or hand it straight to the first live waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: ``active`` is unchanged
                return
        self.active -= 1

    def view(self) -> dict[str, int]:
        return {
            "active": self.active,
            "queued": self.queued,
            "max_concurrent": self.max_concurrent,
            "max_queue": self.max_queue,
        }


class RetryBudget:
    """Retries may add at most ``ratio`` of the requests (plus ``min_per_second`` retries a
    second for quiet periods), so retries cannot multiply the load on a struggling upstream.

    A token bucket: each request deposits ``ratio`` tokens, each retry withdraws one; time adds
    ``min_per_second``; the balance is capped at what ``window`` seconds would deposit.
    """

    __slots__ = ("_balance", "_clock", "_last", "cap", "min_per_second", "ratio")

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 3.0,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.cap = max(1.0, min_per_second * window)
        self._clock = clock
        self._last = clock()
        self._balance = self.cap

    def deposit(self) -> None:
        """One original request was sent."""
        balance = self._balance + self.ratio
        self._balance = balance if balance < self.cap else self.cap

    def try_withdraw(self) -> bool:
        """May one retry go out now?"""
        now = self._clock()
        self._balance = min(self.cap, self._balance + (now - self._last) * self.min_per_second)
        self._last = now
        if self._balance >= 1.0 - 1e-9:  # ten deposits of 0.1 make one retry
            self._balance -= 1.0
            return True
        return False

    @property
    def balance(self) -> float:
        return self._balance
