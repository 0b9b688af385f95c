"""Identity and access through a real gateway (two Granian workers), black box over HTTP.

The gateway trusts the test's own keys (an Ed25519 and a P-256 private key, an RSA public key)
so the test can mint any token it likes, and an external identity provider played by a real
HTTP server started here. Leeway is 0 and the revocation cache is off, so every answer is
deterministic; ``X-Forwarded-For`` (from the trusted loopback peer) gives each test its own
client address for the login limits.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.acceptance.conftest import Gateway, start_gateway, stop_gateway

from identity_helpers import JWKSServer, jwk, pem_private, pem_public, thumbprint
from jwt_cases import ISSUER, SigningKeys, malicious_cases, token

pytestmark = pytest.mark.acceptance

ADMIN_EMAIL = "root-admin@example.com"
ADMIN_PASSWORD = secrets.token_urlsafe(12)
PER_ACCOUNT = 3
PER_ADDRESS = 6
IDP_ISSUER = "https://idp.example.test"
IDP_AUDIENCE = "cygate-api"
CHALLENGE = 'Bearer error="invalid_token"'


@pytest.fixture(scope="module")
def keys() -> SigningKeys:
    """Test keys whose kids are the RFC 7638 thumbprints the gateway computes."""
    k = SigningKeys()
    k.kids = {alg: thumbprint(k.private(alg).public_key()) for alg in ("EdDSA", "ES256", "RS256")}
    return k


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[JWKSServer, rsa.RSAPrivateKey]]:
    server = JWKSServer()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server.set_keys(jwk(key.public_key(), kid="idp-1", alg="RS256"))
    with server.running():
        yield server, key


def identity_env(key_files: list[str], idp_url: str, **extra: str) -> dict[str, str]:
    provider = {
        "issuer": IDP_ISSUER,
        "jwks_url": idp_url + "/jwks.json",
        "audience": IDP_AUDIENCE,
        "algorithms": ["RS256"],
        "refresh_interval": 3600,
        "min_refresh_interval": 0,
        "allowed_roles": ["customer"],
    }
    return {
        "CYGATE_JWT_KEY_FILES": ",".join(key_files),
        # the issuer the test's own tokens (jwt_cases) name: an explicit, non-derived one
        "CYGATE_JWT_ISSUER": ISSUER,
        "CYGATE_JWT_LEEWAY": "0",
        "CYGATE_JWT_REVOCATION_CACHE_SECONDS": "0.05",
        "CYGATE_ARGON2_TIME_COST": "1",
        "CYGATE_ARGON2_MEMORY_COST": "1024",
        "CYGATE_ADMIN_EMAIL": ADMIN_EMAIL,
        "CYGATE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CYGATE_TRUSTED_PROXIES": "127.0.0.1",
        "CYGATE_LOGIN_MAX_FAILURES_PER_ACCOUNT": str(PER_ACCOUNT),
        "CYGATE_LOGIN_MAX_FAILURES_PER_ADDRESS": str(PER_ADDRESS),
        "CYGATE_IDENTITY_PROVIDERS": json.dumps([provider]),
        **extra,
    }


@pytest.fixture(scope="module")
def key_files(keys: SigningKeys, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("keys")
    return [
        pem_private(keys.ed, folder / "ed25519.pem"),
        pem_private(keys.ec, folder / "p256.pem"),
        pem_public(keys.rsa, folder / "rsa-public.pem"),
    ]


@pytest.fixture(scope="module")
def gw(
    gateway_env: dict[str, str],
    seeded: dict[str, object],
    key_files: list[str],
    idp: tuple[JWKSServer, Any],
) -> Iterator[Gateway]:
    gateway = start_gateway(gateway_env, extra_env=identity_env(key_files, idp[0].url))
    try:
        yield gateway
    finally:
        output = stop_gateway(gateway)
        assert "Traceback" not in output, output


def client(gw: Gateway, address: str | None = None) -> httpx.Client:
    """A client with a client address of its own (X-Forwarded-For, trusted from loopback)."""
    address = address or f"198.51.100.{secrets.randbelow(250) + 1}"
    return gw.client(headers={"x-forwarded-for": address})


def new_address() -> str:
    return f"203.0.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


def register(c: httpx.Client, **fields: Any) -> tuple[dict[str, Any], str, str]:
    email = fields.pop("email", f"user-{uuid.uuid4().hex[:12]}@example.com")
    password = fields.pop("password", secrets.token_urlsafe(12))
    r = c.post(
        "/api/v1/auth/register",
        json={"email": email, "password": password, "name": "Test User", **fields},
    )
    assert r.status_code == 201, r.text
    return r.json(), email, password


def login(c: httpx.Client, email: str, password: str) -> dict[str, Any]:
    r = c.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return dict(r.json())


def bearer(tok: str | bytes) -> dict[str, str]:
    return {"authorization": "Bearer " + (tok.decode() if isinstance(tok, bytes) else tok)}


def new_user(gw: Gateway) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """A registered, logged-in customer: (user, tokens, email, password)."""
    with client(gw, new_address()) as c:
        user, email, password = register(c)
        return user, login(c, email, password), email, password


def is_problem(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["request_id"] == r.headers["x-request-id"]


def is_revoked(c: httpx.Client, access_token: str) -> None:
    """A revoked access token is refused by every worker within the revocation feed's interval
    (0.05 s here) plus a round trip: by the worker that revoked it at once, by the other worker
    (two per gateway) or another gateway at its next read of the feed."""
    deadline = time.monotonic() + 2
    while True:
        r = c.get("/api/v1/users/me", headers=bearer(access_token))
        if r.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    is_problem(r, 401)


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def db(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(fetch(dsn, sql, *args))


# ---------------------------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------------------------


def test_register_and_profile(gw: Gateway) -> None:
    with client(gw) as c:
        user, _, password = register(c, email="New.Person@Example.COM")
        assert set(user) == {"id", "email", "name", "roles", "created_at"}
        assert user["email"] == "new.person@example.com" and user["roles"] == ["customer"]
        uuid.UUID(user["id"])
        tokens = login(c, "NEW.person@example.com", password)
        r = c.get("/api/v1/users/me", headers=bearer(tokens["access_token"]))
        assert r.status_code == 200 and r.json() == user
        assert "private" in r.headers["cache-control"]
        r = c.patch(
            "/api/v1/users/me", json={"name": "Renamed"}, headers=bearer(tokens["access_token"])
        )
        assert r.status_code == 200 and r.json()["name"] == "Renamed"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@example.com", "password": "short"}, "body.password"),
        ({"email": "not-an-email", "password": "long enough pass"}, "body.email"),
        ({"email": "a@b", "password": "long enough pass"}, "body.email"),
        ({"password": "long enough pass"}, "body.email"),
        (
            {"email": "x@example.com", "password": "long enough pass", "roles": ["admin"]},
            "body.roles",
        ),
        (
            {"email": "x@example.com", "password": "long enough pass", "id": str(uuid.uuid4())},
            "body.id",
        ),
        ({"email": "x@example.com", "password": "p" * 2000}, "body.password"),
        ({"email": 5, "password": "long enough pass"}, "body.email"),
    ],
)
def test_register_refuses_bad_input(gw: Gateway, body: dict[str, Any], field: str) -> None:
    with client(gw) as c:
        r = c.post("/api/v1/auth/register", json=body)
    is_problem(r, 422)
    assert field in [e["field"] for e in r.json()["errors"]], r.json()


def test_oversized_auth_body_is_413(gw: Gateway) -> None:
    with client(gw) as c:
        r = c.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "x" * 20000})
    is_problem(r, 413)


def test_register_malformed_json_is_400(gw: Gateway) -> None:
    with client(gw) as c:
        r = c.post(
            "/api/v1/auth/register", content=b"{nope", headers={"content-type": "application/json"}
        )
    is_problem(r, 400)


def test_email_taken_whatever_its_case(gw: Gateway) -> None:
    with client(gw) as c:
        _, email, _ = register(c)
        r = c.post(
            "/api/v1/auth/register", json={"email": email.upper(), "password": "another password"}
        )
    is_problem(r, 409)


def test_no_self_service_roles(gw: Gateway) -> None:
    """A customer cannot write its roles (422) nor call the admin's role change (403)."""
    user, tokens, _, _ = new_user(gw)
    auth = bearer(tokens["access_token"])
    with client(gw) as c:
        r = c.patch("/api/v1/users/me", json={"name": "x", "roles": ["admin"]}, headers=auth)
        is_problem(r, 422)
        assert r.json()["errors"][0]["field"] == "body.roles"
        for body in ({"name": "x", "email": "e@example.com"}, {"name": "x", "id": "y"}, {}):
            is_problem(c.patch("/api/v1/users/me", json=body, headers=auth), 422)
        r = c.patch(f"/api/v1/users/{user['id']}/roles", json={"roles": ["admin"]}, headers=auth)
        is_problem(r, 403)
        assert r.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
        assert c.get("/api/v1/users/me", headers=auth).json()["roles"] == ["customer"]


