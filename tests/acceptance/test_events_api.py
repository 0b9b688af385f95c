"""Events end to end through real gateway processes: outbox rows written in the database reach
the read models (order summary, analytics) and purge cached products, through the relay and
consumers the gateway workers run."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway
from tests.conftest import SUITE_RATE_LIMITS
from tests.events_helpers import connect

from cygate.infra.outbox import emit

_LOGIN = json.dumps(
    {**SUITE_RATE_LIMITS, "login": {"rate": 1000, "period": 60, "key": ["ip"], "mode": "exact"}}
)


@pytest.fixture(scope="module")
def gw(gateway_env: dict[str, str], seeded: dict[str, object]) -> Iterator[Gateway]:
    gw = start_gateway(gateway_env, extra_env={"CYGATE_RATE_LIMITS": _LOGIN})
    try:
        yield gw
    finally:
        output = stop_gateway(gw)
        assert "Traceback" not in output, output


def new_user(gw: Gateway) -> tuple[str, dict[str, str]]:
    """A registered customer: (user id, Bearer header)."""
    email, password = f"ev-{uuid.uuid4().hex[:12]}@example.com", secrets.token_urlsafe(12)
    with gw.client() as c:
        r = c.post("/api/v1/auth/register",
                   json={"email": email, "password": password, "name": "Events"})  # fmt: skip
        assert r.status_code == 201, r.text
        r = c.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        return _me(c, r.json()), {"Authorization": f"Bearer {r.json()['access_token']}"}


def _me(c: httpx.Client, tokens: dict[str, Any]) -> str:
    r = c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def write(dsn: str, *events: tuple[str, dict[str, Any]], sql: tuple[str, ...] = ()) -> list[int]:
    """Commit ``events`` (and optional statements) in one transaction, as a service would."""

    async def run() -> list[int]:
        conn = await connect(dsn)
        try:
            async with conn.transaction():
                for statement in sql:
                    await conn.execute(statement)
                ids = []
                for t, p in events:
                    agg, agg_id = t.split(".")[0], p.get("order_id", "")
                    oid = await emit(
                        conn, aggregate=agg, aggregate_id=agg_id, event_type=t, payload=p
                    )
                    ids.append(oid)
                return ids
        finally:
            await conn.close()

    return asyncio.run(run())


def query(dsn: str, sql: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        conn = await connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def eventually(check: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def order(user: str, total: int) -> dict[str, Any]:
    items = [{"product_id": str(uuid.uuid4()), "quantity": 1}]
    return {"order_id": str(uuid.uuid4()), "user_id": user, "total_cents": total,
            "currency": "EUR", "items": items}  # fmt: skip


def test_order_summary_is_the_callers_own(gw: Gateway, test_db_dsn: str) -> None:
    alice, alice_auth = new_user(gw)
    bob, bob_auth = new_user(gw)
    with gw.client() as c:
        zero = c.get("/api/v1/users/me/orders/summary", headers=alice_auth)
        assert zero.status_code == 200, zero.text
        assert zero.json()["orders_count"] == 0 and zero.json()["last_order_at"] is None
        assert "no-store" in zero.headers["cache-control"]

        a1, a2, b1 = order(alice, 1000), order(alice, 2500), order(bob, 700)
        write(test_db_dsn, ("order.created", a1), ("order.created", a2), ("order.created", b1))
        write(test_db_dsn, ("order.paid", {**a1, "payment_id": "p1", "amount_cents": 1000}))
        write(test_db_dsn, ("order.cancelled", a2))

        def alice_done() -> bool:
            r = c.get("/api/v1/users/me/orders/summary", headers=alice_auth)
            return r.status_code == 200 and r.json()["cancelled_orders"] == 1 and (
                r.json()["paid_orders"] == 1)  # fmt: skip

        eventually(alice_done, "alice's summary")
        body = c.get("/api/v1/users/me/orders/summary", headers=alice_auth).json()
        assert body["orders_count"] == 2 and body["open_orders"] == 0
        assert body["total_spent_cents"] == 1000 and body["last_order_at"] is not None

        def bob_done() -> bool:
            r = c.get("/api/v1/users/me/orders/summary", headers=bob_auth)
            return r.status_code == 200 and r.json()["orders_count"] == 1

        eventually(bob_done, "bob's summary")
        bob_body = c.get("/api/v1/users/me/orders/summary", headers=bob_auth).json()
        assert bob_body["open_orders"] == 1 and bob_body["total_spent_cents"] == 0


@pytest.mark.parametrize("auth", [None, "Bearer nope", "Basic dXNlcjpwYXNz"])
def test_order_summary_needs_a_token(gw: Gateway, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    r = httpx.get(gw.url + "/api/v1/users/me/orders/summary", headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_analytics_counts_each_event_once(gw: Gateway, test_db_dsn: str) -> None:
    kind = f"test.ping{secrets.token_hex(3)}"
    write(test_db_dsn, (kind, {"amount_cents": 150}), (kind, {"amount_cents": 50}))
    write(test_db_dsn, (kind, {}))
    admin = admin_headers(gw)

    def counted() -> list[dict[str, Any]]:
        r = httpx.get(gw.url + "/admin/analytics", headers=admin)
        assert r.status_code == 200, r.text
        return [i for i in r.json()["items"] if i["event_type"] == kind]

    eventually(lambda: bool(counted()) and counted()[0]["events"] == 3, "the analytics counts")
    time.sleep(0.5)  # a second application would show up here
    [item] = counted()
    assert item["events"] == 3 and item["amount_cents"] == 200
    rows = query(test_db_dsn, "SELECT count(*) AS n FROM processed_events p JOIN outbox o "
                 "ON o.id = p.event_id WHERE o.event_type = $1 AND p.consumer = 'analytics'",
                 kind)  # fmt: skip
    assert rows[0]["n"] == 3


def test_analytics_is_for_admins_and_checks_its_input(gw: Gateway) -> None:
    _, customer = new_user(gw)
    assert httpx.get(gw.url + "/admin/analytics").status_code == 401
    assert httpx.get(gw.url + "/admin/analytics", headers=customer).status_code == 403
    admin = admin_headers(gw)
    for bad in ("0", "367", "x", "-1"):
        r = httpx.get(gw.url + "/admin/analytics", params={"days": bad}, headers=admin)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["errors"][0]["field"].endswith("days")
    r = httpx.get(gw.url + "/admin/analytics", params={"days": "30"}, headers=admin)
    assert r.status_code == 200 and r.json()["days"] == 30


def _products(dsn: str, n: int) -> list[str]:
    sql = "SELECT id::text AS id FROM products WHERE stock > 0 ORDER BY sku LIMIT $1"
    rows = query(dsn, sql, n)
    return [r["id"] for r in rows]


def test_product_events_purge_the_cached_product_on_every_worker(
    gw: Gateway, test_db_dsn: str
) -> None:
    changed, control, stocked = _products(test_db_dsn, 3)
    with gw.client() as c:
        for pid in (changed, control, stocked):
            c.get(f"/api/v1/products/{pid}")
            second = c.get(f"/api/v1/products/{pid}")
            assert second.status_code == 200 and second.headers["x-cache"].startswith("hit")
        old_control = c.get(f"/api/v1/products/{control}").json()["name"]
        new = f"renamed {secrets.token_hex(4)}"
        # The control changes without an event: only its TTL would ever refresh it.
        write(test_db_dsn, sql=(f"UPDATE products SET name = 'control {new}' "
                                f"WHERE id = '{control}'",))  # fmt: skip
        write(
            test_db_dsn,
            ("product.updated", {"product_id": changed, "category_id": None}),
            sql=(f"UPDATE products SET name = '{new}' WHERE id = '{changed}'",),
        )
        write(test_db_dsn, ("order.created", {**order(str(uuid.uuid4()), 10),
                                              "items": [{"product_id": stocked, "quantity": 1}]}),
              sql=(f"UPDATE products SET stock = stock - 1 WHERE id = '{stocked}'",))  # fmt: skip
        stock = query(test_db_dsn, f"SELECT stock FROM products WHERE id = '{stocked}'")[0][0]

        def fresh(pid: str, field: str, value: object) -> Callable[[], bool]:
            # Several reads: each may land on either worker, and every worker must have purged.
            return lambda: all(
                c.get(f"/api/v1/products/{pid}").json()[field] == value for _ in range(6)
            )

        eventually(fresh(changed, "name", new), "the renamed product")
        eventually(fresh(stocked, "stock", stock), "the new stock")
        assert c.get(f"/api/v1/products/{control}").json()["name"] == old_control
