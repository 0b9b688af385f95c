"""Cacheable routes keep their validators with the response cache switched off: the same
``ETag`` the cache gives (so a product's ``If-Match`` has a tag to name), the rule's
``Cache-Control``, and 304 for a matching ``If-None-Match`` (API.md) - for the edge's fast
handler and a Litestar handler alike."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.acceptance.conftest import Gateway, start_gateway, stop_gateway
from tests.acceptance.test_catalog_api import assert_problem
from tests.catalog_helpers import Created, created_records, new_caller

pytestmark = pytest.mark.acceptance


@pytest.fixture(scope="module")
def cacheless(gateway_env: dict[str, str], seeded: object) -> Iterator[Gateway]:
    gw = start_gateway(gateway_env, workers=1, extra_env={"CYGATE_CACHE_ENABLED": "false"})
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="module")
def made(cacheless: Gateway) -> Iterator[Created]:
    with created_records(cacheless) as record:
        yield record


@pytest.fixture(scope="module")
def manager(cacheless: Gateway) -> dict[str, str]:
    return new_caller(cacheless, ["catalog_manager"])[0]


def test_a_product_read_carries_the_caches_tag(cacheless: Gateway, gateway: Gateway) -> None:
    with cacheless.client() as off, gateway.client() as on:
        pid = off.get("/api/v1/products", params={"limit": 1}).json()["items"][0]["id"]
        path = f"/api/v1/products/{pid}"
        r = off.get(path)
        assert r.status_code == 200 and "x-cache" not in r.headers  # no cache on this one
        tag = r.headers["etag"]
        assert tag == on.get(path).headers["etag"]  # same bytes, same tag, cache or not
        assert r.headers["cache-control"] == on.get(path).headers["cache-control"]
        for inm in (tag, f'"nope", {tag}', "W/" + tag, "*"):
            not_modified = off.get(path, headers={"If-None-Match": inm})
            assert not_modified.status_code == 304, inm
            assert not_modified.content == b""
            assert not_modified.headers["etag"] == tag
            assert "content-type" not in not_modified.headers
            assert not_modified.headers["x-request-id"]  # the edge's own headers still come
        assert off.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
        head = off.head(path, headers={"If-None-Match": '"other"'})
        assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == tag


def test_a_tag_from_the_read_guards_the_write(
    cacheless: Gateway, manager: dict[str, str], made: Created
) -> None:
    with cacheless.client() as c:
        home = made.category(c, manager, name="Validator tests")
        p = made.product(c, manager, category_id=home["id"], price_cents=900)
        path = f"/api/v1/products/{p['id']}"
        tag = c.get(path).headers["etag"]
        r = c.patch(path, json={"price_cents": 950}, headers={**manager, "If-Match": tag})
        assert r.status_code == 200, r.text
        new_tag = r.headers["etag"]
        assert c.get(path).headers["etag"] == new_tag  # the write's tag is the read's
        stale = c.patch(path, json={"price_cents": 1}, headers={**manager, "If-Match": tag})
        assert_problem(stale, 412)
        assert c.get(path, headers={"If-None-Match": tag}).status_code == 200  # changed


def test_litestar_handlers_are_tagged_too(cacheless: Gateway, manager: dict[str, str],
                                          made: Created) -> None:  # fmt: skip
    with cacheless.client() as c:
        cat = made.category(c, manager, name="Validator tests 2")
        path = f"/api/v1/categories/{cat['id']}"
        r = c.get(path)
        tag = r.headers["etag"]
        assert r.status_code == 200 and r.headers["cache-control"].startswith("public")
        assert c.get(path, headers={"If-None-Match": tag}).status_code == 304
        listing: Any = c.get("/api/v1/categories")
        assert listing.status_code == 200 and listing.headers["etag"]


def test_errors_carry_no_tag(cacheless: Gateway) -> None:
    with cacheless.client() as c:
        missing = c.get("/api/v1/products/00000000-0000-7000-8000-000000000000")
        assert_problem(missing, 404)
        assert "etag" not in missing.headers
        bad = c.get("/api/v1/products/not-a-uuid", headers={"If-None-Match": "*"})
        assert_problem(bad, 422)
        assert "etag" not in bad.headers
