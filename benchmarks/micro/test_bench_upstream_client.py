"""Which HTTP client should the proxy use? One small JSON GET on a keep-alive connection to an
nginx upstream (a native server, so the client's cost is what differs), on uvloop like the
gateway. Two workloads: one request at a time (the latency a proxied request pays) and 64 at
once over a pool (a worker under load). Contenders: cygate's own client (asyncio protocol; a
whole small response parsed by the compiled core in one call, httptools for anything else), the
same client reading every response with httptools (``cygate-httptools``: what the compiled parser
saves), httpx, aiohttp.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from benchmarks.nginx import SMALL_JSON

from .conftest import Micro
from .upstream_fixtures import Runner, runner_fixture, upstream_fixture  # noqa: F401

SEQUENTIAL = 200
CONCURRENT = 64
PER_TASK = 8


# -- the three clients, each as get(path) -> body ---------------------------------------------


def cygate_client(port: int, runner: Runner) -> tuple[Callable[[], Awaitable[bytes]], Any]:
    from cygate.upstream.client import TargetPool

    pool = runner.run(lambda: _make_pool(port))
    head = b"GET /json HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"

    async def get() -> bytes:
        conn = pool.take_idle() or await pool.connect()
        conn.begin()
        conn.write(head)
        await conn.read_head()
        body, more = await conn.read_body()
        while more:
            piece, more = await conn.read_body()
            body += piece
        pool.release(conn)
        return body

    async def close() -> None:
        pool.close()

    del TargetPool
    return get, close


async def _make_pool(port: int) -> Any:
    from cygate.upstream.client import TargetPool

    return TargetPool("127.0.0.1", port, max_idle=256)


def httpx_client(port: int, runner: Runner) -> tuple[Callable[[], Awaitable[bytes]], Any]:
    import httpx

    async def make() -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits)

    client = runner.run(make)

    async def get() -> bytes:
        r = await client.get("/json")
        return r.content

    return get, client.aclose


def aiohttp_client(port: int, runner: Runner) -> tuple[Callable[[], Awaitable[bytes]], Any]:
    import aiohttp

    async def make() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    session = runner.run(make)
    url = f"http://127.0.0.1:{port}/json"

    async def get() -> bytes:
        async with session.get(url) as r:
            return await r.read()

    return get, session.close


def cygate_httptools_client(
    port: int, runner: Runner
) -> tuple[Callable[[], Awaitable[bytes]], Any]:
    """cygate's client with the compiled whole-response parser switched off."""
    from cygate.upstream import client

    get, close = cygate_client(port, runner)
    saved = client._parse_whole

    async def get_with_httptools() -> bytes:
        client._parse_whole = None
        try:
            return await get()
        finally:
            client._parse_whole = saved

    return get_with_httptools, close


CLIENTS = {
    "cygate": cygate_client,
    "cygate-httptools": cygate_httptools_client,
    "httpx": httpx_client,
    "aiohttp": aiohttp_client,
}


def _bench(name: str, upstream: int, runner: Runner, micro: Micro, *, concurrent: bool) -> None:
    get, close = CLIENTS[name](upstream, runner)
    try:
        assert runner.run(get) == SMALL_JSON  # correctness before timing

        if concurrent:

            async def task() -> None:
                for _ in range(PER_TASK):
                    await get()

            async def round_() -> None:
                await asyncio.gather(*(task() for _ in range(CONCURRENT)))

            ops = CONCURRENT * PER_TASK
        else:

            async def round_() -> None:
                for _ in range(SEQUENTIAL):
                    await get()

            ops = SEQUENTIAL
        group = f"upstream client: {'64 concurrent' if concurrent else 'sequential'} GET"
        micro(lambda: runner.run(round_), group=group, ops=ops)
    finally:
        runner.run(close)


def test_cygate_sequential(upstream: int, runner: Runner, micro: Micro) -> None:
    """cygate's client (asyncio protocol + compiled parser): one keep-alive GET at a time."""
    _bench("cygate", upstream, runner, micro, concurrent=False)


def test_cygate_httptools_sequential(upstream: int, runner: Runner, micro: Micro) -> None:
    """cygate's client reading with httptools only: one keep-alive GET at a time."""
    _bench("cygate-httptools", upstream, runner, micro, concurrent=False)


def test_httpx_sequential(upstream: int, runner: Runner, micro: Micro) -> None:
    """httpx.AsyncClient (httpcore + h11): one keep-alive GET at a time."""
    _bench("httpx", upstream, runner, micro, concurrent=False)


def test_aiohttp_sequential(upstream: int, runner: Runner, micro: Micro) -> None:
    """aiohttp.ClientSession (C parser): one keep-alive GET at a time."""
    _bench("aiohttp", upstream, runner, micro, concurrent=False)


def test_cygate_concurrent(upstream: int, runner: Runner, micro: Micro) -> None:
    """cygate's client: 64 tasks x 8 GETs over one pool."""
    _bench("cygate", upstream, runner, micro, concurrent=True)


def test_cygate_httptools_concurrent(upstream: int, runner: Runner, micro: Micro) -> None:
    """cygate's client reading with httptools only: 64 tasks x 8 GETs over one pool."""
    _bench("cygate-httptools", upstream, runner, micro, concurrent=True)


def test_httpx_concurrent(upstream: int, runner: Runner, micro: Micro) -> None:
    """httpx.AsyncClient: 64 tasks x 8 GETs over one pool."""
    _bench("httpx", upstream, runner, micro, concurrent=True)


def test_aiohttp_concurrent(upstream: int, runner: Runner, micro: Micro) -> None:
    """aiohttp.ClientSession: 64 tasks x 8 GETs over one pool."""
    _bench("aiohttp", upstream, runner, micro, concurrent=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
