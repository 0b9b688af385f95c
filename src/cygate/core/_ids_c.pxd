# The id formatting's C helpers, shared with the other compiled modules (core/_hitpath_c makes
# a hit's ids with them, without the pool's intermediate objects); see _ids_c.pyx.


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
