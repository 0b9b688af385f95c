"""Access-token (JWT) verification, the pure-Python reference.

:class:`JWTVerifierPy` checks a compact JWS access token (RFC 7515/7519, the RFC 9068 profile)
against the issuers and keys it was given, and returns what the issuer's ``principal`` factory
builds from the verified claims. Its compiled twin, :mod:`cygate.core._jwt_c`, follows the same
rules step by step and raises the same errors with the same reasons.

The rules, in the order they are applied (the first failure decides the reason):

1. Size before anything else: at most ``max_token_bytes`` in all, at most
   :data:`MAX_HEADER_SEGMENT` in the header segment (``too_large``).
2. Exactly three segments; each strictly canonical base64url: alphabet ``A-Z a-z 0-9 - _``,
   no padding, no length of the form 4n+1, unused trailing bits zero (``malformed``).
3. Header and payload are JSON objects (msgspec) nested at most :data:`MAX_JSON_DEPTH` deep
   (``malformed``: msgspec counts its nesting against Python's recursion limit, so without a
   bound of its own a deep document's fate would hang on the caller's stack depth, and differ
   between the twins); a key repeated in any object of either
   is ``duplicate_keys`` (JSON parsers disagree on which copy wins: RFC 8725 §3.11).
4. Header: ``alg`` one of :data:`SUPPORTED_ALGORITHMS` exactly (so ``none`` in any casing and
   every HMAC algorithm are ``unsupported_alg``); any ``crit`` is ``crit`` (no extension is
   understood); ``jku``, ``x5u``, ``jwk``, ``x5c`` are never read: keys come only from
   configuration.
5. ``iss`` names a configured issuer exactly (``unknown_issuer``); ``typ`` is that issuer's
   token type, e.g. ``at+jwt`` or ``application/at+jwt`` ignoring case (``bad_typ``);
   ``kid`` is one of that issuer's keys (``unknown_kid``, carrying the issuer so a JWKS
   can be refreshed); ``alg`` is the algorithm of that key (``alg_not_allowed``).
6. The signature, by the ``cryptography`` package: Ed25519, ECDSA P-256 (raw ``r||s``,
   converted to DER) or RSA PKCS#1 v1.5 with SHA-256 (``bad_signature``).
7. Claims: ``exp`` and ``iat`` required integers, ``nbf`` an optional integer, ``sub`` and
   ``jti`` non-empty strings (``bad_claims``); ``now >= exp + leeway`` is ``expired``;
   ``nbf`` or ``iat`` after ``now + leeway`` is ``not_yet_valid``; ``aud`` (a string or a list
   of strings) must hold the issuer's audience (``bad_audience``); a revoked ``jti`` is
   ``revoked``.
8. The issuer's ``principal(claims)`` builds the result (and may raise ``bad_claims``).

A verified token is cached by its exact bytes until its ``exp`` (plus leeway), so a repeated
token costs one dict look-up. The cache is bounded (oldest entries go first), and an entry is
dropped when its ``jti`` is revoked or its key or issuer is removed.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = [
    "ALG_NOT_ALLOWED",
    "BAD_AUDIENCE",
    "BAD_CLAIMS",
    "BAD_SIGNATURE",
    "BAD_TYP",
    "CACHE_ENTRY_BYTES",
    "CRIT",
    "DUPLICATE_KEYS",
    "EXPIRED",
    "KIND_EC",
    "KIND_ED25519",
    "KIND_RSA",
    "MALFORMED",
    "MAX_HEADER_SEGMENT",
    "MAX_JSON_DEPTH",
    "MAX_KID",
    "MAX_NUMERIC_DATE",
    "NOT_YET_VALID",
    "REVOKED",
    "SUPPORTED_ALGORITHMS",
    "TOO_LARGE",
    "UNKNOWN_ISSUER",
    "UNKNOWN_KID",
    "UNSUPPORTED_ALG",
    "Issuer",
    "JWTError",
    "JWTVerifierPy",
    "PrincipalFactory",
    "VerifyKey",
    "b64url_decode",
    "b64url_encode",
    "count_json_keys",
    "count_raw_keys",
    "too_deep",
]

# Reasons (JWTError.reason). Short, stable strings: logged, counted, never secret.
TOO_LARGE: Final = "too_large"
MALFORMED: Final = "malformed"
DUPLICATE_KEYS: Final = "duplicate_keys"
UNSUPPORTED_ALG: Final = "unsupported_alg"
CRIT: Final = "crit"
UNKNOWN_ISSUER: Final = "unknown_issuer"
BAD_TYP: Final = "bad_typ"
UNKNOWN_KID: Final = "unknown_kid"
ALG_NOT_ALLOWED: Final = "alg_not_allowed"
BAD_SIGNATURE: Final = "bad_signature"
BAD_CLAIMS: Final = "bad_claims"
EXPIRED: Final = "expired"
NOT_YET_VALID: Final = "not_yet_valid"
BAD_AUDIENCE: Final = "bad_audience"
REVOKED: Final = "revoked"

SUPPORTED_ALGORITHMS: Final = frozenset({"EdDSA", "ES256", "RS256"})
MAX_HEADER_SEGMENT: Final = 1024
"""Longest accepted header segment (base64url characters)."""
MAX_KID: Final = 256
"""Longest ``kid`` that is looked up; longer is ``unknown_kid`` without a look-up."""
MIN_RSA_BITS: Final = 2048
MAX_NUMERIC_DATE: Final = 2**53 - 1
"""Largest accepted ``exp``/``iat``/``nbf``: exact as a double, so both twins compare alike."""
MAX_JSON_DEPTH: Final = 32
"""Deepest nesting of arrays and objects in the header or the claims (the object itself is 1)."""
CACHE_ENTRY_BYTES: Final = 768
"""What a cached verified token costs besides its own bytes, for the cache's byte bound: the
principal and its strings, the entry, and its slots in the two dicts (~760 bytes measured for
cygate's own tokens, compiled and pure: ``python -m benchmarks.macro.curve_callers --memory``)."""

# Key kinds: how the signature is checked (the compiled twin switches on these).
KIND_ED25519: Final = 0
KIND_EC: Final = 1
KIND_RSA: Final = 2
_KIND_OF_ALG = {"EdDSA": KIND_ED25519, "ES256": KIND_EC, "RS256": KIND_RSA}

# Shared, immutable parameter objects for cryptography's verify calls.
ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())
PKCS1V15: Final = padding.PKCS1v15()
SHA256: Final = hashes.SHA256()

