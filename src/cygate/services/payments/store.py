"""Payment rows and their state machine, in SQL (every function runs in the caller's transaction).

States: ``initiated`` → ``captured`` | ``declined`` | ``failed``; a ``declined`` or ``failed``
payment may still become ``captured`` (the processor's word that money moved wins over anything
the gateway concluded earlier); ``captured`` is final. Whoever learns an outcome first (the
synchronous call, a webhook, the recovery sweep) applies it through :func:`apply_outcome`, which
locks the order and then the payment (always in that order: no deadlocks), so each transition and
its outbox events happen exactly once, in any order of arrival.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import asyncpg

from cygate.ids import uuid7
from cygate.infra.outbox import emit
from cygate.services.orders.store import lock_order, mark_paid

__all__ = [
    "Outcome",
    "PaymentRow",
    "apply_outcome",
    "attempt_for_request",
    "create_attempt",
    "get_payment",
    "latest_attempt",
    "lock_order",
    "stuck_payments",
]

log = logging.getLogger("cygate.payments")

Outcome = Literal["captured", "declined", "failed"]

# Which outcome may replace which status (anything else is a no-op).
_ALLOWED: dict[str, frozenset[str]] = {
    "initiated": frozenset({"captured", "declined", "failed"}),
    "declined": frozenset({"captured"}),
    "failed": frozenset({"captured"}),
    "captured": frozenset(),
    "refunded": frozenset(),
}

_COLUMNS = (
    "id, order_id, attempt, status, amount_cents, currency, processor_key, processor_ref, "
    "created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """One row of ``payments``."""

    id: UUID
    order_id: UUID
    attempt: int
    status: str
    amount_cents: int
    currency: str
    processor_key: str
    processor_ref: str | None
    age_seconds: float = 0.0

    def public(self) -> dict[str, Any]:
        """The API's payment document."""
        return {
            "id": str(self.id),
            "order_id": str(self.order_id),
            "status": self.status,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "attempt": self.attempt,
        }


def _row(record: asyncpg.Record) -> PaymentRow:
    return PaymentRow(
        id=record["id"],
        order_id=record["order_id"],
        attempt=record["attempt"],
        status=record["status"],
        amount_cents=record["amount_cents"],
        currency=record["currency"],
        processor_key=record["processor_key"],
        processor_ref=record["processor_ref"],
        age_seconds=float(record.get("age", 0.0) or 0.0),
    )


async def get_payment(conn: asyncpg.Connection, payment_id: UUID) -> PaymentRow | None:
    """One payment as it is now (no lock)."""
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM payments WHERE id = $1", payment_id)
    return None if record is None else _row(record)


async def latest_attempt(conn: asyncpg.Connection, order_id: UUID) -> PaymentRow | None:
    """The order's most recent payment attempt, with its age."""
    record = await conn.fetchrow(
        f"SELECT {_COLUMNS}, extract(epoch FROM now() - created_at)::float8 AS age "
        "FROM payments WHERE order_id = $1 ORDER BY attempt DESC LIMIT 1",
        order_id,
    )
    return None if record is None else _row(record)


async def attempt_for_request(
    conn: asyncpg.Connection, order_id: UUID, request_key: str
) -> PaymentRow | None:
    """The order's most recent attempt started by a request with Idempotency-Key
    ``request_key``, with its age."""
    record = await conn.fetchrow(
        f"SELECT {_COLUMNS}, extract(epoch FROM now() - created_at)::float8 AS age "
        "FROM payments WHERE order_id = $1 AND request_key = $2 ORDER BY attempt DESC LIMIT 1",
        order_id,
        request_key,
    )
    return None if record is None else _row(record)


