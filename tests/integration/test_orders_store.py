"""The order store on a real PostgreSQL: state machine, mark_paid, expiry under several sweepers,
and no deadlock or lost stock when orders over the same products race with cancels and expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections import Counter
from collections.abc import AsyncIterator
from itertools import product as pairs
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import orjson
import pytest
from tests.store_helpers import app_pool

from cygate.edge.problem import Problem
from cygate.ids import uuid7
from cygate.services.idempotency import (
    Claim,
    ClaimLost,
    Idempotency,
    IdempotentRequest,
    StoredResponse,
)
from cygate.services.orders import lock_order, mark_paid, store
from cygate.services.orders.expiry import OrderExpiry
from cygate.services.orders.models import OrderItemIn
from cygate.services.orders.states import STATUSES, IllegalTransition, can, check

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(test_db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with app_pool(test_db_dsn) as pool:
        yield pool


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


async def test_a_batch_of_stuck_payments_never_stops_expiry(pool: asyncpg.Pool, user: UUID) -> None:
    """More orders with a payment in flight than a batch holds, and the oldest: the sweep still
    reaches the unpaid orders behind them (a batch filled with them once ended every sweep)."""
    (pid,) = await new_products(pool, 100)
    stuck = [await place(pool, user, [(pid, 1)], ttl=0.001) for _ in range(6)]
    for oid in stuck:
        await _initiated_payment(pool, oid)
    await asyncio.sleep(0.01)
    idle = [await place(pool, user, [(pid, 1)], ttl=0.001) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert await OrderExpiry(pool, interval=0, batch=2).sweep() >= 3
    statuses = dict(await pool.fetch("SELECT id, status FROM orders WHERE user_id = $1", user))
    assert statuses == {**dict.fromkeys(stuck, "pending"), **dict.fromkeys(idle, "expired")}
    assert await stock(pool, pid) == 94


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


# --------------------------------------------------------------------------- cygate_place_order


async def _claim(pool: asyncpg.Pool, user: UUID, key: str) -> Claim:
    idem = Idempotency(ttl=3600, in_flight_timeout=30)
    idem.pool = pool
    got = await idem.claim(
        IdempotentRequest.of(user_id=user, key=key, method="POST", path="/o", body={"k": key})
    )
    assert isinstance(got, Claim)
    return got


async def test_the_body_is_what_msgspec_encodes_for_the_order(
    pool: asyncpg.Pool, user: UUID
) -> None:
    """The 201 body the database builds is, byte for byte, msgspec's encoding of the order
    (string and object addresses, escapes, non-ASCII; lines in product id order)."""
    a, b, c = await new_products(pool, 10, 10, 10, price=1999)
    await pool.execute("UPDATE products SET price_cents = 5 WHERE id = $1", c)
    addresses: list[Any] = [
        'Rue "du" Lac 3 \\ é 😀 \u2028 \x01 </tag>',
        {"name": "Zoë", "line1": "1 Main St", "city": "Zürich", "country": "CH"},
    ]
    for address in addresses:
        oid = uuid7()
        lines = [OrderItemIn(product_id=c, quantity=3), OrderItemIn(product_id=a, quantity=1)]
        async with pool.acquire() as conn, conn.transaction():
            body = await store.place(
                conn, order_id=oid, user_id=user, items=lines, shipping_address=address,
                ttl_seconds=900,
            )  # fmt: skip
        saved = await store.get_order(pool, oid)
        assert saved is not None
        # GET reads the address back from jsonb (key order may differ): the POST answer
        # carries the client's own address, as msgspec encodes it.
        expected = msgspec.structs.replace(saved, shipping_address=address)
        assert body == msgspec.json.encode(expected)
        assert [i.product_id for i in saved.items] == sorted([a, c])
        assert saved.total_cents == 1999 + 3 * 5
        assert saved.shipping_address == address
        assert saved.expires_at is not None and saved.created_at == saved.updated_at
    assert (await stock(pool, a), await stock(pool, b), await stock(pool, c)) == (8, 10, 4)


async def test_json_time_is_msgspecs_datetime_encoding(pool: asyncpg.Pool) -> None:
    """With and without microseconds (msgspec writes none when they are zero)."""
    utc = dt.UTC
    for value in (
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=utc),
        dt.datetime(2026, 1, 2, 3, 4, 5, 5, tzinfo=utc),
        dt.datetime(2026, 12, 31, 23, 59, 59, 120000, tzinfo=utc),
        dt.datetime(1999, 7, 8, 9, 10, 11, 999999, tzinfo=dt.timezone(dt.timedelta(hours=5))),
    ):
        got = await pool.fetchval("SELECT cygate_json_time($1)", value)
        assert got.encode() == msgspec.json.encode(value.astimezone(utc)), value


async def test_refusals_write_nothing_and_name_the_problem(pool: asyncpg.Pool, user: UUID) -> None:
    """Insufficient stock (409), an unknown product and mixed currencies (422): the function
    reserves nothing, writes no order, line, event or idempotency record."""
    a, b = await new_products(pool, 3, 1)
    (usd,) = await new_products(pool, 5)
    await pool.execute("UPDATE products SET currency = 'USD' WHERE id = $1", usd)
    ghost = uuid7()
    claim = await _claim(pool, user, "refused")
    record = store.Record("refused", claim.token, {"content-type": "application/json"})
    cases: list[tuple[list[tuple[UUID, int]], int, dict[str, Any]]] = [
        ([(a, 2), (b, 2)], 409, {"items": [
            {"product_id": str(b), "requested": 2, "available": 1}]}),
        ([(a, 1), (ghost, 1)], 422, {"errors": [
            {"field": "body.items[1].product_id", "message": f"no product {ghost}"}]}),
        ([(a, 1), (usd, 1)], 422, {"errors": [
            {"field": "body.items", "message": "mixed currencies ['EUR', 'USD']"}]}),
    ]  # fmt: skip
    for lines, status, extra in cases:
        with pytest.raises(Problem) as err:
            async with pool.acquire() as conn, conn.transaction():
                await store.place(
                    conn, order_id=uuid7(), user_id=user, ttl_seconds=900, shipping_address="x",
                    items=[OrderItemIn(product_id=p, quantity=q) for p, q in lines],
                    record=record,
                )  # fmt: skip
        assert (err.value.status, err.value.extra) == (status, extra)
    assert [await stock(pool, p) for p in (a, b, usd)] == [3, 1, 5]
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE user_id = $1", user) == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM order_items WHERE product_id = ANY($1::uuid[])", [a, b, usd]
    ) == 0  # fmt: skip
    assert await pool.fetchval(
        "SELECT state FROM idempotency_keys WHERE user_id = $1 AND key = 'refused'", user
    ) == "in_flight"  # fmt: skip


async def test_a_lost_claim_rolls_the_whole_order_back(pool: asyncpg.Pool, user: UUID) -> None:
    """Recording on a claim another attempt took over raises ClaimLost (SQLSTATE CYG01): no
    order, no stock taken, no event; the new holder's claim is untouched."""
    (pid,) = await new_products(pool, 5)
    claim = await _claim(pool, user, "lost")
    stale = store.Record("lost", uuid7(), {"content-type": "application/json"})
    oid = uuid7()
    with pytest.raises(ClaimLost):
        async with pool.acquire() as conn, conn.transaction():
            await store.place(
                conn, order_id=oid, user_id=user, ttl_seconds=900, shipping_address="x",
                items=[OrderItemIn(product_id=pid, quantity=2)], record=stale,
            )  # fmt: skip
    assert await stock(pool, pid) == 5
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE id = $1", oid) == 0
    assert await events(pool, oid) == []
    row = await pool.fetchrow(
        "SELECT state, claim FROM idempotency_keys WHERE user_id = $1 AND key = 'lost'", user
    )
    assert row is not None and (row["state"], row["claim"]) == ("in_flight", claim.token)


