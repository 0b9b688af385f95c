"""Fast handlers: catalog reads the edge answers itself, without entering Litestar.

PERF: ``GET /api/v1/products/{id}`` is the hottest uncached read. Served here it skips
Litestar's routing, signature parsing, DI and response objects (a large share of a worker's CPU
on this route in a profile; figures: docs/benchmarks.md). The Litestar handler beside it stays
the documented and fallback path; a test checks that both give the same bytes.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from cygate.edge.context import EdgeContext, FastHandler
from cygate.edge.problem import Problem
from cygate.infra.db import DB_UNAVAILABLE
from cygate.services.catalog.repository import CatalogRepository

__all__ = ["product_by_id", "product_by_id_replicated", "unavailable"]

_encode = msgspec.json.Encoder().encode


def unavailable() -> Problem:
    return Problem(503, "the database is unavailable; retry shortly", headers={"retry-after": "1"})


def product_by_id(repo: CatalogRepository) -> FastHandler:
    async def handler(ctx: EdgeContext) -> bytes:
        assert ctx.params is not None  # the route has a parameter: the router always gives it
        product_id = UUID(ctx.params["product_id"])  # the router already checked its shape
        try:
            product = await repo.get_product(product_id)
        except DB_UNAVAILABLE:
            raise unavailable() from None
        if product is None:
            raise Problem(404, f"no product {product_id}")
        return _encode(product)

    return handler


def product_by_id_replicated(repo: CatalogRepository) -> FastHandler:
    """:func:`product_by_id` when read replicas are configured: a request without credentials
    may read from a replica that keeps up, one with credentials reads the primary (the handler
    above stays the one without replicas, so the single-instance path does no extra work)."""

    async def handler(ctx: EdgeContext) -> bytes:
        assert ctx.params is not None
        product_id = UUID(ctx.params["product_id"])
        try:
            if ctx.authorization is None:
                product = await repo.get_product_replica(product_id)
            else:
                product = await repo.get_product(product_id)
        except DB_UNAVAILABLE:
            raise unavailable() from None
        if product is None:
            raise Problem(404, f"no product {product_id}")
        return _encode(product)

    return handler
