"""Orders in PostgreSQL: placing (stock reserved atomically), reading, and state transitions.

Every function that changes state takes a connection *inside the caller's transaction* and writes
its outbox event on it, so the change and its event commit together.

NOTE on concurrency (``docs/orders.md``):

- stock is reserved under row locks taken in product-id order (``SELECT ... ORDER BY id FOR
  UPDATE``), then decremented; checking and decrementing under the lock means no oversell, and
  every writer (place, cancel, expire) locks products in the same order, so they cannot deadlock
  (placing is the server-side function ``cygate_place_order``, migration 0007: one round trip);
- an order's transitions lock the order row first (then products): mark_paid, cancel, ship and
  the expiry sweep (``FOR UPDATE SKIP LOCKED``) never change an order twice;
- a refusal (unknown product, insufficient stock) raises before anything is written: the caller's
  transaction rolls back and nothing stays reserved.
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec
import orjson

from cygate.edge.problem import Problem
from cygate.infra import outbox
from cygate.infra.outbox import emit
from cygate.services.idempotency import CLAIM_LOST_SQLSTATE, ClaimLost, Held
from cygate.services.orders.models import Order, OrderItem, OrderItemIn, OrderPage

__all__ = [
    "CursorError",
    "Record",
    "cancel",
    "expire_due",
    "get_order",
    "list_orders",
    "lock_order",
    "mark_paid",
    "payment_in_flight",
    "place",
    "ship",
]

_ORDER_COLUMNS: Final = (
    "id, user_id, status, total_cents, currency, shipping_address, created_at, updated_at, "
    "expires_at"
)
_GIVE_STOCK: Final = """
UPDATE products p SET stock = p.stock + i.q
  FROM unnest($1::uuid[], $2::int[]) AS i(id, q) WHERE p.id = i.id"""
# PERF: one round trip locks the products (ascending id), checks them, takes the stock, writes
# the order, its lines, its ``order.created`` outbox row (the effect of cygate.infra.outbox.emit)
# and builds the 201 body; with a claim it also records that response (migration 0007).
_PLACE: Final = """
SELECT placed, body, found_ids, stocks, currencies
  FROM cygate_place_order($1, $2, $3::uuid[], $4::int[], $5, $6, $7, $8, $9)"""
# With the claim of the Idempotency-Key taken in the same statement first (migration 0012).
_CLAIM_PLACE: Final = """
SELECT claimed, placed, body, found_ids, stocks, currencies,
       held_state, held_hash, held_status, held_headers, held_body
  FROM cygate_claim_place_order($1, $2, $3::uuid[], $4::int[], $5, $6, $7, $8, $9,
                                $10, $11, $12, $13, $14)"""
_SET_TRACEPARENT: Final = "SELECT set_config('cygate.traceparent', $1, true)"
_ITEMS_OF: Final = """
SELECT order_id, product_id, quantity, unit_price_cents FROM order_items
 WHERE order_id = ANY($1::uuid[]) ORDER BY order_id, product_id"""
_SET_STATUS: Final = """
UPDATE orders SET status = $2, version = version + 1, updated_at = now()
 WHERE id = ANY($1::uuid[])"""


class CursorError(ValueError):
    """A ``cursor`` this API did not issue."""


# An order's row with its items in the same row (three arrays in product order).
# PERF: a read is one round trip to PostgreSQL, not two: each round trip costs the worker a
# write, a wake-up and a read (an order read's CPU, `benchmarks.macro.mix --cost`).
_WITH_ITEMS: Final = f"""
SELECT {_ORDER_COLUMNS}, i.products, i.quantities, i.prices
  FROM orders CROSS JOIN LATERAL (
       SELECT array_agg(product_id ORDER BY product_id) AS products,
              array_agg(quantity ORDER BY product_id) AS quantities,
              array_agg(unit_price_cents ORDER BY product_id) AS prices
         FROM order_items WHERE order_id = orders.id) AS i"""


def _with_items(row: asyncpg.Record) -> Order:
    """An :class:`Order` from a :data:`_WITH_ITEMS` row."""
    products = row["products"] or ()
    items = list(map(OrderItem, products, row["quantities"] or (), row["prices"] or ()))
    return _record_order(row, items)


def _record_order(row: asyncpg.Record, items: list[OrderItem]) -> Order:
    return Order(
        id=row["id"],
        user_id=row["user_id"],
        status=row["status"],
        items=items,
        total_cents=row["total_cents"],
        currency=row["currency"],
        shipping_address=row["shipping_address"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
    )


async def _items(conn: Any, order_ids: list[UUID]) -> dict[UUID, list[OrderItem]]:
    out: dict[UUID, list[OrderItem]] = defaultdict(list)
    for r in await conn.fetch(_ITEMS_OF, order_ids):
        out[r["order_id"]].append(OrderItem(r["product_id"], r["quantity"], r["unit_price_cents"]))
    return out


def _event(order: asyncpg.Record, items: list[OrderItem] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "order_id": str(order["id"]),
        "user_id": None if order["user_id"] is None else str(order["user_id"]),
        "total_cents": order["total_cents"],
        "currency": order["currency"],
    }
    if items is not None:
        payload["items"] = [
            {"product_id": str(i.product_id), "quantity": i.quantity} for i in items
        ]
    return payload


class Record(msgspec.Struct, frozen=True):
    """Record the 201 response under an ``Idempotency-Key`` claim, in the order's statement."""

    key: str
    claim: UUID
    headers: dict[str, str]
    take: tuple[Any, ...] | None = None
    """:meth:`Claim.take <cygate.services.idempotency.Claim.take>`: take the claim first, in
    the same statement (:meth:`Idempotency.run_claiming`); None: the claim is taken already."""


