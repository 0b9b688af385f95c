"""The edge's fused hit path: a fresh L1 hit of a plain GET answered in one call.

Selects the compiled implementation (:mod:`cygate.edge._hitpath_c`) when it is available and
allowed, else the pure-Python twin (:mod:`cygate.edge._hitpath_py`), which documents both.

Usage (the edge builds it over a :class:`~cygate.edge.hitplan.HitPlan`; see
``Edge._rebuild_hit_path``)::

    sending = hit_path.serve(scope, send)   # None: serve the request the general way
    if sending is not None:
        await sending                       # both messages sent, the request counted
    else:
        head = hit_path.last_head           # its scan of the headers (None: not scanned)

With an access log, the edge serves through ``LoggedHitPath(hit_path, access_log)``, which
records the hits the log samples (none of that cost without one).
``scan_head`` is the edge's one scan of a request's headers (``Head``), the general path's
too. ``EntryHot`` is the record of a cache entry the compiled one reads (``Entry.hot``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cygate._compat import NO_EXTENSIONS
from cygate.edge._hitpath_py import EntryHot as EntryHotPy
from cygate.edge._hitpath_py import Head as HeadPy
from cygate.edge._hitpath_py import Hit as HitPy
from cygate.edge._hitpath_py import HitPath as HitPathPy
from cygate.edge._hitpath_py import LoggedHitPath as LoggedHitPathPy
from cygate.edge._hitpath_py import scan_head as scan_head_py

__all__ = [
    "EntryHot",
    "EntryHotPy",
    "Head",
    "HeadPy",
    "Hit",
    "HitPath",
    "HitPathPy",
    "HitPy",
    "LoggedHitPath",
    "LoggedHitPathPy",
    "scan_head",
    "scan_head_py",
]

if TYPE_CHECKING:
    # Type checkers read the pure twin: same API, and real Python.
    EntryHot = EntryHotPy
    Head = HeadPy
    Hit = HitPy
    HitPath = HitPathPy
    LoggedHitPath = LoggedHitPathPy
    scan_head = scan_head_py
else:
    EntryHot = EntryHotPy
    Head = HeadPy
    Hit = HitPy
    HitPath = HitPathPy
    LoggedHitPath = LoggedHitPathPy
    scan_head = scan_head_py
    if not NO_EXTENSIONS:
        try:
            from cygate.edge._hitpath_c import EntryHot as EntryHotC
            from cygate.edge._hitpath_c import Head as HeadC
            from cygate.edge._hitpath_c import Hit as HitC
            from cygate.edge._hitpath_c import HitPath as HitPathC
            from cygate.edge._hitpath_c import LoggedHitPath as LoggedHitPathC
            from cygate.edge._hitpath_c import scan_head as scan_head_c
        except ImportError:  # pragma: no cover - not compiled (e.g. an editable pure install)
            pass
        else:
            EntryHot = EntryHotC
            Head = HeadC
            Hit = HitC
            HitPath = HitPathC
            LoggedHitPath = LoggedHitPathC
            scan_head = scan_head_c
            __all__ += ["EntryHotC", "HeadC", "HitC", "HitPathC", "LoggedHitPathC", "scan_head_c"]
