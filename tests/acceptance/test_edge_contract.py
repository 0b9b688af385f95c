"""The edge's response contract through a real gateway: ids, headers, limits, paths, metrics."""

from __future__ import annotations

import re
import socket
import time

import httpx
import pytest
from tests.acceptance.conftest import Gateway, start_gateway, stop_gateway
from tests.acceptance.test_catalog_api import assert_problem

pytestmark = pytest.mark.acceptance


def test_request_id_generated_and_echoed(gateway: Gateway) -> None:
    with gateway.client() as c:
        a = c.get("/healthz")
        b = c.get("/healthz", headers={"X-Request-ID": "abc-123.X"})
        bad = c.get("/healthz", headers={"X-Request-ID": "no spaces <allowed>"})
    assert re.fullmatch(r"[0-9a-f]{24}", a.headers["x-request-id"])
    assert b.headers["x-request-id"] == "abc-123.X"
    assert bad.headers["x-request-id"] != "no spaces <allowed>"


def test_traceparent_propagated(gateway: Gateway) -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with gateway.client() as c:
        echoed = c.get("/healthz", headers={"traceparent": tp}).headers["traceparent"]
        fresh = c.get("/healthz").headers["traceparent"]
    assert echoed == tp
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", fresh)


def test_security_headers_and_no_server_version(gateway: Gateway) -> None:
    with gateway.client() as c:
        for path in ("/healthz", "/api/v1/nope"):
            r = c.get(path)
            assert r.headers["x-content-type-options"] == "nosniff"
            assert "server" not in r.headers or not re.search(r"\d", r.headers["server"])
            assert "strict-transport-security" not in r.headers  # not configured here


def test_hsts_when_configured(gateway_env: dict[str, str]) -> None:
    gw = start_gateway(gateway_env, workers=1, extra_env={"CYGATE_HSTS_MAX_AGE": "31536000"})
    try:
        r = httpx.get(gw.url + "/healthz")
        assert r.headers["strict-transport-security"] == "max-age=31536000"
    finally:
        stop_gateway(gw)


@pytest.mark.parametrize(
    "spelling",
    [
        "/api/v1/categories/",
        "//api/v1/categories",
        "/api/./v1/categories",
        "/api/v1/x/../categories",
        "/api%2Fv1%2Fcategories",
        "/api/v1/%63ategories",
    ],
)
def test_path_spellings_reach_one_resource(gateway: Gateway, spelling: str) -> None:
    with gateway.client() as c:
        canonical = c.get("/api/v1/categories")
    raw = _raw_get(gateway, spelling)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert raw.split(b"\r\n\r\n", 1)[1] == canonical.content


def test_malformed_path_is_400(gateway: Gateway) -> None:
    raw = _raw_get(gateway, "/api/v1/%zz")
    assert raw.startswith(b"HTTP/1.1 400"), raw[:200]
    assert b"application/problem+json" in raw


def _raw_get(gw: Gateway, target: str) -> bytes:
    """Send the request target byte for byte (httpx would normalise it)."""
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_body_over_limit_is_413(gateway: Gateway) -> None:
    with gateway.client() as c:
        r = c.post("/api/v1/auth/register", content=b"x" * (1024 * 1024 + 1))
    assert_problem(r, 413)


def test_readyz_and_healthz(gateway: Gateway) -> None:
    with gateway.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"postgres": "ok", "redis": "ok"}


def test_openapi_and_schema_ui(gateway: Gateway) -> None:
    with gateway.client() as c:
        doc = c.get("/schema/openapi.json")
        ui = c.get("/schema")
    assert doc.status_code == 200
    assert doc.json()["openapi"].startswith("3.1")
    assert "/api/v1/products/{product_id}" in doc.json()["paths"]
    assert ui.status_code == 200 and "html" in ui.headers["content-type"]


def test_metrics_count_every_request_across_workers(gateway: Gateway) -> None:
    def count(text: str) -> int:
        total = 0
        for line in text.splitlines():
            if line.startswith('cygate_http_requests_total{route="GET /healthz"'):
                total += int(line.rsplit(" ", 1)[1])
        return total

    time.sleep(1.5)  # let every worker publish what earlier tests sent
    with gateway.client() as c:
        before = count(c.get("/metrics").text)
    n = 60
    # A fresh connection per request so both Granian workers serve some of them.
    for _ in range(n):
        assert httpx.get(gateway.url + "/healthz").status_code == 200
    time.sleep(1.5)  # each worker writes its snapshot once a second
    with gateway.client() as c:
        text = c.get("/metrics").text
    assert count(text) - before == n
    assert "cygate_http_request_duration_seconds_bucket" in text
