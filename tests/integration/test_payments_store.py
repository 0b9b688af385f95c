"""The payment state machine (``cygate.services.payments.store``) on a real PostgreSQL: every
transition, its outbox events exactly once, and concurrent reporters of one outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import pytest
from tests.store_helpers import app_pool

from cygate.ids import uuid7
from cygate.services.payments import store
from cygate.services.payments.service import Payments
from cygate.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(test_db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with app_pool(test_db_dsn) as pool:
        yield pool


async def new_attempt(pool: asyncpg.Pool, order_status: str = "pending") -> store.PaymentRow:
    """Attempt 1 of a new order of a new user (the order then set to ``order_status``)."""
    uid, oid = uuid7(), uuid7()
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO users (id, email) VALUES ($1, $2)", uid, f"{uid}@e.test"
            )
            await conn.execute(
                "INSERT INTO orders (id, user_id, status, total_cents, currency) "
                "VALUES ($1, $2, 'pending', 990, 'EUR')",
                oid, uid,
            )  # fmt: skip
        got = await store.new_attempt(conn, oid, uid)
        await conn.execute("UPDATE orders SET status = $2 WHERE id = $1", oid, order_status)
    assert got.verdict == "created" and got.payment is not None
    return got.payment


async def apply(pool: asyncpg.Pool, pid: UUID, outcome: store.Outcome) -> store.PaymentRow:
    async with pool.acquire() as conn, conn.transaction():
        row = await store.apply_outcome(conn, pid, outcome, processor_ref="ch_1", source="test")
    assert row is not None
    return row


async def events(pool: asyncpg.Pool, payment: store.PaymentRow) -> list[str]:
    rows = await pool.fetch(
        "SELECT event_type FROM outbox WHERE aggregate_id = $1 OR aggregate_id = $2 ORDER BY id",
        str(payment.id), str(payment.order_id),
    )  # fmt: skip
    return [r[0] for r in rows]


async def order_status(pool: asyncpg.Pool, payment: store.PaymentRow) -> str:
    return str(await pool.fetchval("SELECT status FROM orders WHERE id = $1", payment.order_id))


async def test_attempt_key_is_derived_from_the_attempt(pool: asyncpg.Pool) -> None:
    p = await new_attempt(pool)
    assert p.status == "initiated" and p.attempt == 1 and p.amount_cents == 990
    assert p.processor_key == f"cygate-pay-{p.id}"


@pytest.mark.parametrize(
    ("steps", "final", "order", "expected_events"),
    [
        (["captured"], "captured", "paid", ["payment.captured", "order.paid"]),
        (["declined"], "declined", "pending", ["payment.declined"]),
        (["failed"], "failed", "pending", ["payment.failed"]),
        (["declined", "captured"], "captured", "paid",
         ["payment.declined", "payment.captured", "order.paid"]),
        (["failed", "captured"], "captured", "paid",
         ["payment.failed", "payment.captured", "order.paid"]),
        (["captured", "declined"], "captured", "paid", ["payment.captured", "order.paid"]),
        (["captured", "failed"], "captured", "paid", ["payment.captured", "order.paid"]),
        (["captured", "captured"], "captured", "paid", ["payment.captured", "order.paid"]),
        (["declined", "failed"], "declined", "pending", ["payment.declined"]),
        (["failed", "declined"], "failed", "pending", ["payment.failed"]),
    ],
)  # fmt: skip
async def test_transitions_in_any_order(
    pool: asyncpg.Pool,
    steps: list[store.Outcome],
    final: str,
    order: str,
    expected_events: list[str],
) -> None:
    p = await new_attempt(pool)
    for outcome in steps:
        row = await apply(pool, p.id, outcome)
    assert row.status == final
    assert await order_status(pool, p) == order
    assert await events(pool, p) == expected_events


async def test_capture_of_a_cancelled_order_is_recorded_but_the_order_stays(
    pool: asyncpg.Pool,
) -> None:
    p = await new_attempt(pool, order_status="cancelled")
    row = await apply(pool, p.id, "captured")
    assert row.status == "captured"  # money moved: the payment says so (refund is due)
    assert await order_status(pool, p) == "cancelled"
    assert await events(pool, p) == ["payment.captured"]


async def test_many_concurrent_reporters_apply_once(pool: asyncpg.Pool) -> None:
    """The synchronous answer, webhooks and the sweep all report at once: one transition."""
    p = await new_attempt(pool)
    outcomes: list[store.Outcome] = ["captured", "declined", "failed"] * 5
    await asyncio.gather(*(apply(pool, p.id, o) for o in outcomes))
    # Whatever the interleaving, the processor's "captured" wins and is applied once.
    assert await pool.fetchval("SELECT status FROM payments WHERE id = $1", p.id) == "captured"
    assert await order_status(pool, p) == "paid"
    got = await events(pool, p)
    assert got.count("order.paid") == 1
    assert got.count("payment.captured") == 1
    assert got.count("payment.declined") + got.count("payment.failed") <= 1
    assert got in (
        ["payment.captured", "order.paid"],
        ["payment.declined", "payment.captured", "order.paid"],
        ["payment.failed", "payment.captured", "order.paid"],
    )


async def test_stuck_payments_are_the_old_initiated_ones(pool: asyncpg.Pool) -> None:
    p = await new_attempt(pool)
    await pool.execute(
        "UPDATE payments SET created_at = now() - interval '10 minutes' WHERE id = $1", p.id
    )
    fresh = await new_attempt(pool)
    async with pool.acquire() as conn:
        stuck = {s.id for s in await store.stuck_payments(conn, 60, limit=10_000)}
    assert p.id in stuck and fresh.id not in stuck
    await apply(pool, p.id, "failed")
    async with pool.acquire() as conn:
        assert p.id not in {s.id for s in await store.stuck_payments(conn, 60, limit=10_000)}


async def _processor(unanswerable: set[str]) -> asyncio.Server:
    """A real HTTP server playing the processor's look-up: 500 for the keys in
    ``unanswerable`` (it cannot say), 404 (no such charge) for every other key."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                key = head.split(b" ", 2)[1].rsplit(b"/", 1)[-1].decode()
                status = b"500 Internal Server Error" if key in unanswerable else b"404 Not Found"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                    b"content-length: 2\r\n\r\n{}"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_recovery_reaches_every_stuck_payment(pool: asyncpg.Pool) -> None:
    """Five old attempts the processor cannot answer for fill the first pages; the recovery
    sweep still reaches the two after them (it once read one page only, oldest first)."""
    stuck = [await new_attempt(pool) for _ in range(7)]
    # Older than anything another test leaves behind, so only these count.
    await pool.execute(
        "UPDATE payments SET created_at = now() - interval '10 years' WHERE id = ANY($1)",
        [p.id for p in stuck],
    )
    unanswerable, answerable = stuck[:5], stuck[5:]
    server = await _processor({p.processor_key for p in unanswerable})
    port = server.sockets[0].getsockname()[1]
    settings = load_settings(
        {},
        database_url="postgresql://unused",
        payment_processor_url=f"http://127.0.0.1:{port}",
        payment_recovery_interval=0.0,
        payment_breaker_failures=1000,
    )
    payments = Payments(settings.payments, environment=settings.server.environment)
    await payments.start(pool)
    try:
        report = await payments.recover(9 * 365 * 86400, page_size=2)
    finally:
        await payments.stop()
        server.close()
    assert (report.checked, report.unreachable, report.outcomes) == (7, 5, {"failed": 2})
    statuses = dict(
        await pool.fetch(
            "SELECT id, status FROM payments WHERE id = ANY($1)", [p.id for p in stuck]
        )
    )
    assert statuses == {
        **{p.id: "initiated" for p in unanswerable},
        **{p.id: "failed" for p in answerable},
    }


