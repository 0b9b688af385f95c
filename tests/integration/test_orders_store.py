"""The order store on a real PostgreSQL: state machine, mark_paid, expiry under several sweepers,
and no deadlock or lost stock when orders over the same products race with cancels and expiry."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from itertools import product as pairs
from uuid import UUID

import asyncpg
import pytest

from cygate.edge.problem import Problem
from cygate.ids import uuid7
from cygate.infra.db import create_pool
from cygate.services.orders import lock_order, mark_paid, store
from cygate.services.orders.expiry import OrderExpiry
from cygate.services.orders.models import OrderItemIn
from cygate.services.orders.states import STATUSES, IllegalTransition, can, check
from cygate.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(test_db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    settings = load_settings({}, database_url=test_db_dsn, db_pool_min=0, db_pool_max=30)
    pool = await create_pool(settings)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def user(pool: asyncpg.Pool) -> UUID:
    uid = uuid7()
    await pool.execute("INSERT INTO users (id, email) VALUES ($1, $2)", uid, f"{uid}@e.test")
    return uid


async def new_products(pool: asyncpg.Pool, *stocks: int, price: int = 100) -> list[UUID]:
    cat = uuid7()
    await pool.execute(
        "INSERT INTO categories (id, name, slug) VALUES ($1, 'c', $2)", cat, f"c-{cat.hex}"
    )
    ids = [uuid7() for _ in stocks]
    for pid, stock in zip(ids, stocks, strict=True):
        await pool.execute(
            "INSERT INTO products (id, sku, name, price_cents, category_id, stock)"
            " VALUES ($1, $2, 'p', $3, $4, $5)",
            pid, pid.hex, price, cat, stock,
        )  # fmt: skip
    return ids


async def stock(pool: asyncpg.Pool, pid: UUID) -> int:
    return int(await pool.fetchval("SELECT stock FROM products WHERE id = $1", pid))


async def place(
    pool: asyncpg.Pool, user: UUID, lines: list[tuple[UUID, int]], ttl: float = 900
) -> UUID:
    oid = uuid7()
    async with pool.acquire() as conn, conn.transaction():
        await store.place(
            conn,
            order_id=oid,
            user_id=user,
            items=[OrderItemIn(product_id=p, quantity=q) for p, q in lines],
            shipping_address="x",
            ttl_seconds=ttl,
        )
    return oid


async def events(pool: asyncpg.Pool, oid: UUID) -> list[str]:
    rows = await pool.fetch(
        "SELECT event_type FROM outbox WHERE aggregate_id = $1 ORDER BY id", str(oid)
    )
    return [r[0] for r in rows]


def test_state_machine_allows_only_the_documented_transitions() -> None:
    legal = {
        ("pending", "paid"), ("pending", "cancelled"), ("pending", "expired"),
        ("paid", "shipped"),
    }  # fmt: skip
    for current, target in pairs(STATUSES, STATUSES):
        assert can(current, target) == ((current, target) in legal), (current, target)
        if (current, target) not in legal:
            with pytest.raises(IllegalTransition):
                check(current, target)
    assert not can("unknown", "paid")


async def test_mark_paid_once_in_the_callers_transaction(pool: asyncpg.Pool, user: UUID) -> None:
    (pid,) = await new_products(pool, 5)
    oid = await place(pool, user, [(pid, 2)])
    payment = uuid7()
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            await mark_paid(conn, oid, payment)  # outside a transaction
        async with conn.transaction():
            assert await mark_paid(conn, oid, payment) is True
        async with conn.transaction():
            assert await mark_paid(conn, oid, payment) is False  # already paid
            assert await mark_paid(conn, uuid7(), payment) is False  # no such order
            row = await lock_order(conn, oid)
            assert row is not None and row["status"] == "paid"
    assert await events(pool, oid) == ["order.created", "order.paid"]
    payload = await pool.fetchval(
        "SELECT payload::text FROM outbox WHERE aggregate_id = $1 AND event_type = 'order.paid'",
        str(oid),
    )
    assert str(payment) in payload and '"amount_cents": 200' in payload
    assert await stock(pool, pid) == 3  # paid keeps its reservation


async def test_mark_paid_rolls_back_with_the_payment(pool: asyncpg.Pool, user: UUID) -> None:
    (pid,) = await new_products(pool, 5)
    oid = await place(pool, user, [(pid, 1)])
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            assert await mark_paid(conn, oid, uuid7())
            raise RuntimeError("payment row update failed")
    assert await pool.fetchval("SELECT status FROM orders WHERE id = $1", oid) == "pending"
    assert await events(pool, oid) == ["order.created"]


async def test_cancelled_or_expired_orders_cannot_be_paid(pool: asyncpg.Pool, user: UUID) -> None:
    (pid,) = await new_products(pool, 5)
    cancelled = await place(pool, user, [(pid, 1)])
    expired = await place(pool, user, [(pid, 1)], ttl=0.001)
    async with pool.acquire() as conn, conn.transaction():
        row = await lock_order(conn, cancelled)
        await store.cancel(conn, row)
    await asyncio.sleep(0.01)
    expiry = OrderExpiry(pool, interval=0, batch=10)
    assert await expiry.sweep() >= 1
    async with pool.acquire() as conn, conn.transaction():
        assert await mark_paid(conn, cancelled, uuid7()) is False
        assert await mark_paid(conn, expired, uuid7()) is False
    assert await stock(pool, pid) == 5


async def test_refusals_reserve_nothing(pool: asyncpg.Pool, user: UUID) -> None:
    a, b = await new_products(pool, 3, 1)
    with pytest.raises(Problem) as err:
        await place(pool, user, [(a, 2), (b, 2)])
    assert err.value.status == 409
    with pytest.raises(Problem) as err:
        await place(pool, user, [(a, 1), (uuid7(), 1)])
    assert err.value.status == 422
    assert (await stock(pool, a), await stock(pool, b)) == (3, 1)
    assert await pool.fetchval("SELECT count(*) FROM order_items WHERE product_id = $1", a) == 0


async def test_several_sweepers_expire_each_order_once(pool: asyncpg.Pool, user: UUID) -> None:
    pids = await new_products(pool, 100, 100, 100)
    orders = [
        await place(pool, user, [(pids[n % 3], 2), (pids[(n + 1) % 3], 1)], ttl=0.001)
        for n in range(30)
    ]
    await asyncio.sleep(0.01)
    sweepers = [OrderExpiry(pool, interval=0, batch=4) for _ in range(5)]
    counts = await asyncio.gather(*(s.sweep() for s in sweepers))
    assert sum(counts) == 30
    assert [await stock(pool, p) for p in pids] == [100, 100, 100]
    kinds = Counter(
        r[0]
        for r in await pool.fetch(
            "SELECT event_type FROM outbox WHERE aggregate_id = ANY($1::text[])",
            [str(o) for o in orders],
        )
    )
    assert kinds == {"order.created": 30, "order.expired": 30}


async def test_racing_orders_cancels_and_expiry_never_deadlock_or_lose_stock(
    pool: asyncpg.Pool, user: UUID
) -> None:
    """Orders over the same products, lines in random order, cancels and sweeps at once:
    no deadlock (sorted lock order), and stock + reserved == initial at the end."""
    pids = await new_products(pool, 40, 40, 40, 40)
    rng = random.Random(7)
    placed: list[UUID] = []

    async def buyer(n: int) -> None:
        lines = [(p, rng.randint(1, 3)) for p in rng.sample(pids, rng.randint(1, 4))]
        try:
            oid = await place(pool, user, lines, ttl=0.05 if n % 3 == 0 else 900)
        except Problem as exc:
            assert exc.status == 409
            return
        placed.append(oid)
        if n % 3 == 1:
            async with pool.acquire() as conn, conn.transaction():
                row = await lock_order(conn, oid)
                assert row is not None
                if row["status"] == "pending":
                    await store.cancel(conn, row)

    async def sweeper() -> None:
        expiry = OrderExpiry(pool, interval=0, batch=3)
        for _ in range(10):
            await expiry.sweep()
            await asyncio.sleep(0.01)

    await asyncio.gather(*(buyer(n) for n in range(60)), sweeper(), sweeper())
    await asyncio.sleep(0.06)
    await OrderExpiry(pool, interval=0, batch=100).sweep()
    reserved = dict(
        await pool.fetch(
            "SELECT i.product_id, sum(i.quantity) FROM order_items i JOIN orders o"
            " ON o.id = i.order_id WHERE o.status IN ('pending', 'paid', 'shipped')"
            " AND i.product_id = ANY($1::uuid[]) GROUP BY i.product_id",
            pids,
        )
    )
    for pid in pids:
        assert await stock(pool, pid) + reserved.get(pid, 0) == 40
    statuses = Counter(
        r[0] for r in await pool.fetch("SELECT status FROM orders WHERE id = ANY($1)", placed)
    )
    assert set(statuses) <= {"pending", "cancelled", "expired"}
    assert statuses["expired"] >= 1 and statuses["cancelled"] >= 1


async def _initiated_payment(pool: asyncpg.Pool, oid: UUID) -> UUID:
    pay = uuid7()
    await pool.execute(
        "INSERT INTO payments (id, order_id, attempt, status, amount_cents, currency,"
        " processor_key) VALUES ($1, $2, 1, 'initiated', 100, 'EUR', $3)",
        pay, oid, f"k-{pay.hex}",
    )  # fmt: skip
    return pay


async def test_expiry_keeps_an_order_whose_payment_is_in_flight(
    pool: asyncpg.Pool, user: UUID
) -> None:
    """A charge the processor has not answered yet may still succeed: its order must keep its
    stock until the attempt settles; then a later sweep expires what stayed unpaid."""
    (pid,) = await new_products(pool, 10)
    paying = await place(pool, user, [(pid, 3)], ttl=0.001)
    idle = await place(pool, user, [(pid, 2)], ttl=0.001)
    pay = await _initiated_payment(pool, paying)
    await asyncio.sleep(0.01)
    assert await OrderExpiry(pool, interval=0, batch=10).sweep() == 1
    statuses = dict(await pool.fetch("SELECT id, status FROM orders WHERE user_id = $1", user))
    assert statuses == {paying: "pending", idle: "expired"}
    assert await stock(pool, pid) == 7  # only the idle order's 2 came back

    await pool.execute("UPDATE payments SET status = 'failed' WHERE id = $1", pay)
    assert await OrderExpiry(pool, interval=0, batch=10).sweep() == 1
    assert await pool.fetchval("SELECT status FROM orders WHERE id = $1", paying) == "expired"
    assert await stock(pool, pid) == 10


async def test_payment_in_flight_sees_attempts_committed_while_it_waited_for_the_lock(
    pool: asyncpg.Pool, user: UUID
) -> None:
    (pid,) = await new_products(pool, 5)
    oid = await place(pool, user, [(pid, 1)])
    async with pool.acquire() as payer, pool.acquire() as canceller:
        tx = payer.transaction()
        await tx.start()
        await lock_order(payer, oid)  # the payment service holds the order while it inserts
        async with canceller.transaction():
            waiting = asyncio.ensure_future(lock_order(canceller, oid))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await payer.execute(
                "INSERT INTO payments (id, order_id, attempt, status, amount_cents, currency,"
                " processor_key) VALUES ($1, $2, 1, 'initiated', 100, 'EUR', 'k-race')",
                uuid7(), oid,
            )  # fmt: skip
            await tx.commit()
            await waiting
            assert await store.payment_in_flight(canceller, [oid]) == {oid}
