"""Helpers for the fault drills: load from client threads that records what every request saw,
Granian's worker processes, and an order and payment workload whose database state (and the
payment processor simulator's ledger) is checked afterwards.

Every request of a :class:`Load` opens a connection of its own, so the kernel spreads them over
the workers (``SO_REUSEPORT``) and a worker's death only costs the requests it had in hand.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from tests.payment_helpers import Customer, db, new_customer

__all__ = [
    "Load",
    "OrderBook",
    "PaymentBook",
    "Shot",
    "access_tokens",
    "process_state",
    "worker_pids",
]


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

    ``request`` returns ``(response, info)``, or None when it had nothing to send (nothing is
    recorded then); a transport error is recorded as status 0."""

    def __init__(
        self,
        url: str,
        request: Callable[[httpx.Client], tuple[httpx.Response, Any] | None],
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
                    sent = self.request(client)
                    if sent is None:
                        continue
                    response, info = sent
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
    token has its own ``jti``, a verification and a revocation look-up of its own)."""
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
    # ids of the orders a client was told were placed (201), for a PaymentBook to pay
    placed: queue.SimpleQueue[str] = field(default_factory=queue.SimpleQueue)

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
        if response.status_code == 201:
            self.placed.put(response.json()["id"])
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
        idempotency record that is done), none without a key, and stock = initial - sold.
        An order is pending or paid (:meth:`PaymentBook.check` says which it must be)."""
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
            "WHERE user_id = $1 AND path = '/api/v1/orders'",
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
            assert o["lines"] == 1 and o["status"] in ("pending", "paid"), dict(o)
            assert o["total_cents"] == o["qty"] * self.price_cents, dict(o)
        sold = sum(int(o["qty"]) for o in orders)
        assert sold == sum(_quantity(k) for k in self.outcomes)
        stock = db(self.dsn, "SELECT stock FROM products WHERE id = $1", uuid.UUID(self.product_id))
        assert stock[0]["stock"] == self.initial_stock - sold
        return {"orders": len(orders), "sold": sold, "stock": int(stock[0]["stock"])}


def _quantity(key: str) -> int:
    """1..3, fixed by the key (a retry sends the same body)."""
    return int(key[:2], 16) % 3 + 1


# Statuses after which a client sends the same payment again under the same Idempotency-Key:
# no answer (0), the key or the order's last attempt still in flight (409), unavailable (5xx).
_RETRY = frozenset({0, 409}) | frozenset(range(500, 600))


@dataclass
class _Payment:
    """One payment request as a client keeps it: the order, its Idempotency-Key, the card token,
    the last status seen (0: none yet) and the payment the 201 described."""

    order_id: str
    key: str
    token: str
    status: int = 0
    answer: dict[str, Any] = field(default_factory=dict)
    not_before: float = 0.0
    sends: int = 0


