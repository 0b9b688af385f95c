"""Typed settings, read once at start-up from the environment and an optional ``cygate.toml``.

Precedence (lowest first): defaults, the TOML file, environment variables ``CYGATE_<NAME>``.
The file is ``$CYGATE_CONFIG`` when set, else ``./cygate.toml`` when it exists.

A bad value raises :class:`SettingsError` whose message is one line naming the setting; the
CLI prints it and exits with status 2, never a traceback.
"""

from __future__ import annotations

import os
import pathlib
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

__all__ = ["ENV_PREFIX", "IdentityProvider", "Settings", "SettingsError", "load_settings"]

ENV_PREFIX = "CYGATE_"

_Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
_Positive = Annotated[int, msgspec.Meta(ge=1)]
_NonNegative = Annotated[int, msgspec.Meta(ge=0)]
_Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class SettingsError(Exception):
    """A setting is missing, unknown or out of range. ``str(err)`` is one printable line."""


def _doc(text: str, **constraints: Any) -> msgspec.Meta:
    return msgspec.Meta(description=text, **constraints)


# --- Identity and access (issue 3) ----------------------------------------------------------
_TokenAlgorithm = Literal["EdDSA", "ES256", "RS256"]


class IdentityProvider(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An external issuer whose access tokens the gateway accepts (``identity_providers``)."""

    issuer: Annotated[str, _doc("Its `iss`, compared exactly.", min_length=1)]
    jwks_url: Annotated[str, _doc("Where its JWKS is fetched.", pattern=r"^https?://")]
    audience: Annotated[
        str, _doc("The `aud` its tokens must carry for this gateway.", min_length=1)
    ]
    algorithms: Annotated[
        list[_TokenAlgorithm], _doc("Algorithms accepted from it.", min_length=1)
    ] = msgspec.field(default_factory=lambda: ["RS256"])
    typ: Annotated[str, _doc("Required header typ (ignoring case); empty: not checked.")] = "at+jwt"
    refresh_interval: Annotated[
        float, _doc("Seconds between scheduled JWKS fetches.", ge=5, le=86400)
    ] = 300.0
    min_refresh_interval: Annotated[
        float, _doc("At most one fetch per this many seconds for an unknown kid.", ge=0, le=3600)
    ] = 30.0
    roles_claim: Annotated[str, _doc("Claim holding the caller's roles.", min_length=1)] = "roles"
    allowed_roles: Annotated[
        list[str], _doc("Roles this issuer may grant; others in its tokens are dropped.")
    ] = msgspec.field(default_factory=lambda: ["customer"])


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything cygate can be told. Each field is also ``CYGATE_<FIELD>`` in the environment."""

    environment: Annotated[
        Literal["development", "test", "production"],
        _doc("Deployment kind; development generates missing keys at first start."),
    ] = "development"
    host: Annotated[str, _doc("Address to bind.", min_length=1)] = "127.0.0.1"
    port: Annotated[_Port, _doc("TCP port to bind.")] = 8000
    workers: Annotated[_Positive, _doc("Granian worker processes.", le=256)] = 1
    backlog: Annotated[_Positive, _doc("Listen backlog.")] = 2048
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], _doc("Log level for cygate and Granian.")
    ] = "info"
    access_log: Annotated[bool, _doc("Granian access log (costs throughput).")] = False
    shutdown_timeout: Annotated[_Seconds, _doc("Seconds to drain in-flight requests.")] = 30.0

    database_url: Annotated[
        str,
        _doc("PostgreSQL DSN.", pattern=r"^postgres(ql)?://"),
    ] = "postgresql://postgres@127.0.0.1:5432/cygate"
    db_pool_min: Annotated[_NonNegative, _doc("Connections kept open per worker.")] = 2
    db_pool_max: Annotated[_Positive, _doc("Connection ceiling per worker.", le=1000)] = 16
    db_command_timeout: Annotated[_Seconds, _doc("Per-statement timeout, seconds.")] = 5.0
    db_acquire_timeout: Annotated[_Seconds, _doc("Wait for a pooled connection, seconds.")] = 2.0

    redis_url: Annotated[str, _doc("Redis URL.", pattern=r"^(redis|rediss|unix)://")] = (
        "redis://127.0.0.1:6379/0"
    )
    redis_prefix: Annotated[
        str, _doc("Prefix of every Redis key cygate writes.", min_length=1, max_length=64)
    ] = "cygate:"
    redis_timeout: Annotated[_Seconds, _doc("Socket timeout for Redis calls, seconds.")] = 0.5

    max_body_bytes: Annotated[_Positive, _doc("Largest accepted request body; larger is 413.")] = (
        1024 * 1024
    )
    hsts_max_age: Annotated[
        _NonNegative, _doc("Strict-Transport-Security max-age; 0 sends no HSTS header.")
    ] = 0
    hsts_include_subdomains: Annotated[bool, _doc("Add includeSubDomains to HSTS.")] = False
    edge_fast_paths: Annotated[
        bool, _doc("Serve routes that have a fast handler in the edge, bypassing Litestar.")
    ] = True
    trusted_proxies: Annotated[
        list[str], _doc("Peer addresses whose X-Forwarded-For is believed.")
    ] = msgspec.field(default_factory=list)

    metrics_access: Annotated[
        Literal["loopback", "any", "token"],
        _doc("Who may scrape /metrics: loopback peers, anyone, or a bearer token."),
    ] = "loopback"
    metrics_token: Annotated[str, _doc("Bearer token for /metrics when access is token.")] = ""
    metrics_dir: Annotated[
        str,
        _doc("Folder where workers share metric snapshots; empty: a per-server temp folder."),
    ] = ""

    # --- Identity and access (issue 3) -------------------------------------------------------
    jwt_issuer: Annotated[str, _doc("`iss` of the access tokens cygate signs.", min_length=1)] = (
        "cygate"
    )
    jwt_audience: Annotated[
        str, _doc("`aud` of (and required in) cygate's tokens.", min_length=1)
    ] = "cygate"
    jwt_key_files: Annotated[
        list[str],
        _doc("PEM files of token keys (private: signs and verifies; public: verifies only)."),
    ] = msgspec.field(default_factory=list)
    jwt_signing_kid: Annotated[
        str, _doc("kid of the key that signs; empty: the first private key listed.")
    ] = ""
    jwt_key_dir: Annotated[
        str,
        _doc("Development/test: where a signing key is generated when no key file is listed."),
    ] = ".data/keys"
    jwt_key_algorithm: Annotated[
        Literal["EdDSA", "ES256"], _doc("Algorithm of a generated signing key.")
    ] = "EdDSA"
    jwt_leeway: Annotated[int, _doc("Clock leeway for exp/nbf/iat, seconds.", ge=0, le=300)] = 30
    jwt_max_token_bytes: Annotated[
        int, _doc("Longest accepted access token, bytes.", ge=256, le=65536)
    ] = 4096
    jwt_cache_size: Annotated[
        _NonNegative, _doc("Verified tokens cached per worker; 0 disables.", le=10_000_000)
    ] = 20_000
    jwt_revocation_cache_seconds: Annotated[
        float, _doc("How long a worker trusts its last Redis answer about a jti.", ge=0, le=60)
    ] = 1.0
    access_token_ttl: Annotated[int, _doc("Access token lifetime, seconds.", ge=30, le=86400)] = 900
    refresh_token_ttl: Annotated[
        int, _doc("Lifetime of one refresh token, seconds.", ge=60, le=31_536_000)
    ] = 14 * 86400
    refresh_family_ttl: Annotated[
        int, _doc("Absolute lifetime of a login's refresh tokens, seconds.", ge=60, le=31_536_000)
    ] = 30 * 86400
    argon2_time_cost: Annotated[int, _doc("Argon2id passes.", ge=1, le=20)] = 2
    argon2_memory_cost: Annotated[int, _doc("Argon2id memory, KiB.", ge=64, le=4_194_304)] = 19456
    argon2_parallelism: Annotated[int, _doc("Argon2id lanes.", ge=1, le=16)] = 1
    argon2_threads: Annotated[
        int, _doc("Threads hashing passwords (off the event loop), per worker.", ge=1, le=64)
    ] = 2
    login_failure_window: Annotated[
        int, _doc("Window of the failed-login counters, seconds.", ge=1, le=86400)
    ] = 900
    login_max_failures_per_account: Annotated[
        int, _doc("Failed logins per account per window before 429.", ge=1, le=10_000)
    ] = 5
    login_max_failures_per_address: Annotated[
        int, _doc("Failed logins per client address per window before 429.", ge=1, le=1_000_000)
    ] = 50
    identity_providers: Annotated[
        list[IdentityProvider], _doc("External issuers whose access tokens are accepted (JSON).")
    ] = msgspec.field(default_factory=list)
    admin_email: Annotated[
        str, _doc("At start-up this account exists with role admin (with admin_password).")
    ] = ""
    admin_password: Annotated[str, _doc("Password of admin_email (set or reset at start-up).")] = ""

    def __post_init__(self) -> None:
        _check_identity(self)
        if self.db_pool_min > self.db_pool_max:
            raise msgspec.ValidationError(
                "db_pool_min must not exceed db_pool_max - at `$.db_pool_min`"
            )
        if self.metrics_access == "token" and not self.metrics_token:
            raise msgspec.ValidationError(
                "metrics_access is 'token' but no metrics_token is set - at `$.metrics_token`"
            )

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for ``cygate check-config``."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        for name in ("metrics_token", "admin_password"):
            if out.get(name):
                out[name] = "***"
        for name in ("database_url", "redis_url"):
            out[name] = _mask_url_password(out[name])
        return out


