"""Plain ASGI types: the edge speaks ASGI, not Litestar's narrower TypedDicts.

They live in a module of their own, below everything else in the edge, so that any module (the
edge, its cache, its validators, the reverse proxy) can name them without importing the edge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
