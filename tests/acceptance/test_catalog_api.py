"""The read-only catalog through a real gateway process: good inputs and bad ones."""

from __future__ import annotations

import uuid

import pytest
from tests.acceptance.conftest import Gateway

pytestmark = pytest.mark.acceptance

PRODUCT_FIELDS = {
    "id", "sku", "name", "description", "price_cents", "currency", "category_id", "stock",
    "updated_at",
}  # fmt: skip


def assert_problem(resp: object, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text  # type: ignore[attr-defined]
    assert resp.headers["content-type"].startswith("application/problem+json")  # type: ignore[attr-defined]
    doc = resp.json()  # type: ignore[attr-defined]
    assert {"type", "title", "status", "detail", "instance", "request_id"} <= doc.keys()
    assert doc["status"] == status
    assert doc["request_id"] == resp.headers["x-request-id"]  # type: ignore[attr-defined]
    assert "Traceback" not in resp.text  # type: ignore[attr-defined]
    return doc  # type: ignore[no-any-return]


def test_categories_tree(gateway: Gateway) -> None:
    with gateway.client() as c:
        r = c.get("/api/v1/categories")
    assert r.status_code == 200
    items = r.json()["items"]
    assert items, "seeded categories expected"
    total = sum(1 + len(node["children"]) for node in items)
    assert total == 12
    for node in items:
        assert node["parent_id"] is None
        for child in node["children"]:
            assert child["parent_id"] == node["id"]


def test_product_list_pages_through_everything_once(gateway: Gateway) -> None:
    seen: list[str] = []
    cursor = None
    with gateway.client() as c:
        while True:
            params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            r = c.get("/api/v1/products", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            assert set(page) == {"items", "next_cursor"}
            assert len(page["items"]) <= 100
            seen += [p["id"] for p in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert len(seen) == 300
    assert len(set(seen)) == 300


@pytest.mark.parametrize("sort", ["price", "-price", "name", "-name", "oldest", "newest"])
def test_product_list_sorted_and_keyset_consistent(gateway: Gateway, sort: str) -> None:
    key = {"price": "price_cents", "-price": "price_cents", "name": "name", "-name": "name"}
    with gateway.client() as c:
        first = c.get("/api/v1/products", params={"sort": sort, "limit": 7}).json()
        second = c.get(
            "/api/v1/products", params={"sort": sort, "limit": 7, "cursor": first["next_cursor"]}
        ).json()
        both = c.get("/api/v1/products", params={"sort": sort, "limit": 14}).json()
    assert [p["id"] for p in first["items"] + second["items"]] == [p["id"] for p in both["items"]]
    if sort in key:
        values = [p[key[sort]] for p in both["items"]]
        assert values == sorted(values, reverse=sort.startswith("-"))


def test_product_list_filters(gateway: Gateway) -> None:
    with gateway.client() as c:
        tree = c.get("/api/v1/categories").json()["items"]
        root = next(n for n in tree if n["children"])
        subtree = {root["id"], *(ch["id"] for ch in root["children"])}
        r = c.get("/api/v1/products", params={"category": root["id"], "limit": 100})
        assert r.status_code == 200
        assert r.json()["items"]
        assert {p["category_id"] for p in r.json()["items"]} <= subtree
        r = c.get(
            "/api/v1/products",
            params={"min_price_cents": 1000, "max_price_cents": 50000, "limit": 100},
        )
        prices = [p["price_cents"] for p in r.json()["items"]]
        assert prices and all(1000 <= p <= 50000 for p in prices)


def test_product_by_id(gateway: Gateway) -> None:
    with gateway.client() as c:
        item = c.get("/api/v1/products", params={"limit": 1}).json()["items"][0]
        r = c.get(f"/api/v1/products/{item['id']}")
        upper = c.get(f"/api/v1/products/{item['id'].upper()}")
    assert r.status_code == 200
    assert set(r.json()) == PRODUCT_FIELDS
    assert r.json() == item
    assert r.json()["updated_at"].endswith("Z")
    assert upper.status_code == 200 and upper.json()["id"] == item["id"]


def test_missing_product_is_404_problem(gateway: Gateway) -> None:
    with gateway.client() as c:
        r = c.get(f"/api/v1/products/{uuid.uuid4()}")
    assert_problem(r, 404)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/nope", 404),
        ("/api/v2/products", 404),
        ("/api/v1/products/not-a-uuid", 422),
        ("/api/v1/products/123", 422),
        ("/api/v1/products?limit=1000", 422),
        ("/api/v1/products?limit=0", 422),
        ("/api/v1/products?limit=-5", 422),
        ("/api/v1/products?limit=ten", 422),
        ("/api/v1/products?cursor=garbage!!", 422),
        ("/api/v1/products?cursor=WzEsMiwzXQ", 422),  # base64 of [1,2,3]: well-formed, wrong
        ("/api/v1/products?cursor=" + "A" * 600, 422),
        ("/api/v1/products?category=not-a-uuid", 422),
        ("/api/v1/products?min_price_cents=-1", 422),
        ("/api/v1/products?min_price_cents=500&max_price_cents=100", 422),
        ("/api/v1/products?sort=random", 422),
    ],
)
def test_bad_input_is_a_clear_problem(gateway: Gateway, path: str, status: int) -> None:
    with gateway.client() as c:
        r = c.get(path)
    doc = assert_problem(r, status)
    if status == 422:
        assert doc["errors"], doc
        assert all({"field", "message"} <= e.keys() for e in doc["errors"])  # type: ignore[union-attr]


def test_cursor_from_another_sort_is_refused(gateway: Gateway) -> None:
    with gateway.client() as c:
        cursor = c.get("/api/v1/products", params={"sort": "price", "limit": 2}).json()[
            "next_cursor"
        ]
        r = c.get("/api/v1/products", params={"sort": "name", "cursor": cursor})
    assert_problem(r, 422)


def test_method_not_allowed(gateway: Gateway) -> None:
    with gateway.client() as c:
        r = c.delete("/api/v1/categories")
    assert_problem(r, 405)
    assert "GET" in r.headers["allow"]