@dataclass
class PaymentBook:
    """Payments for the orders an :class:`OrderBook` placed, through the processor simulator at
    ``sim_url``, as a careful client makes them: each under its own Idempotency-Key, sent again
    under that key (same body) after no answer, a 409 or a 5xx; a declined card (a quarter of
    the orders, by id) is followed by a new payment under a new key with a card that approves.

    :meth:`settle` retries until every request sent has its 201; :meth:`check` then compares the
    database and the processor's ledger with what the clients were told."""

    orders: OrderBook
    sim_url: str
    sent: list[_Payment] = field(default_factory=list)
    retries: collections.deque[_Payment] = field(default_factory=collections.deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _post(self, client: httpx.Client, p: _Payment) -> httpx.Response:
        headers = {**self.orders.customer.headers, "idempotency-key": p.key}
        body = {"payment_method_token": p.token}
        return client.post(f"/api/v1/orders/{p.order_id}/payments", json=body, headers=headers)

    def _next(self) -> _Payment | None:
        """A retry that is due, else a payment for the next order placed, else None."""
        with self.lock:
            if self.retries and self.retries[0].not_before <= time.monotonic():
                return self.retries.popleft()
        try:
            order_id = self.orders.placed.get_nowait()
        except queue.Empty:
            return None
        token = "tok_decline" if int(order_id[-2:], 16) % 4 == 0 else "tok_approve"
        p = _Payment(order_id, secrets.token_hex(12), token)
        with self.lock:
            self.sent.append(p)
        return p

    def _send(self, client: httpx.Client, p: _Payment) -> httpx.Response:
        """Send ``p`` once; queue what the client does next (the same request again, or after a
        decline a new payment under a new key), or nothing when it is settled."""
        p.sends += 1
        try:
            response = self._post(client, p)
        except httpx.TransportError:
            p.status = 0
            self._again(p)
            raise
        p.status = response.status_code
        if p.status == 201:
            p.answer = response.json()
            if p.answer["status"] == "declined":
                again = _Payment(p.order_id, secrets.token_hex(12), "tok_approve")
                with self.lock:
                    self.sent.append(again)
                    self.retries.appendleft(again)
        elif p.status in _RETRY:
            self._again(p)
        # anything else is final and unexpected: check() reports it
        return response

    def _again(self, p: _Payment) -> None:
        p.not_before = time.monotonic() + 0.3
        with self.lock:
            self.retries.append(p)

    def pay(self, client: httpx.Client) -> tuple[httpx.Response, Any] | None:
        """A :class:`Load` request: a retry that is due, else the next order's payment."""
        p = self._next()
        if p is None:
            time.sleep(0.02)
            return None
        return self._send(client, p), p.key

    def settle(self, url: str, timeout: float = 30.0) -> int:
        """Send every payment whose 201 the client has not seen again (same key, same body)
        until it has one; returns how many requests that took."""
        deadline = time.monotonic() + timeout
        sends = 0
        with httpx.Client(base_url=url, timeout=10) as client:
            while True:
                with self.lock:
                    if not self.retries:
                        return sends
                    p = self.retries.popleft()
                assert time.monotonic() < deadline, f"payment {p.key} still {p.status}"
                time.sleep(max(0.0, p.not_before - time.monotonic()))
                sends += 1
                with contextlib.suppress(httpx.TransportError):
                    self._send(client, p)

    def check(self) -> dict[str, int]:
        """Assert, after :meth:`settle` (run :meth:`OrderBook.check` too):

        * every payment request the client made was answered 201 in the end, and its
          Idempotency-Key record is ``done`` with that 201; the payment the client was told of
          is in the database, as told;
        * no payment is half-written: none is left ``initiated``; each has the order's amount and
          currency, the client's Idempotency-Key (``request_key``), a ``processor_ref`` (the
          processor's charge id) exactly when the processor charged or declined it (``captured``,
          ``declined``; a ``failed`` attempt was never charged) and exactly one
          ``payment.<status>`` event; a key has more than one attempt only after ``failed`` ones;
        * an order is paid iff it has a captured payment, at most one, with one ``order.paid``;
        * the processor's ledger agrees: every charge has the payment row of its key with the
          same status and amount, every captured or declined row has its charge, no order is
          charged twice and no client Idempotency-Key reached the processor twice."""
        dsn = self.orders.dsn
        user = uuid.UUID(self.orders.customer.id)
        unanswered = [(p.key, p.status) for p in self.sent if p.status != 201]
        assert not unanswered, f"payments without their 201: {unanswered[:5]}"
        keys = db(
            dsn,
            "SELECT key, state, response_status FROM idempotency_keys "
            "WHERE user_id = $1 AND path LIKE '/api/v1/orders/%/payments'",
            user,
        )
        assert {r["key"] for r in keys} == {p.key for p in self.sent}, "a key record is wrong"
        assert all(r["state"] == "done" and r["response_status"] == 201 for r in keys)
        rows = db(
            dsn,
            "SELECT p.id, p.order_id, p.attempt, p.status, p.amount_cents, p.currency, "
            "       p.processor_key, p.processor_ref, p.request_key, o.status AS order_status, "
            "       o.total_cents, o.currency AS order_currency, "
            "       extract(epoch FROM p.updated_at - p.created_at)::float8 AS settling, "
            "       (SELECT count(*) FROM outbox e WHERE e.aggregate = 'payment' "
            "          AND e.aggregate_id = p.id::text) AS events, "
            "       (SELECT count(*) FROM outbox e WHERE e.aggregate = 'payment' "
            "          AND e.aggregate_id = p.id::text "
            "          AND e.event_type = 'payment.' || p.status) AS own_events "
            "FROM payments p JOIN orders o ON o.id = p.order_id WHERE o.user_id = $1 "
            "ORDER BY p.order_id, p.attempt",
            user,
        )
        by_id = {str(r["id"]): r for r in rows}
        for p in self.sent:  # what the client was told is what is stored
            row = by_id.get(p.answer["id"])
            assert row is not None, f"payment {p.answer['id']} (key {p.key}) is not stored"
            assert (str(row["order_id"]), row["request_key"]) == (p.order_id, p.key), dict(row)
            assert row["status"] == p.answer["status"], (dict(row), p.answer)
            assert p.answer["status"] == ("declined" if p.token == "tok_decline" else "captured")
        per_key: dict[str, list[Any]] = collections.defaultdict(list)
        captured: dict[str, int] = collections.Counter()
        for r in rows:
            where = dict(r)
            assert r["status"] != "initiated", f"a payment left half-written: {where}"
            assert r["amount_cents"] == r["total_cents"], where
            assert r["currency"] == r["order_currency"], where
            assert r["processor_key"], where
            charged = r["status"] in ("captured", "declined")
            assert (r["processor_ref"] is not None) == charged, where
            assert r["events"] == r["own_events"] == 1, where
            per_key[r["request_key"]].append(r)
            if r["status"] == "captured":
                captured[str(r["order_id"])] += 1
        assert set(per_key) <= {p.key for p in self.sent}, "a payment no client asked for"
        for attempts in per_key.values():
            assert all(r["status"] == "failed" for r in attempts[:-1]), attempts
        paid = db(
            dsn,
            "SELECT o.id, (SELECT count(*) FROM outbox e WHERE e.aggregate_id = o.id::text "
            "   AND e.event_type = 'order.paid') AS paid_events "
            "FROM orders o WHERE o.user_id = $1 AND o.status = 'paid'",
            user,
        )
        assert {str(r["id"]) for r in paid} == set(captured), "paid orders != captured payments"
        assert all(n == 1 for n in captured.values()), captured
        assert all(r["paid_events"] == 1 for r in paid)
        ledger = httpx.get(self.sim_url + "/v1/ledger", timeout=5).json()
        by_processor_key = {r["processor_key"]: r for r in rows}
        charged_orders: dict[str, int] = collections.Counter()
        charged_keys: dict[str, int] = collections.Counter()
        for charge in ledger["charges"]:
            row = by_processor_key.get(charge["idempotency_key"])
            assert row is not None, f"a charge without a payment row: {charge}"
            assert charge["status"] == row["status"], (charge, dict(row))
            assert charge["id"] == row["processor_ref"], (charge, dict(row))
            assert charge["amount_cents"] == row["amount_cents"], (charge, dict(row))
            assert charge["reference"] == str(row["order_id"]), (charge, dict(row))
            charged_keys[row["request_key"]] += 1
            if charge["status"] == "captured":
                charged_orders[charge["reference"]] += 1
        settled = sum(1 for r in rows if r["status"] in ("captured", "declined"))
        assert len(ledger["charges"]) == settled, "a settled payment the processor never made"
        assert all(n == 1 for n in charged_keys.values()), "one key charged twice"
        assert charged_orders == captured, "the processor's captures != the captured payments"
        statuses = collections.Counter(r["status"] for r in rows)
        return {
            "requests": len(self.sent),
            "sent more than once": sum(1 for p in self.sent if p.sends > 1),
            # a charge takes 50 ms: later, a fault interrupted it and a retry's look-up at the
            # processor or the recovery sweep settled it
            "settled > 1 s after it began": sum(1 for r in rows if r["settling"] > 1.0),
            **{f"payments {s}": n for s, n in sorted(statuses.items())},
            "paid orders": len(paid),
            "processor charges": len(ledger["charges"]),
            "processor calls": int(ledger["requests"]),
            "processor replays": int(ledger["replays"]),
        }
