"""What one proxied request costs in process, without the HTTP server: ``plain`` (the plainest
proxy on cygate's client, like the ``python-proxy`` contender) or ``gateway`` (the edge + the
upstream dispatcher with a one-route table, like ``cygate-proxy``, with a stand-in for the token
stage), 64 tasks sending GETs one after another to an nginx upstream on uvloop.

Three ways to read it (the first two are deterministic, so they compare versions on a busy
machine where CPU time does not):

``--bytecodes``
    Python bytecodes executed per request, per function (``sys.settrace`` opcode events).
``valgrind --tool=callgrind python -m benchmarks.proxy_cost ...``
    user-space instructions: run with ``--requests 640`` and ``--requests 3200`` and divide the
    difference of the two totals by 2,560 (start-up cancels out).
(neither)
    CPU µs per request by ``time.process_time`` (best of 3 rounds; noisy on a shared machine).

``--httptools`` switches the client's compiled whole-response parser off.

    python -m benchmarks.nginx json --port 8101 &
    python -m benchmarks.proxy_cost --upstream-port 8101 --mode gateway --bytecodes
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvloop

from benchmarks.macro.contenders.python_proxy import forward
from cygate.edge.edge import Edge
from cygate.infra.metrics import Metrics
from cygate.upstream import client
from cygate.upstream.client import TargetPool
from cygate.upstream.config import validate_route_file
from cygate.upstream.proxy import UpstreamProxy
from cygate.upstream.table import build_table

CONCURRENCY = 64
App = Callable[[Any, Any, Any], Awaitable[None]]


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/json",
        "raw_path": b"/json",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000")],  # what wrk sends
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    if message["type"] == "http.response.start" and message["status"] != 200:
        raise SystemExit(f"the upstream answered {message['status']}")


def plain(port: int) -> App:
    pool = TargetPool("127.0.0.1", port, max_idle=256)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await forward(pool, port, scope, send)

    return app


def gateway(port: int) -> App:
    metrics = Metrics()
    valid = validate_route_file(
        {
            "upstreams": {
                "bench": {
                    "targets": [f"http://127.0.0.1:{port}"],
                    "bulkhead": {"max_concurrent": 1024, "max_queue": 1024},
                }
            },
            "routes": [{"path": "/json", "upstream": "bench", "methods": ["GET"]}],
        }
    )
    table = build_table([], valid, max_body=1 << 20)
    for up in table.upstreams.values():
        up.start()

    async def local(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not proxied")

    def token_stage(ctx: Any) -> None:  # what the token stage does without Authorization
        for name, _ in ctx.headers:
            if name == b"authorization":
                break

    return Edge(
        local,
        table.router,
        metrics=metrics,
        max_body_bytes=1 << 20,
        upstream=UpstreamProxy(metrics),
        stages=(token_stage,),
    )


async def _rounds(app: App, requests: int, rounds: int, bytecodes: bool) -> None:
    per_task = max(1, requests // CONCURRENCY)
    total = per_task * CONCURRENCY

    async def task(n: int) -> None:
        for _ in range(n):
            await app(_scope(), _receive, _send)

    await asyncio.gather(*(task(20) for _ in range(CONCURRENCY)))  # connections, warm caches
    if bytecodes:
        counts: collections.Counter[str] = collections.Counter()

        def tracer(frame: FrameType, event: str, arg: Any) -> Any:
            frame.f_trace_opcodes = True
            if event == "opcode":
                code = frame.f_code
                counts[f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"] += 1
            return tracer

        sys.settrace(tracer)
        await asyncio.gather(*(task(per_task) for _ in range(CONCURRENCY)))
        sys.settrace(None)
        print(f"{sum(counts.values()) / total:.0f} bytecodes/request")
        for name, n in counts.most_common(25):
            print(f"{n / total:8.1f}  {name}")
        return
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        t0 = time.process_time()
        await asyncio.gather(*(task(per_task) for _ in range(CONCURRENCY)))
        best = min(best, (time.process_time() - t0) / total * 1e6)
    if rounds:
        print(f"{best:.2f} CPU µs/request (best of {rounds})")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.proxy_cost", description=__doc__)
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--mode", choices=("plain", "gateway"), default="gateway")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (0: just run once)")
    p.add_argument("--bytecodes", action="store_true")
    p.add_argument("--httptools", action="store_true", help="no compiled response parser")
    args = p.parse_args()
    if args.httptools:
        client._parse_whole = None

    async def run() -> None:
        app = (plain if args.mode == "plain" else gateway)(args.upstream_port)
        if args.rounds == 0 and not args.bytecodes:
            per_task = max(1, args.requests // CONCURRENCY)

            async def task() -> None:
                for _ in range(per_task):
                    await app(_scope(), _receive, _send)

            await asyncio.gather(*(task() for _ in range(CONCURRENCY)))
            return
        await _rounds(app, args.requests, args.rounds, args.bytecodes)

    uvloop.run(run())


if __name__ == "__main__":
    main()
