"""Request routing: path normalisation and the route table.

Selects the compiled implementation (:mod:`cygate.core._router_c`) when it is available and
allowed, else the pure-Python twin (:mod:`cygate.core._router_py`). Both are always importable
by name from here (``RouterPy``, ``normalize_path_py``; ``RouterC``, ``normalize_path_c`` when
compiled) so tests and benchmarks never depend on which one was picked.

Usage::

    router = Router()
    router.add("GET", "/api/v1/products/{id:uuid}", get_product)
    result = router.match("GET", normalize_path(scope["raw_path"]), host)
    if result.kind is FOUND:
        ...  # result.value, result.params
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cygate._compat import NO_EXTENSIONS
from cygate.core._router_py import (
    BAD_PARAM,
    FOUND,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    MatchKind,
    PathError,
    RouteConflict,
    RouteMatch,
    RouterPy,
)
from cygate.core._router_py import normalize_path as normalize_path_py

__all__ = [
    "BAD_PARAM",
    "FOUND",
    "METHOD_NOT_ALLOWED",
    "NOT_FOUND",
    "MatchKind",
    "PathError",
    "RouteConflict",
    "RouteMatch",
    "Router",
    "RouterPy",
    "normalize_path",
    "normalize_path_py",
]

if TYPE_CHECKING:
    # Type checkers read the pure twin: same API, and real Python.
    Router = RouterPy
    normalize_path = normalize_path_py
else:
    Router = RouterPy
    normalize_path = normalize_path_py
    if not NO_EXTENSIONS:
        try:
            from cygate.core._router_c import RouterC
            from cygate.core._router_c import normalize_path as normalize_path_c
        except ImportError:  # pragma: no cover - not compiled (e.g. an editable pure install)
            pass
        else:
            Router = RouterC
            normalize_path = normalize_path_c
            __all__ += ["RouterC", "normalize_path_c"]
