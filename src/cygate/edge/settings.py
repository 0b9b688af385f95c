"""Settings of the edge: HTTP limits and headers, rate limiting, the response cache, and the
attribute-based policies.

Four sections (``http``, ``rate_limit``, ``cache``, ``policy``) composed by
:mod:`cygate.settings`, and their leaf types: :class:`RateLimitSpec` (one named limit) and
:class:`CacheRule` (how one route is cached).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from cygate.infra.settings import NonNegative, Positive, Seconds, Section, Window, doc

__all__ = [
    "DEFAULT_RATE_LIMIT_CLASS",
    "CacheRule",
    "CacheSettings",
    "HttpSettings",
    "PolicySettings",
    "RateLimitFailure",
    "RateLimitKeyPart",
    "RateLimitMode",
    "RateLimitSettings",
    "RateLimitSpec",
]

_HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", max_length=64)]
_Origin = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(\*|null|https?://(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?)$",
        max_length=253,
    ),
]
_QueryName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class HttpSettings(Section, frozen=True, kw_only=True):
    """Request limits, time-outs and response headers the edge applies to every request."""

    max_body_bytes: Annotated[Positive, doc("Largest accepted request body; larger is 413.")] = (
        1024 * 1024
    )
    header_timeout: Annotated[
        float,
        doc(
            "Seconds a connection may take to send a request's headers, counted from its "
            "opening or, on a kept-alive connection, from the previous response (the idle "
            "timeout too); then it is closed.",
            ge=1,
            le=3600,
        ),
    ] = 30.0
    body_timeout: Annotated[
        float,
        doc(
            "Seconds a request body may take to arrive once its headers are in; then 408 "
            "problem+json and the connection is closed.",
            ge=1,
            le=3600,
        ),
    ] = 30.0
    hsts_max_age: Annotated[
        NonNegative, doc("Strict-Transport-Security max-age; 0 sends no HSTS header.")
    ] = 0
    hsts_include_subdomains: Annotated[bool, doc("Add includeSubDomains to HSTS.")] = False
    fast_paths: Annotated[
        bool, doc("Serve routes that have a fast handler in the edge, bypassing Litestar.")
    ] = True
    hit_path: Annotated[
        bool,
        doc(
            "Answer fresh L1 hits of plain GETs in one compiled call (edge/hitpath); false: "
            "every request takes the general edge path (same answers, for comparison)."
        ),
    ] = True
    trusted_proxies: Annotated[
        list[str], doc("Peer addresses whose X-Forwarded-For is believed.")
    ] = msgspec.field(default_factory=list)
    cors_origins: Annotated[
        list[_Origin],
        doc(
            "Origins whose browser scripts may call the API (docs/cors-and-compression.md): "
            "scheme://host[:port], 'null' (opaque origins, refused unless listed) or '*' (any, "
            "not with credentials); empty: no CORS."
        ),
    ] = msgspec.field(default_factory=list)
    cors_allow_credentials: Annotated[
        bool, doc("Let cross-origin requests carry cookies and HTTP auth (the allowed origins).")
    ] = False
    cors_max_age: Annotated[
        int, doc("Seconds a browser may keep a preflight's answer.", ge=0, le=86_400)
    ] = 600
    compression_enabled: Annotated[
        bool,
        doc("Compress JSON and text answers for clients that accept gzip, br or zstd."),
    ] = True
    compression_min_bytes: Annotated[
        Positive, doc("Bodies shorter than this many bytes are sent uncompressed.")
    ] = 1024
    compression_cache_bytes: Annotated[
        NonNegative,
        doc("Bytes of compressed variants kept per worker (keyed by the body's ETag)."),
    ] = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if "*" in self.cors_origins and self.cors_allow_credentials:
            raise msgspec.ValidationError(
                "'*' cannot go with cors_allow_credentials (list the origins)"
                " - at `$.http.cors_origins`"
            )


# -- rate limiting (docs/ratelimit.md) ---------------------------------------------------------

RateLimitKeyPart = Literal["caller", "sub", "ip", "api_key", "route", "path"]
RateLimitMode = Literal["local", "exact", "batched"]
RateLimitFailure = Literal["open", "closed", "local"]
_AUTH_CLASSES = frozenset({"login", "token", "register"})


class RateLimitSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One named limit: ``rate`` requests per ``period`` seconds, ``burst`` of them at once."""

    rate: Annotated[int, doc("Requests allowed per period (the sustained rate).", ge=1, le=10**9)]
    period: Annotated[
        float, doc("Length of the period in seconds (up to 366 days).", gt=0, le=31_622_400)
    ] = 1.0
    burst: (
        Annotated[int, doc("Requests allowed at once; default: rate.", ge=1, le=10**9)] | None
    ) = None
    key: Annotated[
        list[RateLimitKeyPart],
        doc(
            "What one counter is per: caller (the token's sub, else the client address), sub, "
            "ip, api_key, route (the route template), path (the normalised path); [] is one "
            "counter for everyone.",
            max_length=6,
        ),
    ] = msgspec.field(default_factory=lambda: ["caller"])
    mode: Annotated[
        RateLimitMode,
        doc("local (per process), exact (every decision in Redis) or batched (Redis leases)."),
    ] = "local"
    failure: Annotated[
        RateLimitFailure | None,
        doc(
            "When Redis fails: open (serve, count locally), closed (503) or local (enforce per "
            "process); default: local for the login/token classes, else open."
        ),
    ] = None
    lease: (
        Annotated[int, doc("batched: tokens per lease; default burst // 10 (at least 1).", ge=1)]
        | None
    ) = None
    lease_ttl: (
        Annotated[
            float,
            doc(
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


class RateLimitSettings(Section, frozen=True, kw_only=True):
    """Named limits, the route classes that apply them, and how Redis-backed limits behave."""

    limits: Annotated[
        dict[str, RateLimitSpec],
        doc(
            "Named limits (added to the built-in api, login, token and register limits, or "
            "replacing them by name)."
        ),
    ] = msgspec.field(default_factory=dict)
    classes: Annotated[
        dict[str, list[str]],
        doc("Route class -> names of the limits it applies (a limit's name is a class too)."),
    ] = msgspec.field(default_factory=dict)
    routes: Annotated[
        dict[str, str],
        doc(
            "Route name ('GET /api/v1/categories') -> class; overrides the handler's opt; an "
            "empty class exempts the route (from the default class too)."
        ),
    ] = msgspec.field(default_factory=dict)
    default_class: Annotated[
        str,
        doc(
            "Class of routes that name none (default: the built-in `api` limit, 100 per second "
            "with bursts of 200 per caller and process); empty: such routes are not limited."
        ),
    ] = DEFAULT_RATE_LIMIT_CLASS
    redis_timeout: Annotated[
        float, doc("Most a Redis decision may add to a request, seconds.", gt=0, le=10)
    ] = 0.2
    redis_backoff: Annotated[
        float, doc("After a Redis failure, seconds of local fallback before trying again.", gt=0)
    ] = 1.0
    max_keys: Annotated[
        int, doc("Keys each limit keeps in memory per process (idle ones go first).", ge=1)
    ] = 100_000
    api_key_header: Annotated[
        str, doc("Request header whose value is the api_key part of a limit's key.", min_length=1)
    ] = "x-api-key"

    def all_rate_limits(self) -> dict[str, RateLimitSpec]:
        """The built-in limits overlaid with the configured ones."""
        return {**_default_rate_limits(), **self.limits}

    def rate_limit_class(self, name: str) -> list[str] | None:
        """The limit names of class ``name`` (a limit's own name is a class of one), or None."""
        if name in self.classes:
            return self.classes[name]
        return [name] if name in self.all_rate_limits() else None

    def __post_init__(self) -> None:
        limits = self.all_rate_limits()
        for name, spec in limits.items():
            where = f" - at `$.rate_limit.limits.{name}`"
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
        for cls, names in self.classes.items():
            unknown = [n for n in names if n not in limits]
            if unknown:
                raise msgspec.ValidationError(
                    f"class {cls!r} names unknown limits {unknown} - at `$.rate_limit.classes`"
                )
        for route, cls in self.routes.items():
            if cls and self.rate_limit_class(cls) is None:
                raise msgspec.ValidationError(
                    f"route {route!r} names unknown class {cls!r} - at `$.rate_limit.routes`"
                )
        if self.default_class and self.rate_limit_class(self.default_class) is None:
            raise msgspec.ValidationError(
                f"unknown class {self.default_class!r} - at `$.rate_limit.default_class`"
            )


# -- the response cache (cygate.edge.cache; docs/caching.md) ----------------------------------


class CacheRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How one route's responses are cached; routes name a rule in ``opt``."""

    ttl: Window = 300.0
    """Seconds an entry is fresh in the gateway (L1 and L2); 0 turns the rule off."""
    max_age: Annotated[int, msgspec.Meta(ge=0, le=31_536_000)] = 60
    """``Cache-Control: max-age`` sent to clients and CDNs."""
    stale_while_revalidate: Window = 30.0
    """After ``ttl``, seconds an entry is still served (``X-Cache: stale``) while one request
    refreshes it in the background."""
    stale_if_error: Window = 300.0
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
    not_found_ttl: Window = 5.0
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


class CacheSettings(Section, frozen=True, kw_only=True):
    """The response cache: L1 in each worker, L2 and leases in Redis, and the rules."""

    enabled: Annotated[bool, doc("Serve cacheable routes from L1/L2 (see cache_rules).")] = True
    key_secret: Annotated[
        str, doc("Secret of the keyed cache-key hash; empty: read or create cache_key_file.")
    ] = ""
    key_file: Annotated[
        str, doc("Where development/test keep a generated cache-key secret (never commit it).")
    ] = ".cygate/cache-key"
    l1_max_bytes: Annotated[
        NonNegative, doc("Bytes of responses the in-process L1 holds per worker.")
    ] = 64 * 1024 * 1024
    max_entry_bytes: Annotated[Positive, doc("Larger responses are never stored.")] = 1024 * 1024
    l2: Annotated[bool, doc("Share entries through Redis (L2) and use its leases.")] = True
    lease_ttl: Annotated[
        Seconds, doc("Lifetime of the Redis lease one loader holds per key, seconds.")
    ] = 2.0
    lease_wait: Annotated[
        Annotated[float, msgspec.Meta(ge=0, le=60)],
        doc("How long other instances wait on L2 while a lease is held, seconds."),
    ] = 0.5
    l2_retry_after: Annotated[
        Seconds, doc("After a Redis error the cache skips Redis for this long, seconds.")
    ] = 1.0
    forced_reloads_per_minute: Annotated[
        int,
        doc(
            "Reloads one caller (token subject, else client address) may force with a request"
            " Cache-Control on a rule that honours it, per minute per worker (a burst of a"
            " tenth of it, at least 1); past it the directive is ignored.",
            ge=1,
            le=60_000,
        ),
    ] = 30
    unsubscribed_max_age: Annotated[
        float,
        doc(
            "While the invalidation subscription is down, L1 serves entries at most this old"
            " and reloads older ones, seconds (0: every such request loads).",
            ge=0,
            le=300,
        ),
    ] = 3.0
    purge_loopback_only: Annotated[
        bool, doc("POST /admin/cache/purge answers loopback peers only (besides its roles).")
    ] = True
    rules: Annotated[
        dict[str, CacheRule],
        doc("Cache rules by name, added to (or replacing) the built-in ones."),
    ] = msgspec.field(default_factory=dict)


class PolicySettings(Section, frozen=True, kw_only=True):
    """Attribute-based policies (Cedar) the edge's policy stage evaluates (``edge/policy.py``,
    ``docs/security.md``)."""

    files: Annotated[
        list[str],
        doc(
            "Cedar policy files (.cedar) evaluated for routes that name a policy action; "
            "empty: no attribute-based policies (no stage, nothing changes on any path)."
        ),
    ] = msgspec.field(default_factory=list)
    cache_size: Annotated[
        Positive,
        doc("Decisions each worker remembers (principal, action and resource attributes)."),
    ] = 10_000
    reload_interval: Annotated[
        Window,
        doc(
            "Seconds between checks of the policy files' modification times (a changed set is "
            "loaded without a restart); 0: never polled (a restart loads them)."
        ),
    ] = 2.0
