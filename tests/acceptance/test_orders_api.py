"""Orders through real gateway processes: placing (idempotent, atomic stock), reading, BOLA,
mass assignment, bad inputs, cancel/ship, expiry, and the concurrency claims of issue 7
(no oversell and one order per key across two gateway processes)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway

pytestmark = pytest.mark.acceptance

ORDER_FIELDS = {
    "id", "user_id", "status", "items", "total_cents", "currency", "shipping_address",
    "created_at", "updated_at", "expires_at",
}  # fmt: skip
ADDRESS = {"name": "Ada Lovelace", "line1": "1 Analytical St", "city": "London", "country": "GB"}
GATEWAY_EXTRA = {
    "CYGATE_TRUSTED_PROXIES": "127.0.0.1",  # each test user logs in from an address of its own
    "CYGATE_DB_POOL_MAX": "8",
}


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def db(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(dsn, sql, *args))


@dataclass
class User:
    id: str
    headers: dict[str, str]

    def key(self) -> dict[str, str]:
        """Headers with a fresh Idempotency-Key."""
        return {**self.headers, "idempotency-key": uuid.uuid4().hex}


def new_user(gw: Gateway) -> User:
    address = f"203.0.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"
    email = f"buyer-{uuid.uuid4().hex[:12]}@example.com"
    password = secrets.token_urlsafe(12)
    with gw.client(headers={"x-forwarded-for": address}) as c:
        r = c.post("/api/v1/auth/register", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        r = c.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
    return User(user_id, {"authorization": f"Bearer {r.json()['access_token']}"})


def is_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    return body


@pytest.fixture(scope="module")
def gws(gateway_env: dict[str, str], seeded: dict[str, object]) -> Iterator[list[Gateway]]:
    """Two gateway processes over the same database."""
    started: list[Gateway] = []
    try:
        for _ in range(2):
            gw = start_gateway(gateway_env, workers=1, extra_env=GATEWAY_EXTRA)
            started.append(gw)  # stopped below even if the second one fails to start
        yield started
    finally:
        for gw in started:
            output = stop_gateway(gw)
            assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def gw(gws: list[Gateway]) -> Gateway:
    return gws[0]


class Products:
    """Seeded products handed out one test at a time, with the stock a test asks for."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.ids = [str(r["id"]) for r in db(dsn, "SELECT id FROM products ORDER BY id DESC")]

    def take(self, stock: int, price: int | None = None) -> str:
        pid = self.ids.pop()
        db(self.dsn, "UPDATE products SET stock = $2, currency = 'EUR' WHERE id = $1",
           uuid.UUID(pid), stock)  # fmt: skip
        if price is not None:
            db(
                self.dsn,
                "UPDATE products SET price_cents = $2 WHERE id = $1",
                uuid.UUID(pid),
                price,
            )
        return pid

    def stock(self, pid: str) -> int:
        return int(db(self.dsn, "SELECT stock FROM products WHERE id = $1", uuid.UUID(pid))[0][0])


@pytest.fixture(scope="module")
def products(test_db_dsn: str, seeded: dict[str, object]) -> Products:
    return Products(test_db_dsn)


@pytest.fixture(scope="module")
def alice(gw: Gateway) -> User:
    return new_user(gw)


@pytest.fixture(scope="module")
def bob(gw: Gateway) -> User:
    return new_user(gw)


def order_body(*lines: tuple[str, int], **extra: Any) -> dict[str, Any]:
    return {
        "items": [{"product_id": pid, "quantity": q} for pid, q in lines],
        "shipping_address": ADDRESS,
        **extra,
    }


def place(gw: Gateway, user: User, *lines: tuple[str, int]) -> dict[str, Any]:
    with gw.client() as c:
        r = c.post("/api/v1/orders", json=order_body(*lines), headers=user.key())
    assert r.status_code == 201, r.text
    return dict(r.json())


# --- placing ---------------------------------------------------------------------------------