# ---------------------------------------------------------------------------------------------
# Login: identical failures, limits
# ---------------------------------------------------------------------------------------------


def _comparable(r: httpx.Response) -> tuple[int, dict[str, Any], set[str]]:
    body = r.json()
    body.pop("request_id")
    ignore = {"x-request-id", "traceparent", "date", "ratelimit-remaining", "ratelimit-reset"}
    return r.status_code, body, {h for h in r.headers if h not in ignore}


def test_login_failures_look_the_same(gw: Gateway) -> None:
    _, _, email, _ = new_user(gw)
    with client(gw, new_address()) as c:
        wrong_password = c.post("/api/v1/auth/login", json={"email": email, "password": "nope"})
    with client(gw, new_address()) as c:
        no_account = c.post(
            "/api/v1/auth/login", json={"email": "nobody-" + email, "password": "nope"}
        )
    is_problem(wrong_password, 401)
    assert _comparable(wrong_password) == _comparable(no_account)
    assert (
        wrong_password.headers["ratelimit-remaining"] == no_account.headers["ratelimit-remaining"]
    )


def test_login_refused_per_account(gw: Gateway) -> None:
    _, _, email, password = new_user(gw)
    for i in range(PER_ACCOUNT):
        with client(gw, new_address()) as c:  # a new address each time: the account counts
            r = c.post("/api/v1/auth/login", json={"email": email, "password": f"wrong-{i}"})
            is_problem(r, 401)
            assert r.headers["ratelimit-limit"] == str(PER_ACCOUNT)
    with client(gw, new_address()) as c:
        r = c.post("/api/v1/auth/login", json={"email": email, "password": password})
    is_problem(r, 429)
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["ratelimit-remaining"] == "0"
    # the same for an email without an account
    ghost = "ghost-" + email
    answers = []
    for _ in range(PER_ACCOUNT + 1):
        with client(gw, new_address()) as c:
            answers.append(
                c.post("/api/v1/auth/login", json={"email": ghost, "password": "x"}).status_code
            )
    assert answers == [401] * PER_ACCOUNT + [429]


