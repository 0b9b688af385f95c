"""The read lease on a real PostgreSQL pool: bounded, fair under load, and never reusing a
connection that saw an error or a cancellation."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from cygate.infra.lease import ReadLease

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(test_db_dsn: str):  # type: ignore[no-untyped-def]
    p = await asyncpg.create_pool(test_db_dsn, min_size=0, max_size=4)
    yield p
    await p.close()


async def _backend_pids(lease: ReadLease, n: int) -> set[int]:
    rows = await asyncio.gather(*(lease.fetchrow("SELECT pg_backend_pid()") for _ in range(n)))
    return {r[0] for r in rows if r is not None}


async def test_many_concurrent_reads_on_few_connections(pool: asyncpg.Pool) -> None:
    lease = ReadLease(pool, 2)
    rows = await asyncio.gather(
        *(lease.fetchrow("SELECT $1::int, pg_sleep(0.005)", i) for i in range(100))
    )
    assert [r[0] for r in rows if r is not None] == list(range(100))
    assert len(await _backend_pids(lease, 50)) <= 2
    assert pool.get_size() - pool.get_idle_size() == 2  # held by the lease, the rest free
    await lease.close()
    assert pool.get_size() == pool.get_idle_size()


async def test_an_error_discards_the_connection(pool: asyncpg.Pool) -> None:
    lease = ReadLease(pool, 1)
    await lease.fetchrow("SELECT 1")
    assert pool.get_idle_size() == pool.get_size() - 1  # held by the lease
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await lease.fetchrow("SELEC 1")
    assert pool.get_idle_size() == pool.get_size()  # given back to the pool, not kept
    row = await lease.fetchrow("SELECT 41 + 1")
    assert row is not None and row[0] == 42
    await lease.close()
    assert pool.get_size() == pool.get_idle_size()


async def test_cancelled_reads_leak_nothing(pool: asyncpg.Pool) -> None:
    lease = ReadLease(pool, 2)
    tasks = [asyncio.create_task(lease.fetchrow("SELECT pg_sleep(1)")) for _ in range(6)]
    await asyncio.sleep(0.1)  # two running, four waiting
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    row = await asyncio.wait_for(lease.fetchrow("SELECT 7"), 5)
    assert row is not None and row[0] == 7
    await lease.close()
    await asyncio.sleep(0.1)
    assert pool.get_size() == pool.get_idle_size()


async def test_a_database_that_is_down_is_a_quick_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = await asyncpg.create_pool(
        f"postgresql://postgres@127.0.0.1:{port}/x", min_size=0, max_size=2, timeout=1
    )
    lease = ReadLease(dead, 2)
    for _ in range(3):  # no slot is lost to a failed acquire
        with pytest.raises(OSError):
            await asyncio.wait_for(lease.fetchrow("SELECT 1"), 5)
    await lease.close()
    await dead.close()


async def test_held_connections_killed_by_the_server_cost_no_reader_an_error(
    pool: asyncpg.Pool, test_db_dsn: str
) -> None:
    """What a PostgreSQL restart does to the held connections, done to their backends alone
    (pg_terminate_backend): each is found dead when next used, and the read goes to a fresh
    connection instead of failing (the PostgreSQL restart drill does it with a real restart)."""
    lease = ReadLease(pool, 3)
    held = await _backend_pids(lease, 30)
    assert len(held) == 3
    admin = await asyncpg.connect(test_db_dsn)
    try:
        for pid in held:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # the client sees the connections close
    rows = [await lease.fetchrow("SELECT pg_backend_pid()") for _ in range(6)]  # one at a time
    fresh = {r[0] for r in rows if r is not None}
    assert len(fresh) == 1 and not fresh & held
    assert len(await _backend_pids(lease, 30)) <= 3
    await lease.close()
    assert pool.get_size() == pool.get_idle_size()


async def test_a_held_connection_that_dies_mid_query_is_read_again(
    pool: asyncpg.Pool, test_db_dsn: str
) -> None:
    lease = ReadLease(pool, 1)
    (pid,) = await _backend_pids(lease, 1)
    reading = asyncio.create_task(lease.fetchrow("SELECT pg_backend_pid(), pg_sleep(0.5)"))
    await asyncio.sleep(0.2)
    admin = await asyncpg.connect(test_db_dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    row = await asyncio.wait_for(reading, 5)
    assert row is not None and row[0] != pid
    # A statement's own error is still the caller's (not read again).
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await lease.fetchrow("SELEC 1")
    await lease.close()
