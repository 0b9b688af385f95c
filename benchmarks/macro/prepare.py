"""The benchmark database: create it, fill it, and pick the mix of product ids the load uses.

Two ways to fill it (``--prepare``):

- ``cli`` (default): the gateway's own CLI, ``python -m cygate migrate`` then
  ``python -m cygate seed --users 100 --products 100000 --categories 50``, with the ``CYGATE_*``
  environment pointing at database ``cygate_bench``. What is measured is then exactly what the
  gateway builds for itself.
- ``scratch``: a stand-in while that CLI is being written: the ``categories`` and ``products``
  tables (the schema the real migrations also have) and a COPY of 100k generated products, in a
  database of its own, ``cygate_bench_scratch``, dropped after the run unless ``--keep-db``.

Either way the database is dropped and created afresh unless ``--keep-db`` (then an existing,
filled one is reused as it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg

from .contenders._product import PRODUCT_SQL, product_dict
from .procs import cpu_seconds_each, parent_pid

__all__ = [
    "DATABASE_NAMES",
    "PREPARE_MODES",
    "BenchDatabase",
    "DatabaseCpu",
    "PrepareError",
    "catalog_seed_args",
    "create_database",
    "database_exists",
    "drop_database",
    "flush_redis_prefix",
    "local_postmaster",
    "postmaster_pid",
    "prepare_catalog",
    "prepare_database",
    "run_cli",
    "settle",
    "with_database",
]

PrepareMode = Literal["cli", "scratch"]
PREPARE_MODES: tuple[PrepareMode, ...] = ("cli", "scratch")
DATABASE_NAMES: dict[PrepareMode, str] = {"cli": "cygate_bench", "scratch": "cygate_bench_scratch"}

SEED_ARGS = ("--users", "100", "--products", "100000", "--categories", "50")
MIX_SIZE = 1000

SCRATCH_SCHEMA = """
CREATE TABLE categories (id uuid PRIMARY KEY, parent_id uuid REFERENCES categories(id),
  name text NOT NULL, slug text NOT NULL UNIQUE, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE products (id uuid PRIMARY KEY, sku text NOT NULL UNIQUE, name text NOT NULL,
  description text NOT NULL DEFAULT '', price_cents bigint NOT NULL CHECK (price_cents >= 0),
  currency char(3) NOT NULL DEFAULT 'EUR', category_id uuid NOT NULL REFERENCES categories(id),
  stock integer NOT NULL CHECK (stock >= 0), created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now());
"""
CATEGORY_COLUMNS = ("id", "parent_id", "name", "slug", "created_at")
PRODUCT_COLUMNS = (
    "id", "sku", "name", "description", "price_cents", "currency", "category_id", "stock",
    "created_at", "updated_at",
)  # fmt: skip
_WORDS = (
    "steel", "oak", "linen", "cotton", "wool", "compact", "travel", "classic", "modern", "heavy",
    "light", "waterproof", "organic", "recycled", "handmade", "premium", "basic", "deluxe", "mini",
    "large", "slim", "ergonomic", "wireless", "portable", "outdoor", "kitchen", "garden", "office",
    "studio", "vintage", "smart",
)  # fmt: skip


class PrepareError(RuntimeError):
    """The database could not be prepared; the message says what to do."""


@dataclass(frozen=True, slots=True)
class BenchDatabase:
    name: str
    dsn: str
    mode: PrepareMode
    product_ids: list[str]  # the id mix the load cycles through
    check_id: str  # the product each contender is checked with before load
    check_product: dict[str, Any]  # its expected JSON object
    product_count: int
    postmaster_pid: int | None  # PostgreSQL's server process, when it runs on this machine
    user: dict[str, Any] | None = None  # a seeded customer (id, email, name, roles), if any


def with_database(dsn: str, name: str) -> str:
    """The same server URL with another database name."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


# --------------------------------------------------------------------------- create / drop


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _database_exists(admin_dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(admin_dsn)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def _recreate(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        # WITH (FORCE): a contender left over from a crashed run must not block the drop.
        await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {_ident(name)}")
    finally:
        await conn.close()


async def _drop(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


def drop_database(admin_dsn: str, name: str) -> None:
    asyncio.run(_drop(admin_dsn, name))


def create_database(admin_dsn: str, name: str) -> None:
    """Drop ``name`` if it exists (whoever is connected) and create it empty."""
    asyncio.run(_recreate(admin_dsn, name))


def database_exists(admin_dsn: str, name: str) -> bool:
    """Whether ``name`` exists; PrepareError (one line) when PostgreSQL cannot be reached."""
    try:
        return asyncio.run(_database_exists(admin_dsn, name))
    except (OSError, asyncpg.PostgresError) as exc:
        raise PrepareError(f"cannot reach PostgreSQL at DATABASE_URL: {exc!r}") from exc


# --------------------------------------------------------------------------- fill


def run_cli(python: str, args: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
    """``python -m cygate ARGS`` (printed first); PrepareError when it fails."""
    argv = [python, "-m", "cygate", *args]
    print("  $ " + " ".join(["python", "-m", "cygate", *args]), flush=True)
    proc = subprocess.run(argv, env=dict(env), cwd=cwd, check=False)
    if proc.returncode != 0:
        raise PrepareError(f"`python -m cygate {' '.join(args)}` exited with {proc.returncode}")


def fill_with_cli(
    python: str, env: Mapping[str, str], cwd: Path, seed_args: Sequence[str] = SEED_ARGS
) -> None:
    """Fill the database the way the gateway does: its migrations, then its seeder."""
    try:
        run_cli(python, ["migrate"], env, cwd)
        run_cli(python, ["seed", *seed_args], env, cwd)
    except PrepareError as exc:
        raise PrepareError(
            f"{exc}. If the gateway's migrate/seed commands do not exist yet, run with "
            "--prepare=scratch meanwhile."
        ) from None


def _uuid(rng: random.Random) -> UUID:
    return UUID(int=rng.getrandbits(128), version=4)


async def fill_scratch(dsn: str, *, products: int = 100_000, categories: int = 50) -> None:
    """The two tables and a COPY of generated rows (deterministic: same seed, same data)."""
    rng = random.Random(20240501)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    category_ids = [_uuid(rng) for _ in range(categories)]

    def moment(after: datetime) -> datetime:
        seconds, micros = rng.randrange(30_000_000), rng.randrange(10**6)
        return after + timedelta(seconds=seconds, microseconds=micros)

    def product(n: int) -> tuple[Any, ...]:
        words = rng.choices(_WORDS, k=rng.randint(8, 30))
        created = moment(base)
        return (
            _uuid(rng),
            f"SKU-{n:06d}",
            f"{words[0].title()} {words[1]} {n}",
            " ".join(words).capitalize() + ".",
            rng.randrange(100, 100_000),
            "EUR",
            rng.choice(category_ids),
            rng.randrange(0, 500),
            created,
            moment(created),
        )

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCRATCH_SCHEMA)
        category_rows = [
            (c, None, f"Category {n}", f"category-{n}", base) for n, c in enumerate(category_ids, 1)
        ]
        await conn.copy_records_to_table(
            "categories", records=category_rows, columns=CATEGORY_COLUMNS
        )
        product_rows = [product(n) for n in range(1, products + 1)]
        await conn.copy_records_to_table("products", records=product_rows, columns=PRODUCT_COLUMNS)
    finally:
        await conn.close()


async def settle(dsn: str) -> None:
    """VACUUM (ANALYZE) and CHECKPOINT a freshly filled database, so that autovacuum, hint-bit
    writes and the checkpointer do not run during the measurements (and bill their CPU to the
    PostgreSQL column). CHECKPOINT needs a superuser; without one it is skipped."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE)")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


# --------------------------------------------------------------------------- the id mix


async def _describe(dsn: str, name: str, mode: PrepareMode, mix_size: int) -> BenchDatabase:
    conn = await asyncpg.connect(dsn)
    try:
        count = await conn.fetchval("SELECT count(*) FROM products")
        if not count:
            raise PrepareError(f"database {name} has no products")
        # A fixed seed so the same data gives the same mix, run after run.
        await conn.execute("SELECT setseed(0.42)")
        rows = await conn.fetch("SELECT id FROM products ORDER BY random() LIMIT $1", mix_size)
        ids = [str(r["id"]) for r in rows]
        row = await conn.fetchrow(PRODUCT_SQL, UUID(ids[0]))
        postmaster = postmaster_pid(await conn.fetchval("SELECT pg_backend_pid()"))
        user = None
        if await conn.fetchval("SELECT to_regclass('users') IS NOT NULL"):
            found = await conn.fetchrow(
                "SELECT id, email, name, roles FROM users WHERE email IS NOT NULL"
                " ORDER BY id LIMIT 1"
            )
            if found is not None:
                user = {**dict(found), "id": str(found["id"]), "roles": list(found["roles"])}
    finally:
        await conn.close()
    return BenchDatabase(
        name=name,
        dsn=dsn,
        mode=mode,
        product_ids=ids,
        check_id=ids[0],
        check_product=product_dict(row),
        product_count=int(count),
        postmaster_pid=postmaster,
        user=user,
    )


def postmaster_pid(backend_pid: int) -> int | None:
    """The parent of our backend, if that backend is a local ``postgres`` process (a server on
    another host, or in a container, has no such process here)."""
    try:
        comm = Path(f"/proc/{backend_pid}/comm").read_text().strip()
    except OSError:
        return None
    return parent_pid(backend_pid) if comm.startswith("postgres") else None


def local_postmaster(dsn: str) -> int | None:
    """The PostgreSQL server process serving ``dsn`` when it runs on this machine (its tree's
    CPU is PostgreSQL's share), else None."""

    async def find() -> int | None:
        conn = await asyncpg.connect(dsn)
        try:  # NOTE: while the backend lives: its parent is the postmaster
            return postmaster_pid(int(await conn.fetchval("SELECT pg_backend_pid()")))
        finally:
            await conn.close()

    return asyncio.run(find())


class DatabaseCpu:
    """CPU seconds PostgreSQL spends on one database: its backends' (the gateway's pool
    connections, autovacuum workers on it), read from ``/proc`` at :meth:`start` and
    :meth:`stop`.

    NOTE: unlike the postmaster's whole tree, other databases on a shared server do not count;
    server-wide processes (WAL writer, checkpointer) do not count either. A backend that
    connects within the window counts in full; one that exits within it is lost.
    """

    __slots__ = ("_before", "dsn")

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._before: dict[int, float] = {}

    async def _backends(self) -> list[int]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return [int(r["pid"]) for r in rows]
        finally:
            await conn.close()

    async def start(self) -> None:
        self._before = cpu_seconds_each(await self._backends())

    async def stop(self) -> float:
        """CPU seconds since :meth:`start` (NaN when no backend runs on this machine)."""
        after = cpu_seconds_each(await self._backends())
        if not after:
            return float("nan")
        return sum(cpu - self._before.get(pid, 0.0) for pid, cpu in after.items())


def flush_redis_prefix(redis_url: str, prefix: str) -> int:
    """Delete the benchmark's own keys (``prefix*``) so no stale cache entry survives a new
    database. Returns how many were deleted."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
        return deleted
    finally:
        client.close()


def prepare_database(
    mode: PrepareMode,
    *,
    admin_dsn: str,
    keep_db: bool,
    cli_env: Mapping[str, str],
    python: str,
    cwd: Path,
    mix_size: int = MIX_SIZE,
) -> BenchDatabase:
    """Create (or reuse, with ``keep_db``) and fill the benchmark database; return its id mix.

    ``cli_env`` is the environment for the gateway's CLI (``CYGATE_DATABASE_URL`` etc.).
    """
    if mode not in PREPARE_MODES:
        raise ValueError(f"unknown prepare mode {mode!r}")
    name = DATABASE_NAMES[mode]
    dsn = with_database(admin_dsn, name)
    exists = database_exists(admin_dsn, name)

    if keep_db and exists:
        print(f"  reusing database {name} (--keep-db)", flush=True)
    else:
        print(f"  creating database {name} ({mode})", flush=True)
        asyncio.run(_recreate(admin_dsn, name))
        if mode == "cli":
            fill_with_cli(python, cli_env, cwd)
        else:
            asyncio.run(fill_scratch(dsn))
        asyncio.run(settle(dsn))
    return asyncio.run(_describe(dsn, name, mode, mix_size))


def catalog_seed_args(products: int) -> tuple[str, ...]:
    """``cygate seed`` arguments for a catalog of ``products`` and no customers, the same data
    for the same size (random seed 7, 40 categories): the search and catalog-size benchmarks."""
    return ("--users", "0", "--products", str(products), "--categories", "40",
            "--random-seed", "7", "--reset")  # fmt: skip


async def _product_count(dsn: str) -> int | None:
    """Products in the database, or None when it has no catalog yet (no table)."""
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass('products') IS NOT NULL"):
            return None
        return int(await conn.fetchval("SELECT count(*) FROM products"))
    finally:
        await conn.close()


def prepare_catalog(
    name: str,
    products: int,
    *,
    admin_dsn: str,
    reseed: bool,
    cli_env: Mapping[str, str],
    python: str,
    cwd: Path,
    mix_size: int = MIX_SIZE,
) -> BenchDatabase:
    """Database ``name`` with a catalog of exactly ``products`` (migrated and seeded by the
    gateway's CLI, then settled), reused as it is when it already holds that many and
    ``reseed`` is off; its id mix is ``mix_size`` ids drawn uniformly from the whole catalog.

    ``cli_env`` is the environment for the gateway's CLI (its ``CYGATE_DATABASE_URL`` must
    name this database).
    """
    dsn = with_database(admin_dsn, name)
    try:
        if not asyncio.run(_database_exists(admin_dsn, name)):
            asyncio.run(_recreate(admin_dsn, name))
        count = asyncio.run(_product_count(dsn))
    except (OSError, asyncpg.PostgresError) as exc:
        raise PrepareError(f"cannot reach PostgreSQL at DATABASE_URL: {exc!r}") from exc
    if reseed or count != products:
        print(f"  seeding {name}: {products:,} products (later runs reuse them)", flush=True)
        fill_with_cli(python, cli_env, cwd, catalog_seed_args(products))
        asyncio.run(settle(dsn))
    else:
        print(f"  reusing {name} ({products:,} products)", flush=True)
    return asyncio.run(_describe(dsn, name, "cli", mix_size))
