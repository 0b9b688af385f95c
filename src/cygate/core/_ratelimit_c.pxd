# The compiled rate-limit tables' C interface, for the other compiled modules (edge/_hitpath_c
# decides a hit's limit and writes its headers with C calls); see _ratelimit_c.pyx.

from libc.stdint cimport int64_t, uint8_t


cdef class _Table:
    cdef dict _index
    cdef list _keys
    cdef uint8_t* _ref
    cdef Py_ssize_t _used
    cdef Py_ssize_t _hand
    cdef object _clock
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t evicted
    cdef readonly int64_t remaining
    cdef readonly int64_t reset_ns
    cdef readonly int64_t retry_ns

    cdef int _setup(self, Py_ssize_t capacity, object clock) except -1
    cdef int _append_headers(self, list out, object limit_pair, object policy_pair) except -1
    cdef int64_t _now(self) except? -1
    cdef Py_ssize_t _find(self, str key) noexcept
    cdef bint _idle(self, Py_ssize_t slot, int64_t now) noexcept
    cdef Py_ssize_t _insert(self, str key, int64_t now) except -1
    cdef Py_ssize_t _sweep(self, int64_t now) except -1


cdef class GCRALimiterC(_Table):
    cdef int64_t* _tat
    cdef readonly int64_t interval_ns
    cdef readonly int64_t burst
    cdef readonly int64_t tolerance_ns

    cdef int _hit(self, str key, int64_t cost) except -1


cdef class LeaseTableC(_Table):
    cdef int64_t* _tokens
    cdef int64_t* _until
    cdef int64_t* _left
    cdef int64_t* _reset_at
    cdef uint8_t* _denied
    cdef readonly int64_t tokens

    cdef object _take(self, str key)
