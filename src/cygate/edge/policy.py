"""Route policy: what the edge must do for a matched route before the app sees the request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from cygate.edge.context import EdgeContext

__all__ = ["FastHandler", "RoutePolicy"]

FastHandler = Callable[["EdgeContext"], Awaitable[bytes]]
"""A handler the edge calls itself, without entering Litestar: it reads the request from the
context (``ctx.params``, ``ctx.principal``) and returns a JSON body for a 200, or raises
:class:`cygate.edge.problem.Problem`. Headers it appends to ``ctx.response_headers`` are sent
as its response's own (``Cache-Control``): on a cached route the cache judges them like a Litestar
handler's."""


class RoutePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """One route's rules, attached to the request scope as ``scope["cygate.policy"]``."""

    name: str
    """The route template (``GET /api/v1/products/{id}``): metric label and log field."""
    auth: bool = False
    """A valid access token is required (identity issue)."""
    roles: frozenset[str] = frozenset()
    """Any one of these roles is required; empty means any authenticated caller."""
    rate_limit: str | None = None
    """Name of the rate-limit class that applies (rate-limiting issue)."""
    cache: str | None = None
    """Name of the cache rule that applies (caching issue)."""
    target: str = "local"
    """``local`` (the Litestar app) or the name of an upstream (routing issue)."""
    body: str = "json"
    """What a write's body must be: ``json`` (the edge answers another media type with 415) or
    ``form`` (the handler parses its own form body: the OAuth endpoints, RFC 6749)."""
    max_body_bytes: int | None = None
    """Per-route body limit; ``None`` uses the global setting."""
    fast: FastHandler | None = None
    """PERF: serve this route in the edge (no framework routing, DI or response objects).
    The Litestar handler for the route stays: it documents it in OpenAPI and serves it when
    fast paths are switched off (``CYGATE_EDGE_FAST_PATHS=false``)."""
