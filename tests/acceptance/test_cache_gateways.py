"""The cache through real gateway processes (Granian, one worker each, sharing Redis):
L2 across processes and hash seeds, poisoning attempts, 500 concurrent cold misses, purge
latency across instances, a dropped subscription and a stopped Redis (private redis-server).

Per-caller isolation with two real users' tokens on ``GET /api/v1/users/me`` is in
test_cache_per_caller.py; in process at the edge in tests/unit/edge/test_edge_cache.py and
through L2 in tests/integration/test_cache_l2.py (principals set by a test stage).
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway
from tests.acceptance.test_catalog_api import assert_problem
from tests.private_redis import PrivateRedis

pytestmark = pytest.mark.acceptance

SECRET = "acceptance-cache-secret"


def _env(gateway_env: dict[str, str], prefix: str, **extra: str) -> dict[str, str]:
    return {
        **gateway_env,
        "CYGATE_REDIS_PREFIX": prefix,
        "CYGATE_CACHE_KEY_SECRET": SECRET,
        "CYGATE_METRICS_ACCESS": "loopback",
        **extra,
    }


def metric(gw: Gateway, name: str) -> float:
    """A series' value on /metrics (0 when absent)."""
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (Granian's workers), from /proc."""
    parents: dict[int, int] = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        found.update(kids)
        frontier += kids
    return found


def wait_for(predicate: Any, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def product_ids(test_db_dsn: str, seeded: object) -> list[str]:
    """Seeded product ids, oldest first (other modules page from the newest)."""

    async def run() -> list[str]:
        conn = await asyncpg.connect(test_db_dsn)
        try:
            rows = await conn.fetch("SELECT id FROM products ORDER BY created_at, id")
            return [str(r["id"]) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(run())


def sql(dsn: str, query: str, *args: Any) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(query, *args)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def pair(gateway_env: dict[str, str], redis_prefix: str, seeded: object) -> Iterator[list[Gateway]]:
    """Gateways A and B on the shared Redis, each started with its own PYTHONHASHSEED."""
    prefix = f"{redis_prefix}cache-{secrets.token_hex(3)}:"
    gws = []
    try:
        for seed in ("1", "2"):
            env = _env(gateway_env, prefix, PYTHONHASHSEED=seed, CYGATE_CACHE_LEASE_WAIT="5")
            gws.append(start_gateway(env, workers=1))
        yield gws
    finally:
        for gw in gws:
            stop_gateway(gw)


# -- L2 across processes ----------------------------------------------------------------------


def test_keys_and_entries_are_shared_across_processes_and_hash_seeds(
    pair: list[Gateway], product_ids: list[str]
) -> None:
    a, b = pair
    path = f"/api/v1/products/{product_ids[0]}"
    first = httpx.get(a.url + path)
    from_b = httpx.get(b.url + path)
    assert (first.headers["x-cache"], from_b.headers["x-cache"]) == ("miss", "hit-l2")
    assert first.content == from_b.content and first.headers["etag"] == from_b.headers["etag"]
    assert httpx.get(b.url + path).headers["x-cache"] == "hit-l1"
    etag = first.headers["etag"]
    not_modified = httpx.get(b.url + path, headers={"if-none-match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""


def test_host_accept_and_forwarded_host_never_poison(
    pair: list[Gateway], product_ids: list[str]
) -> None:
    a, _ = pair
    evil = {"host": "evil.example", "x-forwarded-host": "evil.example", "accept": "text/html"}
    for path in (f"/api/v1/products/{product_ids[1]}", "/api/v1/products?limit=3&sort=name"):
        poisoned = httpx.get(a.url + path, headers=evil)
        assert poisoned.status_code == 200
        normal = httpx.get(a.url + path)
        assert normal.headers["x-cache"] == "hit-l1"
        assert normal.headers["content-type"] == "application/json"
        assert normal.content == poisoned.content
        assert b"evil" not in normal.content
        assert all("evil" not in v for v in normal.headers.values())
    product = httpx.get(a.url + f"/api/v1/products/{product_ids[1]}")
    assert product.json()["id"] == product_ids[1]
    # A public rule ignores a client's directives (any client could force a database read per
    # request); malformed ones are no error either.
    for directives in ("no-cache", "no-store", "max-age=0", "max-age=-1", 'no-cache="x"'):
        answer = httpx.get(product.url, headers={"cache-control": directives})
        assert answer.status_code == 200 and answer.headers["x-cache"] == "hit-l1", directives
        assert answer.content == product.content


# -- stampede ---------------------------------------------------------------------------------


def test_500_concurrent_cold_misses_across_two_gateways_load_at_most_twice(
    pair: list[Gateway], product_ids: list[str], test_db_dsn: str
) -> None:
    a, b = pair
    path = f"/api/v1/products/{product_ids[2]}"
    loads_before = metric(a, "cygate_cache_loads_total") + metric(b, "cygate_cache_loads_total")

    async def run() -> list[httpx.Response]:
        # NOTE: the products table is locked while the 500 requests arrive, so every one of
        # them is a cold miss in flight at once; the lock is released after they are all sent.
        conn = await asyncpg.connect(test_db_dsn)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            tasks = [
                asyncio.create_task(client.get((a if i % 2 else b).url + path)) for i in range(500)
            ]
            await asyncio.sleep(1.0)
            await tx.rollback()
            await conn.close()
            return await asyncio.gather(*tasks)

    replies = asyncio.run(run())
    assert {r.status_code for r in replies} == {200}
    assert len({r.content for r in replies}) == 1
    loads = metric(a, "cygate_cache_loads_total") + metric(b, "cygate_cache_loads_total")
    assert loads - loads_before <= 2
    assert loads - loads_before == 1  # the lease held the second instance back
    print(f"500 concurrent cold misses over 2 gateways: {loads - loads_before:.0f} load(s)")


# -- invalidation -----------------------------------------------------------------------------


def test_purge_through_a_is_visible_on_b_within_100_ms(
    pair: list[Gateway], product_ids: list[str], test_db_dsn: str
) -> None:
    a, b = pair
    pid = product_ids[3]
    path = f"/api/v1/products/{pid}"
    with (
        httpx.Client(base_url=b.url) as cb,
        httpx.Client(base_url=a.url, headers=admin_headers(a)) as ca,
    ):
        original = cb.get(path).json()["name"]
        assert cb.get(path).headers["x-cache"] == "hit-l1"
        sql(test_db_dsn, "UPDATE products SET name = $2 WHERE id = $1::uuid", pid, "renamed")
        try:
            assert cb.get(path).json()["name"] == original  # cached: B cannot know yet
            start = time.perf_counter()
            purge = ca.post("/admin/cache/purge", json={"tags": [f"product:{pid}"]})
            while cb.get(path).json()["name"] != "renamed":
                assert time.perf_counter() - start < 1.0
            elapsed = time.perf_counter() - start
        finally:
            sql(test_db_dsn, "UPDATE products SET name = $2 WHERE id = $1::uuid", pid, original)
    assert purge.status_code == 200, purge.text
    assert purge.headers["cache-control"] == "no-store"
    assert purge.json()["instances"] == 1 and purge.json()["deleted"] >= 1
    print(f"purge on A visible on B after {elapsed * 1000:.1f} ms")
    assert elapsed < 0.1


def test_purge_requests_are_validated(pair: list[Gateway]) -> None:
    a, _ = pair
    anonymous = httpx.post(a.url + "/admin/cache/purge", json={"tags": ["x"]})
    assert_problem(anonymous, 401)
    with httpx.Client(base_url=a.url, headers=admin_headers(a)) as c:
        assert_problem(c.post("/admin/cache/purge", json={"tags": []}), 422)
        assert_problem(c.post("/admin/cache/purge", json={"tags": ["x"], "all": True}), 422)
        assert_problem(c.post("/admin/cache/purge", json={"tags": ["x" * 201]}), 422)
        assert_problem(c.post("/admin/cache/purge", json={"tags": "product:1"}), 422)
        bad = c.post(
            "/admin/cache/purge", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert bad.status_code in (400, 422) and bad.headers["content-type"].startswith(
            "application/problem+json"
        )
        assert_problem(c.get("/admin/cache/purge"), 405)
        ok = c.post("/admin/cache/purge", json={"tags": ["nothing-cached-under-this"]})
        assert ok.status_code == 200 and ok.json()["deleted"] == 0


# -- failures (private redis-server) ----------------------------------------------------------


@pytest.fixture(scope="module")
def private_pair(
    gateway_env: dict[str, str], redis_prefix: str, seeded: object
) -> Iterator[tuple[PrivateRedis, list[Gateway]]]:
    server = PrivateRedis()
    server.start()
    gws: list[Gateway] = []
    try:
        prefix = f"{redis_prefix}cache-private:"
        for _ in range(2):
            env = _env(gateway_env, prefix, CYGATE_REDIS_URL=server.url)
            gws.append(start_gateway(env, workers=1))
        yield server, gws
    finally:
        for gw in gws:
            stop_gateway(gw)
        server.stop()


def test_b_survives_a_dropped_subscription(
    private_pair: tuple[PrivateRedis, list[Gateway]], product_ids: list[str], test_db_dsn: str
) -> None:
    server, (a, b) = private_pair
    pid = product_ids[4]
    path = f"/api/v1/products/{pid}"
    with (
        httpx.Client(base_url=b.url) as cb,
        httpx.Client(base_url=a.url, headers=admin_headers(a)) as ca,
    ):
        original = cb.get(path).json()["name"]
        sql(test_db_dsn, "UPDATE products SET name = $2 WHERE id = $1::uuid", pid, "after-drop")
        try:
            # An invalidation B never hears (as if published while its connection was down):
            # the entry leaves L2 but no message is sent. B keeps serving what it has.
            with server.client() as r:
                for k in r.scan_iter(match="*{cache}:e:*"):
                    r.delete(k)
            assert cb.get(path).json()["name"] == original
            subscriptions = metric(b, "cygate_cache_subscriptions_total")
            names = [f":{p}:" for p in descendants(b.proc.pid)]
            killed = sum(server.kill_clients(n) for n in names)
            assert killed == 1
            # a purge through A right away: B may be between connections and miss it
            ca.post("/admin/cache/purge", json={"tags": [f"product:{pid}"]})
            wait_for(lambda: metric(b, "cygate_cache_subscriptions_total") > subscriptions)
            after = cb.get(path)
            assert after.json()["name"] == "after-drop"  # flushed on resubscription
            assert after.headers["x-cache"] in ("miss", "hit-l2")
            # and B hears purges again
            purge = ca.post("/admin/cache/purge", json={"tags": [f"product:{pid}"]})
            assert purge.json()["instances"] == 1
        finally:
            sql(test_db_dsn, "UPDATE products SET name = $2 WHERE id = $1::uuid", pid, original)


def test_redis_stopped_reads_keep_working(
    private_pair: tuple[PrivateRedis, list[Gateway]], product_ids: list[str]
) -> None:
    server, (a, _) = private_pair
    warm = f"/api/v1/products/{product_ids[5]}"
    with httpx.Client(base_url=a.url, timeout=10, headers=admin_headers(a)) as c:
        assert c.get(warm).status_code == 200
        server.stop()
        try:
            latencies = []
            statuses = []
            for pid in [product_ids[5], *product_ids[6:46]]:
                start = time.perf_counter()
                r = c.get(f"/api/v1/products/{pid}")
                latencies.append(time.perf_counter() - start)
                statuses.append(r.status_code)
            lists = c.get("/api/v1/products?limit=5&sort=price")
            assert lists.status_code == 200
            assert set(statuses) == {200}
            assert c.get(warm).headers["x-cache"] == "hit-l1"
            ready = c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["redis"] == "degraded"
            purge = c.post("/admin/cache/purge", json={"tags": ["products"]})
            assert_problem(purge, 503)
            assert purge.headers["retry-after"] == "1"
            latencies.sort()
            print(
                f"Redis stopped: {len(latencies)} reads, all 200; "
                f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
                f"max {latencies[-1] * 1000:.1f} ms"
            )
            assert latencies[-1] < 1.0
        finally:
            server.start()
        wait_for(lambda: metric(a, "cygate_cache_subscribed") == 1)
        assert c.post("/admin/cache/purge", json={"tags": ["products"]}).status_code == 200


def test_one_gateway_without_redis_at_all(
    gateway_env: dict[str, str], product_ids: list[str]
) -> None:
    """L2 off: one instance caches in L1 alone, and purges stay local."""
    env = _env(gateway_env, "unused:", CYGATE_CACHE_L2="false")
    gw = start_gateway(env, workers=1)
    try:
        with gw.client(headers=admin_headers(gw)) as c:
            path = f"/api/v1/products/{product_ids[6]}"
            assert c.get(path).headers["x-cache"] == "miss"
            assert c.get(path).headers["x-cache"] == "hit-l1"
            purge = c.post("/admin/cache/purge", json={"tags": [f"product:{product_ids[6]}"]})
            assert purge.json() == {"tags": [f"product:{product_ids[6]}"], "deleted": 0,
                                    "instances": 0}  # fmt: skip
            assert c.get(path).headers["x-cache"] == "miss"
    finally:
        stop_gateway(gw)
