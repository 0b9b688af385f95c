"""Catalog writes: products and categories, each in one transaction with its audit row and
its outbox event (``docs/catalog.md``).

NOTE: the ETag of a product is the cache's ETag of its JSON representation
(:func:`cygate.edge.cache_entry.etag_of` over the exact bytes ``GET /api/v1/products/{id}``
sends, fast path or Litestar). ``If-Match`` is checked against that tag recomputed from the row
locked ``FOR UPDATE``, so a tag a client got from any instance, any cache tier or a previous
write is accepted exactly while the product is unchanged. ``updated_at`` is in the body and
changes on every write, so two states never share a tag. ``version`` is bumped too (for
consumers that want a counter), but it is not what clients see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec

from cygate.edge.cache_entry import etag_of
from cygate.edge.problem import Problem
from cygate.ids import uuid7
from cygate.infra.outbox import emit
from cygate.services.audit import audit
from cygate.services.catalog.models import (
    CategoryIn,
    CategoryOut,
    CategoryPatch,
    Product,
    ProductIn,
    ProductPatch,
)

__all__ = [
    "Actor",
    "CatalogWriter",
    "body_etag",
    "encode_category",
    "encode_product",
    "if_match_ok",
]

_COLUMNS: Final = (
    "id, sku, name, description, price_cents, currency, category_id, stock, updated_at"
)
_CATEGORY_COLUMNS: Final = "id, name, slug, parent_id"
_CATEGORY_LOCK: Final = 0x63617467  # "catg": serialises moves in the tree (cycle checks)
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Actor:
    """Who writes, for the audit log."""

    sub: str
    request_id: str
    client_ip: str

    @property
    def user_id(self) -> UUID | None:
        try:
            return UUID(self.sub)
        except ValueError:  # a service client's id
            return None


def encode_product(product: Product) -> bytes:
    """The JSON of a product, byte for byte what ``GET /api/v1/products/{id}`` sends."""
    return _encode(product)


def body_etag(body: bytes) -> str:
    """The strong ETag of a JSON body: the cache's tag of the same bytes (see the module
    docstring), so a tag from any tier or write is one the If-Match checks compute."""
    return etag_of(body).decode("ascii")


def encode_category(category: CategoryOut) -> bytes:
    """The JSON of one category, byte for byte what ``GET /api/v1/categories/{id}`` sends."""
    return _encode(category)


def if_match_ok(header: str, current: str) -> bool:
    """RFC 9110 13.1.1: ``*`` or a list holding the current tag (strong comparison: a weak
    tag never matches)."""
    if header.strip() == "*":
        return True
    return any(tag.strip() == current for tag in header.split(","))


def _precondition(if_match: str, etag: str, what: str) -> None:
    """412 unless ``If-Match`` names ``etag`` (the locked row's current tag)."""
    if not if_match_ok(if_match, etag):
        # NOTE: the current tag is sent back so a client can show a diff and retry.
        raise Problem(
            412,
            f"the {what} has changed since you read it (If-Match does not match); "
            "GET it again and retry",
            headers={"etag": etag},
        )


def _unprocessable(field: str, message: str) -> Problem:
    path = f"body.{field}" if field else "body"
    return Problem(422, message, extra={"errors": [{"field": path, "message": message}]})


def _product(row: asyncpg.Record) -> Product:
    return Product(*(row[i] for i in range(9)))


def _constraint_problem(exc: asyncpg.IntegrityConstraintViolationError) -> Problem:
    """The constraint errors a racing writer can still cause after our own checks."""
    name = getattr(exc, "constraint_name", "") or ""
    if isinstance(exc, asyncpg.UniqueViolationError):
        if "sku" in name:
            return Problem(409, "a product with this sku already exists")
        if "slug" in name:
            return Problem(409, "a category with this slug already exists")
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        if name.startswith("order_items"):
            return Problem(409, "the product is part of orders and cannot be deleted")
        if "category" in name or "parent" in name:
            return Problem(409, "the category is in use (it has products or subcategories)")
    return Problem(409, f"the change conflicts with the catalog ({name or 'constraint'})")


async def _update(
    conn: asyncpg.Connection,
    table: str,
    row_id: UUID,
    changes: dict[str, Any],
    also: str,
    returning: str,
) -> asyncpg.Record:
    """``UPDATE table`` row ``row_id``: the ``changes`` (field names from a PATCH model, never
    from the client), ``also`` and ``updated_at``; a constraint a racing writer trips is 409."""
    sets = ", ".join(f"{f} = ${i}" for i, f in enumerate(changes, start=2))
    extra = f"{also}, " if also else ""
    try:
        row: asyncpg.Record = await conn.fetchrow(
            f"UPDATE {table} SET {sets}, {extra}updated_at = now() WHERE id = $1"
            f" RETURNING {returning}",
            row_id,
            *changes.values(),
        )
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise _constraint_problem(exc) from None
    return row


def _changes(patch: ProductPatch | CategoryPatch) -> dict[str, Any]:
    """The fields a PATCH body sets (absent ones are UNSET); 422 when it sets none."""
    changes = {
        f: v for f in patch.__struct_fields__ if (v := getattr(patch, f)) is not msgspec.UNSET
    }
    if not changes:
        raise _unprocessable("", "the body changes nothing: give at least one field")
    return changes


class CatalogWriter:
    """Product and category writes. Every method runs one transaction."""

    __slots__ = ("pool",)

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:  # pragma: no cover - only before start-up completes
            raise RuntimeError("database pool not open")
        return self.pool

    # -- products ------------------------------------------------------------------------

    async def create_product(self, data: ProductIn, actor: Actor) -> Product:
        product_id = uuid7()
        async with self._pool().acquire() as conn, conn.transaction():
            await self._category_must_exist(conn, data.category_id)
            try:
                row = await conn.fetchrow(
                    f"""INSERT INTO products (id, sku, name, description, price_cents, currency,
                            category_id, stock)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS}""",
                    product_id,
                    data.sku,
                    data.name,
                    data.description,
                    data.price_cents,
                    data.currency,
                    data.category_id,
                    data.stock,
                )
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise _constraint_problem(exc) from None
            product = _product(row)
            await self._record(
                conn,
                "product",
                product_id,
                "created",
                actor,
                {"product_id": str(product_id), "category_id": str(product.category_id)},
                msgspec.to_builtins(data),
            )
        return product

    async def update_product(
        self, product_id: UUID, patch: ProductPatch, if_match: str, actor: Actor
    ) -> Product:
        changes = _changes(patch)
        async with self._pool().acquire() as conn, conn.transaction():
            current = await self._locked_product(conn, product_id, if_match)
            if "category_id" in changes and changes["category_id"] != current.category_id:
                await self._category_must_exist(conn, changes["category_id"])
            row = await _update(
                conn, "products", product_id, changes, "version = version + 1", _COLUMNS
            )
            product = _product(row)
            await self._record(
                conn,
                "product",
                product_id,
                "updated",
                actor,
                {"product_id": str(product_id), "category_id": str(product.category_id)},
                msgspec.to_builtins(changes),
            )
        return product

    async def delete_product(self, product_id: UUID, if_match: str, actor: Actor) -> None:
        async with self._pool().acquire() as conn, conn.transaction():
            current = await self._locked_product(conn, product_id, if_match)
            try:
                await conn.execute("DELETE FROM products WHERE id = $1", product_id)
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise _constraint_problem(exc) from None
            await self._record(
                conn,
                "product",
                product_id,
                "deleted",
                actor,
                {"product_id": str(product_id), "category_id": str(current.category_id)},
                {"sku": current.sku},
            )

    async def _locked_product(
        self, conn: asyncpg.Connection, product_id: UUID, if_match: str
    ) -> Product:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM products WHERE id = $1 FOR UPDATE", product_id
        )
        if row is None:
            raise Problem(404, f"no product {product_id}")
        current = _product(row)
        _precondition(if_match, body_etag(encode_product(current)), "product")
        return current

    # -- categories ----------------------------------------------------------------------

    async def create_category(self, data: CategoryIn, actor: Actor) -> CategoryOut:
        category_id = uuid7()
        async with self._pool().acquire() as conn, conn.transaction():
            if data.parent_id is not None:
                await self._category_must_exist(conn, data.parent_id, field="parent_id")
            try:
                row = await conn.fetchrow(
                    "INSERT INTO categories (id, name, slug, parent_id) VALUES ($1, $2, $3, $4)"
                    f" RETURNING {_CATEGORY_COLUMNS}",
                    category_id,
                    data.name,
                    data.slug,
                    data.parent_id,
                )
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise _constraint_problem(exc) from None
            await self._record(
                conn,
                "category",
                category_id,
                "created",
                actor,
                {"category_id": str(category_id)},
                msgspec.to_builtins(data),
            )
        return CategoryOut(*row)

    async def update_category(
        self, category_id: UUID, patch: CategoryPatch, if_match: str | None, actor: Actor
    ) -> CategoryOut:
        changes = _changes(patch)
        async with self._pool().acquire() as conn, conn.transaction():
            if "parent_id" in changes:
                # NOTE: two concurrent moves (A under B, B under A) would each pass a cycle
                # check alone; one lock for every move makes the second see the first.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _CATEGORY_LOCK)
            await self._locked_category(conn, category_id, if_match)
            parent = changes.get("parent_id")
            if parent is not None:
                await self._category_must_exist(conn, parent, field="parent_id")
                if await self._is_within(conn, parent, category_id):
                    raise _unprocessable(
                        "parent_id", "a category cannot move under itself or its descendants"
                    )
            row = await _update(conn, "categories", category_id, changes, "", _CATEGORY_COLUMNS)
            await self._record(
                conn,
                "category",
                category_id,
                "updated",
                actor,
                {"category_id": str(category_id)},
                msgspec.to_builtins(changes),
            )
        return CategoryOut(*row)

    async def delete_category(self, category_id: UUID, if_match: str | None, actor: Actor) -> None:
        async with self._pool().acquire() as conn, conn.transaction():
            current = await self._locked_category(conn, category_id, if_match)
            if await conn.fetchval("SELECT 1 FROM categories WHERE parent_id = $1", category_id):
                raise Problem(409, "the category has subcategories; move or delete them first")
            if await conn.fetchval(
                "SELECT 1 FROM products WHERE category_id = $1 LIMIT 1", category_id
            ):
                raise Problem(409, "the category has products; move or delete them first")
            try:
                await conn.execute("DELETE FROM categories WHERE id = $1", category_id)
            except asyncpg.IntegrityConstraintViolationError as exc:  # a racing insert
                raise _constraint_problem(exc) from None
            await self._record(
                conn,
                "category",
                category_id,
                "deleted",
                actor,
                {"category_id": str(category_id)},
                {"slug": current.slug},
            )

    async def _locked_category(
        self, conn: asyncpg.Connection, category_id: UUID, if_match: str | None
    ) -> CategoryOut:
        """The category, locked ``FOR UPDATE``; 404 when there is none, 412 when ``If-Match``
        was sent and names another state (categories take it when given: see admin.py)."""
        row = await conn.fetchrow(
            f"SELECT {_CATEGORY_COLUMNS} FROM categories WHERE id = $1 FOR UPDATE",
            category_id,
        )
        if row is None:
            raise Problem(404, f"no category {category_id}")
        current = CategoryOut(*row)
        if if_match is not None:
            _precondition(if_match, body_etag(encode_category(current)), "category")
        return current

    # -- shared --------------------------------------------------------------------------

    @staticmethod
    async def _category_must_exist(
        conn: asyncpg.Connection, category_id: UUID, *, field: str = "category_id"
    ) -> None:
        # NOTE: FOR KEY SHARE: a concurrent delete of the category waits for this transaction
        # (the foreign key would catch it anyway; this gives the 422 a stable meaning).
        found = await conn.fetchval(
            "SELECT 1 FROM categories WHERE id = $1 FOR KEY SHARE", category_id
        )
        if not found:
            raise _unprocessable(field, f"no category {category_id}")

    @staticmethod
    async def _is_within(conn: asyncpg.Connection, node: UUID, root: UUID) -> bool:
        """True when ``node`` is ``root`` or one of its descendants (walks up from node)."""
        found = await conn.fetchval(
            """WITH RECURSIVE up(id, parent_id, depth) AS (
                   SELECT id, parent_id, 0 FROM categories WHERE id = $1
                   UNION ALL
                   SELECT c.id, c.parent_id, up.depth + 1 FROM categories c
                   JOIN up ON c.id = up.parent_id WHERE up.depth < 1000
               ) SELECT 1 FROM up WHERE id = $2 LIMIT 1""",
            node,
            root,
        )
        return bool(found)

    @staticmethod
    async def _record(
        conn: asyncpg.Connection,
        aggregate: str,
        aggregate_id: UUID,
        verb: str,
        actor: Actor,
        payload: dict[str, Any],
        details: Any,
    ) -> None:
        """The outbox event and the audit row of one write, in its transaction."""
        await emit(
            conn,
            aggregate=aggregate,
            aggregate_id=aggregate_id,
            event_type=f"{aggregate}.{verb}",
            payload=payload,
        )
        await audit(
            conn,
            f"{aggregate}.{verb}",
            actor_id=actor.user_id,
            target=f"{aggregate}:{aggregate_id}",
            client_ip=actor.client_ip,
            request_id=actor.request_id,
            details={"actor": actor.sub, "changes": details},
        )
