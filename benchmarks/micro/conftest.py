"""Shared by every micro-benchmark: ``micro`` times a workload of several operations per round.

Each case records ``extra_info["ops"]`` (operations per round) so that
``benchmarks/report_micro.py`` can print the time per operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

Micro = Callable[..., Any]


@pytest.fixture
def micro(benchmark: Any) -> Micro:
    """``micro(fn, group=..., ops=...)``: benchmark ``fn()`` (one round = ``ops`` operations)."""

    def run(fn: Callable[[], Any], *, group: str, ops: int) -> Any:
        benchmark.group = group
        benchmark.extra_info["ops"] = ops
        return benchmark(fn)

    return run
