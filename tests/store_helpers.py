"""Helpers for the store tests on the session's test database (orders, payments, idempotency)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from cygate.infra.db import apply_migrations, close_pool, create_pool, ensure_database
from cygate.settings import load_settings

__all__ = ["app_pool", "create_migrated"]


async def create_migrated(dsn: str) -> None:
    """Create the database ``dsn`` names (if it does not exist) and apply the migrations."""
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()


@asynccontextmanager
async def app_pool(dsn: str, *, max_size: int = 30) -> AsyncIterator[asyncpg.Pool]:
    """The app's own pool (``create_pool``: its codecs and set-up) on ``dsn``, closed on exit.

    It opens connections only as they are needed (no minimum); ``max_size`` is the most at once.
    """
    settings = load_settings({}, database_url=dsn, db_pool_min=0, db_pool_max=max_size)
    pool = await create_pool(settings.database)
    try:
        yield pool
    finally:
        await close_pool(pool)  # bounded: Pool.close() waits without bound (asyncpg #547)