def test_login_refused_per_address(gw: Gateway) -> None:
    address = new_address()
    with client(gw, address) as c:
        codes = [
            c.post(
                "/api/v1/auth/login",
                json={"email": f"n{i}-{uuid.uuid4().hex}@example.com", "password": "x"},
            ).status_code
            for i in range(PER_ADDRESS + 1)
        ]
    assert codes == [401] * PER_ADDRESS + [429]
    _, _, email, password = new_user(gw)
    with client(gw, address) as c:
        is_problem(c.post("/api/v1/auth/login", json={"email": email, "password": password}), 429)
    with client(gw, new_address()) as c:  # another address is not affected
        assert (
            c.post("/api/v1/auth/login", json={"email": email, "password": password}).status_code
            == 200
        )


def test_login_bad_input(gw: Gateway) -> None:
    with client(gw) as c:
        is_problem(c.post("/api/v1/auth/login", json={"email": "a@example.com"}), 422)
        is_problem(
            c.post(
                "/api/v1/auth/login",
                json={"email": "a@example.com", "password": "x", "remember": True},
            ),
            422,
        )
        is_problem(c.post("/api/v1/auth/login", json=[1, 2]), 422)


# ---------------------------------------------------------------------------------------------
# Access tokens: the token the gateway signs, and every malicious token refused
# ---------------------------------------------------------------------------------------------


def test_issued_access_token_is_rfc9068(gw: Gateway, keys: SigningKeys) -> None:
    user, tokens, _, _ = new_user(gw)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] > 0
    with client(gw) as c:
        jwks = c.get("/.well-known/jwks.json")
    assert jwks.status_code == 200 and "public" in jwks.headers["cache-control"]
    published = {k["kid"]: k for k in jwks.json()["keys"]}
    assert set(published) == set(keys.kids.values())
    for key in published.values():
        assert key["use"] == "sig" and key["alg"] in ("EdDSA", "ES256", "RS256")
    header = pyjwt.get_unverified_header(tokens["access_token"])
    assert header["typ"] == "at+jwt" and header["kid"] in published
    # an upstream service verifies it with the published key alone
    signing_key = pyjwt.PyJWK(published[header["kid"]])
    claims = pyjwt.decode(
        tokens["access_token"],
        signing_key,
        algorithms=[header["alg"]],
        audience="cygate",
        issuer=ISSUER,
    )
    assert {"iss", "aud", "sub", "exp", "iat", "jti", "client_id", "roles"} <= set(claims)
    assert claims["client_id"] == "cygate"
    assert claims["sub"] == user["id"] and claims["roles"] == ["customer"]


def test_tokens_signed_by_every_trusted_key(gw: Gateway, keys: SigningKeys) -> None:
    """EdDSA and ES256 (private key files) and RS256 (a verify-only public key file)."""
    user, _, _, _ = new_user(gw)
    with client(gw) as c:
        for alg in ("EdDSA", "ES256", "RS256"):
            tok = keys.good(alg, sub=user["id"], jti=f"{alg}-{uuid.uuid4()}")
            r = c.get("/api/v1/users/me", headers=bearer(tok))
            assert r.status_code == 200 and r.json()["id"] == user["id"], (alg, r.text)


