"""Payments' part of the app: the processor client, webhooks, and the recovery sweeper
(``docs/payments.md``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from cygate.services.payments.controllers import PaymentsController
from cygate.services.payments.service import Payments
from cygate.services.plugin import ServicePlugin

if TYPE_CHECKING:
    from litestar import Litestar

    from cygate.infra.metrics import Metrics
    from cygate.services.payments.settings import PaymentsSettings

__all__ = ["PaymentsPlugin"]


class PaymentsPlugin(ServicePlugin):
    """Builds :class:`Payments`; its start binds the pool and starts the sweeper."""

    name = "payments"
    route_handlers = (PaymentsController,)

    def __init__(self, settings: PaymentsSettings, *, environment: str, metrics: Metrics) -> None:
        self.payments = Payments(settings, metrics, environment=environment)

    def state(self) -> dict[str, Any]:
        return {"payments": self.payments}

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        await self.payments.start(app.state.pool)
        try:
            yield
        finally:
            await self.payments.stop()
