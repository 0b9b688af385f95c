"""What the gateway adds to proxying one small JSON GET: the edge + the upstream dispatcher
(route match, ids, forwarding headers, breaker, bulkhead, budget, balancing, metrics) against
the plainest proxy on the same client, one request at a time, in process on uvloop, against
an nginx upstream. The difference of the two is the gateway's own cost per proxied request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.macro.contenders.python_proxy import forward
from benchmarks.nginx import SMALL_JSON
from cygate.edge.edge import Edge
from cygate.infra.metrics import Metrics
from cygate.upstream.client import TargetPool
from cygate.upstream.config import validate_route_file
from cygate.upstream.proxy import UpstreamProxy
from cygate.upstream.table import build_table

from .conftest import Micro
from .upstream_fixtures import Runner, runner_fixture, upstream_fixture  # noqa: F401

OPS = 200


class _Sink:
    """An ASGI ``send`` that keeps the last response (for the correctness check)."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        else:
            self.body = message.get("body", b"")


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/json",
        "raw_path": b"/json",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
    }


def _gateway(port: int, runner: Runner) -> tuple[Callable[[], Awaitable[None]], _Sink, Any]:
    metrics = Metrics()
    valid = validate_route_file(
        {
            "upstreams": {"bench": {"targets": [f"http://127.0.0.1:{port}"]}},
            "routes": [{"path": "/json", "upstream": "bench", "methods": ["GET"]}],
        }
    )
    table = build_table([], valid, max_body=1 << 20)

    async def start() -> None:
        for up in table.upstreams.values():
            up.start()

    runner.run(start)

    async def local(scope: Any, receive: Any, send: Any) -> None:  # never reached
        raise AssertionError("not proxied")

    edge = Edge(
        local,
        table.router,
        metrics=metrics,
        max_body_bytes=1 << 20,
        upstream=UpstreamProxy(metrics),
    )
    sink = _Sink()

    async def one() -> None:
        await edge(_scope(), _receive, sink)

    async def close() -> None:
        for up in table.upstreams.values():
            await up.close()

    return one, sink, close


def _plain(port: int, runner: Runner) -> tuple[Callable[[], Awaitable[None]], _Sink, Any]:
    pool = TargetPool("127.0.0.1", port)
    sink = _Sink()

    async def one() -> None:
        await forward(pool, port, _scope(), sink)

    async def close() -> None:
        pool.close()

    return one, sink, close


def _bench(make: Any, upstream: int, runner: Runner, micro: Micro) -> None:
    one, sink, close = make(upstream, runner)
    try:
        runner.run(one)
        assert sink.status == 200 and sink.body == SMALL_JSON  # correctness before timing

        async def round_() -> None:
            for _ in range(OPS):
                await one()

        micro(lambda: runner.run(round_), group="proxy one small JSON GET", ops=OPS)
    finally:
        runner.run(close)


def test_cygate_edge_and_proxy(upstream: int, runner: Runner, micro: Micro) -> None:
    """cygate: edge (route, ids, headers, metrics) + the upstream dispatcher, sequential GETs."""
    _bench(_gateway, upstream, runner, micro)


def test_plain_proxy_same_client(upstream: int, runner: Runner, micro: Micro) -> None:
    """The plainest proxy on the same client: no routing, no policy, sequential GETs."""
    _bench(_plain, upstream, runner, micro)
