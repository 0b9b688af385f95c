"""Differential fuzz targets: each compiled parser of untrusted input against its pure twin.

Each target takes the fuzzer's bytes, builds one or more inputs from them (with atheris's
``FuzzedDataProvider``, so a saved input replays the same way in a test), runs both twins on
them and raises :class:`Disagreement` unless both returned equal values or raised the same
exception type (for ``JWTError``, the same ``reason`` and ``issuer`` too). Any other exception
escaping a target is a crash of one twin, or of both: atheris reports either.

The targets:

``jwt``
    ``JWTVerifier.verify`` of hostile tokens: raw bytes (or text) as the token, or a token built
    from fuzzed header and claims (known and odd ``alg``/``typ``/``kid``/``crit``, NumericDates
    of every type, audiences, duplicate keys, raw JSON) signed with a trusted key, a stranger's
    key or not at all, so the fuzzer reaches every rule up to the principal. ``now`` is fixed.
    Each twin verifies twice: the second answer comes from its cache.
``path``
    ``normalize_path`` of raw request paths.
``router``
    A route table built from fuzzed patterns (static, typed parameters, wildcards, hosts) in both
    twins, then ``match`` of fuzzed methods, hosts and paths (normalised, or raw text).
``cachekey``
    ``CacheKey`` with fuzzed allow-lists: ``canonical`` and ``key`` of fuzzed requests (query
    strings, header lists, principals), and the ``If-None-Match``/``Cache-Control`` it keeps.
``httpresp``
    ``parse_response`` of raw upstream response bytes (with ``head_only`` and a skip set).
``ids``
    ``format_ids`` of random bytes (every length).
"""

from __future__ import annotations

import base64
import functools
import importlib
import json
import reprlib
from collections.abc import Callable
from typing import Any

import atheris
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cygate.core import _cachekey_py, _httpresp_py, _ids_py, _jwt_py, _router_py

__all__ = ["TARGETS", "Disagreement", "compiled_available"]

NOW = 1_700_000_000.0
"""The clock of every ``verify`` (so no token expires between the two twins' calls)."""


class Disagreement(AssertionError):
    """The compiled and the pure twin answered the same input differently."""


def _compiled(hot_path: str) -> Any:
    return importlib.import_module(f"cygate.core._{hot_path}_c")


def compiled_available() -> bool:
    """Whether every compiled twin the targets need is importable."""
    try:
        for name in ("jwt", "router", "cachekey", "httpresp", "ids"):
            _compiled(name)
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Comparing the twins
# ---------------------------------------------------------------------------------------------


def _outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "value", fn(*args)
    except _jwt_py.JWTError as exc:
        return "raised", (type(exc), exc.reason, exc.issuer)
    except (ValueError, TypeError, UnicodeError, OverflowError) as exc:
        # NOTE: the message is the twin's own wording; the type is the contract.
        return "raised", (type(exc),)


_repr = reprlib.Repr()  # bounded: a disagreement may be about a value nested 1000 deep
_repr.maxlevel, _repr.maxstring, _repr.maxother = 4, 300, 300
_short = _repr.repr


def _same(what: str, py: tuple[str, Any], c: tuple[str, Any]) -> None:
    if py != c:
        raise Disagreement(f"{what}: pure {_short(py)} != compiled {_short(c)}")


def _both(what: str, fn_py: Callable[..., Any], fn_c: Callable[..., Any], *args: Any) -> Any:
    py = _outcome(fn_py, *args)
    c = _outcome(fn_c, *args)
    _same(f"{what}{_short(args)}", py, c)
    return py[1] if py[0] == "value" else None


# ---------------------------------------------------------------------------------------------
# jwt
# ---------------------------------------------------------------------------------------------

ISSUER = "https://id.example"
AUDIENCE = "cygate"
_KIDS = {"EdDSA": "ed-1", "ES256": "ec-1", "RS256": "rsa-1"}


