# cython: language_level=3
"""Request and trace ids made from random bytes; see :mod:`cygate.core._ids_py`.

PERF: in Python, the formatting of a request's ids (hex digits, the ``traceparent`` layout) is
a visible share of the edge's time on a cache hit (figures: docs/benchmarks.md); here each id
triple is three small objects and byte stores.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII

ITEM = 36

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
