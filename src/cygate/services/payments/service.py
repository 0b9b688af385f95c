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

from cygate.edge.body import decode_json
from cygate.edge.problem import Problem
from cygate.infra.metrics import Metrics
from cygate.services.idempotency import Claim, Held, StoredResponse
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

    def circuit_open(self) -> bool:
        """The processor's breaker is open: a payment now would be a 503 (or its probe)."""
        _, processor = self._parts()
        return processor.breaker.state == "open"

    async def pay(
        self,
        user_id: UUID,
        order_id: UUID,
        token: str,
        claim: Claim | None = None,
        *,
        take: bool = False,
    ) -> StoredResponse:
        """POST /api/v1/orders/{id}/payments: the 201 response, or a :class:`Problem`.

        ``claim`` (the request's Idempotency-Key) records the response in the transaction that
        settles the payment, so the key's answer and the payment's state commit together. The
        key is also written on the attempt before the processor is called: a retry under it
        after a crash answers with that attempt's outcome and never calls the processor again.

        ``take``: ``claim`` is not taken yet; the statement that commits the attempt takes it
        first (one round trip for both). Another request holding the key raises
        :class:`~cygate.services.idempotency.Held` (nothing written; the claim is finished).
        """
        pool, processor = self._parts()
        try:
            processor.admit()  # PERF: an open circuit answers before any database work
        except ProcessorUnavailable as exc:
            if take and claim is not None:
                claim.finished = True  # never taken: nothing to release
            raise _unavailable(str(exc), exc.retry_after) from None
        admitted = True
        request_key = None if claim is None else claim.request.key
        try:
            payment = await self._new_attempt(
                pool, processor, user_id, order_id, request_key, claim if take else None
            )
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
        take: Claim | None,
    ) -> store.PaymentRow:
        """Lock the order, check it may be paid, and commit a new ``initiated`` attempt; or
        the settled (captured or declined) attempt an earlier request under ``request_key``
        started: the processor's answer to that key stands. ``take``: the key's claim, taken
        by the first statement."""
        for _ in range(2):
            async with pool.acquire() as conn:
                # NOTE: outside a transaction: one statement, committed when it returns (with
                # the claim it takes: a retry under the key meanwhile gets 409 in flight).
                try:
                    got = await store.new_attempt(conn, order_id, user_id, request_key, take=take)
                except Held:
                    assert take is not None
                    take.finished = True  # never ours: nothing to record or release
                    raise
            take = None  # taken
            if got.verdict == "missing":
                # NOTE: another user's order and a missing one look the same (BOLA: 404).
                raise Problem(404, "no such order")
            if got.verdict == "not_pending":
                raise Problem(409, f"order is {got.order_status}, not pending")
            if got.verdict == "nothing_to_charge":
                # NOTE: products may be free; a processor charges positive amounts only.
                raise Problem(409, "the order's total is 0: there is nothing to charge")
            assert got.payment is not None
            if got.verdict != "open":  # created, or this key's settled attempt
                return got.payment
            # The last attempt is still open: settle it before a new one may be charged.
            await self._settle_open_attempt(pool, processor, got.payment)
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
        """Apply ``charge`` in one statement (an unknown verdict changes nothing); when the
        payment is then settled (captured or declined) also build its 201 response and record
        it under ``claim``, in the same transaction."""
        return await self._settle_and_record(
            pool, payment_id, _OUTCOMES.get(charge.verdict), charge.ref, source, claim
        )

    async def _respond(
        self, pool: asyncpg.Pool, payment: store.PaymentRow, claim: Claim | None
    ) -> StoredResponse:
        """The 201 of a payment settled earlier, recorded under ``claim``."""
        _, response = await self._settle_and_record(pool, payment.id, None, None, "key", claim)
        assert response is not None  # captured and declined are final for the response
        return response

    @staticmethod
    async def _settle_and_record(
        pool: asyncpg.Pool, payment_id: UUID, outcome: store.Outcome | None,
        processor_ref: str | None, source: str, claim: Claim | None,
    ) -> tuple[store.PaymentRow | None, StoredResponse | None]:  # fmt: skip
        """``store.settle``: apply ``outcome`` (None: only read; a webhook may have settled
        the payment meanwhile) and record a settled payment's 201 under ``claim``, in one
        statement: the key's answer and the money state commit together."""
        claimed = None
        if claim is not None:
            req = claim.request
            claimed = store.Claimed(req.user_id, req.key, claim.token, dict(_JSON_HEADERS))
        async with pool.acquire() as conn:
            # NOTE: outside a transaction: one statement, its own transaction.
            settled = await store.settle(
                conn, payment_id, outcome, processor_ref=processor_ref, source=source,
                claim=claimed,
            )  # fmt: skip
        if settled.body is None:
            return settled.payment, None
        if settled.recorded is True:
            assert claim is not None
            claim.completed = True  # committed with the settlement
        elif settled.recorded is False:
            assert claim is not None and settled.payment is not None
            # NOTE: a lost claim never rolls back the money state (it is not an error there).
            claim.finished = True  # a retry took the key over; it will find the order
            log.warning("payment %s settled but its Idempotency-Key was taken over",
                        settled.payment.id)  # fmt: skip
        return settled.payment, StoredResponse(201, settled.body, dict(_JSON_HEADERS))

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
        # NOTE: a kind that is not a string (unhashable) is as unknown as any other.
        outcome = _WEBHOOK_KINDS.get(kind) if isinstance(kind, str) else None
        async with pool.acquire() as conn:
            # NOTE: one statement, its own transaction: the event id, and the outcome when the
            # event is new (the order's lock first, as everywhere); an event whose outcome the
            # payment's status already excludes (the usual case: the synchronous answer came
            # first) is only recorded.
            got = await store.webhook(
                conn,
                event_id=event_id,
                processor_key=key,
                kind=str(kind),
                payload=event,
                outcome=outcome,
                processor_ref=data.get("id") if isinstance(data.get("id"), str) else None,
            )
        if not got.known:
            log.warning("webhook %s for unknown processor key %r ignored", event_id, key)

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