PrincipalFactory = Callable[[dict[str, Any]], Any]
"""Builds the verifier's result from verified claims; raises :class:`JWTError` to refuse."""


class JWTError(Exception):
    """The token is not acceptable. ``reason`` is one of the module's reason constants.

    ``issuer`` is set with ``unknown_kid`` (the issuer whose key set lacks the ``kid``), so the
    caller can refresh that issuer's JWKS and try again.
    """

    def __init__(self, reason: str, issuer: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.issuer = issuer


class VerifyKey:
    """A public key that verifies tokens of one algorithm, named by its ``kid``."""

    __slots__ = ("alg", "key", "kid", "kind", "sig_len")

    def __init__(self, kid: str, alg: str, key: Any) -> None:
        if alg not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"unsupported algorithm {alg!r}")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID:
            raise ValueError("a key needs a kid of 1 to 256 characters")
        kind = _KIND_OF_ALG[alg]
        if kind == KIND_ED25519:
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise ValueError("EdDSA needs an Ed25519 public key")
            sig_len = 64
        elif kind == KIND_EC:
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
                key.curve, ec.SECP256R1
            ):
                raise ValueError("ES256 needs a P-256 public key")
            sig_len = 64
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                raise ValueError("RS256 needs an RSA public key")
            if key.key_size < MIN_RSA_BITS:
                raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
            sig_len = (key.key_size + 7) // 8
        self.kid = kid
        self.alg = alg
        self.key = key
        self.kind = kind
        self.sig_len = sig_len
        """Length of a well-formed signature, in bytes."""

    def __repr__(self) -> str:
        return f"VerifyKey(kid={self.kid!r}, alg={self.alg!r})"


class Issuer:
    """One trusted issuer: its audience, expected ``typ``, keys, and principal factory."""

    __slots__ = ("audience", "keys", "name", "principal", "typ", "typ_media")

    def __init__(
        self,
        name: str,
        *,
        audience: str,
        keys: Iterable[VerifyKey],
        principal: PrincipalFactory,
        typ: str | None = "at+jwt",
    ) -> None:
        self.name = name
        self.audience = audience
        self.keys: dict[str, VerifyKey] = {k.kid: k for k in keys}
        self.principal = principal
        self.typ = typ.lower() if typ else None
        """Required header ``typ`` (compared ignoring case), or None: not checked."""
        self.typ_media = f"application/{self.typ}" if self.typ else None


