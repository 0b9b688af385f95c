"""Order endpoints (``API.md``, Orders and payments).

Owners see and cancel their own orders; admins see and act on all of them; anybody else's order
is a 404 (never reveal that it exists). ``POST /api/v1/orders`` runs under an ``Idempotency-Key``
(:mod:`cygate.services.idempotency`): the order and its idempotency record commit together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Annotated, Any
from uuid import UUID

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import ResponseHeader, State
from litestar.params import FromPath, JSONBody, QueryParameter

from cygate.edge.auth import principal_of
from cygate.edge.context import Principal
from cygate.edge.problem import Problem
from cygate.ids import uuid7
from cygate.services.idempotency import (
    Claim,
    Idempotency,
    IdempotencyKeyHeader,
    IdempotentRequest,
    StoredResponse,
    parse_key,
)
from cygate.services.openapi import answers, problems
from cygate.services.orders import store
from cygate.services.orders.models import Order, OrderIn, OrderPage
from cygate.services.orders.states import can

__all__ = ["OrdersController", "StockInvalidations", "invalidate_products"]

log = logging.getLogger("cygate.orders")

_PRIVATE = {"cache-control": "private, no-store"}
_AUTH: dict[str, Any] = {"auth": True}
_PLACE: dict[str, Any] = {"auth": True, "max_body_bytes": 64 * 1024}
_ADMIN: dict[str, Any] = {"auth": True, "roles": ["admin"]}


def _user_id(principal: Principal) -> UUID:
    """Orders belong to user accounts; a service client's token has none."""
    try:
        return UUID(principal.sub)
    except ValueError:
        raise Problem(403, "orders need a user account") from None


def _is_admin(principal: Principal) -> bool:
    return "admin" in principal.roles


def _visible(order: Any, principal: Principal) -> bool:
    owner = order["user_id"] if not isinstance(order, Order) else order.user_id
    return _is_admin(principal) or (owner is not None and str(owner) == principal.sub)


async def invalidate_products(cache: Any, product_ids: Iterable[UUID]) -> None:
    """Drop the cached product pages whose stock changed (after the commit). A cache that
    cannot be told is logged, never an error: the write has happened."""
    tags = [f"product:{pid}" for pid in product_ids]
    if cache is None or not tags:
        return
    try:
        await cache.invalidate_tags(tags)
    except Exception as exc:  # CacheUnavailable, or anything else from Redis
        log.warning("product cache not invalidated after a stock change: %r", exc)


class StockInvalidations:
    """Coalesces the product-cache invalidations of order placement, per worker.

    PERF: one ``invalidate_tags`` per order (a Redis script + a publish that every other worker
    of every instance handles) cost a large share of the order throughput in the benchmark. Ids are
    collected and sent together at most every ``window`` seconds, so under load a product page
    shows stock at most ``window`` (+ one Redis round trip) older than the database. NOTE: the
    reservation itself never depends on the cache; cancel and expiry invalidate directly.
    """

    __slots__ = ("_task", "cache", "pending", "window")

    def __init__(self, cache: Any, window: float = 0.05) -> None:
        self.cache = cache
        self.window = window
        self.pending: set[UUID] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, product_ids: Iterable[UUID]) -> None:
        if self.cache is None:
            return
        self.pending.update(product_ids)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self.pending:
                ids, self.pending = self.pending, set()
                await invalidate_products(self.cache, ids)
                await asyncio.sleep(self.window)
        finally:
            self._task = None


def _invalidations(state: State) -> StockInvalidations:
    found: StockInvalidations | None = state.get("order_invalidations")
    if found is None or found.cache is not state.cache:
        found = StockInvalidations(state.cache)
        state.order_invalidations = found
    return found


def _order_response(order: Order, status: int = 200) -> Response[bytes]:
    return Response(
        msgspec.json.encode(order), status_code=status, media_type="application/json",
        headers=_PRIVATE,
    )  # fmt: skip


