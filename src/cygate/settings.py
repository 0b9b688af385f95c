"""Typed settings, read once at start-up from the environment and an optional ``cygate.toml``.

Each feature owns a section (a frozen msgspec struct in its own package); :class:`Settings`
composes them (``settings.cache.key_secret``, ``settings.database.pool_max``) and this module is
the loader. Users name settings flat, as they always did: ``CYGATE_<NAME>`` in the environment,
``<name> = ...`` in the file, ``load_settings(<name>=...)``; :data:`FLAT_NAMES` maps each flat
name to its section and field (``cache_key_secret`` is ``cache.key_secret``).

Precedence (lowest first): defaults, the TOML file, environment variables ``CYGATE_<NAME>``.
The file is ``$CYGATE_CONFIG`` when set, else ``./cygate.toml`` when it exists.

A bad value raises :class:`SettingsError` whose message is one line naming the flat setting;
the CLI prints it and exits with status 2, never a traceback.
"""

from __future__ import annotations

import os
import pathlib
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

from cygate.edge.settings import (
    DEFAULT_RATE_LIMIT_CLASS,
    CacheRule,
    CacheSettings,
    HttpSettings,
    PolicySettings,
    RateLimitSettings,
    RateLimitSpec,
)
from cygate.infra.settings import (
    DatabaseSettings,
    LogSettings,
    MetricsSettings,
    Port,
    Positive,
    RedisSettings,
    Seconds,
    Section,
    Window,
    doc,
)
from cygate.services.events.settings import EventsSettings
from cygate.services.idempotency_settings import IdempotencySettings
from cygate.services.identity.settings import IdentityProvider, IdentitySettings
from cygate.services.orders.settings import OrdersSettings
from cygate.services.payments.settings import FAULTS, PaymentsSettings
from cygate.services.privacy.settings import RetentionSettings
from cygate.upstream.settings import RoutesSettings

__all__ = [
    "DEFAULT_RATE_LIMIT_CLASS",
    "ENV_PREFIX",
    "FLAT_NAMES",
    "CacheRule",
    "IdentityProvider",
    "RateLimitSpec",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "flat_name",
    "load_settings",
]

ENV_PREFIX = "CYGATE_"


class SettingsError(Exception):
    """A setting is missing, unknown or out of range. ``str(err)`` is one printable line."""


