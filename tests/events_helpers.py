"""Helpers for the events tests: a private database per test (the session's gateways run relays
on the shared one), settings pointing at it, event generators, and stream readers.

The fixtures ``dsn``, ``prefix`` and ``client`` serve only the modules that import them (the
consumer and relay tests), not a conftest, so no other module gets these generic names. Their
functions are called ``fixture_<name>`` (as pytest's docs advise), so that a test's ``dsn``
argument shadows no import (ruff F811)."""

from __future__ import annotations

import asyncio
import io
import os
import random
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from tests.store_helpers import create_migrated

from cygate._compat import NO_EXTENSIONS
from cygate.infra.db import drop_database
from cygate.infra.outbox import emit
from cygate.settings import Settings, load_settings

SERVER_DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

__all__ = [
    "REDIS_URL",
    "EventLog",
    "connect",
    "expected_summaries",
    "fixture_client",
    "fixture_dsn",
    "fixture_prefix",
    "private_database",
    "settings_for",
    "stream_ids",
    "wait_for",
    "within",
    "worker_process",
]


async def connect(dsn: str) -> asyncpg.Connection:
    """A connection like the app's pooled ones (jsonb as Python values, through orjson)."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )
    return conn


@asynccontextmanager
async def private_database() -> AsyncIterator[str]:
    """A migrated database of this test's own (advisory locks are per database too)."""
    dsn = urlunsplit(urlsplit(SERVER_DSN)._replace(path=f"/cygate_ev_{secrets.token_hex(4)}"))
    await create_migrated(dsn)
    try:
        yield dsn
    finally:
        await drop_database(dsn)


@pytest.fixture(name="dsn")
async def fixture_dsn() -> AsyncIterator[str]:
    """DSN of this test's own migrated database (``private_database``), dropped after it."""
    async with private_database() as dsn:
        yield dsn


@pytest.fixture(name="prefix")
def fixture_prefix(redis_prefix: str) -> str:
    """A Redis key prefix of this test's own, under the session's (so its keys are cleaned up)."""
    return f"{redis_prefix}{secrets.token_hex(3)}:"


@pytest.fixture(name="client")
async def fixture_client() -> AsyncIterator[aioredis.Redis]:
    """A Redis client on ``REDIS_URL`` for looking at streams and keys, closed after the test."""
    c = aioredis.Redis.from_url(REDIS_URL)
    yield c
    await c.aclose()


def settings_for(dsn: str, prefix: str, redis_url: str = REDIS_URL, **over: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": dsn,
        "redis_url": redis_url,
        "redis_prefix": prefix,
        "environment": "test",
        "events_block": 0.2,
        "events_reclaim_idle": 1.0,
        "events_relay_max_backoff": 0.5,
    }
    values.update(over)
    return load_settings(env={}, **values)


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment of a ``cygate worker`` subprocess with ``settings``' events values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYGATE_")}
    if NO_EXTENSIONS:
        env["CYGATE_NO_EXTENSIONS"] = "1"
    flat = settings.flat()
    for name in ("database_url", "redis_url", "redis_prefix", "environment", "log_level",
                 "events_block", "events_reclaim_idle", "events_relay_batch",
                 "events_consumer_batch", "events_max_deliveries", "events_poll_interval",
                 "events_relay_max_backoff"):  # fmt: skip
        env[f"CYGATE_{name.upper()}"] = str(flat[name])
    env["CYGATE_CACHE_KEY_FILE"] = os.path.join(
        os.environ.get("TMPDIR", "/tmp"), f"cygate-ev-{os.getpid()}-key"
    )
    return env


