"""Payments: the flow of one attempt, webhooks, and the recovery sweep (``docs/payments.md``).

The rule that makes crashes harmless: the attempt row (with the processor's idempotency key) is
committed *before* the processor is called, and every outcome is applied by
:func:`~cygate.services.payments.store.apply_outcome`, whoever learns it first. A crash at any
point leaves either nothing, or an ``initiated`` row whose key the sweep can ask the processor
about: charged → captured and the order paid; unknown to it → failed (the client may retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
import orjson

from cygate.edge.body import decode_json
from cygate.edge.problem import Problem
from cygate.infra.metrics import Metrics
from cygate.services.idempotency import Claim, ClaimLost, StoredResponse
from cygate.services.payments import store
from cygate.services.payments.http import CallFailed
from cygate.services.payments.processor import (
    Charge,
    ProcessorClient,
    ProcessorUnavailable,
)
from cygate.services.payments.settings import PaymentsSettings
from cygate.services.payments.signing import SignatureError, load_secret, verify
from cygate.upstream.resilience import CircuitBreaker

__all__ = ["AttemptInProgress", "Payments", "RecoveryReport", "crash_point"]

log = logging.getLogger("cygate.payments")

_OUTCOMES: dict[str, store.Outcome] = {
    "captured": "captured",
    "declined": "declined",
    "not_charged": "failed",
}
_RECOVERY_PAGE = 100
"""Stuck payments read per query by the recovery sweep (it reads every page)."""
_JSON_HEADERS = {"content-type": "application/json", "cache-control": "no-store"}
_WEBHOOK_KINDS: dict[str, store.Outcome] = {
    "charge.captured": "captured",
    "charge.declined": "declined",
}


class AttemptInProgress(Problem):
    """409: the order's last attempt is not settled yet. Transient: never stored under an
    Idempotency-Key (a retry with the same key after ``Retry-After`` must run again)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            409,
            "a payment attempt for this order is in progress",
            headers={"retry-after": str(max(1, retry_after))},
        )


def crash_point(settings: PaymentsSettings, name: str) -> None:
    """Fault injection for the crash tests: SIGKILL the whole gateway (its process group) here.

    Only ever set with ``environment = "test"`` (the settings refuse it otherwise).
    """
    if settings.fault == name:
        log.warning("fault %s: killing the gateway", name)
        os.killpg(os.getpgrp(), signal.SIGKILL)


@dataclass
class RecoveryReport:
    """What one recovery sweep did."""

    checked: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    unreachable: int = 0


