"""The catalog's part of the app: products and categories, their management, and search."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from cygate.infra.lease import ReadLease
from cygate.infra.replicas import ReplicaSet
from cygate.services.catalog.controllers import CatalogController
from cygate.services.catalog.fast import product_by_id, product_by_id_replicated
from cygate.services.catalog.repository import CatalogRepository, product_attributes
from cygate.services.catalog.search import SearchController, SearchRepository
from cygate.services.catalog.writes import CatalogWriter
from cygate.services.plugin import ServicePlugin

if TYPE_CHECKING:
    from litestar import Litestar

    from cygate.edge.context import FastHandler
    from cygate.edge.policy import PolicyLoader
    from cygate.infra.metrics import Metrics
    from cygate.infra.settings import DatabaseSettings

__all__ = ["CatalogPlugin"]


class CatalogPlugin(ServicePlugin):
    """Reads (with a lease of held connections for the product read), writes and search;
    reads on read replicas when ``database.replica_urls`` names some (cygate.infra.replicas)."""

    name = "catalog"
    route_handlers = (CatalogController, SearchController)

    def __init__(
        self,
        *,
        read_lease_size: int,
        database: DatabaseSettings | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.catalog = CatalogRepository()
        self.writer = CatalogWriter()
        self.search = SearchRepository()
        self._lease_size = read_lease_size
        self.replicas: ReplicaSet | None = None
        if database is not None and database.replica_urls:
            self.replicas = ReplicaSet(database)
            if metrics is not None:
                count = metrics.inc
                self.replicas.counting(
                    lambda replica, outcome: count(
                        "cygate_db_replica_reads_total", (replica, outcome)
                    )
                )

    def state(self) -> dict[str, Any]:
        return {
            "catalog": self.catalog,
            "catalog_writer": self.writer,
            "search": self.search,
            "replicas": self.replicas,
        }

    def fast_handlers(self) -> dict[str, FastHandler]:
        make = product_by_id if self.replicas is None else product_by_id_replicated
        return {"GET /api/v1/products/{product_id:uuid}": make(self.catalog)}

    def policy_loaders(self) -> dict[str, PolicyLoader]:
        return {"Product": product_attributes(self.catalog)}

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        pool = app.state.pool
        self.catalog.pool = pool
        self.writer.pool = self.search.pool = pool
        lease = self.catalog.lease = ReadLease(pool, self._lease_size)
        replicas = self.replicas
        if replicas is not None:
            state = app.state
            # the response cache (made by the edge, maybe after this) moves its epoch with
            # every invalidation this process sees: each one fences the replicas
            replicas.follow_epoch(lambda: getattr(state.get("cache"), "epoch", 0))
            await replicas.start(pool)
            self.catalog.replicas = self.search.replicas = replicas
        try:
            yield
        finally:
            await lease.close()
            if replicas is not None:
                await replicas.close()
