"""The audit log: security events appended to ``audit_log``, by any service.

Identity writes most of them (sign-ins, role changes, erasures) and the catalog its admin
writes; the function lives here, beside the services, so that neither imports the other.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from uuid import UUID

__all__ = ["audit"]


def _inet(address: str | None) -> str | None:
    if not address:
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


async def audit(
    conn: Any,
    action: str,
    *,
    actor_id: UUID | None = None,
    target: str | None = None,
    client_ip: str | None = None,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append a security event to ``audit_log``; ``conn`` is an ``asyncpg`` connection or pool
    (so the event can share the caller's transaction)."""
    await conn.execute(
        "INSERT INTO audit_log (actor_id, action, target, client_ip, request_id, details)"
        " VALUES ($1, $2, $3, $4::inet, $5, $6)",
        actor_id,
        action,
        target,
        _inet(client_ip),
        request_id,
        details or {},
    )
