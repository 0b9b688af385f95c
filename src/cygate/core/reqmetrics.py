"""Per-worker request series: the edge records each request here (``Metrics`` is built on it).

Selects the compiled implementation (:mod:`cygate.core._reqmetrics_c`) when it is available and
allowed, else the pure-Python twin (:mod:`cygate.core._reqmetrics_py`), which documents both.

Usage::

    started = time.perf_counter()
    ...
    recorder.observe_since(route_name, method, status, started)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cygate._compat import NO_EXTENSIONS
from cygate.core._reqmetrics_py import BUCKETS
from cygate.core._reqmetrics_py import RequestRecorder as RequestRecorderPy
from cygate.core._reqmetrics_py import RequestSeries as RequestSeriesPy
from cygate.core._reqmetrics_py import Tally as TallyPy

__all__ = [
    "BUCKETS",
    "RequestRecorder",
    "RequestRecorderPy",
    "RequestSeries",
    "RequestSeriesPy",
    "Tally",
    "TallyPy",
]

if TYPE_CHECKING:
    # Type checkers read the pure twin: same API, and real Python.
    RequestRecorder = RequestRecorderPy
    RequestSeries = RequestSeriesPy
    Tally = TallyPy
else:
    RequestRecorder = RequestRecorderPy
    RequestSeries = RequestSeriesPy
    Tally = TallyPy
    if not NO_EXTENSIONS:
        try:
            from cygate.core._reqmetrics_c import RequestRecorder as RequestRecorderC
            from cygate.core._reqmetrics_c import RequestSeries as RequestSeriesC
            from cygate.core._reqmetrics_c import Tally as TallyC
        except ImportError:  # pragma: no cover - not compiled (e.g. an editable pure install)
            pass
        else:
            RequestRecorder = RequestRecorderC
            RequestSeries = RequestSeriesC
            Tally = TallyC
            __all__ += ["RequestRecorderC", "RequestSeriesC", "TallyC"]