def test_missing_or_non_bearer_token(gw: Gateway) -> None:
    with client(gw) as c:
        for headers in (
            {},
            {"authorization": "Basic dXNlcjpwYXNz"},
            {"authorization": "Bearer"},
            {"authorization": "bearer"},
            {"authorization": "Token abc"},
        ):
            r = c.get("/api/v1/users/me", headers=headers)
            is_problem(r, 401)
            assert r.headers["www-authenticate"] == CHALLENGE


def test_every_malicious_token_is_401(gw: Gateway, keys: SigningKeys) -> None:
    """The issue's whole list (tests/jwt_cases.py), through HTTP: 401 with the RFC 6750
    challenge, never a 500. The same cases run on both verifiers in tests/unit/core."""
    cases = malicious_cases(keys)
    wrong = []
    sent = 0
    with client(gw) as c:
        for case in cases:
            try:
                r = c.get("/api/v1/users/me", headers={"authorization": b"Bearer " + case.token})
            except httpx.LocalProtocolError:
                assert case.id in ("nul-byte", "empty")  # not sendable as a header value
                continue
            sent += 1
            ok = (
                r.status_code == 401
                and r.headers.get("www-authenticate") == CHALLENGE
                and r.headers["content-type"].startswith("application/problem+json")
            )
            if not ok:
                wrong.append((case.id, r.status_code, r.text[:200]))
            elif case.reason not in ("bad_signature",) and case.reason != "too_large":
                assert case.reason in r.json()["detail"] or "expired" in r.json()["detail"]
    assert not wrong, wrong
    assert sent >= len(cases) - 2 and len(cases) > 120


def test_token_keys_are_never_fetched(gw: Gateway, keys: SigningKeys) -> None:
    """jku/x5u pointing at a live server: the token is refused and the server never called."""
    spy = JWKSServer()
    with spy.running(), client(gw) as c:
        for member in ("jku", "x5u"):
            for kid in ("attacker", keys.kids["EdDSA"]):
                header = keys.header() | {member: spy.url + "/jwks.json", "kid": kid}
                tok = token(header, keys.claims(), "EdDSA", keys.evil_ed)
                r = c.get("/api/v1/users/me", headers=bearer(tok))
                is_problem(r, 401)
        assert spy.requests == []


def test_role_gate(gw: Gateway) -> None:
    with client(gw) as c:
        admin = login(c, ADMIN_EMAIL, ADMIN_PASSWORD)
        is_problem(c.get("/api/v1/users"), 401)
        r = c.get("/api/v1/users", params={"limit": 2}, headers=bearer(admin["access_token"]))
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) == 2 and page["next_cursor"]
        r2 = c.get(
            "/api/v1/users",
            params={"limit": 2, "cursor": page["next_cursor"]},
            headers=bearer(admin["access_token"]),
        )
        assert r2.status_code == 200
        ids = [u["id"] for u in page["items"] + r2.json()["items"]]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        for params in (
            {"limit": 101},
            {"limit": 0},
            {"cursor": "not-a-cursor"},
            {"cursor": "A" * 22 + "x"},
        ):
            is_problem(
                c.get("/api/v1/users", params=params, headers=bearer(admin["access_token"])), 422
            )


def test_admin_changes_roles(gw: Gateway, test_db_dsn: str) -> None:
    user, tokens, _, _ = new_user(gw)
    with client(gw) as c:
        admin = bearer(login(c, ADMIN_EMAIL, ADMIN_PASSWORD)["access_token"])
        path = f"/api/v1/users/{user['id']}/roles"
        is_problem(c.patch(path, json={"roles": ["superuser"]}, headers=admin), 422)
        is_problem(c.patch(path, json={"roles": ["admin"], "x": 1}, headers=admin), 422)
        is_problem(
            c.patch(f"/api/v1/users/{uuid.uuid4()}/roles", json={"roles": []}, headers=admin), 404
        )
        is_problem(
            c.patch("/api/v1/users/not-a-uuid/roles", json={"roles": []}, headers=admin), 422
        )
        r = c.patch(path, json={"roles": ["catalog_manager", "customer"]}, headers=admin)
        assert r.status_code == 200 and r.json()["roles"] == ["catalog_manager", "customer"]
        # the old token (old roles) stops working; a refresh carries the new roles
        is_revoked(c, tokens["access_token"])
        r = c.post(
            "/api/v1/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        )
        assert r.status_code == 200, r.text
        claims = pyjwt.decode(r.json()["access_token"], options={"verify_signature": False})
        assert claims["roles"] == ["catalog_manager", "customer"]
    rows = db(
        test_db_dsn,
        "SELECT details FROM audit_log WHERE action = 'role_change' AND target = $1",
        user["id"],
    )
    assert rows and json.loads(rows[-1]["details"]) == {
        "before": ["customer"],
        "after": ["catalog_manager", "customer"],
    }


# ---------------------------------------------------------------------------------------------
# Refresh tokens: rotation, reuse, concurrency, revocation
# ---------------------------------------------------------------------------------------------


def refresh(c: httpx.Client, tok: str) -> httpx.Response:
    return c.post("/api/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": tok})


