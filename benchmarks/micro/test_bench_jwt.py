"""Access-token verification: cygate's compiled verifier vs its pure twin vs PyJWT vs joserfc,
beside the floor (the bare signature check by the ``cryptography`` package).

For each algorithm cygate signs or accepts (EdDSA, ES256, RS256), the same 50 valid RFC 9068
access tokens (distinct ``jti``) are used by every contender:

- ``first-time``: each round verifies the 50 tokens once. cygate's verifiers clear their cache
  at the start of the round, so every verification is a first one (split, strict base64url,
  JSON, duplicate keys, header rules, key look-up, signature, claims, cache insert). PyJWT and
  joserfc decode and check the same claims (iss, aud, exp, iat, sub, jti). The floor verifies the
  50 signatures alone, already decoded (and for ES256 already converted to DER).
- ``repeated``: each round verifies one token 50 times: what a client re-using its access token
  costs. cygate answers from its verified-token cache; the libraries have no such cache.

Targets (issue 3): compiled first-time <= 1.3x the floor; compiled repeated >= 30x faster than
PyJWT's decode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cygate.core import jwt as cyjwt
from cygate.core._jwt_py import ECDSA_SHA256, PKCS1V15, SHA256, JWTVerifierPy, VerifyKey

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # joserfc: "EdDSA is deprecated"

ALGS = ("EdDSA", "ES256", "RS256")
N = 50
NOW = int(time.time())


def _keys() -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    return {
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


PRIVATE = _keys()
PUBLIC = {alg: key.public_key() for alg, key in PRIVATE.items()}
KID = {alg: f"{alg.lower()}-1" for alg in ALGS}


def _claims(i: int) -> dict[str, Any]:
    return {
        "iss": "cygate",
        "aud": "cygate",
        "sub": "0193a2b4-0000-7000-8000-000000000001",
        "exp": NOW + 3600,
        "iat": NOW,
        "jti": f"bench-{i:04d}-{NOW}",
        "roles": ["customer"],
    }


TOKENS = {
    alg: [
        pyjwt.encode(
            _claims(i), PRIVATE[alg], algorithm=alg, headers={"kid": KID[alg], "typ": "at+jwt"}
        ).encode()
        for i in range(N)
    ]
    for alg in ALGS
}


def first_group(alg: str) -> str:
    return f"jwt {alg}: first-time verify (50 distinct tokens)"


def repeat_group(alg: str) -> str:
    return f"jwt {alg}: repeated token (50 verifications of one token)"


# ---------------------------------------------------------------------------------------------
# Contenders: each returns a function verifying one token and returning its subject
# ---------------------------------------------------------------------------------------------


def cygate(cls: type[JWTVerifierPy], alg: str) -> JWTVerifierPy:
    verifier = cls(leeway=30, cache_size=10_000)
    verifier.set_issuer("cygate", audience="cygate", keys=[VerifyKey(KID[alg], alg, PUBLIC[alg])])
    return verifier


def pyjwt_decoder(alg: str) -> Callable[[bytes], str]:
    key = PUBLIC[alg]
    options: Any = {"require": ["exp", "iat", "iss", "aud", "sub", "jti"]}

    def decode(tok: bytes) -> str:
        claims = pyjwt.decode(
            tok,
            key,
            algorithms=[alg],
            audience="cygate",
            issuer="cygate",
            leeway=30,
            options=options,
        )
        return str(claims["sub"])

    return decode


def joserfc_decoder(alg: str) -> Callable[[bytes], str]:
    from joserfc import jwt as jjwt
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    key_type: Any = {"EdDSA": OKPKey, "ES256": ECKey, "RS256": RSAKey}[alg]
    key = key_type.import_key(PUBLIC[alg])
    registry = jjwt.JWTClaimsRegistry(
        leeway=30,
        iss={"essential": True, "value": "cygate"},
        aud={"essential": True, "value": "cygate"},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
        jti={"essential": True},
    )

    def decode(tok: bytes) -> str:
        token = jjwt.decode(tok, key, algorithms=[alg])
        registry.validate(token.claims)
        return str(token.claims["sub"])

    return decode


def floor_checks(alg: str) -> list[Callable[[], None]]:
    """The signature checks alone, inputs prepared: cryptography's verify and nothing else."""
    public = PUBLIC[alg]
    checks: list[Callable[[], None]] = []
    for tok in TOKENS[alg]:
        signing_input, _, sig_b64 = tok.rpartition(b".")
        sig = cyjwt.b64url_decode(sig_b64)
        if alg == "EdDSA":
            checks.append(lambda s=sig, d=signing_input: public.verify(s, d))
        elif alg == "ES256":
            der = encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
            checks.append(lambda s=der, d=signing_input: public.verify(s, d, ECDSA_SHA256))
        else:
            checks.append(lambda s=sig, d=signing_input: public.verify(s, d, PKCS1V15, SHA256))
    return checks


def _compiled() -> type[JWTVerifierPy]:
    cls = getattr(cyjwt, "JWTVerifierC", None)
    if cls is None:
        pytest.skip("compiled verifier not available")
    return cls  # type: ignore[no-any-return]


EXPECTED_SUB = _claims(0)["sub"]


def _check(verify: Callable[[bytes], Any], alg: str) -> None:
    """Correctness before timing: every token verifies to its subject; a forged one fails."""
    for tok in TOKENS[alg]:
        result = verify(tok)
        sub = result if isinstance(result, str) else result["sub"]
        assert sub == EXPECTED_SUB
    forged = TOKENS[alg][0][:-6] + (
        b"AAAAAA" if not TOKENS[alg][0].endswith(b"AAAAAA") else b"BBBBBA"
    )
    with pytest.raises(Exception):  # noqa: B017 - each library has its own error type
        verify(forged)


