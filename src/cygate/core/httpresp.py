"""One whole small HTTP/1.1 response parsed in one call (the proxy client's fast path).

Selects the compiled implementation (:mod:`cygate.core._httpresp_c`) when it is available and
allowed, else the pure-Python twin (:mod:`cygate.core._httpresp_py`). Both are importable by
name (``parse_response_py``; ``parse_response_c`` when compiled).

Usage::

    parsed = parse_response(data, head_only)
    if parsed is None:
        ...  # not one simple complete response: let httptools read it
    status, headers, keep_alive, connection, body = parsed
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cygate._compat import NO_EXTENSIONS
from cygate.core._httpresp_py import Response
from cygate.core._httpresp_py import parse_response as parse_response_py

__all__ = ["Response", "parse_response", "parse_response_py"]

if TYPE_CHECKING:
    parse_response = parse_response_py
else:
    parse_response = parse_response_py
    if not NO_EXTENSIONS:
        try:
            from cygate.core._httpresp_c import parse_response as parse_response_c
        except ImportError:  # pragma: no cover - not compiled (e.g. an editable pure install)
            pass
        else:
            parse_response = parse_response_c
            __all__ += ["parse_response_c"]
