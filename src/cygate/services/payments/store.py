"""Payment rows and their state machine, in SQL: each step is one statement, one round trip
(PL/pgSQL functions of migration 0013: ``cygate_new_payment_attempt``,
``cygate_apply_payment_outcome``, ``cygate_settle_payment``, ``cygate_payment_webhook``).

States: ``initiated`` → ``captured`` | ``declined`` | ``failed``; a ``declined`` or ``failed``
payment may still become ``captured`` (the processor's word that money moved wins over anything
the gateway concluded earlier); ``captured`` is final (``cygate_payment_may_become``). Whoever
learns an outcome first (the synchronous call, a webhook, the recovery sweep) applies it through
``cygate_apply_payment_outcome`` (:func:`apply_outcome`, :func:`settle`, :func:`webhook`), which
locks the order and then the payment (always in that order: no deadlocks), so each transition and
its outbox events happen exactly once, in any order of arrival.

Each function runs in the caller's transaction, or, called outside one, is its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final, Literal
from uuid import UUID

import asyncpg

from cygate.ids import uuid7
from cygate.infra.outbox import traceparent
from cygate.services.idempotency import Claim, Held

__all__ = [
    "Claimed",
    "NewAttempt",
    "Outcome",
    "PaymentRow",
    "Settled",
    "Verdict",
    "WebhookResult",
    "apply_outcome",
    "get_payment",
    "new_attempt",
    "settle",
    "stuck_payments",
    "webhook",
]

log = logging.getLogger("cygate.payments")

Outcome = Literal["captured", "declined", "failed"]
Verdict = Literal[
    "created", "settled", "open", "missing", "not_pending", "nothing_to_charge", "held"
]

_COLUMNS: Final = (
    "id, order_id, attempt, status, amount_cents, currency, processor_key, processor_ref"
)
_APPLIED: Final = "changed, paid_by, order_status, order_paid"
_NEW_ATTEMPT: Final = (
    f"SELECT verdict, order_status, {_COLUMNS}, age, "
    "held_state, held_hash, held_status, held_headers, held_body "
    "FROM cygate_new_payment_attempt($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)
_NO_CLAIM: Final = (None, None, None, None, None, None)
_APPLY: Final = f"SELECT {_COLUMNS}, {_APPLIED} FROM cygate_apply_payment_outcome($1, $2, $3, $4)"
_SETTLE: Final = (
    f"SELECT {_COLUMNS}, {_APPLIED}, body, recorded "
    "FROM cygate_settle_payment($1, $2, $3, $4, $5, $6, $7, $8)"
)
_WEBHOOK: Final = (
    f"SELECT known, inserted, {_COLUMNS}, {_APPLIED} "
    "FROM cygate_payment_webhook($1, $2, $3, $4, $5, $6, $7)"
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
        """The API's payment document (``cygate_settle_payment`` writes these bytes for a
        settled payment's 201; a test compares the two)."""
        return {
            "id": str(self.id),
            "order_id": str(self.order_id),
            "status": self.status,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "attempt": self.attempt,
        }


@dataclass(frozen=True, slots=True)
class NewAttempt:
    """What :func:`new_attempt` found or did: ``created`` (the new attempt, committed with the
    call), ``settled`` (the captured or declined attempt of the request's key), ``open`` (the
    order's last attempt, still initiated, with its age: nothing written), ``missing``,
    ``not_pending`` (``order_status`` says what it is) or ``nothing_to_charge``."""

    verdict: Verdict
    order_status: str | None
    payment: PaymentRow | None


@dataclass(frozen=True, slots=True)
class Claimed:
    """An Idempotency-Key claim to record a settled payment's 201 on (``Claim.complete``'s
    columns): whose key, which key, the claim's token, the response's headers."""

    user_id: UUID
    key: str
    token: UUID
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Settled:
    """What :func:`settle` left: the payment (None: no such payment), the 201's body when it is
    captured or declined (else None), and whether that response was recorded under the claim
    (None: no claim or nothing to record; False: the claim was taken over)."""

    payment: PaymentRow | None
    body: bytes | None
    recorded: bool | None


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What :func:`webhook` did: ``known`` (a payment has the event's key), ``inserted`` (the
    event id is new), and the payment's status after it (None when unknown)."""

    known: bool
    inserted: bool
    status: str | None


def _row(record: asyncpg.Record, age: float = 0.0) -> PaymentRow | None:
    if record["id"] is None:
        return None
    return PaymentRow(
        id=record["id"],
        order_id=record["order_id"],
        attempt=record["attempt"],
        status=record["status"],
        amount_cents=record["amount_cents"],
        currency=record["currency"],
        processor_key=record["processor_key"],
        processor_ref=record["processor_ref"],
        age_seconds=age,
    )