async def test_the_response_is_recorded_with_the_order(pool: asyncpg.Pool, user: UUID) -> None:
    """With a claim, the 201 (body, headers) is recorded in the order's statement: a rollback
    of the caller's transaction takes both back; a commit keeps both."""
    (pid,) = await new_products(pool, 5)
    claim = await _claim(pool, user, "rec")
    headers = {"content-type": "application/json", "location": "/o/x"}
    record = store.Record("rec", claim.token, headers)
    items = [OrderItemIn(product_id=pid, quantity=1)]
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await store.place(
            conn, order_id=uuid7(), user_id=user, items=items, shipping_address="x",
            ttl_seconds=900, record=record,
        )  # fmt: skip
        await tx.rollback()
    key = "SELECT state, response_status, response_headers, response_body FROM idempotency_keys"
    key += " WHERE user_id = $1 AND key = 'rec'"
    assert (await pool.fetchrow(key, user))["state"] == "in_flight"  # type: ignore[index]
    assert await stock(pool, pid) == 5
    oid = uuid7()
    async with pool.acquire() as conn, conn.transaction():
        body = await store.place(
            conn, order_id=oid, user_id=user, items=items, shipping_address="x",
            ttl_seconds=900, record=record,
        )  # fmt: skip
    row = await pool.fetchrow(key, user)
    assert row is not None
    assert (row["state"], row["response_status"], row["response_headers"]) == (
        "done", 201, headers
    )  # fmt: skip
    assert bytes(row["response_body"]) == body
    assert orjson.loads(body)["id"] == str(oid)
    assert await events(pool, oid) == ["order.created"]
    payload = await pool.fetchval("SELECT payload FROM outbox WHERE aggregate_id = $1", str(oid))
    assert payload == {
        "order_id": str(oid), "user_id": str(user), "total_cents": 100, "currency": "EUR",
        "items": [{"product_id": str(pid), "quantity": 1}],
    }  # fmt: skip