_SECRETS = ("metrics_token", "database_url", "redis_url", "admin_password")
_FIELDS = frozenset(f.name for f in msgspec.structs.fields(Settings))


def _mask_url_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def _check_identity(s: Settings) -> None:
    """Cross-field rules of the identity block (issue 3)."""
    if s.refresh_token_ttl > s.refresh_family_ttl:
        raise msgspec.ValidationError(
            "refresh_token_ttl must not exceed refresh_family_ttl - at `$.refresh_token_ttl`"
        )
    if bool(s.admin_email) != bool(s.admin_password):
        raise msgspec.ValidationError(
            "admin_email and admin_password go together - at `$.admin_email`"
        )
    if s.admin_password and len(s.admin_password) < 10:
        raise msgspec.ValidationError(
            "admin_password needs at least 10 characters - at `$.admin_password`"
        )
    if s.environment == "production" and not s.jwt_key_files:
        raise msgspec.ValidationError(
            "production needs jwt_key_files (keys are generated only in development and test)"
            " - at `$.jwt_key_files`"
        )
    issuers = [p.issuer for p in s.identity_providers]
    if s.jwt_issuer in issuers or len(set(issuers)) != len(issuers):
        raise msgspec.ValidationError(
            "each identity provider needs an issuer of its own - at `$.identity_providers`"
        )


