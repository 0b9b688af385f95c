"""Request and trace ids made from random bytes: the pure-Python twin of ``_ids_c``.

Each 36 random bytes make one request's ids: a 96-bit request id (24 lower-case hex digits)
and a new trace's W3C ``traceparent`` (``00-<32 hex trace id>-<16 hex span id>-01``).
:class:`IdMinter` is the edge's one source of them (its general path and its fused hit path
take from the same minter): it owns the random source, the batch and the reset after a fork.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable

__all__ = ["ITEM", "IdMinter", "format_ids", "valid_request_id", "valid_traceparent"]

ITEM = 36
"""Random bytes per request: 12 request id, 16 trace id, 8 span id."""

_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT_RE = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE = b"00-" + b"0" * 32
_ZERO_SPAN = b"-" + b"0" * 16 + b"-"


def valid_request_id(value: bytes) -> bool:
    """An ``X-Request-ID`` the edge keeps: 1-128 of ``[A-Za-z0-9._:-]``."""
    return _REQUEST_ID_RE.fullmatch(value) is not None


def valid_traceparent(value: bytes) -> bool:
    """A ``traceparent`` the edge keeps: version 00, lower-case hex ids, neither the all-zero
    trace id nor the all-zero parent id (W3C Trace Context forbids both)."""
    return (
        _TRACEPARENT_RE.fullmatch(value) is not None
        and not value.startswith(_ZERO_TRACE)
        and value[35:53] != _ZERO_SPAN
    )


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


BATCH = 256
"""Requests' ids made per draw of random bytes (:class:`IdMinter`)."""

_forks = 0


def _after_fork() -> None:
    global _forks
    _forks += 1  # every IdMinter reseeds, and drops the ids it made, before its next id


os.register_at_fork(after_in_child=_after_fork)


class IdMinter:
    """Fresh ``(request id, the same as ASCII bytes, traceparent)`` triples, each one new.

    PERF: ids need uniqueness, not secrecy. ``os.urandom`` is a system call per draw; a
    per-process generator seeded from it is not. The triples are made :data:`BATCH` at a time
    (one random draw and one :func:`format_ids` for a batch of requests). After a fork the
    generator is seeded anew from ``seed`` and the batch of before is dropped, so two workers
    never share a sequence. ``seed(32)`` gives the 32 bytes each seeding uses (``os.urandom``;
    tests pass a fixed one to replay a sequence)."""

    __slots__ = ("_batch", "_forks", "_rng", "_seed")

    def __init__(self, seed: Callable[[int], bytes] = os.urandom) -> None:
        self._seed = seed
        self._rng = random.Random(0)
        self._batch: list[tuple[str, bytes, bytes]] = []
        self._forks = _forks - 1  # seeded at the first id it makes

    def take(self) -> tuple[str, bytes, bytes]:
        """A new request's ids: a 96-bit request id (24 hex digits, as ``str`` and as bytes)
        and a new trace's ``traceparent`` (never the all-zero ids W3C Trace Context forbids)."""
        batch = self._batch
        if self._forks != _forks:
            self._rng.seed(self._seed(32))
            batch.clear()
            self._forks = _forks
        while not batch:  # (a batch of nothing but all-zero ids: never, in practice)
            batch.extend(format_ids(self._rng.randbytes(ITEM * BATCH)))
        return batch.pop()
