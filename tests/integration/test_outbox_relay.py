"""The outbox relay against real PostgreSQL and Redis: only committed events, in id order, once
per event with two relays, woken by NOTIFY, surviving a Redis outage, cleaning up old rows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from tests.events_helpers import (
    EventLog,
    connect,
    fixture_client,  # noqa: F401 (the fixture `client`)
    fixture_dsn,  # noqa: F401 (the fixture `dsn`)
    fixture_prefix,  # noqa: F401 (the fixture `prefix`)
    settings_for,
    stream_ids,
    wait_for,
)
from tests.private_redis import PrivateRedis

from cygate.infra.outbox import emit
from cygate.services.events.relay import Relay
from cygate.services.events.stream import decode, events_redis
from cygate.settings import Settings

TASKS: dict[int, asyncio.Task[None]] = {}


async def _kill(relay: Relay) -> None:
    """Cancel a relay's task: its connection is terminated, as when its process dies."""
    task = TASKS[id(relay)]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Relay]:
    handle = events_redis(settings.events, settings.redis)
    relay = Relay(settings.events, handle, database=settings.database)
    task = asyncio.create_task(relay.run())
    TASKS[id(relay)] = task
    try:
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await handle.close()


async def unpublished(conn: asyncpg.Connection) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    return n


async def test_emit_refuses_a_connection_outside_a_transaction(dsn: str) -> None:
    db = await connect(dsn)
    with pytest.raises(RuntimeError, match="transaction"):
        await emit(db, aggregate="order", aggregate_id="x", event_type="order.shipped", payload={})
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    await db.close()


async def test_rolled_back_events_never_appear(
    dsn: str, prefix: str, client: aioredis.Redis
) -> None:
    conn = await connect(dsn)
    try:
        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():
                lost = await emit(
                    conn, aggregate="order", aggregate_id="a", event_type="order.shipped",
                    payload={"order_id": "a"},
                )  # fmt: skip
                1 / 0  # noqa: B018  # the change fails after its event was written
        async with conn.transaction():
            kept = await emit(conn, aggregate="order", aggregate_id="b",
                              event_type="order.shipped", payload={"order_id": "b"})  # fmt: skip
        async with running(settings_for(dsn, prefix)):
            await wait_for(lambda: _has(client, prefix, kept), what="the committed event")
        ids = await stream_ids(client, prefix)
        assert ids == [kept]
        assert lost not in ids
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 1
    finally:
        await conn.close()


async def _has(client: aioredis.Redis, prefix: str, oid: int) -> bool:
    return oid in await stream_ids(client, prefix)


async def test_committed_events_are_published_in_id_order_and_marked(
    dsn: str, prefix: str, client: aioredis.Redis
) -> None:
    log = EventLog(seed=1)
    conn = await connect(dsn)
    try:
        for _ in range(40):
            await log.order(conn)
        async with conn.transaction():  # several events in one transaction
            for i in range(15):
                oid = await emit(conn, aggregate="product", aggregate_id=str(i),
                                 event_type="product.updated",
                                 payload={"product_id": str(i), "category_id": "c"})  # fmt: skip
                log.events.append((oid, "product.updated", {"product_id": str(i)}))
        # A small batch: the relay goes round many times.
        async with running(settings_for(dsn, prefix, events_relay_batch=7)):
            await wait_for(lambda: _published_all(conn), what="all rows published")
        entries = await client.xrange(prefix + "events")
        events = [decode(fields) for _mid, fields in entries]
        expected = [oid for oid, _, _ in log.events]
        assert [e.id for e in events] == sorted(expected) == expected
        by_id = {oid: (etype, payload) for oid, etype, payload in log.events}
        for e in events:
            assert e.type == by_id[e.id][0]
            assert e.payload.items() >= by_id[e.id][1].items()
    finally:
        await conn.close()


async def _published_all(conn: asyncpg.Connection) -> bool:
    return await unpublished(conn) == 0


async def test_notify_wakes_the_relay_long_before_its_poll(
    dsn: str, prefix: str, client: aioredis.Redis
) -> None:
    # The poll fallback is a minute away: only the trigger's NOTIFY can deliver in the wait.
    conn = await connect(dsn)
    try:
        async with running(settings_for(dsn, prefix, events_poll_interval=60)) as relay:
            await wait_for(lambda: _true(relay.is_leader), what="leadership")
            await asyncio.sleep(0.2)  # the relay is idle, waiting
            log = EventLog(seed=2)
            ids = await log.order(conn)
            await wait_for(lambda: _has(client, prefix, ids[-1]), seconds=20, what="NOTIFY")
    finally:
        await conn.close()


