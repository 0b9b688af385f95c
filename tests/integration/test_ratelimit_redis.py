"""Global limits against a real Redis: exactness under concurrency, leases, restarts, hangs.

Decisions that only need a working Redis use the shared server under the session's key prefix;
anything that stops, pauses or restarts Redis uses a private ``redis-server`` (tests/private_redis).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from tests.conftest import REDIS_URL
from tests.private_redis import PrivateRedis
from tests.unit.edge.cache_helpers import CountedHitPath

from cygate.core.router import Router
from cygate.edge.cache import ResponseCache
from cygate.edge.context import EdgeContext, RoutePolicy
from cygate.edge.edge import Edge
from cygate.edge.problem import Problem
from cygate.edge.ratekey import ADDRESS
from cygate.edge.ratelimit import RateLimitStage
from cygate.infra.metrics import Metrics
from cygate.infra.ratelimit_store import GCRA_LUA, GCRA_MANY_LUA
from cygate.infra.redis import RedisHandle, create_redis
from cygate.settings import CacheRule, load_settings

pytestmark = pytest.mark.integration

ROUTE = RoutePolicy(name="GET /r")


def stage_for(spec: dict[str, Any], **settings: str) -> tuple[RateLimitStage, Metrics]:
    env = {
        "CYGATE_RATE_LIMITS": orjson.dumps({"g": spec}).decode(),
        "CYGATE_RATE_LIMIT_ROUTES": '{"GET /r": "g"}',
        **{f"CYGATE_{k.upper()}": v for k, v in settings.items()},
    }
    metrics = Metrics()
    stage = RateLimitStage.from_settings(load_settings(env).rate_limit, [ROUTE], metrics)
    _stages.append(stage)
    return stage, metrics


_stages: list[RateLimitStage] = []


@pytest.fixture(autouse=True)
async def _unbind_stages() -> AsyncIterator[None]:
    """Every stage a test made lets go of Redis at its end (the store holds a connection)."""
    yield
    while _stages:
        await _stages.pop().unbind()


def ctx(peer: str = "203.0.113.7") -> EdgeContext:
    scope = {"headers": [], "client": (peer, 1)}
    return EdgeContext(scope, "GET", "/r", "", "rid", b"", ROUTE, None)


async def request(stage: RateLimitStage, peer: str = "203.0.113.7") -> tuple[int, EdgeContext]:
    """One request through the stage: (status, context with its response headers)."""
    c = ctx(peer)
    try:
        pending = stage(c)
        if pending is not None:
            await pending
    except Problem as p:
        c.response_headers += [(k.encode(), v.encode()) for k, v in p.headers.items()]
        return p.status, c
    return 200, c


def header(c: EdgeContext, name: bytes) -> bytes:
    return dict(c.response_headers)[name]


@pytest.fixture
async def handle(redis_prefix: str) -> AsyncIterator[RedisHandle]:
    """The shared Redis, under a prefix of this test's own."""
    settings = load_settings(
        {
            "CYGATE_REDIS_URL": REDIS_URL,
            "CYGATE_REDIS_PREFIX": f"{redis_prefix}{secrets.token_hex(3)}:",
        }
    )
    h = create_redis(settings.redis)
    try:
        yield h
    finally:
        await h.close()


def _handle(url: str, prefix: str = "t:") -> RedisHandle:
    return create_redis(
        load_settings({"CYGATE_REDIS_URL": url, "CYGATE_REDIS_PREFIX": prefix}).redis
    )


@pytest.fixture
def private() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    try:
        yield server
    finally:
        server.close()


async def _commands(url: str, name: str) -> int:
    """How many times the server ran command ``name`` (INFO commandstats)."""
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


# ---------------------------------------------------------------------------------------------
# exact
# ---------------------------------------------------------------------------------------------


async def test_exact_100_concurrent_against_5_per_minute(handle: RedisHandle) -> None:
    stage, _ = stage_for({"rate": 5, "period": 60, "mode": "exact"}, rate_limit_redis_timeout="5")
    await stage.bind(handle)
    results = await asyncio.gather(*(request(stage) for _ in range(100)))
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 5 and statuses.count(429) == 95
    remaining = sorted(int(header(c, b"ratelimit-remaining")) for s, c in results if s == 200)
    assert remaining == [0, 1, 2, 3, 4]  # each grant saw its own exact remainder


