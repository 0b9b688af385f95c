# cython: language_level=3
"""Request and trace ids made from random bytes; see :mod:`cygate.core._ids_py`.

PERF: in Python, the formatting of a request's ids (hex digits, the ``traceparent`` layout) is
a visible share of the edge's time on a cache hit (figures: docs/benchmarks.md); here each id
triple is three small objects and byte stores.

:class:`IdMinter` draws from a xoshiro256** generator instead of the twin's ``random.Random``
batches: the same ids (layout, never all-zero trace or span ids, new after a fork), another
sequence. Five steps of a 256-bit generator cost a few dozen instructions, far less than
``Random.randbytes`` and its big-integer conversion.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

ITEM = 36

cdef long _forks = 0


def _after_fork():
    global _forks
    _forks += 1  # every IdMinter seeds its generator anew before its next id


os.register_at_fork(after_in_child=_after_fork)


cdef inline uint64_t _rotl(uint64_t x, int k) noexcept:
    return (x << k) | (x >> (64 - k))

# _usable and _write_ids (and _hex, _zero): _ids_c.pxd (inline, shared with edge/_hitpath_c).


def format_ids(bytes raw not None):
    """One ``(request id, its ASCII bytes, traceparent)`` per whole 36 bytes of ``raw``; chunks
    with an all-zero trace or span id give none (same output as the pure twin)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t count = PyBytes_GET_SIZE(raw) // 36, i
    cdef const unsigned char* q
    cdef char rid[24]
    cdef char tp[55]
    cdef list out = []
    for i in range(count):
        q = p + i * 36
        if not _usable(q):
            continue
        _write_ids(q, rid, tp)
        out.append(
            (
                PyUnicode_DecodeASCII(rid, 24, NULL),
                PyBytes_FromStringAndSize(rid, 24),
                PyBytes_FromStringAndSize(tp, 55),
            )
        )
    return out


cdef class IdMinter:
    """See :class:`cygate.core._ids_py.IdMinter`: the same API and the same kind of ids, from a
    xoshiro256** generator seeded with ``seed(32)`` (and seeded anew after a fork); ``draw``
    is the C-level call of the compiled hit path (``_ids_c.pxd``)."""

    def __init__(self, seed=os.urandom):
        self._seed = seed
        self._forks = _forks - 1  # seeded at the first id it makes

    cpdef tuple take(self):
        """See :meth:`cygate.core._ids_py.IdMinter.take`."""
        cdef char rid[24]
        cdef char tp[55]
        _write_ids(self.draw(), rid, tp)
        return (
            PyUnicode_DecodeASCII(rid, 24, NULL),
            PyBytes_FromStringAndSize(rid, 24),
            PyBytes_FromStringAndSize(tp, 55),
        )

    cdef const unsigned char* draw(self) except NULL:
        """36 random bytes for a request's ids (request id 12, trace id 16, span id 8), never
        all-zero trace or span ids (W3C), as ``format_ids``; valid until the next call."""
        cdef Py_ssize_t i
        cdef uint64_t* out = <uint64_t*>self._out
        cdef uint64_t* s = self._rng
        cdef uint64_t t
        while True:
            if self._forks != _forks:
                self._reseed()
            for i in range(5):
                # xoshiro256** (Blackman and Vigna, 2018; public domain)
                out[i] = _rotl(s[1] * 5, 7) * 9
                t = s[1] << 17
                s[2] ^= s[0]
                s[3] ^= s[1]
                s[1] ^= s[2]
                s[0] ^= s[3]
                s[2] ^= t
                s[3] = _rotl(s[3], 45)
            if _usable(self._out):
                return self._out

    cdef int _reseed(self) except -1:
        cdef bytes seed = self._seed(32)
        if PyBytes_GET_SIZE(seed) != 32:
            raise ValueError("seed(32) must give 32 bytes")
        memcpy(self._rng, PyBytes_AS_STRING(seed), 32)
        if not (self._rng[0] | self._rng[1] | self._rng[2] | self._rng[3]):
            self._rng[0] = 1  # the one state xoshiro must not start from
        self._forks = _forks
        return 0
