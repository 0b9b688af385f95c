"""What the edge knows about one request, handed to every stage.

Stages (token check, rate limit, ...) are callables ``stage(ctx)`` run in order after the route
is resolved and before the request is dispatched. A stage either returns ``None`` (it decided
without waiting: PERF, no coroutine is created) or an awaitable the edge awaits. To refuse the
request it raises :class:`cygate.edge.problem.Problem`; to add response headers (``RateLimit-*``)
it appends to ``ctx.response_headers``, which go on every response, refusals included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cygate.edge.policy import RoutePolicy

__all__ = ["EdgeContext", "Stage"]


class EdgeContext:
    """Per-request state of the edge. ``__slots__``: one is made for every request."""

    __slots__ = (
        "headers",
        "host",
        "method",
        "params",
        "path",
        "peer",
        "policy",
        "principal",
        "query",
        "request_id",
        "response_headers",
        "scope",
        "traceparent",
    )

    def __init__(
        self,
        scope: Any,
        method: str,
        path: str,
        host: str,
        request_id: str,
        traceparent: bytes,
        policy: RoutePolicy,
        params: dict[str, str] | None,
    ) -> None:
        self.scope = scope
        self.method = method
        self.path = path
        """The normalised path: one spelling per resource."""
        self.host = host
        """Lower-cased ``Host`` without the port; empty when absent."""
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        """Request headers as ASGI gives them (names lower-cased)."""
        self.query: bytes = scope.get("query_string", b"")
        client = scope.get("client")
        self.peer: str = client[0] if client else ""
        """The socket peer's address (not X-Forwarded-For: see the rate-limit stage)."""
        self.request_id = request_id
        self.traceparent = traceparent
        self.policy = policy
        self.params = params
        self.principal: Any = None
        """Set by the token stage: who is calling (None: anonymous)."""
        self.response_headers: list[tuple[bytes, bytes]] = []

    def header(self, name: bytes) -> bytes | None:
        """The first value of request header ``name`` (lower-case bytes), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


Stage = Callable[[EdgeContext], Awaitable[None] | None]
