"""Circuit breaker, bulkhead and retry budget on their own (a fake clock where time matters)."""

from __future__ import annotations

import asyncio

import pytest

from cygate.upstream.resilience import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Bulkhead,
    CircuitBreaker,
    RetryBudget,
    Shed,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_closes_after_probe() -> None:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    b = CircuitBreaker(
        failure_threshold=3,
        open_seconds=10,
        half_open_requests=1,
        clock=clock,
        on_change=lambda a, c: changes.append((a, c)),
    )
    for _ in range(2):
        assert b.allow()
        b.record(False)
    assert b.allow()
    b.record(True)  # a success resets the count: failures must be consecutive
    for _ in range(3):
        assert b.allow()
        b.record(False)
    assert b.state == OPEN
    assert not b.allow()
    assert b.retry_after() == 10
    clock.now += 9.5
    assert not b.allow()
    assert b.retry_after() == 1
    clock.now += 0.5
    assert b.allow()  # the one probe
    assert b.state == HALF_OPEN
    assert not b.allow()  # only one probe at a time
    b.record(True)
    assert b.state == CLOSED
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_breaker_half_open_failure_reopens_for_the_full_time() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, open_seconds=5, clock=clock)
    b.allow()
    b.record(False)
    clock.now += 5
    assert b.allow()
    b.record(False)
    assert b.state == OPEN
    assert b.retry_after() == 5


def test_breaker_release_frees_a_probe_without_a_verdict() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, open_seconds=1, clock=clock)
    b.allow()
    b.record(False)
    clock.now += 1
    assert b.allow()
    b.release()
    assert b.state == HALF_OPEN
    assert b.allow()


async def test_bulkhead_queues_then_sheds() -> None:
    bh = Bulkhead(max_concurrent=2, max_queue=1, queue_timeout=5)
    assert bh.try_acquire() and bh.try_acquire()
    assert not bh.try_acquire()
    waiter = asyncio.create_task(bh.acquire())
    await asyncio.sleep(0)
    assert bh.queued == 1
    with pytest.raises(Shed, match="queue full"):
        await bh.acquire()
    bh.release()  # hands the slot to the waiter
    await waiter
    assert bh.active == 2 and bh.queued == 0
    bh.release()
    bh.release()
    assert bh.active == 0


async def test_bulkhead_queue_timeout_sheds_and_cancelled_waiter_leaves_no_trace() -> None:
    bh = Bulkhead(max_concurrent=1, max_queue=4, queue_timeout=0.05)
    assert bh.try_acquire()
    with pytest.raises(Shed, match="queue timeout"):
        await bh.acquire()
    task = asyncio.create_task(bh.acquire())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bh.queued == 0
    bh.release()
    assert bh.active == 0


def test_retry_budget_limits_retries_to_a_ratio() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.1, min_per_second=0, window=10, clock=clock)
    # cap 1 token at min_per_second=0 (window floor): drain it first
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    for _ in range(10):
        budget.deposit()
    assert budget.try_withdraw()  # 10 requests x 0.1 = one retry
    assert not budget.try_withdraw()


def test_retry_budget_refills_with_time() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.0, min_per_second=2, window=10, clock=clock)
    while budget.try_withdraw():
        pass
    clock.now += 1.0
    assert budget.try_withdraw() and budget.try_withdraw()
    assert not budget.try_withdraw()
