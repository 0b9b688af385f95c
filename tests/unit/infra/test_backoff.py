"""The retry loops' back-off (cygate.infra.retry.Backoff): doubling from ``first`` up to
``cap``, back to ``first`` after a success, jitter only shortening a wait."""

from __future__ import annotations

import asyncio
import time

import pytest

from cygate.infra.retry import Backoff


def test_waits_double_up_to_the_cap() -> None:
    backoff = Backoff(0.05, 0.5)
    assert [backoff.next() for _ in range(6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])


def test_reset_starts_again_from_first() -> None:
    backoff = Backoff(0.1, 5.0)
    backoff.next(), backoff.next(), backoff.next()
    backoff.reset()
    assert backoff.next() == 0.1
    assert backoff.next() == 0.2


def test_another_factor() -> None:
    backoff = Backoff(1.0, 100.0, factor=3.0)
    assert [backoff.next() for _ in range(4)] == [1.0, 3.0, 9.0, 27.0]


def test_jitter_shortens_each_wait_by_at_most_its_fraction() -> None:
    draws = iter([0.0, 1.0, 0.5, 0.0])
    backoff = Backoff(1.0, 8.0, jitter=0.5, random_fn=lambda: next(draws))
    assert backoff.next() == 1.0  # no shortening
    assert backoff.next() == 1.0  # 2.0 shortened by half
    assert backoff.next() == 3.0  # 4.0 shortened by a quarter
    assert backoff.next() == 8.0  # the growth ignores the jitter: 8.0 (the cap), not 6.0


def test_jitter_stays_within_bounds_with_the_real_generator() -> None:
    backoff = Backoff(0.1, 0.1, jitter=0.3)
    for _ in range(200):
        assert 0.07 - 1e-12 <= backoff.next() <= 0.1


@pytest.mark.parametrize(
    ("first", "cap", "kwargs"),
    [(0.0, 1.0, {}), (2.0, 1.0, {}), (0.1, 1.0, {"factor": 0.5}), (0.1, 1.0, {"jitter": 1.5})],
)
def test_bad_arguments_are_refused(first: float, cap: float, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(first, cap, **kwargs)


def test_sleep_waits_the_next_delay_and_says_how_long() -> None:
    async def go() -> tuple[float, float, float]:
        backoff = Backoff(0.01, 0.02)
        start = time.monotonic()
        first = await backoff.sleep()
        second = await backoff.sleep()
        return first, second, time.monotonic() - start

    first, second, took = asyncio.run(go())
    assert (first, second) == (0.01, 0.02)
    assert took >= 0.029
