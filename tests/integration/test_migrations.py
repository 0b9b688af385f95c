"""Migrations against a real PostgreSQL: once, concurrently, and refusing edited history."""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from cygate.infra import db as dbmod
from cygate.infra.db import (
    Migration,
    MigrationError,
    apply_migrations,
    drop_database,
    ensure_database,
    load_migrations,
)

pytestmark = [pytest.mark.integration, pytest.mark.once]


@pytest.fixture
async def fresh_dsn(test_db_dsn: str):  # type: ignore[no-untyped-def]
    name = f"cygate_mig_{secrets.token_hex(4)}"
    dsn = urlunsplit(urlsplit(test_db_dsn)._replace(path="/" + name))
    assert await ensure_database(dsn) is True
    assert await ensure_database(dsn) is False
    yield dsn
    await drop_database(dsn)


async def test_concurrent_apply_runs_each_file_once(fresh_dsn: str) -> None:
    conns = [await asyncpg.connect(fresh_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        applied = [len(r) for r in results]
        assert sorted(applied) == [0, 0, 0, len(load_migrations())]
        rows = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in load_migrations()]
        assert await apply_migrations(conns[0]) == []
    finally:
        for c in conns:
            await c.close()


async def test_schema_has_the_whole_domain(db: asyncpg.Connection) -> None:
    tables = {
        r["tablename"]
        for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {
        "users", "profiles", "service_clients", "refresh_tokens", "categories", "products",
        "orders", "order_items", "payments", "payment_events", "idempotency_keys", "outbox",
        "audit_log", "schema_migrations",
    } <= tables  # fmt: skip
    cols = {
        r["column_name"]
        for r in await db.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'products'"
        )
    }
    assert "search" in cols


async def test_constraints_refuse_bad_rows(db: asyncpg.Connection) -> None:
    cat = await db.fetchval(
        "INSERT INTO categories (id, name, slug) VALUES (gen_random_uuid(), 'C', $1) RETURNING id",
        f"c-{secrets.token_hex(3)}",
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO products (id, sku, name, price_cents, category_id, stock) "
            "VALUES (gen_random_uuid(), $1, 'P', -1, $2, 1)",
            secrets.token_hex(4),
            cat,
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO products (id, sku, name, price_cents, category_id, stock) "
            "VALUES (gen_random_uuid(), $1, 'P', 1, $2, -1)",
            secrets.token_hex(4),
            cat,
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO users (id, email, roles) VALUES (gen_random_uuid(), $1, ARRAY['root'])",
            f"{secrets.token_hex(4)}@example.com",
        )


async def test_edited_migration_is_refused(fresh_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await apply_migrations(conn)
        original = load_migrations()
        edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in original]
        monkeypatch.setattr(dbmod, "load_migrations", lambda: edited)
        with pytest.raises(MigrationError, match="edited"):
            await apply_migrations(conn)
        monkeypatch.setattr(dbmod, "load_migrations", lambda: [])
        with pytest.raises(MigrationError, match="does not know"):
            await apply_migrations(conn)
    finally:
        await conn.close()


async def test_failed_migration_leaves_nothing_half_applied(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = [Migration(1, "broken", "CREATE TABLE t_ok (id int); CREATE TABLE t_ok (id int);")]
    monkeypatch.setattr(dbmod, "load_migrations", lambda: broken)
    conn = await asyncpg.connect(fresh_dsn)
    try:
        with pytest.raises(asyncpg.DuplicateTableError):
            await apply_migrations(conn)
        assert await conn.fetchval("SELECT to_regclass('t_ok')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
        # and the advisory lock was released (in this database: pg_locks is server-wide, and
        # gateways of other databases hold the outbox relay's lock)
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        assert held == 0
    finally:
        await conn.close()