async def test_products_are_locked_in_ascending_id_order(pool: asyncpg.Pool, user: UUID) -> None:
    """Whatever the order of the lines: with the higher id held from outside, the order waits
    holding the lower one; with the lower one held, it waits holding nothing (so two orders
    over the same products always queue, never deadlock)."""
    low, high = sorted(await new_products(pool, 10, 10))
    lines = [(high, 1), (low, 1)]  # the client's order: higher id first

    async def holds(pid: UUID) -> bool:
        async with pool.acquire() as probe, probe.transaction():
            try:
                await probe.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE NOWAIT", pid)
            except asyncpg.LockNotAvailableError:
                return True
            return False

    for held, expect_low, expect_high in ((high, True, True), (low, True, False)):
        async with pool.acquire() as outside:
            tx = outside.transaction()
            await tx.start()
            await outside.execute("SELECT 1 FROM products WHERE id = $1 FOR UPDATE", held)
            ordering = asyncio.ensure_future(place(pool, user, lines))
            await asyncio.sleep(0.2)
            assert not ordering.done()
            assert await holds(low) is expect_low  # by the order (or by us when held == low)
            assert await holds(high) is expect_high
            await tx.rollback()
            await ordering
    assert (await stock(pool, low), await stock(pool, high)) == (8, 8)


# --------------------------------------------------------------------------- round trips