def test_place_order_prices_from_catalog_and_reserves_stock(
    gw: Gateway, alice: User, products: Products, test_db_dsn: str
) -> None:
    a, b = products.take(10, price=1250), products.take(5, price=399)
    with gw.client() as c:
        r = c.post("/api/v1/orders", json=order_body((a, 2), (b, 3)), headers=alice.key())
        assert r.status_code == 201, r.text
        order = r.json()
        assert set(order) == ORDER_FIELDS
        assert order["status"] == "pending" and order["user_id"] == alice.id
        assert order["total_cents"] == 2 * 1250 + 3 * 399 and order["currency"] == "EUR"
        lines = sorted(
            (i["product_id"], i["quantity"], i["unit_price_cents"]) for i in order["items"]
        )
        assert lines == sorted([(a, 2, 1250), (b, 3, 399)])
        assert order["shipping_address"] == ADDRESS and order["expires_at"] > order["created_at"]
        assert r.headers["location"] == f"/api/v1/orders/{order['id']}"
        assert "private" in r.headers["cache-control"]
        assert "idempotent-replayed" not in r.headers
        got = c.get(r.headers["location"], headers=alice.headers)
        assert got.status_code == 200 and got.json() == order
    assert (products.stock(a), products.stock(b)) == (8, 2)
    events = db(test_db_dsn, "SELECT event_type, payload FROM outbox WHERE aggregate_id = $1",
                order["id"])  # fmt: skip
    assert [e["event_type"] for e in events] == ["order.created"]
    assert json.loads(events[0]["payload"])["total_cents"] == order["total_cents"]


def test_a_text_address_is_accepted(gw: Gateway, alice: User, products: Products) -> None:
    pid = products.take(1)
    with gw.client() as c:
        r = c.post(
            "/api/v1/orders",
            json={"items": [{"product_id": pid, "quantity": 1}], "shipping_address": "1 Main St"},
            headers=alice.key(),
        )
    assert r.status_code == 201, r.text
    assert r.json()["shipping_address"] == "1 Main St"


def test_insufficient_stock_is_409_and_nothing_is_reserved(
    gw: Gateway, alice: User, products: Products
) -> None:
    plenty, scarce = products.take(100), products.take(2)
    with gw.client() as c:
        r = c.post("/api/v1/orders", json=order_body((plenty, 5), (scarce, 3)), headers=alice.key())
    body = is_problem(r, 409)
    assert body["items"] == [{"product_id": scarce, "requested": 3, "available": 2}]
    assert (products.stock(plenty), products.stock(scarce)) == (100, 2)


@pytest.mark.parametrize(
    "field, value",
    [("status", "paid"), ("total_cents", 1), ("owner_id", str(uuid.uuid4())),
     ("user_id", str(uuid.uuid4())), ("currency", "USD"), ("id", str(uuid.uuid4()))],
)  # fmt: skip
def test_mass_assignment_is_422(
    gw: Gateway, alice: User, products: Products, field: str, value: Any
) -> None:
    pid = products.ids[-1]
    with gw.client() as c:
        r = c.post(
            "/api/v1/orders", json=order_body((pid, 1), **{field: value}), headers=alice.key()
        )
    body = is_problem(r, 422)
    assert any(field in e["field"] or field in e["message"] for e in body["errors"]), body


@pytest.mark.parametrize("field", ["unit_price_cents", "price_cents", "total_cents"])
def test_mass_assignment_of_a_line_price_is_422(
    gw: Gateway, alice: User, products: Products, field: str
) -> None:
    pid = products.ids[-1]
    body = {"items": [{"product_id": pid, "quantity": 1, field: 1}], "shipping_address": ADDRESS}
    with gw.client() as c:
        r = c.post("/api/v1/orders", json=body, headers=alice.key())
    assert field in str(is_problem(r, 422)["errors"])


