"""The token stage: required vs optional authentication, roles, revocation, unknown kids."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cygate.core.jwt import JWTVerifier, VerifyKey
from cygate.edge.auth import TokenStage, principal_of
from cygate.edge.context import EdgeContext, Principal, RoutePolicy
from cygate.edge.problem import Problem
from cygate.services.identity.revocation import Revocations
from cygate.services.identity.service import own_principal
from jwt_cases import SigningKeys, token

KEYS = SigningKeys()
CHALLENGE = 'Bearer error="invalid_token"'


def make_stage(refresh: Any = None) -> TokenStage:
    verifier = JWTVerifier(leeway=0)
    verifier.set_issuer(
        "cygate",
        audience="cygate",
        keys=[VerifyKey(KEYS.kids["EdDSA"], "EdDSA", KEYS.ed.public_key())],
        principal=own_principal("cygate"),
    )
    return TokenStage(verifier, Revocations(None, verifier, interval=1.0), refresh)


def ctx(headers: list[tuple[bytes, bytes]], **policy: Any) -> EdgeContext:
    scope = {"headers": headers, "client": ("127.0.0.1", 5000)}
    return EdgeContext(
        scope, "GET", "/x", "", "rid", b"tp", RoutePolicy(name="GET /x", **policy), None
    )


def auth(tok: bytes | str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + (tok if isinstance(tok, bytes) else tok.encode()))]


def run(stage: TokenStage, c: EdgeContext) -> None:
    pending = stage(c)
    if pending is not None:
        asyncio.run(_wait(pending))


async def _wait(pending: Any) -> None:
    await pending


def refused(stage: TokenStage, c: EdgeContext) -> Problem:
    with pytest.raises(Problem) as info:
        run(stage, c)
    return info.value


def test_public_route_without_token() -> None:
    c = ctx([])
    assert make_stage()(c) is None and c.principal is None


def test_public_route_with_valid_token_sets_the_principal() -> None:
    c = ctx(auth(KEYS.good(roles=["customer", "admin", "not-a-role"])))
    assert make_stage()(c) is None  # PERF: decided without a coroutine
    assert isinstance(c.principal, Principal)
    assert c.principal.sub == KEYS.claims()["sub"]
    assert c.principal.roles == frozenset({"customer", "admin"})  # unknown roles dropped
    assert c.principal.client_id is None and c.principal.issuer == "cygate"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer not.a.jwt")],
        [(b"authorization", b"Basic dXNlcjpwYXNz")],
        [(b"authorization", b"Bearer")],
    ],
)
def test_public_route_ignores_bad_or_foreign_credentials(headers: list[Any]) -> None:
    c = ctx(headers)
    assert make_stage()(c) is None and c.principal is None


@pytest.mark.parametrize(
    "headers",
    [[], [(b"authorization", b"Basic dXNlcjpwYXNz")], [(b"authorization", b"Bearer x.y.z")]],
)
def test_protected_route_refuses(headers: list[Any]) -> None:
    problem = refused(make_stage(), ctx(headers, auth=True))
    assert problem.status == 401 and problem.headers["www-authenticate"] == CHALLENGE


def test_expired_token_says_so() -> None:
    now = int(time.time())
    problem = refused(make_stage(), ctx(auth(KEYS.good(now=now - 700)), auth=True))
    assert problem.detail == "the access token has expired"


def test_scheme_is_case_insensitive() -> None:
    c = ctx([(b"authorization", b"bEaReR " + KEYS.good())], auth=True)
    run(make_stage(), c)
    assert c.principal is not None


def test_roles() -> None:
    stage = make_stage()
    c = ctx(auth(KEYS.good(roles=["admin"])), auth=True, roles=frozenset({"admin"}))
    run(stage, c)
    assert c.principal is not None
    problem = refused(stage, ctx(auth(KEYS.good()), auth=True, roles=frozenset({"admin"})))
    assert problem.status == 403
    assert problem.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
    # roles without auth still need a token
    assert refused(stage, ctx([], roles=frozenset({"admin"}))).status == 401


def test_revoked_token() -> None:
    stage = make_stage()
    tok = KEYS.good(jti="gone")
    run(stage, ctx(auth(tok), auth=True))
    stage.verifier.revoke_jti("gone", time.time() + 600)
    assert refused(stage, ctx(auth(tok), auth=True)).status == 401
    c = ctx(auth(tok))
    run(stage, c)
    assert c.principal is None


def test_a_jti_in_the_revoked_set_is_refused() -> None:
    """Revoked through the revocations (the feed's set), not the verifier: refused on a
    protected route (before its roles), ignored on a public one."""
    stage = make_stage()
    tok = KEYS.good(jti="fed", roles=["admin"])
    run(stage, ctx(auth(tok), auth=True))
    asyncio.run(stage.revocations.revoke([("fed", time.time() + 600)]))  # no Redis: local
    assert "fed" in stage.revocations.revoked and not stage.verifier.is_revoked("fed")
    for policy in ({"auth": True}, {"roles": frozenset({"admin"})}):
        problem = refused(stage, ctx(auth(tok), **policy))
        assert problem.status == 401 and "revoked" in problem.detail
        assert problem.headers["www-authenticate"] == CHALLENGE
    c = ctx(auth(tok))
    run(stage, c)
    assert c.principal is None


def test_unknown_kid_refreshes_keys_once() -> None:
    new_key = ed25519.Ed25519PrivateKey.generate()
    calls: list[str] = []
    stage: TokenStage

    async def refresh(issuer: str) -> bool:
        calls.append(issuer)
        issuer_cfg = stage.verifier.issuers()[issuer]
        keys = [*issuer_cfg.keys.values(), VerifyKey("rotated", "EdDSA", new_key.public_key())]
        stage.verifier.set_issuer(
            issuer, audience="cygate", keys=keys, principal=issuer_cfg.principal
        )
        return True

    stage = make_stage(refresh)
    tok = token(KEYS.header(kid="rotated"), KEYS.claims(), "EdDSA", new_key)
    c = ctx(auth(tok), auth=True)
    run(stage, c)
    assert c.principal is not None and calls == ["cygate"]
    # still unknown after a refresh: refused
    other = token(KEYS.header(kid="never"), KEYS.claims(), "EdDSA", new_key)
    assert refused(stage, ctx(auth(other), auth=True)).status == 401
    assert calls == ["cygate", "cygate"]


def test_unknown_kid_without_refresh_or_on_public_route() -> None:
    new_key = ed25519.Ed25519PrivateKey.generate()
    tok = token(KEYS.header(kid="rotated"), KEYS.claims(), "EdDSA", new_key)

    async def no_luck(issuer: str) -> bool:
        return False

    c = ctx(auth(tok))
    run(make_stage(no_luck), c)
    assert c.principal is None
    assert refused(make_stage(), ctx(auth(tok), auth=True)).status == 401


def test_principal_of() -> None:
    class Request:
        def __init__(self, scope: dict[str, Any]) -> None:
            self.scope = scope

    c = ctx(auth(KEYS.good()))
    run(make_stage(), c)
    assert principal_of(Request({"cygate.ctx": c})) is c.principal
    with pytest.raises(Problem):
        principal_of(Request({}))
    with pytest.raises(Problem):
        principal_of(Request({"cygate.ctx": ctx([])}))
