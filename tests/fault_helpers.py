"""Helpers for the fault drills: load from client threads that records what every request saw,
Granian's worker processes, and an order workload whose database state is checked afterwards.

Every request of a :class:`Load` opens a connection of its own, so the kernel spreads them over
the workers (``SO_REUSEPORT``) and a worker's death only costs the requests it had in hand.
"""

from __future__ import annotations

import collections
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from tests.payment_helpers import Customer, db, new_customer

__all__ = ["Load", "OrderBook", "Shot", "access_tokens", "process_state", "worker_pids"]


@dataclass(frozen=True)
class Shot:
    """One request: when it was sent and answered (monotonic), its status (0: no answer, the
    connection failed or was reset) and what the test's request function took from the answer."""

    started: float
    ended: float
    status: int
    info: Any = None
    error: str = ""


class Load:
    """``threads`` client threads calling ``request(client)`` in a loop until :meth:`stop`.

    ``request`` returns ``(response, info)``; a transport error is recorded as status 0."""

    def __init__(
        self,
        url: str,
        request: Callable[[httpx.Client], tuple[httpx.Response, Any]],
        *,
        threads: int = 4,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.request = request
        self.timeout = timeout
        self.shots: list[Shot] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection each request
        with httpx.Client(base_url=self.url, timeout=self.timeout, limits=limits) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response, info = self.request(client)
                    shot = Shot(started, time.monotonic(), response.status_code, info)
                except httpx.TransportError as exc:
                    shot = Shot(started, time.monotonic(), 0, None, repr(exc))
                    time.sleep(0.01)  # refused at once: do not spin
                with self._lock:
                    self.shots.append(shot)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Shot]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        with self._lock:
            return sorted(self.shots, key=lambda s: s.started)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def since(self, t: float) -> list[Shot]:
        with self._lock:
            return [s for s in self.shots if s.started >= t]

    @staticmethod
    def statuses(shots: list[Shot]) -> dict[int, int]:
        """Status -> count (0: no answer), for the test's report."""
        return dict(sorted(collections.Counter(s.status for s in shots).items()))


