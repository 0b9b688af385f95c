"""The edge: an ASGI layer in front of the Litestar app.

For every HTTP request it normalises the path, resolves the route with the compiled router,
attaches the route's policy, sets ``X-Request-ID`` and ``traceparent``, enforces the body limit,
adds security headers, answers routing errors itself as problem+json, and counts the request.
Later steps (token check, rate limit, L1 cache) plug in between the route lookup and the app.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from cygate.core.router import (
    BAD_PARAM,
    FOUND,
    METHOD_NOT_ALLOWED,
    PathError,
    RouteMatch,
    Router,
    normalize_path,
)
from cygate.edge.problem import PROBLEM_CONTENT_TYPE, problem_body

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from cygate.edge.policy import RoutePolicy
    from cygate.infra.metrics import Metrics

__all__ = ["BodyTooLarge", "Edge"]

log = logging.getLogger("cygate.edge")

_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT_RE = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_UNMATCHED = "<unmatched>"


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


def _new_request_id() -> str:
    return os.urandom(12).hex()


class Edge:
    """Wraps an ASGI app (Litestar) with routing, policy and the response contract."""

    __slots__ = ("_security_headers", "app", "max_body", "metrics", "router")

    def __init__(
        self,
        app: ASGIApp,
        router: Router,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        hsts_max_age: int = 0,
        hsts_include_subdomains: bool = False,
    ) -> None:
        self.app = app
        self.router = router
        self.metrics = metrics
        self.max_body = max_body_bytes
        headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]
        if hsts_max_age:
            value = f"max-age={hsts_max_age}" + ("; includeSubDomains" if hsts_include_subdomains else "")
            headers.append((b"strict-transport-security", value.encode()))
        self._security_headers = tuple(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan (and websockets, none yet)
            return
        started = time.perf_counter()
        method: str = scope["method"]

        request_id = ""
        traceparent = b""
        content_length = -1
        host = ""
        for name, value in scope["headers"]:
            # PERF: one pass over the headers; names arrive lower-cased (ASGI).
            if name == b"x-request-id":
                if _REQUEST_ID_RE.fullmatch(value):
                    request_id = value.decode()
            elif name == b"traceparent":
                if _TRACEPARENT_RE.fullmatch(value) and not value.startswith(b"00-" + b"0" * 32):
                    traceparent = value
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else -2
            elif name == b"host":
                host = value.decode("latin-1").rsplit(":", 1)[0].lower()
        if not request_id:
            request_id = _new_request_id()
        if not traceparent:
            traceparent = b"00-" + os.urandom(16).hex().encode() + b"-" + os.urandom(8).hex().encode() + b"-01"
        extra_headers = (
            (b"x-request-id", request_id.encode()),
            (b"traceparent", traceparent),
            *self._security_headers,
        )
        state: dict[str, Any] = {"status": 500, "started": False}
        route_name = _UNMATCHED
        instance = scope.get("path", "")

        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        try:
            path = normalize_path(raw_path.split(b"?", 1)[0])
        except PathError as exc:
            await self._problem(send, 400, f"malformed request path: {exc}", instance, request_id, extra_headers)
            self.metrics.observe(route_name, method, 400, time.perf_counter() - started)
            return
        instance = path

        if content_length == -2:
            await self._problem(send, 400, "invalid Content-Length header", instance, request_id, extra_headers)
            self.metrics.observe(route_name, method, 400, time.perf_counter() - started)
            return
        if content_length > self.max_body:
            # Before routing: an oversized body is refused whatever path it was sent to.
            await self._problem(
                send, 413, f"request body exceeds the {self.max_body}-byte limit", instance, request_id, extra_headers
            )
            self.metrics.observe(route_name, method, 413, time.perf_counter() - started)
            return

        match = self.router.match(method, path, host or None)
        if match.kind != FOUND:
            status, detail, more, errors = _routing_error(match, method, path)
            headers = extra_headers + more
            await self._problem(send, status, detail, instance, request_id, headers, extra=errors)
            self.metrics.observe(route_name, method, status, time.perf_counter() - started)
            return
        policy: RoutePolicy = match.value
        route_name = policy.name

        limit = policy.max_body_bytes or self.max_body
        if content_length > limit:
            await self._problem(
                send, 413, f"request body exceeds the {limit}-byte limit", instance, request_id, extra_headers
            )
            self.metrics.observe(route_name, method, 413, time.perf_counter() - started)
            return

        scope["path"] = path
        scope["raw_path"] = quote(path, safe="/:@!$&'()*+,;=-._~").encode("ascii")
        scope["cygate.policy"] = policy
        scope["cygate.params"] = match.params
        scope["cygate.request_id"] = request_id
        scope["cygate.traceparent"] = traceparent

        head_only = method == "HEAD" and "HEAD" not in policy.name.split(" ", 1)[0]
        if head_only:
            scope["method"] = "GET"  # the router fell back to the GET route; drop the body below

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message["headers"] = [*message.get("headers", ()), *extra_headers]
            elif head_only and message["type"] == "http.response.body":
                message = {"type": "http.response.body", "body": b"", "more_body": message.get("more_body", False)}
            await send(message)

        wrapped_receive = receive
        if content_length < 0 and method not in ("GET", "HEAD"):
            wrapped_receive = _limited_receive(receive, limit)

        try:
            await self.app(scope, wrapped_receive, send_wrapper)
        except BodyTooLarge as exc:
            if not state["started"]:
                state["status"] = 413
                await self._problem(
                    send, 413, f"request body exceeds the {exc.limit}-byte limit", instance, request_id, extra_headers
                )
        except Exception:
            log.exception("unhandled error request_id=%s route=%s", request_id, route_name)
            if not state["started"]:
                state["status"] = 500
                await self._problem(send, 500, "internal error; quote the request_id when reporting it",
                                    instance, request_id, extra_headers)
        finally:
            self.metrics.observe(route_name, method, state["status"], time.perf_counter() - started)

    @staticmethod
    async def _problem(
        send: Send,
        status: int,
        detail: str,
        instance: str,
        request_id: str,
        headers: tuple[tuple[bytes, bytes], ...],
        *,
        extra: dict[str, Any] | None = None,
    ) -> None:
        body = problem_body(status, detail, instance=instance, request_id=request_id, extra=extra)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _routing_error(
    match: RouteMatch[Any], method: str, path: str
) -> tuple[int, str, tuple[tuple[bytes, bytes], ...], dict[str, Any] | None]:
    """Status, detail, extra headers and extra problem members for a request that did not route."""
    if match.kind == METHOD_NOT_ALLOWED:
        allowed = ", ".join(match.allowed)
        detail = f"{method} is not allowed on {path}; allowed: {allowed}"
        return 405, detail, ((b"allow", allowed.encode()),), None
    if match.kind == BAD_PARAM:
        name = match.bad_param
        errors = [{"field": f"path.{name}", "message": "invalid value for this parameter"}]
        return 422, f"path parameter {name!r} is not valid", (), {"errors": errors}
    return 404, f"no route for {path}", (), None


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """Count streamed (chunked) body bytes and stop at the limit."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return limited
