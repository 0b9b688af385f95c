"""Fast handlers: identity reads the edge answers itself, without entering Litestar.

PERF: ``GET /api/v1/users/me`` is the hottest authenticated read (clients call it on every
page). Served here it skips Litestar's routing, DI and response objects, which cost more CPU
per request than the edge path (figures: docs/benchmarks.md, ``cygate-me``). The Litestar
handler stays the documented and fallback path (``CYGATE_EDGE_FAST_PATHS=false``); a test
checks that both give the same bytes. The route is cached per caller (rule ``me``): the edge's
cache step runs before this handler, so a hit never reaches it, and a miss stores its bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

import msgspec

from cygate.edge.auth import unauthorized
from cygate.edge.problem import Problem
from cygate.infra.db import DB_UNAVAILABLE
from cygate.services.catalog.fast import unavailable
from cygate.services.identity.models import PROFILE_CACHE_CONTROL
from cygate.services.identity.store import get_user

if TYPE_CHECKING:
    from cygate.edge.context import EdgeContext, FastHandler
    from cygate.services.identity.service import Identity

__all__ = ["my_profile"]

_encode = msgspec.json.Encoder().encode
_PRIVATE = (b"cache-control", PROFILE_CACHE_CONTROL.encode())


def my_profile(identity: Identity) -> FastHandler:
    """``GET /api/v1/users/me`` in the edge (the route's policy requires a token)."""

    own_issuer = identity.settings.jwt_issuer

    async def handler(ctx: EdgeContext) -> bytes:
        principal = ctx.principal
        if principal is None:  # pragma: no cover - the token stage refused already
            raise unauthorized()
        if principal.issuer != own_issuer:
            # NOTE: an external provider's subject names its own user, never one of ours, even
            # when it happens to look like (or was made to look like) one of our user ids.
            raise Problem(404, "no user account for this caller")
        try:
            user_id = UUID(principal.sub)
        except ValueError:
            raise Problem(404, "no user account for this caller") from None
        try:
            user = await get_user(identity.pool, user_id)
        except DB_UNAVAILABLE:
            raise unavailable() from None
        if user is None:
            raise Problem(404, "no user account for this caller")
        ctx.response_headers.append(_PRIVATE)
        return _encode(user)

    return handler
