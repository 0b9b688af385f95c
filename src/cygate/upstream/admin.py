"""``GET /admin/routes``: the live route table and each upstream's circuit state.

The handler's ``opt`` asks the edge for an authenticated admin (enforced once the token stage
is in the edge). Until then, and in addition afterwards, ``routes_admin_access = "loopback"``
(the default) answers only loopback peers, like ``/metrics``.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.exceptions import PermissionDeniedException

if TYPE_CHECKING:
    from cygate.settings import Settings

__all__ = ["RoutesAdminController"]


class RoutesAdminController(Controller):
    tags = ["operations"]

    @get(
        "/admin/routes",
        summary="The active route table and each upstream's circuit state (this worker's)",
        opt={"auth": True, "roles": ["admin"]},
    )
    async def routes(self, request: Request[Any, Any, Any], state: State) -> Response[Any]:
        settings: Settings = state.settings
        if settings.routes_admin_access == "loopback":
            client = request.client.host if request.client else ""
            try:
                allowed = ipaddress.ip_address(client).is_loopback
            except ValueError:
                allowed = False
            if not allowed:
                raise PermissionDeniedException("the route table is served to loopback peers only")
        return Response(state.routes.view(), headers={"cache-control": "no-store"})