BAD_BODIES: list[tuple[str, Any]] = [
    ("quantity 0", {"items": [{"product_id": "P", "quantity": 0}], "shipping_address": "x"}),
    ("quantity 1001", {"items": [{"product_id": "P", "quantity": 1001}], "shipping_address": "x"}),
    ("quantity x", {"items": [{"product_id": "P", "quantity": "x"}], "shipping_address": "x"}),
    ("quantity 1.5", {"items": [{"product_id": "P", "quantity": 1.5}], "shipping_address": "x"}),
    ("quantity true", {"items": [{"product_id": "P", "quantity": True}], "shipping_address": "x"}),
    ("quantity missing", {"items": [{"product_id": "P"}], "shipping_address": "x"}),
    ("empty items", {"items": [], "shipping_address": "x"}),
    ("101 items", {"items": [{"product_id": str(uuid.uuid4()), "quantity": 1}] * 101,
                   "shipping_address": "x"}),
    ("items missing", {"shipping_address": "x"}),
    ("items not a list", {"items": {"product_id": "P"}, "shipping_address": "x"}),
    ("product id not a uuid", {"items": [{"product_id": "nope", "quantity": 1}],
                               "shipping_address": "x"}),
    ("address missing", {"items": [{"product_id": "P", "quantity": 1}]}),
    ("address empty", {"items": [{"product_id": "P", "quantity": 1}], "shipping_address": ""}),
    ("address nested", {"items": [{"product_id": "P", "quantity": 1}],
                        "shipping_address": {"geo": {"lat": 1}}}),
    ("body a list", [1, 2]),
    ("body null", None),
]  # fmt: skip


@pytest.mark.parametrize("name, body", BAD_BODIES, ids=[n for n, _ in BAD_BODIES])
def test_bad_bodies_are_422(
    gw: Gateway, alice: User, products: Products, name: str, body: Any
) -> None:
    text = httpx.Request("POST", "/", json=body).content.replace(
        b'"P"', f'"{products.ids[-1]}"'.encode()
    )
    with gw.client() as c:
        r = c.post("/api/v1/orders", content=text,
                   headers={**alice.key(), "content-type": "application/json"})  # fmt: skip
    assert is_problem(r, 422)["errors"], r.text


@pytest.mark.parametrize("raw", [b"{nope", b'{"items": [', b"\xff\xfe"])
def test_malformed_json_is_400(gw: Gateway, alice: User, raw: bytes) -> None:
    with gw.client() as c:
        r = c.post("/api/v1/orders", content=raw,
                   headers={**alice.key(), "content-type": "application/json"})  # fmt: skip
    is_problem(r, 400)


def test_empty_body_is_422(gw: Gateway, alice: User) -> None:
    with gw.client() as c:
        r = c.post("/api/v1/orders", content=b"",
                   headers={**alice.key(), "content-type": "application/json"})  # fmt: skip
    assert is_problem(r, 422)["errors"]


def test_duplicate_products_are_422(gw: Gateway, alice: User, products: Products) -> None:
    pid = products.take(10)
    with gw.client() as c:
        r = c.post("/api/v1/orders", json=order_body((pid, 1), (pid, 2)), headers=alice.key())
    assert is_problem(r, 422)["errors"][0]["field"] == "body.items[1].product_id"
    assert products.stock(pid) == 10


def test_unknown_product_is_422_naming_the_line(
    gw: Gateway, alice: User, products: Products
) -> None:
    known, unknown = products.take(10), str(uuid.uuid4())
    with gw.client() as c:
        r = c.post("/api/v1/orders", json=order_body((known, 1), (unknown, 1)), headers=alice.key())
    errors = is_problem(r, 422)["errors"]
    assert errors == [{"field": "body.items[1].product_id", "message": f"no product {unknown}"}]
    assert products.stock(known) == 10


def test_mixed_currencies_are_422(
    gw: Gateway, alice: User, products: Products, test_db_dsn: str
) -> None:
    eur, usd = products.take(10), products.take(10)
    db(test_db_dsn, "UPDATE products SET currency = 'USD' WHERE id = $1", uuid.UUID(usd))
    with gw.client() as c:
        r = c.post("/api/v1/orders", json=order_body((eur, 1), (usd, 1)), headers=alice.key())
    assert is_problem(r, 422)["errors"][0]["field"] == "body.items"
    assert (products.stock(eur), products.stock(usd)) == (10, 10)