async def place(
    conn: asyncpg.Connection,
    *,
    order_id: UUID,
    user_id: UUID,
    items: list[OrderItemIn],
    shipping_address: Any,
    ttl_seconds: float,
    record: Record | None = None,
) -> bytes:
    """Create a pending order, reserving its stock at catalog prices (one statement in the
    caller's transaction); returns the order as JSON (the 201 body, the bytes
    ``msgspec.json.encode(Order)`` gives). 422 unknown products or mixed currencies, 409
    insufficient stock: nothing is written then. ``items`` must not repeat a product.

    ``record``: the response is recorded under that claim (``Claim.token``) in the same
    statement; a claim taken over raises :class:`~cygate.services.idempotency.ClaimLost`. With
    ``record.take`` the statement takes the claim first (``cygate_claim_place_order``): when
    another request holds the key it raises :class:`~cygate.services.idempotency.Held` and
    writes nothing; a refusal leaves the claim written in the caller's transaction.
    """
    wanted = sorted(items, key=lambda i: i.product_id)
    ids = [i.product_id for i in wanted]
    traceparent = outbox.traceparent()
    if traceparent is not None:
        # The function's outbox row takes its traceparent from this transaction's setting
        # (migration 0011): one more round trip, in sampled traced requests only.
        await conn.execute(_SET_TRACEPARENT, traceparent)
    args = (
        order_id,
        user_id,
        ids,
        [i.quantity for i in wanted],
        msgspec.json.encode(shipping_address).decode(),
        float(ttl_seconds),
        None if record is None else record.key,
        None if record is None else record.claim,
        None if record is None else record.headers,
    )
    try:
        if record is not None and record.take is not None:
            user, key, method, path, digest, token, key_ttl, in_flight = record.take
            assert (user, key, token) == (user_id, record.key, record.claim)
            row = await conn.fetchrow(_CLAIM_PLACE, *args, method, path, digest, key_ttl, in_flight)
        else:
            row = await conn.fetchrow(_PLACE, *args)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == CLAIM_LOST_SQLSTATE:
            raise ClaimLost(str(exc)) from None
        raise
    assert row is not None
    if record is not None and record.take is not None and not row["claimed"]:
        raise Held.of(row)
    if row["placed"]:
        return bytes(row["body"])
    raise _refusal(items, wanted, row)


