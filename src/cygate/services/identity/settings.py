"""Settings of identity and access: the tokens cygate signs and accepts, password hashing,
login throttling, the start-up admin, multi-factor sign-in, and external token issuers
(:class:`IdentityProvider`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from cygate.infra.settings import NonNegative, Section, doc

__all__ = ["IdentityProvider", "IdentitySettings"]

_TokenAlgorithm = Literal["EdDSA", "ES256", "RS256"]


class IdentityProvider(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An external issuer whose access tokens the gateway accepts (``identity_providers``)."""

    issuer: Annotated[str, doc("Its `iss`, compared exactly.", min_length=1)]
    jwks_url: Annotated[str, doc("Where its JWKS is fetched.", pattern=r"^https?://")]
    audience: Annotated[str, doc("The `aud` its tokens must carry for this gateway.", min_length=1)]
    algorithms: Annotated[
        list[_TokenAlgorithm], doc("Algorithms accepted from it.", min_length=1)
    ] = msgspec.field(default_factory=lambda: ["RS256"])
    typ: Annotated[str, doc("Required header typ (ignoring case); empty: not checked.")] = "at+jwt"
    refresh_interval: Annotated[
        float, doc("Seconds between scheduled JWKS fetches.", ge=5, le=86400)
    ] = 300.0
    min_refresh_interval: Annotated[
        float, doc("At most one fetch per this many seconds for an unknown kid.", ge=0, le=3600)
    ] = 30.0
    roles_claim: Annotated[str, doc("Claim holding the caller's roles.", min_length=1)] = "roles"
    allowed_roles: Annotated[
        list[str], doc("Roles this issuer may grant; others in its tokens are dropped.")
    ] = msgspec.field(default_factory=lambda: ["customer"])


