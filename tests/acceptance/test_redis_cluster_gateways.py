"""Two gateway processes on a real 3-master Redis Cluster the test starts
(tests/private_redis_cluster): an exact limit global across both, L2 hits across them, a purge
heard by the other, and a node restart with requests recovering. The second gateway is given a
node list whose first node is dead (it starts from the live one). And the bad inputs:
only dead nodes, a plain Redis named as a cluster, and a ``CYGATE_REDIS_CLUSTER`` that is not a
boolean, each one line from ``cygate serve`` within seconds.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from tests.acceptance.conftest import Gateway, admin_headers, free_port, start_gateway, stop_gateway
from tests.conftest import REDIS_URL, SUITE_RATE_LIMITS
from tests.private_redis_cluster import PrivateRedisCluster

from cygate._compat import NO_EXTENSIONS

pytestmark = pytest.mark.acceptance

CATEGORIES = "/api/v1/categories"
LIMIT = 12
compiled_only = pytest.mark.skipif(
    NO_EXTENSIONS,
    reason="Redis Cluster through gateways has no compiled/pure difference: compiled run only",
)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[PrivateRedisCluster]:
    if NO_EXTENSIONS:
        pytest.skip("compiled run only (no compiled/pure difference)")
    with PrivateRedisCluster() as c:
        yield c


@pytest.fixture(scope="module")
def pair(
    gateway_env: dict[str, str], seeded: object, redis_cluster: PrivateRedisCluster
) -> Iterator[list[Gateway]]:
    env = {
        **gateway_env,
        "CYGATE_REDIS_URL": redis_cluster.url,
        "CYGATE_REDIS_CLUSTER": "true",
        "CYGATE_REDIS_PREFIX": f"rc{secrets.token_hex(3)}:",
        "CYGATE_CACHE_KEY_SECRET": "acceptance-cluster-secret",
        "CYGATE_CACHE_L2_RETRY_AFTER": "0.2",
        "CYGATE_RATE_LIMIT_REDIS_BACKOFF": "0.2",
        "CYGATE_RATE_LIMITS": orjson.dumps(
            {
                **SUITE_RATE_LIMITS,
                "rc_global": {"rate": LIMIT, "period": 3600, "key": [], "mode": "exact"},
            }
        ).decode(),
        "CYGATE_RATE_LIMIT_ROUTES": orjson.dumps({f"GET {CATEGORIES}": "rc_global"}).decode(),
    }
    dead = free_port()
    live = redis_cluster.ports[1]
    gws: list[Gateway] = []
    try:
        gws.append(start_gateway(env, workers=1))
        # B names a dead node first, then a live one: it starts from the live one
        nodes = f"redis://127.0.0.1:{dead},127.0.0.1:{live}/0"
        gws.append(start_gateway({**env, "CYGATE_REDIS_URL": nodes}, workers=1))
        yield gws
    finally:
        for gw in gws:
            output = stop_gateway(gw)
            assert "Traceback" not in output, output


@compiled_only
def test_an_exact_limit_is_global_across_two_gateways_on_a_cluster(pair: list[Gateway]) -> None:
    a, b = pair
    codes = [httpx.get((a if i % 2 else b).url + CATEGORIES, timeout=10).status_code
             for i in range(LIMIT + 8)]  # fmt: skip
    assert codes == [200] * LIMIT + [429] * 8


@compiled_only
def test_l2_hits_and_purges_across_gateways_on_a_cluster(pair: list[Gateway]) -> None:
    a, b = pair
    products = httpx.get(a.url + "/api/v1/products?limit=2", timeout=10).json()["items"]
    pid = products[0]["id"]
    path = f"/api/v1/products/{pid}"
    first = httpx.get(a.url + path, timeout=10)
    seen = ""
    for _ in range(50):  # the L2 write follows the answer (batched)
        seen = httpx.get(b.url + path, timeout=10).headers["x-cache"]
        if seen != "miss":
            break
        time.sleep(0.02)
    assert (first.headers["x-cache"], seen) == ("miss", "hit-l2")
    assert httpx.get(b.url + path, timeout=10).headers["x-cache"] == "hit-l1"
    with httpx.Client(base_url=a.url, headers=admin_headers(a), timeout=10) as ca:
        purge = ca.post("/admin/cache/purge", json={"tags": [f"product:{pid}"]})
    assert purge.status_code == 200, purge.text
    assert purge.json()["instances"] == 1 and purge.json()["deleted"] >= 1
    deadline = time.monotonic() + 1
    while httpx.get(b.url + path, timeout=10).headers["x-cache"] == "hit-l1":
        assert time.monotonic() < deadline, "B still serves its L1 copy after the purge"
        time.sleep(0.01)


@compiled_only
def test_a_node_restart_costs_no_5xx_and_the_cluster_is_used_again(
    pair: list[Gateway], redis_cluster: PrivateRedisCluster
) -> None:
    a, b = pair
    products = httpx.get(a.url + "/api/v1/products?limit=5", timeout=10).json()["items"]
    # the master of the cache's slot: L2, leases and the invalidation subscriptions
    prefix = a.env["CYGATE_REDIS_PREFIX"]
    port = redis_cluster.port_of(prefix + "{cache}:gen")
    redis_cluster.stop_node(port)
    statuses = [
        httpx.get(gw.url + f"/api/v1/products/{p['id']}", timeout=10).status_code
        for p in products
        for gw in pair
    ]
    assert set(statuses) == {200}  # L1 and PostgreSQL serve while L2 is away
    redis_cluster.restart(port)
    path = f"/api/v1/products/{products[-1]['id']}"
    deadline = time.monotonic() + 15
    while True:  # L2 and the purges work again: B is told of a purge through A
        with httpx.Client(base_url=a.url, headers=admin_headers(a), timeout=10) as ca:
            purge = ca.post("/admin/cache/purge", json={"tags": ["products"]})
        if purge.status_code == 200 and purge.json()["instances"] == 1:
            break
        assert purge.status_code in (200, 503), purge.text
        assert time.monotonic() < deadline, purge.text
        time.sleep(0.2)
    first = httpx.get(a.url + path, timeout=10).headers["x-cache"]
    seen = ""
    for _ in range(100):
        seen = httpx.get(b.url + path, timeout=10).headers["x-cache"]
        if seen == "hit-l2":
            break
        time.sleep(0.05)
    assert (first, seen) == ("miss", "hit-l2")


# -- bad input --------------------------------------------------------------------------------


def serve(env: dict[str, str], **extra: str) -> tuple[int, str, float]:
    """``cygate serve`` with ``extra``: (exit status, stderr, seconds), or a failure if it
    started (it must not)."""
    port = free_port()
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cygate", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env={**env, "CYGATE_REDIS_TIMEOUT": "0.5", **extra},
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    return done.returncode, done.stderr.strip(), time.monotonic() - start


def test_only_dead_cluster_nodes_is_one_line_and_no_hang(gateway_env: dict[str, str]) -> None:
    dead = [free_port(), free_port()]
    code, err, took = serve(
        gateway_env,
        CYGATE_REDIS_CLUSTER="true",
        CYGATE_REDIS_URL=f"redis://127.0.0.1:{dead[0]},127.0.0.1:{dead[1]}/0",
    )
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("cygate: redis_cluster: no node of redis_url answers")
    assert f"127.0.0.1:{dead[0]}" in err and f"127.0.0.1:{dead[1]}" in err
    assert took < 15


def test_a_plain_redis_named_as_a_cluster_is_one_line(gateway_env: dict[str, str]) -> None:
    code, err, took = serve(gateway_env, CYGATE_REDIS_CLUSTER="true", CYGATE_REDIS_URL=REDIS_URL)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "is a Redis without cluster mode" in err and "CYGATE_REDIS_CLUSTER=false" in err
    assert took < 15


def test_a_cluster_setting_that_is_not_a_boolean_is_one_line(gateway_env: dict[str, str]) -> None:
    """(The other bad combinations of redis_url and redis_cluster are settings errors, the
    same one line: tests/unit/infra/test_redis_cluster_settings.py.)"""
    code, err, took = serve(gateway_env, CYGATE_REDIS_CLUSTER="maybe")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("cygate: invalid setting redis_cluster (CYGATE_REDIS_CLUSTER='maybe')")
    assert took < 15
