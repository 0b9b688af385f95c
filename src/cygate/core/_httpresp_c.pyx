"""A whole small HTTP/1.1 response in one buffer, compiled twin of :mod:`cygate.core._httpresp_py`.

Same rules, same results (the pure module's docstring says what is accepted; anything else is
``None``, no verdict). One pass over the bytes with a character-class table; the only objects
made are the header names and values, their tuples, the list and the body.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcmp

__all__ = ["parse_response"]

# Character classes (bit flags).
cdef enum:
    TCHAR = 1   # a token character (header names)
    VCHAR = 2   # allowed in a header value or a reason phrase: HTAB, SP, visible, obs-text
    DIGIT = 4

cdef unsigned char CLASS[256]


cdef void _init_classes():
    cdef int c
    cdef bytes specials = b"!#$%&'*+-.^_`|~"
    for c in range(256):
        CLASS[c] = 0
        if c == 9 or 0x20 <= c <= 0x7E or c >= 0x80:
            CLASS[c] |= VCHAR
        if 0x30 <= c <= 0x39:
            CLASS[c] |= DIGIT | TCHAR
        if 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A:
            CLASS[c] |= TCHAR
    for c in specials:
        CLASS[c] |= TCHAR


_init_classes()

cdef enum:
    MAX_LENGTH_DIGITS = 18
    MAX_NAME = 256  # longer header names are left to httptools


cdef inline bint _is(const unsigned char *p, Py_ssize_t n, const char *lower_word):
    """``p[:n]`` equals the lower-case ``lower_word`` of length ``n``, ignoring ASCII case."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if 0x41 <= c <= 0x5A:
            c += 32
        if c != <unsigned char>lower_word[i]:
            return False
    return True


# Header names most responses carry: the parser hands out these objects instead of new ones
# (their hash is cached, so the caller's set and dict lookups are cheap too).
cdef tuple COMMON = (
    b"server", b"date", b"content-type", b"content-length", b"connection", b"cache-control",
    b"etag", b"last-modified", b"vary", b"expires", b"location", b"set-cookie",
    b"content-encoding", b"keep-alive", b"x-request-id", b"accept-ranges", b"age",
    b"strict-transport-security", b"x-content-type-options", b"access-control-allow-origin",
)


cdef inline bytes _name(const char *lower, Py_ssize_t k):
    cdef bytes known
    for known in COMMON:
        if PyBytes_GET_SIZE(known) == k and memcmp(PyBytes_AS_STRING(known), lower, k) == 0:
            return known
    return PyBytes_FromStringAndSize(lower, k)


def parse_response(bytes data, bint head_only=False, object skip=None):
    """The response in ``data`` if it is exactly one simple, complete HTTP/1.1 response, else
    ``None``: ``(status, headers, keep_alive, connection, body)``. Headers named in ``skip``
    are left out of the list."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i, j, name_start, name_end, value_start, value_end, k
    cdef int status
    cdef long long length = -1
    cdef bint keep_alive = True
    cdef unsigned char c
    cdef char lower[MAX_NAME]
    cdef object connection = None
    cdef list headers = []
    cdef bytes name, value

    # Status line: "HTTP/1.1 SSS" then CRLF or " reason CRLF".
    if n < 14 or memcmp(p, b"HTTP/1.1 ", 9) != 0:
        return None
    if not (0x32 <= p[9] <= 0x35 and CLASS[p[10]] & DIGIT and CLASS[p[11]] & DIGIT):
        return None
    status = (p[9] - 0x30) * 100 + (p[10] - 0x30) * 10 + (p[11] - 0x30)
    i = 12
    if p[i] == 0x20:
        i += 1
        while i < n and p[i] != 0x0D:
            if not CLASS[p[i]] & VCHAR:
                return None
            i += 1
    if i + 1 >= n or p[i] != 0x0D or p[i + 1] != 0x0A:
        return None
    i += 2

    # Header lines until the empty line.
    while True:
        if i + 1 >= n:
            return None
        if p[i] == 0x0D:
            if p[i + 1] != 0x0A:
                return None
            i += 2
            break
        name_start = i
        while i < n and CLASS[p[i]] & TCHAR:
            i += 1
        name_end = i
        if name_end == name_start or name_end - name_start > MAX_NAME or i >= n or p[i] != 0x3A:
            return None
        i += 1
        while i < n and (p[i] == 0x20 or p[i] == 0x09):
            i += 1
        value_start = i
        while i < n and p[i] != 0x0D:
            if not CLASS[p[i]] & VCHAR:
                return None
            i += 1
        value_end = i
        if i + 1 >= n or p[i + 1] != 0x0A:
            return None
        i += 2

        k = name_end - name_start
        for j in range(k):
            c = p[name_start + j]
            lower[j] = c + 32 if 0x41 <= c <= 0x5A else c
        name = _name(lower, k)
        value = PyBytes_FromStringAndSize(<const char *>p + value_start, value_end - value_start)
        if k == 14 and memcmp(lower, b"content-length", 14) == 0:
            if length >= 0 or value_end == value_start or value_end - value_start > MAX_LENGTH_DIGITS:
                return None
            length = 0
            for j in range(value_start, value_end):
                if not CLASS[p[j]] & DIGIT:
                    return None
                length = length * 10 + (p[j] - 0x30)
        elif k == 17 and memcmp(lower, b"transfer-encoding", 17) == 0:
            return None
        elif k == 10 and memcmp(lower, b"connection", 10) == 0:
            if connection is not None:
                return None
            if value_end - value_start == 5 and _is(p + value_start, 5, b"close"):
                keep_alive = False
            elif not (value_end - value_start == 10 and _is(p + value_start, 10, b"keep-alive")):
                return None
            connection = value
        if skip is None or name not in skip:
            headers.append((name, value))

    if status == 204 or status == 304:
        length = 0
    elif length < 0:
        return None
    elif head_only:
        length = 0
    if n - i != length:
        return None
    return status, headers, keep_alive, connection, data[i:]
