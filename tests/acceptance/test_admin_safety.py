"""The last admin stays an admin: role changes through a real gateway over a database of its own.

The session's database has other admins (every test gateway creates one), so these tests run
a gateway over a private database where the start-up admin is the only one to begin with.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from tests.acceptance.conftest import Gateway, start_gateway, stop_gateway
from tests.conftest import migrated_database

pytestmark = pytest.mark.acceptance

ROOT_EMAIL = "only-admin@example.com"
ROOT_PASSWORD = secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def private_dsn() -> Iterator[str]:
    """A migrated database of this module's own, dropped after it."""
    with migrated_database("cygate_admins_") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def gw(gateway_env: dict[str, str], private_dsn: str) -> Iterator[Gateway]:
    gateway = start_gateway(
        gateway_env,
        extra_env={
            "CYGATE_DATABASE_URL": private_dsn,
            "CYGATE_ADMIN_EMAIL": ROOT_EMAIL,
            "CYGATE_ADMIN_PASSWORD": ROOT_PASSWORD,
            "CYGATE_JWT_REVOCATION_CACHE_SECONDS": "0.05",
            "CYGATE_ARGON2_TIME_COST": "1",
            "CYGATE_ARGON2_MEMORY_COST": "1024",
        },
    )
    try:
        yield gateway
    finally:
        output = stop_gateway(gateway)
        assert "Traceback" not in output, output


def login(gw: Gateway, email: str, password: str) -> dict[str, str]:
    r = httpx.post(gw.url + "/api/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def me(gw: Gateway, auth: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(gw.url + "/api/v1/users/me", headers=auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


def set_roles(gw: Gateway, auth: dict[str, str], user_id: str, roles: list[str]) -> httpx.Response:
    return httpx.patch(
        f"{gw.url}/api/v1/users/{user_id}/roles", json={"roles": roles}, headers=auth, timeout=10
    )


def is_conflict(r: httpx.Response) -> None:
    assert r.status_code == 409, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 409 and body["request_id"] == r.headers["x-request-id"]
    assert "admin" in body["detail"]


def admins(dsn: str) -> list[str]:
    async def run() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT email FROM users WHERE 'admin' = ANY(roles) AND erased_at IS NULL"
            )
            return sorted(r["email"] for r in rows)
        finally:
            await conn.close()

    return asyncio.run(run())


def register(gw: Gateway) -> tuple[str, str, str]:
    email = f"second-{uuid.uuid4().hex[:10]}@example.com"
    password = secrets.token_urlsafe(12)
    r = httpx.post(
        gw.url + "/api/v1/auth/register",
        json={"email": email, "password": password, "name": "Second Admin"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"]), email, password


def test_last_admin_keeps_the_role(gw: Gateway, private_dsn: str) -> None:
    """The only admin cannot demote itself, nor change its own roles; with a second admin it
    can; the second admin, now the only one, cannot be demoted."""
    assert admins(private_dsn) == [ROOT_EMAIL]
    root = login(gw, ROOT_EMAIL, ROOT_PASSWORD)
    root_id = me(gw, root)["id"]
    is_conflict(set_roles(gw, root, root_id, ["customer"]))
    is_conflict(set_roles(gw, root, root_id, []))
    is_conflict(set_roles(gw, root, root_id, ["admin", "catalog_manager"]))  # own change
    # erasure takes the role too: the last admin cannot erase itself either
    is_conflict(httpx.delete(gw.url + "/api/v1/users/me", headers=root))
    assert admins(private_dsn) == [ROOT_EMAIL]
    assert me(gw, root)["roles"] == ["admin"]  # nothing changed, the token still works

    second_id, second_email, second_password = register(gw)
    r = set_roles(gw, root, second_id, ["admin"])
    assert r.status_code == 200 and r.json()["roles"] == ["admin"], r.text
    r = set_roles(gw, root, root_id, ["catalog_manager"])  # another admin exists: allowed
    assert r.status_code == 200 and r.json()["roles"] == ["catalog_manager"], r.text
    assert admins(private_dsn) == [second_email]

    second = login(gw, second_email, second_password)
    is_conflict(set_roles(gw, second, second_id, ["customer"]))
    r = set_roles(gw, second, root_id, ["admin"])
    assert r.status_code == 200, r.text
    assert admins(private_dsn) == sorted([ROOT_EMAIL, second_email])
    r = set_roles(gw, login(gw, ROOT_EMAIL, ROOT_PASSWORD), second_id, [])
    assert r.status_code == 200, r.text
    assert admins(private_dsn) == [ROOT_EMAIL]


def test_two_admins_demoting_each_other_at_once_leave_one(gw: Gateway, private_dsn: str) -> None:
    """Race: two admins demote each other (and themselves) in the same instant, many times:
    never zero admins, and never both changes applied."""

    async def round_trip(pairs: list[tuple[dict[str, str], str]]) -> list[int]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
            answers = await asyncio.gather(
                *(
                    c.patch(f"/api/v1/users/{target}/roles", json={"roles": []}, headers=auth)
                    for auth, target in pairs
                )
            )
        return [a.status_code for a in answers]

    a_id, a_email, a_password = register(gw)
    b_id, b_email, b_password = register(gw)
    root_id = me(gw, login(gw, ROOT_EMAIL, ROOT_PASSWORD))["id"]
    for rounds in range(8):
        # A and B are the only admins: root steps down for this round (allowed: two others)
        for uid in (a_id, b_id):
            r = set_roles(gw, login(gw, ROOT_EMAIL, ROOT_PASSWORD), uid, ["admin"])
            assert r.status_code == 200, r.text
        r = set_roles(gw, login(gw, a_email, a_password), root_id, ["customer"])
        assert r.status_code == 200, r.text
        assert admins(private_dsn) == sorted([a_email, b_email])
        auth_a = login(gw, a_email, a_password)
        auth_b = login(gw, b_email, b_password)
        # odd rounds: each demotes the other; even rounds: each demotes itself
        other = [(auth_a, b_id), (auth_b, a_id)]
        pairs = other if rounds % 2 else [(auth_a, a_id), (auth_b, b_id)]
        statuses = asyncio.run(round_trip(pairs))
        left = admins(private_dsn)
        assert len(left) == 1, (statuses, left)
        assert statuses.count(200) == 1, statuses
        # the other was refused (409), or its token was revoked by the change that won (401)
        assert set(statuses) - {200} <= {409, 401}, statuses
        # the survivor makes root an admin again for the next round
        survivor_id, email, password = (
            (a_id, a_email, a_password) if left == [a_email] else (b_id, b_email, b_password)
        )
        r = set_roles(gw, login(gw, email, password), root_id, ["admin"])
        assert r.status_code == 200, r.text
        r = set_roles(gw, login(gw, ROOT_EMAIL, ROOT_PASSWORD), survivor_id, [])
        assert r.status_code == 200, r.text
        assert admins(private_dsn) == [ROOT_EMAIL]
