"""Catalog wire types (msgspec structs): what the API returns, field for field as API.md says."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "Category",
    "CategoryIn",
    "CategoryOut",
    "CategoryPatch",
    "CategoryTree",
    "Product",
    "ProductIn",
    "ProductPage",
    "ProductPatch",
    "SearchHit",
    "SearchPage",
]

_VISIBLE = r"[^\s\x1c-\x1f\x85\ufeff]"
"""Something other than space (spelled so Python and ECMAScript agree on what a space is)."""
# Field rules of the write bodies. NOTE: they mirror the CHECK constraints of 0001_domain.sql,
# so a bad value is a 422 naming the field, never a constraint error from the database.
Sku = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
]
ProductName = Annotated[str, msgspec.Meta(min_length=1, max_length=300, pattern=_VISIBLE)]
Description = Annotated[str, msgspec.Meta(max_length=10_000)]
PriceCents = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
Stock = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
CategoryName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_VISIBLE)]
Slug = Annotated[
    str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
]


class Product(msgspec.Struct, frozen=True):
    id: UUID
    sku: str
    name: str
    description: str
    price_cents: int
    currency: str
    category_id: UUID
    stock: int
    updated_at: datetime


class ProductPage(msgspec.Struct, frozen=True):
    items: list[Product]
    next_cursor: str | None


class Category(msgspec.Struct):
    id: UUID
    name: str
    slug: str
    parent_id: UUID | None
    children: list[Category] = msgspec.field(default_factory=list)


class CategoryTree(msgspec.Struct, frozen=True):
    items: list[Category]


class CategoryOut(msgspec.Struct, frozen=True):
    """One category as the write endpoints return it (no children)."""

    id: UUID
    name: str
    slug: str
    parent_id: UUID | None


class ProductIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/products``: the id, version and timestamps are the server's."""

    sku: Sku
    name: ProductName
    description: Description = ""
    price_cents: PriceCents
    currency: Currency = "EUR"
    category_id: UUID
    stock: Stock = 0


class ProductPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``PATCH /api/v1/products/{id}`` (JSON merge semantics: absent fields stay)."""

    sku: Sku | UnsetType = UNSET
    name: ProductName | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    price_cents: PriceCents | UnsetType = UNSET
    currency: Currency | UnsetType = UNSET
    category_id: UUID | UnsetType = UNSET
    stock: Stock | UnsetType = UNSET


class CategoryIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/categories``."""

    name: CategoryName
    slug: Slug
    parent_id: UUID | None = None


class CategoryPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``PATCH /api/v1/categories/{id}``; ``parent_id: null`` moves it to the top level."""

    name: CategoryName | UnsetType = UNSET
    slug: Slug | UnsetType = UNSET
    parent_id: UUID | UnsetType | None = UNSET


class SearchHit(msgspec.Struct, frozen=True):
    """A product found by ``GET /api/v1/search``, with its relevance (higher is better)."""

    id: UUID
    sku: str
    name: str
    description: str
    price_cents: int
    currency: str
    category_id: UUID
    stock: int
    updated_at: datetime
    score: float


class SearchPage(msgspec.Struct, frozen=True):
    """A page of search hits; ``corrected_query`` is set when typos were corrected."""

    items: list[SearchHit]
    next_cursor: str | None
    corrected_query: str | None = None
