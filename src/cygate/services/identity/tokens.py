"""Minting tokens: RFC 9068 access tokens (JWS, ``typ: at+jwt``) and opaque refresh tokens.

Access token claims (RFC 9068 §2.2): ``iss`` (a URL), ``sub``, ``aud``, ``exp``, ``iat``,
``jti``, ``client_id`` and ``roles``. ``client_id`` is the first-party client's
(``jwt_client_id``) on the tokens people get by login and refresh, and the service client's own
id (equal to ``sub``) on a ``client_credentials`` token. The tokens people get also carry
``amr`` (RFC 8176): ``["pwd"]``, or ``["pwd", "otp"]`` after a second factor; refresh keeps it.

Refresh tokens and client secrets are 256 random bits, base64url; only their SHA-256 is stored
(a random 256-bit value needs no slow hash: nothing to guess, nothing to precompute).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from cygate.core.jwt import b64url_encode

if TYPE_CHECKING:
    from cygate.services.identity.keys import KeyRing

__all__ = ["AccessToken", "TokenMinter", "hash_opaque", "new_opaque"]

_encode = msgspec.json.Encoder().encode
MAX_OPAQUE = 256


class AccessToken(msgspec.Struct, frozen=True):
    token: str
    jti: str
    expires_at: int


def new_opaque() -> tuple[str, bytes]:
    """A new refresh token (or client secret) and the hash that is stored."""
    value = secrets.token_urlsafe(32)
    return value, hash_opaque(value)


def hash_opaque(value: str) -> bytes:
    """SHA-256 of an opaque token (what the database holds)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class TokenMinter:
    """Signs access tokens with the key ring's signing key."""

    __slots__ = ("_header", "audience", "client_id", "issuer", "keyring", "ttl")

    def __init__(
        self, keyring: KeyRing, *, issuer: str, audience: str, ttl: int, client_id: str
    ) -> None:
        self.keyring = keyring
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self.client_id = client_id
        """``client_id`` of tokens minted without one of their own (the first-party client)."""
        signer = keyring.signer
        header = {"alg": signer.alg, "typ": "at+jwt", "kid": signer.kid}
        self._header = b64url_encode(_encode(header))

    def access_token(
        self,
        sub: str,
        roles: Iterable[str],
        *,
        client_id: str | None = None,
        amr: Iterable[str] | None = None,
        now: int | None = None,
    ) -> AccessToken:
        """A signed access token for ``sub`` with ``roles``, valid for ``ttl`` seconds, issued
        to ``client_id`` (default: the first-party client), naming the methods that
        authenticated its subject (``amr``) when given."""
        iat = int(time.time()) if now is None else now
        exp = iat + self.ttl
        jti = secrets.token_urlsafe(16)
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.audience,
            "exp": exp,
            "iat": iat,
            "jti": jti,
            "client_id": self.client_id if client_id is None else client_id,
            "roles": sorted(set(roles)),
        }
        if amr is not None:
            claims["amr"] = list(amr)
        signing_input = self._header + b"." + b64url_encode(_encode(claims))
        signature = self.keyring.signer.sign(signing_input)
        token = (signing_input + b"." + b64url_encode(signature)).decode("ascii")
        return AccessToken(token, jti, exp)
