"""Access-token (JWT) verification: the compiled verifier, or its pure-Python twin.

Selects :class:`cygate.core._jwt_c.JWTVerifierC` when it is available and allowed, else
:class:`cygate.core._jwt_py.JWTVerifierPy`. Both are importable by name from here
(``JWTVerifierPy``; ``JWTVerifierC`` when compiled) so tests and benchmarks never depend on
which one was picked. The rules are in :mod:`cygate.core._jwt_py`'s docstring.

Usage::

    verifier = JWTVerifier(leeway=30, max_token_bytes=4096)
    keys = [VerifyKey(kid, "EdDSA", public_key)]
    verifier.set_issuer("https://id.example", audience="api", keys=keys, principal=make_principal)
    try:
        principal = verifier.verify(token_bytes)
    except JWTError as err:
        ...  # 401; err.reason says why, err.issuer is set for an unknown kid
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cygate._compat import NO_EXTENSIONS
from cygate.core._jwt_py import (
    ALG_NOT_ALLOWED,
    BAD_AUDIENCE,
    BAD_CLAIMS,
    BAD_SIGNATURE,
    BAD_TYP,
    CRIT,
    DUPLICATE_KEYS,
    EXPIRED,
    MALFORMED,
    NOT_YET_VALID,
    REVOKED,
    SUPPORTED_ALGORITHMS,
    TOO_LARGE,
    UNKNOWN_ISSUER,
    UNKNOWN_KID,
    UNSUPPORTED_ALG,
    Issuer,
    JWTError,
    JWTVerifierPy,
    PrincipalFactory,
    VerifyKey,
    b64url_decode,
    b64url_encode,
)

__all__ = [
    "ALG_NOT_ALLOWED",
    "BAD_AUDIENCE",
    "BAD_CLAIMS",
    "BAD_SIGNATURE",
    "BAD_TYP",
    "CRIT",
    "DUPLICATE_KEYS",
    "EXPIRED",
    "MALFORMED",
    "NOT_YET_VALID",
    "REVOKED",
    "SUPPORTED_ALGORITHMS",
    "TOO_LARGE",
    "UNKNOWN_ISSUER",
    "UNKNOWN_KID",
    "UNSUPPORTED_ALG",
    "Issuer",
    "JWTError",
    "JWTVerifier",
    "JWTVerifierPy",
    "PrincipalFactory",
    "VerifyKey",
    "b64url_decode",
    "b64url_encode",
]

if TYPE_CHECKING:
    # Type checkers read the pure twin: same API, and real Python.
    JWTVerifier = JWTVerifierPy
else:
    JWTVerifier = JWTVerifierPy
    if not NO_EXTENSIONS:
        try:
            from cygate.core._jwt_c import JWTVerifierC
        except ImportError:  # pragma: no cover - not compiled (e.g. an editable pure install)
            pass
        else:
            JWTVerifier = JWTVerifierC
            __all__ += ["JWTVerifierC"]