async def test_exact_across_three_instances(redis_prefix: str) -> None:
    prefix = f"{redis_prefix}{secrets.token_hex(3)}:"
    stages, handles = [], []
    for _ in range(3):  # three stages, three connection pools: three "instances"
        h = _handle(REDIS_URL, prefix)
        stage, _ = stage_for(
            {"rate": 5, "period": 60, "mode": "exact"}, rate_limit_redis_timeout="5"
        )
        await stage.bind(h)
        stages.append(stage)
        handles.append(h)
    try:
        results = await asyncio.gather(*(request(stages[i % 3]) for i in range(100)))
        assert [s for s, _ in results].count(200) == 5
    finally:
        for h in handles:
            await h.close()


async def test_exact_countdown_and_remembered_refusal(private: PrivateRedis) -> None:
    h = _handle(private.url)
    stage, _ = stage_for({"rate": 3, "period": 60, "mode": "exact"})
    await stage.bind(h)
    try:
        seen = [await request(stage) for _ in range(3)]
        assert [header(c, b"ratelimit-remaining") for _, c in seen] == [b"2", b"1", b"0"]
        status, c = await request(stage)
        assert status == 429 and header(c, b"retry-after") == b"20"
        before = await _commands(private.url, "evalsha")
        for _ in range(50):  # refused for 20 s: no need to ask Redis again
            assert (await request(stage))[0] == 429
        assert await _commands(private.url, "evalsha") == before
        assert (await request(stage, peer="198.51.100.2"))[0] == 200  # another caller
    finally:
        await h.close()


async def test_retry_after_is_honest(handle: RedisHandle) -> None:
    stage, _ = stage_for({"rate": 2, "period": 1, "mode": "exact"})  # one token each 0.5 s
    await stage.bind(handle)
    assert [(await request(stage))[0] for _ in range(2)] == [200, 200]
    status, c = await request(stage)
    assert status == 429
    wait = int(header(c, b"retry-after"))
    assert wait == 1
    await asyncio.sleep(wait)
    assert (await request(stage))[0] == 200


# ---------------------------------------------------------------------------------------------
# batched
# ---------------------------------------------------------------------------------------------


