"""Orders' part of the app: placing and managing orders, the Idempotency-Key store (shared
with payments), and the expiry sweeper of each worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from cygate.services.idempotency import Idempotency
from cygate.services.orders.controllers import OrdersController
from cygate.services.orders.expiry import OrderExpiry
from cygate.services.plugin import ServicePlugin

if TYPE_CHECKING:
    from litestar import Litestar

    from cygate.services.idempotency_settings import IdempotencySettings
    from cygate.services.orders.settings import OrdersSettings

__all__ = ["OrdersPlugin"]


class OrdersPlugin(ServicePlugin):
    """Puts ``idempotency`` into ``app.state`` (payments use it too) and runs the sweeper."""

    name = "orders"
    route_handlers = (OrdersController,)

    def __init__(self, settings: OrdersSettings, *, idempotency: IdempotencySettings) -> None:
        self.settings = settings
        self.idempotency = Idempotency.from_settings(idempotency)

    def state(self) -> dict[str, Any]:
        return {"idempotency": self.idempotency}

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        pool = app.state.pool
        self.idempotency.pool = pool
        expiry = OrderExpiry(
            pool,
            interval=self.settings.expiry_interval,
            batch=self.settings.expiry_batch,
            cache=app.state.cache,
            idempotency=self.idempotency,
        )
        expiry.start()
        try:
            yield
        finally:
            await expiry.stop()