def test_rotation_and_reuse_revokes_the_family(gw: Gateway, test_db_dsn: str) -> None:
    user, first, _, _ = new_user(gw)
    with client(gw) as c:
        r = refresh(c, first["refresh_token"])
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        second = r.json()
        assert second["refresh_token"] != first["refresh_token"]
        assert c.get("/api/v1/users/me", headers=bearer(second["access_token"])).status_code == 200
        third = refresh(c, second["refresh_token"]).json()
        # the first token again: already used, so the whole family goes
        r = refresh(c, first["refresh_token"])
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
        assert r.headers["content-type"] == "application/json"
        assert refresh(c, third["refresh_token"]).json()["error"] == "invalid_grant"
        for tok in (second, third):
            is_revoked(c, tok["access_token"])
    rows = db(
        test_db_dsn,
        "SELECT count(*) AS n FROM audit_log WHERE action = 'refresh_reuse' AND actor_id = $1",
        uuid.UUID(user["id"]),
    )
    assert rows[0]["n"] == 1


def test_family_lifetime_is_never_extended(gw: Gateway, test_db_dsn: str) -> None:
    user, tokens, _, _ = new_user(gw)
    with client(gw) as c:
        for _ in range(3):
            tokens = refresh(c, tokens["refresh_token"]).json()
    rows = db(
        test_db_dsn,
        "SELECT family_id, family_expires_at, expires_at, parent_id"
        " FROM refresh_tokens WHERE user_id = $1 ORDER BY issued_at",
        uuid.UUID(user["id"]),
    )
    assert len(rows) == 4 and len({r["family_id"] for r in rows}) == 1
    assert len({r["family_expires_at"] for r in rows}) == 1
    assert all(r["expires_at"] <= r["family_expires_at"] for r in rows)
    assert [r["parent_id"] is None for r in rows] == [True, False, False, False]
    # once the family's absolute lifetime is over, the newest token is dead too
    db(
        test_db_dsn,
        "UPDATE refresh_tokens SET family_expires_at = now(), expires_at = now()"
        " WHERE user_id = $1",
        uuid.UUID(user["id"]),
    )
    with client(gw) as c:
        assert refresh(c, tokens["refresh_token"]).json()["error"] == "invalid_grant"


async def _race(urls: list[str], tok: str) -> list[int]:
    async with httpx.AsyncClient(timeout=20) as ac:

        async def one(url: str) -> int:
            r = await ac.post(
                url + "/api/v1/auth/token",
                data={"grant_type": "refresh_token", "refresh_token": tok},
            )
            return r.status_code

        return list(await asyncio.gather(*(one(u) for u in urls)))


def test_twenty_concurrent_refreshes_one_success(gw: Gateway) -> None:
    _, tokens, _, _ = new_user(gw)
    codes = asyncio.run(_race([gw.url] * 20, tokens["refresh_token"]))
    assert sorted(codes) == [200] + [400] * 19, codes


def test_concurrent_refreshes_across_two_gateways(
    gw: Gateway, gateway_env: dict[str, str], key_files: list[str], idp: tuple[JWKSServer, Any]
) -> None:
    other = start_gateway(gateway_env, extra_env=identity_env(key_files, idp[0].url))
    try:
        for _ in range(3):
            _, tokens, _, _ = new_user(gw)
            codes = asyncio.run(_race([gw.url, other.url] * 10, tokens["refresh_token"]))
            assert sorted(codes) == [200] + [400] * 19, codes
        # a token revoked through one gateway is refused by the other
        _, tokens, _, _ = new_user(other)
        with other.client() as c:
            assert (
                c.get("/api/v1/users/me", headers=bearer(tokens["access_token"])).status_code == 200
            )
        with client(gw) as c:
            assert (
                c.post("/api/v1/auth/revoke", data={"token": tokens["refresh_token"]}).status_code
                == 200
            )
        with other.client() as c:
            is_revoked(c, tokens["access_token"])
            assert refresh(c, tokens["refresh_token"]).status_code == 400
    finally:
        stop_gateway(other)