async def create_attempt(
    conn: asyncpg.Connection, order: asyncpg.Record, attempt: int, request_key: str | None = None
) -> PaymentRow:
    """Insert attempt ``attempt`` of ``order`` as ``initiated`` (the caller commits it *before*
    the processor is called, so a crash can never leave a charge the database has no trace of).
    ``request_key``: the client's Idempotency-Key, so a retry under it finds this attempt.

    NOTE: the processor's idempotency key is derived from the attempt's id: a retry of the same
    attempt (recovery, a resent request) can never charge twice, and a new attempt (after a
    decline or a definite failure) gets a new key.
    """
    payment_id = uuid7()
    record = await conn.fetchrow(
        "INSERT INTO payments (id, order_id, attempt, status, amount_cents, currency, "
        "processor_key, request_key) VALUES ($1, $2, $3, 'initiated', $4, $5, $6, $7) "
        f"RETURNING {_COLUMNS}",
        payment_id,
        order["id"],
        attempt,
        order["total_cents"],
        order["currency"],
        f"cygate-pay-{payment_id}",
        request_key,
    )
    return _row(record)


async def apply_outcome(
    conn: asyncpg.Connection,
    payment_id: UUID,
    outcome: Outcome,
    *,
    processor_ref: str | None = None,
    source: str,
) -> PaymentRow | None:
    """Move the payment to ``outcome`` if the state machine allows it, with its events; returns
    the payment as it now is (None if it does not exist). Must run inside a transaction.

    ``captured`` also marks the order paid (``order.paid``) when it is still pending. A capture
    that arrives for an order that is no longer pending (cancelled or expired meanwhile, or paid
    by another attempt) is recorded and logged for a refund: money moved, so the payment says so.
    """
    order_id = await conn.fetchval("SELECT order_id FROM payments WHERE id = $1", payment_id)
    if order_id is None:
        return None
    order = await lock_order(conn, order_id)
    record = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM payments WHERE id = $1 FOR UPDATE", payment_id
    )
    assert order is not None and record is not None  # payments.order_id is a foreign key
    payment = _row(record)
    if outcome not in _ALLOWED.get(payment.status, frozenset()):
        return payment  # already decided (a duplicate, a late or an out-of-order report)
    if outcome == "captured":
        other = await conn.fetchval(
            "SELECT id FROM payments WHERE order_id = $1 AND status = 'captured' AND id <> $2",
            order_id,
            payment_id,
        )
        if other is not None:
            # NOTE: a second capture for one order (only possible if a processor charged an
            # attempt after saying it had no record of it). The unique index forbids two
            # captured rows: leave this one as it is and say loudly that a refund is due.
            log.error(
                "payment %s captured by the processor but order %s is already paid by %s: "
                "refund needed",
                payment_id, order_id, other,
            )  # fmt: skip
            return payment
    record = await conn.fetchrow(
        "UPDATE payments SET status = $2, processor_ref = coalesce($3, processor_ref), "
        f"updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
        payment_id,
        outcome,
        processor_ref,
    )
    payment = _row(record)
    await emit(
        conn,
        aggregate="payment",
        aggregate_id=payment.id,
        event_type=f"payment.{outcome}",
        payload={
            "payment_id": str(payment.id),
            "order_id": str(order_id),
            "user_id": None if order["user_id"] is None else str(order["user_id"]),
            "amount_cents": payment.amount_cents,
            "currency": payment.currency,
            "attempt": payment.attempt,
        },
    )
    # NOTE: the orders service owns the order's state machine and its ``order.paid`` event.
    if outcome == "captured" and not await mark_paid(conn, order_id, payment.id):
        log.error(
            "payment %s captured (%s) but order %s is %s: refund needed",
            payment_id, source, order_id, order["status"],
        )  # fmt: skip
    else:
        log.info("payment %s %s (%s)", payment_id, outcome, source)
    return payment


async def stuck_payments(
    conn: asyncpg.Connection, older_than: float, limit: int = 100, after: UUID | None = None
) -> list[PaymentRow]:
    """Payments still ``initiated`` after ``older_than`` seconds, oldest first (ids are uuid7:
    their order is the order of creation); ``after``: the page after that payment's id."""
    records = await conn.fetch(
        f"SELECT {_COLUMNS}, extract(epoch FROM now() - created_at)::float8 AS age "
        "FROM payments WHERE status = 'initiated' "
        "AND created_at < now() - make_interval(secs => $1) AND ($3::uuid IS NULL OR id > $3)"
        " ORDER BY id LIMIT $2",
        older_than,
        limit,
        after,
    )
    return [_row(r) for r in records]
