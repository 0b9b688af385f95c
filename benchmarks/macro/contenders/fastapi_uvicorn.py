"""``fastapi-uvicorn``: the usual Python stack, FastAPI on uvicorn (uvloop, httptools when
installed), reading the product through an asyncpg pool. No cache, no auth, no rate limit.

What it measures: the uncached product read as most Python services serve it today.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

from fastapi import FastAPI, HTTPException, Request

from ._product import PRODUCT_SQL, create_pool, product_dict

__all__ = ["app"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await create_pool()
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


# NOTE: no return annotation on purpose: FastAPI would turn it into a response model and
# validate the dict a second time; the plain dict path is the common one.
@app.get("/api/v1/products/{product_id}")
async def get_product(product_id: UUID, request: Request):  # type: ignore[no-untyped-def]
    row = await request.app.state.pool.fetchrow(PRODUCT_SQL, product_id)
    if row is None:
        raise HTTPException(status_code=404, detail=f"product {product_id} not found")
    return product_dict(row)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
