"""The edge under a server that inspects the app: uvicorn's ``--interface auto``.

``Edge.__call__`` is a plain function returning an awaitable (a fused hit, or the general
path's coroutine). uvicorn tells ASGI 3 from ASGI 2 by asking whether ``__call__`` is a
coroutine function, and would call an ASGI 2 app with the scope alone; the edge marks its
``__call__`` so that the answer is yes. Shown here with a real uvicorn server on a loopback port:
a miss through the general path, then a fresh hit through the fused hit path.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from cache_helpers import CountedHitPath, make_edge

from cygate.edge.edge import Edge


def _edge() -> Edge:
    edge, _cache, _app = make_edge()
    edge.stages = ()  # no stage the fused hit path does not know: it is built
    assert edge.hit_path is not None
    return edge


def test_uvicorn_auto_detects_asgi3() -> None:
    config = uvicorn.Config(_edge(), interface="auto", lifespan="off", log_config=None)
    config.load()
    assert config.interface == "asgi3"
    assert asyncio.iscoroutinefunction(Edge.__call__)


@pytest.fixture
def served() -> Iterator[tuple[str, Edge]]:
    edge = _edge()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        edge, host="127.0.0.1", port=port, interface="auto", lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", edge
    finally:
        server.should_exit = True
        thread.join(10)


def test_uvicorn_serves_a_miss_then_a_fused_hit(served: tuple[str, Edge]) -> None:
    base, edge = served
    counted: Counter[str] = Counter()
    edge._hits = CountedHitPath(edge.hit_path, counted)  # type: ignore[assignment]
    with httpx.Client(base_url=base, timeout=5) as client:
        miss = client.get("/items/7")
        hit = client.get("/items/7")
    assert miss.status_code == 200, miss.text
    assert miss.headers["x-cache"] == "miss"
    assert hit.status_code == 200, hit.text
    assert hit.headers["x-cache"] == "hit-l1"
    assert hit.content == miss.content
    assert hit.headers["etag"] == miss.headers["etag"]
    assert hit.headers["x-request-id"] != miss.headers["x-request-id"]
    assert counted == {"general": 1, "fused": 1}  # the hit, sent by the hit path's awaitable