class ServerSettings(Section, frozen=True, kw_only=True):
    """The deployment kind and the HTTP server (Granian) of ``cygate serve``."""

    environment: Annotated[
        Literal["development", "test", "production"],
        doc("Deployment kind; development generates missing keys at first start."),
    ] = "development"
    host: Annotated[str, doc("Address to bind.", min_length=1)] = "127.0.0.1"
    port: Annotated[Port, doc("TCP port to bind.")] = 8000
    workers: Annotated[Positive, doc("Granian worker processes.", le=256)] = 1
    backlog: Annotated[Positive, doc("Listen backlog.")] = 2048
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], doc("Log level for cygate and Granian.")
    ] = "info"
    access_log: Annotated[bool, doc("Granian access log (costs throughput).")] = False
    shutdown_timeout: Annotated[Seconds, doc("Seconds to drain in-flight requests.")] = 30.0
    shutdown_delay: Annotated[
        float,
        doc(
            "Seconds between SIGTERM (or SIGINT) and the start of the drain. Meanwhile the "
            "instance serves as before but /readyz answers 503, so a load balancer that "
            "health-checks it takes it out before it stops accepting; set it above the "
            "balancer's check interval times its fall count. A second signal stops at once. "
            "0: the drain starts at the signal.",
            ge=0,
            le=300,
        ),
    ] = 0.0
    respawn_failed_workers: Annotated[
        bool,
        doc(
            "Replace a Granian worker that dies (SIGKILL, OOM) while the others keep serving; a "
            "worker that dies again within 5.5 s of its respawn is a crash loop: the server logs "
            "it and exits, for the service manager to restart. false: any worker death stops "
            "the server."
        ),
    ] = True
    tls_cert_file: Annotated[
        str,
        doc(
            "PEM certificate chain the gateway serves TLS with (with tls_key_file); empty: "
            "plain HTTP. Read when the workers start; a changed pair is served after "
            "tls_reload_interval."
        ),
    ] = ""
    tls_key_file: Annotated[str, doc("PEM private key of tls_cert_file.")] = ""
    tls_reload_interval: Annotated[
        Window,
        doc(
            "Seconds between checks of the certificate and key files (modification time and "
            "size); a changed pair that loads respawns the workers gracefully (in-flight "
            "requests finish), one that does not is logged and the old pair keeps serving. "
            "0: never polled (a restart loads a new pair)."
        ),
    ] = 5.0
    tls_min_version: Annotated[
        Literal["1.2", "1.3"], doc("Oldest TLS version the gateway accepts.")
    ] = "1.3"
    tls_http2: Annotated[
        bool,
        doc(
            "With TLS, offer HTTP/2 by ALPN (Granian's auto mode); false: HTTP/1.1 only, "
            "where http_header_timeout is enforced from the connection's opening."
        ),
    ] = False

    def __post_init__(self) -> None:
        if self.tls_http2 and not self.tls_cert_file:
            raise msgspec.ValidationError(
                "tls_http2 needs tls_cert_file and tls_key_file - at `$.server.tls_http2`"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            field = "tls_key_file" if self.tls_cert_file else "tls_cert_file"
            raise msgspec.ValidationError(
                f"tls_cert_file and tls_key_file go together - at `$.server.{field}`"
            )


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything cygate can be told, one section per feature. Each field of a section is also
    a flat setting, ``CYGATE_<NAME>`` in the environment (:data:`FLAT_NAMES`)."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    logs: LogSettings = msgspec.field(default_factory=LogSettings)
    routes: RoutesSettings = msgspec.field(default_factory=RoutesSettings)
    rate_limit: RateLimitSettings = msgspec.field(default_factory=RateLimitSettings)
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    identity: IdentitySettings = msgspec.field(default_factory=IdentitySettings)
    events: EventsSettings = msgspec.field(default_factory=EventsSettings)
    orders: OrdersSettings = msgspec.field(default_factory=OrdersSettings)
    idempotency: IdempotencySettings = msgspec.field(default_factory=IdempotencySettings)
    payments: PaymentsSettings = msgspec.field(default_factory=PaymentsSettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)

    def __post_init__(self) -> None:
        # Rules across sections: the deployment kind decides what may be missing.
        environment = self.server.environment
        if environment == "production" and not self.identity.jwt_key_files:
            raise msgspec.ValidationError(
                "production needs jwt_key_files (keys are generated only in development and test)"
                " - at `$.identity.jwt_key_files`"
            )
        fault = self.payments.fault
        if fault and (environment != "test" or fault not in FAULTS):
            raise msgspec.ValidationError(
                f"fault is honoured only with environment 'test' and one of {sorted(FAULTS)}"
                " - at `$.payments.fault`"
            )
        if environment == "production" and self.cache.enabled and not self.cache.key_secret:
            raise msgspec.ValidationError(
                "production needs a cache_key_secret (it is generated only in development and "
                "test) - at `$.cache.key_secret`"
            )
        if environment == "production" and not self.identity.mfa_key_file:
            raise msgspec.ValidationError(
                "production needs an mfa_key_file (a key is generated only in development and"
                " test) - at `$.identity.mfa_key_file`"
            )

    def flat(self) -> dict[str, Any]:
        """The settings as one flat dict of builtins, keyed by the flat names users write."""
        out: dict[str, Any] = {}
        for section, _cls, _prefix, _renames in _SECTIONS:
            values = msgspec.to_builtins(getattr(self, section))
            for field, value in values.items():
                out[_NESTED[section, field]] = value
        return out

    def redacted(self) -> dict[str, Any]:
        """The flat settings with secrets masked, for ``cygate check-config``."""
        out = self.flat()
        for name in (
            "metrics_token",
            "cache_key_secret",
            "admin_password",
            "payment_webhook_secret",
        ):
            if out.get(name):
                out[name] = "***"
        for name in ("database_url", "redis_url"):
            out[name] = _mask_url_password(out[name])
        out["database_replica_urls"] = [
            _mask_url_password(url) for url in out["database_replica_urls"]
        ]
        return out


# Each section: its field in Settings, its struct, the prefix of its flat names, and the flat
# names that do not follow the prefix.
_SECTIONS: Final[tuple[tuple[str, type[msgspec.Struct], str, dict[str, str]], ...]] = (
    ("server", ServerSettings, "", {}),
    (
        "database",
        DatabaseSettings,
        "db_",
        {
            "url": "database_url",
            "replica_urls": "database_replica_urls",
            "replica_max_lag": "database_replica_max_lag",
            "replica_check_interval": "database_replica_check_interval",
        },
    ),
    ("redis", RedisSettings, "redis_", {}),
    (
        "http",
        HttpSettings,
        "",
        {
            "header_timeout": "http_header_timeout",
            "body_timeout": "http_body_timeout",
            "fast_paths": "edge_fast_paths",
            "hit_path": "edge_hit_path",
        },
    ),
    ("metrics", MetricsSettings, "metrics_", {}),
    (
        "logs",
        LogSettings,
        "log_",
        {"access_sample": "access_log_sample", "access_queue": "access_log_queue"},
    ),
    ("routes", RoutesSettings, "routes_", {}),
    ("rate_limit", RateLimitSettings, "rate_limit_", {"limits": "rate_limits"}),
    ("cache", CacheSettings, "cache_", {}),
    ("policy", PolicySettings, "policy_", {}),
    ("identity", IdentitySettings, "", {"providers": "identity_providers"}),
    ("events", EventsSettings, "events_", {}),
    ("orders", OrdersSettings, "order_", {}),
    ("idempotency", IdempotencySettings, "idempotency_", {}),
    ("payments", PaymentsSettings, "payment_", {"fault": "fault"}),
    ("retention", RetentionSettings, "retention_", {}),
)

FLAT_NAMES: Final[Mapping[str, tuple[str, str]]] = {
    renames.get(f.name, prefix + f.name): (section, f.name)
    for section, cls, prefix, renames in _SECTIONS
    for f in msgspec.structs.fields(cls)
}
"""Flat setting name (``cache_key_secret``) -> (section, field) (``("cache", "key_secret")``)."""

_NESTED: Final = {where: flat for flat, where in FLAT_NAMES.items()}
_FIELDS = frozenset(FLAT_NAMES)
assert [s for s, *_ in _SECTIONS] == [f.name for f in msgspec.structs.fields(Settings)]
assert len(_NESTED) == len(FLAT_NAMES), "two sections claim one flat name"


def flat_name(section: str, field: str) -> str:
    """The flat name users write for ``section.field`` (``cache``, ``key_secret``:
    ``cache_key_secret``)."""
    return _NESTED[section, field]


_SECRETS = (
    "metrics_token",
    "database_url",
    "redis_url",
    "cache_key_secret",
    "admin_password",
    "payment_webhook_secret",
)


def _mask_url_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


# Settings given in the environment as JSON, or (lists of strings) as comma-separated text.
_JSON_ONLY = frozenset(
    {
        "identity_providers",
        "rate_limits",
        "rate_limit_classes",
        "rate_limit_routes",
        "cache_rules",
        "database_replica_urls",
    }
)
_STRING_LISTS = frozenset(
    {
        "trusted_proxies",
        "jwt_key_files",
        "events_consumers",
        "mfa_required_roles",
        "policy_files",
        "cors_origins",
    }
)


def _env_value(name: str, raw: str) -> Any:
    """Environment values are strings; lists arrive as JSON or comma-separated text."""
    if name in _JSON_ONLY:
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise SettingsError(
                f"invalid setting {ENV_PREFIX}{name.upper()}: not a JSON document ({exc})"
            ) from None
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

    return _convert(raw, sources)


def _convert(raw: Mapping[str, Any], sources: Mapping[str, str]) -> Settings:
    """Flat names to sections, then one strict conversion (constraints and cross-checks)."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        where = FLAT_NAMES.get(key)
        if where is None:
            raise SettingsError(f"unknown setting {key!r} in the config file")
        nested.setdefault(where[0], {})[where[1]] = value
    try:
        return msgspec.convert(nested, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(str(exc), sources)) from None


# Variables that share the prefix but are not settings (build and test switches).
_IGNORED_ENV = frozenset(
    {"no_extensions", "cython_trace", "debug_build", "test_keep", "bench", "url"}
)


def _explain(message: str, sources: Mapping[str, str]) -> str:
    """Turn msgspec's ``... - at `$.server.port``` into a line naming the flat setting and its
    source."""
    detail, _, where = message.rpartition(" - at `$.")
    if not where:
        if message.startswith("Object contains unknown field"):
            field = message.split("`")[1] if "`" in message else "?"
            return f"unknown setting {field!r} in the config file"
        return f"invalid settings: {message}"
    # NOTE: the path is nested (``$.cache.unsubscribed_max_age``); the user wrote the flat name.
    section, _, rest = where.rstrip("`").split("[", 1)[0].partition(".")
    field = rest.split(".", 1)[0]
    name = _NESTED.get((section, field), section)
    source = sources.get(name, f"{ENV_PREFIX}{name.upper()}")
    hint = {
        "database_url": " (expected postgresql://...)",
        "redis_url": " (expected redis://, rediss:// or unix://...)",
    }.get(name, "")
    return f"invalid setting {name} ({source}): {detail}{hint}"