def _report(record: asyncpg.Record, outcome: str, source: str) -> None:
    """Log what the state machine did (``cygate_apply_payment_outcome``'s flags)."""
    payment_id, order_id = record["id"], record["order_id"]
    if record["paid_by"] is not None:
        log.error(
            "payment %s captured by the processor but order %s is already paid by %s: "
            "refund needed",
            payment_id, order_id, record["paid_by"],
        )  # fmt: skip
    elif not record["changed"]:
        return  # already decided (a duplicate, a late or an out-of-order report)
    elif outcome == "captured" and not record["order_paid"]:
        log.error(
            "payment %s captured (%s) but order %s is %s: refund needed",
            payment_id, source, order_id, record["order_status"],
        )  # fmt: skip
    else:
        log.info("payment %s %s (%s)", payment_id, outcome, source)


async def get_payment(conn: asyncpg.Connection, payment_id: UUID) -> PaymentRow | None:
    """One payment as it is now (no lock)."""
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM payments WHERE id = $1", payment_id)
    return None if record is None else _row(record)


async def new_attempt(
    conn: asyncpg.Connection,
    order_id: UUID,
    user_id: UUID,
    request_key: str | None = None,
    *,
    take: Claim | None = None,
) -> NewAttempt:
    """Under the order's lock, check ``user_id``'s order may be paid and insert its next
    attempt as ``initiated`` (``cygate_new_payment_attempt``). ``request_key``: the client's
    Idempotency-Key, kept on the attempt so a retry under it finds it (and its outcome).
    ``take``: a claim of that key not taken yet, taken first in the same statement; when
    another request holds the key, :class:`~cygate.services.idempotency.Held` (nothing written).

    NOTE: call it outside a transaction (then it is one, committed when this returns): the
    attempt must be committed *before* the processor is called, so a crash can never leave a
    charge the database has no trace of.
    """
    claim: tuple[Any, ...] = _NO_CLAIM
    if take is not None:
        _, key, method, path, digest, token, ttl, in_flight = take.take()
        assert key == request_key
        claim = (method, path, digest, token, ttl, in_flight)
    record = await conn.fetchrow(_NEW_ATTEMPT, order_id, user_id, request_key, uuid7(), *claim)
    assert record is not None
    if record["verdict"] == "held":
        raise Held.of(record)
    payment = _row(record, record["age"] or 0.0)
    return NewAttempt(record["verdict"], record["order_status"], payment)


async def apply_outcome(
    conn: asyncpg.Connection,
    payment_id: UUID,
    outcome: Outcome,
    *,
    processor_ref: str | None = None,
    source: str,
) -> PaymentRow | None:
    """Move the payment to ``outcome`` if the state machine allows it, with its events; returns
    the payment as it now is (None if it does not exist).

    ``captured`` also marks the order paid (``order.paid``) when it is still pending. A capture
    that arrives for an order that is no longer pending (cancelled or expired meanwhile, or paid
    by another attempt) is recorded and logged for a refund: money moved, so the payment says so.
    """
    record = await conn.fetchrow(_APPLY, payment_id, outcome, processor_ref, traceparent())
    assert record is not None
    if record["id"] is not None:
        _report(record, outcome, source)
    return _row(record)


async def settle(
    conn: asyncpg.Connection,
    payment_id: UUID,
    outcome: Outcome | None,
    *,
    processor_ref: str | None = None,
    source: str,
    claim: Claimed | None = None,
) -> Settled:
    """:func:`apply_outcome` (``outcome`` None: only read the payment) and, when the payment is
    then captured or declined, its 201 body, recorded under ``claim`` in the same transaction
    (``cygate_settle_payment``): one round trip."""
    user_id, key, token, headers = (
        (None, None, None, None)
        if claim is None
        else (claim.user_id, claim.key, claim.token, claim.headers)
    )
    record = await conn.fetchrow(
        _SETTLE, payment_id, outcome, processor_ref, traceparent(), user_id, key, token, headers
    )
    assert record is not None
    if outcome is not None and record["id"] is not None:
        _report(record, outcome, source)
    body = record["body"]
    return Settled(_row(record), None if body is None else bytes(body), record["recorded"])


async def webhook(
    conn: asyncpg.Connection,
    *,
    event_id: str,
    processor_key: str,
    kind: str,
    payload: Any,
    outcome: Outcome | None,
    processor_ref: str | None,
) -> WebhookResult:
    """Record a processor's event once (by its id) and apply its ``outcome`` (None: a kind that
    changes nothing) when the event is new, in one transaction (``cygate_payment_webhook``)."""
    record = await conn.fetchrow(
        _WEBHOOK, event_id, processor_key, kind, payload, outcome, processor_ref, traceparent()
    )
    assert record is not None
    if record["known"] and record["inserted"] and outcome is not None:
        _report(record, outcome, "webhook")
    return WebhookResult(record["known"], record["inserted"], record["status"])


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
    return [_stuck(r) for r in records]


def _stuck(record: asyncpg.Record) -> PaymentRow:
    row = _row(record, float(record["age"]))
    assert row is not None
    return row
