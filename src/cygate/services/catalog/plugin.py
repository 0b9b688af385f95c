"""The catalog's part of the app: products and categories, their management, and search."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from cygate.infra.lease import ReadLease
from cygate.services.catalog.controllers import CatalogController
from cygate.services.catalog.fast import product_by_id
from cygate.services.catalog.repository import CatalogRepository
from cygate.services.catalog.search import SearchController, SearchRepository
from cygate.services.catalog.writes import CatalogWriter
from cygate.services.plugin import ServicePlugin

if TYPE_CHECKING:
    from litestar import Litestar

    from cygate.edge.context import FastHandler

__all__ = ["CatalogPlugin"]


class CatalogPlugin(ServicePlugin):
    """Reads (with a lease of held connections for the product read), writes and search."""

    name = "catalog"
    route_handlers = (CatalogController, SearchController)

    def __init__(self, *, read_lease_size: int) -> None:
        self.catalog = CatalogRepository()
        self.writer = CatalogWriter()
        self.search = SearchRepository()
        self._lease_size = read_lease_size

    def state(self) -> dict[str, Any]:
        return {"catalog": self.catalog, "catalog_writer": self.writer, "search": self.search}

    def fast_handlers(self) -> dict[str, FastHandler]:
        return {"GET /api/v1/products/{product_id:uuid}": product_by_id(self.catalog)}

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        pool = app.state.pool
        self.catalog.pool = pool
        self.writer.pool = self.search.pool = pool
        lease = self.catalog.lease = ReadLease(pool, self._lease_size)
        try:
            yield
        finally:
            await lease.close()
