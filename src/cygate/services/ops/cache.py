"""``POST /admin/cache/purge {tags}``: drop cached responses by tag on every instance.

Route policy: ``auth`` with role ``admin`` (enforced by the token stage once identity lands).
Until then, and by default after it (``cache_purge_loopback_only``), only loopback peers are
answered, like ``/metrics``.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.exceptions import PermissionDeniedException
from litestar.params import Body

from cygate.edge.cache import CacheUnavailable
from cygate.edge.problem import Problem

if TYPE_CHECKING:
    from cygate.edge.cache import ResponseCache
    from cygate.settings import Settings

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


def _is_loopback(request: Request[Any, Any, Any]) -> bool:
    client = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


class CacheAdminController(Controller):
    path = "/admin/cache"
    tags = ["operations"]

    @post(
        "/purge",
        summary="Purge cached responses by tag, on every instance",
        status_code=200,
        opt={"auth": True, "roles": ["admin"]},
    )
    async def purge(
        self,
        request: Request[Any, Any, Any],
        state: State,
        data: Annotated[PurgeRequest, Body()],
    ) -> Response[PurgeResult]:
        settings: Settings = state.settings
        if settings.cache_purge_loopback_only and not _is_loopback(request):
            raise PermissionDeniedException("cache purges are accepted from loopback peers only")
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
