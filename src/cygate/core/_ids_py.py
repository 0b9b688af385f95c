"""Request and trace ids made from random bytes: the pure-Python twin of ``_ids_c``.

The edge draws random bytes in batches (see :mod:`cygate.edge.edge`) and turns each 36 of them
into one request's ids: a 96-bit request id (24 lower-case hex digits) and a new trace's W3C
``traceparent`` (``00-<32 hex trace id>-<16 hex span id>-01``).
"""

from __future__ import annotations

import re

__all__ = ["ITEM", "format_ids", "valid_request_id", "valid_traceparent"]

ITEM = 36
"""Random bytes per request: 12 request id, 16 trace id, 8 span id."""

_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT_RE = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE = b"00-" + b"0" * 32


def valid_request_id(value: bytes) -> bool:
    """An ``X-Request-ID`` the edge keeps: 1-128 of ``[A-Za-z0-9._:-]``."""
    return _REQUEST_ID_RE.fullmatch(value) is not None


def valid_traceparent(value: bytes) -> bool:
    """A ``traceparent`` the edge keeps: version 00, lower-case hex ids, not the all-zero trace
    id (W3C Trace Context forbids it)."""
    return _TRACEPARENT_RE.fullmatch(value) is not None and not value.startswith(_ZERO_TRACE)


def format_ids(raw: bytes) -> list[tuple[str, bytes, bytes]]:
    """One ``(request id, the same as ASCII bytes, traceparent)`` per whole 36 bytes of ``raw``,
    in order; a chunk whose trace id or span id is all zero (W3C Trace Context forbids both)
    gives none."""
    digits = raw.hex()
    out = []
    for i in range(0, len(raw) // ITEM * 2 * ITEM, 2 * ITEM):
        trace, span = digits[i + 24 : i + 56], digits[i + 56 : i + 72]
        if trace.strip("0") and span.strip("0"):
            rid = digits[i : i + 24]
            out.append((rid, rid.encode(), f"00-{trace}-{span}-01".encode()))
    return out
