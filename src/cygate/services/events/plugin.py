"""Events' part of the app: the read models' routes, and the outbox relay and consumers of
each worker (``docs/events.md``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from cygate.services.events.controllers import AnalyticsController, OrderSummaryController
from cygate.services.events.service import EventsService
from cygate.services.plugin import ServicePlugin

if TYPE_CHECKING:
    from litestar import Litestar

    from cygate.infra.settings import DatabaseSettings, RedisSettings
    from cygate.services.events.settings import EventsSettings
    from cygate.services.privacy.settings import RetentionSettings

__all__ = ["EventsPlugin"]


class EventsPlugin(ServicePlugin):
    """Starts :class:`EventsService` once the pool and the cache (its consumer's target) exist."""

    name = "events"
    route_handlers = (OrderSummaryController, AnalyticsController)

    def __init__(
        self,
        settings: EventsSettings,
        *,
        database: DatabaseSettings,
        redis: RedisSettings,
        retention: RetentionSettings | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.redis = redis
        self.retention = retention

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        events = EventsService(
            self.settings,
            app.state.pool,
            app.state.cache,
            database=self.database,
            redis=self.redis,
            metrics=app.state.metrics,
            retention=self.retention,
        )
        await events.start()
        try:
            yield
        finally:
            await events.stop()
