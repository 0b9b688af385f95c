"""Attribute-based policies through a real gateway: catalog managers may change only products of
their own categories (the ``category_ids`` claim of their token), admins are unaffected, a
changed policy file is picked up without a restart, and one that does not parse keeps the
previous set and is counted."""

from __future__ import annotations

import json
import pathlib
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway
from tests.acceptance.test_catalog_api import assert_problem
from tests.catalog_helpers import created_records, new_caller

from identity_helpers import pem_private
from jwt_cases import SigningKeys

pytestmark = pytest.mark.acceptance

BASE_URL = "https://api.policy.example.test/"
ISSUER = "https://api.policy.example.test"

POLICY = """
// Admins may do anything a policy governs.
permit (principal, action, resource) when { principal.roles.contains("admin") };
// Catalog managers change and delete products of their own categories only.
permit (
    principal,
    action in [Action::"update_product", Action::"delete_product"],
    resource is Product
)
when {
    principal.roles.contains("catalog_manager") &&
    principal has category_ids && resource has category_id &&
    principal.category_ids.contains(resource.category_id)
};
"""
ADMIN_ONLY = 'permit (principal, action, resource) when { principal.roles.contains("admin") };\n'


class Env:
    def __init__(self, gw: Gateway, policy: pathlib.Path, key: Any) -> None:
        self.gw = gw
        self.policy = policy
        self.key = key

    def token(self, sub: str, roles: list[str], **claims: Any) -> dict[str, str]:
        """A token signed with the gateway's own key, carrying custom claims."""
        kid = httpx.get(self.gw.url + "/.well-known/jwks.json").json()["keys"][0]["kid"]
        now = int(time.time())
        body = {"iss": ISSUER, "sub": sub, "aud": "cygate", "iat": now, "exp": now + 600,
                "jti": secrets.token_urlsafe(16), "client_id": "cygate", "roles": roles,
                **claims}  # fmt: skip
        signed = pyjwt.encode(body, self.key, algorithm="EdDSA", headers={"kid": kid,
                              "typ": "at+jwt"})  # fmt: skip
        return {"Authorization": f"Bearer {signed}"}

    def write_policy(self, text: str) -> None:
        before = self.policy.stat().st_mtime_ns
        self.policy.write_text(text)
        if self.policy.stat().st_mtime_ns == before:  # a coarse clock: make the change seen
            import os

            os.utime(self.policy, ns=(before, before + 1_000_000_000))


@pytest.fixture(scope="module")
def env(
    gateway_env: dict[str, str], seeded: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("policy")
    key = SigningKeys().private("EdDSA")
    policy = tmp / "catalog.cedar"
    policy.write_text(POLICY)
    extra = {
        "CYGATE_PUBLIC_BASE_URL": BASE_URL,
        "CYGATE_JWT_KEY_FILES": json.dumps([pem_private(key, tmp / "signing.pem")]),
        "CYGATE_POLICY_FILES": json.dumps([str(policy)]),
        "CYGATE_POLICY_RELOAD_INTERVAL": "0.2",
    }
    gw = start_gateway(gateway_env, workers=1, extra_env=extra)
    try:
        yield Env(gw, policy, key)
    finally:
        output = stop_gateway(gw)
        assert "Traceback" not in output, output


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


def test_managers_change_only_their_own_categories(env: Env) -> None:
    gw = env.gw
    admin = admin_headers(gw)
    _, manager_id = new_caller(gw, ["catalog_manager"])
    with created_records(gw) as made, gw.client() as c:
        own = made.category(c, admin, name="Policy own")
        other = made.category(c, admin, name="Policy other")
        mine = made.product(c, admin, category_id=own["id"])
        theirs = made.product(c, admin, category_id=other["id"])
        manager = {**env.token(manager_id, ["catalog_manager"], category_ids=[own["id"]]),
                   "If-Match": "*"}  # fmt: skip
        as_admin = {**admin, "If-Match": "*"}

        r = c.patch(f"/api/v1/products/{mine['id']}", json={"stock": 7}, headers=manager)
        assert r.status_code == 200, r.text
        r = c.patch(f"/api/v1/products/{theirs['id']}", json={"stock": 7}, headers=manager)
        doc = assert_problem(r, 403)
        assert doc["instance"] == f"/api/v1/products/{theirs['id']}"
        r = c.patch(f"/api/v1/products/{theirs['id']}", json={"stock": 8}, headers=as_admin)
        assert r.status_code == 200, r.text  # admins unaffected
        r = c.post("/api/v1/categories", json={"name": "x", "slug": "policy-x"}, headers={
            "Authorization": "Bearer nope"})  # fmt: skip
        assert r.status_code == 401  # the token stage still answers first

        # A changed policy file is picked up without a restart.
        env.write_policy(ADMIN_ONLY)

        def manager_refused() -> bool:
            r = c.patch(f"/api/v1/products/{mine['id']}", json={"stock": 9}, headers=manager)
            return r.status_code == 403

        eventually(manager_refused)

        # A file that does not parse keeps the previous set, and is counted.
        env.write_policy("permit (principal, action, resource")
        time.sleep(0.6)

        def counted() -> bool:
            manager_refused()  # a request that needs a decision checks the files
            text = c.get("/metrics").text
            return any(
                line.startswith("cygate_policy_reload_errors_total")
                and float(line.split()[-1]) >= 1
                for line in text.splitlines()
            )

        eventually(counted)
        assert manager_refused()  # still the admin-only set
        r = c.patch(f"/api/v1/products/{mine['id']}", json={"stock": 10}, headers=as_admin)
        assert r.status_code == 200, r.text
        env.write_policy(POLICY)
        eventually(lambda: not manager_refused())