def access_tokens(url: str, n: int) -> list[dict[str, str]]:
    """``n`` Authorization headers of one new customer, each from a login of its own (so each
    token has its own ``jti``: the revocation check asks Redis about each)."""
    email = f"drill-{uuid.uuid4().hex[:12]}@example.com"
    password = secrets.token_urlsafe(12)
    address = f"198.51.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"
    headers: list[dict[str, str]] = []
    with httpx.Client(base_url=url, timeout=10, headers={"x-forwarded-for": address}) as c:
        r = c.post("/api/v1/auth/register", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        for _ in range(n):
            r = c.post("/api/v1/auth/login", json={"email": email, "password": password})
            assert r.status_code == 200, r.text
            headers.append({"authorization": f"Bearer {r.json()['access_token']}"})
    return headers


def worker_pids(main_pid: int) -> list[int]:
    """The live child processes of Granian's main process (its workers)."""
    pids: list[int] = []
    for task in os.listdir(f"/proc/{main_pid}/task"):
        try:
            with open(f"/proc/{main_pid}/task/{task}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
        except FileNotFoundError:
            continue
    return sorted(p for p in pids if process_state(p) not in ("", "Z"))


def process_state(pid: int) -> str:
    """The process's state letter (R, S, Z, ...); empty when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


@dataclass
class OrderBook:
    """Orders placed by one customer for one product of known stock, each under its own
    Idempotency-Key; :meth:`settle` retries every key whose outcome the client did not see, and
    :meth:`check` compares the database with what the clients were told."""

    dsn: str
    customer: Customer
    product_id: str
    price_cents: int
    initial_stock: int
    outcomes: dict[str, int] = field(default_factory=dict)  # key -> last status (0: none)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(
        cls, url: str, dsn: str, *, stock: int = 100_000, price_cents: int = 250
    ) -> OrderBook:
        """A new customer (registered through the API) and a product made in SQL."""
        customer = new_customer(url)
        product_id = str(uuid.uuid4())
        category_id = uuid.uuid4()
        db(
            dsn,
            "INSERT INTO categories (id, name, slug) VALUES ($1, 'Drill', $2)",
            category_id, f"drill-{secrets.token_hex(6)}",
        )  # fmt: skip
        db(
            dsn,
            "INSERT INTO products (id, sku, name, price_cents, category_id, stock) "
            "VALUES ($1, $2, 'Drill product', $3, $4, $5)",
            uuid.UUID(product_id), f"DRILL-{secrets.token_hex(8)}", price_cents, category_id, stock,
        )  # fmt: skip
        return cls(dsn, customer, product_id, price_cents, stock)

    def _post(self, client: httpx.Client, key: str) -> httpx.Response:
        body = {
            "items": [{"product_id": self.product_id, "quantity": _quantity(key)}],
            "shipping_address": "1 Drill Lane",
        }
        headers = {**self.customer.headers, "idempotency-key": key}
        return client.post("/api/v1/orders", json=body, headers=headers)

    def place(self, client: httpx.Client) -> tuple[httpx.Response, Any]:
        """A :class:`Load` request: one new order under a new key."""
        key = secrets.token_hex(12)
        with self.lock:
            self.outcomes[key] = 0
        response = self._post(client, key)
        with self.lock:
            self.outcomes[key] = response.status_code
        return response, key

    def settle(self, url: str, timeout: float = 30.0) -> int:
        """Retry (same key, same body) every order whose answer was not a 201 until it is one;
        returns how many were retried."""
        pending = [k for k, status in self.outcomes.items() if status != 201]
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=url, timeout=10) as client:
            for key in pending:
                while True:
                    try:
                        status = self._post(client, key).status_code
                    except httpx.TransportError:
                        status = 0
                    if status == 201:
                        break
                    assert time.monotonic() < deadline, f"order {key} still {status}"
                    time.sleep(0.5)  # 409 in flight (Retry-After: 1), or the server not back
                self.outcomes[key] = 201
        return len(pending)

    def check(self) -> dict[str, int]:
        """Assert: one order per key, each whole (one line, total = quantity x price, an
        idempotency record that is done), none without a key, and stock = initial - sold."""
        user = uuid.UUID(self.customer.id)
        orders = db(
            self.dsn,
            "SELECT o.id, o.total_cents, o.status, "
            "       (SELECT count(*) FROM order_items i WHERE i.order_id = o.id) AS lines, "
            "       (SELECT sum(quantity) FROM order_items i WHERE i.order_id = o.id) AS qty "
            "FROM orders o WHERE o.user_id = $1",
            user,
        )
        keys = db(
            self.dsn,
            "SELECT key, state, response_status, response_body FROM idempotency_keys "
            "WHERE user_id = $1",
            user,
        )
        by_key = {r["key"]: r for r in keys}
        assert set(by_key) == set(self.outcomes), "an idempotency record is missing or extra"
        assert all(r["state"] == "done" and r["response_status"] == 201 for r in keys)
        answered = {bytes(r["response_body"]).split(b'"id":"', 1)[1][:36].decode() for r in keys}
        assert len(orders) == len(self.outcomes) == len(answered), (
            f"{len(orders)} orders for {len(self.outcomes)} keys"
        )
        assert {str(o["id"]) for o in orders} == answered, "an order no key answered with"
        for o in orders:
            assert o["lines"] == 1 and o["status"] == "pending", dict(o)
            assert o["total_cents"] == o["qty"] * self.price_cents, dict(o)
        sold = sum(int(o["qty"]) for o in orders)
        assert sold == sum(_quantity(k) for k in self.outcomes)
        stock = db(self.dsn, "SELECT stock FROM products WHERE id = $1", uuid.UUID(self.product_id))
        assert stock[0]["stock"] == self.initial_stock - sold
        return {"orders": len(orders), "sold": sold, "stock": int(stock[0]["stock"])}


def _quantity(key: str) -> int:
    """1..3, fixed by the key (a retry sends the same body)."""
    return int(key[:2], 16) % 3 + 1
