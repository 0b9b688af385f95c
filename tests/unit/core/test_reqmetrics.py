"""The request series (``core/reqmetrics``), compiled and pure: the same counts, sums and
buckets, the bucket of a value on a bound, and the clock of ``observe_since``."""

from __future__ import annotations

import math
import time
from bisect import bisect_left

import pytest

from core_impls import CoreImplementation
from cygate.core.reqmetrics import BUCKETS

VALUES = [0.0, 0.0001, BUCKETS[0], 0.00051, 0.001, 0.2, 0.25, 9.99, 10.0, 10.01, 1e9, math.nan]


def test_series_count_sum_and_buckets(core_impl: CoreImplementation) -> None:
    series = core_impl.module("reqmetrics").RequestSeries()
    for v in VALUES[:-1]:
        series.observe(v)
    data = series.as_list()
    assert len(data) == len(BUCKETS) + 3
    assert data[0] == len(VALUES) - 1
    assert data[1] == pytest.approx(sum(VALUES[:-1]))
    expected = [0.0] * (len(BUCKETS) + 1)
    for v in VALUES[:-1]:
        expected[bisect_left(BUCKETS, v)] += 1  # a value on a bound is in that bound's bucket
    assert data[2:] == expected
    assert data[2] == 3  # 0.0, 0.0001 and exactly 0.0005
    assert data[-1] == 2  # above the last bound: +Inf only


def test_nan_lands_where_bisect_puts_it(core_impl: CoreImplementation) -> None:
    series = core_impl.module("reqmetrics").RequestSeries()
    series.observe(math.nan)
    assert series.as_list()[2 + bisect_left(BUCKETS, math.nan)] == 1


def test_recorder_keys_by_route_method_and_status(core_impl: CoreImplementation) -> None:
    recorder = core_impl.module("reqmetrics").RequestRecorder()
    assert not recorder._dirty
    recorder.observe("GET /x", "GET", 200, 0.001)
    recorder.observe("GET /x", "GET", 200, 0.002)
    recorder.observe("GET /x", "HEAD", 200, 0.001)
    recorder.observe("GET /x", "GET", 404, 0.001)
    assert recorder._dirty
    counts = {k: v.as_list()[0] for k, v in recorder._series.items()}
    assert counts == {
        ("GET /x", "GET", 200): 2,
        ("GET /x", "HEAD", 200): 1,
        ("GET /x", "GET", 404): 1,
    }


def test_observe_since_reads_the_perf_counter_clock(core_impl: CoreImplementation) -> None:
    recorder = core_impl.module("reqmetrics").RequestRecorder()
    before = time.perf_counter()
    time.sleep(0.02)
    recorder.observe_since("GET /x", "GET", 200, before)
    elapsed = time.perf_counter() - before
    (series,) = recorder._series.values()
    seconds = series.as_list()[1]
    # The same clock: never less than the sleep, never more than what perf_counter saw after.
    assert 0.02 <= seconds <= elapsed


def test_tally_counts_in_place(core_impl: CoreImplementation) -> None:
    tally = core_impl.module("reqmetrics").Tally()
    assert tally.value == 0.0 and type(tally.value) is float
    for _ in range(3):
        tally.value += 1
    tally.value += 0.5
    assert tally.value == 3.5
