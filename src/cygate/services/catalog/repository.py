"""Catalog reads: prepared statements over asyncpg, keyset pagination with opaque cursors."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar
from uuid import UUID

import orjson

from cygate.services.catalog.models import Category, CategoryOut, Product, ProductPage

if TYPE_CHECKING:
    import asyncpg

    from cygate.infra.lease import ReadLease
    from cygate.infra.replicas import ReplicaSet

__all__ = ["SORTS", "CatalogRepository", "CursorError", "add_filters"]

T = TypeVar("T")

_PRODUCT_COLUMNS: Final = (
    "id, sku, name, description, price_cents, currency, category_id, stock, updated_at"
)
_PRODUCT_BY_ID: Final = f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE id = $1"

# sort name -> (column, descending, cursor value type)
SORTS: Final[dict[str, tuple[str, bool, type]]] = {
    "newest": ("created_at", True, datetime),
    "oldest": ("created_at", False, datetime),
    "price": ("price_cents", False, int),
    "-price": ("price_cents", True, int),
    "name": ("name", False, str),
    "-name": ("name", True, str),
}
DEFAULT_SORT: Final = "newest"


class CursorError(ValueError):
    """The cursor is not one this API issued for this sort order."""


def encode_cursor(sort: str, value: Any, last_id: UUID) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    raw = orjson.dumps([sort, value, str(last_id)])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, sort: str) -> tuple[Any, UUID]:
    """Inverse of :func:`encode_cursor`; anything else is a :class:`CursorError`."""
    try:
        if len(cursor) > 512:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
        if not (isinstance(data, list) and len(data) == 3):
            raise ValueError("shape")
        c_sort, value, last_id = data
        if c_sort != sort:
            raise CursorError("the cursor belongs to another sort order")
        kind = SORTS[sort][2]
        if kind is datetime:
            value = datetime.fromisoformat(value)
            if value.tzinfo is None:
                raise ValueError("naive timestamp")
        elif kind is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError("value type")
        elif not isinstance(value, str):
            raise ValueError("value type")
        return value, UUID(last_id)
    except CursorError:
        raise
    except (ValueError, TypeError, KeyError, binascii.Error, orjson.JSONDecodeError):
        raise CursorError("malformed cursor") from None


def _row_to_product(r: asyncpg.Record) -> Product:
    return Product(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])


def add_filters(
    where: list[str],
    args: list[Any],
    category: UUID | None,
    min_price: int | None,
    max_price: int | None,
    table: str = "",
) -> None:
    """Append the product filters shared by the list and search: a category with its whole
    subtree, and a price range. ``table`` qualifies the columns (``"p."``); parameters are
    numbered after those already in ``args``."""
    if category is not None:
        args.append(category)
        where.append(
            f"""{table}category_id IN (
                WITH RECURSIVE sub(id) AS (
                    SELECT id FROM categories WHERE id = ${len(args)}
                    UNION ALL
                    SELECT c.id FROM categories c JOIN sub ON c.parent_id = sub.id
                ) SELECT id FROM sub)"""
        )
    if min_price is not None:
        args.append(min_price)
        where.append(f"{table}price_cents >= ${len(args)}")
    if max_price is not None:
        args.append(max_price)
        where.append(f"{table}price_cents <= ${len(args)}")


class CatalogRepository:
    """Reads products and categories. The pool is attached when the app starts."""

    __slots__ = ("lease", "pool", "replicas")

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None
        self.lease: ReadLease | None = None
        """PERF: held connections for the hot product read (see :mod:`cygate.infra.lease`)."""
        self.replicas: ReplicaSet | None = None
        """Read replicas, when configured: reads given ``replica=True`` may go there (see
        :mod:`cygate.infra.replicas` for when)."""

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:  # pragma: no cover - only before start-up completes
            raise RuntimeError("database pool not open")
        return self.pool

    async def _read(self, replica: bool, op: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        """``op`` on a replica's pool when ``replica`` allows it and one keeps up, else on
        the primary's."""
        primary = self._pool()
        if not replica or self.replicas is None:
            return await op(primary)
        return await self.replicas.read(op, lambda: op(primary))

    async def get_product(self, product_id: UUID) -> Product | None:
        reader = self.lease if self.lease is not None else self._pool()
        row = await reader.fetchrow(_PRODUCT_BY_ID, product_id)
        return None if row is None else _row_to_product(row)

    async def get_product_replica(self, product_id: UUID) -> Product | None:
        """:meth:`get_product` on a replica when one keeps up (on the primary, through the
        lease, otherwise)."""
        if self.replicas is None:
            return await self.get_product(product_id)

        async def on_replica(pool: asyncpg.Pool) -> Product | None:
            row = await pool.fetchrow(_PRODUCT_BY_ID, product_id)
            return None if row is None else _row_to_product(row)

        return await self.replicas.read(on_replica, lambda: self.get_product(product_id))

    async def list_products(
        self,
        *,
        category: UUID | None,
        min_price: int | None,
        max_price: int | None,
        sort: str,
        limit: int,
        cursor: str | None,
        replica: bool = False,
    ) -> ProductPage:
        column, desc, _ = SORTS[sort]
        where: list[str] = []
        args: list[Any] = []
        add_filters(where, args, category, min_price, max_price)
        if cursor is not None:
            value, last_id = decode_cursor(cursor, sort)
            args += [value, last_id]
            op = "<" if desc else ">"
            where.append(f"({column}, id) {op} (${len(args) - 1}, ${len(args)})")
        direction = "DESC" if desc else "ASC"
        args.append(limit + 1)
        sql = (
            f"SELECT {_PRODUCT_COLUMNS}, {column} AS sort_value FROM products"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY {column} {direction}, id {direction} LIMIT ${len(args)}"
        )
        rows = await self._read(replica, lambda pool: pool.fetch(sql, *args))
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            next_cursor = encode_cursor(sort, last["sort_value"], last["id"])
        return ProductPage([_row_to_product(r) for r in rows], next_cursor)

    async def category_exists(self, category_id: UUID) -> bool:
        return bool(
            await self._pool().fetchval("SELECT 1 FROM categories WHERE id = $1", category_id)
        )

    async def category(self, category_id: UUID, *, replica: bool = False) -> CategoryOut | None:
        row = await self._read(
            replica,
            lambda pool: pool.fetchrow(
                "SELECT id, name, slug, parent_id FROM categories WHERE id = $1", category_id
            ),
        )
        return None if row is None else CategoryOut(*row)

    async def category_tree(self, *, replica: bool = False) -> list[Category]:
        rows = await self._read(
            replica,
            lambda pool: pool.fetch(
                "SELECT id, name, slug, parent_id FROM categories ORDER BY name, id"
            ),
        )
        nodes = {r["id"]: Category(r["id"], r["name"], r["slug"], r["parent_id"]) for r in rows}
        roots: list[Category] = []
        for node in nodes.values():
            parent = nodes.get(node.parent_id) if node.parent_id is not None else None
            (parent.children if parent is not None else roots).append(node)
        return roots


def product_attributes(
    catalog: CatalogRepository,
) -> Callable[[str], Awaitable[dict[str, Any] | None]]:
    """The policy stage's loader of a product's attributes (``Product`` resources): its
    ``category_id``, read on the primary (a write's decision must not see a stale category);
    None when there is no such product."""

    async def load(product_id: str) -> dict[str, Any] | None:
        try:
            key = UUID(product_id)
        except ValueError:
            return None
        product = await catalog.get_product(key)
        return None if product is None else {"category_id": str(product.category_id)}

    return load
