"""Helpers for the catalog management and search tests: callers with roles, and a record of
what a test module created so that it is deleted again through the API (which also purges the
caches: the read-only catalog tests count the seeded categories and products)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from tests.acceptance.conftest import Gateway, admin_headers

__all__ = ["Created", "bearer_for", "created_records", "new_caller"]


def new_caller(gw: Gateway, roles: list[str] | None) -> tuple[dict[str, str], str]:
    """Register a user, give it ``roles`` (as the admin; None keeps ``customer``), log in.
    Returns (Authorization header, user id)."""
    email = f"catalog-{uuid.uuid4().hex[:12]}@example.com"
    password = secrets.token_urlsafe(14)
    with gw.client() as c:
        r = c.post(
            "/api/v1/auth/register", json={"email": email, "password": password, "name": "T"}
        )
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        if roles is not None:
            r = c.patch(
                f"/api/v1/users/{user_id}/roles", json={"roles": roles}, headers=admin_headers(gw)
            )
            assert r.status_code == 200, r.text
    return bearer_for(gw, email, password), user_id


def bearer_for(gw: Gateway, email: str, password: str) -> dict[str, str]:
    r = httpx.post(gw.url + "/api/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


class Created:
    """Ids a module created, deleted (products first) when the module ends."""

    def __init__(self) -> None:
        self.products: list[str] = []
        self.categories: list[str] = []

    def product(self, c: httpx.Client, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
        body = {
            "sku": f"T-{uuid.uuid4().hex[:16]}",
            "name": "Test product",
            "price_cents": 100,
            "stock": 5,
            **fields,
        }
        r = c.post("/api/v1/products", json=body, headers=headers)
        assert r.status_code == 201, r.text
        self.products.append(r.json()["id"])
        return dict(r.json())

    def category(self, c: httpx.Client, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
        body = {"name": "Test category", "slug": f"t-{uuid.uuid4().hex[:12]}", **fields}
        r = c.post("/api/v1/categories", json=body, headers=headers)
        assert r.status_code == 201, r.text
        self.categories.append(r.json()["id"])
        return dict(r.json())

    def cleanup(self, gw: Gateway) -> None:
        headers = {**admin_headers(gw), "If-Match": "*"}
        with gw.client() as c:
            for pid in self.products:
                r = c.delete(f"/api/v1/products/{pid}", headers=headers)
                assert r.status_code in (204, 404), r.text
            left = list(reversed(self.categories))  # children usually came after parents
            for _ in range(len(left) + 1):  # a test may have moved them: retry the 409s
                codes = {
                    cid: c.delete(f"/api/v1/categories/{cid}", headers=headers) for cid in left
                }
                left = [cid for cid, r in codes.items() if r.status_code == 409]
                if not left:
                    break
            assert not left, left


@contextmanager
def created_records(gw: Gateway) -> Iterator[Created]:
    record = Created()
    try:
        yield record
    finally:
        record.cleanup(gw)
