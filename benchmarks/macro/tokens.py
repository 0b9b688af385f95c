"""The access tokens the harnesses sign: an Ed25519 key for the run, RFC 9068 tokens with it.

The cygate contenders trust the key through ``CYGATE_JWT_KEY_FILES`` (a PEM file the harness
writes); the tokens are what cygate itself issues (``typ: at+jwt``, EdDSA, the key's RFC 7638
thumbprint as ``kid``), signed here with PyJWT so the gateway under test mints nothing.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from .registry import BENCH_ISSUER

__all__ = ["mint_access_token", "write_key"]

ANONYMOUS_SUB = "00000000-0000-7000-8000-000000000000"
"""``sub`` of a token minted without a user (a database with no seeded customer)."""


def write_key(workdir: Path) -> tuple[Path, Any]:
    """A fresh Ed25519 key for this run in ``workdir``: (its PEM file, the private key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    path = workdir / "jwt-ed25519.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, key


def mint_access_token(
    key: Any, user: dict[str, Any] | None = None, *, sub: str | None = None, ttl: int = 6 * 3600
) -> str:
    """An RFC 9068 access token as cygate issues them: for ``user`` (its id and roles), or for
    the subject ``sub`` with the customer role; each token has a ``jti`` of its own."""
    import jwt

    from cygate.services.identity.keys import thumbprint

    now = int(time.time())
    if sub is None:
        sub = user["id"] if user else ANONYMOUS_SUB
    claims = {
        "iss": BENCH_ISSUER,
        "aud": "cygate",
        "sub": sub,
        "client_id": "cygate",
        "exp": now + ttl,
        "iat": now,
        "jti": secrets.token_urlsafe(16),
        "roles": user["roles"] if user else ["customer"],
    }
    headers = {"kid": thumbprint(key.public_key()), "typ": "at+jwt"}
    return jwt.encode(claims, key, algorithm="EdDSA", headers=headers)
