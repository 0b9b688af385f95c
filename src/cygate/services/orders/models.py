"""Order wire types (msgspec). Request bodies refuse unknown fields: a client can never set a
price, a total, a status or an owner (mass assignment is a 422)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final
from uuid import UUID

import msgspec

__all__ = [
    "MAX_ITEMS",
    "MAX_QUANTITY",
    "Order",
    "OrderIn",
    "OrderItem",
    "OrderItemIn",
    "OrderPage",
    "ShippingAddress",
]

MAX_ITEMS: Final = 100
MAX_QUANTITY: Final = 1000

_AddressLine = Annotated[str, msgspec.Meta(max_length=500)]
_AddressField = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ShippingAddress = (
    Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    | Annotated[dict[_AddressField, _AddressLine], msgspec.Meta(min_length=1, max_length=20)]
)
"""One line of text, or a flat object of named lines (``{"name", "line1", "city", ...}``)."""


class OrderItemIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    product_id: UUID
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]


class OrderIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/orders``: what to buy and where to send it; prices come from the catalog."""

    items: Annotated[list[OrderItemIn], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]
    shipping_address: ShippingAddress


class OrderItem(msgspec.Struct, frozen=True):
    product_id: UUID
    quantity: int
    unit_price_cents: int


class Order(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    user_id: UUID | None
    status: str
    items: list[OrderItem]
    total_cents: int
    currency: str
    shipping_address: str | dict[str, str] | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None


class OrderPage(msgspec.Struct, frozen=True):
    items: list[Order]
    next_cursor: str | None
