"""A whole small HTTP/1.1 response in one buffer, parsed in one call (pure-Python twin).

The proxy's client (:mod:`cygate.upstream.client`) reads responses with httptools (llhttp), one
Python callback per header. Most answers of an upstream are small: the whole response (status
line, headers, a ``Content-Length`` body) arrives in one read. :func:`parse_response` takes such
a buffer and returns everything at once, or ``None`` when the buffer is anything else. ``None``
is no verdict: the caller then feeds the same bytes to httptools, which decides (a partial
response, chunked or close-delimited bodies, 1xx, HTTP/1.0, obs-fold, duplicate or odd
``Content-Length``, unusual ``Connection`` tokens, invalid bytes). So this parser only has to be
right about what it accepts, and it accepts only what llhttp accepts the same way:

- ``HTTP/1.1 SSS[ reason]CRLF`` with ``SSS`` in 200..599 and a reason of HTAB, SP, visible
  ASCII or obs-text;
- header lines ``name:value CRLF``: the name 1 to 256 token characters, the value HTAB, SP,
  visible ASCII or obs-text, leading SP/HTAB dropped (trailing kept, as llhttp does); names
  come back lower-cased;
- ``Content-Length`` exactly once, 1 to 18 digits; no ``Transfer-Encoding``; ``Connection``
  at most once and then ``keep-alive`` or ``close`` (any case);
- the buffer ends exactly where the body ends (no body for 204 and 304, which need no
  ``Content-Length``, and for answers to HEAD, which do).

The compiled twin (:mod:`cygate.core._httpresp_c`) does the same in one pass over the bytes.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet

__all__ = ["Response", "parse_response"]

Response = tuple[int, list[tuple[bytes, bytes]], bool, "bytes | None", bytes]
"""``(status, headers, keep_alive, connection, body)``: headers as ``(lower-case name, value)``
in order, ``connection`` the ``Connection`` header's value (or ``None``)."""

_STATUS = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}):[ \t]*([\t\x20-\x7e\x80-\xff]*)")
_MAX_LENGTH_DIGITS = 18


def parse_response(
    data: bytes, head_only: bool = False, skip: AbstractSet[bytes] | None = None
) -> Response | None:
    """The response in ``data`` if it is exactly one simple, complete HTTP/1.1 response, else
    ``None`` (see the module's docstring). ``head_only``: it answers a HEAD request. Headers
    named in ``skip`` (lower-case) are left out of the list (``Content-Length`` and
    ``Connection`` are read all the same)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    m = _STATUS.fullmatch(lines[0])
    if m is None:
        return None
    status = int(m.group(1))
    headers: list[tuple[bytes, bytes]] = []
    length = -1
    connection: bytes | None = None
    keep_alive = True
    for line in lines[1:]:
        h = _HEADER.fullmatch(line)
        if h is None:
            return None
        name = h.group(1).lower()
        value = h.group(2)
        if name == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            return None
        elif name == b"connection":
            if connection is not None:
                return None
            token = value.lower()
            if token == b"close":
                keep_alive = False
            elif token != b"keep-alive":
                return None
            connection = value
        if skip is None or name not in skip:
            headers.append((name, value))
    start = end + 4
    if status == 204 or status == 304:
        length = 0
    elif length < 0:
        return None
    elif head_only:
        length = 0
    if len(data) != start + length:
        return None
    return status, headers, keep_alive, connection, data[start:]
