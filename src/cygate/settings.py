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
from typing import Annotated, Any, Final, Literal

import msgspec

__all__ = [
    "ENV_PREFIX",
    "CacheRule",
    "IdentityProvider",
    "RateLimitSpec",
    "Settings",
    "SettingsError",
    "load_settings",
]

ENV_PREFIX = "CYGATE_"

_Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
_Positive = Annotated[int, msgspec.Meta(ge=1)]
_NonNegative = Annotated[int, msgspec.Meta(ge=0)]
_Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


_Window = Annotated[float, msgspec.Meta(ge=0, le=86400)]
_HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", max_length=64)]
_QueryName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class CacheRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How one route's responses are cached (caching issue); routes name a rule in ``opt``."""

    ttl: _Window = 300.0
    """Seconds an entry is fresh in the gateway (L1 and L2); 0 turns the rule off."""
    max_age: Annotated[int, msgspec.Meta(ge=0, le=31_536_000)] = 60
    """``Cache-Control: max-age`` sent to clients and CDNs."""
    stale_while_revalidate: _Window = 30.0
    """After ``ttl``, seconds an entry is still served (``X-Cache: stale``) while one request
    refreshes it in the background."""
    stale_if_error: _Window = 300.0
    """After ``ttl``, seconds an entry is served instead of a 5xx from the loader."""
    scope: Literal["public", "private"] = "public"
    """``private``: one entry per caller (``ctx.principal.sub``), never served to another;
    anonymous requests to a private rule are not cached at all."""
    query: list[_QueryName] = msgspec.field(default_factory=list)
    """Query parameters that vary the key (others are ignored; the app checks at start-up that
    every query parameter the handler reads is listed)."""
    headers: list[_HeaderName] = msgspec.field(default_factory=list)
    """Request headers that vary the key (and are sent in ``Vary``)."""
    tags: list[Annotated[str, msgspec.Meta(min_length=1, max_length=200)]] = msgspec.field(
        default_factory=list
    )
    """Invalidation tags; ``{name}`` is replaced by the path parameter ``name``."""
    not_found_ttl: _Window = 5.0
    """Seconds a 404 is remembered (0: never); a tag purge removes it sooner."""
    honour_client_no_cache: bool | None = None
    """Whether a request's ``Cache-Control: no-cache``/``no-store``/``max-age=0`` (or
    ``Pragma: no-cache``) makes the gateway reload (or bypass) the entry. None (default): off
    for public rules (any client could force a database read per request), on for private
    ones. When on, forced reloads are limited per caller (``cache_forced_reloads_per_minute``);
    past the limit the directive is ignored."""

    @property
    def honours_client_no_cache(self) -> bool:
        """:attr:`honour_client_no_cache` with its default resolved by the scope."""
        if self.honour_client_no_cache is None:
            return self.scope == "private"
        return self.honour_client_no_cache


class SettingsError(Exception):
    """A setting is missing, unknown or out of range. ``str(err)`` is one printable line."""


def _doc(text: str, **constraints: Any) -> msgspec.Meta:
    return msgspec.Meta(description=text, **constraints)


# -- Rate limiting (issue 4; docs/ratelimit.md) ----------------------------------------------

RateLimitKeyPart = Literal["caller", "sub", "ip", "api_key", "route", "path"]
RateLimitMode = Literal["local", "exact", "batched"]
RateLimitFailure = Literal["open", "closed", "local"]
_AUTH_CLASSES = frozenset({"login", "token", "register"})


class RateLimitSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One named limit: ``rate`` requests per ``period`` seconds, ``burst`` of them at once."""

    rate: Annotated[int, _doc("Requests allowed per period (the sustained rate).", ge=1, le=10**9)]
    period: Annotated[
        float, _doc("Length of the period in seconds (up to 366 days).", gt=0, le=31_622_400)
    ] = 1.0
    burst: (
        Annotated[int, _doc("Requests allowed at once; default: rate.", ge=1, le=10**9)] | None
    ) = None
    key: Annotated[
        list[RateLimitKeyPart],
        _doc(
            "What one counter is per: caller (the token's sub, else the client address), sub, "
            "ip, api_key, route (the route template), path (the normalised path); [] is one "
            "counter for everyone.",
            max_length=6,
        ),
    ] = msgspec.field(default_factory=lambda: ["caller"])
    mode: Annotated[
        RateLimitMode,
        _doc("local (per process), exact (every decision in Redis) or batched (Redis leases)."),
    ] = "local"
    failure: Annotated[
        RateLimitFailure | None,
        _doc(
            "When Redis fails: open (serve, count locally), closed (503) or local (enforce per "
            "process); default: local for the login/token classes, else open."
        ),
    ] = None
    lease: (
        Annotated[int, _doc("batched: tokens per lease; default burst // 10 (at least 1).", ge=1)]
        | None
    ) = None
    lease_ttl: (
        Annotated[
            float,
            _doc(
                "batched: seconds a lease may be spent; default the period, at most 60.",
                gt=0,
                le=3600,
            ),
        ]
        | None
    ) = None

    @property
    def effective_burst(self) -> int:
        return self.burst if self.burst is not None else self.rate

    @property
    def interval_ns(self) -> int:
        """Time between two requests at the sustained rate, rounded up (never over the rate)."""
        return -(-round(self.period * 1e9) // self.rate)

    @property
    def effective_lease(self) -> int:
        return self.lease if self.lease is not None else max(1, self.effective_burst // 10)

    @property
    def effective_lease_ttl(self) -> float:
        return self.lease_ttl if self.lease_ttl is not None else min(self.period, 60.0)

    def failure_for(self, classes: frozenset[str]) -> RateLimitFailure:
        """The failure mode, given the route classes that use this limit."""
        if self.failure is not None:
            return self.failure
        return "local" if classes & _AUTH_CLASSES else "open"


DEFAULT_RATE_LIMIT_CLASS: Final = "api"
"""The built-in limit every route without a class of its own gets (``rate_limit_default_class``)."""


def _default_rate_limits() -> dict[str, RateLimitSpec]:
    # NOTE: login, token and registration are limited per client address, in Redis, and stay
    # limited (per process) when Redis is down; a configured limit of the same name replaces
    # each. ``api`` is the default of every other route: generous, per caller, in the process
    # (no Redis call; the fused hit path decides it in line), a flood guard rather than a quota.
    return {
        "api": RateLimitSpec(rate=100, period=1, burst=200, key=["caller"], mode="local"),
        "login": RateLimitSpec(rate=10, period=60, key=["ip"], mode="exact", failure="local"),
        "token": RateLimitSpec(rate=30, period=60, key=["ip"], mode="exact", failure="local"),
        "register": RateLimitSpec(rate=10, period=3600, key=["ip"], mode="exact", failure="local"),
    }


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
    respawn_failed_workers: Annotated[
        bool,
        _doc(
            "Replace a Granian worker that dies (SIGKILL, OOM) while the others keep serving; a "
            "worker that dies again within 5.5 s of its respawn is a crash loop: the server logs "
            "it and exits, for the service manager to restart. false: any worker death stops "
            "the server."
        ),
    ] = True

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
    http_header_timeout: Annotated[
        float,
        _doc(
            "Seconds a connection may take to send a request's headers, counted from its "
            "opening or, on a kept-alive connection, from the previous response (the idle "
            "timeout too); then it is closed.",
            ge=1,
            le=3600,
        ),
    ] = 30.0
    http_body_timeout: Annotated[
        float,
        _doc(
            "Seconds a request body may take to arrive once its headers are in; then 408 "
            "problem+json and the connection is closed.",
            ge=1,
            le=3600,
        ),
    ] = 30.0
    hsts_max_age: Annotated[
        _NonNegative, _doc("Strict-Transport-Security max-age; 0 sends no HSTS header.")
    ] = 0
    hsts_include_subdomains: Annotated[bool, _doc("Add includeSubDomains to HSTS.")] = False
    edge_fast_paths: Annotated[
        bool, _doc("Serve routes that have a fast handler in the edge, bypassing Litestar.")
    ] = True
    edge_hit_path: Annotated[
        bool,
        _doc(
            "Answer fresh L1 hits of plain GETs in one compiled call (edge/hitpath); false: "
            "every request takes the general edge path (same answers, for comparison)."
        ),
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

    # -- upstream routing (routing issue: route file, reverse proxy, admin view) ------------
    routes_file: Annotated[
        str,
        _doc("Route table file (TOML if it ends in .toml, else JSON); empty: no upstream routes."),
    ] = ""
    routes_reload_interval: Annotated[
        float,
        _doc("Seconds between checks of the route file for changes; 0: only SIGHUP reloads.",
             ge=0, le=3600),
    ] = 1.0  # fmt: skip
    routes_admin_access: Annotated[
        Literal["loopback", "any"],
        _doc("Who may read GET /admin/routes besides the admin role: loopback peers, or anyone."),
    ] = "loopback"

    # -- Rate limiting (issue 4; docs/ratelimit.md) ------------------------------------------
    rate_limits: Annotated[
        dict[str, RateLimitSpec],
        _doc(
            "Named limits (added to the built-in api, login, token and register limits, or "
            "replacing them by name)."
        ),
    ] = msgspec.field(default_factory=dict)
    rate_limit_classes: Annotated[
        dict[str, list[str]],
        _doc("Route class -> names of the limits it applies (a limit's name is a class too)."),
    ] = msgspec.field(default_factory=dict)
    rate_limit_routes: Annotated[
        dict[str, str],
        _doc(
            "Route name ('GET /api/v1/categories') -> class; overrides the handler's opt; an "
            "empty class exempts the route (from the default class too)."
        ),
    ] = msgspec.field(default_factory=dict)
    rate_limit_default_class: Annotated[
        str,
        _doc(
            "Class of routes that name none (default: the built-in `api` limit, 100 per second "
            "with bursts of 200 per caller and process); empty: such routes are not limited."
        ),
    ] = DEFAULT_RATE_LIMIT_CLASS
    rate_limit_redis_timeout: Annotated[
        float, _doc("Most a Redis decision may add to a request, seconds.", gt=0, le=10)
    ] = 0.2
    rate_limit_redis_backoff: Annotated[
        float, _doc("After a Redis failure, seconds of local fallback before trying again.", gt=0)
    ] = 1.0
    rate_limit_max_keys: Annotated[
        int, _doc("Keys each limit keeps in memory per process (idle ones go first).", ge=1)
    ] = 100_000
    rate_limit_api_key_header: Annotated[
        str, _doc("Request header whose value is the api_key part of a limit's key.", min_length=1)
    ] = "x-api-key"

    # -- caching (issue 5: cygate.edge.cache) ------------------------------------------------
    cache_enabled: Annotated[bool, _doc("Serve cacheable routes from L1/L2 (see cache_rules).")] = (
        True
    )
    cache_key_secret: Annotated[
        str, _doc("Secret of the keyed cache-key hash; empty: read or create cache_key_file.")
    ] = ""
    cache_key_file: Annotated[
        str, _doc("Where development/test keep a generated cache-key secret (never commit it).")
    ] = ".cygate/cache-key"
    cache_l1_max_bytes: Annotated[
        _NonNegative, _doc("Bytes of responses the in-process L1 holds per worker.")
    ] = 64 * 1024 * 1024
    cache_max_entry_bytes: Annotated[_Positive, _doc("Larger responses are never stored.")] = (
        1024 * 1024
    )
    cache_l2: Annotated[bool, _doc("Share entries through Redis (L2) and use its leases.")] = True
    cache_lease_ttl: Annotated[
        _Seconds, _doc("Lifetime of the Redis lease one loader holds per key, seconds.")
    ] = 2.0
    cache_lease_wait: Annotated[
        Annotated[float, msgspec.Meta(ge=0, le=60)],
        _doc("How long other instances wait on L2 while a lease is held, seconds."),
    ] = 0.5
    cache_l2_retry_after: Annotated[
        _Seconds, _doc("After a Redis error the cache skips Redis for this long, seconds.")
    ] = 1.0
    cache_forced_reloads_per_minute: Annotated[
        int,
        _doc(
            "Reloads one caller (token subject, else client address) may force with a request"
            " Cache-Control on a rule that honours it, per minute per worker (a burst of a"
            " tenth of it, at least 1); past it the directive is ignored.",
            ge=1,
            le=60_000,
        ),
    ] = 30
    cache_unsubscribed_max_age: Annotated[
        float,
        _doc(
            "While the invalidation subscription is down, L1 serves entries at most this old"
            " and reloads older ones, seconds (0: every such request loads).",
            ge=0,
            le=300,
        ),
    ] = 3.0
    cache_purge_loopback_only: Annotated[
        bool, _doc("POST /admin/cache/purge answers loopback peers only (besides its roles).")
    ] = True
    cache_rules: Annotated[
        dict[str, CacheRule],
        _doc("Cache rules by name, added to (or replacing) the built-in ones."),
    ] = msgspec.field(default_factory=dict)

    # --- Identity and access (issue 3) -------------------------------------------------------
    public_base_url: Annotated[
        str,
        _doc(
            "The URL clients reach this gateway at (scheme, host, optional port and path); "
            "the default token issuer is derived from it.",
            pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        ),
    ] = "http://localhost:8000"
    jwt_issuer: Annotated[
        str,
        _doc(
            "`iss` of the access tokens cygate signs (RFC 9068: a URL); empty: public_base_url "
            "without a trailing slash.",
            max_length=512,
        ),
    ] = ""
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
        Literal["EdDSA", "ES256", "RS256"], _doc("Algorithm of a generated signing key.")
    ] = "EdDSA"
    jwt_client_id: Annotated[
        str,
        _doc(
            "`client_id` (RFC 9068) of the tokens people get by login and refresh (the "
            "first-party client); a service client's tokens carry its own id.",
            min_length=1,
            max_length=255,
        ),
    ] = "cygate"
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
    jwt_revocation_redis_backoff: Annotated[
        float,
        _doc(
            "After a Redis failure, seconds the revocation check accepts tokens without asking "
            "Redis before one check tries again.",
            gt=0,
            le=300,
        ),
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

    # --- Outbox and events (issue 7, part 5; docs/events.md) --------------------------------
    events_relay: Annotated[
        bool, _doc("Run the outbox relay in each gateway worker (one leads, others stand by).")
    ] = True
    events_consumers: Annotated[
        list[Literal["cache", "order_summary", "analytics"]],
        _doc("Event consumers each gateway worker runs; [] runs none (see `cygate worker`)."),
    ] = msgspec.field(default_factory=lambda: ["cache", "order_summary", "analytics"])
    events_relay_batch: Annotated[
        int, _doc("Outbox rows the relay publishes per round trip.", ge=1, le=10_000)
    ] = 500
    events_poll_interval: Annotated[
        float, _doc("Relay polling fallback (besides LISTEN/NOTIFY), seconds.", gt=0, le=60)
    ] = 1.0
    events_relay_max_backoff: Annotated[
        float, _doc("Longest wait between retries while Redis or PostgreSQL fail, seconds.",
                    gt=0, le=300)
    ] = 5.0  # fmt: skip
    events_stream_maxlen: Annotated[
        int, _doc("Approximate length bound of the event stream (XADD MAXLEN ~).", ge=100)
    ] = 100_000
    events_consumer_batch: Annotated[
        int, _doc("Messages a consumer reads (and applies in one transaction) at once.",
                  ge=1, le=10_000)
    ] = 100  # fmt: skip
    events_linger: Annotated[
        float,
        _doc(
            "After a batch that was not full, the relay and each consumer wait this long before "
            "the next read, so that under load batches grow (fewer round trips and commits per "
            "event) at the cost of this much added latency; 0 reads again at once, seconds.",
            ge=0,
            le=1,
        ),
    ] = 0.02
    events_block: Annotated[
        float, _doc("How long a consumer's XREADGROUP waits for messages, seconds.", gt=0, le=60)
    ] = 1.0
    events_reclaim_idle: Annotated[
        float, _doc("A message pending this long (its consumer died) is reclaimed, seconds.",
                    gt=0, le=86400)
    ] = 30.0  # fmt: skip
    events_max_deliveries: Annotated[
        int, _doc("Deliveries after which a failing message goes to the dead-letter stream.",
                  ge=1, le=1000)
    ] = 5  # fmt: skip
    events_retention: Annotated[
        int, _doc("Published outbox rows and consumer records are kept this long, seconds.",
                  ge=60)
    ] = 7 * 86400  # fmt: skip
    events_cleanup_interval: Annotated[
        float, _doc("Seconds between two clean-ups by the leading relay.", gt=0)
    ] = 3600.0
    # --- Orders and idempotency (issue 7: cygate.services.orders, .idempotency) -------------
    order_ttl_seconds: Annotated[
        int,
        _doc(
            "An unpaid order expires (its stock released) after this long, seconds.",
            ge=1,
            le=30 * 86400,
        ),
    ] = 900
    order_expiry_interval: Annotated[
        float,
        _doc(
            "Seconds between two expiry sweeps of one worker; 0 turns the sweeper off.",
            ge=0,
            le=3600,
        ),
    ] = 5.0
    order_expiry_batch: Annotated[
        int, _doc("Orders expired per sweep transaction.", ge=1, le=10_000)
    ] = 100
    idempotency_ttl_seconds: Annotated[
        int,
        _doc(
            "How long an Idempotency-Key and its response are kept, seconds.", ge=60, le=30 * 86400
        ),
    ] = 86400
    idempotency_in_flight_timeout: Annotated[
        float,
        _doc(
            "A claim in flight longer than this (its process died) may be taken over "
            "by a retry, seconds.",
            ge=1,
            le=86400,
        ),
    ] = 60.0
    # --- end orders --------------------------------------------------------------------------
    # --- Payments (issue 7, part 4: cygate.services.payments; docs/payments.md) ------------
    payment_processor_url: Annotated[
        str, _doc("Base URL of the payment processor (the simulator in development).",
                  pattern=r"^http://[^/?#]+/?$")
    ] = "http://127.0.0.1:8090"  # fmt: skip
    payment_processor_timeout: Annotated[
        float, _doc("Most one processor call may take (connect and answer), seconds.", gt=0, le=60)
    ] = 5.0
    payment_breaker_failures: Annotated[
        int, _doc("Consecutive processor failures that open the circuit (per worker).", ge=1)
    ] = 5
    payment_breaker_open_seconds: Annotated[
        float, _doc("How long an open circuit answers 503 before one probe, seconds.", gt=0)
    ] = 10.0
    payment_webhook_secret: Annotated[
        str,
        _doc(
            "Shared HMAC secret of processor webhooks; empty: development/test read or create "
            "the file, production refuses every webhook.",
        ),
    ] = ""
    payment_webhook_secret_file: Annotated[
        str, _doc("Where development/test keep a generated webhook secret (never commit it).")
    ] = ".cygate/payment-webhook-secret"
    payment_webhook_tolerance: Annotated[
        int, _doc("Webhooks whose timestamp is further off than this are refused, seconds.",
                  ge=1, le=3600)
    ] = 300  # fmt: skip
    payment_recovery_interval: Annotated[
        float, _doc("Seconds between sweeps for payments stuck `initiated`; 0: no sweeper.",
                    ge=0, le=3600)
    ] = 30.0  # fmt: skip
    payment_recovery_after: Annotated[
        float, _doc("A payment still `initiated` after this many seconds is reconciled.",
                    gt=0, le=86400)
    ] = 60.0  # fmt: skip
    fault: Annotated[
        str, _doc("Test only: crash point, e.g. payment:after_commit (SIGKILLs the gateway).")
    ] = ""

    def all_rate_limits(self) -> dict[str, RateLimitSpec]:
        """The built-in limits overlaid with the configured ones."""
        return {**_default_rate_limits(), **self.rate_limits}

    def rate_limit_class(self, name: str) -> list[str] | None:
        """The limit names of class ``name`` (a limit's own name is a class of one), or None."""
        if name in self.rate_limit_classes:
            return self.rate_limit_classes[name]
        return [name] if name in self.all_rate_limits() else None

    def _check_rate_limits(self) -> None:
        limits = self.all_rate_limits()
        for name, spec in limits.items():
            where = f" - at `$.rate_limits.{name}`"
            if not name or len(name) > 64 or not name.isprintable():
                raise msgspec.ValidationError(f"bad limit name {name!r}{where}")
            if spec.interval_ns * spec.effective_burst >= 1 << 62:
                raise msgspec.ValidationError(f"period * burst / rate is too long{where}")
            if spec.mode != "local":
                if spec.interval_ns < 1000:
                    raise msgspec.ValidationError(
                        "a Redis limit allows at most 1000000 requests per second per key" + where
                    )
                if spec.effective_lease > spec.effective_burst:
                    raise msgspec.ValidationError(f"lease must not exceed burst{where}")
        for cls, names in self.rate_limit_classes.items():
            unknown = [n for n in names if n not in limits]
            if unknown:
                raise msgspec.ValidationError(
                    f"class {cls!r} names unknown limits {unknown} - at `$.rate_limit_classes`"
                )
        for route, cls in self.rate_limit_routes.items():
            if cls and self.rate_limit_class(cls) is None:
                raise msgspec.ValidationError(
                    f"route {route!r} names unknown class {cls!r} - at `$.rate_limit_routes`"
                )
        if (
            self.rate_limit_default_class
            and self.rate_limit_class(self.rate_limit_default_class) is None
        ):
            raise msgspec.ValidationError(
                f"unknown class {self.rate_limit_default_class!r} - at `$.rate_limit_default_class`"
            )

    def __post_init__(self) -> None:
        self._check_rate_limits()
        _check_identity(self)
        if self.db_pool_min > self.db_pool_max:
            raise msgspec.ValidationError(
                "db_pool_min must not exceed db_pool_max - at `$.db_pool_min`"
            )
        if self.metrics_access == "token" and not self.metrics_token:
            raise msgspec.ValidationError(
                "metrics_access is 'token' but no metrics_token is set - at `$.metrics_token`"
            )
        _check_payments(self)
        if self.environment == "production" and self.cache_enabled and not self.cache_key_secret:
            raise msgspec.ValidationError(
                "production needs a cache_key_secret (it is generated only in development and "
                "test) - at `$.cache_key_secret`"
            )

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for ``cygate check-config``."""
        out: dict[str, Any] = msgspec.to_builtins(self)
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
        return out


_SECRETS = (
    "metrics_token",
    "database_url",
    "redis_url",
    "cache_key_secret",
    "admin_password",
    "payment_webhook_secret",
)
_FIELDS = frozenset(f.name for f in msgspec.structs.fields(Settings))


def _mask_url_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


_FAULTS = frozenset({"payment:after_commit", "payment:after_charge"})


def _check_payments(s: Settings) -> None:
    """Cross-field rules of the payments block (issue 7)."""
    if s.fault and (s.environment != "test" or s.fault not in _FAULTS):
        raise msgspec.ValidationError(
            f"fault is honoured only with environment 'test' and one of {sorted(_FAULTS)}"
            " - at `$.fault`"
        )
    # NOTE: a payment younger than the processor timeout may still have its call in flight;
    # reconciling it then could call "not found" a charge that is about to happen.
    if s.payment_recovery_after <= 2 * s.payment_processor_timeout:
        raise msgspec.ValidationError(
            "payment_recovery_after must exceed twice payment_processor_timeout"
            " - at `$.payment_recovery_after`"
        )


def _check_identity(s: Settings) -> None:
    """Cross-field rules of the identity block (issue 3)."""
    if not s.jwt_issuer:
        # NOTE: derived once here, so every reader of ``jwt_issuer`` sees the same URL.
        msgspec.structs.force_setattr(s, "jwt_issuer", s.public_base_url.rstrip("/"))
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
_JSON_ONLY = frozenset(
    {"identity_providers", "rate_limits", "rate_limit_classes", "rate_limit_routes", "cache_rules"}
)
_STRING_LISTS = frozenset({"trusted_proxies", "jwt_key_files", "events_consumers"})


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