@pytest.mark.parametrize(
    "key",
    [None, "", "x" * 256, "has space", "ümlaut"],
    ids=["missing", "empty", "256", "space", "utf8"],
)
def test_bad_idempotency_key_is_400(
    gw: Gateway, alice: User, products: Products, key: str | None
) -> None:
    pid = products.take(5)
    headers: dict[str, Any] = dict(alice.headers)
    if key is not None:
        headers["idempotency-key"] = key.encode()  # bytes: httpx sends non-ASCII as is
    with gw.client() as c:
        r = c.post("/api/v1/orders", json=order_body((pid, 1)), headers=headers)
    is_problem(r, 400)
    assert products.stock(pid) == 5


def test_no_token_is_401(gw: Gateway, products: Products) -> None:
    with gw.client() as c:
        r = c.post("/api/v1/orders", json=order_body((products.ids[-1], 1)),
                   headers={"idempotency-key": "k"})  # fmt: skip
        is_problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
        for path in ("/api/v1/orders", f"/api/v1/orders/{uuid.uuid4()}"):
            is_problem(c.get(path), 401)
        is_problem(c.post(f"/api/v1/orders/{uuid.uuid4()}/cancel"), 401)
        bad = {"authorization": "Bearer not-a-token", "idempotency-key": "k"}
        is_problem(
            c.post("/api/v1/orders", json=order_body((products.ids[-1], 1)), headers=bad), 401
        )


# --- idempotency -----------------------------------------------------------------------------


def test_same_key_same_body_replays_the_first_response(
    gw: Gateway, gws: list[Gateway], alice: User, products: Products, test_db_dsn: str
) -> None:
    pid = products.take(10)
    headers = alice.key()
    body = order_body((pid, 2))
    with gw.client() as c:
        first = c.post("/api/v1/orders", json=body, headers=headers)
    assert first.status_code == 201
    for other in gws:  # the other process replays it too
        with other.client() as c:
            # same body, other key order and spacing: the canonical form is what counts
            text = b'{ "shipping_address": %s, "items": [{"quantity": 2, "product_id": "%s"}] }' % (
                httpx.Request("POST", "/", json=ADDRESS).content,
                pid.encode(),
            )
            again = c.post("/api/v1/orders", content=text,
                           headers={**headers, "content-type": "application/json"})  # fmt: skip
        assert again.status_code == 201
        assert again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"] == first.headers["location"]
    assert products.stock(pid) == 8
    count = db(test_db_dsn, "SELECT count(*) FROM orders WHERE user_id = $1 AND id = $2",
               uuid.UUID(alice.id), uuid.UUID(first.json()["id"]))  # fmt: skip
    assert count[0][0] == 1


def test_same_key_other_body_is_422(gw: Gateway, alice: User, products: Products) -> None:
    pid = products.take(10)
    headers = alice.key()
    with gw.client() as c:
        assert (
            c.post("/api/v1/orders", json=order_body((pid, 1)), headers=headers).status_code == 201
        )
        r = c.post("/api/v1/orders", json=order_body((pid, 2)), headers=headers)
    assert is_problem(r, 422)["errors"][0]["field"] == "header.idempotency-key"
    assert products.stock(pid) == 9


def test_a_refusal_is_replayed_too(gw: Gateway, alice: User, products: Products) -> None:
    """An outcome the order decided (409 insufficient stock) is that key's answer; a new key
    is a new attempt."""
    pid = products.take(1)
    headers = alice.key()
    with gw.client() as c:
        first = c.post("/api/v1/orders", json=order_body((pid, 2)), headers=headers)
        is_problem(first, 409)
        db(products.dsn, "UPDATE products SET stock = 5 WHERE id = $1", uuid.UUID(pid))
        again = c.post("/api/v1/orders", json=order_body((pid, 2)), headers=headers)
        assert again.status_code == 409 and again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
        fresh = c.post("/api/v1/orders", json=order_body((pid, 2)), headers=alice.key())
        assert fresh.status_code == 201


def test_keys_belong_to_their_user(gw: Gateway, alice: User, bob: User, products: Products) -> None:
    pid = products.take(10)
    key = uuid.uuid4().hex
    with gw.client() as c:
        a = c.post("/api/v1/orders", json=order_body((pid, 1)),
                   headers={**alice.headers, "idempotency-key": key})  # fmt: skip
        b = c.post("/api/v1/orders", json=order_body((pid, 1)),
                   headers={**bob.headers, "idempotency-key": key})  # fmt: skip
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"] and "idempotent-replayed" not in b.headers
    assert products.stock(pid) == 8


