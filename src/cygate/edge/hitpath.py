"""The edge's fused hit path: a fresh L1 hit of a plain GET answered in one call.

Selects the compiled implementation (:mod:`cygate.edge._hitpath_c`) when it is available and
allowed, else the pure-Python twin (:mod:`cygate.edge._hitpath_py`), which documents both.

Usage (the edge builds it; see ``Edge._rebuild_hit_path``)::

    sending = hit_path.serve(scope, send)   # None: serve the request the general way
    if sending is not None:
        await sending                       # both messages sent, the request counted

``EntryHot`` is the record of a cache entry the compiled one reads (``Entry._hot``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cygate._compat import NO_EXTENSIONS
from cygate.edge._hitpath_py import EntryHot as EntryHotPy
from cygate.edge._hitpath_py import Hit as HitPy
from cygate.edge._hitpath_py import HitPath as HitPathPy

__all__ = ["EntryHot", "EntryHotPy", "Hit", "HitPath", "HitPathPy", "HitPy"]

if TYPE_CHECKING:
    # Type checkers read the pure twin: same API, and real Python.
    EntryHot = EntryHotPy
    Hit = HitPy
    HitPath = HitPathPy
else:
    EntryHot = EntryHotPy
    Hit = HitPy
    HitPath = HitPathPy
    if not NO_EXTENSIONS:
        try:
            from cygate.edge._hitpath_c import EntryHot as EntryHotC
            from cygate.edge._hitpath_c import Hit as HitC
            from cygate.edge._hitpath_c import HitPath as HitPathC
        except ImportError:  # pragma: no cover - not compiled (e.g. an editable pure install)
            pass
        else:
            EntryHot = EntryHotC
            Hit = HitC
            HitPath = HitPathC
            __all__ += ["EntryHotC", "HitC", "HitPathC"]
