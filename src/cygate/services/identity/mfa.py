"""Multi-factor sign-in: TOTP secrets and codes, recovery codes, and the key that protects them.

- TOTP is RFC 6238 with the parameters every authenticator app assumes: HMAC-SHA-1, 6 digits,
  30-second steps, a 160-bit secret (``pyotp`` computes the codes). A code is accepted for the
  step before and after the current one (clock drift), and each step's code only once: the
  service records the last step used per user (see ``store.claim_totp_step``).
- TOTP secrets are stored sealed with AES-256-GCM under the MFA key; the user's id is the
  associated data, so a sealed secret moved to another user's row does not open.
- Recovery codes are 80 random bits, shown once; only a keyed hash (HMAC-SHA-256 under a key
  derived from the MFA key, with the user's id) is stored. A slow hash buys nothing for a value
  with 80 bits of entropy, and the key means a copy of the database alone cannot test guesses.
- The MFA key is 32 random bytes, base64 in the file ``mfa_key_file``; in development and test
  without one, a key is generated once as ``mfa.key`` in ``jwt_key_dir`` (next to the
  generated signing key). Replacing the key makes every enrolment and recovery code unusable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import pathlib
import re
import secrets
from typing import TYPE_CHECKING, Final
from uuid import UUID

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cygate.services.identity.keys import KeyConfigError, create_once

if TYPE_CHECKING:
    from cygate.services.identity.settings import IdentitySettings

__all__ = [
    "RECOVERY_CODES",
    "SealedSecretError",
    "SecretBox",
    "is_totp_code",
    "load_mfa_key",
    "matching_steps",
    "mfa_key_from_settings",
    "new_recovery_codes",
    "new_totp_secret",
    "normalise_recovery_code",
    "provisioning_uri",
]

log = logging.getLogger("cygate.identity")

DIGITS: Final = 6
STEP_SECONDS: Final = 30
DRIFT_STEPS: Final = 1
"""Steps accepted either side of the current one."""
RECOVERY_CODES: Final = 10
KEY_BYTES: Final = 32
DEV_KEY_NAME: Final = "mfa.key"

TOTP_CODE: Final = r"[0-9]{6}"
RECOVERY_CODE: Final = r"[A-Za-z2-7]{4}(?:-?[A-Za-z2-7]{4}){3}"
_TOTP_CODE = re.compile(TOTP_CODE)
_RECOVERY_CODE = re.compile(RECOVERY_CODE)
_SEALED_VERSION = b"\x01"
_NONCE_BYTES = 12


class SealedSecretError(Exception):
    """A stored TOTP secret cannot be opened: sealed under another key, or altered."""


# ---------------------------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------------------------


def is_totp_code(code: str) -> bool:
    """Six ASCII digits."""
    return _TOTP_CODE.fullmatch(code) is not None


def normalise_recovery_code(code: str) -> str | None:
    """The canonical form of a recovery code (16 lower-case base32 characters), or None when
    ``code`` does not look like one. Hyphens are optional and case does not matter."""
    if _RECOVERY_CODE.fullmatch(code) is None:
        return None
    return code.replace("-", "").lower()


def new_totp_secret() -> str:
    """A new 160-bit TOTP secret, base32 (RFC 4226 §4 recommends 160 bits)."""
    return pyotp.random_base32(32)


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=DIGITS, digest=hashlib.sha1, interval=STEP_SECONDS)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://totp/...`` URI authenticator apps read (usually from a QR code)."""
    return _totp(secret).provisioning_uri(name=account, issuer_name=issuer)


def matching_steps(secret: str, code: str, now: float) -> list[int]:
    """The time steps around ``now`` (± :data:`DRIFT_STEPS`) whose code is ``code``, in order.

    Every candidate is compared (in constant time), whichever matches first.
    """
    current = int(now // STEP_SECONDS)
    totp = _totp(secret)
    steps = range(max(0, current - DRIFT_STEPS), current + DRIFT_STEPS + 1)
    return [s for s in steps if hmac.compare_digest(totp.generate_otp(s), code)]


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """``count`` new recovery codes, ``xxxx-xxxx-xxxx-xxxx`` (80 random bits each)."""
    codes = []
    for _ in range(count):
        raw = base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


# ---------------------------------------------------------------------------------------------
# The MFA key
# ---------------------------------------------------------------------------------------------


class SecretBox:
    """Seals TOTP secrets and hashes recovery codes under the MFA key."""

    __slots__ = ("_aead", "_recovery_key", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise KeyConfigError(f"the MFA key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self._recovery_key = hmac.digest(key, b"cygate mfa recovery codes", "sha256")
        self.key_id = hashlib.sha256(b"cygate mfa key id" + key).hexdigest()[:16]
        """Stored next to each sealed secret, so a key change is reported as such."""

    def seal(self, user_id: UUID, secret: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), self._aad(user_id))
        return _SEALED_VERSION + nonce + sealed

    def open(self, user_id: UUID, sealed: bytes, key_id: str) -> str:
        """The secret sealed for ``user_id``; :class:`SealedSecretError` when it was sealed under
        another key, for another user, or altered."""
        if key_id != self.key_id:
            raise SealedSecretError("sealed under another MFA key")
        if sealed[:1] != _SEALED_VERSION:
            raise SealedSecretError("unknown sealed-secret format")
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, self._aad(user_id)).decode("ascii")
        except (InvalidTag, ValueError):
            raise SealedSecretError("the sealed secret does not open") from None

    def recovery_hash(self, user_id: UUID, normalised_code: str) -> bytes:
        """What is stored for a recovery code (given in :func:`normalise_recovery_code` form)."""
        message = user_id.bytes + normalised_code.encode("ascii")
        return hmac.digest(self._recovery_key, message, "sha256")

    @staticmethod
    def _aad(user_id: UUID) -> bytes:
        return b"cygate totp secret:" + user_id.bytes


def load_mfa_key(path: pathlib.Path) -> bytes:
    """The key in ``path``: base64 (standard or URL-safe alphabet) of 32 bytes."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII"
        raise KeyConfigError(f"cannot read the MFA key file {path}: {reason}") from None
    try:
        text = text.replace("-", "+").replace("_", "/").rstrip("=")
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(f"{path}: the MFA key must be base64 of {KEY_BYTES} bytes") from None
    if len(key) != KEY_BYTES:
        raise KeyConfigError(f"{path}: the MFA key must be base64 of {KEY_BYTES} bytes")
    return key


def development_mfa_key(directory: pathlib.Path) -> pathlib.Path:
    """The generated MFA key file under ``directory``, created if missing (race-free)."""
    path = directory / DEV_KEY_NAME
    if path.exists():
        return path
    data = base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
    try:
        if create_once(directory, path, data):
            log.warning("generated a development MFA key: %s (never use it in production)", path)
    except OSError as exc:
        raise KeyConfigError(
            f"cannot create a development MFA key in {directory} ({exc.strerror}); "
            "set CYGATE_JWT_KEY_DIR to a writable folder or CYGATE_MFA_KEY_FILE"
        ) from None
    return path


def mfa_key_from_settings(settings: IdentitySettings, environment: str) -> SecretBox:
    """The box of ``mfa_key_file``, or (development and test) of the generated key."""
    if settings.mfa_key_file:
        path = pathlib.Path(settings.mfa_key_file)
    elif environment != "production":
        path = development_mfa_key(pathlib.Path(settings.jwt_key_dir))
    else:  # pragma: no cover - the settings refuse production without mfa_key_file
        raise KeyConfigError("no mfa_key_file configured")
    return SecretBox(load_mfa_key(path))
