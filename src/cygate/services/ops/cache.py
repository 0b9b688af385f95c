"""``POST /admin/cache/purge {tags}``: drop cached responses by tag on every instance.

Route policy: ``auth`` with role ``admin`` (the edge's token stage enforces it); in addition, by
default (``cache_purge_loopback_only``), only loopback peers are answered, like ``/metrics``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.params import Body

from cygate.edge.access import require_loopback
from cygate.edge.cache import CacheUnavailable
from cygate.edge.problem import Problem
from cygate.services.openapi import problems

if TYPE_CHECKING:
    from cygate.edge.cache import ResponseCache
    from cygate.edge.settings import CacheSettings

__all__ = ["CacheAdminController", "PurgeRequest", "PurgeResult"]

Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class PurgeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tags: Annotated[list[Tag], msgspec.Meta(min_length=1, max_length=100)]
    """Tags to purge, e.g. ``product:0b7e6f1c-...``, ``products``, ``categories``."""


class PurgeResult(msgspec.Struct, frozen=True):
    tags: list[str]
    deleted: int
    """Entries deleted from the shared L2."""
    instances: int
    """Other gateway processes that received the invalidation."""


class CacheAdminController(Controller):
    path = "/admin/cache"
    tags = ["operations"]

    @post(
        "/purge",
        summary="Purge cached responses by tag, on every instance",
        status_code=200,
        opt={"auth": True, "roles": ["admin"]},
        responses=problems(403, s403="Not an admin, or not from loopback (configurable)"),
    )
    async def purge(
        self,
        request: Request[Any, Any, Any],
        state: State,
        data: Annotated[PurgeRequest, Body()],
    ) -> Response[PurgeResult]:
        settings: CacheSettings = state.settings.cache
        if settings.purge_loopback_only:
            require_loopback(request, "cache purges are accepted from")
        cache: ResponseCache | None = state.cache
        deleted = heard = 0
        if cache is not None:
            try:
                deleted, heard = await cache.invalidate_tags(data.tags)
            except CacheUnavailable:
                raise Problem(
                    503,
                    "purged here, but Redis is unavailable: other instances were not told; retry",
                    headers={"retry-after": "1"},
                ) from None
        return Response(
            PurgeResult(sorted(set(data.tags)), deleted, heard),
            headers={"cache-control": "no-store"},
        )