# Settings given in the environment as JSON, or (lists of strings) as comma-separated text.
_JSON_ONLY = frozenset({"identity_providers"})
_STRING_LISTS = frozenset({"trusted_proxies", "jwt_key_files"})


def _env_value(name: str, raw: str) -> Any:
    """Environment values are strings; lists arrive as JSON or comma-separated text."""
    if name in _JSON_ONLY:
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise SettingsError(f"invalid setting {ENV_PREFIX}{name.upper()}: {exc}") from None
    if name in _STRING_LISTS:
        raw = raw.strip()
        if raw.startswith("["):
            try:
                return msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                raise SettingsError(f"invalid setting {ENV_PREFIX}{name.upper()}: {exc}") from None
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _config_path(env: Mapping[str, str]) -> pathlib.Path | None:
    explicit = env.get(f"{ENV_PREFIX}CONFIG")
    if explicit:
        path = pathlib.Path(explicit)
        if not path.is_file():
            raise SettingsError(f"invalid setting {ENV_PREFIX}CONFIG: no file at {path}")
        return path
    default = pathlib.Path("cygate.toml")
    return default if default.is_file() else None


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from the file, the environment and ``overrides`` (highest)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}

    path = _config_path(env)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"invalid config file {path}: {exc}") from None
        for key, value in data.items():
            raw[key] = value
            sources[key] = f"{key} in {path}"

    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}CONFIG":
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in _FIELDS:
            # NOTE: unknown CYGATE_* variables are reported, not ignored: a typo in a limit
            # or a URL must not silently fall back to the default.
            if name.startswith("_") or name in _IGNORED_ENV:
                continue
            raise SettingsError(f"unknown setting {key}")
        raw[name] = _env_value(name, value)
        # NOTE: secrets are named, never echoed, in error messages.
        sources[name] = key if name in _SECRETS else f"{key}={value!r}"

    for key, value in overrides.items():
        if value is not None:
            raw[key] = value
            sources[key] = f"--{key.replace('_', '-')}={value!r}"

    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(str(exc), sources)) from None


# Variables that share the prefix but are not settings (build and test switches).
_IGNORED_ENV = frozenset(
    {"no_extensions", "cython_trace", "debug_build", "test_keep", "bench", "url"}
)


def _explain(message: str, sources: Mapping[str, str]) -> str:
    """Turn msgspec's ``... - at `$.port``` into a line naming the setting and its source."""
    detail, _, where = message.rpartition(" - at `$.")
    if not where:
        if message.startswith("Object contains unknown field"):
            field = message.split("`")[1] if "`" in message else "?"
            return f"unknown setting {field!r} in the config file"
        return f"invalid settings: {message}"
    name = where.rstrip("`").split("[", 1)[0].split(".", 1)[0]
    source = sources.get(name, f"{ENV_PREFIX}{name.upper()}")
    hint = {
        "database_url": " (expected postgresql://...)",
        "redis_url": " (expected redis://, rediss:// or unix://...)",
    }.get(name, "")
    return f"invalid setting {name} ({source}): {detail}{hint}"