class OrdersController(Controller):
    path = "/api/v1/orders"
    tags = ["orders"]

    @post(
        "/",
        summary="Place an order (Idempotency-Key required); stock reserved atomically",
        opt=_PLACE,
        status_code=201,
        responses=answers(201, Order, "The order, pending payment")
        | problems(403, 409, s409="Not enough stock (nothing reserved), or the key is in use"),
        response_headers=[
            ResponseHeader(name="Location", description="The order", documentation_only=True)
        ],
    )
    async def place(
        self,
        request: Request[Any, Any, Any],
        state: State,
        data: JSONBody[OrderIn],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[bytes]:
        principal = principal_of(request)
        user_id = _user_id(principal)
        key = parse_key(idempotency_key)
        seen: dict[UUID, int] = {}
        dupes = []
        for n, item in enumerate(data.items):
            if item.product_id in seen:
                dupes.append(
                    {"field": f"body.items[{n}].product_id",
                     "message": f"repeats items[{seen[item.product_id]}]; one line per product"}
                )  # fmt: skip
            seen.setdefault(item.product_id, n)
        if dupes:
            raise Problem(422, "a product appears twice in the order", extra={"errors": dupes})
        settings = state.settings
        idem: Idempotency = state.idempotency
        path = str(request.scope.get("path", "/api/v1/orders"))
        req = IdempotentRequest.of(
            user_id=user_id,
            key=key,
            method="POST",
            path=path,
            body=data,
            request_id=str(request.scope.get("cygate.request_id", "")),
        )

        async def work(conn: asyncpg.Connection, claim: Claim) -> StoredResponse:
            order_id = uuid7()
            headers = {"content-type": "application/json", "location": f"{path}/{order_id}"}
            body = await store.place(
                conn,
                order_id=order_id,
                user_id=user_id,
                items=data.items,
                shipping_address=data.shipping_address,
                ttl_seconds=settings.orders.ttl_seconds,
                record=store.Record(key, claim.token, headers, take=claim.take()),
            )
            return StoredResponse(201, body, headers)

        try:
            outcome = await idem.run_claiming(req, work)
        except asyncpg.ForeignKeyViolationError:
            raise Problem(403, "orders need a user account") from None
        if not outcome.replayed:
            _invalidations(state).add(seen)
        response = outcome.response()
        response.headers.update(_PRIVATE)
        return response

    @get(
        "/",
        summary="My orders (admin: everyone's), newest first, keyset-paged",
        opt=_AUTH,
        responses=problems(403),
    )
    async def list_orders(
        self,
        request: Request[Any, Any, Any],
        state: State,
        limit: Annotated[int, QueryParameter(ge=1, le=100, description="Page size")] = 20,
        cursor: Annotated[
            str | None,
            QueryParameter(max_length=200, description="next_cursor of the previous page"),
        ] = None,
    ) -> Response[OrderPage]:
        principal = principal_of(request)
        owner = None if _is_admin(principal) else _user_id(principal)
        try:
            page = await store.list_orders(state.pool, user_id=owner, limit=limit, cursor=cursor)
        except store.CursorError as exc:
            raise Problem(
                422, str(exc), extra={"errors": [{"field": "query.cursor", "message": str(exc)}]}
            ) from None
        return Response(page, headers=_PRIVATE)

    @get(
        "/{order_id:uuid}",
        summary="One order (owner or admin)",
        opt=_AUTH,
        responses=answers(200, Order, "The order") | problems(404),
    )
    async def get_order(
        self, request: Request[Any, Any, Any], state: State, order_id: FromPath[UUID]
    ) -> Response[bytes]:
        order = await store.get_order(state.pool, order_id)
        if order is None or not _visible(order, principal_of(request)):
            raise Problem(404, f"no order {order_id}")
        return _order_response(order)

    @post(
        "/{order_id:uuid}/cancel",
        summary="Cancel a pending order (owner or admin); stock released",
        opt=_AUTH,
        status_code=200,
        responses=answers(200, Order, "The order, cancelled")
        | problems(404, 409, s409="Paid or shipped already, or a payment is in progress"),
    )
    async def cancel(
        self, request: Request[Any, Any, Any], state: State, order_id: FromPath[UUID]
    ) -> Response[bytes]:
        principal = principal_of(request)
        touched: list[UUID] = []
        async with state.pool.acquire() as conn, conn.transaction():
            row = await store.lock_order(conn, order_id)
            if row is None or not _visible(row, principal):
                raise Problem(404, f"no order {order_id}")
            # NOTE: cancelling a cancelled order is a no-op 200 (a retried cancel succeeds).
            if row["status"] != "cancelled":
                if not can(row["status"], "cancelled"):
                    raise Problem(409, f"the order is {row['status']}; it cannot be cancelled")
                if await store.payment_in_flight(conn, [order_id]):
                    # NOTE: the processor may be charging right now; cancelling would release
                    # stock that a successful charge pays for. The attempt settles within the
                    # payment timeout (or the recovery sweep), then cancel works or says paid.
                    raise Problem(
                        409,
                        "a payment of this order is in progress; retry the cancel shortly",
                        headers={"retry-after": "5"},
                    )
                touched = await store.cancel(conn, row)
            order = await store.get_order(conn, order_id)
        await invalidate_products(state.cache, touched)
        assert order is not None
        return _order_response(order)

    @post(
        "/{order_id:uuid}/ship",
        summary="Mark a paid order shipped (admin)",
        opt=_ADMIN,
        status_code=200,
        responses=answers(200, Order, "The order, shipped") | problems(404, 409),
    )
    async def ship(self, state: State, order_id: FromPath[UUID]) -> Response[bytes]:
        async with state.pool.acquire() as conn, conn.transaction():
            row = await store.lock_order(conn, order_id)
            if row is None:
                raise Problem(404, f"no order {order_id}")
            # NOTE: shipping a shipped order is a no-op 200, like cancel.
            if row["status"] != "shipped":
                if not can(row["status"], "shipped"):
                    raise Problem(409, f"the order is {row['status']}; only a paid order ships")
                await store.ship(conn, row)
            order = await store.get_order(conn, order_id)
        assert order is not None
        return _order_response(order)
