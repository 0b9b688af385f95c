"""CORS and compression through a real gateway: preflights and answers for allowed, refused and
``null`` origins (credentials off, then on), each coding of the product list round-tripped,
q-values and bad Accept-Encoding values, validators per variant, and a cached compressed hit
answered from L1 with no compression (the gateway's own counter)."""

from __future__ import annotations

import gzip
import re
import time
from collections.abc import Iterator

import brotli
import httpx
import pytest
import zstandard
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway
from tests.acceptance.test_catalog_api import assert_problem

from cygate._compat import NO_EXTENSIONS

pytestmark = pytest.mark.acceptance

APP = "https://app.example"
EVIL = "https://evil.example"
IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture(scope="module")
def negotiating(gateway_env: dict[str, str], seeded: object) -> Iterator[Gateway]:
    extra = {"CYGATE_CORS_ORIGINS": f'["{APP}"]', "CYGATE_CORS_MAX_AGE": "120"}
    gw = start_gateway(gateway_env, workers=1, extra_env=extra)
    try:
        yield gw
    finally:
        output = stop_gateway(gw)
        assert "Traceback" not in output, output


def raw(
    c: httpx.Client, path: str, method: str = "GET", **headers: str
) -> tuple[httpx.Response, bytes]:
    """The response and its body as sent (httpx would decode it)."""
    with c.stream(method, path, headers=headers) as r:
        return r, b"".join(r.iter_raw())


def decode(coding: str | None, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompress(data)
    assert coding is None, coding
    return data


def cors_of(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("access-control-")}


def varies(r: httpx.Response) -> list[str]:
    return [v.strip().lower() for v in ",".join(r.headers.get_list("vary")).split(",")]


def compressions(c: httpx.Client, coding: str, result: str) -> float:
    text = c.get("/metrics", headers=IDENTITY).text
    found = re.search(
        rf'cygate_compression_total{{coding="{coding}",result="{result}"}} (\S+)', text
    )
    return float(found.group(1)) if found else 0.0


# -- CORS -------------------------------------------------------------------------------------


def test_preflight_allowed_refused_null_and_a_missing_method(negotiating: Gateway) -> None:
    with negotiating.client() as c:
        preflight = {
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        }
        ok = c.options("/api/v1/orders", headers=preflight)
        assert ok.status_code == 204 and ok.content == b""
        got = cors_of(ok)
        assert got["access-control-allow-origin"] == APP
        assert "POST" in got["access-control-allow-methods"].split(", ")
        assert {"authorization", "content-type", "idempotency-key"} <= set(
            got["access-control-allow-headers"].split(", ")
        )
        assert got["access-control-max-age"] == "120"
        assert "access-control-allow-credentials" not in got
        assert "origin" in varies(ok)
        for headers in (
            {"Origin": EVIL, "Access-Control-Request-Method": "POST"},
            {"Origin": "null", "Access-Control-Request-Method": "GET"},
            {"Origin": APP, "Access-Control-Request-Method": "DELETE"},  # the path has no DELETE
            {"Origin": APP, "Access-Control-Request-Method": "PUT"},
        ):
            refused = c.options("/api/v1/orders", headers=headers)
            assert refused.status_code == 200, headers
            assert cors_of(refused) == {} and "origin" in varies(refused)
            assert "POST" in refused.headers["allow"]
        missing = c.options(
            "/api/v1/nowhere", headers={"Origin": APP, "Access-Control-Request-Method": "GET"}
        )
        assert_problem(missing, 404)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/products",  # cached (a hit after the first)
        "/api/v1/products",
        "/api/v1/categories",
        "/healthz",
        "/api/v1/orders",  # 401 problem
        "/api/v1/products/not-a-uuid",  # 422 problem
        "/api/v1/nowhere",  # 404 problem from the edge
    ],
)
def test_answers_carry_the_allowed_origin_only(negotiating: Gateway, path: str) -> None:
    with negotiating.client() as c:
        allowed = c.get(path, headers={"Origin": APP})
        got = cors_of(allowed)
        assert got["access-control-allow-origin"] == APP
        exposed = got["access-control-expose-headers"].lower()
        for name in (
            "ratelimit-remaining",
            "etag",
            "x-request-id",
            "x-cache",
            "retry-after",
            "idempotent-replayed",
        ):
            assert name in exposed
        assert "origin" in varies(allowed)
        for origin in (EVIL, "null"):
            refused = c.get(path, headers={"Origin": origin})
            assert refused.status_code == allowed.status_code
            assert cors_of(refused) == {} and "origin" in varies(refused)
        plain = c.get(path)
        assert cors_of(plain) == {} and "origin" in varies(plain)


