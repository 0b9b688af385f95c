"""Signed test tokens, and the catalogue of malicious ones every verifier must refuse.

Shared by the verifier's unit tests (both implementations), its differential test, and the
acceptance test that sends every case through a running gateway. Tokens are built here from
raw bytes (header JSON, payload JSON, signature) so a case can be malformed in exactly one way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["DROP", "Case", "SigningKeys", "b64", "malicious_cases", "noncanonical", "sign", "token"]

ISSUER = "cygate"
AUDIENCE = "cygate"


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _json(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()


def sign(alg: str, private: Any, signing_input: bytes) -> bytes:
    """A JWS signature for ``alg`` (``private`` is a key object, or bytes for HMAC)."""
    if alg == "EdDSA":
        return bytes(private.sign(signing_input))
    if alg == "ES256":
        r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if alg == "RS256":
        return bytes(private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))
    if alg == "HS256":
        return hmac.new(private, signing_input, hashlib.sha256).digest()
    if alg.lower() == "none":
        return b""
    raise ValueError(alg)


def token(
    header: Any, payload: Any, alg: str, private: Any, signature: bytes | None = None
) -> bytes:
    """``b64(header).b64(payload).b64(signature)``; header/payload are dicts or raw JSON bytes."""
    signing_input = b64(_json(header)) + b"." + b64(_json(payload))
    sig = sign(alg, private, signing_input) if signature is None else signature
    return signing_input + b"." + b64(sig)


@dataclass
class SigningKeys:
    """The trusted keys (one per algorithm) and an attacker's keys, with their kids."""

    ed: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    ec: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    rsa: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    evil_ed: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    evil_rsa: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    kids: dict[str, str] = field(
        default_factory=lambda: {"EdDSA": "ed-1", "ES256": "ec-1", "RS256": "rsa-1"}
    )

    def private(self, alg: str) -> Any:
        return {"EdDSA": self.ed, "ES256": self.ec, "RS256": self.rsa}[alg]

    def public_pem(self, alg: str) -> bytes:
        return bytes(
            self.private(alg)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def claims(self, now: int | None = None, **changes: Any) -> dict[str, Any]:
        now = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "0193a2b4-0000-7000-8000-000000000001",
            "exp": now + 600,
            "iat": now - 5,
            "jti": "jti-" + base64.urlsafe_b64encode(now.to_bytes(8, "big")).decode(),
            "roles": ["customer"],
        }
        for name, value in changes.items():
            if value is _DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def header(self, alg: str = "EdDSA", **changes: Any) -> dict[str, Any]:
        header: dict[str, Any] = {"alg": alg, "typ": "at+jwt", "kid": self.kids[alg]}
        for name, value in changes.items():
            if value is _DROP:
                header.pop(name, None)
            else:
                header[name] = value
        return header

    def good(self, alg: str = "EdDSA", now: int | None = None, **claims: Any) -> bytes:
        """A valid token signed by the trusted key of ``alg``."""
        return token(self.header(alg), self.claims(now, **claims), alg, self.private(alg))


_DROP = object()
DROP: Any = _DROP
"""Pass as a claim or header value to leave that member out."""


@dataclass(frozen=True)
class Case:
    id: str
    token: bytes
    reason: str
    """The reason both verifiers give (the module constants' values)."""


_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _without(mapping: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != name}


def noncanonical(segment: bytes) -> bytes:
    """The same decoded bytes spelled non-canonically (an unused trailing bit set)."""
    rem = len(segment) % 4
    if rem not in (2, 3):
        raise ValueError("a segment of length 4n has no unused bits")
    value = _ALPHABET.index(segment[-1:])
    return segment[:-1] + _ALPHABET[value | 1 : (value | 1) + 1]


def _flip(tok: bytes, index: int) -> bytes:
    """Change one base64url character to another valid one (so the bytes stay canonical-ish)."""
    c = tok[index]
    swap = ord("A") if c != ord("A") else ord("B")
    return tok[:index] + bytes((swap,)) + tok[index + 1 :]


