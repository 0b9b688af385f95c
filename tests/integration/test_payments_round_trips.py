"""What one payment costs PostgreSQL, counted: the statements (each one round trip, once its
prepared statement is cached on the connection) that the payments service sends for one paid
order, its Idempotency-Key, and the processor's webhook that follows (``docs/payments.md``,
"Round trips"). Every round trip costs the worker a write, a wake-up and a read; these budgets
fail when the flow grows again.

The service runs in-process on the app's own pool against the session's database, the
processor is the simulator (a real process), the webhook is signed as the simulator signs it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import pytest
from tests.payment_helpers import SimProcess, running_simulator
from tests.store_helpers import app_pool

from cygate.ids import uuid7
from cygate.services.idempotency import Claim, Idempotency, IdempotentRequest
from cygate.services.payments import store
from cygate.services.payments.service import Payments
from cygate.services.payments.signing import sign
from cygate.settings import load_settings

pytestmark = pytest.mark.integration

_CONNECTIONS = 4
SECRET = "whsec-round-trips-" + secrets.token_hex(8)

# The budgets: statements sent per step (BEGIN, COMMIT and SAVEPOINT included).
PAY_CAPTURED = 2  # the claim and the attempt, committed before the call; the settlement with
PAY_DECLINED = 2  # its events and the key's record
WEBHOOK_SETTLED = 1  # the usual webhook: the synchronous answer settled the payment first
WEBHOOK_DUPLICATE = 1  # a second delivery of one event
WEBHOOK_FIRST = 1  # the webhook that settles the payment itself


@dataclass
class Counter:
    """Every statement the pool's connections send (asyncpg's query logger)."""

    queries: list[str] = field(default_factory=list)

    def log(self, record: Any) -> None:
        self.queries.append(" ".join(record.query.split())[:120])

    async def take(self) -> list[str]:
        await asyncio.sleep(0)  # the logger runs through call_soon: let it
        await asyncio.sleep(0)
        out, self.queries = self.queries, []
        return out


@dataclass
class World:
    pool: asyncpg.Pool
    counter: Counter
    payments: Payments
    idempotency: Idempotency


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with running_simulator() as sim:
        yield sim


@pytest.fixture
async def world(test_db_dsn: str, sim: SimProcess) -> AsyncIterator[World]:
    counter = Counter()
    async with app_pool(test_db_dsn, max_size=_CONNECTIONS) as pool:
        # Open every connection the pool may use and put the counter on each.
        held = [await pool.acquire() for _ in range(_CONNECTIONS)]
        for conn in held:
            conn.add_query_logger(counter.log)
        for conn in held:
            await pool.release(conn)
        settings = load_settings(
            {},
            database_url="postgresql://unused",
            payment_processor_url=sim.url,
            payment_recovery_interval=0.0,
            payment_webhook_secret=SECRET,
        )
        payments = Payments(settings.payments, environment="test")
        await payments.start(pool)
        idempotency = Idempotency()
        idempotency.pool = pool
        try:
            await counter.take()
            yield World(pool, counter, payments, idempotency)
        finally:
            await payments.stop()


async def _order(pool: asyncpg.Pool) -> tuple[UUID, UUID]:
    uid, oid = uuid7(), uuid7()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO users (id, email) VALUES ($1, $2)", uid, f"{uid}@e.test")
        await conn.execute(
            "INSERT INTO orders (id, user_id, status, total_cents, currency) "
            "VALUES ($1, $2, 'pending', 1290, 'EUR')",
            oid, uid,
        )  # fmt: skip
    return uid, oid


def _claim(w: World, uid: UUID, oid: UUID, token: str) -> Claim:
    """The request's claim, not taken yet: the payment's first statement takes it (as the
    controller does while the processor's breaker is closed)."""
    req = IdempotentRequest.of(
        user_id=uid,
        key=f"key-{uuid7()}",
        method="POST",
        path=f"/api/v1/orders/{oid}/payments",
        body={"payment_method_token": token},
    )
    return Claim(w.idempotency, req, uuid7())


def _webhook(processor_key: str, kind: str) -> tuple[bytes, str]:
    body = orjson.dumps(
        {
            "id": f"evt_{uuid7().hex}",
            "type": f"charge.{kind}",
            "created": int(time.time()),
            "data": {"id": f"ch_{uuid7().hex}", "idempotency_key": processor_key, "status": kind},
        }
    )
    return body, sign(SECRET.encode(), body, int(time.time()))


async def _pay(w: World, token: str) -> tuple[dict[str, Any], list[str], str]:
    """One order paid with ``token`` under an Idempotency-Key: (the 201 body, the statements,
    the attempt's processor key)."""
    uid, oid = await _order(w.pool)
    await w.counter.take()
    claim = _claim(w, uid, oid, token)
    async with claim:
        stored = await w.payments.pay(uid, oid, token, claim, take=True)
    paid = await w.counter.take()
    assert stored.status == 201
    body = orjson.loads(stored.body)
    key = await w.pool.fetchval(
        "SELECT processor_key FROM payments WHERE id = $1", UUID(body["id"])
    )
    await w.counter.take()
    # the response is recorded under the key, with the settlement
    recorded = await w.pool.fetchrow(
        "SELECT state, response_status, response_body FROM idempotency_keys "
        "WHERE user_id = $1 AND key = $2",
        uid, claim.request.key,
    )  # fmt: skip
    assert recorded is not None
    assert (recorded["state"], recorded["response_status"]) == ("done", 201)
    assert bytes(recorded["response_body"]) == stored.body
    # the body PostgreSQL wrote is the API's payment document, byte for byte
    async with w.pool.acquire() as conn:
        row = await store.get_payment(conn, UUID(body["id"]))
    assert row is not None and stored.body == orjson.dumps(row.public())
    await w.counter.take()
    return body, paid, key


def _budget(name: str, got: list[str], budget: int) -> None:
    shown = "\n  ".join(got)
    assert len(got) <= budget, f"{name}: {len(got)} statements, budget {budget}:\n  {shown}"


async def test_a_captured_payment_and_its_webhook(world: World) -> None:
    for _ in range(2):  # the first round prepares the statements on the connections
        body, paid, key = await _pay(world, "tok_approve")
        assert body["status"] == "captured"
        hook, signature = _webhook(key, "captured")
        await world.payments.webhook(hook, signature)
        hooked = await world.counter.take()
        await world.payments.webhook(hook, signature)  # a duplicate delivery
        duplicate = await world.counter.take()
    _budget("payment, captured", paid, PAY_CAPTURED)
    _budget("webhook after the answer", hooked, WEBHOOK_SETTLED)
    _budget("duplicate webhook", duplicate, WEBHOOK_DUPLICATE)
    events = await world.pool.fetch(
        "SELECT event_type FROM outbox WHERE aggregate_id = $1 OR aggregate_id = $2",
        body["id"], body["order_id"],
    )  # fmt: skip
    assert sorted(r[0] for r in events) == ["order.paid", "payment.captured"]
    assert (
        await world.pool.fetchval(
            "SELECT count(*) FROM payment_events WHERE payment_id = $1", UUID(body["id"])
        )
        == 1
    )


async def test_a_declined_payment(world: World) -> None:
    for _ in range(2):
        body, paid, _ = await _pay(world, "tok_decline")
        assert body["status"] == "declined"
    _budget("payment, declined", paid, PAY_DECLINED)


async def test_a_webhook_that_settles_the_payment(world: World) -> None:
    """The webhook that learns the outcome first (the answer not in yet) applies it, with the
    order's lock first, in one round trip too."""
    for _ in range(2):
        _, oid = await _order(world.pool)
        async with world.pool.acquire() as conn, conn.transaction():
            pid = uuid7()
            await conn.execute(
                "INSERT INTO payments (id, order_id, attempt, status, amount_cents, currency, "
                "processor_key) VALUES ($1, $2, 1, 'initiated', 1290, 'EUR', $3)",
                pid, oid, f"cygate-pay-{pid}",
            )  # fmt: skip
        await world.counter.take()
        hook, signature = _webhook(f"cygate-pay-{pid}", "captured")
        await world.payments.webhook(hook, signature)
        hooked = await world.counter.take()
        assert await world.pool.fetchval("SELECT status FROM orders WHERE id = $1", oid) == "paid"
        await world.counter.take()
    _budget("webhook that settles", hooked, WEBHOOK_FIRST)
