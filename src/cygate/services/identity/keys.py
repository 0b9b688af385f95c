"""Token keys: PEM files named in settings (one signs, all verify), the JWKS, and JWK parsing.

Each key is named by its RFC 7638 JWK thumbprint (``kid``), so the same key file gives the same
``kid`` on every instance and every restart. Rotation without downtime: add the new key file
(verify only, or signing via ``jwt_signing_kid``) everywhere, then make it the signer, then
remove the old one once the longest-lived token it signed has expired.

In development and test, when no key file is listed, a signing key is generated once under
``jwt_key_dir`` (race-free: several workers may start at the same moment) and reused after.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cygate.core.jwt import SUPPORTED_ALGORITHMS, VerifyKey, b64url_decode, b64url_encode
from cygate.core.jwt import JWTError as _JWTError

if TYPE_CHECKING:
    from cygate.services.identity.settings import IdentitySettings

__all__ = [
    "KeyConfigError",
    "KeyRing",
    "TokenKey",
    "create_once",
    "jwk_to_verify_key",
    "keyring_from_settings",
    "load_keyring",
    "public_jwk",
    "thumbprint",
]

log = logging.getLogger("cygate.identity")

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


class KeyConfigError(ValueError):
    """A key file or JWK cannot be used; the message says which and why."""


def _b64(data: bytes) -> str:
    return b64url_encode(data).decode("ascii")


def _int_b64(value: int) -> str:
    return _b64(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def public_jwk(public: Any) -> dict[str, str]:
    """The members of the public JWK of ``public`` that its thumbprint covers (RFC 7638)."""
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        point = public.public_numbers()
        return {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64(point.x.to_bytes(32, "big")),
            "y": _b64(point.y.to_bytes(32, "big")),
        }
    if isinstance(public, rsa.RSAPublicKey):
        rsa_numbers = public.public_numbers()
        return {"e": _int_b64(rsa_numbers.e), "kty": "RSA", "n": _int_b64(rsa_numbers.n)}
    raise KeyConfigError(f"unsupported key type {type(public).__name__}")


def thumbprint(public: Any) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the key's ``kid``."""
    canonical = json.dumps(public_jwk(public), separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def _algorithm_of(public: Any) -> str:
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(public, rsa.RSAPublicKey):
        return "RS256"
    raise KeyConfigError(f"unsupported key type {type(public).__name__}")


@dataclass(frozen=True, slots=True)
class TokenKey:
    """One of cygate's own token keys."""

    kid: str
    alg: str
    public: Any
    private: Any | None
    """None for a verify-only key (a public-key PEM)."""
    source: str

    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.kid, self.alg, self.public)

    def jwk(self) -> dict[str, str]:
        """The public JWK as published (``kid``, ``alg``, ``use`` added)."""
        return {**public_jwk(self.public), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, signing_input: bytes) -> bytes:
        """The JWS signature (raw ``r||s`` for ES256)."""
        if self.private is None:
            raise KeyConfigError(f"key {self.kid} ({self.source}) has no private part")
        if self.alg == "EdDSA":
            return bytes(self.private.sign(signing_input))
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.private.sign(signing_input, _ECDSA_SHA256))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return bytes(self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))