def worker_process(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    """A real ``cygate worker`` process (its own process group, output to a temp file)."""
    path = f"/tmp/cygate-ev-worker-{os.getpid()}-{secrets.token_hex(3)}.log"
    with open(path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "cygate", "worker", *args],
            env=worker_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def within(seconds: float, scenario: Awaitable[None], what: str) -> None:
    """Run ``scenario``; past ``seconds`` fail with the stack of every task of the loop, so a
    hang says where it is (instead of running into pytest's 300 s timeout with the loop's
    idle ``select`` as the only trace)."""
    task = asyncio.ensure_future(scenario)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        stacks = io.StringIO()
        for other in asyncio.all_tasks():
            other.print_stack(file=stacks)
        task.cancel()
        raise AssertionError(f"{what}: not done after {seconds} s; tasks:\n{stacks.getvalue()}")
    task.result()


async def wait_for(
    check: Callable[[], Awaitable[bool]], seconds: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def stream_ids(client: aioredis.Redis, prefix: str) -> list[int]:
    """The outbox ids in the stream, in stream order (duplicates kept)."""
    entries = await client.xrange(prefix + "events")
    return [int(fields[b"id"]) for _mid, fields in entries]


class EventLog:
    """Generates order events (each in its own transaction, as the services do) and remembers
    them, so a test can compute what every read model must end up with."""

    def __init__(self, users: int = 3, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.users = [uuid.uuid4() for _ in range(users)]
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # (outbox id, type, payload)

    async def emit(self, conn: asyncpg.Connection, event_type: str, payload: dict[str, Any]) -> int:
        async with conn.transaction():
            oid = await emit(
                conn, aggregate=event_type.split(".")[0], aggregate_id=payload.get("order_id", ""),
                event_type=event_type, payload=payload,
            )  # fmt: skip
        self.events.append((oid, event_type, payload))
        return oid

    async def order(self, conn: asyncpg.Connection, user: uuid.UUID | None = None) -> list[int]:
        """One order's life: created, then paid (maybe shipped), cancelled, expired or open."""
        user = user or self.rng.choice(self.users)
        order_id = str(uuid.uuid4())
        total = self.rng.randint(100, 50_000)
        items = [{"product_id": str(uuid.uuid4()), "quantity": self.rng.randint(1, 3)}]
        base = {"order_id": order_id, "user_id": str(user), "currency": "EUR"}
        ids = [
            await self.emit(conn, "order.created", {**base, "total_cents": total, "items": items})
        ]
        fate = self.rng.choice(["paid", "paid", "shipped", "cancelled", "expired", "open"])
        if fate in ("paid", "shipped"):
            ids.append(await self.emit(conn, "order.paid", {**base, "payment_id": str(uuid.uuid4()),
                                                            "amount_cents": total}))  # fmt: skip
        if fate == "shipped":
            ids.append(await self.emit(conn, "order.shipped", base))
        if fate in ("cancelled", "expired"):
            ids.append(await self.emit(conn, f"order.{fate}",
                                       {**base, "total_cents": total, "items": items}))  # fmt: skip
        return ids

    def type_counts(self) -> Counter[str]:
        return Counter(t for _, t, _ in self.events)


def expected_summaries(events: list[tuple[int, str, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """What order_summaries must hold after applying each event once."""
    out: dict[str, dict[str, int]] = {}
    for _oid, etype, p in events:
        if not etype.startswith("order."):
            continue
        s = out.setdefault(p["user_id"], dict.fromkeys(
            ("orders_count", "open_orders", "paid_orders", "shipped_orders", "cancelled_orders",
             "expired_orders", "total_spent_cents"), 0))  # fmt: skip
        if etype == "order.created":
            s["orders_count"] += 1
            s["open_orders"] += 1
        elif etype == "order.paid":
            s["open_orders"] -= 1
            s["paid_orders"] += 1
            s["total_spent_cents"] += p["amount_cents"]
        elif etype == "order.shipped":
            s["shipped_orders"] += 1
        else:
            s["open_orders"] -= 1
            s["cancelled_orders" if etype == "order.cancelled" else "expired_orders"] += 1
    return out


async def summaries(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    rows = await conn.fetch(
        "SELECT user_id::text AS user_id, orders_count, open_orders, paid_orders, shipped_orders,"
        " cancelled_orders, expired_orders, total_spent_cents FROM order_summaries"
    )
    out = {}
    for r in rows:
        values = dict(r)
        out[values.pop("user_id")] = values
    return out
