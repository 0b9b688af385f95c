"""Shared fixtures: a private PostgreSQL database and Redis key prefix per test session.

The servers come from ``DATABASE_URL`` / ``REDIS_URL`` (``scripts/services.sh`` writes them to
``.services/env``; ``make test`` loads it). The session creates ``cygate_test_<random>``, applies
the migrations, and drops it at the end; Redis keys live under ``cygate-test-<random>:`` and are
deleted at the end. Other data on those servers is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from tests.admin import ADMIN_EMAIL, ADMIN_PASSWORD

from cygate._compat import NO_EXTENSIONS

SUITE_RATE_LIMITS: dict[str, dict[str, object]] = {
    "api": {"rate": 1_000_000, "period": 1, "key": ["caller"], "mode": "local"},
    "register": {"rate": 1_000_000, "period": 1, "key": ["ip"], "mode": "local"},
}
"""The test gateways' replacements for the built-in ``api`` and ``register`` limits."""

SERVER_DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_report_header(config: pytest.Config) -> str:
    return f"cygate core: {'pure Python' if NO_EXTENSIONS else 'compiled (Cython)'}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_c = pytest.mark.skip(reason="CYGATE_NO_EXTENSIONS is set: compiled core not in use")
    skip_once = pytest.mark.skip(reason="ran in the compiled pass (its subject is not the core)")
    # `make test` runs the suite twice, compiled then pure; the second pass leaves out what
    # does not depend on which implementation the core uses (deployment files, tooling,
    # infrastructure drills). A pure-only `make test` runs everything.
    second_pass = os.environ.get("SUITE_PASS") == "second"
    for item in items:
        if NO_EXTENSIONS and item.get_closest_marker("c_extension"):
            item.add_marker(skip_c)
        elif second_pass and item.get_closest_marker("once"):
            item.add_marker(skip_once)


def _with_db(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


@contextmanager
def migrated_database(prefix: str) -> Iterator[str]:
    """DSN of a freshly created and migrated database named ``<prefix><random>``, dropped
    afterwards (kept when ``CYGATE_TEST_KEEP`` is set)."""
    import asyncio

    from tests.store_helpers import create_migrated

    from cygate.infra.db import drop_database

    dsn = _with_db(SERVER_DSN, f"{prefix}{secrets.token_hex(4)}")
    asyncio.run(create_migrated(dsn))
    try:
        yield dsn
    finally:
        if not os.environ.get("CYGATE_TEST_KEEP"):
            asyncio.run(drop_database(dsn))


@pytest.fixture(scope="session")
def test_db_dsn() -> Iterator[str]:
    """DSN of a freshly created and migrated database, dropped after the session."""
    with migrated_database("cygate_test_") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A key prefix of this session's own; every key under it is deleted at the end."""
    import asyncio

    prefix = f"cygate-test-{secrets.token_hex(4)}:"
    yield prefix

    async def cleanup() -> None:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            async for key in client.scan_iter(match=prefix + "*", count=1000):
                await client.delete(key)
        finally:
            await client.aclose()

    asyncio.run(cleanup())


@pytest.fixture
async def db(test_db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(test_db_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def gateway_env(test_db_dsn: str, redis_prefix: str) -> dict[str, str]:
    """Environment for a gateway process pointed at the test database and prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYGATE_")}
    if NO_EXTENSIONS:
        env["CYGATE_NO_EXTENSIONS"] = "1"
    env.update(
        CYGATE_DATABASE_URL=test_db_dsn,
        CYGATE_REDIS_URL=REDIS_URL,
        CYGATE_REDIS_PREFIX=redis_prefix,
        CYGATE_LOG_LEVEL="warning",
        CYGATE_ENVIRONMENT="test",
        # Every test gateway has this admin (tests/acceptance/conftest.py::admin_headers).
        CYGATE_ADMIN_EMAIL=ADMIN_EMAIL,
        CYGATE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        # NOTE: no background expiry sweeps: the session's gateway lives through every module,
        # integration tests included, and its sweeper raced their own sweepers over the same
        # database (CI saw 24 of 30 orders expired by the test's sweepers). A test of expiry
        # through a gateway turns it on for its own (tests/acceptance/test_orders_api.py).
        CYGATE_ORDER_EXPIRY_INTERVAL="0",
        # NOTE: the suite's gateways serve many tests from one address (127.0.0.1): the built-in
        # default limit and the registration limit are raised here, explicitly (a module that
        # sets CYGATE_RATE_LIMITS adds to SUITE_RATE_LIMITS). test_default_limits.py runs a
        # gateway with the built-in ones.
        CYGATE_RATE_LIMITS=json.dumps(SUITE_RATE_LIMITS),
    )
    return env
