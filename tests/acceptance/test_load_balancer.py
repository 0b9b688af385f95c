"""Three gateway processes behind a real HAProxy, run with the load balancer configuration of
deploy/compose.yaml (deploy/haproxy/haproxy.cfg: only the addresses are this machine's), under
mixed traffic from a fixed set of clients:

- an ``exact`` rate limit is global: exactly the limit passes across the three instances;
- a catalog write through one instance is visible through the two others within 100 ms;
- orders are placed exactly once, with client retries under the same Idempotency-Key, while one
  instance is stopped with SIGTERM (its readiness fails first, then it drains: not one request
  fails) and then another is SIGKILLed (requests in flight there fail over; client retries
  succeed).

HAProxy comes from ``scripts/services.sh haproxy`` (the Debian package, installed when missing);
the module is skipped, with the reason, only when it cannot be had.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from tests.acceptance.conftest import (
    Gateway,
    admin_headers,
    free_port,
    start_gateway,
    stop_gateway,
)
from tests.conftest import SUITE_RATE_LIMITS

pytestmark = [pytest.mark.acceptance, pytest.mark.once]

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
CATEGORIES = "/api/v1/categories"
GLOBAL_LIMIT = 20
CLIENTS = 6
ADDRESS = {"name": "Ada Lovelace", "line1": "1 Analytical St", "city": "London", "country": "GB"}


def haproxy_binary() -> str:
    """The haproxy executable (installed by scripts/services.sh when missing), or a skip."""
    try:
        out = subprocess.run(
            [str(REPO / "scripts" / "services.sh"), "haproxy"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"haproxy is not installed and scripts/services.sh could not install it: {exc}")
    if out.returncode != 0:
        reason = out.stderr.strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"haproxy is not installed and cannot be installed here: {reason[0]}")
    return out.stdout.strip().splitlines()[-1]


def local_config(ports: list[int], listen: int) -> str:
    """deploy/haproxy/haproxy.cfg with this machine's addresses: the gateways on 127.0.0.1
    instead of the compose service names (no Docker DNS resolver), the front end on ``listen``,
    and a response header naming the server that answered (to see the spread)."""
    text = HAPROXY_CFG.read_text()
    text = re.sub(r"^resolvers docker\n(?:[ \t]+.*\n)+", "", text, flags=re.MULTILINE)
    text = text.replace(" resolvers docker", "")
    text = re.sub(r"^(\s*)bind :8080$", rf"\1bind 127.0.0.1:{listen}", text, flags=re.MULTILINE)
    servers = re.findall(r"^\s*server (\S+) \S+$", text, flags=re.MULTILINE)
    assert len(servers) == len(ports), servers
    for name, port in zip(servers, ports, strict=True):
        text = re.sub(
            rf"^(\s*)server {name} \S+$",
            rf"\1server {name} 127.0.0.1:{port}",
            text,
            flags=re.MULTILINE,
        )
    text = text.replace(
        "backend gateways\n", "backend gateways\n    http-response set-header x-served-by %s\n"
    )
    return text


@dataclass
class Cluster:
    lb: str
    gateways: list[Gateway]
    names: list[str]
    haproxy: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def cluster(
    gateway_env: dict[str, str], seeded: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    binary = haproxy_binary()
    env = {
        **gateway_env,
        "CYGATE_REDIS_PREFIX": f"{gateway_env['CYGATE_REDIS_PREFIX']}lb-{secrets.token_hex(3)}:",
        "CYGATE_CACHE_KEY_SECRET": "acceptance-lb-secret",
        "CYGATE_TRUSTED_PROXIES": "127.0.0.1",
        "CYGATE_DB_POOL_MAX": "8",
        "CYGATE_SHUTDOWN_TIMEOUT": "10",
        # As deploy/compose.yaml: /readyz fails for 3 s before the drain, longer than HAProxy
        # needs to take the instance out (two failed checks 1 s apart).
        "CYGATE_SHUTDOWN_DELAY": "3",
        # A claim left in flight by the SIGKILLed instance is taken over by a retry after 1 s.
        "CYGATE_IDEMPOTENCY_IN_FLIGHT_TIMEOUT": "1",
        "CYGATE_RATE_LIMITS": orjson.dumps(
            {
                **SUITE_RATE_LIMITS,
                "lb_global": {"rate": GLOBAL_LIMIT, "period": 3600, "key": [], "mode": "exact"},
            }
        ).decode(),
        "CYGATE_RATE_LIMIT_ROUTES": orjson.dumps({f"GET {CATEGORIES}": "lb_global"}).decode(),
    }
    gateways: list[Gateway] = []
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        for _ in range(3):  # one by one: those started are stopped if a later one fails
            gateways.append(start_gateway(env, workers=1))  # noqa: PERF401
        listen = free_port()
        cfg = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
        cfg.write_text(local_config([int(g.url.rsplit(":", 1)[1]) for g in gateways], listen))
        check = subprocess.run([binary, "-c", "-q", "-f", str(cfg)], capture_output=True)
        assert check.returncode == 0, check.stderr.decode()
        log_file = cfg.with_name("haproxy.log")
        with log_file.open("wb") as out:
            haproxy = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=out, stderr=out)
        lb = f"http://127.0.0.1:{listen}"
        names = re.findall(r"^\s*server (\S+) ", cfg.read_text(), flags=re.MULTILINE)
        deadline = time.monotonic() + 20
        while True:  # every server up (two health checks passed) behind the front end
            try:
                served = {httpx.get(lb + "/healthz", timeout=2).headers.get("x-served-by")
                          for _ in range(6)}  # fmt: skip
                if served == set(names):
                    break
            except httpx.TransportError:
                pass
            assert haproxy.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, f"HAProxy did not reach every gateway: {served}"
            time.sleep(0.2)
        yield Cluster(lb, gateways, names, haproxy)
    finally:
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait(10)
        for gw in gateways:
            output = stop_gateway(gw)
            assert "Traceback" not in output, output


async def _sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_sql(dsn, query, *args))


# -- rate limits -------------------------------------------------------------------------------


def test_an_exact_limit_is_global_across_the_instances(cluster: Cluster) -> None:
    # Half the limit one request at a time: round robin sends them to every instance in turn.
    first = [httpx.get(cluster.lb + CATEGORIES, timeout=10) for _ in range(GLOBAL_LIMIT // 2)]
    assert [r.status_code for r in first] == [200] * (GLOBAL_LIMIT // 2)
    assert {r.headers["x-served-by"] for r in first} == set(cluster.names)

    # Then the rest of the limit and twice as many again, all at once.
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=cluster.lb, timeout=10, limits=limits) as c:
            n = GLOBAL_LIMIT // 2 + 2 * GLOBAL_LIMIT
            return await asyncio.gather(*(c.get(CATEGORIES) for _ in range(n)))

    replies = asyncio.run(run())
    codes = [r.status_code for r in replies]
    assert codes.count(200) == GLOBAL_LIMIT // 2, codes
    assert codes.count(429) == 2 * GLOBAL_LIMIT, codes
    assert {r.headers["x-served-by"] for r in replies} == set(cluster.names)


# -- cache coherence ---------------------------------------------------------------------------


def test_a_write_through_one_instance_is_read_through_the_others_within_100_ms(
    cluster: Cluster, test_db_dsn: str
) -> None:
    writer, *readers = cluster.gateways
    pid = str(sql(test_db_dsn, "SELECT id FROM products ORDER BY id LIMIT 1")[0]["id"])
    path = f"/api/v1/products/{pid}"
    original = httpx.get(writer.url + path).json()["name"]
    new_name = f"renamed {secrets.token_hex(4)}"
    with httpx.Client(timeout=10) as client:
        for gw in readers:  # warm: each reader answers from its own L1
            client.get(gw.url + path)
            assert client.get(gw.url + path).headers["x-cache"] == "hit-l1"
        try:
            written = client.patch(
                writer.url + path,
                json={"name": new_name},
                headers={**admin_headers(writer), "If-Match": "*"},
            )
            start = time.perf_counter()
            assert written.status_code == 200, written.text
            seen: dict[str, float] = {}
            while len(seen) < len(readers):
                for gw in readers:
                    if gw.url not in seen and client.get(gw.url + path).json()["name"] == new_name:
                        seen[gw.url] = time.perf_counter() - start
                assert time.perf_counter() - start < 2.0, seen
        finally:
            client.patch(
                writer.url + path,
                json={"name": original},
                headers={**admin_headers(writer), "If-Match": "*"},
            )
    slowest = max(seen.values())
    print(f"write on one instance visible on the others after {slowest * 1000:.1f} ms")
    assert slowest < 0.1, seen


# -- orders while instances stop ---------------------------------------------------------------


@dataclass
class Attempt:
    at: float
    outcome: str  # a status code, or the transport error's name


@dataclass
class Log:
    attempts: list[Attempt] = field(default_factory=list)
    orders: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> order id
    users: list[str] = field(default_factory=list)
    reads: int = 0


async def customer(client: httpx.AsyncClient, n: int, log: Log) -> dict[str, str]:
    """A new customer (its own client address: the login limit is per address)."""
    xff = {"x-forwarded-for": f"198.51.100.{n + 1}"}
    email = f"lb-{uuid.uuid4().hex[:12]}@example.com"
    password = secrets.token_urlsafe(12)
    body = {"email": email, "password": password}
    r = await client.post("/api/v1/auth/register", json=body, headers=xff)
    assert r.status_code == 201, r.text
    log.users.append(r.json()["id"])
    r = await client.post("/api/v1/auth/login", json=body, headers=xff)
    assert r.status_code == 200, r.text
    return {"authorization": f"Bearer {r.json()['access_token']}"}


async def place_order(
    client: httpx.AsyncClient, headers: dict[str, str], pid: str, log: Log, t0: float
) -> None:
    """One order, retried under the same Idempotency-Key until it is placed (or replayed)."""
    key = uuid.uuid4().hex
    body = {"items": [{"product_id": pid, "quantity": 1}], "shipping_address": ADDRESS}
    deadline = time.monotonic() + 15
    while True:
        try:
            r = await client.post(
                "/api/v1/orders", json=body, headers={**headers, "idempotency-key": key}
            )
            outcome = str(r.status_code)
        except httpx.TransportError as exc:
            r, outcome = None, type(exc).__name__
        log.attempts.append(Attempt(time.monotonic() - t0, outcome))
        if r is not None and r.status_code in (200, 201):
            log.orders[key] = r.json()["id"]
            return
        # 409: the key is in flight (its first attempt died with its instance); 5xx: no answer.
        assert r is None or r.status_code == 409 or r.status_code >= 500, (r.status_code, r.text)
        assert time.monotonic() < deadline, f"order {key} never placed: {outcome}"
        await asyncio.sleep(0.2)


def test_orders_exactly_once_while_one_instance_drains_and_another_is_killed(
    cluster: Cluster, test_db_dsn: str
) -> None:
    pids = [
        str(r["id"]) for r in sql(test_db_dsn, "SELECT id FROM products ORDER BY id DESC LIMIT 2")
    ]
    sql(test_db_dsn, "UPDATE products SET stock = 1000000 WHERE id = ANY($1::uuid[])", pids)
    draining, killed = cluster.gateways[1], cluster.gateways[2]
    log = Log()
    events: dict[str, float] = {}

    async def client_loop(client: httpx.AsyncClient, n: int, stop: asyncio.Event) -> None:
        headers = await customer(client, n, log)
        t0 = events["start"]
        i = 0
        while not stop.is_set():
            i += 1
            if i % 3:
                target = f"/api/v1/products/{pids[i % 2]}" if i % 3 == 1 else "/api/v1/products"
                try:
                    r = await client.get(target, params={"limit": 5} if "?" not in target else None)
                    outcome = str(r.status_code)
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                log.attempts.append(Attempt(time.monotonic() - t0, outcome))
                log.reads += 1
            else:
                await place_order(client, headers, pids[i % 2], log, t0)

    async def run() -> None:
        events["start"] = time.monotonic()
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=cluster.lb, timeout=20, limits=limits) as client:
            tasks = [asyncio.create_task(client_loop(client, n, stop)) for n in range(CLIENTS)]
            await asyncio.sleep(2.0)
            events["sigterm"] = time.monotonic() - events["start"]
            # to the main process only, as a container runtime sends it (docker stop, kubelet)
            os.kill(draining.proc.pid, signal.SIGTERM)
            await asyncio.to_thread(draining.proc.wait, 30)
            events["drained"] = time.monotonic() - events["start"]
            await asyncio.sleep(1.0)
            events["sigkill"] = time.monotonic() - events["start"]
            os.killpg(killed.proc.pid, signal.SIGKILL)
            await asyncio.sleep(3.0)
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(run())
    before_kill = [a for a in log.attempts if a.at < events["sigkill"]]
    during_drain = [a for a in before_kill if a.at >= events["sigterm"]]
    failed = [a for a in before_kill if a.outcome not in ("200", "201")]
    after_kill = [a for a in log.attempts if a.at >= events["sigkill"]]
    drain_seconds = events["drained"] - events["sigterm"]
    print(
        f"{len(log.attempts)} requests ({log.reads} reads, {len(log.orders)} orders); "
        f"{len(during_drain)} while an instance drained ({drain_seconds:.1f} s); "
        f"{len(after_kill)} after the SIGKILL, of which "
        f"{sum(a.outcome not in ('200', '201') for a in after_kill)} failed and were retried"
    )
    # SIGTERM: the instance drains; not one request failed, none needed a retry.
    assert during_drain and not failed, failed
    assert draining.proc.returncode == 0 and drain_seconds >= 3.0
    # SIGKILL: whatever was lost in flight was retried and placed (place_order asserts that).
    assert any(a.at >= events["sigkill"] for a in log.attempts)
    # Exactly once: the customers' orders are the ones they were told about, one per key, and
    # every key is recorded as done.
    placed = sql(test_db_dsn, "SELECT id FROM orders WHERE user_id = ANY($1::uuid[])", log.users)
    assert sorted(str(r["id"]) for r in placed) == sorted(log.orders.values())
    assert len(set(log.orders.values())) == len(log.orders)
    keys = sql(
        test_db_dsn,
        "SELECT key, state FROM idempotency_keys WHERE user_id = ANY($1::uuid[])",
        log.users,
    )
    assert {r["key"]: r["state"] for r in keys} == dict.fromkeys(log.orders, "done")