def test_credentials_when_configured(gateway_env: dict[str, str], seeded: object) -> None:
    if NO_EXTENSIONS:
        pytest.skip("the same Python code both ways (the compiled run covers it)")
    extra = {"CYGATE_CORS_ORIGINS": f'["{APP}"]', "CYGATE_CORS_ALLOW_CREDENTIALS": "true"}
    gw = start_gateway(gateway_env, workers=1, extra_env=extra)
    try:
        with gw.client() as c:
            r = c.get("/api/v1/users/me", headers={"Origin": APP, **admin_headers(gw)})
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == APP  # never *
            assert r.headers["access-control-allow-credentials"] == "true"
            pre = c.options(
                "/api/v1/users/me", headers={"Origin": APP, "Access-Control-Request-Method": "GET"}
            )
            assert (
                pre.status_code == 204 and pre.headers["access-control-allow-credentials"] == "true"
            )
            assert "authorization" in pre.headers["access-control-allow-headers"]
            refused = c.get("/api/v1/products", headers={"Origin": EVIL})
            assert cors_of(refused) == {}
    finally:
        stop_gateway(gw)


# -- compression ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/products", "/api/v1/products?limit=100"])
def test_product_list_in_each_coding(negotiating: Gateway, path: str) -> None:
    with negotiating.client() as c:
        plain, identity = raw(c, path, **IDENTITY)
        assert plain.status_code == 200 and "content-encoding" not in plain.headers
        assert "accept-encoding" in varies(plain)
        sizes = {"identity": len(identity)}
        for coding in ("gzip", "br", "zstd"):
            r, body = raw(c, path, **{"Accept-Encoding": coding})
            assert r.headers["content-encoding"] == coding
            assert int(r.headers["content-length"]) == len(body)
            assert decode(coding, body) == identity
            assert r.headers["etag"] == plain.headers["etag"][:-1] + f'.{coding}"'
            assert "accept-encoding" in varies(r)
            sizes[coding] = len(body)
        print(f"\n{path}: " + ", ".join(f"{k} {v} B" for k, v in sizes.items()))
        assert all(sizes[k] < sizes["identity"] / 3 for k in ("gzip", "br", "zstd"))


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        ("gzip;q=0.5, br;q=0.9", "br"),
        ("gzip;q=0.9, br;q=0.5, zstd;q=0.1", "gzip"),
        ("br;q=0, zstd", "zstd"),
        ("*", "br"),
        ("gzip, *;q=0", "gzip"),
        ("unknown-coding", None),
        ("*;q=0", None),  # nothing acceptable: sent as it is (never a 406)
        ("identity;q=0", None),
        ("gzip;q=high", None),  # malformed q-values: the element is ignored
        ("gzip;q=0.5.5, br;q=2", None),
        ("gzip;q=1.0001, zstd;q=.5", None),
        (";;;,,,=", None),
    ],
)
def test_accept_encoding_values(negotiating: Gateway, header: str, coding: str | None) -> None:
    with negotiating.client() as c:
        _, identity = raw(c, "/api/v1/products", **IDENTITY)
        r, body = raw(c, "/api/v1/products", **{"Accept-Encoding": header})
    assert r.status_code == 200
    assert r.headers.get("content-encoding") == coding
    assert decode(coding, body) == identity


def test_validators_per_variant(negotiating: Gateway) -> None:
    path = "/api/v1/categories"
    with negotiating.client() as c:
        plain, _ = raw(c, path, **IDENTITY)
        br, _ = raw(c, path, **{"Accept-Encoding": "br"})
        tag, br_tag = plain.headers["etag"], br.headers["etag"]
        assert br_tag == tag[:-1] + '.br"'
        again, _ = raw(c, path, **{"Accept-Encoding": "br", "If-None-Match": br_tag})
        assert again.status_code == 304 and again.headers["etag"] == br_tag
        same, _ = raw(c, path, **{"Accept-Encoding": "identity", "If-None-Match": tag})
        assert same.status_code == 304 and same.headers["etag"] == tag
        other, _ = raw(c, path, **{"Accept-Encoding": "gzip", "If-None-Match": br_tag})
        assert other.status_code == 200 and other.headers["content-encoding"] == "gzip"


def test_small_and_opted_out_answers_are_untouched(negotiating: Gateway) -> None:
    with negotiating.client() as c:
        r, body = raw(c, "/healthz", **{"Accept-Encoding": "gzip"})  # tiny
        assert "content-encoding" not in r.headers and body.startswith(b"{")
        assert "accept-encoding" not in varies(r)
        r, body = raw(
            c, "/api/v1/products", **{"Accept-Encoding": "gzip", "Cache-Control": "no-transform"}
        )
        assert r.status_code == 200 and "content-encoding" not in r.headers
        login = {"email": "nobody@example.com", "password": "x" * 12}
        token = c.post("/api/v1/auth/login", json=login, headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in token.headers


def test_a_cached_compressed_hit_is_served_from_l1_without_compressing(
    negotiating: Gateway,
) -> None:
    path = "/api/v1/products?limit=50"
    with negotiating.client() as c:
        first, body = raw(c, path, **{"Accept-Encoding": "zstd"})
        assert first.headers["content-encoding"] == "zstd"
        time.sleep(1.2)  # the worker's counters reach the scrape once a second
        encoded = compressions(c, "zstd", "encoded")
        kept = compressions(c, "zstd", "kept")
        for _ in range(5):
            hit, again = raw(c, path, **{"Accept-Encoding": "zstd"})
            assert hit.headers["x-cache"] == "hit-l1" and again == body
        time.sleep(1.2)
        assert compressions(c, "zstd", "encoded") == encoded
        assert compressions(c, "zstd", "kept") == kept + 5