def _identity(claims: dict[str, Any]) -> Any:
    return claims


# ---------------------------------------------------------------------------------------------
# base64url, strict
# ---------------------------------------------------------------------------------------------

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def b64url_decode(segment: bytes) -> bytes:
    """Decode canonical unpadded base64url; anything else raises ``JWTError(malformed)``.

    Canonical means one spelling per byte string: no padding, no characters outside the
    alphabet, no length of the form 4n+1, and the bits below the last full byte are zero.
    """
    if segment.translate(None, _ALPHABET):
        raise JWTError(MALFORMED)
    rem = len(segment) % 4
    if rem == 1:
        raise JWTError(MALFORMED)
    if rem:
        last = _VALUE[segment[-1]]
        if last & (0x0F if rem == 2 else 0x03):
            raise JWTError(MALFORMED)
        segment += b"==" if rem == 2 else b"="
    try:
        return binascii.a2b_base64(segment.translate(_TO_STANDARD), strict_mode=True)
    except binascii.Error:  # pragma: no cover - the checks above leave nothing to fail
        raise JWTError(MALFORMED) from None


def b64url_encode(data: bytes) -> bytes:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


# ---------------------------------------------------------------------------------------------
# JSON objects, with duplicate keys refused
# ---------------------------------------------------------------------------------------------

# Every JSON string, and whether a ':' follows it (then it is a key). Scanning string by string
# from the start never lands inside a string: JSON has quotes nowhere else.
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"[ \t\n\r]*(:?)', re.DOTALL)
_decode_json = msgspec.json.Decoder().decode
_JSON_ERRORS = (msgspec.MsgspecError, ValueError, RecursionError)


def count_raw_keys(raw: bytes) -> int:
    """How many object keys the JSON text spells out, at every depth (valid JSON only)."""
    return _STRINGS.findall(raw).count(b":")


def count_json_keys(value: Any) -> int:
    """How many keys the decoded objects hold, at every depth."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            total += len(item)
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return total


# Every complete JSON string, and the bytes that are not brackets (what is left once strings
# are gone is the nesting).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_NESTING = bytes(c for c in range(256) if c not in b"[]{}")


def too_deep(raw: bytes) -> bool:
    """Whether the JSON text nests arrays and objects deeper than :data:`MAX_JSON_DEPTH`
    (brackets inside strings do not count; exact on valid JSON, a refusal either way else)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False  # PERF: too few brackets to nest that deep (every real token)
    depth = 0
    for c in _JSON_STRING.sub(b"", raw).translate(None, _NOT_NESTING):
        if c == 0x5B or c == 0x7B:  # [ {
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _json_object(raw: bytes) -> dict[str, Any]:
    if too_deep(raw):
        raise JWTError(MALFORMED)
    try:
        obj = _decode_json(raw)
    except _JSON_ERRORS:
        raise JWTError(MALFORMED) from None
    if type(obj) is not dict:
        raise JWTError(MALFORMED)
    # NOTE: a decoded dict keeps one copy of a repeated key, so fewer keys decoded than spelled
    # out means a duplicate (escapes included: "a\u006cg" and "alg" are the same key).
    if count_raw_keys(raw) != count_json_keys(obj):
        raise JWTError(DUPLICATE_KEYS)
    return obj


# ---------------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------------


def _signature_ok(key: VerifyKey, signature: bytes, signing_input: bytes) -> bool:
    if len(signature) != key.sig_len:
        return False
    try:
        if key.kind == KIND_ED25519:
            key.key.verify(signature, signing_input)
        elif key.kind == KIND_EC:
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            key.key.verify(encode_dss_signature(r, s), signing_input, ECDSA_SHA256)
        else:
            key.key.verify(signature, signing_input, PKCS1V15, SHA256)
    except InvalidSignature:
        return False
    return True


def _int_claim(claims: dict[str, Any], name: str, required: bool) -> int | None:
    if not required and name not in claims:
        return None
    value = claims.get(name)
    # NOTE: an integer NumericDate in [0, 2**53): bool, float, a numeric string or a number
    # no clock will reach (and no float can hold) are all refused.
    if type(value) is not int or not 0 <= value <= MAX_NUMERIC_DATE:
        raise JWTError(BAD_CLAIMS)
    return value


def _audience_ok(aud: Any, audience: str) -> bool:
    if type(aud) is str:
        return aud == audience
    if type(aud) is list:
        ok = False
        for item in aud:
            if type(item) is not str:
                return False
            if item == audience:
                ok = True
        return ok
    return False


