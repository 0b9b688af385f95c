"""Events benchmark: relay throughput and commit-to-effect latency (``make bench-events``).

1. Throughput: ``--events`` order events are committed first (in transactions of 100) with no
   relay running; then an in-process relay publishes them (events/s), and the two transactional
   consumers (order summary, analytics) apply them (events/s each, running side by side).
2. Latency: a real ``cygate worker`` process (relay + both consumers, as a gateway worker runs
   them) while this process commits one order event per transaction at ``--rate`` per second for
   ``--seconds``. For each event: commit (client clock, right after COMMIT returns) to the
   stream entry (the Redis id's millisecond) and to the consumer's effect (``applied_at``, taken
   inside the consumer's transaction). Same host, same clock.

It makes a database and a Redis prefix of its own and removes both. Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import redis.asyncio as aioredis

from cygate.infra.db import apply_migrations, create_pool, drop_database, ensure_database
from cygate.infra.outbox import emit
from cygate.services.events.consumer import ConsumerRunner
from cygate.services.events.handlers import AnalyticsHandler, OrderSummaryHandler
from cygate.services.events.relay import Relay
from cygate.services.events.stream import events_redis
from cygate.settings import Settings, load_settings

SERVER_DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def _connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("jsonb", encoder=lambda v: b"\x01" + orjson.dumps(v),
                              decoder=lambda b: orjson.loads(b[1:]), schema="pg_catalog",
                              format="binary")  # fmt: skip
    return conn


def _payload(users: list[str]) -> dict[str, Any]:
    return {"order_id": str(uuid.uuid4()), "user_id": users[secrets.randbelow(len(users))],
            "total_cents": 1999, "currency": "EUR",
            "items": [{"product_id": str(uuid.uuid4()), "quantity": 1}]}  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def throughput(settings: Settings, n: int, users: list[str]) -> dict[str, float]:
    conn = await _connect(settings.database.url)
    for start in range(0, n, 100):
        async with conn.transaction():
            for _ in range(min(100, n - start)):
                await emit(conn, aggregate="order", aggregate_id="x", event_type="order.created",
                           payload=_payload(users))  # fmt: skip
    handle = events_redis(settings)
    relay = Relay(settings, handle)
    t0 = time.perf_counter()
    while await relay.publish_batch(conn):
        pass
    relay_s = time.perf_counter() - t0
    pool = await create_pool(settings.database)
    out = {"relay_events_per_s": n / relay_s}
    runners = [ConsumerRunner(settings, handle, pool, h)
               for h in (OrderSummaryHandler(), AnalyticsHandler())]  # fmt: skip

    async def drain(runner: ConsumerRunner) -> float:
        t = time.perf_counter()
        while runner.applied < n:
            await runner.step()
        return time.perf_counter() - t

    t0 = time.perf_counter()
    times = await asyncio.gather(*(drain(r) for r in runners))
    for r, s in zip(runners, times, strict=True):
        out[f"{r.group}_events_per_s"] = n / s
    out["both_consumers_wall_s"] = time.perf_counter() - t0
    await pool.close()
    await handle.close()
    await conn.execute("TRUNCATE outbox, processed_events, order_summaries, analytics_daily")
    await conn.close()
    async with aioredis.Redis.from_url(settings.redis.url) as r:
        await r.delete(settings.redis.prefix + "events")
    return out


def _worker(settings: Settings) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYGATE_")}
    env.update(CYGATE_DATABASE_URL=settings.database.url, CYGATE_REDIS_URL=settings.redis.url,
               CYGATE_REDIS_PREFIX=settings.redis.prefix, CYGATE_LOG_LEVEL="warning",
               CYGATE_ENVIRONMENT="test")  # fmt: skip
    if os.environ.get("CYGATE_NO_EXTENSIONS"):
        env["CYGATE_NO_EXTENSIONS"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "cygate", "worker", "--consumers", "order_summary,analytics"],
        env=env, start_new_session=True,
    )  # fmt: skip


async def _until(conn: asyncpg.Connection, sql: str, *args: Any) -> None:
    """Poll until ``sql`` is true (a NOTIFY would be overkill for a benchmark's bookkeeping)."""
    while True:
        if await conn.fetchval(sql, *args):
            return
        await asyncio.sleep(0.05)


async def latency(
    settings: Settings, rate: float, seconds: float, users: list[str]
) -> dict[str, Any]:
    proc = _worker(settings)
    conn = await _connect(settings.database.url)
    try:
        # Wait for the worker: one event must make it through before the clock starts.
        async with conn.transaction():
            first = await emit(conn, aggregate="order", aggregate_id="warm",
                               event_type="order.created", payload=_payload(users))  # fmt: skip
        await _until(conn, "SELECT count(*) = 2 FROM processed_events WHERE event_id = $1", first)
        committed: dict[int, float] = {}
        interval, start = 1.0 / rate, time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tx = conn.transaction()
            await tx.start()
            oid = await emit(conn, aggregate="order", aggregate_id=str(i),
                             event_type="order.created", payload=_payload(users))  # fmt: skip
            committed[oid] = time.time()  # NOTE: when COMMIT is sent: latency includes it
            await tx.commit()
        want = 2 * len(committed)
        ids = list(committed)
        await _until(conn, "SELECT count(*) = $2 FROM processed_events WHERE event_id = ANY($1)",
                     ids, want)  # fmt: skip
        rows = await conn.fetch("SELECT consumer, event_id, extract(epoch FROM applied_at) AS t "
                                "FROM processed_events WHERE event_id = ANY($1)", ids)  # fmt: skip
        async with aioredis.Redis.from_url(settings.redis.url) as r:
            entries = await r.xrange(settings.redis.prefix + "events")
        relayed = {int(f[b"id"]): int(mid.split(b"-")[0]) / 1000 for mid, f in entries}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        await conn.close()
    out: dict[str, Any] = {"events": len(committed), "rate": rate}
    # The stream id carries Redis's clock in whole milliseconds (up to 1 ms early).
    to_stream = [(relayed[o] - t) * 1000 for o, t in committed.items() if o in relayed]
    out["commit_to_stream_ms"] = _summary(to_stream)
    for consumer in ("order_summary", "analytics"):
        lat = [(float(r["t"]) - committed[r["event_id"]]) * 1000 for r in rows
               if r["consumer"] == consumer]  # fmt: skip
        out[f"commit_to_{consumer}_ms"] = _summary(lat)
    return out


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 2), "p99": round(_pct(values, 0.99), 2),
            "max": round(max(values), 2)}  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="throughput phase size")
    parser.add_argument("--rate", type=float, default=200.0, help="latency phase events/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency phase length")
    args = parser.parse_args()
    dsn = urlunsplit(urlsplit(SERVER_DSN)._replace(path=f"/cygate_bench_ev_{secrets.token_hex(3)}"))
    prefix = f"cygate-bench-ev-{secrets.token_hex(3)}:"
    settings = load_settings(env={}, database_url=dsn, redis_url=REDIS_URL, redis_prefix=prefix,
                             environment="test")  # fmt: skip
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    await apply_migrations(conn)
    await conn.close()
    users = [str(uuid.uuid4()) for _ in range(100)]
    try:
        result: dict[str, Any] = {"core": "pure" if os.environ.get("CYGATE_NO_EXTENSIONS") else
                                  "compiled"}  # fmt: skip
        result["throughput"] = await throughput(settings, args.events, users)
        result["latency"] = await latency(settings, args.rate, args.seconds, users)
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    finally:
        await drop_database(dsn)
        async with aioredis.Redis.from_url(REDIS_URL) as r:
            async for key in r.scan_iter(match=prefix + "*"):
                await r.delete(key)


if __name__ == "__main__":
    asyncio.run(main())
