"""Consumers of the event stream: one Redis consumer group per consumer kind.

Each :class:`ConsumerRunner` reads new messages with ``XREADGROUP`` (``>``), applies them, and
``XACK``s what it applied. Messages a crashed (or stuck) consumer read but never acknowledged
stay in the group's pending list; every runner ``XAUTOCLAIM``s messages idle longer than
``events_reclaim_idle`` and applies them. A message delivered more than
``events_max_deliveries`` times, or one that is not an event at all, goes to the dead-letter
stream ``<prefix>events:dead`` (logged) and is acknowledged.

Exactly once in effect: a :class:`Handler` with ``transactional = True`` gets a connection in a
transaction that first inserts ``(consumer, event_id)`` into ``processed_events``; a second
delivery of the same event finds the row and changes nothing. The effect and the record commit
together, so a crash either keeps both or neither.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import redis.exceptions

from cygate.infra import tracing
from cygate.infra.db import DB_UNAVAILABLE
from cygate.infra.retry import Backoff
from cygate.services.events.stream import (
    BadMessage,
    Event,
    dead_letter_key,
    decode,
    stream_key,
)

if TYPE_CHECKING:
    from cygate.infra.metrics import Metrics
    from cygate.infra.redis import RedisHandle
    from cygate.services.events.settings import EventsSettings

__all__ = ["ConsumerRunner", "Handler", "consumer_name"]

log = logging.getLogger("cygate.events.consumer")

_CLAIM = (
    "INSERT INTO processed_events (consumer, event_id) SELECT $1, unnest($2::bigint[]) "
    "ON CONFLICT DO NOTHING RETURNING event_id"
)
_REDIS_DOWN = (redis.exceptions.RedisError, OSError)
Message = tuple[bytes, dict[bytes, bytes]]


class Handler(Protocol):
    """What one consumer kind does with an event."""

    name: str
    """The consumer group (and the ``processed_events.consumer`` value)."""
    transactional: bool
    """True: :meth:`apply` gets a connection in a transaction and runs once per event;
    False: ``conn`` is None and the effect itself must be idempotent."""

    def wants(self, event: Event) -> bool:
        """Whether this consumer does anything for ``event`` (others are just acknowledged)."""
        ...

    async def apply(self, conn: asyncpg.Connection | None, event: Event) -> None:
        """Apply the event; raising leaves it pending, to be retried after a reclaim."""
        ...


# A non-transactional handler may also define ``async def apply_many(events)``: the effect of
# a whole batch at once (idempotent like ``apply``); on failure each event is applied alone.
# A transactional one may define ``async def apply_batch(conn, events)``: the effect of the
# events new to it in the batch's transaction, exactly what ``apply`` of each would do.


def consumer_name() -> str:
    """Unique per process start: a restarted process never inherits a dead one's messages
    except through the reclaim."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class ConsumerRunner:
    """One consumer of one group; :meth:`run` until cancelled."""

    def __init__(
        self,
        settings: EventsSettings,
        redis: RedisHandle,
        pool: asyncpg.Pool | None,
        handler: Handler,
        *,
        name: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if handler.transactional and pool is None:
            raise ValueError(f"consumer {handler.name!r} needs a PostgreSQL pool")
        self.settings = settings
        self.metrics = metrics
        self.redis = redis
        self.pool = pool
        self.handler = handler
        self.group = handler.name
        self.name = name or consumer_name()
        self.stream = stream_key(redis)
        self.dead = dead_letter_key(redis)
        self.applied = 0  # events applied by this runner (first deliveries and reclaims)
        self.dead_lettered = 0
        self._group_ready = False
        self._next_reclaim = 0.0
        self._replay_own = False
        self._replay_from: Any = "0"

    async def run(self) -> None:
        """Read, apply, acknowledge; reclaim idle messages; back off while Redis or
        PostgreSQL fail (the messages stay pending and nothing is lost)."""
        backoff = Backoff(0.05, self.settings.relay_max_backoff)
        while True:
            try:
                handled = await self.step()
                backoff.reset()
                linger = self.settings.linger
                if linger and 0 < handled < self.settings.consumer_batch:
                    # PERF: under load, let the next batch grow: per batch the consumer pays a
                    # read, a transaction and an ack; per event only its own statement.
                    # An idle consumer is not delayed: its blocking read returns at once.
                    await asyncio.sleep(linger)
            except asyncio.CancelledError:
                raise
            except _REDIS_DOWN + DB_UNAVAILABLE as exc:
                self._group_ready = False  # a restarted Redis may have lost the group
                # What this runner read before the failure is pending for it: read it again
                # next round rather than waiting for the reclaim.
                self._replay_own, self._replay_from = True, "0"
                delay = backoff.next()
                log.warning("consumer %s: %r; retrying in %.2fs", self.group, exc, delay)
                await asyncio.sleep(delay)

    async def step(self) -> int:
        """One round: reclaim when due, then one read (blocking up to ``events_block``).
        Returns the number of messages handled."""
        client = self.redis.client
        if not self._group_ready:
            await self.ensure_group()
        handled = 0
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + max(0.05, self.settings.reclaim_idle / 2)
            handled += await self.reclaim()
        if self._replay_own:
            reply: Any = await client.xreadgroup(
                self.group,
                self.name,
                {self.stream: self._replay_from},
                count=self.settings.consumer_batch,
            )
            messages = [m for _s, msgs in _entries(reply) for m in msgs]
            if messages:
                self._replay_from = messages[-1][0]  # failures stay pending, for the reclaim
                await self.handle([m for m in messages if m[1]])
                return handled + len(messages)
            self._replay_own = False
        reply = await client.xreadgroup(
            self.group,
            self.name,
            {self.stream: ">"},
            count=self.settings.consumer_batch,
            block=max(1, int(self.settings.block * 1000)),
        )
        for _stream, messages in _entries(reply):
            await self.handle(messages)
            handled += len(messages)
        return handled

    async def ensure_group(self) -> None:
        """Create the group (from the start of the stream) unless it exists."""
        try:
            await self.redis.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def reclaim(self) -> int:
        """Take over messages pending longer than ``events_reclaim_idle`` (a crashed or stuck
        consumer's, or our own failed ones); dead-letter those delivered too often."""
        client = self.redis.client
        idle_ms = max(1, int(self.settings.reclaim_idle * 1000))
        start: Any = "0-0"
        total = 0
        while True:
            reply: Any = await client.xautoclaim(
                self.stream,
                self.group,
                self.name,
                idle_ms,
                start_id=start,
                count=self.settings.consumer_batch,
            )
            start, claimed = reply[0], reply[1]
            # Trimmed away (MAXLEN) while pending: nothing to apply, just forget them.
            gone = [mid for mid, fields in claimed if fields is None]
            if gone:
                await client.xack(self.stream, self.group, *gone)
            claimed = [(mid, fields) for mid, fields in claimed if fields is not None]
            if claimed:
                total += len(claimed)
                log.info("consumer %s: reclaimed %d messages", self.group, len(claimed))
                deliveries = await self._deliveries(claimed)
                limit = self.settings.max_deliveries
                poison = [m for m in claimed if deliveries.get(m[0], 0) > limit]
                for mid, fields in poison:
                    await self._dead_letter(mid, fields, f"delivered more than {limit} times")
                await self.handle([m for m in claimed if deliveries.get(m[0], 0) <= limit])
            if start in (b"0-0", "0-0"):
                await self.forget_idle_consumers()
                return total

    async def forget_idle_consumers(self) -> int:
        """Delete the group's consumers with nothing pending and idle for more than ten reclaim
        periods: each process start adds a consumer name, and dead ones would pile up. Safe
        for a live one (nothing pending is lost; its next read recreates it)."""
        client = self.redis.client
        limit_ms = 10 * self.settings.reclaim_idle * 1000
        gone = 0
        for info in await client.xinfo_consumers(self.stream, self.group):
            name = info["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            if info["pending"] == 0 and info["idle"] > limit_ms and name != self.name:
                gone += int(await client.xgroup_delconsumer(self.stream, self.group, name) == 0)
        return gone

    async def _deliveries(self, messages: list[Message]) -> dict[bytes, int]:
        ids = [mid for mid, _ in messages]
        rows: Any = await self.redis.client.xpending_range(
            self.stream, self.group, min=min(ids), max=max(ids), count=len(ids) + 100,
            consumername=self.name,
        )  # fmt: skip
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    async def handle(self, messages: list[Message]) -> None:
        """Apply ``messages`` and acknowledge each one applied (or skipped)."""
        events: list[tuple[bytes, Event]] = []
        ack: list[bytes] = []
        for mid, fields in messages:
            try:
                event = decode(fields)
            except BadMessage as exc:
                await self._dead_letter(mid, fields, f"not an event: {exc}")
                continue
            if self.handler.wants(event):
                events.append((mid, event))
            else:
                ack.append(mid)
        if events:
            ack.extend(await self._traced_apply(events))
        if ack:
            await self.redis.client.xack(self.stream, self.group, *ack)

    async def _traced_apply(self, events: list[tuple[bytes, Event]]) -> list[bytes]:
        """:meth:`_apply`, in a span (tracing on) linked to the requests that wrote the events."""
        traced = tracing.current()
        if traced is None:
            return await self._apply(events)
        links = [link for _, e in events if (link := traced.link(e.traceparent)) is not None]
        span = traced.start(
            f"consume {self.group}",
            kind="consumer",
            root=True,
            links=links,
            attributes={
                "messaging.system": "redis",
                "messaging.consumer.group.name": self.group,
                "messaging.batch.message_count": len(events),
            },
        )
        with traced.running(span):
            return await self._apply(events)

    async def _apply(self, events: list[tuple[bytes, Event]]) -> list[bytes]:
        """Apply ``events``; return the message ids to acknowledge."""
        if not self.handler.transactional:
            many = getattr(self.handler, "apply_many", None)
            if many is not None and len(events) > 1:
                try:
                    await many([event for _, event in events])
                except Exception:  # each event again, alone, below
                    log.debug("consumer %s: batch failed; one event at a time", self.group)
                else:
                    self._count([event for _, event in events])
                    return [mid for mid, _ in events]
            done = []
            for mid, event in events:
                try:
                    await self.handler.apply(None, event)
                except Exception as exc:
                    self._failed(event, exc)
                    continue
                done.append(mid)
                self._count([event])
            return done
        # PERF: the whole batch in one transaction (one commit per batch); if anything in it
        # fails, each event again in a transaction of its own, so one bad event costs only itself.
        try:
            await self._apply_in_tx(events)
            return [mid for mid, _ in events]
        except DB_UNAVAILABLE:
            raise
        except Exception as exc:
            if len(events) == 1:
                self._failed(events[0][1], exc)
                return []
        done = []
        for item in events:
            try:
                await self._apply_in_tx([item])
            except DB_UNAVAILABLE:
                raise
            except Exception as exc:
                self._failed(item[1], exc)
                continue
            done.append(item[0])
        return done

    async def _apply_in_tx(self, events: list[tuple[bytes, Event]]) -> None:
        assert self.pool is not None
        applied = []
        async with self.pool.acquire() as conn, conn.transaction():
            # PERF: one round trip claims the whole batch; only events new to this consumer
            # come back (a duplicate within the batch too: DO NOTHING skips the second row).
            fresh = {r[0] for r in await conn.fetch(_CLAIM, self.group, [e.id for _, e in events])}
            for _mid, event in events:
                if event.id in fresh:
                    fresh.discard(event.id)  # a second copy in this batch is not applied
                    applied.append(event)
            batch = getattr(self.handler, "apply_batch", None)
            if batch is not None:
                # PERF: one statement for the batch instead of one round trip per event.
                if applied:
                    await batch(conn, applied)
            else:
                for event in applied:
                    await self.handler.apply(conn, event)
        self._count(applied)

    def _count(self, events: list[Event]) -> None:
        self.applied += len(events)
        if self.metrics is None or not events:
            return
        self.metrics.inc("cygate_events_applied_total", (self.group,), len(events))
        now = time.time()
        for event in events:
            lag = max(0.0, now - event.created_at.timestamp())
            self.metrics.observe_family("cygate_events_lag_seconds", (self.group,), lag)

    def _failed(self, event: Event, exc: Exception) -> None:
        # NOTE: not acknowledged: the message stays pending and is retried after a reclaim,
        # until events_max_deliveries sends it to the dead-letter stream.
        log.warning("consumer %s: event %s (%s) failed: %r", self.group, event.id, event.type, exc)

    async def _dead_letter(self, mid: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        dead: dict[Any, Any] = dict(fields)
        dead.update({b"reason": reason, b"group": self.group, b"message_id": mid})
        await self.redis.client.xadd(self.dead, dead, maxlen=self.settings.stream_maxlen,
                                     approximate=True)  # fmt: skip
        await self.redis.client.xack(self.stream, self.group, mid)
        self.dead_lettered += 1
        if self.metrics is not None:
            self.metrics.inc("cygate_events_dead_letters_total", (self.group,))
        log.error(
            "consumer %s: message %s moved to the dead-letter stream: %s (event id %r)",
            self.group, mid.decode(), reason, fields.get(b"id"),
        )  # fmt: skip


def _entries(reply: Any) -> list[tuple[Any, list[Message]]]:
    """``XREADGROUP``'s reply as (stream, messages), whatever the protocol version."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(name, list(msgs[0] if msgs and isinstance(msgs[0], list) else msgs))
                for name, msgs in reply.items()]  # fmt: skip
    return [(name, list(msgs)) for name, msgs in reply]
