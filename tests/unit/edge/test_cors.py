"""The CORS decisions (``edge/cors``) and their settings."""

from __future__ import annotations

import pytest

from cygate.edge.context import RoutePolicy
from cygate.edge.cors import EXPOSED, VARY_ORIGIN, Cors, request_headers
from cygate.settings import SettingsError, load_settings

APP = b"https://app.example.com"
ROUTES = [
    ("GET", RoutePolicy(name="GET /things", cache="catalog")),
    ("POST", RoutePolicy(name="POST /things", auth=True)),
]


def test_allowed_refused_and_null_origins() -> None:
    cors = Cors(["https://app.example.com"], allow_credentials=False, max_age=600)
    assert cors.allow_origin(APP) == APP
    assert cors.allow_origin(b"https://evil.example.com") is None
    assert cors.allow_origin(b"https://APP.example.com") is None  # browsers send it lower-case
    assert cors.allow_origin(b"https://app.example.com:443") is None
    assert cors.allow_origin(b"null") is None
    assert cors.allow_origin(None) is None
    with_null = Cors(["null"], allow_credentials=False, max_age=600)
    assert with_null.allow_origin(b"null") == b"null"


def test_answer_headers() -> None:
    cors = Cors(["https://app.example.com"], allow_credentials=False, max_age=600)
    assert cors.response_headers(APP) == (
        (b"access-control-allow-origin", APP),
        (b"access-control-expose-headers", EXPOSED),
        VARY_ORIGIN,
    )
    assert cors.response_headers(b"https://evil.example.com") == (VARY_ORIGIN,)
    assert cors.response_headers(None) == (VARY_ORIGIN,)
    creds = Cors(["https://app.example.com"], allow_credentials=True, max_age=600)
    assert (b"access-control-allow-credentials", b"true") in creds.response_headers(APP)
    assert b"access-control-allow-credentials" not in dict(cors.response_headers(APP))
    for name in (b"RateLimit-Remaining", b"ETag", b"X-Request-ID", b"X-Cache", b"Retry-After",
                 b"Idempotent-Replayed"):  # fmt: skip
        assert name in EXPOSED


def test_any_origin_without_credentials_only() -> None:
    anyone = Cors(["*"], allow_credentials=False, max_age=600)
    assert anyone.allow_origin(b"https://whoever.example") == b"*"
    assert anyone.allow_origin(b"null") is None  # an opaque origin only when listed
    with pytest.raises(ValueError, match="credentials"):
        Cors(["*"], allow_credentials=True, max_age=600)


def test_preflight() -> None:
    cors = Cors(["https://app.example.com"], allow_credentials=True, max_age=120)
    granted = dict(cors.preflight(APP, b"POST", ROUTES) or [])
    assert granted[b"access-control-allow-origin"] == APP
    assert granted[b"access-control-allow-methods"] == b"GET, HEAD, POST"
    assert granted[b"access-control-allow-headers"] == (
        b"authorization, cache-control, content-type, idempotency-key, if-none-match, "
        b"traceparent, x-request-id"
    )
    assert granted[b"access-control-max-age"] == b"120"
    assert granted[b"access-control-allow-credentials"] == b"true"
    assert granted[b"vary"] == b"Origin, Access-Control-Request-Method"
    assert cors.preflight(APP, b"post", ROUTES) is not None  # normalised, as browsers do
    assert cors.preflight(APP, b"DELETE", ROUTES) is None  # a method the path lacks
    assert cors.preflight(APP, b"patch", [("PATCH", RoutePolicy(name="PATCH /x"))]) is None
    assert cors.preflight(b"https://evil.example.com", b"GET", ROUTES) is None
    assert cors.preflight(b"null", b"GET", ROUTES) is None
    assert len(cors._preflights) == 2  # built once per route (set of the path's routes)


def test_request_headers_follow_the_policy() -> None:
    assert request_headers("GET", RoutePolicy(name="GET /x")) == {"x-request-id", "traceparent"}
    assert "if-match" in request_headers("PATCH", RoutePolicy(name="PATCH /x", auth=True))
    assert "authorization" in request_headers(
        "GET", RoutePolicy(name="GET /x", roles=frozenset({"admin"}))
    )


@pytest.mark.parametrize(
    "value",
    [
        '["https://app.example.com/"]',
        '["app.example.com"]',
        '["https://App.example.com"]',
        '["ftp://app.example.com"]',
        '["https://app.example.com:99999999"]',
        "[1]",
        '"https://a.example"',
    ],
)
def test_bad_origins_are_refused_at_start(value: str) -> None:
    with pytest.raises(SettingsError, match="cors_origins"):
        load_settings({"CYGATE_CORS_ORIGINS": value})


def test_settings() -> None:
    s = load_settings({"CYGATE_CORS_ORIGINS": '["https://a.example", "http://[::1]:8080", "null"]'})
    assert s.http.cors_origins == ["https://a.example", "http://[::1]:8080", "null"]
    assert s.http.cors_allow_credentials is False and s.http.compression_enabled is True
    assert load_settings(
        {"CYGATE_CORS_ORIGINS": "https://a.example,https://b.example"}
    ).http.cors_origins == [
        "https://a.example",
        "https://b.example",
    ]
    with pytest.raises(SettingsError, match="cannot go with cors_allow_credentials"):
        load_settings({"CYGATE_CORS_ORIGINS": '["*"]', "CYGATE_CORS_ALLOW_CREDENTIALS": "true"})
    with pytest.raises(SettingsError, match="compression_min_bytes"):
        load_settings({"CYGATE_COMPRESSION_MIN_BYTES": "0"})
