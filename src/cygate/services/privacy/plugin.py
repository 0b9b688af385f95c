"""Privacy's part of the app: the consent API."""

from __future__ import annotations

from typing import Any

from cygate.services.plugin import ServicePlugin
from cygate.services.privacy.controllers import ConsentsController

__all__ = ["PrivacyPlugin"]


class PrivacyPlugin(ServicePlugin):
    """The consent controller; ``issuer`` tells own users' tokens from external ones."""

    name = "privacy"
    route_handlers = (ConsentsController,)

    def __init__(self, *, issuer: str) -> None:
        self.issuer = issuer

    def state(self) -> dict[str, Any]:
        return {"privacy_issuer": self.issuer}
