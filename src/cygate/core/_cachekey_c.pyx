"""Cache keys, compiled twin of :mod:`cygate.core._cachekey_py`.

Same canonical form, same hash, same side outputs; the pure module is the reference and owns the
constants and :func:`derive_key`. Here the canonical form is written into one C buffer (on the
stack for ordinary requests) by walking the query string and the header list in place, and the
keyed BLAKE2b-128 starts from a state in which the key block is already compressed: a key of
up to 128 bytes of canonical form costs one compression.

:func:`siphash128` (SipHash-2-4, 128-bit output) is here for the measurement that chose the hash
(``docs/caching.md``): it is checked against the reference test vectors and not used for keys.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_AsEncodedString, PyUnicode_DATA, PyUnicode_GET_LENGTH
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset

from cygate.core._cachekey_py import KEY_SIZE, KEY_VERSION, derive_key

__all__ = ["CacheKeyC", "blake2b128", "siphash128"]

cdef extern from *:
    """
    /* BLAKE2b (RFC 7693) compression and SipHash-2-4-128, portable C. Loads are little-endian
       whatever the host (compilers turn these into single loads on x86 and ARM). */
    #include <stdint.h>
    #include <string.h>

    static inline uint64_t cg_load64(const uint8_t *p) {
        return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
               ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
               ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
    }
    static inline void cg_store64(uint8_t *p, uint64_t v) {
        for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
    }
    static inline uint64_t cg_rotr64(uint64_t w, unsigned c) { return (w >> c) | (w << (64 - c)); }
    static inline uint64_t cg_rotl64(uint64_t w, unsigned c) { return (w << c) | (w >> (64 - c)); }

    static const uint64_t CG_B2B_IV[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
        0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
        0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};
    static const uint8_t CG_B2B_SIGMA[12][16] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
        {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
        {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
        {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
        {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
        {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
        {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
        {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
        {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

    #define CG_B2B_G(a, b, c, d, x, y)          \
        do {                                     \
            v[a] = v[a] + v[b] + (x);            \
            v[d] = cg_rotr64(v[d] ^ v[a], 32);   \
            v[c] = v[c] + v[d];                  \
            v[b] = cg_rotr64(v[b] ^ v[c], 24);   \
            v[a] = v[a] + v[b] + (y);            \
            v[d] = cg_rotr64(v[d] ^ v[a], 16);   \
            v[c] = v[c] + v[d];                  \
            v[b] = cg_rotr64(v[b] ^ v[c], 63);   \
        } while (0)

    #define CG_B2B_ROUND(r)                                                          \
        do {                                                                         \
            CG_B2B_G(0, 4, 8, 12, m[CG_B2B_SIGMA[r][0]], m[CG_B2B_SIGMA[r][1]]);    \
            CG_B2B_G(1, 5, 9, 13, m[CG_B2B_SIGMA[r][2]], m[CG_B2B_SIGMA[r][3]]);    \
            CG_B2B_G(2, 6, 10, 14, m[CG_B2B_SIGMA[r][4]], m[CG_B2B_SIGMA[r][5]]);   \
            CG_B2B_G(3, 7, 11, 15, m[CG_B2B_SIGMA[r][6]], m[CG_B2B_SIGMA[r][7]]);   \
            CG_B2B_G(0, 5, 10, 15, m[CG_B2B_SIGMA[r][8]], m[CG_B2B_SIGMA[r][9]]);   \
            CG_B2B_G(1, 6, 11, 12, m[CG_B2B_SIGMA[r][10]], m[CG_B2B_SIGMA[r][11]]); \
            CG_B2B_G(2, 7, 8, 13, m[CG_B2B_SIGMA[r][12]], m[CG_B2B_SIGMA[r][13]]);  \
            CG_B2B_G(3, 4, 9, 14, m[CG_B2B_SIGMA[r][14]], m[CG_B2B_SIGMA[r][15]]);  \
        } while (0)

    static void cg_b2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
        uint64_t v[16], m[16];
        for (int i = 0; i < 8; i++) { v[i] = h[i]; v[i + 8] = CG_B2B_IV[i]; }
        v[12] ^= t;  /* the high word of the counter stays 0: inputs are far below 2^64 bytes */
        if (last) v[14] = ~v[14];
        for (int i = 0; i < 16; i++) m[i] = cg_load64(block + 8 * i);
        /* PERF: rounds unrolled, so every message index is a constant and v[]/m[] live in
           registers (faster than the loop over SIGMA rows). */
        CG_B2B_ROUND(0); CG_B2B_ROUND(1); CG_B2B_ROUND(2); CG_B2B_ROUND(3);
        CG_B2B_ROUND(4); CG_B2B_ROUND(5); CG_B2B_ROUND(6); CG_B2B_ROUND(7);
        CG_B2B_ROUND(8); CG_B2B_ROUND(9); CG_B2B_ROUND(10); CG_B2B_ROUND(11);
        for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
    }

    /* The state after the key block of keyed BLAKE2b-<outlen> (key of 1..64 bytes). */
    static void cg_b2b_keyed_init(uint64_t h[8], const uint8_t *key, size_t keylen, size_t outlen) {
        uint8_t block[128];
        for (int i = 0; i < 8; i++) h[i] = CG_B2B_IV[i];
        h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ (uint64_t)outlen;
        memset(block, 0, sizeof block);
        memcpy(block, key, keylen);
        cg_b2b_compress(h, block, 128, 0);
    }

    /* Finish a keyed hash of data (len >= 1) from the state after the key block. */
    static void cg_b2b_keyed_final(const uint64_t hk[8], const uint8_t *data, size_t len,
                                   uint8_t *out, size_t outlen) {
        uint64_t h[8];
        uint8_t block[128], full[64];
        uint64_t t = 128;
        memcpy(h, hk, sizeof h);
        while (len > 128) {
            t += 128;
            cg_b2b_compress(h, data, t, 0);
            data += 128;
            len -= 128;
        }
        memset(block, 0, sizeof block);
        memcpy(block, data, len);
        t += len;
        cg_b2b_compress(h, block, t, 1);
        for (int i = 0; i < 8; i++) cg_store64(full + 8 * i, h[i]);
        memcpy(out, full, outlen);
    }

    #define CG_SIPROUND                                                        \
        do {                                                                   \
            v0 += v1; v1 = cg_rotl64(v1, 13); v1 ^= v0; v0 = cg_rotl64(v0, 32); \
            v2 += v3; v3 = cg_rotl64(v3, 16); v3 ^= v2;                        \
            v0 += v3; v3 = cg_rotl64(v3, 21); v3 ^= v0;                        \
            v2 += v1; v1 = cg_rotl64(v1, 17); v1 ^= v2; v2 = cg_rotl64(v2, 32); \
        } while (0)

    /* SipHash-2-4 with a 128-bit output (the reference algorithm, 16-byte key). */
    static void cg_siphash128(const uint8_t k[16], const uint8_t *in, size_t inlen, uint8_t out[16]) {
        uint64_t k0 = cg_load64(k), k1 = cg_load64(k + 8);
        uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
        uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
        uint64_t b = ((uint64_t)inlen) << 56, m;
        const uint8_t *end = in + inlen - (inlen % 8);
        int left = (int)(inlen & 7);
        v1 ^= 0xee;
        for (; in != end; in += 8) {
            m = cg_load64(in);
            v3 ^= m; CG_SIPROUND; CG_SIPROUND; v0 ^= m;
        }
        for (int i = left - 1; i >= 0; i--) b |= ((uint64_t)in[i]) << (8 * i);
        v3 ^= b; CG_SIPROUND; CG_SIPROUND; v0 ^= b;
        v2 ^= 0xee;
        CG_SIPROUND; CG_SIPROUND; CG_SIPROUND; CG_SIPROUND;
        cg_store64(out, v0 ^ v1 ^ v2 ^ v3);
        v1 ^= 0xdd;
        CG_SIPROUND; CG_SIPROUND; CG_SIPROUND; CG_SIPROUND;
        cg_store64(out + 8, v0 ^ v1 ^ v2 ^ v3);
    }
    """
    void cg_b2b_keyed_init(uint64_t* h, const uint8_t* key, size_t keylen, size_t outlen) nogil
    void cg_b2b_keyed_final(const uint64_t* hk, const uint8_t* data, size_t length,
                            uint8_t* out, size_t outlen) nogil
    void cg_siphash128(const uint8_t* k, const uint8_t* data, size_t length, uint8_t* out) nogil

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)

cdef enum:
    STACK_BUF = 1024
    MAX_KEY = 64

if KEY_SIZE != 16 or KEY_VERSION != b"cgk1":
    raise RuntimeError("cygate.core._cachekey_c is out of step with _cachekey_py")

cdef bytes _VERSION = KEY_VERSION
cdef bytes _INM = b"if-none-match"
cdef bytes _CC = b"cache-control"
cdef bytes _PRAGMA = b"pragma"
cdef bytes _COMMA = b", "


def blake2b128(bytes key not None, bytes data not None):
    """Keyed BLAKE2b-128 (key of 1..64 bytes); equals ``hashlib.blake2b(data, key=key,
    digest_size=16)`` for non-empty data."""
    cdef uint64_t h[8]
    cdef uint8_t out[16]
    cdef Py_ssize_t klen = len(key)
    if klen < 1 or klen > MAX_KEY:
        raise ValueError("key must be 1..64 bytes")
    if len(data) == 0:
        raise ValueError("data must not be empty")
    cg_b2b_keyed_init(h, <const uint8_t*>PyBytes_AS_STRING(key), klen, 16)
    cg_b2b_keyed_final(h, <const uint8_t*>PyBytes_AS_STRING(data), len(data), out, 16)
    return PyBytes_FromStringAndSize(<char*>out, 16)


def siphash128(bytes key not None, bytes data not None):
    """SipHash-2-4 with a 128-bit output (16-byte key), as in the reference implementation."""
    cdef uint8_t out[16]
    if len(key) != 16:
        raise ValueError("key must be 16 bytes")
    cg_siphash128(<const uint8_t*>PyBytes_AS_STRING(key),
                  <const uint8_t*>PyBytes_AS_STRING(data), len(data), out)
    return PyBytes_FromStringAndSize(<char*>out, 16)


# ---------------------------------------------------------------------------------------------
# The canonical form, written into a growable buffer
# ---------------------------------------------------------------------------------------------

cdef struct Buf:
    uint8_t* p
    Py_ssize_t n
    Py_ssize_t cap
    bint heap


cdef int _grow(Buf* b, Py_ssize_t extra) except -1:
    # Invariant: b.p holds b.n bytes; after this, room for `extra` more.
    cdef Py_ssize_t cap = b.cap
    cdef uint8_t* q
    if b.n + extra <= cap:
        return 0
    while cap < b.n + extra:
        cap *= 2
    q = <uint8_t*>PyMem_Malloc(cap)
    if q == NULL:
        raise MemoryError()
    memcpy(q, b.p, b.n)
    if b.heap:
        PyMem_Free(b.p)
    b.p = q
    b.cap = cap
    b.heap = True
    return 0


cdef inline int _put(Buf* b, const uint8_t* s, Py_ssize_t n) except -1:
    if b.n + n > b.cap:
        _grow(b, n)
    memcpy(b.p + b.n, s, n)
    b.n += n
    return 0


cdef inline int _put_len(Buf* b, Py_ssize_t n) except -1:
    if b.n + 4 > b.cap:
        _grow(b, 4)
    b.p[b.n] = <uint8_t>(n >> 24)
    b.p[b.n + 1] = <uint8_t>(n >> 16)
    b.p[b.n + 2] = <uint8_t>(n >> 8)
    b.p[b.n + 3] = <uint8_t>n
    b.n += 4
    return 0


cdef inline int _put_field(Buf* b, const uint8_t* s, Py_ssize_t n) except -1:
    _put_len(b, n)
    _put(b, s, n)
    return 0


cdef inline int _put_tag(Buf* b, uint8_t tag) except -1:
    return _put(b, &tag, 1)


cdef int _put_str(Buf* b, str text) except -1:
    cdef bytes raw
    if PyUnicode_IS_COMPACT_ASCII(text):
        # PERF: ASCII text is its own UTF-8: no intermediate bytes object.
        _put_field(b, <const uint8_t*>PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text))
        return 0
    raw = PyUnicode_AsEncodedString(text, "utf-8", "surrogatepass")
    _put_field(b, <const uint8_t*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
    return 0


cdef inline int _hexval(uint8_t c) noexcept nogil:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    c |= 0x20
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    return -1


cdef Py_ssize_t _decode_into(Buf* b, const uint8_t* s, Py_ssize_t n) except -1:
    # Append the form-decoding of s ('+' -> ' ', %XX -> byte, a bad escape kept as is);
    # returns the number of bytes written.
    cdef Py_ssize_t i = 0, start = b.n
    cdef int hi, lo
    cdef uint8_t c
    if b.n + n > b.cap:
        _grow(b, n)  # decoding never lengthens
    while i < n:
        c = s[i]
        if c == 0x2B:  # '+'
            c = 0x20
        elif c == 0x25 and i + 2 < n:
            hi = _hexval(s[i + 1])
            lo = _hexval(s[i + 2])
            if hi >= 0 and lo >= 0:
                c = <uint8_t>(hi * 16 + lo)
                i += 2
        b.p[b.n] = c
        b.n += 1
        i += 1
    return b.n - start


cdef bint _decoded_equals(const uint8_t* s, Py_ssize_t n, const uint8_t* want,
                          Py_ssize_t wn) noexcept nogil:
    # Whether the form-decoding of s equals want, decoding on the fly (no buffer).
    cdef Py_ssize_t i = 0, j = 0
    cdef int hi, lo
    cdef uint8_t c
    if n < wn:
        return False  # decoding never lengthens
    while i < n:
        if j == wn:
            return False
        c = s[i]
        if c == 0x2B:
            c = 0x20
        elif c == 0x25 and i + 2 < n:
            hi = _hexval(s[i + 1])
            lo = _hexval(s[i + 2])
            if hi >= 0 and lo >= 0:
                c = <uint8_t>(hi * 16 + lo)
                i += 2
        if c != want[j]:
            return False
        i += 1
        j += 1
    return j == wn


cdef inline Py_ssize_t _find(const uint8_t* s, Py_ssize_t start, Py_ssize_t end,
                             uint8_t c) noexcept nogil:
    while start < end and s[start] != c:
        start += 1
    return start


cdef inline bytes _trim(bytes value):
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i = 0
    while i < n and (p[i] == 0x20 or p[i] == 0x09):
        i += 1
    while n > i and (p[n - 1] == 0x20 or p[n - 1] == 0x09):
        n -= 1
    if i == 0 and n == PyBytes_GET_SIZE(value):
        return value
    return PyBytes_FromStringAndSize(<char*>p + i, n - i)


cdef class CacheKeyC:
    """Computes the cache keys of one route under one cache rule (see ``CacheKeyPy``)."""

    cdef uint64_t _hk[8]
    cdef bytes _route_field  # the length-prefixed route, written once
    cdef readonly str route
    cdef readonly tuple query_names
    cdef readonly tuple header_names
    cdef readonly bint private
    cdef public object if_none_match
    cdef public object cache_control

    def __init__(self, bytes secret not None, str route not None, *, query=(), headers=(),
                 bint private=False):
        cdef bytes hkey = derive_key(secret)
        cdef bytes raw = route.encode("utf-8", "surrogatepass")
        cg_b2b_keyed_init(self._hk, <const uint8_t*>PyBytes_AS_STRING(hkey), len(hkey), 16)
        self._route_field = len(raw).to_bytes(4, "big") + raw
        self.route = route
        self.query_names = tuple(sorted({q.encode("utf-8", "surrogatepass") for q in query}))
        self.header_names = tuple(
            sorted({h.strip().lower().encode("latin-1") for h in headers})
        )
        self.private = private
        self.if_none_match = None
        self.cache_control = None

    cdef int _write(self, Buf* b, str method, str path, bytes query, object headers,
                    object principal) except -1:
        cdef const uint8_t* q
        cdef Py_ssize_t qn, i, amp, eq, k, n
        cdef bytes name, value, want
        cdef list inm = None, cc = None, pragma = None
        cdef tuple wanted = self.header_names
        cdef Py_ssize_t nwanted = len(wanted)
        cdef bint present

        _put(b, <const uint8_t*>PyBytes_AS_STRING(_VERSION), 4)
        _put(b, <const uint8_t*>PyBytes_AS_STRING(self._route_field),
             PyBytes_GET_SIZE(self._route_field))
        _put_str(b, method)
        _put_str(b, path)

        # Query: for each allow-listed name in order, its pairs in order of appearance (a
        # stable sort by name without sorting); names are few, queries short.
        qn = PyBytes_GET_SIZE(query)
        if qn and self.query_names:
            q = <const uint8_t*>PyBytes_AS_STRING(query)
            for want in self.query_names:
                i = 0
                while i < qn:
                    amp = _find(q, i, qn, 0x26)  # '&'
                    if amp > i:
                        eq = _find(q, i, amp, 0x3D)  # '='
                        if _decoded_equals(q + i, eq - i,
                                           <const uint8_t*>PyBytes_AS_STRING(want),
                                           PyBytes_GET_SIZE(want)):
                            _put_tag(b, 0x71)  # 'q'
                            _put_field(b, <const uint8_t*>PyBytes_AS_STRING(want),
                                       PyBytes_GET_SIZE(want))
                            k = b.n
                            _put_len(b, 0)  # patched below
                            if eq < amp:
                                n = _decode_into(b, q + eq + 1, amp - eq - 1)
                            else:
                                n = 0
                            b.p[k] = <uint8_t>(n >> 24)
                            b.p[k + 1] = <uint8_t>(n >> 16)
                            b.p[k + 2] = <uint8_t>(n >> 8)
                            b.p[k + 3] = <uint8_t>n
                    i = amp + 1

        # Headers: the conditional and directive headers, then the allow-listed ones.
        for name, value in headers:
            if name == _INM:
                if inm is None:
                    inm = [value]
                else:
                    inm.append(value)
            elif name == _CC:
                if cc is None:
                    cc = [value]
                else:
                    cc.append(value)
            elif name == _PRAGMA:
                if pragma is None:
                    pragma = [value]
                else:
                    pragma.append(value)
        for want in wanted:
            present = False
            for name, value in headers:
                if name == want:
                    present = True
                    value = _trim(value)
                    _put_tag(b, 0x68)  # 'h'
                    _put_field(b, <const uint8_t*>PyBytes_AS_STRING(want),
                               PyBytes_GET_SIZE(want))
                    _put_field(b, <const uint8_t*>PyBytes_AS_STRING(value),
                               PyBytes_GET_SIZE(value))
            if not present:
                _put_tag(b, 0x48)  # 'H'
                _put_field(b, <const uint8_t*>PyBytes_AS_STRING(want), PyBytes_GET_SIZE(want))
        if inm is None:
            self.if_none_match = None
        else:
            self.if_none_match = inm[0] if len(inm) == 1 else _COMMA.join(inm)
        if cc is not None:
            self.cache_control = cc[0] if len(cc) == 1 else _COMMA.join(cc)
        elif pragma is not None:
            self.cache_control = pragma[0] if len(pragma) == 1 else _COMMA.join(pragma)
        else:
            self.cache_control = None

        if self.private:
            if principal is None:
                raise ValueError("a private cache key needs a principal")
            _put_tag(b, 0x75)  # 'u'
            _put_str(b, <str?>principal)
        return 0

    def canonical(self, str method not None, str path not None, bytes query not None,
                  headers, principal=None):
        """The canonical form of a request (see ``cygate.core._cachekey_py``)."""
        cdef uint8_t stack[STACK_BUF]
        cdef Buf b
        b.p = stack
        b.n = 0
        b.cap = STACK_BUF
        b.heap = False
        try:
            self._write(&b, method, path, query, headers, principal)
            return PyBytes_FromStringAndSize(<char*>b.p, b.n)
        finally:
            if b.heap:
                PyMem_Free(b.p)

    def key(self, str method not None, str path not None, bytes query not None, headers,
            principal=None):
        """The 16-byte key of a request; also sets ``if_none_match`` and ``cache_control``."""
        cdef uint8_t stack[STACK_BUF]
        cdef uint8_t out[16]
        cdef Buf b
        b.p = stack
        b.n = 0
        b.cap = STACK_BUF
        b.heap = False
        try:
            self._write(&b, method, path, query, headers, principal)
            cg_b2b_keyed_final(self._hk, b.p, b.n, out, 16)
            return PyBytes_FromStringAndSize(<char*>out, 16)
        finally:
            if b.heap:
                PyMem_Free(b.p)
