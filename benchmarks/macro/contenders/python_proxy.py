"""``python-proxy``: the plainest proxy on the same HTTP client as cygate, on Granian.

No edge, no route table, no policy: every request is written to the upstream on a pooled
keep-alive connection (``cygate.upstream.client``) and the answer copied back with its
hop-by-hop headers dropped. The difference between this and ``cygate-proxy`` is what the
gateway's routing, policy, resilience and header rules cost; the difference between this and
``nginx-proxy`` is what Python and ASGI cost.
"""

from __future__ import annotations

import os
from typing import Any

from cygate.upstream.client import TargetPool

__all__ = ["app", "forward"]

PORT = int(os.environ.get("BENCH_UPSTREAM_PORT", "0"))
_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade"})
_pool: TargetPool | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _pool
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _pool = TargetPool("127.0.0.1", PORT, max_idle=256)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _pool is not None:
                    _pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    assert _pool is not None
    await forward(_pool, PORT, scope, send)


async def forward(pool: TargetPool, port: int, scope: dict[str, Any], send: Any) -> None:
    """One bodiless request to the upstream on ``port`` over ``pool``, its answer copied to
    ``send`` (also what ``benchmarks/proxy_cost.py`` and the micro benchmark call plain)."""
    client = scope.get("client") or ("", 0)
    head = (
        f"{scope['method']} {scope['path']} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"x-forwarded-for: {client[0]}\r\n\r\n"
    ).encode()
    conn = pool.take_idle() or await pool.connect()
    conn.begin()
    conn.write(head)
    status, headers = await conn.read_head()
    body, more = await conn.read_body()
    out = [(n, v) for n, v in headers if n not in _HOP]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": more})
    while more:
        body, more = await conn.read_body()
        await send({"type": "http.response.body", "body": body, "more_body": more})
    pool.release(conn)