async def _true(value: bool) -> bool:
    return value


async def test_two_relays_publish_each_event_once(
    dsn: str, prefix: str, client: aioredis.Redis
) -> None:
    settings = settings_for(dsn, prefix, events_relay_batch=20, events_poll_interval=0.2)
    log = EventLog(users=5, seed=3)
    conns = [await connect(dsn) for _ in range(4)]
    try:
        async with running(settings) as one, running(settings) as two:

            async def writer(conn: asyncpg.Connection) -> None:
                for _ in range(40):
                    await log.order(conn)

            await asyncio.gather(*(writer(c) for c in conns))
            await wait_for(lambda: _published_all(conns[0]), what="all rows published")
            assert [one.is_leader, two.is_leader].count(True) == 1
        ids = await stream_ids(client, prefix)
        assert len(ids) == len(log.events) > 200
        assert sorted(ids) == sorted(oid for oid, _, _ in log.events)  # each exactly once
        assert one.published + two.published == len(ids)
    finally:
        for c in conns:
            await c.close()


async def test_a_standby_relay_takes_over_when_the_leader_dies(
    dsn: str, prefix: str, client: aioredis.Redis
) -> None:
    settings = settings_for(dsn, prefix, events_poll_interval=0.2)
    conn = await connect(dsn)
    log = EventLog(seed=4)
    try:
        async with running(settings) as first:
            await wait_for(lambda: _true(first.is_leader), what="the first relay to lead")
            async with running(settings) as standby:
                await asyncio.sleep(0.5)
                assert not standby.is_leader
                await log.order(conn)
                await wait_for(lambda: _published_all(conn), what="publication by the leader")
                assert first.published == len(log.events) and standby.published == 0
                # The leader dies: its session, and with it the advisory lock, ends.
                await _kill(first)
                await log.order(conn)
                await wait_for(lambda: _published_all(conn), what="publication by the standby")
                assert standby.is_leader and standby.published >= 1
        ids = await stream_ids(client, prefix)
        assert ids == [oid for oid, _, _ in log.events]
    finally:
        await conn.close()


async def test_redis_down_keeps_rows_and_delivers_after_restart(dsn: str, prefix: str) -> None:
    log = EventLog(seed=5)
    with PrivateRedis() as private:
        settings = settings_for(dsn, prefix, redis_url=private.url, events_poll_interval=0.1)
        conn = await connect(dsn)
        c = private.client()
        try:
            async with running(settings) as relay:
                await log.order(conn)
                await wait_for(lambda: _published_all(conn), what="first publication")
                before_outage = len(log.events)
                private.stop()
                for _ in range(10):
                    await log.order(conn)
                failures = relay.redis_failures
                await wait_for(lambda: _true(relay.redis_failures >= failures + 3),
                               what="failed attempts while Redis is down")  # fmt: skip
                waiting = await unpublished(conn)
                assert waiting == len(log.events) - before_outage > 0
                private.start()
                await wait_for(lambda: _published_all(conn), what="publication after restart")
            # The restarted server lost its memory: it holds exactly the events that waited.
            entries = c.xrange(prefix + "events")
            ids = [int(f[b"id"]) for _, f in entries]
            assert len(ids) == waiting
            assert ids == sorted(oid for oid, _, _ in log.events)[-waiting:]
        finally:
            c.close()
            await conn.close()


async def test_a_crash_between_xadd_and_update_publishes_again(
    dsn: str, prefix: str, client: aioredis.Redis
) -> None:
    """At least once: rows whose UPDATE was lost are published a second time."""
    conn = await connect(dsn)
    log = EventLog(seed=6)
    try:
        for _ in range(5):
            await log.order(conn)
        settings = settings_for(dsn, prefix)
        handle = events_redis(settings.events, settings.redis)
        relay = Relay(settings.events, handle, database=settings.database)
        try:
            n = await relay.publish_batch(conn)
            await conn.execute("UPDATE outbox SET published_at = NULL")  # the lost UPDATE
            assert await relay.publish_batch(conn) == n
            assert await relay.publish_batch(conn) == 0
        finally:
            await handle.close()
        ids = await stream_ids(client, prefix)
        expected = [oid for oid, _, _ in log.events]
        assert ids == expected + expected
    finally:
        await conn.close()


