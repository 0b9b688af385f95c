"""Payment endpoints (``API.md``, Orders and payments): pay an order; the processor's webhook."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from cygate.edge.auth import principal_of
from cygate.edge.problem import Problem
from cygate.ids import uuid7
from cygate.services.idempotency import (
    Claim,
    Held,
    Idempotency,
    IdempotencyKeyHeader,
    IdempotentRequest,
    StoredResponse,
    parse_key,
    replay_response,
)
from cygate.services.openapi import answers, problems
from cygate.services.payments.service import AttemptInProgress, Payments
from cygate.services.payments.signing import SIGNATURE_HEADER

__all__ = ["PaymentIn", "PaymentOut", "PaymentsController"]

_SMALL_BODY = {"max_body_bytes": 16 * 1024}


class PaymentIn(msgspec.Struct, forbid_unknown_fields=True):
    """The only thing a client chooses: how to pay. Amount and status are never its to set."""

    payment_method_token: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class PaymentOut(msgspec.Struct, frozen=True, kw_only=True):
    """A payment attempt (``PaymentRow.public`` writes it; here for the document)."""

    id: UUID
    order_id: UUID
    status: str
    """``captured`` or ``declined``."""
    amount_cents: int
    currency: str
    attempt: int


def _payments(state: State) -> Payments:
    payments: Payments = state.payments
    return payments


class PaymentsController(Controller):
    path = "/api/v1"
    tags = ["payments"]

    @post(
        "/orders/{order_id:uuid}/payments",
        summary="Pay an order (Idempotency-Key required)",
        opt={"auth": True} | _SMALL_BODY,
        responses=answers(201, PaymentOut, "The payment attempt (captured or declined)")
        | problems(
            404, 409, s409="The order is not payable (paid, cancelled, expired, or its total is 0)"
        ),
    )
    async def pay(
        self,
        request: Request[Any, Any, Any],
        state: State,
        order_id: FromPath[UUID],
        data: JSONBody[PaymentIn],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[bytes]:
        principal = principal_of(request)
        key = parse_key(idempotency_key)
        try:
            user_id = UUID(principal.sub)
        except ValueError:  # a service client's token: it owns no orders
            raise Problem(404, "no such order") from None
        idempotency: Idempotency = state.idempotency
        req = IdempotentRequest.of(
            user_id=user_id,
            key=key,
            method="POST",
            path=request.scope["path"],
            body=data,
            request_id=str(request.scope.get("cygate.request_id", "")),
        )
        payments = _payments(state)
        if payments.circuit_open():
            # The claim on its own first, so a finished answer still replays; the payment is
            # then a 503 (or the breaker's probe) and a 503 releases the key.
            got = await idempotency.claim(req)
            if isinstance(got, StoredResponse):
                return replay_response(got)
            take = False
        else:
            # PERF: the statement that commits the attempt takes the claim (one round trip).
            got, take = Claim(idempotency, req, uuid7()), True
        try:
            async with got:  # a 4xx is stored under the key; a 5xx releases it (retry runs again)
                try:
                    stored = await payments.pay(
                        user_id, order_id, data.payment_method_token, got, take=take
                    )
                except AttemptInProgress:
                    await got.release()  # transient: the same key must work after Retry-After
                    raise
        except Held as held:  # another request holds the key (or held it: its answer)
            return replay_response(held.answer(req))
        headers = {k: v for k, v in stored.headers.items() if k != "content-type"}
        return Response(stored.body, status_code=stored.status, media_type="application/json",
                        headers=headers)  # fmt: skip

    @post(
        "/payments/webhook",
        summary="Payment processor webhook (HMAC-signed)",
        status_code=204,
        opt=_SMALL_BODY,
        include_in_schema=True,
        responses=problems(400, 401, s401="The signature does not verify"),
    )
    async def webhook(self, request: Request[Any, Any, Any], state: State) -> None:
        body = await request.body()
        await _payments(state).webhook(body, request.headers.get(SIGNATURE_HEADER))
