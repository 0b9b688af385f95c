"""The product read every database contender performs, and the JSON it answers with.

One query, one row-to-dict function, one pool size: the contenders differ only in the framework
around them. Configuration comes from the environment the harness sets:

- ``BENCH_DATABASE_URL``: the benchmark database (required).
- ``BENCH_POOL_SIZE``: asyncpg pool size, min = max (default 10, asyncpg's own default max).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "PRODUCT_FIELDS",
    "PRODUCT_SQL",
    "create_pool",
    "database_url",
    "pool_size",
    "product_dict",
    "rfc3339_utc",
]

PRODUCT_SQL = (
    "SELECT id, sku, name, description, price_cents, currency, category_id, stock, updated_at "
    "FROM products WHERE id = $1"
)
PRODUCT_FIELDS = (
    "id",
    "sku",
    "name",
    "description",
    "price_cents",
    "currency",
    "category_id",
    "stock",
    "updated_at",
)


def rfc3339_utc(ts: datetime) -> str:
    """``2024-05-01T12:34:56.123456Z``: RFC 3339, UTC, always microseconds."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def product_dict(row: asyncpg.Record) -> dict[str, Any]:
    """The API's product object: ids as strings, ``updated_at`` in RFC 3339 UTC."""
    return {
        "id": str(row["id"]),
        "sku": row["sku"],
        "name": row["name"],
        "description": row["description"],
        "price_cents": row["price_cents"],
        "currency": row["currency"],
        "category_id": str(row["category_id"]),
        "stock": row["stock"],
        "updated_at": rfc3339_utc(row["updated_at"]),
    }


def database_url() -> str:
    try:
        return os.environ["BENCH_DATABASE_URL"]
    except KeyError:
        raise SystemExit("BENCH_DATABASE_URL is not set (the harness sets it)") from None


def pool_size() -> int:
    return int(os.environ.get("BENCH_POOL_SIZE", "10"))


async def _rollback_only(conn: asyncpg.Connection) -> None:
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool() -> asyncpg.Pool:
    """An asyncpg pool of fixed size.

    NOTE: asyncpg prepares each distinct query once per connection and caches the prepared
    statement, so ``pool.fetchrow(PRODUCT_SQL, id)`` runs a prepared statement after the first call
    on each connection.

    NOTE: every contender gets the release hook cygate uses (roll back an open transaction, skip
    asyncpg's RESET ALL round trip), so the floor stays a floor and the peers are not handicapped
    by a default cygate does not pay.
    """
    import asyncpg

    size = pool_size()
    return await asyncpg.create_pool(
        database_url(), min_size=size, max_size=size, reset=_rollback_only
    )
