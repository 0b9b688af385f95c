"""Differential test: the compiled verifier, the pure twin and PyJWT decide alike.

A generated corpus of tokens, valid and mutated (hypothesis, plus a seeded corpus of a few
thousand), goes through all three. The reference decision is PyJWT's ``decode`` (signature,
``exp``/``nbf``/``iat``, ``iss``, ``aud``, required claims) AND a short profile check written
here independently of cygate's code, for the rules PyJWT leaves to the application: sizes,
canonical base64url (by a round trip), duplicate JSON keys (``object_pairs_hook``), ``typ``,
``crit``, the key's algorithm, integer NumericDates. The two twins must also agree on the
reason of every refusal.
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
from typing import Any

import jwt as pyjwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cygate.core import jwt as selector
from cygate.core._jwt_py import JWTError, JWTVerifierPy, VerifyKey
from jwt_cases import DROP, SigningKeys, b64, noncanonical, token

KEYS = SigningKeys()
ALGS = ("EdDSA", "ES256", "RS256")
MAX_TOKEN = 4096
_B64_RE = re.compile(rb"[A-Za-z0-9_-]*")


def _verifiers() -> list[JWTVerifierPy]:
    classes: list[type[JWTVerifierPy]] = [JWTVerifierPy]
    if getattr(selector, "JWTVerifierC", None) is not None:
        classes.append(selector.JWTVerifierC)
    out = []
    for cls in classes:
        verifier = cls(leeway=0, max_token_bytes=MAX_TOKEN, cache_size=0)
        verifier.set_issuer(
            "cygate",
            audience="cygate",
            keys=[VerifyKey(KEYS.kids[a], a, KEYS.private(a).public_key()) for a in ALGS],
        )
        out.append(verifier)
    return out


VERIFIERS = _verifiers()
PUBLIC = {KEYS.kids[a]: (a, KEYS.private(a).public_key()) for a in ALGS}


# ---------------------------------------------------------------------------------------------
# The reference: PyJWT plus an independent profile check
# ---------------------------------------------------------------------------------------------


def _strict_b64(segment: bytes) -> bytes | None:
    if not _B64_RE.fullmatch(segment) or len(segment) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    return data if b64(data) == segment else None  # canonical: one spelling per value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite,
        )
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _date(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**53


def reference_accepts(tok: bytes, now: float) -> bool:
    """PyJWT's decision, and the profile rules PyJWT does not enforce."""
    if len(tok) > MAX_TOKEN:
        return False
    parts = tok.split(b".")
    if len(parts) != 3 or len(parts[0]) > 1024:
        return False
    decoded = [_strict_b64(p) for p in parts]
    if any(d is None for d in decoded):
        return False
    header, claims = _json_object(decoded[0] or b""), _json_object(decoded[1] or b"")
    if header is None or claims is None:
        return False
    if "crit" in header:
        return False
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in ("at+jwt", "application/at+jwt"):
        return False
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in PUBLIC:
        return False
    alg, public = PUBLIC[kid]
    if header.get("alg") != alg:
        return False
    if not (_date(claims.get("exp")) and _date(claims.get("iat"))):
        return False
    if "nbf" in claims and not _date(claims["nbf"]):
        return False
    for name in ("sub", "jti"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            return False
    if claims.get("iss") != "cygate":
        return False
    try:
        pyjwt.decode(
            tok,
            public,
            algorithms=[alg],
            audience="cygate",
            issuer="cygate",
            leeway=0,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )
    except pyjwt.PyJWTError:
        return False
    return True


def decisions(tok: bytes, now: float) -> tuple[set[str], bool]:
    """The twins' outcomes (``accepted`` or the reason) and the reference's decision."""
    outcomes = set()
    for verifier in VERIFIERS:
        try:
            verifier.verify(tok, now)
            outcomes.add("accepted")
        except JWTError as err:
            outcomes.add(err.reason)
    return outcomes, reference_accepts(tok, now)


def check(tok: bytes, now: float) -> bool:
    outcomes, expected = decisions(tok, now)
    assert len(outcomes) == 1, (outcomes, tok)
    assert (outcomes == {"accepted"}) == expected, (outcomes, expected, tok)
    return expected


# ---------------------------------------------------------------------------------------------
# The corpus: valid tokens with varied headers and claims, then one mutation
# ---------------------------------------------------------------------------------------------

# PyJWT reads its own clock: times are kept far (>= 100 s) from "now" so no decision depends on
# the milliseconds between its clock and ours.
OFFSETS = (-100_000, -1000, -100, 100, 1000, 100_000)


def build(rng: random.Random, now: int) -> bytes:
    alg = rng.choice(ALGS)
    signer = rng.choice([alg] * 15 + list(ALGS))  # mostly the key of the kid, sometimes another
    header: dict[str, Any] = KEYS.header(alg)
    claims: dict[str, Any] = KEYS.claims(now)

    def pick() -> float:  # each change below is made to about one token in 10 to 30
        return rng.random() * 2

    if pick() < 0.15:
        header["typ"] = rng.choice(["JWT", "AT+JWT", "application/at+jwt", DROP, 7, "at+jwt "])
    if pick() < 0.1:
        header["kid"] = rng.choice([DROP, "nope", None, KEYS.kids[rng.choice(ALGS)]])
    if pick() < 0.1:
        header["alg"] = rng.choice(["none", "HS256", "PS256", *ALGS])
    if pick() < 0.05:
        header["crit"] = ["exp"]
    if pick() < 0.05:
        header["jku"] = "http://127.0.0.1:9/"
    if pick() < 0.2:
        claims["exp"] = rng.choice(
            [now + rng.choice(OFFSETS), DROP, str(now + 1000), now + 1000.5, True, None, -5, 2**60]
        )
    if pick() < 0.15:
        claims["iat"] = rng.choice([now + rng.choice(OFFSETS), DROP, float(now), "x"])
    if pick() < 0.15:
        claims["nbf"] = rng.choice([now + rng.choice(OFFSETS), "x", None])
    if pick() < 0.1:
        claims["iss"] = rng.choice(["cygat", "cygate/", "CYGATE", DROP, ["cygate"]])
    if pick() < 0.1:
        claims["aud"] = rng.choice(["x", ["x", "cygate"], ["x"], DROP, 5, ["cygate", 5]])
    if pick() < 0.05:
        claims["sub"] = rng.choice(["", DROP, 3])
    if pick() < 0.05:
        claims["jti"] = rng.choice(["", DROP])
    header = {k: v for k, v in header.items() if v is not DROP}
    claims = {k: v for k, v in claims.items() if v is not DROP}
    head_json: bytes = json.dumps(header).encode()
    claims_json: bytes = json.dumps(claims).encode()
    if pick() < 0.05:
        claims_json = claims_json[:-1] + b', "sub": "admin"}'
    if pick() < 0.03:
        claims_json = claims_json[:-1] + b', "pad": "' + b"x" * 3100 + b'"}'
    tok = token(head_json, claims_json, alg if signer == alg else signer, KEYS.private(signer))
    return mutate(rng, tok)


def mutate(rng: random.Random, tok: bytes) -> bytes:
    if rng.random() < 0.5:
        return tok  # unmutated
    kind = rng.randrange(4, 12)
    if kind == 4:  # replace one byte by a base64url character
        i = rng.randrange(len(tok))
        return tok[:i] + bytes((rng.choice(b"AbZz09-_"),)) + tok[i + 1 :]
    if kind == 5:  # any byte
        i = rng.randrange(len(tok))
        return tok[:i] + bytes((rng.randrange(256),)) + tok[i + 1 :]
    if kind == 6:  # truncate
        return tok[: rng.randrange(len(tok))]
    if kind == 7:  # insert
        i = rng.randrange(len(tok) + 1)
        return tok[:i] + bytes((rng.choice(b"A.=+/ "),)) + tok[i:]
    parts = tok.split(b".")
    if kind == 8:  # non-canonical spelling of a segment
        i = rng.randrange(3)
        if len(parts[i]) % 4 in (2, 3):
            parts[i] = noncanonical(parts[i])
        return b".".join(parts)
    if kind == 9:  # padding
        i = rng.randrange(3)
        parts[i] += b"=" * rng.randint(1, 2)
        return b".".join(parts)
    if kind == 10:  # segments dropped or repeated
        return b".".join(parts[: rng.randint(1, 2)] if rng.random() < 0.5 else [*parts, parts[2]])
    # swap the signature for another token's
    other = KEYS.good(rng.choice(ALGS))
    return b".".join([*parts[:2], other.rsplit(b".", 1)[1]])


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_valid_tokens_accepted_by_all() -> None:
    now = int(time.time())
    for alg in ALGS:
        assert check(KEYS.good(alg, now=now), now)


def test_seeded_corpus() -> None:
    """A few thousand generated tokens; every decision agrees, and both kinds occur often."""
    rng = random.Random(20261125)
    now = int(time.time())
    accepted = refused = 0
    for _ in range(4000):
        if check(build(rng, now), now):
            accepted += 1
        else:
            refused += 1
    assert accepted > 800 and refused > 2000, (accepted, refused)


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hypothesis_corpus(seed: int) -> None:
    now = int(time.time())
    check(build(random.Random(seed), now), now)


@given(st.binary(min_size=0, max_size=200), st.sampled_from(ALGS))
@settings(max_examples=300, deadline=None)
def test_arbitrary_payload_bytes(payload: bytes, alg: str) -> None:
    """A correctly signed token around arbitrary payload bytes: JSON or not, UTF-8 or not."""
    now = int(time.time())
    check(token(KEYS.header(alg), payload, alg, KEYS.private(alg)), now)


@pytest.mark.parametrize("alg", ALGS)
def test_expiry_boundary_agrees_with_pyjwt(alg: str) -> None:
    """PyJWT refuses exp <= now - leeway; so do both twins (given PyJWT's clock)."""
    now = int(time.time())
    past = KEYS.good(alg, now=now, exp=now - 1)
    assert not check(past, now)
