"""How a feature joins the app: one Litestar init plugin per service package.

A :class:`ServicePlugin` contributes its controllers, the objects it keeps in ``app.state``,
the edge's fast handlers for its routes, and its start and stop (a lifespan). ``create_app``
lists the plugins; a new feature adds its package and one line there.

Order: the app's own lifespan (the pool, Redis, metrics, then the edge: rate limits, route
table, cache) is entered first and left last; the plugins' lifespans are entered in the order
of the list and left in reverse, so a feature may use what an earlier one started. Shared
resources are read from ``app.state`` (``pool``, ``redis``, ``metrics``, ``cache``) when the
lifespan starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from litestar.plugins import InitPlugin

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.config.app import AppConfig
    from litestar.types import ControllerRouterHandler

    from cygate.edge.context import FastHandler
    from cygate.edge.policy import PolicyLoader

__all__ = ["ServicePlugin"]


class ServicePlugin(InitPlugin):
    """One feature's part of the app; subclasses set what they contribute."""

    name = "service"
    route_handlers: Sequence[ControllerRouterHandler] = ()
    """Controllers (or handlers) of the feature, registered in this order."""

    def state(self) -> dict[str, Any]:
        """Objects put into ``app.state`` (read by the feature's controllers)."""
        return {}

    def fast_handlers(self) -> dict[str, FastHandler]:
        """Route name (``GET /api/v1/...``) -> a handler the edge calls itself for it."""
        return {}

    def policy_loaders(self) -> dict[str, PolicyLoader]:
        """Cedar resource type (``Product``) -> the loader of a resource's attributes, for
        routes that name it (``opt={"policy_resource": ...}``; ``cygate.edge.policy``)."""
        return {}

    def lifespan(self, app: Litestar) -> AbstractAsyncContextManager[None]:
        """Start the feature's background work; on exit, stop it. Default: nothing to do."""
        return _nothing()

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.extend(self.route_handlers)
        app_config.state.update(self.state())
        if type(self).lifespan is not ServicePlugin.lifespan:
            app_config.lifespan.append(self.lifespan)
        return app_config


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield
