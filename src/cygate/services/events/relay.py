"""The outbox relay: committed outbox rows to the Redis stream, in id order, at least once.

One relay publishes at a time: every gateway worker (and ``cygate worker``) runs a
:class:`Relay`, and the one holding a PostgreSQL session advisory lock publishes while the
others wait in standby, retrying the lock. The lock lives as long as the leader's connection, so
a crashed leader's lock is released by PostgreSQL and a standby takes over within
``events_poll_interval``.

A batch is: read the oldest unpublished rows, ``XADD`` each (one pipeline), then mark them
published. A crash between the ``XADD`` and the ``UPDATE`` republishes the batch: the only
source of duplicates, which consumers absorb (``processed_events``). While Redis is down the
rows stay unpublished and the relay backs off; nothing is lost.

Wake-ups: the outbox trigger (migration 0006) sends ``NOTIFY cygate_outbox`` at commit; the
relay also polls every ``events_poll_interval`` in case a notification is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import asyncpg
import redis.exceptions

from cygate.infra import tracing
from cygate.infra.db import DB_UNAVAILABLE
from cygate.infra.retry import Backoff
from cygate.services.events.stream import stream_key
from cygate.services.privacy.retention import run_retention

if TYPE_CHECKING:
    from cygate.infra.metrics import Metrics
    from cygate.infra.redis import RedisHandle
    from cygate.infra.settings import DatabaseSettings
    from cygate.services.events.settings import EventsSettings
    from cygate.services.privacy.settings import RetentionSettings

__all__ = ["CHANNEL", "RELAY_LOCK_ID", "Relay"]

log = logging.getLogger("cygate.events.relay")

CHANNEL = "cygate_outbox"
RELAY_LOCK_ID = 0x6379_6761_7465_01  # "cygate" + 1: the relay's advisory lock

_SELECT = (
    "SELECT id, aggregate, aggregate_id, event_type, payload::text AS payload, created_at, "
    "traceparent FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1"
)
_MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
_CLEAN_OUTBOX = (
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at IS NOT NULL "
    "AND published_at < now() - make_interval(secs => $1) LIMIT 10000)"
)
_CLEAN_PROCESSED = (
    "DELETE FROM processed_events WHERE ctid IN (SELECT ctid FROM processed_events "
    "WHERE applied_at < now() - make_interval(secs => $1) LIMIT 10000)"
)
_REDIS_DOWN = (redis.exceptions.RedisError, OSError)


class Relay:
    """Publishes the outbox to ``<prefix>events``; :meth:`run` until cancelled."""

    def __init__(
        self,
        settings: EventsSettings,
        redis: RedisHandle,
        metrics: Metrics | None = None,
        *,
        database: DatabaseSettings,
        retention: RetentionSettings | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.retention = retention
        """Retention policies applied at each clean-up (``retention_in_relay``), or None."""
        """Where the relay's own LISTEN connection goes."""
        self.metrics = metrics
        self.redis = redis
        self.stream = stream_key(redis)
        self.is_leader = False
        self.published = 0  # events this relay published (tests, benchmarks)
        self.redis_failures = 0  # publish attempts Redis refused
        self._wake = asyncio.Event()
        self._last_cleanup = -float("inf")

    async def run(self) -> None:
        """Lead or stand by, forever; reconnects to PostgreSQL after any failure."""
        backoff = Backoff(0.1, 5.0)
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.database.url,
                    timeout=self.database.acquire_timeout + 3,
                    command_timeout=self.database.command_timeout,
                    server_settings={"application_name": "cygate-relay"},
                )
                backoff.reset()
                await self._acquire(conn)
                self.is_leader = True
                log.info("outbox relay: leading (pid %s)", conn.get_server_pid())
                await conn.add_listener(CHANNEL, self._notified)
                await self._lead(conn)
            except asyncio.CancelledError:
                raise
            except (*DB_UNAVAILABLE, asyncpg.PostgresError) as exc:
                if self.metrics is not None:
                    self.metrics.inc("cygate_events_relay_errors_total", ("postgresql",))
                delay = backoff.next()
                log.warning("outbox relay: PostgreSQL failed (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            finally:
                self.is_leader = False
                if conn is not None:
                    conn.terminate()  # releases the advisory lock with the session

    async def _acquire(self, conn: asyncpg.Connection) -> None:
        """Stand by until this session holds the relay's advisory lock."""
        while True:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_ID):
                return
            await asyncio.sleep(self.settings.poll_interval)

    def _notified(self, *args: Any) -> None:
        self._wake.set()

    async def _lead(self, conn: asyncpg.Connection) -> None:
        settings = self.settings
        backoff = Backoff(0.05, settings.relay_max_backoff)
        while True:
            self._wake.clear()
            try:
                sent = await self.publish_batch(conn)
            except _REDIS_DOWN as exc:
                self.redis_failures += 1
                if self.metrics is not None:
                    self.metrics.inc("cygate_events_relay_errors_total", ("redis",))
                # NOTE: the rows stay unpublished (no UPDATE ran): retried after the back-off.
                delay = backoff.next()
                log.warning("outbox relay: Redis failed (%r); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if time.monotonic() - self._last_cleanup >= settings.cleanup_interval:
                await self.cleanup(conn)
            if sent >= settings.relay_batch:
                continue  # more are waiting
            if sent and settings.linger:
                # PERF: busy: gather more commits per round trip (each batch is a SELECT, a
                # pipeline of XADDs and an UPDATE); when idle, NOTIFY wakes the relay at once.
                await asyncio.sleep(settings.linger)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), settings.poll_interval)

    async def publish_batch(self, conn: asyncpg.Connection) -> int:
        """Publish the oldest unpublished rows (at most ``events_relay_batch``); how many."""
        rows = await conn.fetch(_SELECT, self.settings.relay_batch)
        if not rows:
            return 0
        traced = tracing.current()
        if traced is None:
            return await self._publish(conn, rows)
        # A batch's span, linked to the request that wrote each of its rows (traced writes).
        links = [link for row in rows if (link := traced.link(row["traceparent"])) is not None]
        span = traced.start(
            "outbox publish",
            kind="producer",
            root=True,
            links=links,
            attributes={"messaging.system": "redis", "messaging.batch.message_count": len(rows)},
        )
        with traced.running(span):
            return await self._publish(conn, rows)

    async def _publish(self, conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> int:
        maxlen = self.settings.stream_maxlen
        async with self.redis.client.pipeline(transaction=False) as pipe:
            for row in rows:
                fields: dict[Any, Any] = {
                    "id": row["id"],
                    "type": row["event_type"],
                    "aggregate": row["aggregate"],
                    "aggregate_id": row["aggregate_id"],
                    "created_at": row["created_at"].isoformat(),
                    "payload": row["payload"],
                }
                if row["traceparent"]:
                    fields["traceparent"] = row["traceparent"]
                pipe.xadd(self.stream, fields, maxlen=maxlen, approximate=True)
            await pipe.execute()
        # NOTE: a crash here (after XADD, before the UPDATE) publishes this batch again.
        await conn.execute(_MARK, [row["id"] for row in rows])
        self.published += len(rows)
        if self.metrics is not None:
            self.metrics.inc("cygate_events_published_total", (), len(rows))
        return len(rows)

    async def cleanup(self, conn: asyncpg.Connection) -> None:
        """Delete published rows and consumer records older than the retention (never an
        unpublished row, however old)."""
        self._last_cleanup = time.monotonic()
        retention = float(self.settings.retention)
        outbox = await conn.execute(_CLEAN_OUTBOX, retention)
        processed = await conn.execute(_CLEAN_PROCESSED, retention)
        log.info("outbox relay: clean-up (%s outbox, %s processed_events)", outbox, processed)
        if self.retention is not None and self.retention.in_relay:
            counts = await run_retention(conn, self.retention, dry_run=False)
            log.info("retention: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
