"""What the fused hit path answers from: one generation of the edge's routing, cache routes,
rate-limit plans, response settings and id minter, fixed when it is built.

The edge builds a :class:`HitPlan` (``Edge._rebuild_hit_path``) whenever one of its parts
changes: a new router, new stages, a route the cache starts caching (``ResponseCache.watch``),
new rate-limit plans (``RateLimitStage.watch``); then a new ``HitPath`` over it. So the hit
path holds no table of another module that can change under it: its tables are this plan's
copies, and what it reads live (the L1's nodes, the revoked ``jti``, the rate
tables) it reads through those modules' public interfaces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cygate.core.cachekey import CacheKey
    from cygate.core.ids import IdMinter
    from cygate.core.router import Router
    from cygate.edge.auth import TokenStage
    from cygate.edge.compress import Compression
    from cygate.edge.l1 import L1
    from cygate.edge.ratelimit import RateLimitStage, RoutePlan

__all__ = ["HitCache", "HitPlan", "HitRoute"]


class HitRoute(Protocol):
    """What the hit path reads of one cached route (``cache_rules.CacheRoute`` is one)."""

    @property
    def private(self) -> bool: ...

    @property
    def spec(self) -> CacheKey: ...


class HitCache(Protocol):
    """What the hit path uses of the response cache (``ResponseCache`` is one): its L1, its
    routes' rules, and the count of hits it answers. Declared here, below the cache, so that
    the cache's modules may use the hit path's types without an import cycle."""

    l1: L1
    l1_hits: int

    def route_table(self) -> Mapping[str, HitRoute]: ...


@dataclass(frozen=True, slots=True)
class HitPlan:
    """One generation of the fused hit path's inputs (see the module docstring)."""

    router: Router
    """Resolves the request's route (the edge's, for this generation)."""
    cache: HitCache
    """Its L1 (``l1.nodes``) and hit counters (``n_hit_l1``, ``l1_hits``)."""
    routes: dict[str, HitRoute]
    """Route name -> its cache rule, as the cache held them (``ResponseCache.route_table``)."""
    token: TokenStage | None
    """The token stage, or None (then no principal: the rate limit sees anonymous)."""
    rate: RateLimitStage | None
    """The rate-limit stage (its ``top_up``), or None."""
    rate_plans: dict[str, RoutePlan]
    """Route name -> its limits, as the stage held them (``RateLimitStage.plans``)."""
    security: tuple[tuple[bytes, bytes], ...]
    """The edge's security headers, in its order."""
    trusted: bool
    """Proxies are trusted: a client's address may come from X-Forwarded-For (then a limit
    keyed by address is the general path's)."""
    caller_key: Callable[[Any], str]
    """What a private entry's key holds of its caller (``cygate.edge.cache.caller_key``)."""
    recorder: Any
    """The edge's metrics: each hit is counted there."""
    ids: IdMinter
    """The edge's minter of the ids of requests that bring none (its general path's too)."""
    hosts: dict[bytes, str]
    """Host header -> its lower-cased, port-less form, for the values seen (the edge's)."""
    host_of: Callable[[bytes], str]
    """A Host header not in ``hosts``: its form (and remembered there)."""
    cors: bool = False
    """CORS is on: requests with ``Origin`` are the general path's; answers get
    ``Vary: Origin``."""
    compression: Compression | None = None
    """The edge's compression, or None (off). On: an entry the edge would compress is answered
    to a request with ``Accept-Encoding`` with its kept variant for the negotiated coding (none
    kept yet: the general path's, which compresses and keeps it), and with
    ``Vary: Accept-Encoding``."""

    @classmethod
    def build(
        cls,
        *,
        router: Router,
        cache: HitCache,
        token: TokenStage | None,
        rate: RateLimitStage | None,
        security: tuple[tuple[bytes, bytes], ...],
        trusted: bool,
        caller_key: Callable[[Any], str],
        recorder: Any,
        ids: IdMinter,
        hosts: dict[bytes, str],
        host_of: Callable[[bytes], str],
        cors: bool = False,
        compression: Compression | None = None,
    ) -> HitPlan:
        """The plan of the cache's and the stage's tables as they are now."""
        return cls(
            router=router,
            cache=cache,
            routes=dict(cache.route_table()),
            token=token,
            rate=rate,
            rate_plans=dict(rate.plans) if rate is not None else {},
            security=security,
            trusted=trusted,
            caller_key=caller_key,
            recorder=recorder,
            ids=ids,
            hosts=hosts,
            host_of=host_of,
            cors=cors,
            compression=compression,
        )
