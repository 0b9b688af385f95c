"""The access-token verifier, compiled and pure: every malicious case, the cache, revocation."""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from core_impls import CoreImplementation, require_compiled
from cygate.core import jwt as selector
from cygate.core._jwt_py import (
    CACHE_ENTRY_BYTES,
    MAX_JSON_DEPTH,
    MAX_NUMERIC_DATE,
    JWTError,
    JWTVerifierPy,
    VerifyKey,
    b64url_decode,
    b64url_encode,
    count_json_keys,
    count_raw_keys,
    too_deep,
)
from jwt_cases import DROP, SigningKeys, b64, malicious_cases, token

NOW = 1_764_000_000
KEYS = SigningKeys()
CASES = malicious_cases(KEYS, NOW)
ALGS = ("EdDSA", "ES256", "RS256")


@pytest.fixture(scope="module")
def verifier_cls(core_impl: CoreImplementation) -> type[JWTVerifierPy]:
    """JWTVerifierC or JWTVerifierPy."""
    cls: type[JWTVerifierPy] = getattr(
        core_impl.module("jwt"), f"JWTVerifier{core_impl.tag.capitalize()}"
    )
    return cls


def trusted_keys(keys: SigningKeys = KEYS) -> list[VerifyKey]:
    return [VerifyKey(keys.kids[alg], alg, keys.private(alg).public_key()) for alg in ALGS]


def make(cls: type[JWTVerifierPy], **kw: Any) -> JWTVerifierPy:
    own = ("leeway", "cache_size", "cache_bytes")
    options = {"leeway": 0} | {k: kw.pop(k) for k in list(kw) if k in own}
    verifier = cls(**options)
    verifier.set_issuer("cygate", audience="cygate", keys=trusted_keys(), **kw)
    return verifier


def reason(verifier: JWTVerifierPy, tok: bytes | str, now: float = NOW) -> str:
    with pytest.raises(JWTError) as info:
        verifier.verify(tok, now)
    return info.value.reason


# ---------------------------------------------------------------------------------------------
# The selector and the module pair
# ---------------------------------------------------------------------------------------------


@pytest.mark.c_extension
def test_compiled_verifier_is_selected() -> None:
    module = require_compiled("jwt")
    assert selector.JWTVerifier is module.JWTVerifierC
    assert selector.JWTVerifierC is module.JWTVerifierC


def test_pure_verifier_selected_when_extensions_off() -> None:
    if os.environ.get("CYGATE_NO_EXTENSIONS"):
        assert selector.JWTVerifier is JWTVerifierPy
    assert selector.JWTVerifierPy is JWTVerifierPy


def test_compiled_module_shares_the_pure_types(core_impl: CoreImplementation) -> None:
    module = core_impl.module("jwt")
    pure = importlib.import_module("cygate.core._jwt_py")
    if not core_impl.is_pure_python:
        assert module.JWTError is pure.JWTError
        assert module.VerifyKey is pure.VerifyKey


# ---------------------------------------------------------------------------------------------
# Valid tokens
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_valid_token_of_each_algorithm(verifier_cls: type[JWTVerifierPy], alg: str) -> None:
    verifier = make(verifier_cls)
    claims = verifier.verify(KEYS.good(alg, now=NOW), NOW)
    assert claims["sub"] == KEYS.claims(NOW)["sub"]
    assert claims["roles"] == ["customer"]


@pytest.mark.parametrize(
    ("name", "header", "claims"),
    [
        ("typ-media", {"typ": "application/at+jwt"}, {}),
        ("typ-upper", {"typ": "AT+JWT"}, {}),
        ("aud-list", {}, {"aud": ["other", "cygate"]}),
        ("nbf-now", {}, {"nbf": NOW}),
        ("nbf-absent", {}, {"nbf": DROP}),
        ("iat-now", {}, {"iat": NOW}),
        ("exp-next-second", {}, {"exp": NOW + 1}),
        ("extra-header-members-ignored", {"jku": "http://127.0.0.1:9/", "x5u": "http://x/"}, {}),
        ("unicode-claims", {}, {"name": "Zoë 🙂", "sub": "user-ü"}),
        ("big-date", {}, {"exp": MAX_NUMERIC_DATE}),
        ("whitespace-json", {}, {}),
    ],
)
def test_valid_variants(
    verifier_cls: type[JWTVerifierPy], name: str, header: dict[str, Any], claims: dict[str, Any]
) -> None:
    verifier = make(verifier_cls)
    hdr = KEYS.header() | header
    payload: Any = KEYS.claims(NOW, **claims)
    if name == "whitespace-json":
        payload = (
            b'{ "iss" : "cygate",\n\t"aud":"cygate", "sub":"s", "exp":%d, "iat":%d,'
            b' "jti":"j" }' % (NOW + 60, NOW)
        )
    assert verifier.verify(token(hdr, payload, "EdDSA", KEYS.ed), NOW)


