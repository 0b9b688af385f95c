"""RFC 9068 interop: a standard JWT library (PyJWT) verifies cygate's access tokens with the
published JWKS alone, for each signing algorithm cygate offers (EdDSA, ES256, RS256), whether
the key comes from a file or is generated at first start."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from tests.acceptance.conftest import Gateway, admin_headers, start_gateway, stop_gateway
from tests.admin import ADMIN_EMAIL

from identity_helpers import pem_private
from jwt_cases import SigningKeys

pytestmark = pytest.mark.acceptance

BASE_URL = "https://api.shop.example.test/"
ISSUER = "https://api.shop.example.test"  # the base URL without its trailing slash


def _key(alg: str) -> Any:
    """A new private key for ``alg``."""
    return SigningKeys().private(alg)


@pytest.fixture(
    params=[("EdDSA", "file"), ("ES256", "file"), ("RS256", "file"), ("RS256", "generated")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def signed_by(
    request: pytest.FixtureRequest,
    gateway_env: dict[str, str],
    seeded: dict[str, object],
    tmp_path: pathlib.Path,
) -> Iterator[tuple[str, Gateway]]:
    alg, source = request.param
    extra = {"CYGATE_PUBLIC_BASE_URL": BASE_URL, "CYGATE_JWT_KEY_DIR": str(tmp_path / "keys")}
    if source == "file":
        extra["CYGATE_JWT_KEY_FILES"] = pem_private(_key(alg), tmp_path / f"{alg}.pem")
    else:
        extra["CYGATE_JWT_KEY_ALGORITHM"] = alg
    gw = start_gateway(gateway_env, workers=1, extra_env=extra)
    try:
        yield alg, gw
    finally:
        output = stop_gateway(gw)
        assert "Traceback" not in output, output
    if source == "generated":  # written at first start, never in the repository
        assert (tmp_path / "keys" / f"signing-{alg.lower()}.pem").is_file()


def test_pyjwt_verifies_tokens_with_the_jwks(signed_by: tuple[str, Gateway]) -> None:
    alg, gw = signed_by
    auth = admin_headers(gw)
    token = auth["Authorization"].removeprefix("Bearer ")
    jwks = httpx.get(gw.url + "/.well-known/jwks.json").json()
    header = pyjwt.get_unverified_header(token)
    assert header["alg"] == alg and header["typ"] == "at+jwt"
    keys = {k.key_id: k for k in pyjwt.PyJWKSet.from_dict(jwks).keys}
    assert keys[header["kid"]].algorithm_name == alg
    claims = pyjwt.decode(
        token,
        keys[header["kid"]],
        algorithms=[alg],
        audience="cygate",
        issuer=ISSUER,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"]},
    )
    assert claims["client_id"] == "cygate" and claims["roles"] == ["admin"]
    # the gateway accepts what it signed (the compiled or pure verifier, as built)
    me = httpx.get(gw.url + "/api/v1/users/me", headers=auth)
    assert me.status_code == 200 and me.json()["email"] == ADMIN_EMAIL, me.text
    # a token signed by another key of the same algorithm is refused
    forged = pyjwt.encode({**claims, "jti": "forged"}, _key(alg), algorithm=alg, headers=header)
    r = httpx.get(gw.url + "/api/v1/users/me", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401, r.text
