"""Catalog wire types (msgspec structs): what the API returns, field for field as API.md says."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

__all__ = ["Category", "CategoryTree", "Product", "ProductPage"]


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
