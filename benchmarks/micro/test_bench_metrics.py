"""Recording one request in the worker's metrics: the compiled recorder vs its pure twin.

What the edge does in its ``finally`` for every request: ``observe_since(route, method,
status, started)`` (the clock read, the series found by key, count, sum and bucket). One round
= 100 requests over a mix of 6 series (two routes, a HEAD, a 404 and a 429).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from cygate.core import _reqmetrics_py
from cygate.core.reqmetrics import RequestRecorder

GROUP = "metrics: record one request (observe_since, 6-series mix)"
MIX = [
    ("GET /api/v1/products/{product_id:uuid}", "GET", 200),
    ("GET /api/v1/products/{product_id:uuid}", "HEAD", 200),
    ("GET /api/v1/products/{product_id:uuid}", "GET", 404),
    ("GET /api/v1/products/{product_id:uuid}", "GET", 429),
    ("GET /api/v1/categories", "GET", 200),
    ("POST /api/v1/orders", "POST", 201),
] * 17
MIX = MIX[:100]


def _round(recorder: Any) -> Callable[[], None]:
    observe = recorder.observe_since

    def run() -> None:
        started = time.perf_counter()
        for route, method, status in MIX:
            observe(route, method, status, started)

    return run


@pytest.mark.parametrize(
    "impl",
    [
        pytest.param(RequestRecorder, id="cygate"),
        pytest.param(_reqmetrics_py.RequestRecorder, id="pure_twin"),
    ],
)
def test_record(impl: type, micro: Callable[..., Any]) -> None:
    recorder = impl()
    run = _round(recorder)
    run()
    assert sum(s.as_list()[0] for s in recorder._series.values()) == len(MIX)
    micro(run, group=GROUP, ops=len(MIX))