def _refusal(items: list[OrderItemIn], wanted: list[OrderItemIn], row: asyncpg.Record) -> Problem:
    """The problem of an order the database refused (what its product locks read)."""
    locked = zip(row["found_ids"] or [], row["stocks"] or [], row["currencies"] or [], strict=True)
    products = {pid: (stock, currency) for pid, stock, currency in locked}
    position = {item.product_id: n for n, item in enumerate(items)}
    unknown = [
        {"field": f"body.items[{position[i.product_id]}].product_id",
         "message": f"no product {i.product_id}"}
        for i in wanted
        if i.product_id not in products
    ]  # fmt: skip
    if unknown:
        return Problem(422, "the order names products that do not exist", extra={"errors": unknown})
    currencies = {currency for _, currency in products.values()}
    if len(currencies) > 1:
        return Problem(
            422,
            "one order is paid in one currency",
            extra={
                "errors": [
                    {"field": "body.items", "message": f"mixed currencies {sorted(currencies)}"}
                ]
            },
        )
    short = [
        {"product_id": str(i.product_id), "requested": i.quantity,
         "available": products[i.product_id][0]}
        for i in wanted
        if products[i.product_id][0] < i.quantity
    ]  # fmt: skip
    if short:
        return Problem(409, "insufficient stock; nothing was reserved", extra={"items": short})
    raise RuntimeError("cygate_place_order refused an order that passes every check")


async def get_order(conn: Any, order_id: UUID) -> Order | None:
    """One order with its items (``conn``: a connection or the pool)."""
    row = await conn.fetchrow(f"{_WITH_ITEMS} WHERE orders.id = $1", order_id)
    return None if row is None else _with_items(row)


def _encode_cursor(created_at: datetime, order_id: UUID) -> str:
    raw = orjson.dumps([created_at.isoformat(), str(order_id)])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, oid = orjson.loads(raw)
        at = datetime.fromisoformat(when)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, UUID(oid)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise CursorError("malformed cursor") from None


async def list_orders(
    conn: Any, *, user_id: UUID | None, limit: int, cursor: str | None
) -> OrderPage:
    """Orders newest first, keyset-paged; ``user_id=None`` lists everyone's (admin)."""
    where: list[str] = []
    args: list[Any] = []
    if user_id is not None:
        args.append(user_id)
        where.append(f"user_id = ${len(args)}")
    if cursor is not None:
        at, last = _decode_cursor(cursor)
        args += [at, last]
        a, b = len(args) - 1, len(args)
        # NOTE: newest first, ties by id ascending: the order of both indexes
        # (orders_user_created_idx, orders_created_idx).
        where.append(f"(created_at < ${a} OR (created_at = ${a} AND id > ${b}))")
    args.append(limit + 1)
    sql = (
        _WITH_ITEMS
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY created_at DESC, id ASC LIMIT ${len(args)}"
    )
    rows = await conn.fetch(sql, *args)
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1]["created_at"], rows[-1]["id"])
    return OrderPage([_with_items(r) for r in rows], next_cursor)


async def lock_order(conn: asyncpg.Connection, order_id: UUID) -> asyncpg.Record | None:
    """The order's row (``id, user_id, status, total_cents, currency``), locked until the
    caller's transaction ends; None when there is no such order."""
    return await conn.fetchrow(
        "SELECT id, user_id, status, total_cents, currency FROM orders WHERE id = $1 FOR UPDATE",
        order_id,
    )


async def _release(
    conn: asyncpg.Connection, order_ids: list[UUID]
) -> tuple[dict[UUID, list[OrderItem]], list[UUID]]:
    """Give back the stock of ``order_ids``; returns their items and the products touched."""
    items = await _items(conn, order_ids)
    per_product: dict[UUID, int] = defaultdict(int)
    for lines in items.values():
        for line in lines:
            per_product[line.product_id] += line.quantity
    ids = sorted(per_product)
    if ids:
        # Same lock order as place(): product id ascending.
        await conn.execute(
            "SELECT 1 FROM products WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", ids
        )
        await conn.execute(_GIVE_STOCK, ids, [per_product[i] for i in ids])
    return items, ids