# A backend of this database waiting on a lock (the order request held on the product's row).
_WAITING_ON_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


def test_same_key_while_the_first_is_in_flight_is_409(
    gw: Gateway, alice: User, products: Products, test_db_dsn: str
) -> None:
    """Hold the product's row lock from outside, so the first request waits inside its
    transaction; the second one with the same key must not wait: 409 at once."""
    pid = products.take(10)
    headers = alice.key()
    body = order_body((pid, 1))

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        conn = await asyncpg.connect(test_db_dsn)
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", uuid.UUID(pid))
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
                first = asyncio.create_task(c.post("/api/v1/orders", json=body, headers=headers))
                # Until the first one holds the key and waits on the lock (its claim is not
                # committed: the advisory lock of the key is what the second one meets).
                for _ in range(200):
                    if await conn.fetchval(_WAITING_ON_A_LOCK):
                        break
                    await asyncio.sleep(0.02)
                second = await c.post("/api/v1/orders", json=body, headers=headers)
                await tx.rollback()
                return await first, second
        finally:
            await conn.close()

    first, second = asyncio.run(scenario())
    assert first.status_code == 201, first.text
    is_problem(second, 409)
    assert second.headers["retry-after"] == "1"
    assert products.stock(pid) == 9


def test_fifty_concurrent_requests_with_one_key_across_two_processes_make_one_order(
    gws: list[Gateway], alice: User, products: Products, test_db_dsn: str
) -> None:
    pid = products.take(100)
    headers = alice.key()
    body = order_body((pid, 1))

    async def burst() -> list[httpx.Response]:
        clients = [httpx.AsyncClient(base_url=g.url, timeout=30) for g in gws]
        try:
            return await asyncio.gather(
                *(clients[n % 2].post("/api/v1/orders", json=body, headers=headers)
                  for n in range(50))
            )  # fmt: skip
        finally:
            for c in clients:
                await c.aclose()

    responses = asyncio.run(burst())
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert len({r.json()["id"] for r in created}) == 1
    assert sum(1 for r in created if "idempotent-replayed" not in r.headers) == 1
    rows = db(test_db_dsn, "SELECT count(*) FROM order_items WHERE product_id = $1", uuid.UUID(pid))
    assert rows[0][0] == 1
    assert products.stock(pid) == 99


# --- no oversell -----------------------------------------------------------------------------


def test_no_oversell_200_concurrent_orders_for_stock_50_across_two_processes(
    gws: list[Gateway], products: Products, test_db_dsn: str
) -> None:
    pid = products.take(50)
    buyers = [new_user(gws[n % 2]) for n in range(4)]

    async def storm() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        clients = [httpx.AsyncClient(base_url=g.url, timeout=60, limits=limits) for g in gws]
        try:
            return await asyncio.gather(
                *(clients[n % 2].post("/api/v1/orders", json=order_body((pid, 1)),
                                      headers=buyers[n % 4].key())
                  for n in range(200))
            )  # fmt: skip
        finally:
            for c in clients:
                await c.aclose()

    responses = asyncio.run(storm())
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 50, 409: 150}, statuses
    assert products.stock(pid) == 0
    sold = db(test_db_dsn, "SELECT count(*), sum(quantity) FROM order_items WHERE product_id = $1",
              uuid.UUID(pid))  # fmt: skip
    assert tuple(sold[0]) == (50, 50)


# --- reading and BOLA ------------------------------------------------------------------------


def test_another_users_order_is_404(
    gw: Gateway, alice: User, bob: User, products: Products
) -> None:
    pid = products.take(10)
    order = place(gw, alice, (pid, 1))
    with gw.client() as c:
        is_problem(c.get(f"/api/v1/orders/{order['id']}", headers=bob.headers), 404)
        is_problem(c.post(f"/api/v1/orders/{order['id']}/cancel", headers=bob.headers), 404)
        is_problem(c.get(f"/api/v1/orders/{uuid.uuid4()}", headers=bob.headers), 404)
        listed = c.get("/api/v1/orders", params={"limit": 100}, headers=bob.headers).json()
        assert order["id"] not in {o["id"] for o in listed["items"]}
        # still pending, stock still reserved
        assert (
            c.get(f"/api/v1/orders/{order['id']}", headers=alice.headers).json()["status"]
            == "pending"
        )
        admin = admin_headers(gw)
        assert c.get(f"/api/v1/orders/{order['id']}", headers=admin).status_code == 200
    assert products.stock(pid) == 9


