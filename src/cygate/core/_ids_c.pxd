# The id formatting's C helpers, shared with the other compiled modules (edge/_hitpath_c makes
# a hit's ids with them, without the pool's intermediate objects), and the minter, whose ``draw``
# the compiled hit path calls at C level; see _ids_c.pyx.

from libc.stdint cimport uint64_t


cdef inline void _hex(const unsigned char* src, Py_ssize_t n, char* dst) noexcept:
    cdef const char* digits = b"0123456789abcdef"
    cdef Py_ssize_t j
    for j in range(n):
        dst[2 * j] = digits[src[j] >> 4]
        dst[2 * j + 1] = digits[src[j] & 15]


cdef inline bint _zero(const unsigned char* src, Py_ssize_t n) noexcept:
    cdef Py_ssize_t j
    for j in range(n):
        if src[j]:
            return False
    return True


cdef inline bint _usable(const unsigned char* q) noexcept:
    """36 random bytes (request id 12, trace id 16, span id 8) whose trace and span ids are not
    all zero (W3C Trace Context forbids both)."""
    return not (_zero(q + 12, 16) or _zero(q + 28, 8))


cdef inline void _write_ids(const unsigned char* q, char* rid, char* tp) noexcept:
    """The request id (24 hex digits into ``rid``) and the ``traceparent``
    (``00-<32 hex>-<16 hex>-01``, 55 bytes into ``tp``) of 36 random bytes."""
    _hex(q, 12, rid)
    tp[0] = 48  # '0'
    tp[1] = 48
    tp[2] = 45  # '-'
    _hex(q + 12, 16, tp + 3)
    tp[35] = 45
    _hex(q + 28, 8, tp + 36)
    tp[52] = 45
    tp[53] = 48
    tp[54] = 49  # '1'


cdef class IdMinter:
    # See _ids_c.pyx. ``draw`` is the C-level call of the compiled hit path.
    cdef object _seed
    cdef uint64_t _rng[4]
    cdef unsigned char _out[40]
    cdef long _forks

    cpdef tuple take(self)
    cdef const unsigned char* draw(self) except NULL
    cdef int _reseed(self) except -1
