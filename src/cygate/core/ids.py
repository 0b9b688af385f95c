"""Request and trace ids made from random bytes (the edge's per-request ids).

Selects the compiled implementation (:mod:`cygate.core._ids_c`) when it is available and
allowed, else the pure-Python twin (:mod:`cygate.core._ids_py`); ``format_ids_py`` and
``IdMinterPy`` are always importable, ``format_ids_c`` and ``IdMinterC`` when compiled.

Usage::

    minter = IdMinter()   # the edge's one (its general path and its fused hit path)
    request_id, request_id_bytes, traceparent = minter.take()

    for request_id, request_id_bytes, traceparent in format_ids(rng.randbytes(36 * 256)):
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cygate._compat import NO_EXTENSIONS
from cygate.core._ids_py import ITEM, valid_request_id, valid_traceparent
from cygate.core._ids_py import IdMinter as IdMinterPy
from cygate.core._ids_py import format_ids as format_ids_py

__all__ = [
    "ITEM",
    "IdMinter",
    "IdMinterPy",
    "format_ids",
    "format_ids_py",
    "valid_request_id",
    "valid_traceparent",
]

if TYPE_CHECKING:
    IdMinter = IdMinterPy
    format_ids = format_ids_py
else:
    IdMinter = IdMinterPy
    format_ids = format_ids_py
    if not NO_EXTENSIONS:
        try:
            from cygate.core._ids_c import IdMinter as IdMinterC
            from cygate.core._ids_c import format_ids as format_ids_c
        except ImportError:  # pragma: no cover - not compiled (e.g. an editable pure install)
            pass
        else:
            IdMinter = IdMinterC
            format_ids = format_ids_c
            __all__ += ["IdMinterC", "format_ids_c"]
