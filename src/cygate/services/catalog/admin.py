"""Catalog management (``API.md``, Catalog): create, change and delete products and categories.

Roles ``catalog_manager`` or ``admin``, enforced by the edge's token stage (401 without a
token, 403 with another role) before a handler runs; with policy files, a product's change and
delete are also asked of the attribute-based policies (``docs/security.md``: a catalog manager
limited to their own categories). Every write commits with its audit row and
outbox event, then invalidates the cache on every instance (``docs/catalog.md``).

Concurrency: ``PATCH`` and ``DELETE`` of a product require ``If-Match`` (428 without it; ``*``
accepted) and answer 412 when the tag is stale; the tag is the ETag ``GET`` sent. Those of a
category honour ``If-Match`` when it is sent (412 when stale) and go ahead without it: the
contract (``API.md``) lists them without a precondition, so clients written against it must keep
working. Every write's answer carries the new ETag, and ``GET /api/v1/categories/{id}`` serves it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, delete, patch, post
from litestar.datastructures import ResponseHeader, State
from litestar.params import FromPath, HeaderParameter, JSONBody

from cygate.edge.auth import principal_of
from cygate.edge.cache import CacheUnavailable, ResponseCache
from cygate.edge.problem import Problem
from cygate.services.catalog.models import (
    CategoryIn,
    CategoryOut,
    CategoryPatch,
    Product,
    ProductIn,
    ProductPatch,
)
from cygate.services.catalog.writes import (
    Actor,
    CatalogWriter,
    body_etag,
    encode_category,
    encode_product,
)
from cygate.services.openapi import answers, problems

__all__ = ["CatalogAdminController", "invalidate"]

log = logging.getLogger("cygate.catalog")

_WRITE = {"auth": True, "roles": ["catalog_manager", "admin"], "max_body_bytes": 64 * 1024}
_PRODUCT_WRITE = {**_WRITE, "policy_resource": "Product"}
"""A change of one product: with policy files, the policy stage asks Cedar whether the caller
may take the action on ``Product::"<id>"`` with its ``category_id`` (``docs/security.md``)."""
_NO_STORE = {"cache-control": "no-store"}
_ETAG = ResponseHeader(
    name="ETag", description="The new entity tag (what If-Match takes)", documentation_only=True
)
_LOCATION = ResponseHeader(
    name="Location", description="The created resource", documentation_only=True
)

IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="if-match",
        max_length=1024,
        description="The product's ETag from GET (or `*`); required: 428 without it",
    ),
]
CategoryIfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="if-match",
        max_length=1024,
        description="The category's ETag from GET or a write (or `*`); 412 when stale",
    ),
]


def _writer(state: State) -> CatalogWriter:
    writer: CatalogWriter = state.catalog_writer
    return writer


def _actor(request: Request[Any, Any, Any]) -> Actor:
    ctx: Any = request.scope.get("cygate.ctx")
    client_ip = str(ctx.client_ip) if ctx is not None else ""
    return Actor(
        principal_of(request).sub, str(request.scope.get("cygate.request_id", "")), client_ip
    )


def _required(if_match: str | None) -> str:
    if if_match is None or not if_match.strip():
        # NOTE: RFC 6585 428: without a precondition a PATCH or DELETE could silently undo a
        # change the client never saw (lost update). `If-Match: *` opts out knowingly.
        raise Problem(
            428, "If-Match is required: send the product's ETag from GET (or * to overwrite)"
        )
    return if_match


def _given(if_match: str | None) -> str | None:
    """A category's optional ``If-Match`` (an empty header counts as none)."""
    return if_match if if_match is not None and if_match.strip() else None


async def invalidate(state: State, tags: Iterable[str]) -> None:
    """Drop cached answers with these tags on every instance; a Redis failure is logged (the
    write has committed; other instances then keep their entries until their TTL). Read
    replicas, when configured, serve no read of this process until they have the write."""
    replicas = state.catalog.replicas
    if replicas is not None:
        replicas.fence()
    cache: ResponseCache | None = state.get("cache")
    if cache is None:
        return
    try:
        await cache.invalidate_tags(tags)
    except CacheUnavailable as exc:
        log.warning("cache invalidation not delivered to other instances: %r", exc)


