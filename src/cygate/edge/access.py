"""Who may call the operator endpoints: the loopback check shared by /metrics, /admin/routes and
/admin/cache/purge."""

from __future__ import annotations

import ipaddress
from typing import Any

from litestar import Request
from litestar.exceptions import PermissionDeniedException

__all__ = ["is_loopback", "require_loopback"]


def is_loopback(request: Request[Any, Any, Any]) -> bool:
    """True when the socket peer is a loopback address (never X-Forwarded-For)."""
    client = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


def require_loopback(request: Request[Any, Any, Any], what: str) -> None:
    """403 problem unless the peer is loopback: ``what`` names the refused thing."""
    if not is_loopback(request):
        raise PermissionDeniedException(f"{what} loopback peers only")
