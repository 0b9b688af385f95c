"""Per-worker request series (count, sum, latency buckets by route, method and status): the
pure-Python twin of ``_reqmetrics_c``, and the base class of :class:`cygate.infra.metrics.Metrics`.

The edge records every request once, in its ``finally``: :meth:`RequestRecorder.observe_since`
takes the ``time.perf_counter()`` reading from the request's start and does the rest. Each
series is ``[count, sum_seconds, bucket_0, ..., bucket_n-1, +Inf bucket]`` where a bucket counts
the observations of at most its bound and above the one before (``bisect_left``); the exporter
makes them cumulative.

PERF: in Python, recording is a visible share of a cache hit's instructions (a key tuple, three
floats made and dropped, ``bisect``, the clock read and the subtraction; figures:
docs/benchmarks.md); compiled, the series are C doubles and the clock is read in C.
"""

from __future__ import annotations

import time
from bisect import bisect_left

__all__ = ["BUCKETS", "RequestRecorder", "RequestSeries", "Tally"]

# Seconds. Fine-grained at the low end: the gateway's own work is measured in microseconds.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_NB = len(BUCKETS)


class Tally:
    """A counter for hot paths: its owner bumps ``tally.value += 1`` (no call, no dict look-up);
    the metrics snapshot reads ``value``. (``cygate.infra.metrics.Counter`` is this class.)

    Compiled, ``value`` is a C double: a compiled caller adds to it in place, with no number
    object made per bump (the fused hit path counts its rate-limit decisions so)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class RequestSeries:
    """One (route, method, status) series."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data = [0.0] * (_NB + 3)

    def observe(self, seconds: float) -> None:
        data = self._data
        data[0] += 1
        data[1] += seconds
        data[2 + bisect_left(BUCKETS, seconds)] += 1

    def as_list(self) -> list[float]:
        """``[count, sum, bucket_0, ..., +Inf bucket]`` (a copy)."""
        return list(self._data)


class RequestRecorder:
    """The request series of one worker, keyed by (route, method, status)."""

    __slots__ = ("_dirty", "_series")

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, int], RequestSeries] = {}
        self._dirty = False
        """Something was recorded since the last snapshot was written."""

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request that took ``seconds``."""
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = RequestSeries()
        series.observe(seconds)
        self._dirty = True

    def observe_since(self, route: str, method: str, status: int, started: float) -> None:
        """Count one request that started at ``started`` (a ``time.perf_counter()`` reading)."""
        self.observe(route, method, status, time.perf_counter() - started)