def test_leeway_applies_to_exp_nbf_iat(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = make(verifier_cls, leeway=30)
    assert verifier.verify(KEYS.good(now=NOW, exp=NOW - 29), NOW)
    assert reason(verifier, KEYS.good(now=NOW, exp=NOW - 30)) == "expired"
    assert verifier.verify(KEYS.good(now=NOW, nbf=NOW + 30), NOW)
    assert reason(verifier, KEYS.good(now=NOW, nbf=NOW + 31)) == "not_yet_valid"
    assert verifier.verify(KEYS.good(now=NOW, iat=NOW + 30), NOW)
    assert reason(verifier, KEYS.good(now=NOW, iat=NOW + 31)) == "not_yet_valid"


def test_str_and_bytes_tokens(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = make(verifier_cls)
    good = KEYS.good(now=NOW)
    assert verifier.verify(good.decode(), NOW) == verifier.verify(bytearray(good), NOW)
    assert reason(verifier, good.decode() + "é") == "malformed"
    with pytest.raises(TypeError):
        verifier.verify(12345, NOW)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The malicious cases: each refused with its reason, never another exception
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malicious_token_refused(verifier_cls: type[JWTVerifierPy], case: Any) -> None:
    verifier = make(verifier_cls)
    assert reason(verifier, case.token) == case.reason
    # a refusal is never cached: the same bytes are refused again the same way
    assert reason(verifier, case.token) == case.reason
    assert verifier.cache_len() == 0


def test_case_list_covers_the_issue() -> None:
    ids = {c.id for c in CASES}
    for needed in (
        "alg-none",
        "alg-NONE",
        "alg-nOnE",
        "hs256-with-EdDSA-public-key",
        "hs256-with-RS256-public-key",
        "es256-on-ed25519-kid",
        "kid-unknown",
        "kid-path",
        "kid-sql",
        "kid-url",
        "jku-attacker-kid",
        "x5u-attacker-kid",
        "jwk-attacker-kid",
        "exp-now",
        "exp-missing",
        "exp-string",
        "exp-float",
        "nbf-future",
        "iat-future",
        "aud-wrong",
        "iss-prefix",
        "iss-longer",
        "crit-exp",
        "segments-2",
        "segments-4",
        "padding-header",
        "non-canonical-signature",
        "non-canonical-header",
        "header-array",
        "payload-string",
        "dup-header-alg",
        "dup-payload-sub",
        "8kb-payload",
        "signature-stripped",
        "signature-flipped-middle",
        "refresh-token",
        "id-token-typ-jwt",
    ):
        assert needed in ids, needed


def test_unknown_kid_names_the_issuer(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = make(verifier_cls)
    with pytest.raises(JWTError) as info:
        verifier.verify(token(KEYS.header(kid="new"), KEYS.claims(NOW), "EdDSA", KEYS.ed), NOW)
    assert (info.value.reason, info.value.issuer) == ("unknown_kid", "cygate")


def test_typ_check_can_be_switched_off_per_issuer(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = make(verifier_cls, typ=None)
    assert verifier.verify(token(KEYS.header(typ=DROP), KEYS.claims(NOW), "EdDSA", KEYS.ed), NOW)


def test_issuers_are_kept_apart(verifier_cls: type[JWTVerifierPy]) -> None:
    """A key trusted for one issuer does not vouch for tokens claiming another."""
    verifier = make(verifier_cls)
    other = ed25519.Ed25519PrivateKey.generate()
    verifier.set_issuer(
        "https://idp.example",
        audience="api",
        keys=[VerifyKey("idp-1", "EdDSA", other.public_key())],
    )
    claims = KEYS.claims(NOW, iss="https://idp.example", aud="api")
    assert verifier.verify(token(KEYS.header(kid="idp-1"), claims, "EdDSA", other), NOW)
    # our key, their issuer name: their key set has no such kid
    assert reason(verifier, token(KEYS.header(), claims, "EdDSA", KEYS.ed)) == "unknown_kid"
    # their key, our issuer name
    mine = KEYS.claims(NOW)
    assert reason(verifier, token(KEYS.header(kid="idp-1"), mine, "EdDSA", other)) == "unknown_kid"
    # the audience is the issuer's own
    assert (
        reason(
            verifier, token(KEYS.header(kid="idp-1"), claims | {"aud": "cygate"}, "EdDSA", other)
        )
        == "bad_audience"
    )


# ---------------------------------------------------------------------------------------------
# The cache and revocation
# ---------------------------------------------------------------------------------------------


def test_repeated_token_comes_from_the_cache(verifier_cls: type[JWTVerifierPy]) -> None:
    calls: list[str] = []

    def principal(claims: dict[str, Any]) -> tuple[str, int]:
        calls.append(claims["sub"])
        return (claims["sub"], len(calls))

    verifier = make(verifier_cls, principal=principal)
    good = KEYS.good(now=NOW)
    first = verifier.verify(good, NOW)
    assert verifier.verify(good, NOW + 10) is first
    assert verifier.verify(good.decode(), NOW + 20) is first
    assert len(calls) == 1 and verifier.cache_len() == 1


def test_cached_token_expires_with_its_exp(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = make(verifier_cls)
    good = KEYS.good(now=NOW, exp=NOW + 60)
    assert verifier.verify(good, NOW)
    assert verifier.verify(good, NOW + 59.999)
    assert reason(verifier, good, NOW + 60) == "expired"
    assert verifier.cache_len() == 0


def test_revoked_jti_drops_the_cached_token(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = make(verifier_cls)
    good = KEYS.good(now=NOW, jti="revoke-me")
    verifier.verify(good, NOW)
    verifier.revoke_jti("revoke-me", NOW + 600)
    assert verifier.is_revoked("revoke-me")
    assert reason(verifier, good) == "revoked"
    assert verifier.cache_len() == 0
    # a never-seen token with a revoked jti is refused too
    assert reason(verifier, KEYS.good("ES256", now=NOW, jti="revoke-me")) == "revoked"


def test_revoked_set_is_bounded(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = verifier_cls(revoked_size=3)
    for i in range(10):
        verifier.revoke_jti(f"j{i}", NOW + i)
    assert sum(verifier.is_revoked(f"j{i}") for i in range(10)) <= 3
    assert verifier.is_revoked("j9")


def test_removed_key_drops_its_cached_tokens(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = verifier_cls(leeway=0)
    keys = trusted_keys()
    verifier.set_issuer("cygate", audience="cygate", keys=keys)
    ed_token, ec_token = KEYS.good("EdDSA", now=NOW), KEYS.good("ES256", now=NOW)
    verifier.verify(ed_token, NOW)
    verifier.verify(ec_token, NOW)
    keys = [k for k in keys if k.alg != "EdDSA"]
    verifier.set_issuer("cygate", audience="cygate", keys=keys)
    assert verifier.cache_len() == 1  # the ES256 token's key is still there
    assert reason(verifier, ed_token) == "unknown_kid"
    assert verifier.verify(ec_token, NOW)
    verifier.remove_issuer("cygate")
    assert verifier.cache_len() == 0
    assert reason(verifier, ec_token) == "unknown_issuer"


def test_same_keys_keep_the_cache(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = make(verifier_cls)
    keys = trusted_keys()
    verifier.set_issuer("cygate", audience="cygate", keys=keys)
    verifier.verify(KEYS.good(now=NOW), NOW)
    verifier.set_issuer("cygate", audience="cygate", keys=keys)
    assert verifier.cache_len() == 1


def test_cache_is_bounded_oldest_first(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = make(verifier_cls, cache_size=3)
    tokens = [KEYS.good(now=NOW, jti=f"j{i}") for i in range(5)]
    for tok in tokens:
        verifier.verify(tok, NOW)
    assert verifier.cache_len() == 3
    verifier.clear_cache()
    assert verifier.cache_len() == 0


def test_cache_is_bounded_in_bytes_oldest_first(verifier_cls: type[JWTVerifierPy]) -> None:
    tokens = [KEYS.good(now=NOW, jti=f"j{i}") for i in range(5)]
    each = len(tokens[0]) + CACHE_ENTRY_BYTES
    assert all(len(t) + CACHE_ENTRY_BYTES == each for t in tokens)
    verifier = make(verifier_cls, cache_size=100, cache_bytes=3 * each + each // 2)
    for tok in tokens:
        verifier.verify(tok, NOW)
    assert verifier.cache_len() == 3
    assert verifier.cache_held_bytes() == 3 * each
    verified = verifier.verified
    verifier.verify(tokens[-1], NOW)  # the newest are kept ...
    assert verifier.verified == verified
    verifier.verify(tokens[0], NOW)  # ... the oldest went first
    assert verifier.verified == verified + 1
    # every way out gives its bytes back
    verifier.revoke_jti("j0", NOW + 600)
    assert (verifier.cache_len(), verifier.cache_held_bytes()) == (2, 2 * each)
    assert reason(verifier, tokens[3], NOW + 10**6) == "expired"
    assert (verifier.cache_len(), verifier.cache_held_bytes()) == (1, each)
    verifier.remove_issuer("cygate")
    assert (verifier.cache_len(), verifier.cache_held_bytes()) == (0, 0)


def test_token_larger_than_the_byte_bound_is_not_cached(
    verifier_cls: type[JWTVerifierPy],
) -> None:
    good = KEYS.good(now=NOW)
    verifier = make(verifier_cls, cache_bytes=len(good) + CACHE_ENTRY_BYTES - 1)
    assert verifier.verify(good, NOW) == verifier.verify(good, NOW)
    assert (verifier.cache_len(), verifier.cache_held_bytes(), verifier.verified) == (0, 0, 2)


def test_verified_counts_full_checks_only(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = make(verifier_cls)
    a, b = KEYS.good(now=NOW, jti="a"), KEYS.good(now=NOW, jti="b")
    for tok in (a, a, b, a, b):
        verifier.verify(tok, NOW)
    reason(verifier, KEYS.good(now=NOW, jti="c", exp=NOW - 1))  # refused: not counted
    assert verifier.verified == 2
    verifier.clear_cache()
    assert verifier.cache_held_bytes() == 0
    verifier.verify(a, NOW)
    assert verifier.verified == 3


def test_cache_off(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = make(verifier_cls, cache_size=0)
    good = KEYS.good(now=NOW)
    assert verifier.verify(good, NOW) == verifier.verify(good, NOW)
    assert verifier.cache_len() == 0


def test_one_cached_token_per_jti(verifier_cls: type[JWTVerifierPy]) -> None:
    verifier = make(verifier_cls)
    a = KEYS.good("EdDSA", now=NOW, jti="same")
    b = KEYS.good("ES256", now=NOW, jti="same")
    verifier.verify(a, NOW)
    verifier.verify(b, NOW)
    assert verifier.cache_len() == 1
    verifier.revoke_jti("same", NOW + 600)
    assert reason(verifier, a) == reason(verifier, b) == "revoked"


def test_principal_factory_may_refuse(verifier_cls: type[JWTVerifierPy]) -> None:
    def principal(claims: dict[str, Any]) -> Any:
        raise JWTError("bad_claims")

    verifier = make(verifier_cls, principal=principal)
    assert reason(verifier, KEYS.good(now=NOW)) == "bad_claims"
    assert verifier.cache_len() == 0


def test_bad_configuration(verifier_cls: type[JWTVerifierPy]) -> None:
    with pytest.raises(ValueError):
        verifier_cls(leeway=-1)
    with pytest.raises(ValueError):
        verifier_cls(max_token_bytes=1)
    with pytest.raises(ValueError):
        verifier_cls(cache_size=-1)
    with pytest.raises(ValueError):
        verifier_cls(cache_bytes=-1)


def test_verify_key_checks_its_key() -> None:
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    for kid, alg, key in (
        ("k", "ES256", ed),
        ("k", "EdDSA", p256),
        ("k", "ES256", p384),
        ("k", "RS256", p256),
        ("k", "RS256", small_rsa),
        ("k", "HS256", ed),
        ("k", "none", ed),
        ("", "EdDSA", ed),
        ("k" * 257, "EdDSA", ed),
    ):
        with pytest.raises(ValueError):
            VerifyKey(kid, alg, key)
    assert "EdDSA" in repr(VerifyKey("k", "EdDSA", ed))


# ---------------------------------------------------------------------------------------------
# Building blocks: strict base64url, ECDSA signature conversion, key counting
# ---------------------------------------------------------------------------------------------


@given(st.binary(max_size=64))
def test_b64url_round_trip(data: bytes) -> None:
    assert b64url_decode(b64url_encode(data)) == data


@pytest.mark.parametrize("bad", [b"A", b"AB=", b"AB==", b"A+", b"A/", b"AB\n", b"AF", b"AAB"])
def test_b64url_refuses_non_canonical(bad: bytes) -> None:
    with pytest.raises(JWTError):
        b64url_decode(bad)


@given(st.binary(min_size=1, max_size=40), st.data())
@settings(max_examples=300)
def test_b64url_one_spelling_per_value(data: bytes, draw: Any) -> None:
    """Any other spelling of the same bytes is refused (both twins, through a whole token)."""
    encoded = b64url_encode(data)
    index = draw.draw(st.integers(0, len(encoded) - 1))
    char = draw.draw(
        st.sampled_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=. ")
    )
    variant = encoded[:index] + bytes((char,)) + encoded[index + 1 :]
    try:
        decoded = b64url_decode(variant)
    except JWTError:
        return
    assert decoded != data or variant == encoded


def test_es256_signatures_with_short_r_or_s(verifier_cls: type[JWTVerifierPy]) -> None:
    """r or s below 2**248 (a leading zero byte in the raw form) must convert to the same DER
    as cryptography writes; r or s with the high bit set needs a sign byte."""
    verifier = make(verifier_cls, cache_size=0)
    found_short = found_high = 0
    for i in range(3000):
        tok = KEYS.good("ES256", now=NOW, jti=f"j{i}")
        raw = b64url_decode(tok.rsplit(b".", 1)[1])
        r, s = raw[:32], raw[32:]
        short = r[0] == 0 or s[0] == 0
        high = r[0] & 0x80 or s[0] & 0x80
        if (short and found_short < 3) or (high and found_high < 3):
            assert verifier.verify(tok, NOW)
            found_short += short
            found_high += bool(high)
        if found_short >= 3 and found_high >= 3:
            break
    assert found_short >= 1 and found_high >= 1


@given(st.binary(min_size=64, max_size=64))
@settings(max_examples=200)
def test_es256_random_signatures_refused(sig: bytes) -> None:
    header, claims = KEYS.header("ES256"), KEYS.claims(NOW)
    tok = token(header, claims, "ES256", KEYS.ec, sig)
    for cls in _impls():
        assert reason(make(cls), tok) == "bad_signature"


def test_der_conversion_matches_cryptography() -> None:
    # r = 0x00..01, s = 0xff..ff: the two edge shapes of the minimal INTEGER encoding
    sig = bytes(31) + b"\x01" + b"\xff" * 32
    tok = token(KEYS.header("ES256"), KEYS.claims(NOW), "ES256", KEYS.ec, sig)
    for cls in _impls():
        assert reason(make(cls), tok) == "bad_signature"
    der = KEYS.ec.sign(b"data", ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    assert r > 0 and s > 0


@pytest.mark.parametrize(
    ("raw", "keys"),
    [
        (b"{}", 0),
        (b'{"a":1}', 1),
        (b'{"a":"b:c","d":"\\":"}', 2),
        (b'{"a" : {"b" :[{"c":1},{"c":2}]}, "x":"y"}', 5),
        (b'["a:", {"k\\\\":1}]', 1),
    ],
)
def test_count_keys(raw: bytes, keys: int) -> None:
    import msgspec

    assert count_raw_keys(raw) == keys
    assert count_json_keys(msgspec.json.decode(raw)) == keys


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=12,
)


@given(json_values, st.booleans())
@settings(max_examples=300)
def test_duplicate_keys_found_at_any_depth(value: Any, duplicate: bool) -> None:
    """Both twins find a repeated key wherever it is, in whatever spelling."""
    import json

    text = json.dumps({"v": value}, ensure_ascii=bool(duplicate))
    if duplicate:
        text = text[:-1] + ', "\\u0076": 1}'  # "v" again, escaped
    tok = token(KEYS.header(), text.encode(), "EdDSA", KEYS.ed)
    for cls in _impls():
        got = reason(make(cls), tok)
        assert got == ("duplicate_keys" if duplicate else "unknown_issuer"), (cls, text)


def _impls() -> list[type[JWTVerifierPy]]:
    impls: list[type[JWTVerifierPy]] = [JWTVerifierPy]
    compiled = getattr(selector, "JWTVerifierC", None)
    if compiled is not None:
        impls.append(compiled)
    return impls


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_random_bytes_never_crash(data: bytes) -> None:
    results = set()
    for cls in _impls():
        verifier = make(cls)
        try:
            verifier.verify(data, NOW)
            results.add("accepted")
        except JWTError as err:
            results.add(err.reason)
    assert len(results) == 1 and "accepted" not in results


@given(st.data())
@settings(max_examples=300)
def test_mutated_token_bytes_agree(data: Any) -> None:
    good = KEYS.good(data.draw(st.sampled_from(ALGS)), now=NOW)
    index = data.draw(st.integers(0, len(good) - 1))
    byte = data.draw(st.integers(0, 255))
    mutated = good[:index] + bytes((byte,)) + good[index + 1 :]
    results = set()
    for cls in _impls():
        try:
            make(cls).verify(mutated, NOW)
            results.add("accepted")
        except JWTError as err:
            results.add(err.reason)
    assert len(results) == 1
    if mutated != good and results == {"accepted"}:
        # only a change in unused trailing bits could keep a token valid, and those are refused
        pytest.fail(f"mutation at {index} accepted")


def _nested(depth: int, kind: str) -> bytes:
    """JSON text of ``0`` inside ``depth`` arrays or objects (json.dumps stops near 1000)."""
    opening, closing = (b"[", b"]") if kind == "list" else (b'{"a":', b"}")
    return opening * depth + b"0" + closing * depth


def _with(member: dict[str, Any], nested: bytes) -> bytes:
    """``member`` as JSON with ``"n": nested`` added."""
    return json.dumps(member).encode()[:-1] + b',"n":' + nested + b"}"


def _at_stack_depth(frames: int, call: Any) -> Any:
    """``call()`` with ``frames`` more Python frames under it (msgspec's nesting budget is what
    Python's recursion limit leaves)."""
    return call() if frames == 0 else _at_stack_depth(frames - 1, call)


@pytest.mark.parametrize("kind", ["list", "object"])
def test_claims_nested_past_the_limit_are_malformed_at_any_stack_depth(
    verifier_cls: type[JWTVerifierPy], kind: str
) -> None:
    """Found by fuzzing (tests/fuzz): a signed token whose claims nested ~1000 deep was
    malformed for the pure twin (msgspec's RecursionError) and valid for the compiled one, which
    runs a few Python frames shallower; which twin failed depended on the caller's stack. Now
    nesting past MAX_JSON_DEPTH is malformed, and the answer never depends on the stack."""
    verifier = make(verifier_cls)
    claims = KEYS.claims(NOW)
    # The claims object is level 1, so "n" may nest MAX_JSON_DEPTH - 1 levels.
    fits = token(KEYS.header(), _with(claims, _nested(MAX_JSON_DEPTH - 1, kind)), "EdDSA", KEYS.ed)
    assert verifier.verify(fits, NOW)["sub"] == claims["sub"]
    for nested in (MAX_JSON_DEPTH, 990 if kind == "list" else 400):
        deep = token(KEYS.header(), _with(claims, _nested(nested, kind)), "EdDSA", KEYS.ed)
        assert len(deep) <= 4096
        for frames in (0, 3, 10, 50):
            assert _at_stack_depth(frames, lambda tok=deep: reason(verifier, tok)) == "malformed"
    # Deep in the header too (checked before the claims).
    header = _with(KEYS.header(), _nested(MAX_JSON_DEPTH, kind))
    assert reason(verifier, token(header, claims, "EdDSA", KEYS.ed)) == "malformed"


@pytest.mark.parametrize(
    ("raw", "deep"),
    [
        (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, False),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), True),
        (b'{"a":"' + b"[" * 100 + b'"}', False),  # inside a string: not nesting
        (b'{"a":"\\"' + b"[" * 100 + b'"}', False),  # escaped quote, still inside
        (b'{"a":"\\"' + b",[" * 40 + b"]" * 40 + b"}", True),  # the string ended
        (b"[]" * 100, False),  # many brackets, shallow
    ],
)
def test_too_deep_counts_nesting_outside_strings(raw: bytes, deep: bool) -> None:
    assert too_deep(raw) is deep


def test_b64_helper_matches() -> None:
    assert b64(b"\xff\xfe") == b64url_encode(b"\xff\xfe")