class _Trips:
    """Every statement a connection sends (asyncpg's query logger: BEGIN and COMMIT too)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: Any) -> None:
        self.queries.append(" ".join(record.query.split()))

    def transactions(self) -> int:
        """Transactions committed or rolled back: BEGIN ... COMMIT/ROLLBACK blocks, plus each
        statement sent outside one (autocommitted)."""
        count, inside = 0, False
        for q in self.queries:
            word = q.split()[0].upper().rstrip(";")
            if word == "BEGIN":
                inside, count = True, count + 1
            elif word in ("COMMIT", "ROLLBACK"):
                inside = False
            elif not inside:
                count += 1
        return count


async def _place_keyed(
    idem: Idempotency, user: UUID, key: str, lines: list[tuple[UUID, int]]
) -> tuple[int, bytes]:
    """``POST /api/v1/orders`` as its controller runs it: ``run_claiming`` around
    ``store.place`` with ``Record.take``. Returns (status, body); a replay is (-status, body)."""
    items = [OrderItemIn(product_id=p, quantity=q) for p, q in lines]
    req = IdempotentRequest.of(
        user_id=user, key=key, method="POST", path="/api/v1/orders",
        body={"items": [[str(p), q] for p, q in lines]},
    )  # fmt: skip

    async def work(conn: asyncpg.Connection, claim: Claim) -> StoredResponse:
        oid = uuid7()
        headers = {"content-type": "application/json", "location": f"/api/v1/orders/{oid}"}
        body = await store.place(
            conn, order_id=oid, user_id=user, items=items, shipping_address="x",
            ttl_seconds=900, record=store.Record(key, claim.token, headers, take=claim.take()),
        )  # fmt: skip
        return StoredResponse(201, body, headers)

    try:
        outcome = await idem.run_claiming(req, work)
    except Problem as exc:
        return exc.status, b""
    stored = outcome.stored
    return (-stored.status if outcome.replayed else stored.status), stored.body


async def test_placing_a_keyed_order_is_three_round_trips_and_one_transaction(
    test_db_dsn: str, user: UUID
) -> None:
    """Round trips to PostgreSQL per ``POST /api/v1/orders`` with an Idempotency-Key (each
    costs the gateway a write, a wake-up and a read): a placed order is BEGIN, one call
    (claim, stock, order, lines, outbox event, idempotency record), COMMIT; a replay the same
    three, writing nothing; a refusal one more (recording it on the claim). This fails if a
    change adds a round trip (it was four and two transactions: the claim autocommitted)."""
    async with app_pool(test_db_dsn, max_size=1) as pool:
        trips = _Trips()
        async with pool.acquire() as conn:
            conn.add_query_logger(trips)
        idem = Idempotency(ttl=3600, in_flight_timeout=30)
        idem.pool = pool
        a, b, c = await new_products(pool, 5, 5, 5)
        # The connection's first use of a statement may add a type introspection, once.
        assert (await _place_keyed(idem, user, "warm-up", [(c, 1)]))[0] == 201

        async def counted(key: str, lines: list[tuple[UUID, int]]) -> tuple[int, int, int]:
            trips.queries.clear()
            status, _ = await _place_keyed(idem, user, key, lines)
            await asyncio.sleep(0)  # the logger is called soon after each statement
            return status, len(trips.queries), trips.transactions()

        assert await counted("two-lines", [(a, 1), (b, 2)]) == (201, 3, 1), trips.queries
        assert await counted("one-line", [(a, 1)]) == (201, 3, 1), trips.queries
        assert await counted("two-lines", [(a, 1), (b, 2)]) == (-201, 3, 1), trips.queries
        assert await counted("short", [(a, 50)]) == (409, 4, 1), trips.queries
        assert await counted("short", [(a, 50)]) == (-409, 3, 1), trips.queries
        assert await counted("two-lines", [(a, 2)]) == (422, 3, 1), trips.queries
        assert (await stock(pool, a), await stock(pool, b)) == (3, 3)


async def test_a_key_whose_order_is_not_committed_yet_is_409_at_once(
    pool: asyncpg.Pool, user: UUID
) -> None:
    """The claim is taken in the order's transaction, invisible until its commit: a second
    placement with the same key meanwhile must not wait on it (the advisory lock of the key):
    409 in flight at once (whatever its body), nothing written; after the commit, the replay."""
    (pid,) = await new_products(pool, 5)
    idem = Idempotency(ttl=3600, in_flight_timeout=30)
    idem.pool = pool
    req = IdempotentRequest.of(
        user_id=user, key="open", method="POST", path="/api/v1/orders",
        body={"items": [[str(pid), 1]]},
    )  # fmt: skip
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        claim = Claim(idem, req, uuid7())
        headers = {"content-type": "application/json"}
        body = await store.place(
            conn, order_id=uuid7(), user_id=user, shipping_address="x", ttl_seconds=900,
            items=[OrderItemIn(product_id=pid, quantity=1)],
            record=store.Record("open", claim.token, headers, take=claim.take()),
        )  # fmt: skip
        for lines in ([(pid, 1)], [(pid, 2)]):
            status, _ = await asyncio.wait_for(_place_keyed(idem, user, "open", lines), 5)
            assert status == 409
        assert await stock(pool, pid) == 5  # the open order's reservation is not committed
        await tx.commit()
    assert await _place_keyed(idem, user, "open", [(pid, 1)]) == (-201, body)
    assert await _place_keyed(idem, user, "open", [(pid, 2)]) == (422, b"")
    assert await stock(pool, pid) == 4
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE user_id = $1", user) == 1