def malicious_cases(keys: SigningKeys, now: int | None = None) -> list[Case]:
    """Every attack of the issue's list (and a few more), each with its expected reason."""
    now = int(time.time()) if now is None else now
    ed = keys.ed
    h, c = keys.header, keys.claims
    cases: list[Case] = []

    def add(case_id: str, tok: bytes, reason: str) -> None:
        cases.append(Case(case_id, tok, reason))

    def ed_token(header: Any = None, claims: Any = None) -> bytes:
        return token(
            h() if header is None else header, c(now) if claims is None else claims, "EdDSA", ed
        )

    # alg none, in any casing, with and without a signature
    for spelling in ("none", "None", "NONE", "nOnE"):
        add(
            f"alg-{spelling}",
            token(h(alg="EdDSA") | {"alg": spelling}, c(now), "none", None),
            "unsupported_alg",
        )
    add("alg-none-signed", ed_token(h() | {"alg": "none"}), "unsupported_alg")
    # HS256 with the server's public key as the HMAC secret (the RS/HS confusion), per key type
    for alg in ("EdDSA", "ES256", "RS256"):
        header = h(alg) | {"alg": "HS256"}
        add(
            f"hs256-with-{alg}-public-key",
            token(header, c(now), "HS256", keys.public_pem(alg)),
            "unsupported_alg",
        )
    add("hs512", token(h() | {"alg": "HS512"}, c(now), "none", None, b"x" * 64), "unsupported_alg")
    add("alg-missing", ed_token(_without(h(), "alg")), "unsupported_alg")
    add("alg-null", ed_token(h() | {"alg": None}), "unsupported_alg")
    add("alg-not-string", ed_token(h() | {"alg": ["EdDSA"]}), "unsupported_alg")
    add("alg-ps256", ed_token(h() | {"alg": "PS256"}), "unsupported_alg")
    # an algorithm that is supported, but not the algorithm of the key the kid names
    add(
        "es256-on-ed25519-kid",
        token(h("ES256") | {"kid": keys.kids["EdDSA"]}, c(now), "ES256", keys.ec),
        "alg_not_allowed",
    )
    add(
        "rs256-on-ed25519-kid",
        token(h("RS256") | {"kid": keys.kids["EdDSA"]}, c(now), "RS256", keys.rsa),
        "alg_not_allowed",
    )
    add(
        "eddsa-on-rsa-kid",
        token(h("EdDSA") | {"kid": keys.kids["RS256"]}, c(now), "EdDSA", ed),
        "alg_not_allowed",
    )
    add(
        "es256-on-rsa-kid",
        token(h("ES256") | {"kid": keys.kids["RS256"]}, c(now), "ES256", keys.ec),
        "alg_not_allowed",
    )
    # unknown kids, and kids that look like paths, SQL or URLs (only ever a dict look-up)
    for name, kid in (
        ("unknown", "no-such-key"),
        ("path", "../../../../../etc/passwd"),
        ("abs-path", "/dev/null"),
        ("sql", "' OR '1'='1'; DROP TABLE users; --"),
        ("url", "https://attacker.example/jwks.json#k1"),
        ("nul", "ed-1\x00"),
        ("long", "k" * 300),
        ("case", keys.kids["EdDSA"].upper()),
    ):
        add(f"kid-{name}", ed_token(h(kid=kid)), "unknown_kid")
    add("kid-missing", ed_token(h(kid=DROP)), "unknown_kid")
    add("kid-null", ed_token(h(kid=None)), "unknown_kid")
    add("kid-number", ed_token(h(kid=1)), "unknown_kid")
    # keys offered by the token itself are never used: an attacker's key, named in every way
    evil_pub = keys.evil_ed.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    evil_jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(evil_pub).decode(), "kid": "evil"}
    for member, value in (
        ("jku", "http://127.0.0.1:9/jwks.json"),
        ("x5u", "http://127.0.0.1:9/cert.pem"),
        ("jwk", evil_jwk),
        ("x5c", ["MIIBszCCAVmgAwIBAgIUQ"]),
    ):
        header = h() | {member: value, "kid": "evil"}
        add(f"{member}-attacker-kid", token(header, c(now), "EdDSA", keys.evil_ed), "unknown_kid")
        header = h() | {member: value}
        add(f"{member}-trusted-kid", token(header, c(now), "EdDSA", keys.evil_ed), "bad_signature")
    evil_rsa_jwk = {"kty": "RSA", "kid": keys.kids["RS256"], "n": "AQAB", "e": "AQAB"}
    add(
        "jwk-rsa-trusted-kid",
        token(h("RS256") | {"jwk": evil_rsa_jwk}, c(now), "RS256", keys.evil_rsa),
        "bad_signature",
    )
    # time claims (leeway 0 in the verifiers these cases are run against)
    add("exp-now", ed_token(claims=c(now, exp=now)), "expired")
    add("exp-past", ed_token(claims=c(now, exp=now - 1)), "expired")
    add("exp-missing", ed_token(claims=c(now, exp=DROP)), "bad_claims")
    for name, value in (
        ("string", str(now + 600)),
        ("float", now + 600.5),
        ("float-int", float(now + 600)),
        ("bool", True),
        ("null", None),
        ("huge", 10**30),
        ("negative", -1),
        ("list", [now + 600]),
    ):
        add(f"exp-{name}", ed_token(claims=c(now, exp=value)), "bad_claims")
    add("nbf-future", ed_token(claims=c(now, nbf=now + 120)), "not_yet_valid")
    add("nbf-string", ed_token(claims=c(now, nbf=str(now))), "bad_claims")
    add("iat-future", ed_token(claims=c(now, iat=now + 120)), "not_yet_valid")
    add("iat-missing", ed_token(claims=c(now, iat=DROP)), "bad_claims")
    add("iat-float", ed_token(claims=c(now, iat=now - 0.5)), "bad_claims")
    # audience and issuer
    add("aud-wrong", ed_token(claims=c(now, aud="someone-else")), "bad_audience")
    add("aud-list-wrong", ed_token(claims=c(now, aud=["a", "b"])), "bad_audience")
    add("aud-missing", ed_token(claims=c(now, aud=DROP)), "bad_audience")
    add("aud-prefix", ed_token(claims=c(now, aud=AUDIENCE + "x")), "bad_audience")
    add("aud-list-non-string", ed_token(claims=c(now, aud=[AUDIENCE, 1])), "bad_audience")
    add("aud-object", ed_token(claims=c(now, aud={"aud": AUDIENCE})), "bad_audience")
    for name, iss in (
        ("prefix", ISSUER[:-1]),
        ("longer", ISSUER + ".evil.example"),
        ("slash", ISSUER + "/"),
        ("case", ISSUER.upper()),
        ("space", " " + ISSUER),
        ("missing", DROP),
        ("list", [ISSUER]),
        ("null", None),
    ):
        add(f"iss-{name}", ed_token(claims=c(now, iss=iss)), "unknown_issuer")
    # sub, jti
    add("sub-missing", ed_token(claims=c(now, sub=DROP)), "bad_claims")
    add("sub-empty", ed_token(claims=c(now, sub="")), "bad_claims")
    add("sub-number", ed_token(claims=c(now, sub=7)), "bad_claims")
    add("jti-missing", ed_token(claims=c(now, jti=DROP)), "bad_claims")
    # crit: no extension is understood, so any crit is refused
    for name, value in (("exp", ["exp"]), ("empty", []), ("b64", ["b64"]), ("string", "x")):
        add(f"crit-{name}", ed_token(h(crit=value)), "crit")
    # structure: segments, padding, canonical base64url, JSON shapes
    good = keys.good(now=now)
    head, body, sig = good.split(b".")
    add("segments-2", head + b"." + body, "malformed")
    add("segments-4", good + b"." + sig, "malformed")
    add("segments-5-jwe", good + b"..", "malformed")
    add("segments-1", head, "malformed")
    add("empty", b"", "malformed")
    add("dots-only", b"..", "malformed")
    add("padding-header", head + b"=." + body + b"." + sig, "malformed")
    add("padding-signature", good + b"==", "malformed")
    add("whitespace", head + b". " + body + b"." + sig, "malformed")
    add("standard-alphabet-plus", head + b"." + body + b".+" + sig[1:], "malformed")
    add("standard-alphabet-slash", head + b"." + body + b"./" + sig[1:], "malformed")
    add("4n+1-length", head + b"." + body + b"A." + sig, "malformed")
    add("non-ascii", good[:-1] + "é".encode(), "malformed")
    add("nul-byte", good[:10] + b"\x00" + good[11:], "malformed")
    # non-canonical base64: the same bytes, but unused low bits of the last character set
    add("non-canonical-signature", head + b"." + body + b"." + noncanonical(sig), "malformed")
    for pad in range(3):  # one of these header lengths leaves unused bits
        header_json = _json(h())[:-1] + b" " * pad + b"}"
        if len(b64(header_json)) % 4:
            tok = token(header_json, c(now), "EdDSA", ed)
            seg, rest = tok.split(b".", 1)
            add("non-canonical-header", noncanonical(seg) + b"." + rest, "malformed")
            break
    for name, raw in (
        ("array", b"[]"),
        ("string", b'"x"'),
        ("number", b"1"),
        ("null", b"null"),
        ("invalid", b"{"),
        ("trailing", b'{"alg":"EdDSA"} x'),
        ("nan", b'{"alg":NaN}'),
        ("bad-utf8", b'{"alg":"\xff"}'),
        ("deep", b"[" * 300 + b"]" * 300),
    ):
        add(f"header-{name}", token(raw, c(now), "EdDSA", ed), "malformed")
        add(f"payload-{name}", token(h(), raw, "EdDSA", ed), "malformed")
    deep = b'{"x":' + b"[" * 1400 + b"]" * 1400 + b"}"  # past msgspec's depth limit
    add("payload-deep-object", token(h(), deep, "EdDSA", ed), "malformed")
    # duplicate keys (an earlier "alg" or "sub" a lenient parser might pick), at any depth
    add(
        "dup-header-alg",
        token(b'{"alg":"none","alg":"EdDSA","typ":"at+jwt","kid":"ed-1"}', c(now), "EdDSA", ed),
        "duplicate_keys",
    )
    add(
        "dup-header-escaped",
        token(
            b'{"a\\u006cg":"none","alg":"EdDSA","typ":"at+jwt","kid":"ed-1"}', c(now), "EdDSA", ed
        ),
        "duplicate_keys",
    )
    claims_json = _json(c(now))
    add(
        "dup-payload-sub",
        token(h(), claims_json[:-1] + b',"sub":"admin"}', "EdDSA", ed),
        "duplicate_keys",
    )
    add(
        "dup-payload-roles",
        token(h(), claims_json[:-1] + b',"roles":["admin"]}', "EdDSA", ed),
        "duplicate_keys",
    )
    add(
        "dup-nested",
        token(h(), claims_json[:-1] + b',"cnf":{"a":1,"a":2}}', "EdDSA", ed),
        "duplicate_keys",
    )
    # size: refused before any decoding
    add("8kb-payload", ed_token(claims=c(now, pad="x" * 8192)), "too_large")
    add("8kb-header", ed_token(h(pad="x" * 8192)), "too_large")
    add("8kb-junk", b"A" * 8192, "too_large")
    add("header-over-limit", b64(b"{" + b" " * 1100 + b"}") + b"." + body + b"." + sig, "too_large")
    # signatures: stripped, flipped, truncated, from another key, from another token
    add("signature-stripped", head + b"." + body + b".", "bad_signature")
    add("signature-flipped-first", head + b"." + body + b"." + _flip(sig, 0), "bad_signature")
    add(
        "signature-flipped-middle",
        head + b"." + body + b"." + _flip(sig, len(sig) // 2),
        "bad_signature",
    )
    add(
        "signature-truncated",
        head + b"." + body + b"." + sig[: len(sig) // 4 * 4 - 4],
        "bad_signature",
    )
    add("signature-other-key", token(h(), c(now), "EdDSA", keys.evil_ed), "bad_signature")
    other = keys.good(now=now, sub="someone-else")
    add(
        "signature-from-other-token",
        head + b"." + body + b"." + other.split(b".")[2],
        "bad_signature",
    )
    add("payload-swapped", head + b"." + other.split(b".")[1] + b"." + sig, "bad_signature")
    add(
        "es256-der-signature",
        token(h("ES256"), c(now), "ES256", keys.ec, keys.ec.sign(b"x", ec.ECDSA(hashes.SHA256()))),
        "bad_signature",
    )
    add(
        "rs256-short-signature",
        token(h("RS256"), c(now), "RS256", keys.rsa, b"\x01" * 255),
        "bad_signature",
    )
    # other token kinds presented as an access token
    add("refresh-token", b"Q2Fyb2xpbmUgaXMgYSByZWZyZXNoIHRva2VuIGFuZCBub3QgYSBKV1Q", "malformed")
    id_token_claims = c(now) | {"nonce": "n-0S6_WzA2Mj", "auth_time": now - 30, "aud": "client-1"}
    add("id-token-typ-jwt", token(h(typ="JWT"), id_token_claims, "EdDSA", ed), "bad_typ")
    add("id-token-right-aud", token(h(typ="JWT"), c(now) | {"nonce": "n"}, "EdDSA", ed), "bad_typ")
    add("typ-missing", ed_token(h(typ=DROP)), "bad_typ")
    add("typ-logout", ed_token(h(typ="logout+jwt")), "bad_typ")
    add("typ-number", ed_token(h(typ=1)), "bad_typ")
    add("typ-dpop", ed_token(h(typ="dpop+jwt")), "bad_typ")
    return cases
