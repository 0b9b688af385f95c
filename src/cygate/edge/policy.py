"""Route policy: what the edge must do for a matched route before the app sees the request."""

from __future__ import annotations

import msgspec

__all__ = ["RoutePolicy"]


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
    max_body_bytes: int | None = None
    """Per-route body limit; ``None`` uses the global setting."""