# ---------------------------------------------------------------------------------------------
# First-time verification
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_first_floor(micro: Any, alg: str) -> None:
    """cryptography's bare signature check of the 50 tokens (decoded, DER ready): the floor."""
    checks = floor_checks(alg)
    for check in checks:
        check()

    def run() -> None:
        for check in checks:
            check()

    micro(run, group=first_group(alg), ops=N)


def _first_time(micro: Any, verifier: JWTVerifierPy, alg: str) -> None:
    tokens = TOKENS[alg]
    _check(verifier.verify, alg)
    verify, clear = verifier.verify, verifier.clear_cache

    def run() -> None:
        clear()
        for tok in tokens:
            verify(tok)

    micro(run, group=first_group(alg), ops=N)


@pytest.mark.parametrize("alg", ALGS)
def test_first_cygate_c(micro: Any, alg: str) -> None:
    """cygate JWTVerifierC (compiled), cache cleared each round: every verification a first."""
    _first_time(micro, cygate(_compiled(), alg), alg)


@pytest.mark.parametrize("alg", ALGS)
def test_first_cygate_py(micro: Any, alg: str) -> None:
    """cygate JWTVerifierPy (pure twin), cache cleared each round."""
    _first_time(micro, cygate(JWTVerifierPy, alg), alg)


@pytest.mark.parametrize("alg", ALGS)
def test_first_pyjwt(micro: Any, alg: str) -> None:
    """PyJWT jwt.decode with the same claim checks."""
    decode, tokens = pyjwt_decoder(alg), TOKENS[alg]
    _check(decode, alg)
    micro(lambda: [decode(t) for t in tokens], group=first_group(alg), ops=N)


@pytest.mark.parametrize("alg", ALGS)
def test_first_joserfc(micro: Any, alg: str) -> None:
    """joserfc jwt.decode + JWTClaimsRegistry.validate with the same claim checks."""
    decode, tokens = joserfc_decoder(alg), TOKENS[alg]
    _check(decode, alg)
    micro(lambda: [decode(t) for t in tokens], group=first_group(alg), ops=N)


# ---------------------------------------------------------------------------------------------
# A repeated token
# ---------------------------------------------------------------------------------------------


def _repeated(micro: Any, verify: Callable[[bytes], Any], alg: str) -> None:
    _check(verify, alg)
    tok = TOKENS[alg][0]
    repeat = [tok] * N

    def run() -> None:
        for t in repeat:
            verify(t)

    micro(run, group=repeat_group(alg), ops=N)


@pytest.mark.parametrize("alg", ALGS)
def test_repeat_cygate_c(micro: Any, alg: str) -> None:
    """cygate JWTVerifierC (compiled): the verified-token cache answers."""
    _repeated(micro, cygate(_compiled(), alg).verify, alg)


@pytest.mark.parametrize("alg", ALGS)
def test_repeat_cygate_py(micro: Any, alg: str) -> None:
    """cygate JWTVerifierPy (pure twin): the verified-token cache answers."""
    _repeated(micro, cygate(JWTVerifierPy, alg).verify, alg)


@pytest.mark.parametrize("alg", ALGS)
def test_repeat_pyjwt(micro: Any, alg: str) -> None:
    """PyJWT jwt.decode of the same token every time (no cache)."""
    _repeated(micro, pyjwt_decoder(alg), alg)


@pytest.mark.parametrize("alg", ALGS)
def test_repeat_joserfc(micro: Any, alg: str) -> None:
    """joserfc decode + claims validation of the same token every time (no cache)."""
    _repeated(micro, joserfc_decoder(alg), alg)


# ---------------------------------------------------------------------------------------------
# The edge's token stage with a repeated token (what an authenticated request pays in the edge)
# ---------------------------------------------------------------------------------------------


def test_token_stage_repeated(micro: Any) -> None:
    """cygate TokenStage(ctx) on a protected route, repeated EdDSA token: header scan, cached
    verification, cached revocation answer, role check (the selected verifier)."""
    from cygate.edge.auth import TokenStage
    from cygate.edge.context import EdgeContext, RoutePolicy
    from cygate.services.identity.revocation import Revocations
    from cygate.services.identity.service import own_principal

    verifier = cyjwt.JWTVerifier(leeway=30)
    keys = [VerifyKey(KID["EdDSA"], "EdDSA", PUBLIC["EdDSA"])]
    verifier.set_issuer("cygate", audience="cygate", keys=keys, principal=own_principal("cygate"))
    revocations = Revocations(None, verifier, interval=3600)
    stage = TokenStage(verifier, revocations)
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"wrk"),
        (b"accept", b"*/*"),
        (b"authorization", b"Bearer " + TOKENS["EdDSA"][0]),
    ]
    policy = RoutePolicy(name="GET /api/v1/users/me", auth=True, roles=frozenset({"customer"}))
    scope = {"headers": headers, "client": ("127.0.0.1", 5000)}
    ctx = EdgeContext(scope, "GET", "/api/v1/users/me", "", "rid", b"tp", policy, None)
    # NOTE: the revocation check is a look-up in this worker's set (the feed is read in the
    # background), with Redis or without.
    assert stage(ctx) is None and ctx.principal is not None and ctx.principal.sub == EXPECTED_SUB
    contexts = [ctx] * N

    def run() -> None:
        for c in contexts:
            stage(c)

    micro(run, group="jwt: edge token stage, repeated token (protected route)", ops=N)
