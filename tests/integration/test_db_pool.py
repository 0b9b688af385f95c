"""Closing the database pool at shutdown: bounded even when a connection never comes back."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from cygate.infra.db import close_pool

pytestmark = pytest.mark.integration


async def test_close_pool_is_bounded_when_a_connection_is_never_released(
    test_db_dsn: str,
) -> None:
    pool = await asyncpg.create_pool(test_db_dsn, min_size=1, max_size=2)
    leaked = await pool.acquire()  # never released: Pool.close() alone would wait forever
    backend = await leaked.fetchval("SELECT pg_backend_pid()")
    with pytest.raises(TimeoutError):  # (what a plain close does, shown with a bound)
        async with asyncio.timeout(0.3):
            await asyncio.shield(pool.close())
    started = time.monotonic()
    await close_pool(pool, within=0.5)
    assert time.monotonic() - started < 3
    assert pool.is_closing()
    conn = await asyncpg.connect(test_db_dsn)
    try:  # the leaked session is gone on the server too
        for _ in range(50):
            alive = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend
            )
            if not alive:
                break
            await asyncio.sleep(0.05)
        assert alive == 0
    finally:
        await conn.close()


async def test_close_pool_closes_an_idle_pool_gracefully(test_db_dsn: str) -> None:
    pool = await asyncpg.create_pool(test_db_dsn, min_size=2, max_size=2)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    started = time.monotonic()
    await close_pool(pool, within=5)
    assert pool.is_closing() and time.monotonic() - started < 1
