"""Read models of the events: ``GET /api/v1/users/me/orders/summary`` (the caller's own) and
``GET /admin/analytics`` (admin). Both are fed by consumers, so they lag a commit by the relay
and consumer latency (tens of milliseconds; docs/events.md)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from uuid import UUID

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.params import Parameter

from cygate.edge.auth import principal_of

__all__ = ["AnalyticsController", "AnalyticsDay", "OrderSummary", "OrderSummaryController"]

_PRIVATE = {"cache-control": "private, no-store"}


class OrderSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The caller's orders in numbers (zeros before the first order)."""

    orders_count: int = 0
    open_orders: int = 0
    paid_orders: int = 0
    shipped_orders: int = 0
    cancelled_orders: int = 0
    expired_orders: int = 0
    total_spent_cents: int = 0
    last_order_at: dt.datetime | None = None


class AnalyticsDay(msgspec.Struct, frozen=True, kw_only=True):
    """Events of one type on one UTC day, with the money they carried."""

    day: dt.date
    event_type: str
    events: int
    amount_cents: int


class Analytics(msgspec.Struct, frozen=True, kw_only=True):
    days: int
    items: list[AnalyticsDay]


_SUMMARY = (
    "SELECT orders_count, open_orders, paid_orders, shipped_orders, cancelled_orders, "
    "expired_orders, total_spent_cents, last_order_at FROM order_summaries WHERE user_id = $1"
)
_ANALYTICS = (
    "SELECT day, event_type, events, amount_cents FROM analytics_daily "
    "WHERE day > (now() AT TIME ZONE 'UTC')::date - $1::int ORDER BY day DESC, event_type"
)


class OrderSummaryController(Controller):
    path = "/api/v1/users/me/orders"
    tags = ["orders"]

    @get("/summary", summary="My orders in numbers (read model)", opt={"auth": True})
    async def summary(
        self, request: Request[Any, Any, Any], state: State
    ) -> Response[OrderSummary]:
        try:
            user_id = UUID(principal_of(request).sub)
        except ValueError:  # a service client has no orders of its own
            return Response(OrderSummary(), headers=_PRIVATE)
        pool: asyncpg.Pool = state.pool
        row = await pool.fetchrow(_SUMMARY, user_id)
        return Response(OrderSummary(**dict(row)) if row else OrderSummary(), headers=_PRIVATE)


class AnalyticsController(Controller):
    path = "/admin/analytics"
    tags = ["operations"]

    @get("/", summary="Events per day and type (analytics consumer)",
         opt={"auth": True, "roles": ["admin"]})  # fmt: skip
    async def analytics(
        self,
        state: State,
        days: Annotated[int, Parameter(ge=1, le=366, description="Days back, today included")] = 7,
    ) -> Response[Analytics]:
        pool: asyncpg.Pool = state.pool
        rows = await pool.fetch(_ANALYTICS, days)
        items = [AnalyticsDay(**dict(r)) for r in rows]
        return Response(Analytics(days=days, items=items), headers=_PRIVATE)
