"""The transactional outbox: a state change and its event commit together or not at all.

Every service that changes state calls :func:`emit` on the connection of its own transaction;
the relay (``cygate.services.events``) publishes committed rows to Redis Streams at least once,
and consumers make delivery exactly-once in effect by remembering what they applied.

Event types and payloads are listed in ``docs/events.md``.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from cygate.infra import tracing

__all__ = ["backlog", "emit", "traceparent"]

_BACKLOG = (
    "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 "
    "FROM outbox WHERE published_at IS NULL"
)
_INSERT = (
    "INSERT INTO outbox (aggregate, aggregate_id, event_type, payload, traceparent) "
    "VALUES ($1, $2, $3, $4, $5) RETURNING id"
)


async def emit(
    conn: asyncpg.Connection,
    *,
    aggregate: str,
    aggregate_id: object,
    event_type: str,
    payload: dict[str, Any],
) -> int:
    """Write one event in the caller's transaction; returns its outbox id.

    ``conn`` must be inside a transaction (``async with conn.transaction():``): an event
    written outside one could outlive a rolled-back change.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("outbox.emit needs the transaction of the change it describes")
    outbox_id: int = await conn.fetchval(
        _INSERT, aggregate, str(aggregate_id), event_type, payload, traceparent()
    )
    return outbox_id


def traceparent() -> str | None:
    """The ``traceparent`` an outbox row written now records: the current span's, while a
    sampled request (or task) is traced; else None. The relay and the consumers link their
    spans to it."""
    traced = tracing.current()
    if traced is None or not traced.tracer_active():
        return None
    return traced.traceparent() or None


async def backlog(db: asyncpg.Pool | asyncpg.Connection) -> tuple[int, float]:
    """Rows not yet published and the age in seconds of the oldest (0 when none wait): how far
    the relay is behind (the partial index on unpublished rows keeps this cheap)."""
    row = await db.fetchrow(_BACKLOG)
    assert row is not None
    return int(row[0]), max(0.0, float(row[1]))