async def test_webhooks_and_the_settlement_concurrently_apply_once(pool: asyncpg.Pool) -> None:
    """Webhooks (new events, duplicates, events the status already excludes) race the
    synchronous settlement and the sweep's apply: no deadlock, one capture, one order.paid,
    every distinct event recorded once."""
    p = await new_attempt(pool)
    ids = [f"evt_{uuid7().hex}" for _ in range(6)]

    async def hook(event_id: str, kind: store.Outcome) -> None:
        async with pool.acquire() as conn:
            await store.webhook(
                conn, event_id=event_id, processor_key=p.processor_key,
                kind=f"charge.{kind}", payload={"id": event_id}, outcome=kind,
                processor_ref="ch_1",
            )  # fmt: skip

    async def settle(outcome: store.Outcome) -> None:
        async with pool.acquire() as conn:
            await store.settle(conn, p.id, outcome, processor_ref="ch_1", source="charge")

    await asyncio.gather(
        *(hook(i, "captured") for i in ids),
        *(hook(i, "declined") for i in ids[:3]),  # the same ids again: duplicates
        settle("captured"),
        settle("declined"),
        apply(pool, p.id, "failed"),
    )
    assert await pool.fetchval("SELECT status FROM payments WHERE id = $1", p.id) == "captured"
    assert await order_status(pool, p) == "paid"
    got = await events(pool, p)
    assert got.count("order.paid") == 1 and got.count("payment.captured") == 1
    recorded = await pool.fetchval(
        "SELECT count(*) FROM payment_events WHERE payment_id = $1", p.id
    )
    assert recorded == len(ids)