class _Keys:
    """Fixed keys per process (made once: RSA generation is slow)."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {
            "EdDSA": ed25519.Ed25519PrivateKey.generate(),
            "ES256": ec.generate_private_key(ec.SECP256R1()),
            "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        }
        self.stranger = ed25519.Ed25519PrivateKey.generate()

    def sign(self, alg: str, signing_input: bytes, stranger: bool = False) -> bytes:
        if stranger or alg not in self.private:
            return bytes(self.stranger.sign(signing_input))
        key = self.private[alg]
        if alg == "EdDSA":
            return bytes(key.sign(signing_input))
        if alg == "ES256":
            r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return bytes(key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))


_keys: _Keys | None = None
_verifiers: list[tuple[Any, Any]] = []


def _jwt_pairs() -> list[tuple[Any, Any]]:
    """(pure, compiled) verifiers: one without a cache, one with a small one."""
    global _keys
    if not _verifiers:
        _keys = _Keys()
        keys = [
            _jwt_py.VerifyKey(_KIDS[alg], alg, key.public_key())
            for alg, key in _keys.private.items()
        ]
        compiled = _compiled("jwt").JWTVerifierC
        for cache_size in (0, 4):
            pair = []
            for cls in (_jwt_py.JWTVerifierPy, compiled):
                verifier = cls(leeway=30, max_token_bytes=4096, cache_size=cache_size)
                verifier.set_issuer(ISSUER, audience=AUDIENCE, keys=keys)
                verifier.set_issuer("plain", audience="other", keys=keys[:1], typ=None)
                verifier.revoke_jti("revoked-jti", NOW + 3600)
                pair.append(verifier)
            _verifiers.append((pair[0], pair[1]))
    return _verifiers


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_INTS = [
    int(NOW),
    int(NOW) - 1000,
    int(NOW) + 1000,
    int(NOW) + 29,
    int(NOW) - 30,
    0,
    -1,
    2**53 - 1,
    2**53,
    2**63,
    2**64 + 1,
    10**30,
]
_ODD = [True, False, None, 1.5, float(int(NOW)), "1700000000", [], {}, "", "x"]


def _claim(fdp: Any, pool: list[Any]) -> Any:
    choice = fdp.ConsumeIntInRange(0, 3)
    if choice == 0:
        return fdp.PickValueInList(pool)
    if choice == 1:
        return fdp.PickValueInList(_ODD)
    if choice == 2:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))
    return fdp.ConsumeIntInRange(-(2**62), 2**62)


def _jwt_json(fdp: Any, obj: dict[str, Any]) -> bytes:
    """The object as JSON, or mutated: a duplicate key, raw bytes, nesting, odd spacing."""
    mode = fdp.ConsumeIntInRange(0, 5)
    text = json.dumps(obj, separators=(",", ":")).encode()
    if mode == 1 and obj:
        name = fdp.PickValueInList(sorted(obj))
        dup = json.dumps({name: _claim(fdp, _INTS)}).encode()[1:-1]
        text = text[:-1] + b"," + dup + b"}"
    elif mode == 2:
        text = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    elif mode == 3:
        # Nested arrays and objects, balanced or not, up to past any depth limit.
        depth = fdp.ConsumeIntInRange(0, 1500)
        opening, closing = (b"[", b"]") if fdp.ConsumeBool() else (b'{"a":', b"}")
        shut = depth if fdp.ConsumeIntInRange(0, 3) else fdp.ConsumeIntInRange(0, depth)
        text = text[:-1] + b',"n":' + opening * depth + b"0" + closing * shut + b"}"
    elif mode == 4:
        text = json.dumps(obj, indent=1, ensure_ascii=True).encode()
    return text


def _jwt_token(fdp: Any) -> bytes | str:
    mode = fdp.ConsumeIntInRange(0, 4)
    if mode == 0:
        return fdp.ConsumeBytes(fdp.remaining_bytes())
    if mode == 1:
        return fdp.ConsumeUnicode(fdp.remaining_bytes())
    alg = fdp.PickValueInList(["EdDSA", "ES256", "RS256", "none", "HS256", "eddsa", 7])
    header: dict[str, Any] = {}
    if fdp.ConsumeIntInRange(0, 9):
        header["alg"] = alg
    if fdp.ConsumeIntInRange(0, 9):
        header["typ"] = fdp.PickValueInList(
            ["at+jwt", "AT+JWT", "application/at+jwt", "JWT", "", 1, "application/jwt"]
        )
    if fdp.ConsumeIntInRange(0, 9):
        kid_alg = alg if alg in _KIDS and fdp.ConsumeIntInRange(0, 3) else "EdDSA"
        header["kid"] = _KIDS[kid_alg] if fdp.ConsumeIntInRange(0, 5) else _claim(fdp, ["k" * 300])
    if not fdp.ConsumeIntInRange(0, 15):
        header["crit"] = ["exp"]
    claims: dict[str, Any] = {}
    for name, pool in (
        ("iss", [ISSUER, "plain", "https://evil.example"]),
        ("sub", ["user-1", ""]),
        ("jti", ["jti-1", "revoked-jti", ""]),
        ("exp", _INTS),
        ("iat", _INTS),
        ("nbf", _INTS),
        ("aud", [AUDIENCE, [AUDIENCE, "x"], ["x"], [AUDIENCE, 1], "other"]),
    ):
        present = fdp.ConsumeIntInRange(0, 7)
        if present == 0:
            continue
        claims[name] = pool[0] if present >= 4 else _claim(fdp, pool)
    signing_input = _b64(_jwt_json(fdp, header)) + b"." + _b64(_jwt_json(fdp, claims))
    sig_mode = fdp.ConsumeIntInRange(0, 7)
    if sig_mode == 0:
        signature = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
    else:
        signature = _keys.sign(str(alg), signing_input, stranger=sig_mode == 1) if _keys else b""
        if sig_mode == 2 and signature:
            signature = signature[:-1] + bytes([signature[-1] ^ 1])
    token = signing_input + b"." + _b64(signature)
    if mode == 4:
        # A mutation of the finished token: a byte changed, or text around it.
        where = fdp.ConsumeIntInRange(0, len(token))
        token = token[:where] + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4)) + token[where + 1 :]
    return token


def fuzz_jwt(data: bytes) -> None:
    pairs = _jwt_pairs()
    fdp = atheris.FuzzedDataProvider(data)
    token = _jwt_token(fdp)
    for py, c in pairs:
        for _ in range(2):  # the second answer may come from the cache
            _both("verify", py.verify, c.verify, token, NOW)
        if py.cache_len() != c.cache_len():
            raise Disagreement(f"cache_len {py.cache_len()} != {c.cache_len()}: {_short(token)}")


# ---------------------------------------------------------------------------------------------
# path, router
# ---------------------------------------------------------------------------------------------


def fuzz_path(data: bytes) -> None:
    _both("normalize_path", _router_py.normalize_path, _compiled("router").normalize_path, data)


_SEGMENTS = [
    "api",
    "v1",
    "products",
    "a",
    "{id}",
    "{id:int}",
    "{id:uuid}",
    "{name:str}",
    "{rest:path}",
    "{x:bad}",
    "..",
    "%2F",
    "café",
    "ŝ",
    "😀",
    "{",
    "",
]
_WORDS = [
    "api",
    "v1",
    "products",
    "a",
    "42",
    "-7",
    "1234567890123456789",
    "0193a2b4-0000-7000-8000-00000000000A",
    "0193a2b4-0000-7000-8000-00000000000g",
    "café",
    "ŝ",
    "😀",
    "x y",
    "{id}",
]
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "*", "get", ""]
_HOSTS = [None, "a.example", "b.example", "A.example"]


def _routers() -> tuple[Any, Any]:
    return _router_py.RouterPy(), _compiled("router").RouterC()


def fuzz_router(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    py, c = _routers()
    for index in range(fdp.ConsumeIntInRange(0, 8)):
        parts = []
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            if fdp.ConsumeIntInRange(0, 7):
                parts.append(fdp.PickValueInList(_SEGMENTS))
            else:
                parts.append(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 6)))
        pattern = "/" + "/".join(parts)
        method = fdp.PickValueInList(_METHODS)
        host = fdp.PickValueInList(_HOSTS)
        _both("add", py.add, c.add, method, pattern, index, host)
    if py.routes() != c.routes():
        raise Disagreement(f"routes: {py.routes()!r} != {c.routes()!r}")
    normalize = _router_py.normalize_path
    while fdp.remaining_bytes():
        method = fdp.PickValueInList(_METHODS)
        host = fdp.PickValueInList(_HOSTS)
        if host is not None:
            host = host.lower()
        if fdp.ConsumeBool():  # a path of words the routes may know
            words = []
            for _ in range(fdp.ConsumeIntInRange(0, 5)):
                if fdp.ConsumeIntInRange(0, 5):
                    words.append(fdp.PickValueInList(_WORDS))
                else:
                    words.append(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 4)))
            raw = "/".join(words).encode("utf-8", "surrogatepass")
        else:
            raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
        if fdp.ConsumeIntInRange(0, 3):
            try:
                path = normalize(b"/" + raw)
            except _router_py.PathError:
                continue
        else:
            path = raw.decode("utf-8", "replace")
        _both("match", py.match, c.match, method, path, host)


# ---------------------------------------------------------------------------------------------
# cachekey
# ---------------------------------------------------------------------------------------------

_QUERY_NAMES = ["limit", "sort", "q", "tag", "a b", "é", "%41", ""]
_HEADER_NAMES = ["accept", "accept-language", "x-tenant", " X-Mixed ", "if-none-match"]
_REQUEST_HEADERS = [
    b"accept",
    b"if-none-match",
    b"cache-control",
    b"pragma",
    b"x-tenant",
    b"accept-language",
    b"x-mixed",
    b"Accept",
]
_QUERY_BITS = [b"&", b"=", b"%", b"+", b"%2", b"%41", b"%zz", b"limit", b"sort", b"q", b"tag"]


def _query(fdp: Any) -> bytes:
    out = []
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        if fdp.ConsumeBool():
            out.append(fdp.PickValueInList(_QUERY_BITS))
        else:
            out.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 6)))
    return b"".join(out)


def fuzz_cachekey(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    query = [fdp.PickValueInList(_QUERY_NAMES) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if fdp.ConsumeIntInRange(0, 7) == 0:
        query.append(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 6)))
    headers = [fdp.PickValueInList(_HEADER_NAMES) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    private = fdp.ConsumeBool()
    route = fdp.PickValueInList(["GET /api/v1/products", "r", "é\udc80"])
    specs = []
    for cls in (_cachekey_py.CacheKeyPy, _compiled("cachekey").CacheKeyC):
        make = functools.partial(cls, query=query, headers=headers, private=private)
        specs.append(_outcome(make, b"secret", route))
    if specs[0][0] != "value" or specs[1][0] != "value":
        _same(f"CacheKey({route!r}, {query!r}, {headers!r})", specs[0], specs[1])
        return
    py, c = specs[0][1], specs[1][1]
    for attr in ("route", "query_names", "header_names", "private"):
        _same(attr, ("value", getattr(py, attr)), ("value", getattr(c, attr)))
    while fdp.remaining_bytes():
        method = fdp.PickValueInList(["GET", "HEAD", "é", ""])
        path = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 24))
        qs = _query(fdp)
        request_headers = []
        for _ in range(fdp.ConsumeIntInRange(0, 5)):
            name = (
                fdp.PickValueInList(_REQUEST_HEADERS)
                if fdp.ConsumeIntInRange(0, 5)
                else fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4))
            )
            request_headers.append((name, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12))))
        principal = (
            None
            if fdp.ConsumeIntInRange(0, 3) == 0
            else fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 8))
        )
        args = (method, path, qs, request_headers, principal)
        _both("canonical", py.canonical, c.canonical, *args)
        _both("key", py.key, c.key, *args)
        if (py.if_none_match, py.cache_control) != (c.if_none_match, c.cache_control):
            raise Disagreement(
                f"conditional headers of {args!r}: pure {(py.if_none_match, py.cache_control)!r}"
                f" != compiled {(c.if_none_match, c.cache_control)!r}"
            )


# ---------------------------------------------------------------------------------------------
# httpresp, ids
# ---------------------------------------------------------------------------------------------

_SKIPS = [None, frozenset(), frozenset({b"connection", b"date"}), frozenset({b"content-length"})]


def fuzz_httpresp(data: bytes) -> None:
    head_only = bool(data[:1]) and data[0] & 1 == 1
    skip = _SKIPS[(data[0] >> 1) % len(_SKIPS)] if data else None
    body = data[1:]
    _both(
        "parse_response",
        _httpresp_py.parse_response,
        _compiled("httpresp").parse_response,
        body,
        head_only,
        skip,
    )


def fuzz_ids(data: bytes) -> None:
    _both("format_ids", _ids_py.format_ids, _compiled("ids").format_ids, data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "jwt": fuzz_jwt,
    "path": fuzz_path,
    "router": fuzz_router,
    "cachekey": fuzz_cachekey,
    "httpresp": fuzz_httpresp,
    "ids": fuzz_ids,
}
"""Every target by name, in the order ``make fuzz`` runs them."""
