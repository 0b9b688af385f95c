"""Read-only catalog endpoints (``API.md``, Catalog): categories, product list, one product."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from litestar import Response, get
from litestar.datastructures import State
from litestar.exceptions import ValidationException
from litestar.params import FromPath, QueryParameter

from cygate.edge.problem import Problem
from cygate.services.catalog.admin import CatalogAdminController
from cygate.services.catalog.models import CategoryOut, CategoryTree, Product, ProductPage
from cygate.services.catalog.repository import DEFAULT_SORT, CatalogRepository
from cygate.services.catalog.writes import encode_category
from cygate.services.openapi import answers, problems

__all__ = ["CatalogController"]

SortName = Literal["newest", "oldest", "price", "-price", "name", "-name"]


def _repo(state: State) -> CatalogRepository:
    repo: CatalogRepository = state.catalog
    return repo


class CatalogController(CatalogAdminController):
    """Reads here; the writes (catalog_manager, admin) are inherited from
    :class:`CatalogAdminController`. NOTE: one controller, because Litestar refuses two
    controllers that both answer ``OPTIONS`` for the same path."""

    path = "/api/v1"
    tags = ["catalog"]

    @get("/categories", summary="The category tree", opt={"cache": "categories"})
    async def categories(self, state: State) -> CategoryTree:
        return CategoryTree(await _repo(state).category_tree(replica=True))

    @get(
        "/categories/{category_id:uuid}",
        summary="One category (its ETag is what PATCH and DELETE take in If-Match)",
        opt={"cache": "categories"},
        media_type="application/json",
        responses=answers(200, CategoryOut, "The category") | problems(404),
    )
    async def category(self, state: State, category_id: FromPath[UUID]) -> Response[bytes]:
        # (the primary: its ETag is what the writes' If-Match compares)
        category = await _repo(state).category(category_id)
        if category is None:
            raise Problem(404, f"no category {category_id}")
        # NOTE: the very bytes the writes encode, so the cache's ETag of this body is the tag
        # their If-Match check computes.
        return Response(encode_category(category), media_type="application/json")

    @get(
        "/products",
        summary="Products, filtered and paged (keyset cursor)",
        opt={"cache": "product-list"},
    )
    async def products(
        self,
        state: State,
        category: Annotated[
            UUID | None, QueryParameter(description="Category id (its subtree too)")
        ] = None,
        min_price_cents: Annotated[int | None, QueryParameter(ge=0, le=10**12)] = None,
        max_price_cents: Annotated[int | None, QueryParameter(ge=0, le=10**12)] = None,
        sort: Annotated[SortName, QueryParameter(description="Order of the items")] = DEFAULT_SORT,
        limit: Annotated[int, QueryParameter(ge=1, le=100, description="Page size")] = 20,
        cursor: Annotated[
            str | None,
            QueryParameter(max_length=512, description="next_cursor of the previous page"),
        ] = None,
    ) -> ProductPage:
        if (
            min_price_cents is not None
            and max_price_cents is not None
            and min_price_cents > max_price_cents
        ):
            raise ValidationException(
                "min_price_cents is greater than max_price_cents",
                extra=[
                    {
                        "key": "min_price_cents",
                        "message": "must not exceed max_price_cents",
                        "source": "query",
                    }
                ],
            )
        return await _repo(state).list_products(
            category=category,
            min_price=min_price_cents,
            max_price=max_price_cents,
            sort=sort,
            limit=limit,
            cursor=cursor,
            replica=True,
        )

    @get(
        "/products/{product_id:uuid}",
        summary="One product",
        opt={"cache": "product"},
        responses=problems(404),
    )
    async def product(self, state: State, product_id: FromPath[UUID]) -> Product:
        product = await _repo(state).get_product_replica(product_id)
        if product is None:
            raise Problem(404, f"no product {product_id}")
        return product
