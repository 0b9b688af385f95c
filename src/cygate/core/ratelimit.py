"""Rate-limit decisions: GCRA over a bounded key table, and the table of Redis leases.

Selects the compiled implementation (:mod:`cygate.core._ratelimit_c`) when it is available and
allowed, else the pure-Python twin (:mod:`cygate.core._ratelimit_py`). Both are importable by
name from here (``GCRALimiterPy``, ``LeaseTablePy``; ``GCRALimiterC``, ``LeaseTableC`` when
compiled) so tests and benchmarks never depend on which one was picked.

Usage::

    limiter = GCRALimiter(interval_ns=12 * 10**9, burst=5)  # 5 per minute, 5 at once
    if limiter.hit("ip:203.0.113.9"):
        ...  # allowed; limiter.remaining, limiter.reset_ns describe the decision
    else:
        ...  # refused; limiter.retry_ns until one request would pass
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cygate._compat import NO_EXTENSIONS
from cygate.core._ratelimit_py import (
    DENIED,
    GRANTED,
    MAX_SPAN_NS,
    NEED_REDIS,
    GCRALimiterPy,
    LeaseTablePy,
    header_number,
    whole_seconds,
)

__all__ = [
    "DENIED",
    "GRANTED",
    "MAX_SPAN_NS",
    "NEED_REDIS",
    "GCRALimiter",
    "GCRALimiterPy",
    "LeaseTable",
    "LeaseTablePy",
    "header_number",
    "whole_seconds",
]

if TYPE_CHECKING:
    # Type checkers read the pure twin: same API, and real Python.
    GCRALimiter = GCRALimiterPy
    LeaseTable = LeaseTablePy
else:
    GCRALimiter = GCRALimiterPy
    LeaseTable = LeaseTablePy
    if not NO_EXTENSIONS:
        try:
            from cygate.core._ratelimit_c import GCRALimiterC, LeaseTableC
        except ImportError:  # pragma: no cover - not compiled (e.g. an editable pure install)
            pass
        else:
            GCRALimiter = GCRALimiterC
            LeaseTable = LeaseTableC
            __all__ += ["GCRALimiterC", "LeaseTableC"]
