"""``litestar-stock``: cygate's job built from stock Litestar 2.x parts, on Granian.

``GET /api/v1/products/{id:uuid}`` behind, in request order:

1. ``JWTAuth`` (``litestar.security.jwt``): HS256 Bearer token, PyJWT decode on every request;
   the user is built from the token's ``sub`` (no database look-up).
2. ``RateLimitMiddleware`` (``litestar.middleware.rate_limit``) with a limit far above what one
   worker can serve, so nothing is refused but the bookkeeping is paid.
3. Litestar's response cache (``cache=True`` + ``ResponseCacheConfig``, default in-memory store).
4. On a miss: the product read through an asyncpg pool (:mod:`._product`).

What it measures: the cost of assembling the gateway's features from the framework's own parts,
the number cygate's edge exists to beat. After the warm-up every id of the benchmark's mix is in
the response cache, so the measured run is mostly cache hits, like cygate's cached path.

The harness passes the token secret in ``BENCH_JWT_SECRET`` and sends a token it minted with it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from litestar import Litestar, get
from litestar.config.response_cache import ResponseCacheConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.security.jwt import JWTAuth, Token

from ._product import PRODUCT_SQL, create_pool, product_dict

__all__ = ["app"]

# NOTE: the stock limiter keeps one timestamp per request of the current window in its store
# and re-encodes the list on every request, so the window is one second: a per-minute window
# at thousands of req/s would make each request cost O(requests per minute).
RATE_LIMIT = ("second", 1_000_000)
EXCLUDE = ["^/healthz$"]


@dataclass(slots=True)
class Principal:
    id: str


async def retrieve_user(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    return Principal(id=token.sub)


jwt_auth = JWTAuth[Principal](
    token_secret=os.environ.get("BENCH_JWT_SECRET", "bench-secret-not-for-production"),
    retrieve_user_handler=retrieve_user,
    exclude=EXCLUDE,
)
rate_limit = RateLimitConfig(rate_limit=RATE_LIMIT, exclude=EXCLUDE)  # type: ignore[arg-type]


@asynccontextmanager
async def db_pool(app: Litestar) -> AsyncIterator[None]:
    app.state.pool = await create_pool()
    try:
        yield
    finally:
        await app.state.pool.close()


@get("/api/v1/products/{product_id:uuid}", cache=True)
async def get_product(product_id: UUID, state: State) -> dict[str, Any]:
    row = await state.pool.fetchrow(PRODUCT_SQL, product_id)
    if row is None:
        raise NotFoundException(f"product {product_id} not found")
    return product_dict(row)


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


app = Litestar(
    route_handlers=[get_product, healthz],
    on_app_init=[jwt_auth.on_app_init],
    middleware=[rate_limit.middleware],
    response_cache_config=ResponseCacheConfig(default_expiration=60),
    lifespan=[db_pool],
)
