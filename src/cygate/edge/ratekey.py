"""The rate-limit key format: the one place that spells a request's counter key.

A limit counts requests per key; the key's parts are tagged so two kinds of value can never
collide: ``p:`` a principal (its ``sub``), ``i:`` a client address, ``k:`` an API key's digest,
``r:`` a route, ``u:`` a resource path. ``*`` is everyone's one counter, ``p`` the anonymous
callers' one counter under a limit keyed by ``sub``.

Both paths that take tokens use it: the rate-limit stage (``cygate.edge.ratelimit``) and the
fused hit path (``cygate.edge.hitpath``, whose compiled twin reads these prefixes at import);
changing a prefix here changes both.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADDRESS",
    "ANONYMOUS",
    "API_KEY",
    "EVERYONE",
    "PATH",
    "PRINCIPAL",
    "ROUTE",
    "SEPARATOR",
    "address_key",
    "principal_key",
    "route_key",
]

EVERYONE: Final = "*"
"""The key of a limit keyed by nothing: one counter for every request."""
ANONYMOUS: Final = "p"
"""The key of anonymous requests under a limit keyed by ``sub``: one shared counter."""
PRINCIPAL: Final = "p:"
ADDRESS: Final = "i:"
API_KEY: Final = "k:"
ROUTE: Final = "r:"
PATH: Final = "u:"
SEPARATOR: Final = "\x1f"
"""Joins the parts of a key of several parts."""


def principal_key(sub: str) -> str:
    """The key of the caller whose token says ``sub``."""
    return PRINCIPAL + sub


def address_key(address: str) -> str:
    """The key of the client at ``address``."""
    return ADDRESS + address


def route_key(route: str) -> str:
    """The key of the route named ``route`` (one counter for all its callers)."""
    return ROUTE + route
