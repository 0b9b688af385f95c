"""The three consumers: cache invalidation, the order summary read model, analytics counters."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from cygate.services.events.stream import Event
from cygate.services.privacy.classification import CLASSIFICATION
from cygate.services.privacy.consent import decisions, granted_when

if TYPE_CHECKING:
    from cygate.edge.cache import ResponseCache

__all__ = ["HANDLERS", "AnalyticsHandler", "CacheHandler", "OrderSummaryHandler", "tags_for"]

log = logging.getLogger("cygate.events")

ANALYTICS = "analytics"
"""The consent purpose the analytics consumer honours."""
SUBJECT = CLASSIFICATION["orders"].subject
"""The payload field of order and payment events that names the user."""

_STOCK_EVENTS = frozenset({"order.created", "order.cancelled", "order.expired"})


def tags_for(event: Event) -> list[str]:
    """The cache tags an event makes stale (docs/caching.md names the tags)."""
    p = event.payload
    if event.type.startswith("product."):
        return [f"product:{p['product_id']}", "products"]
    if event.type.startswith("category."):
        return ["categories", "products"]
    if event.type in _STOCK_EVENTS:  # stock changed for each item
        return sorted({f"product:{item['product_id']}" for item in p.get("items", [])})
    return []


class CacheHandler:
    """Invalidate the response cache on every instance. Invalidation is idempotent, so this
    consumer keeps no record: a redelivery purges again, harmlessly."""

    name = "cache"
    transactional = False

    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache

    def wants(self, event: Event) -> bool:
        return event.type.startswith(("product.", "category.")) or event.type in _STOCK_EVENTS

    async def apply(self, conn: asyncpg.Connection | None, event: Event) -> None:
        await self.apply_many([event])

    async def apply_many(self, events: list[Event]) -> None:
        """One purge for the whole batch: every purge is a Redis round trip plus a pub/sub
        message that every instance handles, so per-event purges add gateway CPU to every order
        under load (``make bench-orders``)."""
        tags = sorted({tag for event in events for tag in tags_for(event)})
        if tags:
            # CacheUnavailable propagates: the messages stay pending and are retried.
            await self.cache.invalidate_tags(tags)


# The order summary: each event adds deltas, so the result does not depend on the order in which
# a reclaim delivers them (open_orders may be -1 for a moment when order.paid overtakes
# order.created).
_SUMMARY_BATCH = """
INSERT INTO order_summaries AS s (user_id, orders_count, open_orders, paid_orders,
    shipped_orders, cancelled_orders, expired_orders, total_spent_cents, last_order_at)
SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::int[], $5::int[], $6::int[],
                     $7::int[], $8::bigint[], $9::timestamptz[])
ON CONFLICT (user_id) DO UPDATE SET
    orders_count = s.orders_count + EXCLUDED.orders_count,
    open_orders = s.open_orders + EXCLUDED.open_orders,
    paid_orders = s.paid_orders + EXCLUDED.paid_orders,
    shipped_orders = s.shipped_orders + EXCLUDED.shipped_orders,
    cancelled_orders = s.cancelled_orders + EXCLUDED.cancelled_orders,
    expired_orders = s.expired_orders + EXCLUDED.expired_orders,
    total_spent_cents = s.total_spent_cents + EXCLUDED.total_spent_cents,
    last_order_at = GREATEST(s.last_order_at, EXCLUDED.last_order_at),
    updated_at = now()
"""
# (orders, open, paid, shipped, cancelled, expired) per event type
_DELTAS: dict[str, tuple[int, int, int, int, int, int]] = {
    "order.created": (1, 1, 0, 0, 0, 0),
    "order.paid": (0, -1, 1, 0, 0, 0),
    "order.shipped": (0, 0, 0, 1, 0, 0),
    "order.cancelled": (0, -1, 0, 0, 1, 0),
    "order.expired": (0, -1, 0, 0, 0, 1),
}


class OrderSummaryHandler:
    """The per-user order summary (``GET /api/v1/users/me/orders/summary``)."""

    name = "order_summary"
    transactional = True

    def wants(self, event: Event) -> bool:
        return event.type in _DELTAS

    async def apply(self, conn: asyncpg.Connection | None, event: Event) -> None:
        assert conn is not None
        await self.apply_batch(conn, [event])

    async def apply_batch(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """The events' deltas summed per user, one upsert (the effects are additive deltas and
        a maximum, so a batch has the effect of its events one by one)."""
        per_user: dict[UUID, list[Any]] = {}
        for event in events:
            p = event.payload
            row = per_user.setdefault(UUID(str(p["user_id"])), [0, 0, 0, 0, 0, 0, 0, None])
            for n, delta in enumerate(_DELTAS[event.type]):
                row[n] += delta
            if event.type == "order.paid":
                row[6] += int(p["amount_cents"])
            if event.type == "order.created" and (row[7] is None or event.created_at > row[7]):
                row[7] = event.created_at
        # NOTE: rows upserted in user id order: two consumers' batches lock the same summaries
        # in the same order, so they queue instead of deadlocking.
        users = sorted(per_user)
        columns = [[per_user[u][n] for u in users] for n in range(8)]
        await conn.execute(_SUMMARY_BATCH, users, *columns)


_COUNT_BATCH = """
INSERT INTO analytics_daily AS a (day, event_type, events, amount_cents)
SELECT * FROM unnest($1::date[], $2::text[], $3::bigint[], $4::bigint[])
ON CONFLICT (day, event_type) DO UPDATE SET
    events = a.events + EXCLUDED.events, amount_cents = a.amount_cents + EXCLUDED.amount_cents
"""


class AnalyticsHandler:
    """Events per UTC day and type, with the money they carry (``GET /admin/analytics``)."""

    name = "analytics"
    transactional = True

    def wants(self, event: Event) -> bool:
        return True

    async def apply(self, conn: asyncpg.Connection | None, event: Event) -> None:
        assert conn is not None
        await self.apply_batch(conn, [event])

    async def apply_batch(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """The events counted per (day, type), one upsert. An event about a user who had
        refused the ``analytics`` consent when it happened is not counted (its record in
        ``processed_events`` is kept, so it is never counted later either)."""
        subjects = sorted({u for e in events if (u := _subject(e)) is not None})
        history = await decisions(conn, subjects, ANALYTICS) if subjects else {}
        per_key: dict[tuple[dt.date, str], list[int]] = {}
        for event in events:
            user = _subject(event)
            if user is not None and not granted_when(
                history.get(user), ANALYTICS, event.created_at
            ):
                continue
            key = (event.created_at.astimezone(dt.UTC).date(), event.type)
            row = per_key.setdefault(key, [0, 0])
            row[0] += 1
            row[1] += _amount(event)
        if not per_key:
            return
        keys = sorted(per_key)  # NOTE: one lock order for every consumer (see the summary)
        await conn.execute(
            _COUNT_BATCH,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [per_key[k][0] for k in keys],
            [per_key[k][1] for k in keys],
        )


def _subject(event: Event) -> UUID | None:
    """The user an event is about: its payload's ``user_id`` (the privacy classification's
    subject column of orders), or None."""
    user = event.payload.get(SUBJECT)
    try:
        return UUID(str(user)) if user else None
    except ValueError:
        return None


def _amount(event: Event) -> int:
    """The money an event carries: ``amount_cents`` (payments, paid), else ``total_cents``."""
    p = event.payload
    amount = p.get("amount_cents", p.get("total_cents", 0))
    return int(amount) if isinstance(amount, int) else 0


HANDLERS = ("cache", "order_summary", "analytics")
"""Consumer kinds ``events_consumers`` may name."""
