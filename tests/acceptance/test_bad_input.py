"""Hostile and careless input, through a real gateway: every one is a 4xx problem+json with a
``request_id`` (never a 5xx, never internals), refused before a handler or SQL runs.

- JSON: a NUL (``\\u0000``) in any string, nesting thousands deep, numbers sent as strings;
- media types: a write takes JSON (``application/json``, ``+json``) and nothing else (415),
  except the OAuth endpoints, which take their form (RFC 6749);
- query strings with NUL, form fields with NUL;
- HTTP: no ``Host`` or two (RFC 9112, section 3.2), ``OPTIONS`` and ``Allow``, ``OPTIONS *``.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

import httpx
import pytest
from tests.acceptance.conftest import Gateway, admin_headers
from tests.acceptance.test_catalog_api import assert_problem
from tests.catalog_helpers import new_caller

pytestmark = pytest.mark.acceptance

NUL = "\u0000"
# Nested past the decoder's recursion guard (Python's limit, 1000), inside the 16 KiB body limit
DEEP = (b'{"a":' * 2500 + b"1" + b"}" * 2500, b"[" * 8000 + b"]" * 8000)
ANY_ID = "0190a0a0-0000-7000-8000-000000000000"


@pytest.fixture(scope="module")
def customer(gateway: Gateway) -> dict[str, str]:
    headers, _ = new_caller(gateway, None)
    return headers


@pytest.fixture(scope="module")
def admin(gateway: Gateway) -> dict[str, str]:
    return admin_headers(gateway)


# (method, path, who, a valid-shaped body whose one string holds NUL)
WRITES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("POST", "/api/v1/auth/login", "", {"email": f"a{NUL}@example.com", "password": "x" * 12}),
    (
        "POST",
        "/api/v1/auth/register",
        "",
        {"email": "n@example.com", "password": "x" * 12, "name": f"N{NUL}"},
    ),
    ("PATCH", "/api/v1/users/me", "customer", {"name": f"x{NUL}y"}),
    (
        "POST",
        "/api/v1/orders",
        "customer",
        {"items": [{"product_id": ANY_ID, "quantity": 1}], "shipping_address": {f"k{NUL}": "v"}},
    ),
    (
        "POST",
        f"/api/v1/orders/{ANY_ID}/payments",
        "customer",
        {"payment_method_token": f"tok{NUL}"},
    ),
    ("POST", "/api/v1/products", "admin", {"sku": "S-1", "name": f"n{NUL}", "price_cents": 1}),
    ("PATCH", f"/api/v1/products/{ANY_ID}", "admin", {"name": f"n{NUL}"}),
    ("POST", "/api/v1/categories", "admin", {"name": f"c{NUL}"}),
    ("PATCH", f"/api/v1/categories/{ANY_ID}", "admin", {"name": f"c{NUL}"}),
    ("PATCH", f"/api/v1/users/{ANY_ID}/roles", "admin", {"roles": [f"admin{NUL}"]}),
    ("POST", "/admin/cache/purge", "admin", {"tags": [f"t{NUL}"]}),
]
WRITE_IDS = [f"{m} {p}" for m, p, *_ in WRITES]


def _headers(who: str, customer: dict[str, str], admin: dict[str, str]) -> dict[str, str]:
    headers = {"customer": customer, "admin": admin}.get(who, {})
    return {**headers, "Idempotency-Key": uuid.uuid4().hex, "If-Match": "*"}


@pytest.mark.parametrize(("method", "path", "who", "body"), WRITES, ids=WRITE_IDS)
def test_nul_in_a_json_string_is_422(
    gateway: Gateway,
    customer: dict[str, str],
    admin: dict[str, str],
    method: str,
    path: str,
    who: str,
    body: dict[str, Any],
) -> None:
    with gateway.client() as c:
        r = c.request(method, path, json=body, headers=_headers(who, customer, admin))
    doc = assert_problem(r, 422)
    assert "NUL" in str(doc["errors"])


@pytest.mark.parametrize(("method", "path", "who", "body"), WRITES, ids=WRITE_IDS)
def test_json_nested_thousands_deep_is_4xx(
    gateway: Gateway,
    customer: dict[str, str],
    admin: dict[str, str],
    method: str,
    path: str,
    who: str,
    body: dict[str, Any],
) -> None:
    headers = {**_headers(who, customer, admin), "content-type": "application/json"}
    with gateway.client() as c:
        for deep in DEEP:
            r = c.request(method, path, content=deep, headers=headers)
            assert r.status_code in (400, 422), r.text
            assert_problem(r, r.status_code)


def test_an_escaped_backslash_before_u0000_is_text_not_nul(gateway: Gateway) -> None:
    # ``"\\u0000"`` in JSON is a backslash and "u0000": ordinary text, refused only as a bad
    # login like any other
    with gateway.client() as c:
        r = c.post(
            "/api/v1/auth/login",
            content=b'{"email": "a\\\\u0000@example.com", "password": "xxxxxxxxxxxx"}',
            headers={"content-type": "application/json"},
        )
    assert_problem(r, 401)


@pytest.mark.parametrize(
    ("path", "who", "field"),
    [
        ("/api/v1/products?cursor=%00", "", "query.cursor"),
        ("/api/v1/products?sort=name%00", "", "query.sort"),
        ("/api/v1/search?q=lamp%00", "", "query.q"),
        ("/api/v1/search?q=lamp&cursor=a%00b", "", "query.cursor"),
        ("/api/v1/orders?cursor=%00", "customer", "query.cursor"),
        ("/api/v1/users?cursor=%00", "admin", "query.cursor"),
    ],
)
def test_nul_in_a_query_parameter_is_422(
    gateway: Gateway,
    customer: dict[str, str],
    admin: dict[str, str],
    path: str,
    who: str,
    field: str,
) -> None:
    headers = {"customer": customer, "admin": admin}.get(who, {})
    with gateway.client() as c:
        doc = assert_problem(c.get(path, headers=headers), 422)
    assert [e["field"] for e in doc["errors"]] == [field]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "form",
    [
        "grant_type=client_credentials&client_id=svc%00&client_secret=x",
        "grant_type=refresh_token&refresh_token=a%00b",
        "grant_type%00=refresh_token",
    ],
)
def test_nul_in_a_token_form_is_invalid_request(gateway: Gateway, form: str) -> None:
    with gateway.client() as c:
        r = c.post(
            "/api/v1/auth/token",
            content=form,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        revoke = c.post(
            "/api/v1/auth/revoke",
            content="token=a%00b",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    # RFC 6749 section 5.2: the OAuth error object, not problem+json
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
    assert revoke.status_code == 400 and revoke.json()["error"] == "invalid_request"


# -- media types and strict numbers ----------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/xml",
        "",
        None,
    ],
)
@pytest.mark.parametrize(("method", "path", "who", "body"), WRITES[:5], ids=WRITE_IDS[:5])
def test_a_write_takes_only_json(
    gateway: Gateway,
    customer: dict[str, str],
    admin: dict[str, str],
    content_type: str | None,
    method: str,
    path: str,
    who: str,
    body: dict[str, Any],
) -> None:
    headers = _headers(who, customer, admin)
    if content_type is not None:
        headers["content-type"] = content_type
    raw = httpx.Request(method, gateway.url + path, content=b'{"email": "x"}', headers=headers)
    assert content_type is not None or "content-type" not in raw.headers  # a body, no type
    with gateway.client() as c:
        doc = assert_problem(c.send(raw), 415)
    assert "application/json" in str(doc["detail"])


def test_json_and_plus_json_types_are_taken(gateway: Gateway, customer: dict[str, str]) -> None:
    with gateway.client() as c:
        for content_type in (
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ):
            r = c.patch(
                "/api/v1/users/me",
                content=b'{"name": "Plain Name"}',
                headers={**customer, "content-type": content_type},
            )
            assert r.status_code == 200, (content_type, r.text)


def test_a_write_without_a_body_needs_no_type(gateway: Gateway, admin: dict[str, str]) -> None:
    with gateway.client() as c:
        r = c.post(f"/api/v1/orders/{ANY_ID}/cancel", headers=admin)
    assert_problem(r, 404)  # routed to the handler: no such order


def test_the_token_endpoint_keeps_its_form(gateway: Gateway) -> None:
    with gateway.client() as c:
        form = c.post("/api/v1/auth/token", data={"grant_type": "refresh_token"})
        as_json = c.post("/api/v1/auth/token", json={"grant_type": "refresh_token"})
    assert form.status_code == 400 and form.json()["error"] == "invalid_request"
    assert "refresh_token is required" in form.json()["error_description"]
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("method", "path", "who", "body", "field"),
    [
        (
            "POST",
            "/api/v1/orders",
            "customer",
            {"items": [{"product_id": ANY_ID, "quantity": "2"}], "shipping_address": "x"},
            "body.items[0].quantity",
        ),
        (
            "POST",
            "/api/v1/orders",
            "customer",
            {"items": [{"product_id": ANY_ID, "quantity": 2.0}], "shipping_address": "x"},
            "body.items[0].quantity",
        ),
        (
            "POST",
            "/api/v1/products",
            "admin",
            {"sku": "S-1", "name": "n", "price_cents": "100"},
            "body.price_cents",
        ),
        ("PATCH", f"/api/v1/products/{ANY_ID}", "admin", {"stock": "3"}, "body.stock"),
        ("POST", "/api/v1/auth/login", "", {"email": 5, "password": "x" * 12}, "body.email"),
        ("PATCH", "/api/v1/users/me", "customer", {"name": 12}, "body.name"),
        (
            "POST",
            "/api/v1/orders",
            "customer",
            {"items": [{"product_id": ANY_ID, "quantity": 1}], "shipping_address": "x", "x": 1},
            "body.x",
        ),
    ],
)
def test_numbers_and_strings_are_never_coerced(
    gateway: Gateway,
    customer: dict[str, str],
    admin: dict[str, str],
    method: str,
    path: str,
    who: str,
    body: dict[str, Any],
    field: str,
) -> None:
    with gateway.client() as c:
        r = c.request(method, path, json=body, headers=_headers(who, customer, admin))
    doc = assert_problem(r, 422)
    assert field in [e["field"] for e in doc["errors"]], doc  # type: ignore[union-attr]


# -- HTTP: Host, OPTIONS, Allow --------------------------------------------------------------


def _raw(gw: Gateway, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` byte for byte; the status, headers (last of each name) and body."""
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _assert_raw_problem(reply: tuple[int, dict[str, str], bytes], status: int) -> None:
    got, headers, body = reply
    assert got == status, body
    assert headers["content-type"] == "application/problem+json"
    doc = httpx.Response(got, content=body).json()
    assert doc["status"] == status and doc["request_id"] == headers["x-request-id"]


