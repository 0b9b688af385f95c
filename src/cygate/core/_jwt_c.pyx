"""Access-token (JWT) verification, compiled twin of :mod:`cygate.core._jwt_py`.

The pure module is the reference: it defines the rules (its docstring), the reasons, the
:class:`JWTError`, :class:`VerifyKey` and :class:`Issuer` types; this module imports them, so
both twins raise and accept the very same things. What is compiled is the per-request work:

- the cache look-up of a repeated token (one dict probe and a double compare, no Python frame);
- splitting and strict base64url decoding in one typed pass per segment (table look-up, the
  canonical-tail check, no translate/concatenate copies);
- the duplicate-key check as a typed scan of the JSON text plus a walk of the decoded objects;
- the ECDSA raw ``r||s`` to DER conversion as byte copies (no big-integer round trip).

JSON parsing stays msgspec's and every signature check stays the ``cryptography`` package's.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from libc.string cimport memchr, memcpy, memset
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

import time as _time

import msgspec
from cryptography.exceptions import InvalidSignature

# NOTE: every exception, constant and configuration type is the pure module's own object.
from cygate.core._jwt_py import (
    ALG_NOT_ALLOWED,
    BAD_AUDIENCE,
    BAD_CLAIMS,
    BAD_SIGNATURE,
    BAD_TYP,
    CACHE_ENTRY_BYTES,
    CRIT,
    DUPLICATE_KEYS,
    ECDSA_SHA256,
    EXPIRED,
    KIND_EC,
    KIND_ED25519,
    KIND_RSA,
    MALFORMED,
    MAX_HEADER_SEGMENT,
    MAX_JSON_DEPTH,
    MAX_KID,
    MAX_NUMERIC_DATE,
    NOT_YET_VALID,
    PKCS1V15,
    REVOKED,
    SHA256,
    SUPPORTED_ALGORITHMS,
    TOO_LARGE,
    UNKNOWN_ISSUER,
    UNKNOWN_KID,
    UNSUPPORTED_ALG,
    Issuer,
    JWTError,
    VerifyKey,
    _as_bytes,
    _identity,
)

__all__ = ["JWTVerifierC"]

cdef enum:
    C_ED25519 = 0
    C_EC = 1
    C_RSA = 2
    C_MAX_HEADER = 1024
    C_MAX_KID = 256

cdef Py_ssize_t _ENTRY_BYTES = CACHE_ENTRY_BYTES

if (KIND_ED25519, KIND_EC, KIND_RSA) != (C_ED25519, C_EC, C_RSA) or (
    MAX_HEADER_SEGMENT, MAX_KID
) != (C_MAX_HEADER, C_MAX_KID):
    raise RuntimeError("cygate.core._jwt_c is out of step with _jwt_py")

cdef long long C_MAX_DATE = MAX_NUMERIC_DATE
cdef Py_ssize_t C_MAX_DEPTH = MAX_JSON_DEPTH
cdef object _decode_json = msgspec.json.Decoder().decode
cdef tuple _JSON_ERRORS = (msgspec.MsgspecError, ValueError, RecursionError)
cdef object _InvalidSignature = InvalidSignature
cdef object _JWTError = JWTError
cdef object _SUPPORTED = SUPPORTED_ALGORITHMS
cdef object _ECDSA = ECDSA_SHA256
cdef object _PKCS = PKCS1V15
cdef object _SHA = SHA256


# ---------------------------------------------------------------------------------------------
# base64url, strict
# ---------------------------------------------------------------------------------------------

# Value of each byte in the base64url alphabet; 0xFF (-1 as signed) outside it.
cdef signed char _B64[256]


cdef void _init_table() noexcept:
    cdef const unsigned char* alphabet = (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    cdef int i
    memset(_B64, -1, 256)
    for i in range(64):
        _B64[alphabet[i]] = <signed char>i


_init_table()


cdef bytes _b64decode(const unsigned char* p, Py_ssize_t n):
    # Invariant: n >= 0. Output length is exact, so no resize: 3 bytes per full quad, then
    # 1 byte for a 2-character tail, 2 bytes for a 3-character tail (4n+1 is refused).
    cdef Py_ssize_t rem = n & 3
    if rem == 1:
        raise _JWTError(MALFORMED)
    cdef Py_ssize_t quads = n >> 2
    cdef Py_ssize_t size = quads * 3 + (rem - 1 if rem else 0)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t q
    cdef int a, b, c, d
    for q in range(quads):
        a = _B64[p[0]]
        b = _B64[p[1]]
        c = _B64[p[2]]
        d = _B64[p[3]]
        if (a | b | c | d) < 0:
            raise _JWTError(MALFORMED)
        o[0] = <unsigned char>((a << 2) | (b >> 4))
        o[1] = <unsigned char>(((b & 0x0F) << 4) | (c >> 2))
        o[2] = <unsigned char>(((c & 0x03) << 6) | d)
        p += 4
        o += 3
    if rem == 2:
        a = _B64[p[0]]
        b = _B64[p[1]]
        if (a | b) < 0 or (b & 0x0F):  # the canonical tail: unused bits are zero
            raise _JWTError(MALFORMED)
        o[0] = <unsigned char>((a << 2) | (b >> 4))
    elif rem == 3:
        a = _B64[p[0]]
        b = _B64[p[1]]
        c = _B64[p[2]]
        if (a | b | c) < 0 or (c & 0x03):
            raise _JWTError(MALFORMED)
        o[0] = <unsigned char>((a << 2) | (b >> 4))
        o[1] = <unsigned char>(((b & 0x0F) << 4) | (c >> 2))
    return out


# ---------------------------------------------------------------------------------------------
# JSON objects, with duplicate keys refused
# ---------------------------------------------------------------------------------------------

cdef Py_ssize_t _count_raw_keys(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # Same rule as _jwt_py.count_raw_keys on valid JSON: a string followed (after JSON
    # whitespace) by ':' is a key. Quotes occur nowhere in JSON but around strings, so walking
    # string by string from the start never starts inside one.
    cdef Py_ssize_t i = 0, count = 0
    cdef unsigned char c
    while i < n:
        if p[i] != 0x22:  # '"'
            i += 1
            continue
        i += 1
        while i < n:
            c = p[i]
            if c == 0x5C:  # backslash: the next byte is escaped, whatever it is
                i += 2
                continue
            if c == 0x22:
                break
            i += 1
        i += 1
        while i < n and (p[i] == 0x20 or p[i] == 0x09 or p[i] == 0x0A or p[i] == 0x0D):
            i += 1
        if i < n and p[i] == 0x3A:  # ':'
            count += 1
            i += 1
    return count


cdef bint _too_deep(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # Same rule as _jwt_py.too_deep: arrays and objects nested deeper than MAX_JSON_DEPTH,
    # brackets inside strings not counted (exact on valid JSON; invalid JSON is refused anyway).
    cdef Py_ssize_t i = 0, depth = 0
    cdef unsigned char c
    while i < n:
        c = p[i]
        if c == 0x22:  # '"': skip the string, escapes included
            i += 1
            while i < n and p[i] != 0x22:
                i += 2 if p[i] == 0x5C else 1
        elif c == 0x5B or c == 0x7B:  # '[' '{'
            depth += 1
            if depth > C_MAX_DEPTH:
                return True
        elif c == 0x5D or c == 0x7D:  # ']' '}'
            depth -= 1
        i += 1
    return False


cdef Py_ssize_t _count_keys(object value) except -1:
    # Keys held by decoded objects at every depth (msgspec bounds the depth it decodes).
    cdef Py_ssize_t total = 0
    cdef object item
    if type(value) is dict:
        total = len(<dict>value)
        for item in (<dict>value).values():
            if type(item) is dict or type(item) is list:
                total += _count_keys(item)
    elif type(value) is list:
        for item in <list>value:
            if type(item) is dict or type(item) is list:
                total += _count_keys(item)
    return total


cdef dict _json_object(bytes raw):
    cdef object obj
    if _too_deep(<const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw)):
        raise _JWTError(MALFORMED)
    try:
        obj = _decode_json(raw)
    except _JSON_ERRORS:
        raise _JWTError(MALFORMED) from None
    if type(obj) is not dict:
        raise _JWTError(MALFORMED)
    if _count_raw_keys(<const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw)) != (
        _count_keys(obj)
    ):
        raise _JWTError(DUPLICATE_KEYS)
    return <dict>obj


# ---------------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------------

cdef bytes _der_from_raw(const unsigned char* p):
    # ECDSA P-256 raw r||s (32 + 32 bytes) -> DER SEQUENCE { INTEGER r, INTEGER s }, each
    # INTEGER minimal (leading zero bytes dropped, one 0x00 added before a set high bit),
    # exactly as cryptography's encode_dss_signature(r, s) writes it. At most 72 bytes.
    cdef unsigned char buf[72]
    cdef Py_ssize_t n = 2, start, end, length, half
    for half in range(2):
        start = half * 32
        end = start + 32
        while start < end - 1 and p[start] == 0:
            start += 1
        length = end - start
        buf[n] = 0x02
        if p[start] & 0x80:
            buf[n + 1] = <unsigned char>(length + 1)
            buf[n + 2] = 0
            n += 3
        else:
            buf[n + 1] = <unsigned char>length
            n += 2
        memcpy(&buf[n], &p[start], length)
        n += length
    buf[0] = 0x30
    buf[1] = <unsigned char>(n - 2)
    return PyBytes_FromStringAndSize(<char*>buf, n)


cdef bint _signature_ok(object key, bytes signature, bytes signing_input) except -1:
    if PyBytes_GET_SIZE(signature) != <Py_ssize_t>key.sig_len:
        return False
    cdef int kind = key.kind
    cdef object public = key.key
    try:
        if kind == C_ED25519:
            public.verify(signature, signing_input)
        elif kind == C_EC:
            public.verify(
                _der_from_raw(<const unsigned char*>PyBytes_AS_STRING(signature)),
                signing_input,
                _ECDSA,
            )
        else:
            public.verify(signature, signing_input, _PKCS, _SHA)
    except _InvalidSignature:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------

cdef long long _int_claim(dict claims, str name, bint required) except -2:
    # -1: absent (only when not required); else the value in [0, 2**53).
    cdef PyObject* item = PyDict_GetItem(claims, name)
    cdef int overflow = 0
    cdef long long value
    if item == NULL:
        if not required:
            return -1
        raise _JWTError(BAD_CLAIMS)
    if type(<object>item) is not int:
        raise _JWTError(BAD_CLAIMS)
    value = PyLong_AsLongLongAndOverflow(<object>item, &overflow)
    if overflow or value < 0 or value > C_MAX_DATE:
        raise _JWTError(BAD_CLAIMS)
    return value


cdef bint _audience_ok(object aud, str audience):
    cdef bint ok = False
    if type(aud) is str:
        return <str>aud == audience
    if type(aud) is list:
        for item in <list>aud:
            if type(item) is not str:
                return False
            if <str>item == audience:
                ok = True
        return ok
    return False


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


# ---------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------

cdef class _Entry:
    # One verified token: what verify returns, and until when (exclusive) it may.
    cdef readonly object value
    cdef readonly double limit
    cdef readonly str jti
    cdef readonly str issuer
    cdef readonly str kid

    def __cinit__(self, object value, double limit, str jti, str issuer, str kid):
        self.value = value
        self.limit = limit
        self.jti = jti
        self.issuer = issuer
        self.kid = kid


cdef class JWTVerifierC:
    """Compiled :class:`cygate.core._jwt_py.JWTVerifierPy`: same API, same decisions."""

    cdef readonly double leeway
    cdef readonly Py_ssize_t max_token_bytes
    cdef readonly Py_ssize_t cache_size
    cdef readonly Py_ssize_t revoked_size
    cdef readonly Py_ssize_t cache_bytes  # 0: bounded by count only
    cdef Py_ssize_t _held                 # bytes the cached entries count as
    cdef readonly unsigned long long verified  # full checks passed (not cache hits)
    cdef dict _issuers
    cdef dict _cache     # token bytes -> _Entry
    cdef dict _by_jti    # jti -> token bytes
    cdef dict _revoked   # jti -> forget after

    def __init__(
        self,
        *,
        leeway: float = 0,
        max_token_bytes: int = 4096,
        cache_size: int = 10_000,
        revoked_size: int = 100_000,
        cache_bytes: int = 0,
    ):
        if leeway < 0 or max_token_bytes < 16 or cache_size < 0 or revoked_size < 1:
            raise ValueError("leeway >= 0, max_token_bytes >= 16, cache_size >= 0 please")
        if cache_bytes < 0:
            raise ValueError("cache_bytes >= 0 please")
        self.leeway = float(leeway)
        self.max_token_bytes = max_token_bytes
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._held = 0
        self.revoked_size = revoked_size
        self._issuers = {}
        self._cache = {}
        self._by_jti = {}
        self._revoked = {}
        self.verified = 0

    # -- configuration (not hot: plain code, the same steps as the pure twin) -----------------

    def set_issuer(self, str name not None, *, str audience not None, keys, principal=None,
                   typ="at+jwt"):
        """Trust ``name`` with these keys (see :meth:`JWTVerifierPy.set_issuer`)."""
        issuer = Issuer(
            name, audience=audience, keys=keys, principal=principal or _identity, typ=typ
        )
        old = self._issuers.get(name)
        self._issuers[name] = issuer
        if old is not None:
            changed = (
                old.audience != issuer.audience
                or old.typ != issuer.typ
                or old.principal is not issuer.principal
            )
            kept = {kid for kid, key in issuer.keys.items() if old.keys.get(kid) is key}
            self._drop_where(lambda iss, kid: iss == name and (changed or kid not in kept))

    def remove_issuer(self, str name not None):
        """Stop trusting ``name``; its cached tokens are dropped."""
        if self._issuers.pop(name, None) is not None:
            self._drop_where(lambda iss, kid: iss == name)

    def issuers(self):
        """The configured issuers (a copy)."""
        return dict(self._issuers)

    def revoke_jti(self, str jti not None, double until):
        """Refuse tokens with this ``jti`` (see :meth:`JWTVerifierPy.revoke_jti`)."""
        token = self._by_jti.pop(jti, None)
        if token is not None:
            self._forget(token)
        if jti not in self._revoked and len(self._revoked) >= self.revoked_size:
            now = _time.time()
            for old in [j for j, t in self._revoked.items() if t <= now]:
                del self._revoked[old]
            if len(self._revoked) >= self.revoked_size:
                del self._revoked[next(iter(self._revoked))]
        self._revoked[jti] = max(until, self._revoked.get(jti, 0.0))

    def is_revoked(self, str jti not None):
        """Whether ``revoke_jti`` was called for ``jti`` (and not forgotten since)."""
        return jti in self._revoked

    def clear_cache(self):
        """Forget every verified token (revocations are kept)."""
        self._cache.clear()
        self._by_jti.clear()
        self._held = 0

    def cache_len(self):
        """Number of cached verified tokens."""
        return len(self._cache)

    def cache_held_bytes(self):
        """Bytes the cached tokens count as against ``cache_bytes``."""
        return self._held

    cdef void _forget(self, bytes token) except *:
        # Drops token's entry if cached (not its _by_jti slot: the callers do).
        if self._cache.pop(token, None) is not None:
            self._held -= PyBytes_GET_SIZE(token) + _ENTRY_BYTES

    cdef _drop_where(self, predicate):
        cdef _Entry entry
        for token, entry in list(self._cache.items()):
            if predicate(entry.issuer, entry.kid):
                self._forget(token)
                if self._by_jti.get(entry.jti) == token:
                    del self._by_jti[entry.jti]

    cdef _remember(self, bytes token, _Entry entry):
        cdef Py_ssize_t cost = PyBytes_GET_SIZE(token) + _ENTRY_BYTES
        cdef Py_ssize_t bound = self.cache_bytes
        cdef object previous
        cdef _Entry old
        if bound and cost > bound:
            return  # would never fit
        previous = self._by_jti.get(entry.jti)
        if previous is not None:
            self._forget(previous)
        while self._cache and (
            len(self._cache) >= self.cache_size or (bound and self._held + cost > bound)
        ):
            oldest = next(iter(self._cache))
            old = self._cache[oldest]
            self._forget(oldest)
            if self._by_jti.get(old.jti) == oldest:
                del self._by_jti[old.jti]
        self._cache[token] = entry
        self._held += cost
        self._by_jti[entry.jti] = token

    # -- verification -------------------------------------------------------------------------

    def verify(self, token, now=None):
        """The principal of a valid token; raises :class:`JWTError` otherwise."""
        cdef double t = _now() if now is None else <double>now
        cdef bytes raw
        cdef PyObject* hit
        cdef _Entry entry
        if type(token) is bytes:
            raw = <bytes>token
        else:
            raw = _as_bytes(token)
        hit = PyDict_GetItem(self._cache, raw)
        if hit != NULL:
            entry = <_Entry>hit
            if t < entry.limit:
                return entry.value  # PERF: the repeated-token path ends here
            self._forget(raw)
            if self._by_jti.get(entry.jti) == raw:
                del self._by_jti[entry.jti]
        return self._verify(raw, t)

    cdef object _verify(self, bytes token, double now):
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(token)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(token)
        cdef const unsigned char* d1
        cdef const unsigned char* d2
        cdef Py_ssize_t first, second
        # 1. sizes
        if n > self.max_token_bytes:
            raise _JWTError(TOO_LARGE)
        d1 = <const unsigned char*>memchr(p, 0x2E, n)
        first = (d1 - p) if d1 != NULL else -1
        if first > C_MAX_HEADER:
            raise _JWTError(TOO_LARGE)
        # 2. segments
        if d1 == NULL:
            raise _JWTError(MALFORMED)
        d2 = <const unsigned char*>memchr(d1 + 1, 0x2E, n - first - 1)
        if d2 == NULL:
            raise _JWTError(MALFORMED)
        second = d2 - p
        if memchr(d2 + 1, 0x2E, n - second - 1) != NULL:
            raise _JWTError(MALFORMED)
        cdef bytes header_raw = _b64decode(p, first)
        cdef bytes payload_raw = _b64decode(d1 + 1, second - first - 1)
        cdef bytes signature = _b64decode(d2 + 1, n - second - 1)
        # 3-4. header
        cdef dict header = _json_object(header_raw)
        cdef object alg = header.get("alg")
        if type(alg) is not str or alg not in _SUPPORTED:
            raise _JWTError(UNSUPPORTED_ALG)
        if "crit" in header:
            raise _JWTError(CRIT)
        cdef dict claims = _json_object(payload_raw)
        # 5. issuer, typ, key
        cdef object iss = claims.get("iss")
        cdef object issuer = self._issuers.get(iss) if type(iss) is str else None
        if issuer is None:
            raise _JWTError(UNKNOWN_ISSUER)
        cdef object expected_typ = issuer.typ
        cdef object typ
        if expected_typ is not None:
            typ = header.get("typ")
            if type(typ) is not str:
                raise _JWTError(BAD_TYP)
            typ = (<str>typ).lower()
            if typ != expected_typ and typ != issuer.typ_media:
                raise _JWTError(BAD_TYP)
        cdef object kid = header.get("kid")
        cdef object key = None
        if type(kid) is str and len(<str>kid) <= C_MAX_KID:
            key = (<dict>issuer.keys).get(kid)
        if key is None:
            raise _JWTError(UNKNOWN_KID, issuer.name)
        if alg != key.alg:
            raise _JWTError(ALG_NOT_ALLOWED)
        # 6. signature
        if not _signature_ok(key, signature, PyBytes_FromStringAndSize(<char*>p, second)):
            raise _JWTError(BAD_SIGNATURE)
        # 7. claims
        cdef long long exp = _int_claim(claims, "exp", True)
        cdef long long iat = _int_claim(claims, "iat", True)
        cdef long long nbf = _int_claim(claims, "nbf", False)
        cdef object sub = claims.get("sub")
        cdef object jti = claims.get("jti")
        if type(sub) is not str or not sub or type(jti) is not str or not jti:
            raise _JWTError(BAD_CLAIMS)
        cdef double limit = <double>exp + self.leeway
        if now >= limit:
            raise _JWTError(EXPIRED)
        cdef double horizon = now + self.leeway
        if <double>iat > horizon or (nbf >= 0 and <double>nbf > horizon):
            raise _JWTError(NOT_YET_VALID)
        if not _audience_ok(claims.get("aud"), issuer.audience):
            raise _JWTError(BAD_AUDIENCE)
        if jti in self._revoked:
            raise _JWTError(REVOKED)
        # 8. result
        value = issuer.principal(claims)
        self.verified += 1
        if self.cache_size:
            self._remember(token, _Entry(value, limit, jti, issuer.name, key.kid))
        return value