# ---------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------


class JWTVerifierPy:
    """Verifies access tokens of the configured issuers; caches verified tokens by their bytes.

    ``leeway`` (seconds) applies to ``exp``, ``nbf`` and ``iat``. ``cache_size`` 0 disables the
    cache. ``revoked_size`` bounds the remembered revoked ``jti`` values (expired ones go first).
    ``cache_bytes`` bounds the cache's memory too (0: by count only): each entry counts as its
    token's length plus :data:`CACHE_ENTRY_BYTES`; the oldest go first when either bound is
    reached. ``verified`` counts the tokens accepted after a full check (signature included),
    not from the cache: its growth against the requests is the share the cache did not know.
    """

    def __init__(
        self,
        *,
        leeway: float = 0,
        max_token_bytes: int = 4096,
        cache_size: int = 10_000,
        revoked_size: int = 100_000,
        cache_bytes: int = 0,
    ) -> None:
        if leeway < 0 or max_token_bytes < 16 or cache_size < 0 or revoked_size < 1:
            raise ValueError("leeway >= 0, max_token_bytes >= 16, cache_size >= 0 please")
        if cache_bytes < 0:
            raise ValueError("cache_bytes >= 0 please")
        self.leeway = float(leeway)
        self.max_token_bytes = max_token_bytes
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._held = 0  # bytes the cached entries count as (see cache_bytes)
        self.revoked_size = revoked_size
        self._issuers: dict[str, Issuer] = {}
        # token bytes -> (value, valid while now < this, jti, issuer, kid)
        self._cache: dict[bytes, tuple[Any, float, str, str, str]] = {}
        self._by_jti: dict[str, bytes] = {}
        self._revoked: dict[str, float] = {}  # jti -> forget after (its exp + leeway)
        self.verified = 0

    # -- configuration ------------------------------------------------------------------------

    def set_issuer(
        self,
        name: str,
        *,
        audience: str,
        keys: Iterable[VerifyKey],
        principal: PrincipalFactory | None = None,
        typ: str | None = "at+jwt",
    ) -> None:
        """Trust ``name`` with these keys (replacing its previous set; cached tokens of keys
        that are gone are dropped)."""
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

    def remove_issuer(self, name: str) -> None:
        """Stop trusting ``name``; its cached tokens are dropped."""
        if self._issuers.pop(name, None) is not None:
            self._drop_where(lambda iss, kid: iss == name)

    def issuers(self) -> dict[str, Issuer]:
        """The configured issuers (a copy)."""
        return dict(self._issuers)

    # -- revocation and the cache --------------------------------------------------------------

    def revoke_jti(self, jti: str, until: float) -> None:
        """Refuse tokens with this ``jti`` from now on (until ``until``, seconds since the epoch,
        after which the token has expired anyway); drops its cached entry."""
        token = self._by_jti.pop(jti, None)
        if token is not None:
            self._forget(token)
        if jti not in self._revoked and len(self._revoked) >= self.revoked_size:
            now = time.time()
            for old in [j for j, t in self._revoked.items() if t <= now]:
                del self._revoked[old]
            if len(self._revoked) >= self.revoked_size:
                del self._revoked[next(iter(self._revoked))]
        self._revoked[jti] = max(until, self._revoked.get(jti, 0.0))

    def is_revoked(self, jti: str) -> bool:
        """Whether ``revoke_jti`` was called for ``jti`` (and not forgotten since)."""
        return jti in self._revoked

    def clear_cache(self) -> None:
        """Forget every verified token (revocations are kept)."""
        self._cache.clear()
        self._by_jti.clear()
        self._held = 0

    def cache_len(self) -> int:
        """Number of cached verified tokens."""
        return len(self._cache)

    def cache_held_bytes(self) -> int:
        """Bytes the cached tokens count as against ``cache_bytes``."""
        return self._held

    def _forget(self, token: bytes) -> None:
        """Drop ``token``'s entry, if cached (not its ``_by_jti`` slot: the callers do)."""
        if self._cache.pop(token, None) is not None:
            self._held -= len(token) + CACHE_ENTRY_BYTES

    def _drop_where(self, predicate: Callable[[str, str], bool]) -> None:
        for token, entry in list(self._cache.items()):
            if predicate(entry[3], entry[4]):
                self._forget(token)
                if self._by_jti.get(entry[2]) == token:
                    del self._by_jti[entry[2]]

    def _remember(self, token: bytes, entry: tuple[Any, float, str, str, str]) -> None:
        cache = self._cache
        jti = entry[2]
        cost = len(token) + CACHE_ENTRY_BYTES
        bound = self.cache_bytes
        if bound and cost > bound:
            return  # would never fit
        previous = self._by_jti.get(jti)
        if previous is not None:
            # At most one cached token per jti, so revoking the jti reaches every copy.
            self._forget(previous)
        while cache and (len(cache) >= self.cache_size or (bound and self._held + cost > bound)):
            oldest = next(iter(cache))
            old = cache[oldest]
            self._forget(oldest)
            if self._by_jti.get(old[2]) == oldest:
                del self._by_jti[old[2]]
        cache[token] = entry
        self._held += cost
        self._by_jti[jti] = token

    # -- verification -------------------------------------------------------------------------

    def verify(self, token: bytes | str, now: float | None = None) -> Any:
        """The principal of a valid token; raises :class:`JWTError` otherwise."""
        if now is None:
            now = time.time()
        if type(token) is not bytes:
            token = _as_bytes(token)
        entry = self._cache.get(token)
        if entry is not None:
            if now < entry[1]:
                return entry[0]
            self._forget(token)
            if self._by_jti.get(entry[2]) == token:
                del self._by_jti[entry[2]]
        return self._verify(token, now)

    def _verify(self, token: bytes, now: float) -> Any:
        # 1. sizes
        if len(token) > self.max_token_bytes:
            raise JWTError(TOO_LARGE)
        first = token.find(b".")
        if first > MAX_HEADER_SEGMENT:
            raise JWTError(TOO_LARGE)
        # 2. segments
        second = token.find(b".", first + 1) if first >= 0 else -1
        if second < 0 or token.find(b".", second + 1) >= 0:
            raise JWTError(MALFORMED)
        header_raw = b64url_decode(token[:first])
        payload_raw = b64url_decode(token[first + 1 : second])
        signature = b64url_decode(token[second + 1 :])
        # 3-4. header
        header = _json_object(header_raw)
        alg = header.get("alg")
        if type(alg) is not str or alg not in SUPPORTED_ALGORITHMS:
            raise JWTError(UNSUPPORTED_ALG)
        if "crit" in header:
            raise JWTError(CRIT)
        claims = _json_object(payload_raw)
        # 5. issuer, typ, key
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if type(iss) is str else None
        if issuer is None:
            raise JWTError(UNKNOWN_ISSUER)
        if issuer.typ is not None:
            typ = header.get("typ")
            if type(typ) is not str:
                raise JWTError(BAD_TYP)
            typ = typ.lower()
            if typ != issuer.typ and typ != issuer.typ_media:
                raise JWTError(BAD_TYP)
        kid = header.get("kid")
        key = issuer.keys.get(kid) if type(kid) is str and len(kid) <= MAX_KID else None
        if key is None:
            raise JWTError(UNKNOWN_KID, issuer.name)
        if alg != key.alg:
            raise JWTError(ALG_NOT_ALLOWED)
        # 6. signature
        if not _signature_ok(key, signature, token[:second]):
            raise JWTError(BAD_SIGNATURE)
        # 7. claims
        exp = _int_claim(claims, "exp", True)
        iat = _int_claim(claims, "iat", True)
        nbf = _int_claim(claims, "nbf", False)
        sub = claims.get("sub")
        jti = claims.get("jti")
        if type(sub) is not str or not sub or type(jti) is not str or not jti:
            raise JWTError(BAD_CLAIMS)
        assert exp is not None and iat is not None
        limit = exp + self.leeway
        if now >= limit:
            raise JWTError(EXPIRED)
        horizon = now + self.leeway
        if iat > horizon or (nbf is not None and nbf > horizon):
            raise JWTError(NOT_YET_VALID)
        if not _audience_ok(claims.get("aud"), issuer.audience):
            raise JWTError(BAD_AUDIENCE)
        if jti in self._revoked:
            raise JWTError(REVOKED)
        # 8. result
        value = issuer.principal(claims)
        self.verified += 1
        if self.cache_size:
            self._remember(token, (value, float(limit), jti, issuer.name, key.kid))
        return value


def _as_bytes(token: Any) -> bytes:
    if isinstance(token, str):
        if not token.isascii():
            raise JWTError(MALFORMED)
        return token.encode("ascii")
    if isinstance(token, bytes | bytearray | memoryview):
        return bytes(token)
    raise TypeError(f"a token is bytes or str, not {type(token).__name__}")