def test_revoke_rfc7009(gw: Gateway) -> None:
    _, tokens, _, _ = new_user(gw)
    with client(gw) as c:
        r = c.post(
            "/api/v1/auth/revoke",
            data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        )
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        assert refresh(c, tokens["refresh_token"]).json()["error"] == "invalid_grant"
        is_revoked(c, tokens["access_token"])
        for junk in ("garbage", "a.b.c", "x" * 10_000, tokens["refresh_token"]):
            assert c.post("/api/v1/auth/revoke", data={"token": junk}).status_code == 200
        r = c.post("/api/v1/auth/revoke", data={})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"
        # an access token may be revoked by itself
        _, other, _, _ = new_user(gw)
        assert (
            c.post("/api/v1/auth/revoke", data={"token": other["access_token"]}).status_code == 200
        )
        is_revoked(c, other["access_token"])
        assert refresh(c, other["refresh_token"]).status_code == 200  # the session goes on


@pytest.mark.parametrize(
    ("data", "headers", "status", "error"),
    [
        ("grant_type=password&username=a&password=b", None, 400, "unsupported_grant_type"),
        ("refresh_token=x", None, 400, "invalid_request"),
        ("grant_type=refresh_token", None, 400, "invalid_request"),
        ("grant_type=refresh_token&refresh_token=nope", None, 400, "invalid_grant"),
        ("grant_type=refresh_token&refresh_token=" + "x" * 300, None, 400, "invalid_grant"),
        (
            "grant_type=refresh_token&grant_type=refresh_token&refresh_token=x",
            None,
            400,
            "invalid_request",
        ),
        (
            '{"grant_type":"refresh_token"}',
            {"content-type": "application/json"},
            400,
            "invalid_request",
        ),
        (b"grant_type=refresh_token&refresh_token=\xff", None, 400, "invalid_request"),
        (
            "grant_type=client_credentials&client_id=nobody&client_secret=x",
            None,
            401,
            "invalid_client",
        ),
        ("grant_type=client_credentials", None, 401, "invalid_client"),
        ("grant_type=client_credentials", {"authorization": "Basic !!!"}, 400, "invalid_request"),
        (
            "grant_type=client_credentials",
            {"authorization": "Basic " + base64.b64encode(b"nobody:x").decode()},
            401,
            "invalid_client",
        ),
    ],
)
def test_token_endpoint_errors(
    gw: Gateway, data: str | bytes, headers: dict[str, str] | None, status: int, error: str
) -> None:
    hdrs = {"content-type": "application/x-www-form-urlencoded", **(headers or {})}
    with client(gw) as c:
        r = c.post("/api/v1/auth/token", content=data, headers=hdrs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"  # RFC 6749 §5.2, not problem+json
    assert r.headers["cache-control"] == "no-store"
    assert r.json()["error"] == error
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Basic")


def test_client_credentials(gw: Gateway) -> None:
    client_id = f"svc-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cygate",
            "create-client",
            "--client-id",
            client_id,
            "--roles",
            "catalog_manager",
        ],
        env=gw.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    secret = out.split("client_secret=", 1)[1].strip()
    with client(gw) as c:
        for kwargs in (
            {
                "data": {
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": secret,
                }
            },
            {"data": {"grant_type": "client_credentials"}, "auth": (client_id, secret)},
        ):
            r = c.post("/api/v1/auth/token", **kwargs)  # type: ignore[arg-type]
            assert r.status_code == 200, r.text
            body = r.json()
            assert "refresh_token" not in body and body["token_type"] == "Bearer"
            claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
            assert claims["sub"] == claims["client_id"] == client_id
            assert claims["roles"] == ["catalog_manager"]
        auth = bearer(body["access_token"])
        is_problem(c.get("/api/v1/users/me", headers=auth), 404)  # authenticated, not a user
        is_problem(c.get("/api/v1/users", headers=auth), 403)
        r = c.post(
            "/api/v1/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": "wrong",
            },
        )
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"
        r = c.post(
            "/api/v1/auth/token",
            data={"grant_type": "client_credentials", "client_id": client_id},
            auth=(client_id, secret),
        )
        assert r.status_code == 400  # two ways of client authentication at once


# ---------------------------------------------------------------------------------------------
# External identity provider (a real HTTP server started by the test)
# ---------------------------------------------------------------------------------------------


def idp_token(key: Any, kid: str, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": IDP_ISSUER,
        "aud": IDP_AUDIENCE,
        "sub": "idp|alice",
        "exp": now + 300,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "roles": ["customer", "admin"],
        **claims,
    }
    return pyjwt.encode(body, key, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})