async def payment_in_flight(conn: asyncpg.Connection, order_ids: list[UUID]) -> set[UUID]:
    """Those of ``order_ids`` (locked by the caller) with a payment attempt still ``initiated``.

    NOTE: a separate statement after the row locks on purpose: under READ COMMITTED it sees
    every attempt committed before the lock was granted (an attempt is created under the same
    order lock), which a condition inside the locking query would not (its snapshot is older).
    """
    rows = await conn.fetch(
        "SELECT DISTINCT order_id FROM payments"
        " WHERE order_id = ANY($1::uuid[]) AND status = 'initiated'",
        order_ids,
    )
    return {r["order_id"] for r in rows}


async def _end(conn: asyncpg.Connection, orders: list[asyncpg.Record], status: str) -> list[UUID]:
    """Give back the stock of the locked pending ``orders``, set ``status`` (cancelled or
    expired) and write ``order.<status>`` for each. Returns the products whose stock changed."""
    ids = [o["id"] for o in orders]
    items, touched = await _release(conn, ids)
    await conn.execute(_SET_STATUS, ids, status)
    for o in orders:
        await emit(
            conn,
            aggregate="order",
            aggregate_id=o["id"],
            event_type=f"order.{status}",
            payload=_event(o, items.get(o["id"], [])),
        )
    return touched


async def cancel(conn: asyncpg.Connection, order: asyncpg.Record) -> list[UUID]:
    """Cancel the locked pending ``order`` (from :func:`lock_order`): stock released, event
    written. Returns the products whose stock changed. The caller checks the transition."""
    return await _end(conn, [order], "cancelled")


async def ship(conn: asyncpg.Connection, order: asyncpg.Record) -> None:
    """Mark the locked paid ``order`` shipped (event written). The caller checks the transition."""
    await conn.execute(_SET_STATUS, [order["id"]], "shipped")
    user = None if order["user_id"] is None else str(order["user_id"])
    await emit(
        conn,
        aggregate="order",
        aggregate_id=order["id"],
        event_type="order.shipped",
        payload={"order_id": str(order["id"]), "user_id": user},
    )


async def mark_paid(conn: asyncpg.Connection, order_id: UUID, payment_id: UUID) -> bool:
    """pending → paid, inside the caller's (the payment's) transaction, with ``order.paid``.

    True when this call made the order paid. False when it did not: no such order, or it is not
    pending any more (already paid, cancelled, expired, shipped); a payments caller that has
    captured money must then refund or void it. The order row stays locked until the caller's
    transaction ends, so the expiry sweep (``SKIP LOCKED``) and a cancel cannot interleave.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("mark_paid belongs in the payment's transaction")
    # NOTE: the transition and its event are one SQL function (migration 0013), which the
    # payments state machine calls too, in the statement that captures the payment.
    paid: bool = await conn.fetchval(
        "SELECT cygate_mark_paid($1, $2, $3)", order_id, payment_id, outbox.traceparent()
    )
    return paid


async def expire_due(conn: asyncpg.Connection, limit: int) -> tuple[int, list[UUID]]:
    """Expire up to ``limit`` pending orders past ``expires_at`` (caller's transaction).

    ``FOR UPDATE SKIP LOCKED``: orders another sweeper (or a payment, or a cancel) holds are
    skipped, never released twice. Returns (orders expired, products whose stock changed).
    """
    rows = await conn.fetch(
        "SELECT id, user_id, total_cents, currency FROM orders"
        " WHERE status = 'pending' AND expires_at <= now()"
        "   AND NOT EXISTS (SELECT 1 FROM payments p"
        "                    WHERE p.order_id = orders.id AND p.status = 'initiated')"
        " ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    # NOTE: the NOT EXISTS above keeps orders with a payment in flight out of the batch, or a
    # batch's worth of them (the oldest, stuck until the payments recovery settles them) would
    # fill every batch and stop expiry for everyone (CI saw 0 of 30 expired). Its snapshot is
    # older than the locks, so the check after them stays: it sees attempts committed meanwhile.
    if rows:
        # A payment whose fate the processor has not told yet keeps its order: were the order
        # released now, a charge that then succeeds would pay for nothing. The payments
        # recovery sweep settles the attempt; a later sweep here expires what stays unpaid.
        paying = await payment_in_flight(conn, [r["id"] for r in rows])
        rows = [r for r in rows if r["id"] not in paying]
    if not rows:
        return 0, []
    return len(rows), await _end(conn, rows, "expired")