@pytest.mark.parametrize("path", ["/healthz", "/api/v1/categories", "/api/v1/products"])
def test_http11_without_host_or_with_two_is_400(gateway: Gateway, path: str) -> None:
    host = gateway.url.removeprefix("http://").encode()
    # warm the cache first: a cached answer must not slip past the check (the fused hit path)
    for _ in range(2):
        ok = _raw(gateway, b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
            path.encode(), host))  # fmt: skip
        assert ok[0] == 200
    none = b"GET %s HTTP/1.1\r\nConnection: close\r\n\r\n" % path.encode()
    _assert_raw_problem(_raw(gateway, none), 400)
    two = b"GET %s HTTP/1.1\r\nHost: %s\r\nHost: other.example\r\nConnection: close\r\n\r\n" % (
        path.encode(), host)  # fmt: skip
    _assert_raw_problem(_raw(gateway, two), 400)
    same_twice = b"GET %s HTTP/1.1\r\nHost: %s\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
        path.encode(), host, host)  # fmt: skip
    _assert_raw_problem(_raw(gateway, same_twice), 400)


def test_http10_without_host_is_served(gateway: Gateway) -> None:
    status, _, _ = _raw(gateway, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status == 200


def test_options_asterisk_is_the_server_wide_ping(gateway: Gateway) -> None:
    host = gateway.url.removeprefix("http://").encode()
    status, headers, body = _raw(
        gateway, b"OPTIONS * HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host
    )
    # RFC 9110, section 9.3.7: applies to the server in general; 200 and Content-Length 0
    assert status == 200 and body == b""
    assert headers["content-length"] == "0"
    assert headers["x-request-id"]


def _concrete(path: str) -> str:
    """An OpenAPI path with its parameters filled (any well-formed id)."""
    parts = [ANY_ID if p.startswith("{") else p for p in path.split("/")]
    return "/".join(parts)


def test_options_and_405_list_exactly_the_routes_methods(gateway: Gateway) -> None:
    with gateway.client() as c:
        doc = c.get("/schema/openapi.json").json()
        checked = 0
        for path, item in doc["paths"].items():
            methods = {m.upper() for m in item if m in {"get", "post", "put", "patch", "delete"}}
            if not methods:
                continue
            expected = {*methods, "OPTIONS"} | ({"HEAD"} if "GET" in methods else set())
            url = _concrete(path)
            r = c.options(url)
            assert r.status_code == 200, (path, r.text)
            assert {m.strip() for m in r.headers["allow"].split(",")} == expected, path
            assert r.headers["content-length"] == "0"
            missing = sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - methods)
            if missing:
                refused = c.request(missing[0], url)
                assert_problem(refused, 405)
                assert refused.headers["allow"] == r.headers["allow"], path
            checked += 1
    assert checked >= 20
    with gateway.client() as c:
        allow = c.options("/api/v1/products").headers["allow"]
    assert allow == "GET, HEAD, OPTIONS, POST"