def test_external_provider_tokens(gw: Gateway, idp: tuple[JWKSServer, Any]) -> None:
    server, key = idp
    with client(gw) as c:
        tok = idp_token(key, "idp-1")
        # authenticated (not a local account: 404), and the provider may not grant admin
        is_problem(c.get("/api/v1/users/me", headers=bearer(tok)), 404)
        is_problem(c.get("/api/v1/users", headers=bearer(tok)), 403)
        # a provider's subject that looks like one of our user ids is still the provider's
        user, _, _, _ = new_user(gw)
        for _ in range(2):  # the second one could only be a (wrong) cache hit
            r = c.get("/api/v1/users/me", headers=bearer(idp_token(key, "idp-1", sub=user["id"])))
            is_problem(r, 404)
            assert user["email"] not in r.text
        # the provider's token for another audience, or signed by another key: 401
        is_problem(c.get("/api/v1/users/me", headers=bearer(idp_token(key, "idp-1", aud="x"))), 401)
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        is_problem(c.get("/api/v1/users/me", headers=bearer(idp_token(other, "idp-1"))), 401)
        # the provider rotates: a new kid is fetched on first sight
        new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        server.set_keys(
            jwk(key.public_key(), kid="idp-1", alg="RS256"),
            jwk(new_key.public_key(), kid="idp-2", alg="RS256"),
        )
        is_problem(c.get("/api/v1/users/me", headers=bearer(idp_token(new_key, "idp-2"))), 404)
        # the provider goes down: the last good keys keep working. (idp-1 is known to both
        # workers since start-up; which worker learnt idp-2 depends on the connection, so the
        # integration test checks both keys on one ProviderKeys deterministically.)
        server.status, server.body = 503, b"down"
        for _ in range(4):
            with client(gw) as fresh:  # new connections: either worker
                r = fresh.get("/api/v1/users/me", headers=bearer(idp_token(key, "idp-1")))
                is_problem(r, 404)
        is_problem(c.get("/api/v1/users/me", headers=bearer(idp_token(other, "idp-3"))), 401)
        server.set_keys(jwk(key.public_key(), kid="idp-1", alg="RS256"))


# ---------------------------------------------------------------------------------------------
# GDPR
# ---------------------------------------------------------------------------------------------


def test_export(gw: Gateway) -> None:
    user, tokens, _, _ = new_user(gw)
    with client(gw) as c:
        r = c.get("/api/v1/users/me/export", headers=bearer(tokens["access_token"]))
    assert r.status_code == 200 and "private" in r.headers["cache-control"]
    doc = r.json()
    assert doc["user"]["id"] == user["id"] and doc["user"]["email"] == user["email"]
    assert {"profile", "orders", "sessions", "security_events"} <= set(doc)
    assert [e["action"] for e in doc["security_events"]][:2] == ["register", "login"]
    assert len(doc["sessions"]) == 1
    assert "token_hash" not in r.text and "password" not in r.text


def test_erasure(gw: Gateway, test_db_dsn: str) -> None:
    user, tokens, email, password = new_user(gw)
    user_id = uuid.UUID(user["id"])
    order_id = uuid.uuid4()
    db(
        test_db_dsn,
        "INSERT INTO profiles (user_id, phone, default_address)"
        " VALUES ($1, '+49 30 1234567', '{\"street\": \"Main St 1\"}')",
        user_id,
    )
    db(
        test_db_dsn,
        "INSERT INTO orders (id, user_id, total_cents, currency, shipping_address)"
        " VALUES ($1, $2, 1999, 'EUR', '{\"street\": \"Main St 1\"}')",
        order_id,
        user_id,
    )
    with client(gw) as c:
        auth = bearer(tokens["access_token"])
        r = c.delete("/api/v1/users/me", headers=auth)
        assert r.status_code == 204, r.text
        is_revoked(c, tokens["access_token"])
        assert refresh(c, tokens["refresh_token"]).json()["error"] == "invalid_grant"
        is_problem(c.post("/api/v1/auth/login", json={"email": email, "password": password}), 401)
        register(c, email=email)  # the address is free again: nothing of it is kept
    row = db(
        test_db_dsn,
        "SELECT email, password_hash, name, erased_at FROM users WHERE id = $1",
        user_id,
    )[0]
    assert (row["email"], row["password_hash"], row["name"]) == (None, None, "")
    assert row["erased_at"] is not None
    assert not db(test_db_dsn, "SELECT 1 FROM profiles WHERE user_id = $1", user_id)
    assert not db(test_db_dsn, "SELECT 1 FROM refresh_tokens WHERE user_id = $1", user_id)
    order = db(
        test_db_dsn,
        "SELECT user_id, shipping_address, total_cents FROM orders WHERE id = $1",
        order_id,
    )[0]
    assert (order["user_id"], order["shipping_address"], order["total_cents"]) == (None, None, 1999)
    actions = [
        r["action"]
        for r in db(
            test_db_dsn,
            "SELECT action, client_ip FROM audit_log WHERE actor_id = $1 ORDER BY id",
            user_id,
        )
    ]
    assert actions[-1] == "erasure" and "login" in actions
    assert all(
        r["client_ip"] is None
        for r in db(test_db_dsn, "SELECT client_ip FROM audit_log WHERE actor_id = $1", user_id)
    )