class KeyRing:
    """Every token key cygate trusts for its own tokens, and the one that signs."""

    __slots__ = ("keys", "signer")

    def __init__(self, keys: list[TokenKey], signing_kid: str = "") -> None:
        if not keys:
            raise KeyConfigError("no token keys configured")
        kids = [k.kid for k in keys]
        if len(set(kids)) != len(kids):
            raise KeyConfigError("the same key is listed twice in jwt_key_files")
        if signing_kid:
            signer = next((k for k in keys if k.kid == signing_kid), None)
            if signer is None:
                raise KeyConfigError(f"jwt_signing_kid {signing_kid!r} is none of the key files")
        else:
            signer = next((k for k in keys if k.private is not None), None)
        if signer is None or signer.private is None:
            raise KeyConfigError("no private key to sign with among jwt_key_files")
        self.keys = keys
        self.signer = signer

    def verify_keys(self) -> list[VerifyKey]:
        return [k.verify_key() for k in self.keys]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK Set of every public key (the signer first)."""
        ordered = [self.signer, *(k for k in self.keys if k is not self.signer)]
        return {"keys": [k.jwk() for k in ordered]}


def _load_pem(path: pathlib.Path) -> TokenKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    private: Any = None
    try:
        private = serialization.load_pem_private_key(data, password=None)
        public = private.public_key()
    except (ValueError, TypeError):
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError:
            raise KeyConfigError(
                f"{path} is not an unencrypted PEM private or public key"
            ) from None
    alg = _algorithm_of(public)
    if alg == "RS256" and public.key_size < 2048:
        raise KeyConfigError(f"{path}: RSA keys need at least 2048 bits")
    return TokenKey(thumbprint(public), alg, public, private, str(path))


def _generate(alg: str) -> Any:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ed25519.Ed25519PrivateKey.generate()


def development_key(directory: pathlib.Path, alg: str) -> pathlib.Path:
    """The generated signing key file for ``alg`` under ``directory``, created if missing.

    NOTE: written to a private temporary file and then hard-linked to its final name, which
    fails when another worker got there first: every process ends up with the same key, and
    no one ever reads a half-written file.
    """
    path = directory / f"signing-{alg.lower()}.pem"
    if path.exists():
        return path
    try:
        _write_new_key(directory, path, alg)
    except OSError as exc:
        raise KeyConfigError(
            f"cannot create a development signing key in {directory} ({exc.strerror}); "
            "set CYGATE_JWT_KEY_DIR to a writable folder or list key files in CYGATE_JWT_KEY_FILES"
        ) from None
    return path


def _write_new_key(directory: pathlib.Path, path: pathlib.Path, alg: str) -> None:
    pem = _generate(alg).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if create_once(directory, path, pem):
        log.warning("generated a development signing key: %s (never use it in production)", path)


def create_once(directory: pathlib.Path, path: pathlib.Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` (mode 0600) unless the file exists; True when this call made it.

    NOTE: written to a private temporary file and then hard-linked to its final name, which
    fails when another process got there first: every process ends up reading the same bytes,
    and no one ever reads a half-written file. Raises OSError when ``directory`` is not writable.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".new-", suffix=".tmp")
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def keyring_from_settings(settings: IdentitySettings, environment: str) -> KeyRing:
    """The key ring the settings describe (generating the development key if needed, outside
    production)."""
    return load_keyring(
        settings.jwt_key_files,
        signing_kid=settings.jwt_signing_kid,
        generate_in=settings.jwt_key_dir if environment != "production" else None,
        algorithm=settings.jwt_key_algorithm,
    )


def load_keyring(
    key_files: list[str], *, signing_kid: str, generate_in: str | None, algorithm: str
) -> KeyRing:
    """Load the listed key files; with none listed and ``generate_in`` set, use (or create) the
    development key there."""
    paths = [pathlib.Path(p) for p in key_files]
    if not paths:
        if generate_in is None:
            raise KeyConfigError("no jwt_key_files configured")
        paths = [development_key(pathlib.Path(generate_in), algorithm)]
    return KeyRing([_load_pem(p) for p in paths], signing_kid)


# ---------------------------------------------------------------------------------------------
# JWKs of external providers
# ---------------------------------------------------------------------------------------------


def _b64_member(jwk: dict[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise KeyConfigError(f"JWK member {name!r} missing")
    try:
        return b64url_decode(value.encode("ascii"))
    except (_JWTError, UnicodeEncodeError):
        raise KeyConfigError(f"JWK member {name!r} is not base64url") from None


def jwk_to_verify_key(jwk: Any, allowed: frozenset[str] | set[str]) -> VerifyKey:
    """A :class:`VerifyKey` from one JWK of a provider's set, if it is a signing key of an
    allowed algorithm; :class:`KeyConfigError` says why not otherwise."""
    if not isinstance(jwk, dict):
        raise KeyConfigError("a JWK must be an object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise KeyConfigError("JWK without a kid")
    if jwk.get("use", "sig") != "sig":
        raise KeyConfigError(f"JWK {kid!r}: not a signing key")
    kty = jwk.get("kty")
    public: Any
    try:
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            public = ed25519.Ed25519PublicKey.from_public_bytes(_b64_member(jwk, "x"))
        elif kty == "EC" and jwk.get("crv") == "P-256":
            x, y = _b64_member(jwk, "x"), _b64_member(jwk, "y")
            if len(x) != 32 or len(y) != 32:
                raise KeyConfigError(f"JWK {kid!r}: bad P-256 coordinates")
            public = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            ).public_key()
        elif kty == "RSA":
            n = int.from_bytes(_b64_member(jwk, "n"), "big")
            e = int.from_bytes(_b64_member(jwk, "e"), "big")
            public = rsa.RSAPublicNumbers(e, n).public_key()
        else:
            raise KeyConfigError(f"JWK {kid!r}: unsupported key type {kty!r}")
    except ValueError as exc:
        if isinstance(exc, KeyConfigError):
            raise
        raise KeyConfigError(f"JWK {kid!r}: invalid key ({exc})") from None
    alg = _algorithm_of(public)
    declared = jwk.get("alg", alg)
    if declared != alg or alg not in allowed or alg not in SUPPORTED_ALGORITHMS:
        raise KeyConfigError(f"JWK {kid!r}: algorithm {declared!r} is not accepted")
    try:
        return VerifyKey(kid, alg, public)
    except ValueError as exc:
        raise KeyConfigError(f"JWK {kid!r}: {exc}") from None
