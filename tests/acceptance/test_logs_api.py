"""Logs through a real gateway (Granian, two workers): JSON lines from every process, an
access line per request (fused hits included) carrying the answer's request id and trace id,
and no secret the flow used anywhere in what the gateway wrote, at DEBUG with every request
logged.

``test_privacy_api.py`` checks the same for the text format and the restricted data of an
order; here the secrets are the credentials: passwords (a good and a wrong one), access and
refresh tokens in headers, form bodies and a query string, an MFA secret and its codes.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
from tests.acceptance.conftest import private_data, start_gateway, stop_gateway
from tests.acceptance.test_events_api import query

pytestmark = pytest.mark.acceptance

LOGIN = "/api/v1/auth/login"


def _lines(output: str) -> list[dict[str, Any]]:
    lines = [line for line in output.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    return parsed


@pytest.fixture
def own_env(gateway_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Data of its own: with the session's Redis prefix, the product read below could find an
    entry the session's gateways left in L2, where this test needs its first read to miss."""
    with private_data(gateway_env, "logs", categories=2, products=10, users=1) as env:
        yield env


def test_json_logs_carry_ids_and_never_a_secret(own_env: dict[str, str]) -> None:
    extra = {
        "CYGATE_LOG_LEVEL": "debug",
        "CYGATE_LOG_FORMAT": "json",
        "CYGATE_ACCESS_LOG_SAMPLE": "1",
        "CYGATE_ARGON2_TIME_COST": "1",
        "CYGATE_ARGON2_MEMORY_COST": "1024",
    }
    gw = start_gateway(own_env, workers=2, extra_env=extra)
    used: dict[str, str] = {}
    codes: list[str] = []
    answers: list[tuple[str, str, str]] = []  # (route path, request id, traceparent)
    try:
        email = f"logs-{uuid.uuid4().hex[:12]}@example.com"
        used["password"] = password = f"Pw-{secrets.token_urlsafe(16)}"
        used["wrong password"] = f"Wrong-{secrets.token_urlsafe(16)}"
        [row] = query(own_env["CYGATE_DATABASE_URL"], "SELECT id FROM products ORDER BY id LIMIT 1")
        product = f"/api/v1/products/{row['id']}"
        with gw.client() as c:
            r = c.post("/api/v1/auth/register",
                       json={"email": email, "password": password, "name": "Logs"})  # fmt: skip
            assert r.status_code == 201, r.text
            r = c.post(LOGIN, json={"email": email, "password": used["wrong password"]})
            assert r.status_code == 401, r.text
            r = c.post(LOGIN, json={"email": email, "password": password})
            assert r.status_code == 200, r.text
            tokens = r.json()
            used["access token"] = tokens["access_token"]
            used["refresh token"] = tokens["refresh_token"]
            auth = {"Authorization": f"Bearer {tokens['access_token']}"}
            for _ in range(4):  # a miss, then hits (the fused hit path's)
                r = c.get(product, headers=auth)
                assert r.status_code == 200, r.text
                answers.append((product, r.headers["x-request-id"], r.headers["traceparent"]))
            assert c.get("/api/v1/users/me", headers=auth).status_code == 200
            # a token in a query string (never logged: the access log's path has no query)
            r = c.get("/api/v1/users/me", params={"access_token": tokens["access_token"]})
            assert r.status_code == 401
            r = c.post("/api/v1/users/me/mfa/totp", headers=auth)
            assert r.status_code in (200, 201), r.text
            used["MFA secret"] = secret = r.json()["secret"]
            codes.append(pyotp.TOTP(secret).now())
            r = c.post("/api/v1/users/me/mfa/totp/verify", json={"code": codes[-1]},
                       headers=auth)  # fmt: skip
            assert r.status_code in (200, 204), r.text
            r = c.post(
                "/api/v1/auth/token",
                data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            )
            assert r.status_code == 200, r.text
            used["refreshed access token"] = r.json()["access_token"]
            used["refreshed refresh token"] = r.json()["refresh_token"]
            # a bearer token sent where it does not belong: in the user agent
            r = c.get("/healthz", headers={"user-agent": f"Bearer {tokens['access_token']}"})
    finally:
        output = stop_gateway(gw)
    lines = _lines(output)  # every line the main process and the workers wrote is JSON
    assert any(line["level"] == "DEBUG" for line in lines)  # captured at DEBUG
    for what, value in used.items():
        assert value not in output, f"the {what} is in the log"
    for token in (used["access token"], used["refreshed access token"]):
        assert token.rsplit(".", 1)[-1] not in output  # its signature alone
    for code in codes:
        assert not re.search(rf"(?<![0-9A-Za-z]){code}(?![0-9A-Za-z])", output)
    assert not re.search(r"\$argon2", output)

    access = [line for line in lines if line["logger"] == "cygate.access"]
    by_id = {line["request_id"]: line for line in access}
    for path, request_id, traceparent in answers:
        line = by_id[request_id]
        assert line["path"] == path and line["status"] == 200
        assert line["route"] == "GET /api/v1/products/{product_id:uuid}"
        assert line["trace_id"] == traceparent.split("-")[1]
    assert {by_id[rid]["cache"] for _, rid, _ in answers} >= {"miss", "hit-l1"}
    login = [line for line in access if line["route"] == "POST /api/v1/auth/login"]
    assert sorted(line["status"] for line in login) == [200, 401]
    for line in access:
        assert set(line) >= {"timestamp", "level", "logger", "message", "method", "route",
                             "status", "duration_ms", "bytes", "client", "request_id"}  # fmt: skip
        assert "?" not in line["path"]
