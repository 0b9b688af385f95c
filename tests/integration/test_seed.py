"""Seeding with COPY: all or nothing, credentials generated, fast."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from argon2 import PasswordHasher

from cygate.infra import seed as seeding
from cygate.infra.db import apply_migrations, drop_database, ensure_database

pytestmark = pytest.mark.integration


@pytest.fixture
async def conn(test_db_dsn: str):  # type: ignore[no-untyped-def]
    dsn = urlunsplit(urlsplit(test_db_dsn)._replace(path=f"/cygate_seed_{secrets.token_hex(4)}"))
    await ensure_database(dsn)
    c = await asyncpg.connect(dsn)
    await apply_migrations(c)
    yield c
    await c.close()
    await drop_database(dsn)


async def test_seed_loads_consistent_data(conn: asyncpg.Connection) -> None:
    report = await seeding.seed(conn, categories=30, products=20_000, users=25, rng_seed=1)
    assert (report.categories, report.products, report.users) == (30, 20_000, 25)
    assert await conn.fetchval("SELECT count(*) FROM products") == 20_000
    assert await conn.fetchval("SELECT count(*) FROM products WHERE search IS NULL") == 0
    # every product's category exists, roots and children form a two-level tree
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM categories c JOIN categories p ON c.parent_id = p.id "
            "WHERE p.parent_id IS NOT NULL"
        )
        == 0
    )
    hashed = await conn.fetchval("SELECT password_hash FROM users LIMIT 1")
    assert report.password and PasswordHasher().verify(hashed, report.password)


async def test_reset_keeps_real_accounts(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO users (id, email, name) VALUES (gen_random_uuid(), 'real@example.org', 'R')"
    )
    await seeding.seed(conn, categories=3, products=10, users=2)
    await seeding.reset(conn)
    assert await conn.fetchval("SELECT count(*) FROM products") == 0
    assert await conn.fetchval("SELECT count(*) FROM users") == 1
    assert await seeding.catalog_is_empty(conn)