def test_security_events_are_audited(gw: Gateway, test_db_dsn: str) -> None:
    _, _, email, _ = new_user(gw)
    with client(gw, "192.0.2.77") as c:
        c.post("/api/v1/auth/login", json={"email": email, "password": "wrong password"})
    rows = db(
        test_db_dsn,
        "SELECT action, host(client_ip) AS ip, details FROM audit_log"
        " WHERE action IN ('login_failed', 'admin_bootstrap') ORDER BY id",
    )
    assert any(r["action"] == "admin_bootstrap" for r in rows)
    failed = [r for r in rows if r["action"] == "login_failed" and r["ip"] == "192.0.2.77"]
    assert failed and "email_sha256" in json.loads(failed[-1]["details"])
    assert email not in json.dumps([dict(r) for r in rows], default=str)


def test_admin_bootstrap_resets_password(
    gateway_env: dict[str, str], key_files: list[str], idp: tuple[JWKSServer, Any], gw: Gateway
) -> None:
    """A restart with another CYGATE_ADMIN_PASSWORD resets it (and the role) in place."""
    new_password = secrets.token_urlsafe(12)
    env = identity_env(key_files, idp[0].url, CYGATE_ADMIN_PASSWORD=new_password)
    other = start_gateway(gateway_env, workers=1, extra_env=env)
    try:
        with other.client(headers={"x-forwarded-for": new_address()}) as c:
            assert (
                c.post(
                    "/api/v1/auth/login", json={"email": ADMIN_EMAIL, "password": new_password}
                ).status_code
                == 200
            )
            is_problem(
                c.post(
                    "/api/v1/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
                ),
                401,
            )
    finally:
        stop_gateway(other)
    restored = start_gateway(gateway_env, workers=1, extra_env=identity_env(key_files, idp[0].url))
    stop_gateway(restored)


def test_generated_development_key(
    gateway_env: dict[str, str], tmp_path: pathlib.Path, seeded: dict[str, object]
) -> None:
    """No key file listed: a key is generated once under jwt_key_dir, shared by the workers,
    and reused on the next start (same kid)."""
    env = {
        "CYGATE_JWT_KEY_DIR": str(tmp_path / "keys"),
        "CYGATE_ARGON2_MEMORY_COST": "1024",
        "CYGATE_ARGON2_TIME_COST": "1",
    }
    kids = []
    for _ in range(2):
        gateway = start_gateway(gateway_env, workers=2, extra_env=env)
        try:
            with gateway.client() as c:
                kids.append({k["kid"] for k in c.get("/.well-known/jwks.json").json()["keys"]})
                _, email, password = register(c)
                tok = login(c, email, password)["access_token"]
                for _ in range(6):  # both workers verify what one signed
                    assert c.get("/api/v1/users/me", headers=bearer(tok)).status_code == 200
        finally:
            stop_gateway(gateway)
    assert kids[0] == kids[1] and len(kids[0]) == 1
    # the development MFA key is generated next to the signing key (docs/identity.md)
    names = sorted(p.name for p in (tmp_path / "keys").iterdir())
    assert names == ["mfa.key", "signing-eddsa.pem"]


def test_profile_same_bytes_on_both_paths(
    gw: Gateway,
    gateway_env: dict[str, str],
    key_files: list[str],
    idp: tuple[JWKSServer, Any],
    keys: SigningKeys,
) -> None:
    """GET /users/me from the edge's fast handler and from Litestar: the same answer."""
    env = identity_env(key_files, idp[0].url, CYGATE_EDGE_FAST_PATHS="false")
    slow = start_gateway(gateway_env, workers=1, extra_env=env)
    try:
        user, tokens, _, _ = new_user(gw)
        auth = bearer(tokens["access_token"])
        with client(gw) as a, slow.client() as b:
            fast_r = a.get("/api/v1/users/me", headers=auth)
            slow_r = b.get("/api/v1/users/me", headers=auth)
            assert fast_r.status_code == slow_r.status_code == 200
            assert fast_r.content == slow_r.content and fast_r.json() == user
            for name in ("content-type", "cache-control"):
                assert fast_r.headers[name] == slow_r.headers[name], name
            # a valid token whose subject has no account: 404 on both, the same problem
            nobody = bearer(keys.good(sub=str(uuid.uuid4())))
            docs = []
            for r in (
                a.get("/api/v1/users/me", headers=nobody),
                b.get("/api/v1/users/me", headers=nobody),
            ):
                is_problem(r, 404)
                doc = r.json()
                doc.pop("request_id")
                docs.append(doc)
            assert docs[0] == docs[1]
    finally:
        stop_gateway(slow)