class IdentitySettings(Section, frozen=True, kw_only=True):
    """Identity and access (``docs/identity.md``)."""

    public_base_url: Annotated[
        str,
        doc(
            "The URL clients reach this gateway at (scheme, host, optional port and path); "
            "the default token issuer is derived from it.",
            pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        ),
    ] = "http://localhost:8000"
    jwt_issuer: Annotated[
        str,
        doc(
            "`iss` of the access tokens cygate signs (RFC 9068: a URL); empty: public_base_url "
            "without a trailing slash.",
            max_length=512,
        ),
    ] = ""
    jwt_audience: Annotated[
        str, doc("`aud` of (and required in) cygate's tokens.", min_length=1)
    ] = "cygate"
    jwt_key_files: Annotated[
        list[str],
        doc("PEM files of token keys (private: signs and verifies; public: verifies only)."),
    ] = msgspec.field(default_factory=list)
    jwt_signing_kid: Annotated[
        str, doc("kid of the key that signs; empty: the first private key listed.")
    ] = ""
    jwt_key_dir: Annotated[
        str,
        doc("Development/test: where a signing key is generated when no key file is listed."),
    ] = ".data/keys"
    jwt_key_algorithm: Annotated[
        Literal["EdDSA", "ES256", "RS256"], doc("Algorithm of a generated signing key.")
    ] = "EdDSA"
    jwt_client_id: Annotated[
        str,
        doc(
            "`client_id` (RFC 9068) of the tokens people get by login and refresh (the "
            "first-party client); a service client's tokens carry its own id.",
            min_length=1,
            max_length=255,
        ),
    ] = "cygate"
    jwt_leeway: Annotated[int, doc("Clock leeway for exp/nbf/iat, seconds.", ge=0, le=300)] = 30
    jwt_max_token_bytes: Annotated[
        int, doc("Longest accepted access token, bytes.", ge=256, le=65536)
    ] = 4096
    jwt_cache_size: Annotated[
        NonNegative,
        doc(
            "Verified tokens cached per worker (distinct callers answered without a signature "
            "check); 0 disables.",
            le=10_000_000,
        ),
    ] = 100_000
    jwt_cache_max_bytes: Annotated[
        NonNegative,
        doc(
            "Memory bound of a worker's verified-token cache, bytes: each token counts as its "
            "length plus 768 (the principal and the entry); the oldest go first. 0: bounded by "
            "jwt_cache_size only.",
            le=16 * 2**30,
        ),
    ] = 128 * 2**20
    jwt_revocation_cache_seconds: Annotated[
        float,
        doc(
            "Seconds between two reads of the revocation feed by each worker: a revoked token "
            "stops working everywhere within this plus one Redis round trip.",
            ge=0.01,
            le=60,
        ),
    ] = 1.0
    jwt_revocation_redis_backoff: Annotated[
        float,
        doc(
            "After a Redis failure, seconds a worker uses the revocations it knows without "
            "reading the feed before one read tries again.",
            gt=0,
            le=300,
        ),
    ] = 1.0
    access_token_ttl: Annotated[int, doc("Access token lifetime, seconds.", ge=30, le=86400)] = 900
    refresh_token_ttl: Annotated[
        int, doc("Lifetime of one refresh token, seconds.", ge=60, le=31_536_000)
    ] = 14 * 86400
    refresh_family_ttl: Annotated[
        int, doc("Absolute lifetime of a login's refresh tokens, seconds.", ge=60, le=31_536_000)
    ] = 30 * 86400
    argon2_time_cost: Annotated[int, doc("Argon2id passes.", ge=1, le=20)] = 2
    argon2_memory_cost: Annotated[int, doc("Argon2id memory, KiB.", ge=64, le=4_194_304)] = 19456
    argon2_parallelism: Annotated[int, doc("Argon2id lanes.", ge=1, le=16)] = 1
    argon2_threads: Annotated[
        int, doc("Threads hashing passwords (off the event loop), per worker.", ge=1, le=64)
    ] = 2
    login_failure_window: Annotated[
        int, doc("Window of the failed-login counters, seconds.", ge=1, le=86400)
    ] = 900
    login_max_failures_per_account: Annotated[
        int, doc("Failed logins per account per window before 429.", ge=1, le=10_000)
    ] = 5
    login_max_failures_per_address: Annotated[
        int, doc("Failed logins per client address per window before 429.", ge=1, le=1_000_000)
    ] = 50
    providers: Annotated[
        list[IdentityProvider], doc("External issuers whose access tokens are accepted (JSON).")
    ] = msgspec.field(default_factory=list)
    admin_email: Annotated[
        str, doc("At start-up this account exists with role admin (with admin_password).")
    ] = ""
    admin_password: Annotated[str, doc("Password of admin_email (set or reset at start-up).")] = ""
    mfa_key_file: Annotated[
        str,
        doc(
            "File holding the key (base64 of 32 bytes) that encrypts TOTP secrets and keys the "
            "recovery-code hashes; empty: generated as mfa.key in jwt_key_dir (development and "
            "test only)."
        ),
    ] = ""
    mfa_required_roles: Annotated[
        list[Literal["customer", "catalog_manager", "admin"]],
        doc("Roles whose accounts must have MFA active to sign in (JSON list)."),
    ] = msgspec.field(default_factory=list)
    mfa_token_ttl: Annotated[
        int,
        doc("Lifetime of the mfa_token a password login answers with, seconds.", ge=30, le=900),
    ] = 300
    mfa_totp_issuer: Annotated[
        str,
        doc(
            "Issuer named in the otpauth URI (what authenticator apps show).",
            min_length=1,
            max_length=100,
            pattern=r"^[^:]+$",
        ),
    ] = "cygate"

    def __post_init__(self) -> None:
        if not self.jwt_issuer:
            # NOTE: derived once here, so every reader of ``jwt_issuer`` sees the same URL.
            msgspec.structs.force_setattr(self, "jwt_issuer", self.public_base_url.rstrip("/"))
        if self.refresh_token_ttl > self.refresh_family_ttl:
            raise msgspec.ValidationError(
                "refresh_token_ttl must not exceed refresh_family_ttl"
                " - at `$.identity.refresh_token_ttl`"
            )
        if bool(self.admin_email) != bool(self.admin_password):
            raise msgspec.ValidationError(
                "admin_email and admin_password go together - at `$.identity.admin_email`"
            )
        if self.admin_password and len(self.admin_password) < 10:
            raise msgspec.ValidationError(
                "admin_password needs at least 10 characters - at `$.identity.admin_password`"
            )
        issuers = [p.issuer for p in self.providers]
        if self.jwt_issuer in issuers or len(set(issuers)) != len(issuers):
            raise msgspec.ValidationError(
                "each identity provider needs an issuer of its own - at `$.identity.providers`"
            )
