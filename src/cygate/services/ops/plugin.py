"""Operations' part of the app: health, readiness, metrics, and cache purges."""

from __future__ import annotations

from cygate.services.ops.cache import CacheAdminController
from cygate.services.ops.controllers import OpsController
from cygate.services.plugin import ServicePlugin

__all__ = ["OpsPlugin"]


class OpsPlugin(ServicePlugin):
    """Controllers only; they read the shared objects in ``app.state``."""

    name = "ops"
    route_handlers = (OpsController, CacheAdminController)
