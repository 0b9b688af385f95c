"""Rate-limit micro-benchmarks: cygate's compiled GCRA vs its pure twin vs ``limits`` vs Litestar.

Three groups, one run:

``local decision``
    one allowed decision for one of 64 known callers (the common path), a round is the 64-key
    mix. cygate GCRALimiterC.hit / GCRALimiterPy.hit vs the ``limits`` library's in-memory
    strategies (fixed window, its cheapest; sliding window counter). ``limits`` has no GCRA or
    token bucket, so the closest strategies stand in. A ``_baseline`` case is the bare loop.
``Redis decision``
    one decision against the Redis at ``REDIS_URL`` (keys under a prefix of the run's own,
    deleted at the end): cygate ``exact`` awaited one at a time (one EVALSHA round-trip each;
    the ``_baseline`` is the bare redis-py asyncio EVALSHA of the same script),
    cygate ``exact`` with 100 decisions at once (coalesced into pipelines), cygate ``batched``
    (lease 100: one Redis call per 100 decisions, counted and checked), and ``limits``'
    Redis strategies (fixed window, sliding window counter; synchronous client).
``request path``
    what a framework pays per request for the decision and the headers: the cygate edge stage
    (a local limit; 64 known callers, and every caller new) vs Litestar's
    ``RateLimitMiddleware.__call__`` (its own ``Request``, lock, store, JSON history), best case
    for Litestar: every caller new, so its per-caller history stays empty.

Every contender is checked before timing (it allows, or it refuses at the limit).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from cygate.core import ratelimit as rl
from cygate.core._ratelimit_py import GCRALimiterPy
from cygate.edge.context import EdgeContext, RoutePolicy
from cygate.edge.ratelimit import RateLimitStage
from cygate.infra.metrics import Metrics
from cygate.infra.ratelimit_store import GCRA_LUA, QuotaStore
from cygate.infra.redis import RedisHandle, create_redis
from cygate.settings import load_settings

LOCAL = "ratelimit: local decision (64-caller mix)"
REDIS = "ratelimit: Redis decision"
PATH = "ratelimit: request path (decision + headers)"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = f"cygate-bench-rl-{secrets.token_hex(3)}:"
KEYS = [f"i:203.0.113.{i}" for i in range(64)]
ROUNDS_OF = 100  # decisions per round in the Redis group


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = _loop()
    try:
        yield lp
    finally:
        lp.close()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The benchmark's Redis; every key under PREFIX (cygate's and limits') is deleted after."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    try:
        yield REDIS_URL
    finally:
        for key in client.scan_iter(match=PREFIX + "*", count=1000):
            client.delete(key)
        client.close()


# ---------------------------------------------------------------------------------------------
# Local decision
# ---------------------------------------------------------------------------------------------


def _gcra_case(cls: Any) -> Callable[[], None]:
    lim = cls(1, 10**9, capacity=4096)  # a limit far above the load: every decision allowed
    small = cls(10**9, 2)
    assert small.hit("k") and small.hit("k") and not small.hit("k")  # checked: it does limit
    hit = lim.hit
    k = KEYS

    def run() -> None:
        for key in k:
            hit(key)

    run()
    assert all(hit(key) for key in k)
    return run


def test_local_baseline(micro: Any) -> None:
    """The bare loop of the 64-caller mix, calling a function that does nothing."""

    def nothing(key: str) -> bool:
        return True

    def run() -> None:
        for key in KEYS:
            nothing(key)

    micro(run, group=LOCAL, ops=len(KEYS))


def test_local_cygate_c(micro: Any) -> None:
    """cygate GCRALimiterC.hit (compiled), an allowed decision per known caller."""
    cls = getattr(rl, "GCRALimiterC", None)
    if cls is None:
        pytest.skip("compiled limiter not available")
    micro(_gcra_case(cls), group=LOCAL, ops=len(KEYS))


def test_local_cygate_py(micro: Any) -> None:
    """cygate GCRALimiterPy.hit (pure-Python twin), an allowed decision per known caller."""
    micro(_gcra_case(GCRALimiterPy), group=LOCAL, ops=len(KEYS))


def _limits_memory(strategy: str) -> Callable[[], None]:
    from limits import parse, storage, strategies

    limiter = getattr(strategies, strategy)(storage.MemoryStorage())
    item = parse("1000000000/second")
    small = parse("2/hour")
    assert limiter.hit(small, "k") and limiter.hit(small, "k") and not limiter.hit(small, "k")
    hit = limiter.hit
    k = KEYS

    def run() -> None:
        for key in k:
            hit(item, key)

    run()
    return run


def test_local_limits_fixed_window(micro: Any) -> None:
    """limits FixedWindowRateLimiter + MemoryStorage .hit (its cheapest strategy)."""
    pytest.importorskip("limits")
    micro(_limits_memory("FixedWindowRateLimiter"), group=LOCAL, ops=len(KEYS))


def test_local_limits_sliding_window(micro: Any) -> None:
    """limits SlidingWindowCounterRateLimiter + MemoryStorage .hit."""
    pytest.importorskip("limits")
    micro(_limits_memory("SlidingWindowCounterRateLimiter"), group=LOCAL, ops=len(KEYS))


# ---------------------------------------------------------------------------------------------
# Redis decision
# ---------------------------------------------------------------------------------------------

ROUTE = RoutePolicy(name="GET /bench")


def _stage(limit: dict[str, Any]) -> RateLimitStage:
    env = {
        "CYGATE_RATE_LIMITS": orjson.dumps({"bench": limit}).decode(),
        "CYGATE_RATE_LIMIT_ROUTES": '{"GET /bench": "bench"}',
        "CYGATE_RATE_LIMIT_REDIS_TIMEOUT": "5",
    }
    return RateLimitStage.from_settings(load_settings(env).rate_limit, [ROUTE], Metrics())


def _ctx(peer: str) -> EdgeContext:
    return EdgeContext(
        {"headers": [], "client": (peer, 1)}, "GET", "/bench", "", "", b"", ROUTE, None
    )


def _handle(url: str) -> RedisHandle:
    return create_redis(
        load_settings({"CYGATE_REDIS_URL": url, "CYGATE_REDIS_PREFIX": PREFIX}).redis
    )


def test_redis_cygate_exact_sequential(micro: Any, loop: Any, redis_url: str) -> None:
    """cygate exact: QuotaStore.reserve awaited one at a time (one EVALSHA round-trip each)."""
    handle = _handle(redis_url)
    store = QuotaStore(handle, timeout=5, backoff=1)
    key = store.key("bench", "seq")
    loop.run_until_complete(store.load())

    async def check() -> None:
        small = store.key("bench", "check")
        got = [(await store.reserve(small, 10**6, 2, 1)).granted for _ in range(3)]
        assert got == [1, 1, 0]

    loop.run_until_complete(check())

    async def decide() -> None:
        for _ in range(ROUNDS_OF):
            await store.reserve(key, 1, 10**6, 1)

    micro(lambda: loop.run_until_complete(decide()), group=REDIS, ops=ROUNDS_OF)
    loop.run_until_complete(store.close())
    loop.run_until_complete(handle.close())


def test_redis_asyncio_evalsha_baseline(micro: Any, loop: Any, redis_url: str) -> None:
    """The floor of an async decision: the bare redis-py asyncio EVALSHA of the same script."""
    handle = _handle(redis_url)
    sha = loop.run_until_complete(handle.client.script_load(GCRA_LUA))
    key = handle.key("rl", "{bare}")
    evalsha = handle.client.evalsha

    async def decide() -> None:
        for _ in range(ROUNDS_OF):
            await evalsha(sha, 1, key, 1, 10**6, 1)

    loop.run_until_complete(decide())
    micro(lambda: loop.run_until_complete(decide()), group=REDIS, ops=ROUNDS_OF)
    loop.run_until_complete(handle.close())


def test_redis_cygate_exact_concurrent(
    micro: Any, loop: Any, redis_url: str, benchmark: Any
) -> None:
    """cygate exact: 100 decisions at once, coalesced into multi-key EVALSHAs (each atomic)."""
    handle = _handle(redis_url)
    store = QuotaStore(handle, timeout=5, backoff=1)
    key = store.key("bench", "conc")
    loop.run_until_complete(store.load())

    async def decide() -> None:
        await asyncio.gather(*(store.reserve(key, 1, 10**6, 1) for _ in range(ROUNDS_OF)))

    loop.run_until_complete(decide())
    before = (store.calls, store.batches)
    micro(lambda: loop.run_until_complete(decide()), group=REDIS, ops=ROUNDS_OF)
    calls, batches = store.calls - before[0], store.batches - before[1]
    assert calls and batches < calls  # coalesced: fewer round-trips than decisions
    benchmark.extra_info["round_trips_per_decision"] = batches / calls
    loop.run_until_complete(store.close())
    loop.run_until_complete(handle.close())


def test_redis_cygate_batched(micro: Any, loop: Any, redis_url: str, benchmark: Any) -> None:
    """cygate batched (lease 100) through the stage: one Redis call per 100 decisions."""
    handle = _handle(redis_url)
    stage = _stage({"rate": 1_000_000, "period": 1, "mode": "batched", "lease": 100})
    loop.run_until_complete(stage.bind(handle))
    ctxs = [_ctx("198.51.100.1") for _ in range(ROUNDS_OF)]

    async def decide() -> None:
        for c in ctxs:
            c.response_headers.clear()
            pending = stage(c)
            if pending is not None:
                await pending

    loop.run_until_complete(decide())
    assert stage.store is not None
    before = stage.store.calls
    decisions = 0

    def run() -> None:
        nonlocal decisions
        loop.run_until_complete(decide())
        decisions += ROUNDS_OF

    micro(run, group=REDIS, ops=ROUNDS_OF)
    calls = stage.store.calls - before
    # One Redis call per lease, not per request: a top-up starts when fewer than a quarter of
    # the lease is left, so at most one call per 75 decisions (+1: a lease left over from
    # the check).
    assert calls <= decisions // (100 - 100 // 4) + 1, (calls, decisions)
    benchmark.extra_info["redis_calls_per_decision"] = calls / max(decisions, 1)
    loop.run_until_complete(stage.unbind())
    loop.run_until_complete(handle.close())


def _limits_redis(strategy: str, url: str) -> Callable[[], None]:
    from limits import parse, storage, strategies

    store = storage.RedisStorage(url, key_prefix=PREFIX + "limits")
    limiter = getattr(strategies, strategy)(store)
    small = parse("2/hour")
    check_key = secrets.token_hex(4)
    assert limiter.hit(small, check_key) and limiter.hit(small, check_key)
    assert not limiter.hit(small, check_key)
    item = parse("1000000000/second")

    def run() -> None:
        for _ in range(ROUNDS_OF):
            limiter.hit(item, "bench")

    return run


def test_redis_limits_fixed_window(micro: Any, redis_url: str) -> None:
    """limits FixedWindowRateLimiter + RedisStorage .hit (sync redis-py, one round-trip)."""
    pytest.importorskip("limits")
    micro(_limits_redis("FixedWindowRateLimiter", redis_url), group=REDIS, ops=ROUNDS_OF)


def test_redis_limits_sliding_window(micro: Any, redis_url: str) -> None:
    """limits SlidingWindowCounterRateLimiter + RedisStorage .hit (Lua script per hit)."""
    pytest.importorskip("limits")
    micro(_limits_redis("SlidingWindowCounterRateLimiter", redis_url), group=REDIS, ops=ROUNDS_OF)


# ---------------------------------------------------------------------------------------------
# Request path: decision + headers, as each framework does it per request
# ---------------------------------------------------------------------------------------------


def _stage_case(gcra_cls: Any, fresh: bool) -> Callable[[], None]:
    stage = _stage({"rate": 1_000_000_000, "period": 1})
    for limit in stage.plans["GET /bench"].limits:
        limit.gcra = gcra_cls(limit.interval_ns, limit.burst, 65536)
    ctxs = [_ctx(f"203.0.113.{i}") for i in range(64)]
    counter = itertools.count()

    def run() -> None:
        for c in ctxs:
            if fresh:  # a new caller each time (the table's insert and eviction path)
                c._client_ip = f"10.{next(counter) & 0xFFFFFF}"
            c.response_headers.clear()
            stage(c)

    check = _stage({"rate": 1, "period": 60})
    c = _ctx("192.0.2.1")
    assert check(c) is None and dict(c.response_headers)[b"ratelimit-remaining"] == b"0"
    run()
    assert dict(ctxs[0].response_headers)[b"ratelimit-limit"] == b"1000000000"
    return run


def test_path_cygate_stage_c(micro: Any) -> None:
    """cygate rate-limit stage, compiled GCRA: 64 known callers, RateLimit-* headers."""
    cls = getattr(rl, "GCRALimiterC", None)
    if cls is None:
        pytest.skip("compiled limiter not available")
    micro(_stage_case(cls, fresh=False), group=PATH, ops=64)


def test_path_cygate_stage_c_new_callers(micro: Any) -> None:
    """cygate rate-limit stage, compiled GCRA: every caller new (insert, CLOCK eviction)."""
    cls = getattr(rl, "GCRALimiterC", None)
    if cls is None:
        pytest.skip("compiled limiter not available")
    micro(_stage_case(cls, fresh=True), group=PATH, ops=64)


def test_path_cygate_stage_py(micro: Any) -> None:
    """cygate rate-limit stage, pure-Python GCRA: 64 known callers, RateLimit-* headers."""
    micro(_stage_case(GCRALimiterPy, fresh=False), group=PATH, ops=64)


def test_path_litestar_middleware(micro: Any, loop: Any) -> None:
    """Litestar RateLimitMiddleware.__call__ (memory store, headers on), every caller new."""
    from litestar import Litestar, get
    from litestar.exceptions import TooManyRequestsException
    from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware

    @get("/bench", sync_to_thread=False)
    def bench() -> None:
        return None

    app = Litestar(route_handlers=[bench], openapi_config=None)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        return None

    def middleware(limit: tuple[str, int]) -> RateLimitMiddleware:
        return RateLimitMiddleware(inner, RateLimitConfig(rate_limit=limit))  # type: ignore[arg-type]

    handler = app.route_handler_method_map["/bench"]["GET"]

    def scope(peer: str) -> dict[str, Any]:
        return {
            "type": "http",
            "method": "GET",
            "path": "/bench",
            "raw_path": b"/bench",
            "query_string": b"",
            "headers": [],
            "client": (peer, 1),
            "litestar_app": app,
            "route_handler": handler,
            "app": app,
            "state": {},
            "path_params": {},
        }

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    async def check() -> None:
        m = middleware(("minute", 1))
        await m(scope("192.0.2.1"), receive, send)  # type: ignore[arg-type]
        with pytest.raises(TooManyRequestsException):
            await m(scope("192.0.2.1"), receive, send)  # type: ignore[arg-type]

    loop.run_until_complete(check())
    m = middleware(("second", 1_000_000_000))
    counter = itertools.count()

    async def decide() -> None:
        for _ in range(64):
            await m(scope(f"10.{next(counter) & 0xFFFFFF}"), receive, send)  # type: ignore[arg-type]

    micro(lambda: loop.run_until_complete(decide()), group=PATH, ops=64)


# ---------------------------------------------------------------------------------------------
# The whole edge, in process: a fast-handler request without and with a local limit
# ---------------------------------------------------------------------------------------------

EDGE = "ratelimit: edge request, fast handler (what a limit adds)"


def _edge(limited: bool) -> Any:
    from cygate.core.router import Router
    from cygate.edge.edge import Edge

    async def fast(ctx: EdgeContext) -> bytes:
        return b'{"id": 5}'

    policy = RoutePolicy(name="GET /p/{id:int}", fast=fast)
    router = Router()
    router.add("GET", "/p/{id:int}", policy)
    stages = []
    if limited:
        env = {
            "CYGATE_RATE_LIMITS": '{"b": {"rate": 1000000000, "period": 1}}',
            "CYGATE_RATE_LIMIT_ROUTES": '{"GET /p/{id:int}": "b"}',
        }
        stages = [RateLimitStage.from_settings(load_settings(env).rate_limit, [policy], Metrics())]

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        return None

    return Edge(inner, router, metrics=Metrics(), max_body_bytes=1024, stages=stages)


def _edge_case(limited: bool, loop: Any) -> Callable[[], None]:
    edge = _edge(limited)
    sent: list[Any] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/p/5",
        "raw_path": b"/p/5",
        "query_string": b"",
        "headers": [(b"host", b"example.com")],
        "client": ("203.0.113.9", 5000),
    }

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    async def requests() -> None:
        for _ in range(64):
            sent.clear()
            await edge(dict(scope), receive, send)

    loop.run_until_complete(requests())
    start = dict(sent[0]["headers"])
    assert sent[0]["status"] == 200
    assert (b"ratelimit-remaining" in start) is limited
    return lambda: loop.run_until_complete(requests())


def test_edge_without_limit(micro: Any, loop: Any) -> None:
    """The edge serving a fast-handler GET (no rate limit on the route)."""
    micro(_edge_case(False, loop), group=EDGE, ops=64)


def test_edge_with_local_limit(micro: Any, loop: Any) -> None:
    """The same request on a route with a local limit (stage, RateLimit-* headers)."""
    micro(_edge_case(True, loop), group=EDGE, ops=64)