def test_list_pages_through_my_orders_newest_first(gw: Gateway, products: Products) -> None:
    me = new_user(gw)
    pid = products.take(100)
    made = [place(gw, me, (pid, 1))["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    with gw.client() as c:
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            r = c.get("/api/v1/orders", params=params, headers=me.headers)
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["items"]) <= 2
            seen += [o["id"] for o in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(made))
        for params in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"cursor": "garbage!"}):
            is_problem(c.get("/api/v1/orders", params=params, headers=me.headers), 422)
        admin = c.get("/api/v1/orders", params={"limit": 100}, headers=admin_headers(gw)).json()
        owners = {o["user_id"] for o in admin["items"]}
        assert me.id in owners and len(owners) > 1


# --- cancel and ship -------------------------------------------------------------------------


def test_cancel_releases_stock_once_and_is_idempotent(
    gw: Gateway, alice: User, products: Products, test_db_dsn: str
) -> None:
    pid = products.take(10)
    order = place(gw, alice, (pid, 4))
    assert products.stock(pid) == 6
    with gw.client() as c:
        r = c.post(f"/api/v1/orders/{order['id']}/cancel", headers=alice.headers)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        again = c.post(f"/api/v1/orders/{order['id']}/cancel", headers=alice.headers)
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert products.stock(pid) == 10
    events = db(test_db_dsn, "SELECT event_type FROM outbox WHERE aggregate_id = $1 ORDER BY id",
                order["id"])  # fmt: skip
    assert [e[0] for e in events] == ["order.created", "order.cancelled"]


def test_paid_orders_cannot_be_cancelled_and_only_admins_ship(
    gw: Gateway, alice: User, products: Products, test_db_dsn: str
) -> None:
    pid = products.take(10)
    order = place(gw, alice, (pid, 1))
    admin = admin_headers(gw)
    with gw.client() as c:
        ship = f"/api/v1/orders/{order['id']}/ship"
        is_problem(c.post(ship, headers=alice.headers), 403)
        is_problem(c.post(ship, headers=admin), 409)  # pending: not paid yet
        db(test_db_dsn, "UPDATE orders SET status = 'paid' WHERE id = $1", uuid.UUID(order["id"]))
        is_problem(c.post(f"/api/v1/orders/{order['id']}/cancel", headers=alice.headers), 409)
        r = c.post(ship, headers=admin)
        assert r.status_code == 200 and r.json()["status"] == "shipped"
        is_problem(c.post(f"/api/v1/orders/{order['id']}/cancel", headers=admin), 409)
    assert products.stock(pid) == 9


# --- expiry ----------------------------------------------------------------------------------


def test_unpaid_orders_expire_and_release_stock(
    gateway_env: dict[str, str], seeded: dict[str, object], products: Products, test_db_dsn: str
) -> None:
    extra = {
        **GATEWAY_EXTRA,
        "CYGATE_ORDER_TTL_SECONDS": "1",
        "CYGATE_ORDER_EXPIRY_INTERVAL": "0.2",
    }
    gw = start_gateway(gateway_env, workers=2, extra_env=extra)
    try:
        user = new_user(gw)
        pid = products.take(10)
        order = place(gw, user, (pid, 3))
        assert products.stock(pid) == 7
        deadline = time.monotonic() + 20
        with gw.client() as c:
            while time.monotonic() < deadline:
                status = c.get(f"/api/v1/orders/{order['id']}", headers=user.headers).json()[
                    "status"
                ]
                if status != "pending":
                    break
                time.sleep(0.2)
            assert status == "expired"
            is_problem(c.post(f"/api/v1/orders/{order['id']}/cancel", headers=user.headers), 409)
    finally:
        output = stop_gateway(gw)
        assert "Traceback" not in output, output
    assert products.stock(pid) == 10
    events = db(test_db_dsn, "SELECT event_type FROM outbox WHERE aggregate_id = $1 ORDER BY id",
                order["id"])  # fmt: skip
    assert [e[0] for e in events] == ["order.created", "order.expired"]