class Payments:
    """The payments service of one worker: processor client, breaker, secret, sweeper."""

    def __init__(
        self,
        settings: PaymentsSettings,
        metrics: Metrics | None = None,
        *,
        environment: str = "development",
    ) -> None:
        self.settings = settings
        self.environment = environment
        self._metrics = metrics
        self.pool: asyncpg.Pool | None = None
        self.processor: ProcessorClient | None = None
        self.secret = b""
        self._sweeper: asyncio.Task[None] | None = None

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self, pool: asyncpg.Pool) -> None:
        """Bind the pool, build the client, load the webhook secret, start the sweeper."""
        s = self.settings
        self.pool = pool
        metrics = self._metrics

        def changed(old: str, new: str) -> None:
            log.warning("payment processor circuit %s -> %s", old, new)
            if metrics is not None:
                metrics.breaker_transition("payment-processor", old, new)

        breaker = CircuitBreaker(
            failure_threshold=s.breaker_failures,
            open_seconds=s.breaker_open_seconds,
            on_change=changed,
        )
        self.processor = ProcessorClient(
            s.processor_url,
            timeout=s.processor_timeout,
            breaker=breaker,
            metrics=metrics,
        )
        if s.webhook_secret or self.environment != "production":
            self.secret = load_secret(s.webhook_secret, s.webhook_secret_file)
        else:  # NOTE: never a generated secret in production: webhooks stay refused instead
            log.warning("no payment_webhook_secret: every payment webhook will be refused")
        if s.recovery_interval > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.processor is not None:
            self.processor.close()

    def _parts(self) -> tuple[asyncpg.Pool, ProcessorClient]:
        if self.pool is None or self.processor is None:
            raise RuntimeError("payments service not started")
        return self.pool, self.processor

    # -- one payment attempt ------------------------------------------------------------------

    async def pay(
        self, user_id: UUID, order_id: UUID, token: str, claim: Claim | None = None
    ) -> StoredResponse:
        """POST /api/v1/orders/{id}/payments: the 201 response, or a :class:`Problem`.

        ``claim`` (the request's Idempotency-Key) records the response in the transaction that
        settles the payment, so the key's answer and the payment's state commit together. The
        key is also written on the attempt before the processor is called: a retry under it
        after a crash answers with that attempt's outcome and never calls the processor again.
        """
        pool, processor = self._parts()
        try:
            processor.admit()  # PERF: an open circuit answers before any database work
        except ProcessorUnavailable as exc:
            raise _unavailable(str(exc), exc.retry_after) from None
        admitted = True
        request_key = None if claim is None else claim.request.key
        try:
            payment = await self._new_attempt(pool, processor, user_id, order_id, request_key)
            if payment.status != "initiated":
                # This key's attempt was settled before (its answer lost in a crash): no call.
                return await self._respond(pool, payment, claim)
            # The attempt is committed: from here a crash leaves a row the sweep will settle.
            crash_point(self.settings, "payment:after_commit")
            admitted = False  # charge() records the outcome with the breaker
            charge = await processor.charge(
                payment.processor_key,
                amount_cents=payment.amount_cents,
                currency=payment.currency,
                token=token,
                reference=str(order_id),
            )
        finally:
            if admitted:
                processor.release()
        crash_point(self.settings, "payment:after_charge")
        return await self._settle(pool, processor, payment, charge, claim)

    async def _new_attempt(
        self,
        pool: asyncpg.Pool,
        processor: ProcessorClient,
        user_id: UUID,
        order_id: UUID,
        request_key: str | None,
    ) -> store.PaymentRow:
        """Lock the order, check it may be paid, and commit a new ``initiated`` attempt; or
        the settled (captured or declined) attempt an earlier request under ``request_key``
        started: the processor's answer to that key stands."""
        for _ in range(2):
            async with pool.acquire() as conn, conn.transaction():
                order = await store.lock_order(conn, order_id)
                # NOTE: another user's order and a missing one look the same (BOLA: 404).
                if order is None or order["user_id"] != user_id:
                    raise Problem(404, "no such order")
                if request_key is not None:
                    mine = await store.attempt_for_request(conn, order_id, request_key)
                    if mine is not None and mine.status in ("captured", "declined"):
                        return mine
                    # ``initiated``: it is the order's open attempt, settled below; ``failed``:
                    # the processor never charged it, so a new attempt is safe.
                if order["status"] != "pending":
                    raise Problem(409, f"order is {order['status']}, not pending")
                if order["total_cents"] <= 0:
                    # NOTE: products may be free; a processor charges positive amounts only.
                    raise Problem(409, "the order's total is 0: there is nothing to charge")
                last = await store.latest_attempt(conn, order_id)
                if last is None or last.status != "initiated":
                    return await store.create_attempt(
                        conn, order, 1 if last is None else last.attempt + 1, request_key
                    )
            # The last attempt is still open: settle it before a new one may be charged.
            await self._settle_open_attempt(pool, processor, last)
        raise AttemptInProgress(1)

    async def _settle_open_attempt(
        self, pool: asyncpg.Pool, processor: ProcessorClient, last: store.PaymentRow
    ) -> None:
        """An ``initiated`` attempt blocks a new one until the processor has told its fate."""
        # NOTE: younger than two timeouts, its call may still be on the way to the processor:
        # a look-up could miss a charge that is about to happen. The client waits instead.
        in_flight = 2 * self.settings.processor_timeout
        if last.age_seconds < in_flight:
            wait = max(1, math.ceil(in_flight - last.age_seconds))
            raise AttemptInProgress(wait)
        try:
            charge = await processor.lookup(last.processor_key)
        except CallFailed as exc:
            raise _unavailable(f"payment processor unreachable: {exc}", 1) from None
        await self._apply(pool, last.id, charge, "reconcile")

    async def _settle(
        self, pool: asyncpg.Pool, processor: ProcessorClient, payment: store.PaymentRow,
        charge: Charge, claim: Claim | None,
    ) -> StoredResponse:  # fmt: skip
        """Apply what the charge said; a 201 with the payment, or 503 when it is not known."""
        _, response = await self._apply(pool, payment.id, charge, "charge", claim)
        if response is not None:
            return response
        # NOTE: not charged (the order is unchanged, a retry is safe at once) or unknown (the
        # row stays ``initiated`` until a webhook or the sweep settles it).
        retry = 1 if charge.verdict == "not_charged" else math.ceil(
            2 * self.settings.processor_timeout)  # fmt: skip
        if processor.breaker.state == "open":
            retry = max(retry, processor.breaker.retry_after())
        raise _unavailable(f"payment processor unavailable ({charge.reason})", retry)

    async def _apply(
        self, pool: asyncpg.Pool, payment_id: UUID, charge: Charge, source: str,
        claim: Claim | None = None,
    ) -> tuple[store.PaymentRow | None, StoredResponse | None]:  # fmt: skip
        """Apply ``charge`` in one transaction (an unknown verdict changes nothing); when the
        payment is then settled (captured or declined) also build its 201 response and record
        it under ``claim``."""
        outcome = _OUTCOMES.get(charge.verdict)
        async with pool.acquire() as conn, conn.transaction():
            if outcome is None:
                # NOTE: the answer was lost, but a webhook may have settled the payment
                # meanwhile: then the client gets that answer instead of a 503.
                final = await store.get_payment(conn, payment_id)
            else:
                final = await store.apply_outcome(
                    conn, payment_id, outcome, processor_ref=charge.ref, source=source
                )
            if final is None or final.status not in ("captured", "declined"):
                return final, None
            return final, await self._record(conn, final, claim)

    async def _respond(
        self, pool: asyncpg.Pool, payment: store.PaymentRow, claim: Claim | None
    ) -> StoredResponse:
        """The 201 of a payment settled earlier, recorded under ``claim``."""
        async with pool.acquire() as conn, conn.transaction():
            return await self._record(conn, payment, claim)

    @staticmethod
    async def _record(
        conn: asyncpg.Connection, payment: store.PaymentRow, claim: Claim | None
    ) -> StoredResponse:
        """The 201 response of a settled ``payment``, recorded under ``claim`` in the open
        transaction."""
        response = StoredResponse(201, orjson.dumps(payment.public()), dict(_JSON_HEADERS))
        if claim is not None:
            try:
                async with conn.transaction():  # a savepoint: the money state commits anyway
                    await claim.complete(conn, response)
            except ClaimLost:
                claim.finished = True  # a retry took the key over; it will find the order
                log.warning("payment %s settled but its Idempotency-Key was taken over",
                            payment.id)  # fmt: skip
        return response

    # -- webhooks -----------------------------------------------------------------------------

    async def webhook(self, body: bytes, signature: str | None) -> None:
        """POST /api/v1/payments/webhook: verify, then apply the event once (by its id)."""
        pool, _ = self._parts()
        if not self.secret:
            raise Problem(401, "webhook refused: no webhook secret is configured")
        try:
            verify(self.secret, body, signature, now=time.time(),
                   tolerance=self.settings.webhook_tolerance)  # fmt: skip
        except SignatureError as exc:
            raise Problem(401, f"webhook refused: {exc}") from None
        event = decode_json(body)  # the one JSON rule (NUL, nesting): cygate.edge.body
        try:
            event_id, kind, data = event["id"], event["type"], event["data"]
            key = data["idempotency_key"]
        except (KeyError, TypeError) as exc:
            raise Problem(400, f"malformed webhook event: {exc!s}") from None
        if not (isinstance(event_id, str) and 0 < len(event_id) <= 255 and isinstance(key, str)):
            raise Problem(400, "malformed webhook event: id and data.idempotency_key are strings")
        outcome = _WEBHOOK_KINDS.get(kind)
        async with pool.acquire() as conn, conn.transaction():
            found = await conn.fetchrow(
                "SELECT id, order_id FROM payments WHERE processor_key = $1", key
            )
            if found is None:
                log.warning("webhook %s for unknown processor key %r ignored", event_id, key)
                return
            payment_id = found["id"]
            # NOTE: the order's lock first, as everywhere: the event row's foreign key takes a
            # share lock on the payment, and taking it before the order's would deadlock with
            # the synchronous path (order, then payment).
            await store.lock_order(conn, found["order_id"])
            inserted = await conn.fetchval(
                "INSERT INTO payment_events (event_id, payment_id, kind, payload) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                event_id, payment_id, str(kind), event,
            )  # fmt: skip
            if inserted is None or outcome is None:
                return  # a duplicate delivery, or a kind that changes nothing
            await store.apply_outcome(
                conn,
                payment_id,
                outcome,
                processor_ref=data.get("id"),
                source="webhook",
            )

    # -- recovery -----------------------------------------------------------------------------

    async def recover(
        self, older_than: float | None = None, *, page_size: int = _RECOVERY_PAGE
    ) -> RecoveryReport:
        """Settle every payment stuck ``initiated`` for longer than ``older_than`` seconds
        (default: the setting) by asking the processor about its key."""
        pool, processor = self._parts()
        age = self.settings.recovery_after if older_than is None else older_than
        report = RecoveryReport()
        after: UUID | None = None
        while True:
            # NOTE: page by id through every stuck payment: a first page of attempts the
            # processor cannot answer for (they stay initiated) must not hide the others.
            async with pool.acquire() as conn:
                page = await store.stuck_payments(conn, age, page_size, after)
            for payment in page:
                report.checked += 1
                try:
                    charge = await processor.lookup(payment.processor_key)
                except CallFailed as exc:
                    report.unreachable += 1
                    log.warning("recovery: cannot ask about payment %s: %s", payment.id, exc)
                    continue
                final, _ = await self._apply(pool, payment.id, charge, "recovery")
                status = final.status if final is not None else "missing"
                report.outcomes[status] = report.outcomes.get(status, 0) + 1
            if len(page) < page_size:
                break
            after = page[-1].id
        if report.checked:
            log.info("payment recovery: %s", report)
        return report

    async def _sweep_forever(self) -> None:
        interval = self.settings.recovery_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.recover()
            except asyncio.CancelledError:
                raise
            except Exception:  # NOTE: the sweep must outlive a database outage
                log.warning("payment recovery sweep failed", exc_info=True)


def _unavailable(detail: str, retry_after: int) -> Problem:
    return Problem(503, detail, headers={"retry-after": str(max(1, retry_after))})
