"""Identity wire types (msgspec): request bodies refuse unknown fields (no mass assignment)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from cygate.services.identity.mfa import RECOVERY_CODE, TOTP_CODE

__all__ = [
    "EMAIL_PATTERN",
    "MIN_PASSWORD",
    "PROFILE_CACHE_CONTROL",
    "ROLES",
    "ClientCredentialsForm",
    "CodeIn",
    "JWKSet",
    "LoginIn",
    "MfaChallengeOut",
    "MfaLoginIn",
    "ProfilePatch",
    "RecoveryCodesOut",
    "RefreshTokenForm",
    "RegisterIn",
    "RevokeForm",
    "Role",
    "RolesIn",
    "TokenOut",
    "TotpCodeIn",
    "TotpEnrolmentOut",
    "User",
    "UserPage",
]

ROLES = ("customer", "catalog_manager", "admin")
Role = Literal["customer", "catalog_manager", "admin"]
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
"""NOTE: long enough for any passphrase, short enough that no one makes Argon2 hash a megabyte."""
# NOTE: spaces spelled out where Python's ``\s`` and ECMAScript's differ (\x1c-\x1f and \x85
# are spaces to Python only, \ufeff to ECMAScript only), so the document's pattern, read by
# clients and contract tests as ECMAScript, accepts exactly what the server does.
_SPACE = r"\s\x1c-\x1f\x85\ufeff"
EMAIL_PATTERN = rf"^[^@{_SPACE}]{{1,64}}@[^@{_SPACE}.]+(\.[^@{_SPACE}.]+)+$"

Email = Annotated[str, msgspec.Meta(max_length=254, pattern=EMAIL_PATTERN)]
Name = Annotated[str, msgspec.Meta(max_length=200)]


class RegisterIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/auth/register``."""

    email: Email
    password: Annotated[str, msgspec.Meta(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]
    name: Name = ""


class LoginIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/auth/login``. No length rules: a wrong password is a 401 like any other."""

    email: Annotated[str, msgspec.Meta(max_length=254)]
    password: Annotated[str, msgspec.Meta(max_length=MAX_PASSWORD)]


class ProfilePatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``PATCH /api/v1/users/me``: the only field a user may change about itself."""

    name: Name


class RolesIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``PATCH /api/v1/users/{id}/roles`` (admin)."""

    roles: Annotated[list[Role], msgspec.Meta(max_length=len(ROLES))]


PROFILE_CACHE_CONTROL = "private, max-age=0"
"""``GET /users/me`` when the gateway does not cache it (the cache's rule ``me`` says the same):
the caller's own browser may keep it but asks again each time; shared caches never store it.
NOTE: not ``no-store``: a response that says ``no-store`` is never cached by the gateway."""


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    email: str
    name: str
    roles: list[str]
    created_at: datetime


class UserPage(msgspec.Struct, frozen=True):
    items: list[User]
    next_cursor: str | None


class TokenOut(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """RFC 6749 §5.1 token response."""

    access_token: str
    token_type: str
    """Always ``Bearer`` (no default: ``omit_defaults`` would drop it)."""
    expires_in: int
    refresh_token: str | None = None


# -- multi-factor sign-in ---------------------------------------------------------------------

Code = Annotated[
    str,
    msgspec.Meta(
        max_length=64,
        extra_json_schema={"extra": {"pattern": f"^(?:{TOTP_CODE}|{RECOVERY_CODE})$"}},
    ),
]
"""A TOTP code or a recovery code; its form is checked by the handler (a 422 naming the field
with a plain message, rather than a regular expression); the pattern is for the document."""
TotpCode = Annotated[
    str, msgspec.Meta(max_length=64, extra_json_schema={"extra": {"pattern": f"^{TOTP_CODE}$"}})
]


class CodeIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``DELETE /api/v1/users/me/mfa/totp``: a current code or a recovery code."""

    code: Code


class TotpCodeIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/users/me/mfa/totp/verify``: a current code of the authenticator."""

    code: TotpCode


class MfaLoginIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/auth/login/mfa``."""

    mfa_token: Annotated[str, msgspec.Meta(max_length=256)]
    code: Code


class MfaChallengeOut(msgspec.Struct, frozen=True, kw_only=True):
    """A password login of an account with MFA active: no tokens yet, a second step to take."""

    mfa_required: bool
    mfa_token: str
    expires_in: int


class TotpEnrolmentOut(msgspec.Struct, frozen=True, kw_only=True):
    secret: str
    otpauth_uri: str


class RecoveryCodesOut(msgspec.Struct, frozen=True, kw_only=True):
    recovery_codes: list[str]


# -- documentation only: the bodies the handlers parse themselves -------------------------------

_Nonempty = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class RefreshTokenForm(msgspec.Struct, kw_only=True):
    """``POST /api/v1/auth/token`` (RFC 6749 §6), form-encoded."""

    grant_type: Literal["refresh_token"]
    refresh_token: _Nonempty


class ClientCredentialsForm(msgspec.Struct, kw_only=True):
    """``POST /api/v1/auth/token`` (RFC 6749 §4.4), form-encoded; the client may instead
    authenticate with HTTP Basic (RFC 6749 §2.3.1)."""

    grant_type: Literal["client_credentials"]
    client_id: _Nonempty
    client_secret: str


class RevokeForm(msgspec.Struct, kw_only=True):
    """``POST /api/v1/auth/revoke`` (RFC 7009), form-encoded."""

    token: str
    token_type_hint: str | None = None


class JWK(msgspec.Struct, frozen=True, kw_only=True):
    """One public key (RFC 7517); the members beyond these depend on ``kty``."""

    kty: str
    kid: str
    use: str | None = None
    alg: str | None = None


class JWKSet(msgspec.Struct, frozen=True):
    """The JWK Set (RFC 7517 §5)."""

    keys: list[JWK]
