"""Identity's part of the app: accounts, tokens, the JWKS, and external providers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from cygate.infra.db import DB_UNAVAILABLE
from cygate.services.identity.controllers import AuthController, JWKSController, UsersController
from cygate.services.identity.fast import my_profile
from cygate.services.identity.service import Identity
from cygate.services.plugin import ServicePlugin

if TYPE_CHECKING:
    from litestar import Litestar

    from cygate.edge.context import FastHandler
    from cygate.services.identity.settings import IdentitySettings

__all__ = ["IdentityPlugin"]

log = logging.getLogger("cygate")


class IdentityPlugin(ServicePlugin):
    """Builds :class:`Identity` (the edge's token stage uses its verifier and revocations)."""

    name = "identity"
    route_handlers = (AuthController, UsersController, JWKSController)

    def __init__(
        self, settings: IdentitySettings, *, environment: str, redis_timeout: float
    ) -> None:
        self.identity = Identity(settings, environment=environment, redis_timeout=redis_timeout)

    def state(self) -> dict[str, Any]:
        return {"identity": self.identity}

    def fast_handlers(self) -> dict[str, FastHandler]:
        return {"GET /api/v1/users/me": my_profile(self.identity)}

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        try:
            await self.identity.start(app.state.pool, app.state.redis)
        except DB_UNAVAILABLE as exc:
            log.warning("identity start-up without PostgreSQL (%r); admin not ensured", exc)
        try:
            yield
        finally:
            await self.identity.stop()