def _tagged_response(
    body: bytes, status: int, extra: dict[str, str] | None = None
) -> Response[bytes]:
    """A write's answer: the resource's JSON and the ETag a ``GET`` of it sends now."""
    headers = {"etag": body_etag(body), **_NO_STORE, **(extra or {})}
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _category_response(
    category: CategoryOut, status: int, extra: dict[str, str] | None = None
) -> Response[bytes]:
    return _tagged_response(encode_category(category), status, extra)


class CatalogAdminController(Controller):
    path = "/api/v1"
    tags = ["catalog"]

    @post(
        "/products",
        summary="Create a product (catalog_manager, admin)",
        opt=_WRITE,
        responses=answers(201, Product, "The product") | problems(409, 422),
        response_headers=[_ETAG, _LOCATION],
    )
    async def create_product(
        self, request: Request[Any, Any, Any], state: State, data: JSONBody[ProductIn]
    ) -> Response[bytes]:
        product = await _writer(state).create_product(data, _actor(request))
        # NOTE: product:{id} too: a 404 remembered for this id (someone asked before it
        # existed) must go at once, not after its short life.
        await invalidate(state, [f"product:{product.id}", "products", "search"])
        return _tagged_response(
            encode_product(product), 201, {"location": f"/api/v1/products/{product.id}"}
        )

    @patch(
        "/products/{product_id:uuid}",
        summary="Change a product (If-Match required)",
        opt={**_PRODUCT_WRITE, "policy": "update_product"},
        responses=answers(200, Product, "The product") | problems(404, 409, 412, 428),
        response_headers=[_ETAG],
    )
    async def update_product(
        self,
        request: Request[Any, Any, Any],
        state: State,
        product_id: FromPath[UUID],
        data: JSONBody[ProductPatch],
        if_match: IfMatch = None,
    ) -> Response[bytes]:
        product = await _writer(state).update_product(
            product_id, data, _required(if_match), _actor(request)
        )
        await invalidate(state, [f"product:{product_id}", "products", "search"])
        return _tagged_response(encode_product(product), 200)

    @delete(
        "/products/{product_id:uuid}",
        summary="Delete a product (If-Match required)",
        opt={**_PRODUCT_WRITE, "policy": "delete_product"},
        status_code=204,
        responses=problems(404, 409, 412, 428),
    )
    async def delete_product(
        self,
        request: Request[Any, Any, Any],
        state: State,
        product_id: FromPath[UUID],
        if_match: IfMatch = None,
    ) -> None:
        await _writer(state).delete_product(product_id, _required(if_match), _actor(request))
        await invalidate(state, [f"product:{product_id}", "products", "search"])

    @post(
        "/categories",
        summary="Create a category (catalog_manager, admin)",
        opt=_WRITE,
        responses=answers(201, CategoryOut, "The category") | problems(409, 422),
        response_headers=[_ETAG, _LOCATION],
    )
    async def create_category(
        self, request: Request[Any, Any, Any], state: State, data: JSONBody[CategoryIn]
    ) -> Response[bytes]:
        category = await _writer(state).create_category(data, _actor(request))
        await invalidate(state, ["categories"])
        return _category_response(category, 201, {"location": f"/api/v1/categories/{category.id}"})

    @patch(
        "/categories/{category_id:uuid}",
        summary="Change a category",
        opt=_WRITE,
        responses=answers(200, CategoryOut, "The category") | problems(404, 409, 412, 422),
        response_headers=[_ETAG],
    )
    async def update_category(
        self,
        request: Request[Any, Any, Any],
        state: State,
        category_id: FromPath[UUID],
        data: JSONBody[CategoryPatch],
        if_match: CategoryIfMatch = None,
    ) -> Response[bytes]:
        category = await _writer(state).update_category(
            category_id, data, _given(if_match), _actor(request)
        )
        # A move changes which products a ?category= list (subtree) or search filter holds.
        await invalidate(state, ["categories", "products", "search"])
        return _category_response(category, 200)

    @delete(
        "/categories/{category_id:uuid}",
        summary="Delete an empty category",
        opt=_WRITE,
        status_code=204,
        responses=problems(404, 409, 412),
    )
    async def delete_category(
        self,
        request: Request[Any, Any, Any],
        state: State,
        category_id: FromPath[UUID],
        if_match: CategoryIfMatch = None,
    ) -> None:
        await _writer(state).delete_category(category_id, _given(if_match), _actor(request))
        await invalidate(state, ["categories", "products", "search"])
