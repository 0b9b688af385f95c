"""Helpers for the payments tests: the processor simulator as a real process, customers with
tokens, orders made directly in SQL, and small database look-ups."""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import asyncpg
import httpx

__all__ = [
    "Customer",
    "SimProcess",
    "db",
    "events_of",
    "new_customer",
    "new_order",
    "order_status",
    "payments_env",
    "payments_of",
    "post_payment",
    "running_simulator",
    "wait_until",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimProcess:
    """``python -m cygate.simulator`` on a free port; ``ledger()`` reads its charges."""

    def __init__(self, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cygate.simulator", "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited: {self.stop()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("simulator did not start")

    def ledger(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/v1/ledger", timeout=5)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def charges_for(self, reference: str) -> list[dict[str, Any]]:
        """Every charge (any status) whose reference is ``reference`` (an order id)."""
        return [c for c in self.ledger()["charges"] if c["reference"] == reference]

    def set_mode(self, mode: str | None, **extra: float) -> None:
        r = httpx.post(self.url + "/v1/_mode", json={"mode": mode, **extra}, timeout=5)
        assert r.status_code == 200, r.text

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        with self.proc.stdout:
            return self.proc.stdout.read().decode()


@contextmanager
def running_simulator(*args: str) -> Iterator[SimProcess]:
    sim = SimProcess(*args)
    try:
        yield sim
    finally:
        sim.stop()


def payments_env(sim_url: str, secret_file: str, **extra: str) -> dict[str, str]:
    """Gateway settings for the payments tests (short timeouts so the tests stay quick)."""
    env = {
        "CYGATE_PAYMENT_PROCESSOR_URL": sim_url,
        "CYGATE_PAYMENT_PROCESSOR_TIMEOUT": "1.0",
        "CYGATE_PAYMENT_RECOVERY_AFTER": "3",
        "CYGATE_PAYMENT_RECOVERY_INTERVAL": "0.5",
        "CYGATE_PAYMENT_WEBHOOK_SECRET_FILE": secret_file,
        "CYGATE_PAYMENT_BREAKER_FAILURES": "3",
        "CYGATE_PAYMENT_BREAKER_OPEN_SECONDS": "2",
        "CYGATE_TRUSTED_PROXIES": "127.0.0.1",
    }
    env.update(extra)
    return env


class Customer:
    """A registered, logged-in customer of one gateway."""

    def __init__(self, user_id: str, token: str) -> None:
        self.id = user_id
        self.headers = {"authorization": f"Bearer {token}"}

    def pay(
        self, c: httpx.Client, order_id: str, /, token: str = "tok_approve",
        key: str | None = None, **extra: Any,
    ) -> httpx.Response:  # fmt: skip
        """POST a payment for ``order_id``; ``extra`` fields go into the body (mass assignment)."""
        headers = {**self.headers, "idempotency-key": key or secrets.token_hex(16)}
        return post_payment(c, order_id, headers, json={"payment_method_token": token, **extra})


def post_payment(
    c: httpx.Client, order_id: str, headers: Mapping[str, Any], **body: Any
) -> httpx.Response:
    """POST to ``order_id``'s payments with exactly ``headers`` and the body given as ``json=`` or
    ``content=``: no token, key or auth added (``Customer.pay`` adds them), for bad requests
    (so a header value may be anything httpx sends, bytes too)."""
    return c.post(f"/api/v1/orders/{order_id}/payments", headers=headers, **body)


def new_customer(url: str) -> Customer:
    """Register and log in (from an address of its own: the login limit is per address)."""
    address = f"198.51.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"
    with httpx.Client(base_url=url, timeout=10, headers={"x-forwarded-for": address}) as c:
        email = f"payer-{uuid.uuid4().hex[:12]}@example.com"
        password = secrets.token_urlsafe(12)
        r = c.post("/api/v1/auth/register", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        r = c.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        return Customer(user_id, r.json()["access_token"])


async def _run(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def db(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement against the test database (from synchronous test code)."""
    return asyncio.run(_run(dsn, sql, *args))


def new_order(dsn: str, user_id: str, total_cents: int = 4_200, status: str = "pending") -> str:
    """A pending order made directly in SQL (payments only need the order row)."""
    order_id = str(uuid.uuid4())
    db(
        dsn,
        "INSERT INTO orders (id, user_id, status, total_cents, currency) "
        "VALUES ($1, $2, $3, $4, 'EUR')",
        uuid.UUID(order_id), uuid.UUID(user_id), status, total_cents,
    )  # fmt: skip
    return order_id


def order_status(dsn: str, order_id: str) -> str:
    return str(db(dsn, "SELECT status FROM orders WHERE id = $1", uuid.UUID(order_id))[0][0])


def payments_of(dsn: str, order_id: str) -> list[asyncpg.Record]:
    return db(
        dsn,
        "SELECT id, attempt, status, amount_cents, processor_key FROM payments "
        "WHERE order_id = $1 ORDER BY attempt",
        uuid.UUID(order_id),
    )


def events_of(dsn: str, order_id: str) -> list[str]:
    """Event types in the outbox about this order or its payments, in order."""
    rows = db(
        dsn,
        "SELECT event_type FROM outbox WHERE aggregate_id = $1 OR payload->>'order_id' = $1 "
        "ORDER BY id",
        order_id,
    )
    return [r[0] for r in rows]


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
