"""Drive an in-process edge + proxy as ASGI, against real loopback upstreams."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from cygate.edge.edge import Edge, Message
from cygate.infra.metrics import Metrics
from cygate.upstream.config import validate_route_file
from cygate.upstream.proxy import UpstreamProxy
from cygate.upstream.table import RouteTable, build_table


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    size: int = 0
    error: BaseException | None = None
    messages: list[Message] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    def headers_named(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]

    def json(self) -> Any:
        return orjson.loads(self.body)


async def _noop_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"local"})


def make_edge(
    config: dict[str, Any],
    *,
    metrics: Metrics | None = None,
    max_body: int = 1 << 20,
    trusted: Any = None,
) -> tuple[Edge, RouteTable]:
    metrics = metrics or Metrics()
    valid = validate_route_file(config)
    table = build_table([], valid, max_body=max_body, on_breaker_change=metrics.breaker_transition)
    edge = Edge(
        _noop_app,
        table.router,
        metrics=metrics,
        max_body_bytes=max_body,
        upstream=UpstreamProxy(metrics, trusted),
        trusted_proxies=trusted,
    )
    for up in table.upstreams.values():
        up.start()
    return edge, table


async def close_table(table: RouteTable) -> None:
    for up in table.upstreams.values():
        await up.close()


async def call(
    edge: Edge,
    method: str,
    path: str,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    chunks: list[bytes] | None = None,
    query: bytes = b"",
    keep_body: bool = True,
    client: tuple[str, int] = ("127.0.0.5", 5555),
    host: bytes = b"gw.example",
    slow_send: float = 0.0,
) -> Reply:
    """One request; the body arrives in ``chunks`` (``more_body`` between them)."""
    pending = list(chunks or [])
    hdrs = [(b"host", host), *(headers or [])]
    if chunks is not None and not any(k == b"content-length" for k, _ in hdrs):
        hdrs.append((b"transfer-encoding", b"chunked"))
    reply = Reply(0, [], b"")
    parts: list[bytes] = []

    async def receive() -> Message:
        if pending:
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending)}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if slow_send:
            await asyncio.sleep(slow_send)  # a client that reads slowly
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = list(message["headers"])
        else:
            body = message.get("body", b"")
            reply.size += len(body)
            if keep_body:
                parts.append(body)
        reply.messages.append({k: v for k, v in message.items() if k != "body"})

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": hdrs,
        "client": client,
        "scheme": "http",
    }
    try:
        await edge(scope, receive, send)
    except Exception as exc:
        reply.error = exc
    reply.body = b"".join(parts)
    return reply
