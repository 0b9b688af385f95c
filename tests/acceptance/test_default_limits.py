"""Secure defaults: a gateway with no rate-limit settings at all limits every /api/v1 route per
caller (the built-in ``api`` limit) and registration per client address (``register``), and
every limited answer carries the RateLimit headers.

The suite's other gateways raise both limits (tests/conftest.py, SUITE_RATE_LIMITS); this one
runs with the built-in values.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import httpx
import pytest
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway

pytestmark = pytest.mark.acceptance

HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy")


@pytest.fixture(scope="module")
def gw(gateway_env: dict[str, str], seeded: dict[str, object]) -> Iterator[Gateway]:
    env = {k: v for k, v in gateway_env.items() if not k.startswith("CYGATE_RATE_LIMIT")}
    env["CYGATE_REDIS_PREFIX"] = f"{gateway_env['CYGATE_REDIS_PREFIX']}{secrets.token_hex(3)}:"
    env["CYGATE_TRUSTED_PROXIES"] = "127.0.0.1"  # X-Forwarded-For gives each test an address
    gateway = start_gateway(env, workers=1)
    try:
        yield gateway
    finally:
        output = stop_gateway(gateway)
        assert "Traceback" not in output, output


def address() -> dict[str, str]:
    return {"x-forwarded-for": f"203.0.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"}


def limited(r: httpx.Response, limit: str, policy: str) -> None:
    """One set of RateLimit headers (never two), of the limit expected."""
    for name in HEADERS:
        assert len(r.headers.get_list(name)) == 1, (name, r.headers)
    assert r.headers["ratelimit-limit"] == limit
    assert r.headers["ratelimit-policy"] == policy
    if r.status_code == 429:
        assert r.headers["content-type"].startswith("application/problem+json")
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["ratelimit-remaining"] == "0"
        assert r.json()["request_id"] == r.headers["x-request-id"]


def test_every_api_route_is_limited_per_caller(gw: Gateway) -> None:
    api = ("200", "100;w=1;burst=200")
    with gw.client(headers=address()) as c:
        product = c.get("/api/v1/products", params={"limit": 1}).json()["items"][0]["id"]
        answers = [
            c.get("/api/v1/categories"),
            c.get("/api/v1/products"),
            c.get(f"/api/v1/products/{product}"),
            c.get(f"/api/v1/products/{product}"),  # a cache hit
            c.get(f"/api/v1/products/{uuid.uuid4()}"),  # 404: limited all the same
            c.get("/api/v1/search", params={"q": "shirt"}),
            c.get("/api/v1/products", params={"limit": 1000}),  # 422
            c.get("/api/v1/users/me", headers=admin_headers(gw)),
        ]
    for r in answers:
        assert r.status_code in (200, 404, 422), r.text
        limited(r, *api)
    # a token back every 10 ms: the count goes down by one per request, up with time
    assert all(190 <= int(r.headers["ratelimit-remaining"]) < 200 for r in answers)
    # login counts its own limit (failures per account and address): its headers, one set
    with gw.client(headers=address()) as c:
        r = c.post("/api/v1/auth/login", json={"email": "x@example.com", "password": "nope"})
    assert r.status_code == 401
    assert len(r.headers.get_list("ratelimit-limit")) == 1
    assert "ratelimit-policy" not in r.headers  # the edge added no second set


def test_the_default_is_configurable_a_flood_is_refused_others_are_served(
    gateway_env: dict[str, str],
) -> None:
    """``api`` replaced by configuration (20 a minute, so the count does not depend on how
    fast this machine is): a caller past it gets 429 with the headers, on cache hits too;
    another caller is served; a route exempted by configuration has no limit at all."""
    env = {k: v for k, v in gateway_env.items() if not k.startswith("CYGATE_RATE_LIMIT")}
    env["CYGATE_RATE_LIMITS"] = '{"api": {"rate": 20, "period": 60}}'
    env["CYGATE_RATE_LIMIT_ROUTES"] = '{"GET /api/v1/categories": ""}'
    gw = start_gateway(env, workers=1)
    try:
        with gw.client() as c:
            product = c.get("/api/v1/products", params={"limit": 1}).json()["items"][0]["id"]
            answers = [c.get(f"/api/v1/products/{product}") for _ in range(25)]
            statuses = [r.status_code for r in answers]
            # one token went on the list above; a token comes back every 3 s
            assert statuses[:18] == [200] * 18 and statuses[-1] == 429, statuses
            for r in answers:
                limited(r, "20", "20;w=60")
            assert answers[-1].json()["limit"] == "api"
            exempt = c.get("/api/v1/categories")
            assert exempt.status_code == 200 and "ratelimit-limit" not in exempt.headers
        with gw.client(headers=admin_headers(gw)) as c:  # another caller: its own budget
            r = c.get(f"/api/v1/products/{product}")
            assert r.status_code == 200 and int(r.headers["ratelimit-remaining"]) >= 18
    finally:
        output = stop_gateway(gw)
        assert "Traceback" not in output, output


def test_registration_is_limited_per_address(gw: Gateway) -> None:
    """Ten sign-ups an hour from one address; the eleventh is 429; another address signs up."""
    mine = address()

    def register(headers: dict[str, str]) -> httpx.Response:
        body = {
            "email": f"signup-{uuid.uuid4().hex[:12]}@example.com",
            "password": secrets.token_urlsafe(12),
            "name": "Sign Up",
        }
        return httpx.post(gw.url + "/api/v1/auth/register", json=body, headers=headers)

    answers = [register(mine) for _ in range(11)]
    assert [r.status_code for r in answers] == [201] * 10 + [429], [r.text for r in answers]
    for r in answers:
        limited(r, "10", "10;w=3600")
    assert answers[-1].json()["limit"] == "register"
    assert int(answers[-1].headers["retry-after"]) > 60  # one more every 6 minutes
    other = register(address())
    assert other.status_code == 201, other.text