async def test_batched_one_redis_call_per_lease(private: PrivateRedis) -> None:
    h = _handle(private.url)
    lease = 50
    stage, metrics = stage_for(
        {"rate": 100_000, "period": 60, "mode": "batched", "lease": lease},
        rate_limit_redis_timeout="5",
    )
    await stage.bind(h)
    try:
        before = await _commands(private.url, "evalsha")
        results = await asyncio.gather(*(request(stage) for _ in range(1000)))
        assert all(s == 200 for s, _ in results)
        calls = await _commands(private.url, "evalsha") - before
        # One call per lease, also with 1000 requests at once: the first reserves a whole
        # lease, each top-up (fewer than lease/4 left) brings it back to a whole lease, so a
        # call is never for fewer than 3/4 of a lease (plus one top-up still in flight).
        most = 1 + -(-(1000 - lease) // (lease - lease // 4)) + 1
        assert 1000 // lease <= calls <= most
        assert f'cygate_ratelimit_redis_calls_total{{limit="g"}} {calls}' in metrics.render()
    finally:
        await h.close()


async def test_batched_tops_the_lease_up_before_it_runs_dry(private: PrivateRedis) -> None:
    """Under steady load no request waits for Redis after the first: the lease is topped up
    in the background while a quarter of it is left."""
    h = _handle(private.url)
    lease = 20
    stage, _ = stage_for(
        {"rate": 100_000, "period": 60, "mode": "batched", "lease": lease},
        rate_limit_redis_timeout="5",
    )
    await stage.bind(h)
    try:
        before = await _commands(private.url, "evalsha")
        waited = 0
        for _ in range(200):
            c = ctx()
            pending = stage(c)
            if pending is not None:
                waited += 1
                await pending
            assert header(c, b"ratelimit-limit") == b"100000"
            await asyncio.sleep(0.002)  # far longer than a Redis round trip here
        assert waited == 1  # only the very first request, which found no lease
        calls = await _commands(private.url, "evalsha") - before
        # 200 tokens: the first lease, then top-ups of lease - 4 (the lease // 4 mark): never
        # a call per request, never held more than a lease at once.
        assert 200 // lease <= calls <= 1 + -(-(200 - lease) // (lease - lease // 4)) + 1
        assert stage.plans["GET /r"].limits[0].leases.tokens <= lease
    finally:
        await h.close()


async def test_batched_stays_inside_its_bound(redis_prefix: str) -> None:
    prefix = f"{redis_prefix}{secrets.token_hex(3)}:"
    limit, lease, instances = 20, 4, 3
    stages, handles = [], []
    for _ in range(instances):
        h = _handle(REDIS_URL, prefix)
        stage, _ = stage_for(
            {"rate": limit, "period": 60, "mode": "batched", "lease": lease},
            rate_limit_redis_timeout="5",
        )
        await stage.bind(h)
        stages.append(stage)
        handles.append(h)
    try:
        results = await asyncio.gather(*(request(stages[i % 3]) for i in range(300)))
        allowed = [s for s, _ in results].count(200)
        # Tokens are reserved in Redis before they are spent: never more than the limit here;
        # the documented bound (limit + instances x lease) covers leases taken in an earlier
        # window and spent in this one.
        assert limit - instances * lease <= allowed <= limit
    finally:
        for h in handles:
            await h.close()


# ---------------------------------------------------------------------------------------------
# many keys at once: one script call carries the decisions asked meanwhile
# ---------------------------------------------------------------------------------------------


async def test_decisions_asked_meanwhile_share_one_call(private: PrivateRedis) -> None:
    """60 callers x 3 requests at once against 2 per minute: each caller gets exactly its 2
    (a key asked twice in one call sees its first answer's write), in far fewer round trips
    than decisions, each round trip one EVALSHA."""
    h = _handle(private.url)
    stage, metrics = stage_for({"rate": 2, "period": 60, "mode": "exact"},
                               rate_limit_redis_timeout="5")  # fmt: skip
    await stage.bind(h)
    try:
        before = await _commands(private.url, "evalsha")
        peers = [f"198.51.100.{i}" for i in range(60)]
        results = await asyncio.gather(*(request(stage, peers[i % 60]) for i in range(180)))
        allowed: dict[str, int] = {}
        for i, (status, _) in enumerate(results):
            allowed[peers[i % 60]] = allowed.get(peers[i % 60], 0) + (status == 200)
        assert allowed == dict.fromkeys(peers, 2)
        store = stage.store
        assert store is not None and store.calls == 180
        assert store.batches <= 10  # one for the first request, then a few full batches
        assert await _commands(private.url, "evalsha") - before == store.batches
        text = metrics.render()
        assert f"cygate_ratelimit_redis_round_trips_total {store.batches}" in text
        assert 'cygate_ratelimit_redis_calls_total{limit="g"} 180' in text
    finally:
        await h.close()


async def test_one_key_failing_in_a_call_fails_that_decision_only(private: PrivateRedis) -> None:
    """A key whose value is not a TAT (a string, a list) fails its own decision: that
    request gets the limit's failure mode (closed: 503), the others of the same call are
    decided, and the circuit stays closed. Both the request sent at once and a queued one."""
    h = _handle(private.url)
    stage, metrics = stage_for(
        {"rate": 100, "period": 60, "mode": "batched", "lease": 10, "failure": "closed"},
        rate_limit_redis_timeout="5",
    )
    await stage.bind(h)
    store = stage.store
    assert store is not None
    peers = [f"192.0.2.{i}" for i in range(40)]
    bad_first, bad_string, bad_list = peers[0], peers[17], peers[31]
    with private.client() as admin:
        admin.set(store.key("g", ADDRESS + bad_first), "not a number")
        admin.set(store.key("g", ADDRESS + bad_string), "12abc")
        admin.rpush(store.key("g", ADDRESS + bad_list), "x")
    try:
        results = await asyncio.gather(*(request(stage, p) for p in peers))
        statuses = {p: s for p, (s, _) in zip(peers, results, strict=True)}
        bad = {bad_first, bad_string, bad_list}
        assert {p: statuses[p] for p in bad} == dict.fromkeys(bad, 503)
        assert all(statuses[p] == 200 for p in peers if p not in bad)
        assert store.batches == 2 and store.usable  # Redis answered: no outage
        closed = 'cygate_ratelimit_decisions_total{limit="g",decision="fail_closed"} 3'
        assert closed in metrics.render()
        # The bad keys are left as they were; the good ones hold leases now.
        with private.client() as admin:
            assert admin.get(store.key("g", ADDRESS + bad_string)) == b"12abc"
            assert admin.type(store.key("g", ADDRESS + bad_list)) == b"list"
        assert (await request(stage, peers[5]))[0] == 200  # spent from the lease
    finally:
        await h.close()


@pytest.mark.parametrize(("failure", "status"), [("open", 200), ("closed", 503)])
async def test_redis_hung_mid_call_bounds_every_waiter(
    private: PrivateRedis, failure: str, status: int
) -> None:
    """Redis stops answering while a call is under way and others queue behind it: every
    request is answered (by its failure mode) within the timeout, the circuit opens, and the
    limits resume by themselves once Redis answers again."""
    h = _handle(private.url)
    stage, _ = stage_for(
        {"rate": 1, "period": 60, "mode": "exact", "failure": failure},
        rate_limit_redis_timeout="0.3",
        rate_limit_redis_backoff="0.3",
    )
    await stage.bind(h)
    try:
        assert (await request(stage, "203.0.113.200"))[0] == 200
        private.pause()
        started = time.perf_counter()
        results = await asyncio.gather(*(request(stage, f"10.2.0.{i}") for i in range(50)))
        took = time.perf_counter() - started
        assert [s for s, _ in results] == [status] * 50
        assert took < 0.3 + 0.15  # one timeout, not one per queued call
        store = stage.store
        assert store is not None and not store.usable
        private.resume()
        await asyncio.sleep(0.35)  # the backoff ends; the next request probes Redis
        statuses = [(await request(stage, "203.0.113.200"))[0] for _ in range(2)]
        assert statuses == [429, 429]  # its grant from before the pause still counts
        assert (await request(stage, "203.0.113.201"))[0] == 200
    finally:
        await h.close()


async def test_connection_dropped_between_calls_is_replaced(private: PrivateRedis) -> None:
    """The store's own connection, killed by the server (or anything between), costs no
    decision: the next call opens a new one and goes on."""
    h = _handle(private.url)
    stage, _ = stage_for({"rate": 1, "period": 60, "mode": "exact", "failure": "closed"},
                         rate_limit_redis_timeout="2")  # fmt: skip
    await stage.bind(h)
    try:
        assert (await request(stage, "203.0.113.50"))[0] == 200
        with private.client() as admin:
            assert admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") >= 1
        results = await asyncio.gather(*(request(stage, f"10.3.0.{i}") for i in range(20)))
        assert [s for s, _ in results] == [200] * 20
        assert (await request(stage, "203.0.113.50"))[0] == 429
    finally:
        await h.close()


# ---------------------------------------------------------------------------------------------
# Redis failing: hung (SIGSTOP), shut down, restarted (NOSCRIPT)
# ---------------------------------------------------------------------------------------------


async def test_hung_redis_costs_at_most_the_timeout_then_limits_resume(
    private: PrivateRedis,
) -> None:
    h = _handle(private.url)
    spec = {"rate": 2, "period": 60, "mode": "exact", "failure": "open"}
    stage, _ = stage_for(spec, rate_limit_redis_timeout="0.2", rate_limit_redis_backoff="0.3")
    await stage.bind(h)
    try:
        assert (await request(stage))[0] == 200
        private.pause()
        slowest = 0.0
        for _ in range(20):
            started = time.perf_counter()
            status, _ = await request(stage, peer=f"10.0.0.{_}")
            slowest = max(slowest, time.perf_counter() - started)
            assert status == 200  # fail-open: served
        assert slowest < 0.2 + 0.1
        private.resume()
        await asyncio.sleep(0.35)  # the backoff ends; the next request probes Redis
        statuses = [(await request(stage))[0] for _ in range(3)]
        assert statuses == [200, 429, 429]  # the one from before the pause still counts
    finally:
        await h.close()


async def test_restart_reloads_the_script(private: PrivateRedis) -> None:
    h = _handle(private.url)
    stage, _ = stage_for(
        {"rate": 1, "period": 60, "mode": "exact", "failure": "closed"},
        rate_limit_redis_backoff="0.2",
    )
    await stage.bind(h)
    try:
        assert (await request(stage))[0] == 200
        private.stop()
        status, c = await request(stage, peer="10.1.1.1")
        assert status == 503 and int(header(c, b"retry-after")) >= 1
        private.start()  # empty: no keys, no scripts
        await asyncio.sleep(0.25)
        assert (await request(stage, peer="10.1.1.2"))[0] == 200  # NOSCRIPT -> load -> call
        assert (await request(stage, peer="10.1.1.2"))[0] == 429
        assert await _commands(private.url, "script|load") >= 1
    finally:
        await h.close()


async def test_script_is_what_the_store_loads(handle: RedisHandle) -> None:
    sha = await handle.client.script_load(GCRA_LUA)
    # interval 1 s in µs, burst 2, want 5: two granted, full burst back in 2 s.
    key = handle.key("rl", "{probe}")
    granted, reset_us, remaining, retry_us = await handle.client.evalsha(sha, 1, key, 10**6, 2, 5)
    assert (granted, remaining, retry_us) == (2, 0, 0) and 1_999_000 < reset_us <= 2_000_000
    granted, reset_us, remaining, retry_us = await handle.client.evalsha(sha, 1, key, 10**6, 2, 1)
    assert granted == 0 and 999_000 < retry_us <= 1_000_000
    assert 1000 < await handle.client.pttl(key) <= 3000  # idle keys expire by themselves


async def test_many_key_script_answers_as_the_one_key_script(handle: RedisHandle) -> None:
    """GCRA_MANY_LUA is GCRA_LUA key after key: the same sequence of asks on two keys, one
    through each script, gets the same grants and refusals; a key asked twice in one call sees
    the first ask's write; a key that is not a TAT answers -1 and is left as it was."""
    one = await handle.client.script_load(GCRA_LUA)
    many = await handle.client.script_load(GCRA_MANY_LUA)
    a, b, bad = (handle.key("rl", "{" + name + "}") for name in ("a", "b", "bad"))
    await handle.client.set(bad, "x")
    asks = [(10**6, 3, 2), (10**6, 3, 2), (500_000, 3, 1), (10**6, 3, 5)]
    for interval, burst, want in asks:
        single = await handle.client.evalsha(one, 1, a, interval, burst, want)
        both = await handle.client.evalsha(many, 2, b, bad, interval, burst, want, 1, 1, 1)
        assert both[4:] == [-1, 0, 0, 0]
        assert (both[0], both[2]) == (single[0], single[2])  # granted, remaining
        # reset and retry: the same up to the time between the two calls
        assert abs(both[1] - single[1]) < 50_000 and abs(both[3] - single[3]) < 50_000
    c = handle.key("rl", "{c}")
    twice = await handle.client.evalsha(many, 2, c, c, 10**6, 10, 4, 10**6, 10, 4)
    assert (twice[0], twice[2], twice[4], twice[6]) == (4, 6, 4, 2)  # the second saw the first
    assert await handle.client.get(bad) == b"x"


async def test_a_lease_of_one_token_is_not_a_refusal(handle: RedisHandle) -> None:
    """lease 1 (or Redis granting a single token): the request spends it and the next one
    asks Redis again, which decides; it is not refused until the lease's expiry."""
    stage, _ = stage_for({"rate": 5, "period": 60, "mode": "batched", "lease": 1})
    await stage.bind(handle)
    statuses = [await request(stage) for _ in range(6)]
    assert [s for s, _ in statuses] == [200] * 5 + [429]
    remaining = [header(c, b"ratelimit-remaining") for _, c in statuses[:5]]
    assert remaining == [b"4", b"3", b"2", b"1", b"0"]
    # one token each 12 s: not the lease's 60
    assert header(statuses[5][1], b"retry-after") == b"12"


# ---------------------------------------------------------------------------------------------
# the fused hit path and a lease that ran out: reserve one, then answer the hit there
# ---------------------------------------------------------------------------------------------


def _cached_edge(
    spec: dict[str, Any], **settings: str
) -> tuple[Edge, RateLimitStage, Metrics, Counter[str]]:
    """An edge with the response cache and one batched limit keyed by address on
    ``GET /c/{id:int}`` (a fast handler): what the fused hit path answers when it has a token."""
    env = {
        "CYGATE_RATE_LIMITS": orjson.dumps({"g": spec}).decode(),
        "CYGATE_RATE_LIMIT_DEFAULT_CLASS": "",
        **{f"CYGATE_{k.upper()}": v for k, v in settings.items()},
    }
    loaded = load_settings(env, cache_key_secret="lease-detour", cache_l2=False)
    metrics = Metrics()
    cache = ResponseCache(loaded.cache, metrics, redis=loaded.redis,
                          rules={"c": CacheRule(ttl=60)})  # fmt: skip

    async def fast(ctx: EdgeContext) -> bytes:
        return b'{"id": %s}' % (ctx.params or {}).get("id", "").encode()

    policy = RoutePolicy(name="GET /c/{id:int}", cache="c", rate_limit="g", fast=fast)
    router = Router()
    router.add("GET", "/c/{id:int}", policy)
    cache.add_route(policy.name, "c")
    stage = RateLimitStage.from_settings(loaded.rate_limit, [policy], metrics)
    _stages.append(stage)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the route has a fast handler")

    edge = Edge(app, router, metrics=metrics, max_body_bytes=1000, stages=(stage,), cache=cache)
    cache.edge = edge
    counted: Counter[str] = Counter()
    assert edge.hit_path is not None
    edge._hits = CountedHitPath(edge._hits, counted)  # type: ignore[assignment]
    return edge, stage, metrics, counted


async def _get(edge: Edge, path: str, peer: str) -> tuple[int, dict[bytes, bytes]]:
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def record(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [(b"host", b"gateway.test")],
             "client": (peer, 5000)}  # fmt: skip
    await edge(scope, receive, record)
    return sent[0]["status"], dict(sent[0]["headers"])


async def test_a_hit_whose_lease_ran_out_stays_on_the_fused_path(private: PrivateRedis) -> None:
    """A caller with no lease (never seen, or its lease expired): the edge reserves one and
    the fused hit path answers, with the headers the general path gives; a refusal from Redis
    is the general path's 429, remembered; many such callers at once share round trips."""
    h = _handle(private.url)
    edge, stage, metrics, counted = _cached_edge(
        {"rate": 3, "period": 60, "key": ["ip"], "mode": "batched", "lease": 1},
        rate_limit_redis_timeout="5",
    )
    await stage.bind(h)
    try:
        status, first = await _get(edge, "/c/1", "10.7.0.1")  # the miss: general path
        assert status == 200 and first[b"x-cache"] == b"miss"
        assert first[b"ratelimit-remaining"] == b"2"
        counted.clear()
        seen = [await _get(edge, "/c/1", "10.7.0.1") for _ in range(2)]  # a lease each
        assert [(s, h[b"x-cache"], h[b"ratelimit-remaining"]) for s, h in seen] == [
            (200, b"hit-l1", b"1"),
            (200, b"hit-l1", b"0"),
        ]
        assert counted == {"general": 2, "fused": 2}  # declined, then answered: no general path
        status, refused = await _get(edge, "/c/1", "10.7.0.1")
        assert status == 429 and refused[b"retry-after"] == b"20"
        assert refused[b"ratelimit-remaining"] == b"0"
        before = await _commands(private.url, "evalsha")
        assert (await _get(edge, "/c/1", "10.7.0.1"))[0] == 429  # remembered: no Redis call
        assert await _commands(private.url, "evalsha") == before
        limit = stage.plans["GET /c/{id:int}"].single
        assert limit is not None and limit.n_allowed.value == 3 and limit.n_limited.value == 2
        # 40 callers never seen, at once: all fused hits, in a few round trips.
        store = stage.store
        assert store is not None
        trips, counted_before = store.batches, counted["fused"]
        results = await asyncio.gather(*(_get(edge, "/c/1", f"10.8.0.{i}") for i in range(40)))
        assert all(s == 200 and h[b"x-cache"] == b"hit-l1" for s, h in results)
        assert counted["fused"] - counted_before == 40
        assert store.batches - trips <= 3
        assert 'cygate_ratelimit_redis_calls_total{limit="g"} 44' in metrics.render()
    finally:
        await h.close()


@pytest.mark.parametrize(("failure", "status"), [("open", 200), ("closed", 503)])
async def test_a_hit_whose_lease_ran_out_with_redis_down_gets_the_failure_mode(
    private: PrivateRedis, failure: str, status: int
) -> None:
    h = _handle(private.url)
    edge, stage, _, _ = _cached_edge(
        {"rate": 100, "period": 60, "key": ["ip"], "mode": "batched", "lease": 1,
         "failure": failure},
        rate_limit_redis_timeout="0.3", rate_limit_redis_backoff="5",
    )  # fmt: skip
    await stage.bind(h)
    try:
        assert (await _get(edge, "/c/1", "10.7.1.1"))[0] == 200  # the entry is in L1
        private.stop()
        results = await asyncio.gather(*(_get(edge, "/c/1", f"10.7.2.{i}") for i in range(10)))
        assert [s for s, _ in results] == [status] * 10
    finally:
        await h.close()
