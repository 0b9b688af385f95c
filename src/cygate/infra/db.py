"""PostgreSQL: the asyncpg pool and the migration runner.

Why a small runner of our own rather than Alembic or yoyo: the schema is plain SQL files, the app
has no ORM models to autogenerate from, and the whole contract fits in one screen: numbered
files applied in order, each in its own transaction, recorded with a checksum in
``schema_migrations``, serialised across processes by a PostgreSQL advisory lock so that several
instances starting together apply each file exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from cygate.infra import tracing

if TYPE_CHECKING:
    from cygate.infra.settings import DatabaseSettings

__all__ = [
    "DB_UNAVAILABLE",
    "Migration",
    "MigrationError",
    "apply_migrations",
    "close_pool",
    "create_pool",
    "ensure_database",
    "load_migrations",
]

log = logging.getLogger("cygate.db")

# An arbitrary constant: the advisory lock every cygate process takes while migrating.
MIGRATION_LOCK_ID = 0x6379_6761_7465  # "cygate"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


# Errors that mean "the database is not reachable right now": a quick 503, never a hang or a 500.
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    # NOTE: a connection the server dropped while its error was still being read ("cannot
    # switch to state 12; another operation (2) is in progress"), seen in the PostgreSQL
    # restart drill on a connection taken from the pool as the server shut down.
    asyncpg.InternalClientError,
)


class MigrationError(RuntimeError):
    """The database's record disagrees with the migration files (edited or missing file)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The numbered SQL files shipped in ``cygate/migrations``, in order."""
    out = []
    for entry in importlib.resources.files("cygate.migrations").iterdir():
        m = _FILE_RE.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    out.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {versions}")
    return out


async def apply_migrations(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every pending migration; return the ones this call applied.

    Safe under concurrency: the advisory lock makes other callers wait, and they then find
    the migrations recorded and apply nothing.
    """
    migrations = load_migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now()
               )"""
        )
        done = {
            r["version"]: r
            for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        }
        known = {mig.version for mig in migrations}
        missing = sorted(set(done) - known)
        if missing:
            raise MigrationError(f"database has migrations this code does not know: {missing}")
        applied = []
        for mig in migrations:
            row = done.get(mig.version)
            if row is not None:
                if row["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name} was edited after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            log.info("applied migration %04d_%s", mig.version, mig.name)
            applied.append(mig)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


def _with_database(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/") or "postgres"


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` when it does not exist; True when created."""
    name = database_name(dsn)
    admin = await asyncpg.connect(_with_database(dsn, "postgres"), timeout=10)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await admin.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False  # another process won the race
        return True
    finally:
        await admin.close()


async def drop_database(dsn: str) -> None:
    """Drop the database named in ``dsn`` (tests use this for their private database)."""
    name = database_name(dsn)
    admin = await asyncpg.connect(_with_database(dsn, "postgres"), timeout=10)
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await admin.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        await admin.close()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # PERF: orjson for jsonb in both directions; asyncpg's default goes through the json module.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )
    traced = tracing.current()
    if traced is not None:
        # A span per query of every pooled connection (infra/tracing.py): asyncpg's own hook,
        # called only when one is added (tracing off: nothing of it runs).
        conn.add_query_logger(traced.query_logger)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Release hook: roll back a transaction left open, and nothing else.

    PERF: asyncpg's default reset sends ``RESET ALL; UNLISTEN *; CLOSE ALL; ...`` on every
    release, one more round trip per request (a visible share of a worker's CPU on the product
    read).
    The app never changes session state on pooled connections (no SET, LISTEN, advisory
    locks or cursors outside a transaction), so only an open transaction needs undoing.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(settings: DatabaseSettings, *, lazy: bool = False) -> asyncpg.Pool:
    """The app's pool: prepared statements cached per connection, jsonb through orjson.

    ``lazy`` opens no connection up front (used when PostgreSQL is down at start-up).
    """
    pool: asyncpg.Pool = await asyncpg.create_pool(
        settings.url,
        min_size=0 if lazy else settings.pool_min,
        max_size=settings.pool_max,
        command_timeout=settings.command_timeout,
        timeout=settings.acquire_timeout,
        init=_init_connection,
        reset=_reset_connection,
        server_settings={"application_name": "cygate", "jit": "off"},
    )
    return pool


async def close_pool(pool: asyncpg.Pool, within: float = 10.0) -> None:
    """Close ``pool`` gracefully, but never wait past ``within`` seconds.

    NOTE: ``Pool.close()`` waits for every acquired connection to come back, with no bound; a
    connection that never does (a task killed mid-acquire: asyncpg issue #547 and kin) would
    hang a worker's shutdown. Past the timeout the pool is terminated instead (its own
    ``close()`` terminates it when cancelled) and the wait is logged.
    """
    try:
        async with asyncio.timeout(within):
            await pool.close()
    except TimeoutError:
        log.warning("database pool did not close within %g s; connections terminated", within)
        pool.terminate()
