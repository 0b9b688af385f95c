"""Privacy through a real gateway: the consent API (its purposes, its owner, its bodies), the
analytics consumer honouring a refused consent through the real outbox and stream, and no
restricted value in the gateway's DEBUG log of a register, login and order flow."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway
from tests.acceptance.test_events_api import eventually, new_user, query, write

from cygate.services.privacy.consent import PURPOSES


@pytest.fixture(scope="module")
def gw(gateway_env: dict[str, str], seeded: dict[str, object]) -> Iterator[Gateway]:
    gw = start_gateway(gateway_env, workers=1)
    try:
        yield gw
    finally:
        output = stop_gateway(gw)
        assert "Traceback" not in output, output


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return dict(r.json())


def test_consents_start_at_their_defaults_and_keep_a_history(gw: Gateway) -> None:
    _, auth = new_user(gw)
    with gw.client() as c:
        r = c.get("/api/v1/users/me/consents", headers=auth)
        assert r.status_code == 200, r.text
        assert "no-store" in r.headers["cache-control"]
        body = r.json()
        assert body["history"] == []
        assert {i["purpose"]: i["granted"] for i in body["consents"]} == {
            name: p.default for name, p in PURPOSES.items()
        }
        for granted in (True, False):
            r = c.put("/api/v1/users/me/consents/marketing", json={"granted": granted},
                      headers=auth)  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["purpose"] == "marketing" and r.json()["granted"] is granted
            assert r.json()["source"] == "api" and r.json()["at"]
        body = c.get("/api/v1/users/me/consents", headers=auth).json()
    assert [(h["purpose"], h["granted"]) for h in body["history"]] == [
        ("marketing", True),
        ("marketing", False),
    ]
    current = {i["purpose"]: i for i in body["consents"]}
    assert current["marketing"]["granted"] is False and current["marketing"]["source"] == "api"
    assert current["analytics"]["at"] is None


def test_an_unknown_purpose_is_404(gw: Gateway) -> None:
    _, auth = new_user(gw)
    with gw.client() as c:
        for purpose in ("profiling", "ANALYTICS", "analytics%20"):
            r = c.put(f"/api/v1/users/me/consents/{purpose}", json={"granted": True},
                      headers=auth)  # fmt: skip
            assert "purposes: analytics, marketing" in _problem(r, 404)["detail"]


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"granted": "yes"}', b'{"granted": 1}', b'{"granted": null}', b"[]",
     b'{"granted": true, "source": "admin"}'],
)  # fmt: skip
def test_a_bad_body_is_422(gw: Gateway, body: bytes) -> None:
    _, auth = new_user(gw)
    headers = {**auth, "content-type": "application/json"}
    r = httpx.put(gw.url + "/api/v1/users/me/consents/analytics", content=body, headers=headers)
    _problem(r, 422)
    history = httpx.get(gw.url + "/api/v1/users/me/consents", headers=auth).json()["history"]
    assert history == []


def test_a_body_that_is_not_json_is_400(gw: Gateway) -> None:
    _, auth = new_user(gw)
    headers = {**auth, "content-type": "application/json"}
    r = httpx.put(gw.url + "/api/v1/users/me/consents/analytics", content=b"not json",
                  headers=headers)  # fmt: skip
    _problem(r, 400)


def test_consents_are_the_callers_own(gw: Gateway) -> None:
    alice, alice_auth = new_user(gw)
    _, bob_auth = new_user(gw)
    with gw.client() as c:
        r = c.put("/api/v1/users/me/consents/analytics", json={"granted": False},
                  headers=alice_auth)  # fmt: skip
        assert r.status_code == 200, r.text
        assert c.get("/api/v1/users/me/consents", headers=bob_auth).json()["history"] == []
        # no path names another user's consents
        for path in (
            f"/api/v1/users/{alice}/consents",
            f"/api/v1/users/{alice}/consents/analytics",
        ):
            assert c.get(path, headers=bob_auth).status_code in (404, 405)
            assert c.put(path, json={"granted": True}, headers=bob_auth).status_code in (404, 405)
        assert c.get("/api/v1/users/me/consents").status_code == 401
        history = c.get("/api/v1/users/me/consents", headers=alice_auth).json()["history"]
    assert [(h["purpose"], h["granted"]) for h in history] == [("analytics", False)]


def test_the_analytics_consumer_leaves_out_users_who_refused(gw: Gateway, test_db_dsn: str) -> None:
    kind = f"order.privacy{secrets.token_hex(3)}"
    counting, _ = new_user(gw)
    refusing, refusing_auth = new_user(gw)
    with gw.client() as c:
        r = c.put("/api/v1/users/me/consents/analytics", json={"granted": False},
                  headers=refusing_auth)  # fmt: skip
        assert r.status_code == 200, r.text
    write(
        test_db_dsn,
        (kind, {"order_id": str(uuid.uuid4()), "user_id": refusing, "total_cents": 700}),
        (kind, {"order_id": str(uuid.uuid4()), "user_id": counting, "total_cents": 300}),
        (kind, {"order_id": str(uuid.uuid4()), "user_id": None, "total_cents": 5}),
    )
    admin = admin_headers(gw)

    def counted() -> list[dict[str, Any]]:
        r = httpx.get(gw.url + "/admin/analytics", headers=admin)
        assert r.status_code == 200, r.text
        return [i for i in r.json()["items"] if i["event_type"] == kind]

    def processed() -> int:
        rows = query(test_db_dsn, "SELECT count(*) AS n FROM processed_events p JOIN outbox o "
                     "ON o.id = p.event_id WHERE o.event_type = $1 AND p.consumer = 'analytics'",
                     kind)  # fmt: skip
        return int(rows[0]["n"])

    eventually(lambda: processed() == 3, "the analytics consumer")
    [item] = counted()
    assert item["events"] == 2 and item["amount_cents"] == 305

    # granted again: later events of the user count
    with gw.client() as c:
        r = c.put("/api/v1/users/me/consents/analytics", json={"granted": True},
                  headers=refusing_auth)  # fmt: skip
        assert r.status_code == 200, r.text
    write(test_db_dsn, (kind, {"order_id": str(uuid.uuid4()), "user_id": refusing,
                               "total_cents": 1000}))  # fmt: skip
    eventually(lambda: processed() == 4, "the analytics consumer")
    [item] = counted()
    assert item["events"] == 3 and item["amount_cents"] == 1305


def test_restricted_values_never_reach_the_debug_log(
    gateway_env: dict[str, str], test_db_dsn: str
) -> None:
    gw = start_gateway(gateway_env, workers=1, extra_env={"CYGATE_LOG_LEVEL": "debug"})
    output = ""
    try:
        email = f"priv-{uuid.uuid4().hex[:12]}@example.com"
        password = f"Pw-{secrets.token_urlsafe(16)}"
        street = f"{secrets.token_hex(6)} Secret Street"
        phone = f"+44{secrets.randbelow(10**9):09d}"
        with gw.client() as c:
            r = c.post("/api/v1/auth/register",
                       json={"email": email, "password": password, "name": "Priv"})  # fmt: skip
            assert r.status_code == 201, r.text
            r = c.post("/api/v1/auth/login", json={"email": email, "password": password})
            assert r.status_code == 200, r.text
            tokens = r.json()
            auth = {"Authorization": f"Bearer {tokens['access_token']}"}
            sql = ("UPDATE products SET stock = 10 WHERE id = (SELECT id FROM products"
                   " ORDER BY id LIMIT 1) RETURNING id")  # fmt: skip
            pid = str(query(test_db_dsn, sql)[0]["id"])
            address = {"name": "Priv", "line1": street, "city": "Leeds", "country": "GB",
                       "phone": phone}  # fmt: skip
            r = c.post("/api/v1/orders",
                       json={"items": [{"product_id": pid, "quantity": 1}],
                             "shipping_address": address},
                       headers={**auth, "Idempotency-Key": uuid.uuid4().hex})  # fmt: skip
            assert r.status_code == 201, r.text
            r = c.post(
                "/api/v1/auth/token",
                data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            )
            assert r.status_code == 200, r.text
            refreshed = r.json()
            assert c.get("/api/v1/users/me/export", headers=auth).status_code == 200
        [row] = query(test_db_dsn, "SELECT password_hash FROM users WHERE email = $1", email)
        password_hash = row["password_hash"]
    finally:
        output = stop_gateway(gw)
    assert "DEBUG" in output  # the log was captured at DEBUG
    secrets_used = {
        "password": password,
        "password hash": password_hash,
        "access token": tokens["access_token"],
        "refresh token": tokens["refresh_token"],
        "refreshed access token": refreshed["access_token"],
        "refreshed refresh token": refreshed["refresh_token"],
        "street": street,
        "phone": phone,
    }
    for what, value in secrets_used.items():
        assert value not in output, f"the {what} is in the log"
    # the signature part of a token alone is a secret too
    for token in (tokens["access_token"], refreshed["access_token"]):
        assert token.rsplit(".", 1)[-1] not in output
    assert not re.search(r"\$argon2", output)


def test_export_includes_consents_and_erasure_deletes_them(gw: Gateway, test_db_dsn: str) -> None:
    user, auth = new_user(gw)
    with gw.client() as c:
        r = c.put("/api/v1/users/me/consents/marketing", json={"granted": True}, headers=auth)
        assert r.status_code == 200, r.text
        export = c.get("/api/v1/users/me/export", headers=auth).json()
        assert [(e["purpose"], e["granted"], e["source"]) for e in export["consents"]] == [
            ("marketing", True, "api")
        ]
        assert "password_hash" not in export["user"]
        assert c.delete("/api/v1/users/me", headers=auth).status_code == 204
    rows = query(test_db_dsn, "SELECT count(*) AS n FROM consents WHERE user_id = $1",
                 uuid.UUID(user))  # fmt: skip
    assert rows[0]["n"] == 0