async def test_cleanup_removes_old_published_rows_only(dsn: str, prefix: str) -> None:
    conn = await connect(dsn)
    log = EventLog(seed=7)
    try:
        for _ in range(6):
            await log.order(conn)
        ids = [oid for oid, _, _ in log.events]
        old_published, recent_published, old_unpublished = ids[:3], ids[3:5], ids[5:7]
        await conn.execute("UPDATE outbox SET published_at = now() - interval '2 days', "
                           "created_at = now() - interval '2 days' WHERE id = ANY($1)",
                           old_published)  # fmt: skip
        await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1)",
                           recent_published)  # fmt: skip
        await conn.execute("UPDATE outbox SET created_at = now() - interval '9 days' "
                           "WHERE id = ANY($1)", old_unpublished)  # fmt: skip
        await conn.execute(
            "INSERT INTO processed_events (consumer, event_id, applied_at) VALUES "
            "('analytics', 1, now() - interval '2 days'), ('analytics', 2, now())"
        )
        settings = settings_for(dsn, prefix, events_retention=86400)
        handle = events_redis(settings.events, settings.redis)
        try:
            await Relay(settings.events, handle, database=settings.database).cleanup(conn)
        finally:
            await handle.close()
        left = {r["id"] for r in await conn.fetch("SELECT id FROM outbox")}
        assert left == set(ids) - set(old_published)
        assert not left & set(old_published)
        assert set(old_unpublished) <= left
        kept = await conn.fetch("SELECT event_id FROM processed_events")
        assert [r["event_id"] for r in kept] == [2]
    finally:
        await conn.close()


async def test_traced_writes_carry_their_traceparent_to_the_stream(
    dsn: str, prefix: str, client: aioredis.Redis
) -> None:
    """Tracing on: an event written under a sampled span records its traceparent (emit, and a
    row the database writes itself takes it from the transaction's setting, migration 0011);
    the relay publishes it in the stream entry, links its span to it, and untraced rows carry
    none."""
    from benchmarks.otlp_sink import OTLPReceiver

    from cygate.infra import tracing

    tracing.shutdown()
    conn = await connect(dsn)
    with OTLPReceiver() as receiver:
        traced = tracing.configure(
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "50",
            }
        )
        assert traced is not None
        try:
            span = traced.start("POST /api/v1/things", kind="server", root=True)
            token = traced.use(span)
            try:
                writer = traced.traceparent()
                async with conn.transaction():
                    by_emit = await emit(
                        conn,
                        aggregate="product",
                        aggregate_id="t1",
                        event_type="product.updated",
                        payload={"product_id": "t1", "category_id": "c"},
                    )
                    await conn.execute("SELECT set_config('cygate.traceparent', $1, true)", writer)
                    by_sql = await conn.fetchval(
                        "INSERT INTO outbox (aggregate, aggregate_id, event_type, payload)"
                        " VALUES ('order', 'o1', 'order.shipped', '{}') RETURNING id"
                    )
            finally:
                traced.release(token)
                span.end()
            async with conn.transaction():  # no span: no traceparent
                plain = await emit(
                    conn,
                    aggregate="order",
                    aggregate_id="o2",
                    event_type="order.shipped",
                    payload={"order_id": "o2"},
                )
            stored = dict(await conn.fetch("SELECT id, traceparent FROM outbox"))
            assert stored[by_emit] == stored[by_sql] == writer
            assert stored[plain] is None
            async with running(settings_for(dsn, prefix)):
                await wait_for(lambda: _published_all(conn), what="all rows published")
            events = {
                e.id: e for e in (decode(f) for _mid, f in await client.xrange(prefix + "events"))
            }
            assert events[by_emit].traceparent == events[by_sql].traceparent == writer
            assert events[plain].traceparent is None
            _, trace_id, span_id, _ = writer.split("-")
            spans = receiver.wait_for(lambda s: any(x.name == "outbox publish" for x in s))
            publish = [s for s in spans if s.name == "outbox publish"]
            assert any((trace_id, span_id) in s.links for s in publish)
            assert all(s.trace_id != trace_id for s in publish)  # linked, not a child
        finally:
            tracing.shutdown()
            await conn.close()