# --- the product cache -----------------------------------------------------------------------


def test_a_cached_product_page_shows_the_reserved_stock_soon(
    gws: list[Gateway], alice: User, products: Products
) -> None:
    """Placing an order purges the product's cached page on every process (coalesced per
    worker over at most 50 ms)."""
    pid = products.take(10)
    # An earlier test module may have left this product's page (with its old stock) in L2, the
    # Redis tier this session's gateways share; take() wrote the stock behind the cache's back.
    with gws[0].client() as c:
        r = c.post(
            "/admin/cache/purge", json={"tags": [f"product:{pid}"]}, headers=admin_headers(gws[0])
        )
        assert r.status_code == 200, r.text
    for gw in gws:  # fill the cache of both processes
        with gw.client() as c:
            c.get(f"/api/v1/products/{pid}")
            assert c.get(f"/api/v1/products/{pid}").json()["stock"] == 10
    place(gws[0], alice, (pid, 3))
    for gw in gws:
        deadline = time.monotonic() + 10
        with gw.client() as c:
            while time.monotonic() < deadline:
                stock = c.get(f"/api/v1/products/{pid}").json()["stock"]
                if stock == 7:
                    break
                time.sleep(0.05)
        assert stock == 7


# --- crash safety ----------------------------------------------------------------------------


def test_a_gateway_killed_mid_order_leaves_no_order_and_a_retry_makes_exactly_one(
    gateway_env: dict[str, str], seeded: dict[str, object], products: Products, test_db_dsn: str
) -> None:
    """SIGKILL the gateway while an order is inside its transaction (held on a product row lock
    taken from outside): nothing is reserved or created, and the claim of the key, taken in
    that transaction, is gone with it, so the retry with the same key runs at once (no in-flight
    wait) and makes exactly one order."""
    extra = GATEWAY_EXTRA  # the default in-flight timeout (60 s): the retry must not need it
    pid = products.take(10)
    body = order_body((pid, 2))

    async def crash(gw: Gateway, headers: dict[str, str]) -> None:
        conn = await asyncpg.connect(test_db_dsn)
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", uuid.UUID(pid))
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
                pending = asyncio.create_task(c.post("/api/v1/orders", json=body, headers=headers))
                for _ in range(250):  # until the request holds its key (and waits on the lock)
                    if await conn.fetchval(_WAITING_ON_A_LOCK):
                        break
                    await asyncio.sleep(0.02)
                os.killpg(gw.proc.pid, signal.SIGKILL)
                with pytest.raises(httpx.TransportError):
                    await pending
            await tx.rollback()
        finally:
            await conn.close()

    first = start_gateway(gateway_env, workers=1, extra_env=extra)
    try:
        user = new_user(first)
        headers = user.key()
        asyncio.run(crash(first, headers))
    finally:
        stop_gateway(first)
    assert products.stock(pid) == 10
    state = db(test_db_dsn, "SELECT state FROM idempotency_keys WHERE key = $1",
               headers["idempotency-key"])  # fmt: skip
    assert [r[0] for r in state] == []
    assert db(test_db_dsn, "SELECT count(*) FROM order_items WHERE product_id = $1",
              uuid.UUID(pid))[0][0] == 0  # fmt: skip
    second = start_gateway(gateway_env, workers=1, extra_env=extra)
    try:
        with second.client() as c:
            r = c.post("/api/v1/orders", json=body, headers=headers)
            assert r.status_code == 201, r.text
            again = c.post("/api/v1/orders", json=body, headers=headers)
            assert again.headers["idempotent-replayed"] == "true"
            assert again.json()["id"] == r.json()["id"]
    finally:
        output = stop_gateway(second)
        assert "Traceback" not in output, output
    assert products.stock(pid) == 8
    rows = db(test_db_dsn, "SELECT count(*) FROM order_items WHERE product_id = $1", uuid.UUID(pid))
    assert rows[0][0] == 1
