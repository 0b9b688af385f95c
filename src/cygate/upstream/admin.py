"""``GET /admin/routes``: the live route table and each upstream's circuit state.

The handler's ``opt`` makes the edge's token stage require an admin; in addition,
``routes_admin_access = "loopback"`` (the default) answers only loopback peers, like ``/metrics``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from cygate.edge.access import require_loopback

if TYPE_CHECKING:
    from cygate.upstream.settings import RoutesSettings

__all__ = ["RoutesAdminController"]


class RoutesAdminController(Controller):
    tags = ["operations"]

    @get(
        "/admin/routes",
        summary="The active route table and each upstream's circuit state (this worker's)",
        opt={"auth": True, "roles": ["admin"]},
        responses={
            200: ResponseSpec(
                dict[str, Any], description="The route table", generate_examples=False
            ),
            403: ResponseSpec(
                None, description="Not an admin, or not from loopback (configurable)"
            ),
        },
    )
    async def routes(self, request: Request[Any, Any, Any], state: State) -> Response[Any]:
        settings: RoutesSettings = state.settings.routes
        if settings.admin_access == "loopback":
            require_loopback(request, "the route table is served to")
        return Response(state.routes.view(), headers={"cache-control": "no-store"})
