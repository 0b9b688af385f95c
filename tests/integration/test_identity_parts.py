"""Identity parts against real Redis, a real HTTP server as the provider, real Argon2."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import socket
import threading
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from tests.conftest import REDIS_URL
from tests.private_redis import PrivateRedis

from cygate.core.jwt import JWTError, JWTVerifier, VerifyKey
from cygate.infra.redis import RedisHandle
from cygate.services.identity.keys import (
    KeyConfigError,
    KeyRing,
    development_key,
    jwk_to_verify_key,
    load_keyring,
)
from cygate.services.identity.limiter import LoginLimiter
from cygate.services.identity.passwords import Passwords
from cygate.services.identity.providers import ProviderKeys, parse_jwks
from cygate.services.identity.revocation import Revocations
from cygate.settings import IdentityProvider, SettingsError, load_settings
from identity_helpers import JWKSServer, jwk, pem_private, pem_public, thumbprint
from jwt_cases import SigningKeys, b64, token

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def redis(redis_prefix: str) -> Any:
    client = aioredis.Redis.from_url(REDIS_URL)
    handle = RedisHandle(client, redis_prefix + f"parts-{time.monotonic_ns()}:")
    try:
        yield handle
    finally:
        await client.aclose()


def dead_redis() -> RedisHandle:
    client = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=0.2, socket_timeout=0.2
    )
    return RedisHandle(client, "dead:")


# ---------------------------------------------------------------------------------------------
# Passwords: Argon2id off the event loop, the same work for unknown accounts
# ---------------------------------------------------------------------------------------------


async def test_hashing_never_blocks_the_event_loop() -> None:
    """While a deliberately slow Argon2id verify runs, the loop keeps turning."""
    slow = Passwords(time_cost=4, memory_cost=65536, parallelism=1, threads=1)
    stored = await slow.hash("correct horse battery")
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    ok = await slow.verify(stored, "correct horse battery")
    done.set()
    await task
    slow.close()
    assert ok
    assert ticks > 50  # a blocked loop would have ticked once or not at all


async def test_unknown_account_costs_a_real_verify() -> None:
    seen: list[str] = []

    class Recording(Passwords):
        def _check(self, stored: str, password: str) -> bool:
            seen.append(stored.rsplit("$", 2)[0])  # $argon2id$v=19$m=...,t=...,p=...
            return super()._check(stored, password)

    pw = Recording(time_cost=1, memory_cost=1024, parallelism=1, threads=1)
    stored = await pw.hash("the right one!")
    assert not await pw.verify(stored, "the wrong one")
    assert not await pw.verify(None, "the wrong one")
    assert await pw.verify(stored, "the right one!")
    assert len(seen) == 3 and len(set(seen)) == 1  # same parameters: the same cost
    assert not pw.needs_rehash(stored)
    assert Passwords(time_cost=2, memory_cost=1024, parallelism=1, threads=1).needs_rehash(stored)
    assert pw.needs_rehash("not a hash")
    assert not await pw.verify("not a hash", "x")
    pw.close()


# ---------------------------------------------------------------------------------------------
# Login limiter
# ---------------------------------------------------------------------------------------------


async def test_login_limiter_counts_in_redis(redis: RedisHandle) -> None:
    limiter = LoginLimiter(redis, window=60, per_account=2, per_address=3)
    other = LoginLimiter(redis, window=60, per_account=2, per_address=3)  # another worker
    assert (await limiter.check("a@x.io", "10.0.0.1")).allowed
    v = await limiter.failed("a@x.io", "10.0.0.1")
    assert (v.limit, v.remaining) == (2, 1) and 0 < v.reset <= 60
    await other.failed("a@x.io", "10.0.0.2")
    refused = await limiter.check("a@x.io", "10.0.0.3")
    assert not refused.allowed and refused.headers()["retry-after"]
    assert (await limiter.check("b@x.io", "10.0.0.1")).allowed
    await limiter.failed("c@x.io", "10.0.0.1")
    await limiter.failed("d@x.io", "10.0.0.1")  # the address's third failure
    by_address = await limiter.check("e@x.io", "10.0.0.1")
    assert not by_address.allowed and by_address.limit == 3
    await limiter.succeeded("a@x.io", "10.0.0.9")
    assert (await limiter.check("a@x.io", "10.0.0.9")).allowed


async def test_login_limiter_without_redis_still_limits(caplog: pytest.LogCaptureFixture) -> None:
    handle = dead_redis()
    limiter = LoginLimiter(handle, window=60, per_account=2, per_address=100)
    with caplog.at_level(logging.WARNING, logger="cygate.identity"):
        await limiter.failed("a@x.io", "10.0.0.1")
        await limiter.failed("a@x.io", "10.0.0.2")
        assert not (await limiter.check("a@x.io", "10.0.0.3")).allowed
        await limiter.succeeded("a@x.io", "10.0.0.3")
        assert (await limiter.check("a@x.io", "10.0.0.3")).allowed
    assert "counting locally" in caplog.text
    await handle.close()


# ---------------------------------------------------------------------------------------------
# Revocation list
# ---------------------------------------------------------------------------------------------

KEYS = SigningKeys()


def verifier() -> Any:
    v = JWTVerifier(leeway=0)
    v.set_issuer(
        "cygate",
        audience="cygate",
        keys=[VerifyKey(KEYS.kids["EdDSA"], "EdDSA", KEYS.ed.public_key())],
    )
    return v


async def test_revocation_reaches_other_workers(redis: RedisHandle) -> None:
    a, b = (
        Revocations(redis, verifier(), cache_seconds=0),
        Revocations(redis, verifier(), cache_seconds=0.2),
    )
    tok = KEYS.good(jti="jti-1")
    b.verifier.verify(tok)
    first = b.check("jti-1", int(time.time()) + 600)
    assert first is not None and await first is False  # asked Redis: not revoked
    assert b.check("jti-1", int(time.time()) + 600) is None  # cached for 0.2 s: no coroutine
    await a.revoke([("jti-1", time.time() + 600), ("expired", time.time() - 1)])
    assert a.verifier.is_revoked("jti-1")
    await asyncio.sleep(0.25)  # b's short cache runs out
    pending = b.check("jti-1", int(time.time()) + 600)
    assert pending is not None and await pending is True
    with pytest.raises(JWTError) as info:
        b.verifier.verify(tok)
    assert info.value.reason == "revoked"
    ttl = await redis.client.ttl(redis.key("revoked", "{jti-1}"))
    assert 0 < ttl <= 602
    assert not await redis.client.exists(redis.key("revoked", "{expired}"))


async def test_concurrent_checks_of_one_jti_ask_redis_once(redis: RedisHandle) -> None:
    revocations = Revocations(redis, verifier(), cache_seconds=0.2)
    asked = 0
    exists = redis.client.exists

    async def counting_exists(*keys: str) -> int:
        nonlocal asked
        asked += 1
        return int(await exists(*keys))

    redis.client.exists = counting_exists  # type: ignore[method-assign]
    try:
        expires = int(time.time()) + 600
        checks = [revocations.check("jti-many", expires) for _ in range(100)]
        assert all(c is not None for c in checks)
        assert await asyncio.gather(*checks) == [False] * 100  # type: ignore[arg-type]
        assert asked == 1  # one EXISTS for the hundred, not a hundred on the pool
        assert revocations.check("jti-many", expires) is None  # cached
        await Revocations(redis, verifier(), cache_seconds=0).revoke([("jti-many", expires)])
        await asyncio.sleep(0.25)
        checks = [revocations.check("jti-many", expires) for _ in range(50)]
        assert await asyncio.gather(*checks) == [True] * 50  # type: ignore[arg-type]
        assert asked == 2
    finally:
        redis.client.exists = exists  # type: ignore[method-assign]


async def test_a_cancelled_check_leaves_the_waiters_an_answer(redis: RedisHandle) -> None:
    revocations = Revocations(redis, verifier(), cache_seconds=5)
    expires = int(time.time()) + 600
    first = asyncio.ensure_future(revocations.check("jti-c", expires))  # type: ignore[arg-type]
    others = [revocations.check("jti-c", expires) for _ in range(5)]
    await asyncio.sleep(0)
    first.cancel()
    assert await asyncio.gather(*others) == [False] * 5  # type: ignore[arg-type]
    assert revocations.check("jti-c", expires) is None


async def test_revocation_check_fails_open_without_redis(caplog: pytest.LogCaptureFixture) -> None:
    handle = dead_redis()
    revocations = Revocations(handle, verifier(), cache_seconds=1)
    with caplog.at_level(logging.WARNING, logger="cygate.identity"):
        pending = revocations.check("jti-x", int(time.time()) + 60)
        assert pending is not None and await pending is False
        await revocations.revoke([("jti-y", time.time() + 60)])  # logged, still local
    assert revocations.verifier.is_revoked("jti-y")
    assert "accepting tokens" in caplog.text
    await handle.close()


async def test_revocation_check_behind_a_circuit_when_redis_hangs() -> None:
    """Redis paused (SIGSTOP: it accepts connections, never answers): the first check waits its
    timeout and opens the circuit; for the backoff, checks of other tokens answer at once
    (accepted: availability first); then one check probes. After SIGCONT a probe closes the
    circuit and a revocation recorded in Redis is seen again."""
    with PrivateRedis() as server:
        client = aioredis.Redis.from_url(server.url, socket_timeout=0.3, socket_connect_timeout=0.3)
        handle = RedisHandle(client, "circuit:")
        revocations = Revocations(handle, verifier(), cache_seconds=0, timeout=0.3, backoff=0.6)
        expires = int(time.time()) + 60
        pending = revocations.check("warm", expires)  # a connection in the pool, Redis known
        assert pending is not None and await pending is False
        server.pause()
        waited: list[float] = []
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 2.0:  # distinct tokens, none cached
            t0 = time.monotonic()
            pending = revocations.check(f"jti-{n}", expires)
            if pending is not None:
                assert await pending is False
            waited.append(time.monotonic() - t0)
            n += 1
            await asyncio.sleep(0.01)
        slow = [w for w in waited if w >= 0.25]
        # 2 s / (0.6 s backoff + 0.3 s probe) → the first failure and about two probes; without
        # the circuit every one of the ~100 checks waits the 0.3 s timeout.
        assert 1 <= len(slow) <= 4, (len(slow), len(waited))
        assert len(waited) > 30
        assert revocations.known_good("never-asked")  # the fused hit path skips Redis too
        server.resume()
        # Another worker revokes a token: only Redis tells this one.
        await Revocations(handle, verifier(), cache_seconds=0).revoke([("revoked-later", expires)])
        deadline = time.monotonic() + 5
        while True:  # the next probe (within a backoff) closes the circuit
            pending = revocations.check("revoked-later", expires)
            if pending is not None and await pending:
                break
            assert time.monotonic() < deadline, "the circuit did not close after SIGCONT"
            await asyncio.sleep(0.05)
        assert revocations.circuit.usable
        await handle.close()


# ---------------------------------------------------------------------------------------------
# External providers: JWKS fetched, refreshed on an unknown kid (rate limited), last good kept
# ---------------------------------------------------------------------------------------------


def provider(url: str, **kw: Any) -> IdentityProvider:
    fields: dict[str, Any] = {
        "issuer": "https://idp.test",
        "jwks_url": url + "/jwks.json",
        "audience": "api",
        "min_refresh_interval": 60,
    } | kw
    return IdentityProvider(**fields)


def idp_token(key: Any, kid: str, alg: str = "RS256") -> bytes:
    claims = KEYS.claims() | {
        "iss": "https://idp.test",
        "aud": "api",
        "roles": ["admin", "customer"],
    }
    return token(KEYS.header(alg) | {"kid": kid}, claims, alg, key)


async def test_provider_keys_life_cycle(caplog: pytest.LogCaptureFixture) -> None:
    server = JWKSServer()
    key1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server.set_keys(jwk(key1.public_key(), kid="k1", alg="RS256"))
    v = JWTVerifier(leeway=0)
    with server.running():
        keys = ProviderKeys([provider(server.url)], v)
        assert "https://idp.test" in keys
        with pytest.raises(JWTError) as info:  # known issuer, no keys yet
            v.verify(idp_token(key1, "k1"))
        assert (info.value.reason, info.value.issuer) == ("unknown_kid", "https://idp.test")
        await keys.start()
        for _ in range(200):
            if server.fetches():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        principal = v.verify(idp_token(key1, "k1"))
        assert principal.roles == frozenset({"customer"})  # the provider may not grant admin
        assert principal.issuer == "https://idp.test"
        # rotation at the provider: one fetch, shared by concurrent callers
        server.set_keys(jwk(key1.public_key(), kid="k1"), jwk(key2.public_key(), kid="k2"))
        before = server.fetches()
        results = await asyncio.gather(
            *(keys.refresh("https://idp.test", force=True) for _ in range(10))
        )
        assert all(results) and server.fetches() == before + 1
        assert v.verify(idp_token(key2, "k2"))
        # rate limited: an unknown kid within min_refresh_interval does not fetch again
        assert await keys.refresh("https://idp.test") is False
        assert server.fetches() == before + 1
        # provider down, broken, or empty: the last good set stays
        with caplog.at_level(logging.WARNING, logger="cygate.identity"):
            for status, body in (
                (503, b"down"),
                (200, b"{not json"),
                (200, b'{"keys": []}'),
                (200, b'{"keys": "x"}'),
            ):
                server.status, server.body = status, body
                assert await keys.refresh("https://idp.test", force=True) is False
                assert v.verify(idp_token(key1, "k1")) and v.verify(idp_token(key2, "k2"))
        assert "keeping the last good set" in caplog.text
        await keys.stop()


async def test_provider_unreachable_from_the_start() -> None:
    v = JWTVerifier(leeway=0)
    keys = ProviderKeys([provider(f"http://127.0.0.1:{closed_port()}")], v)
    assert await keys.refresh("https://idp.test", force=True) is False
    assert await keys.refresh("https://nobody.test") is False
    with pytest.raises(JWTError):
        v.verify(idp_token(rsa.generate_private_key(public_exponent=65537, key_size=2048), "k"))


def test_parse_jwks_skips_unusable_keys() -> None:
    good_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    doc = {
        "keys": [
            jwk(good_rsa, kid="rsa"),
            jwk(good_rsa, kid="rsa"),  # a duplicate kid: the first stays
            jwk(small, kid="small"),
            jwk(ed, kid="ed"),  # EdDSA is not in this provider's algorithms
            jwk(p256, kid="p256", alg="ES256"),
            jwk(good_rsa, kid="enc") | {"use": "enc"},
            jwk(good_rsa, kid="wrong-alg", alg="ES256"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": "AA", "y": "AA"},
            jwk(good_rsa),  # no kid
            "not an object",
        ]
    }
    keys = parse_jwks(json.dumps(doc).encode(), ["RS256", "ES256"])
    assert [(k.kid, k.alg) for k in keys] == [("rsa", "RS256"), ("p256", "ES256")]
    with pytest.raises(ValueError):
        parse_jwks(b"[]", ["RS256"])
    with pytest.raises(KeyConfigError):
        jwk_to_verify_key(jwk(ed, kid="x"), {"RS256"})


# ---------------------------------------------------------------------------------------------
# Key files, the key ring, the development key
# ---------------------------------------------------------------------------------------------


def test_key_ring_from_files(tmp_path: pathlib.Path) -> None:
    keys = SigningKeys()
    files = [
        pem_public(keys.rsa, tmp_path / "rsa.pub.pem"),
        pem_private(keys.ec, tmp_path / "ec.pem"),
        pem_private(keys.ed, tmp_path / "ed.pem"),
    ]
    ring = load_keyring(files, signing_kid="", generate_in=None, algorithm="EdDSA")
    assert ring.signer.alg == "ES256"  # the first private key listed
    assert ring.jwks()["keys"][0]["kid"] == thumbprint(keys.ec.public_key())
    assert {k.kid for k in ring.keys} == {
        thumbprint(keys.private(a).public_key()) for a in ("EdDSA", "ES256", "RS256")
    }
    ed_kid = thumbprint(keys.ed.public_key())
    ring = load_keyring(files, signing_kid=ed_kid, generate_in=None, algorithm="EdDSA")
    assert ring.signer.kid == ed_kid
    v = JWTVerifier(leeway=0)
    v.set_issuer("cygate", audience="cygate", keys=ring.verify_keys())
    for signer in ring.keys[1:]:
        header = {"alg": signer.alg, "typ": "at+jwt", "kid": signer.kid}
        signing_input_token = token(header, keys.claims(), signer.alg, keys.private(signer.alg))
        assert v.verify(signing_input_token)
        # and cygate's own signing code gives tokens the verifier takes
        head, body, _ = signing_input_token.split(b".")
        own = head + b"." + body + b"." + b64(signer.sign(head + b"." + body))
        assert v.verify(own)


@pytest.mark.parametrize(
    "problem",
    [
        "garbage",
        "missing",
        "small-rsa",
        "p384",
        "encrypted",
        "public-only",
        "unknown-kid",
        "duplicate",
    ],
)
def test_key_file_problems(tmp_path: pathlib.Path, problem: str) -> None:
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "key.pem"
    files = [str(path)]
    signing_kid = ""
    if problem == "garbage":
        path.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    elif problem == "small-rsa":
        pem_private(rsa.generate_private_key(public_exponent=65537, key_size=1024), path)
    elif problem == "p384":
        pem_private(ec.generate_private_key(ec.SECP384R1()), path)
    elif problem == "encrypted":
        path.write_bytes(
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
    elif problem == "public-only":
        pem_public(ed25519.Ed25519PrivateKey.generate(), path)
    elif problem == "unknown-kid":
        pem_private(ed25519.Ed25519PrivateKey.generate(), path)
        signing_kid = "nope"
    elif problem == "duplicate":
        pem_private(ed25519.Ed25519PrivateKey.generate(), path)
        files = [str(path), str(path)]
    with pytest.raises(KeyConfigError) as info:
        load_keyring(files, signing_kid=signing_kid, generate_in=None, algorithm="EdDSA")
    assert "\n" not in str(info.value)
    with pytest.raises(KeyConfigError):
        KeyRing([])


def test_development_key_race(tmp_path: pathlib.Path) -> None:
    """Eight threads create the key at once: one file, the same key for all."""
    results: list[pathlib.Path] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(development_key(tmp_path / "keys", "ES256"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["signing-es256.pem"]
    assert oct((tmp_path / "keys" / "signing-es256.pem").stat().st_mode)[-3:] == "600"
    ring = load_keyring([], signing_kid="", generate_in=str(tmp_path / "keys"), algorithm="ES256")
    assert ring.signer.alg == "ES256"


# ---------------------------------------------------------------------------------------------
# Settings of the identity block
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "name"),
    [
        (
            {"CYGATE_REFRESH_TOKEN_TTL": "9999999", "CYGATE_REFRESH_FAMILY_TTL": "60"},
            "refresh_token_ttl",
        ),
        ({"CYGATE_ADMIN_EMAIL": "a@example.com"}, "admin_email"),
        (
            {"CYGATE_ADMIN_EMAIL": "a@example.com", "CYGATE_ADMIN_PASSWORD": "short"},
            "admin_password",
        ),
        ({"CYGATE_ENVIRONMENT": "production"}, "jwt_key_files"),
        ({"CYGATE_IDENTITY_PROVIDERS": "[{"}, "IDENTITY_PROVIDERS"),
        (
            {
                # the gateway's own issuer, derived from the default public_base_url
                "CYGATE_IDENTITY_PROVIDERS": '[{"issuer": "http://localhost:8000",'
                ' "jwks_url": "http://x/j", "audience": "a"}]'
            },
            "identity_providers",
        ),
        ({"CYGATE_PUBLIC_BASE_URL": "localhost:8000"}, "public_base_url"),
        ({"CYGATE_PUBLIC_BASE_URL": "https://x.test/?a=1"}, "public_base_url"),
        (
            {
                "CYGATE_IDENTITY_PROVIDERS": '[{"issuer": "i", "jwks_url": "file:///etc/passwd",'
                ' "audience": "a"}]'
            },
            "identity_providers",
        ),
        (
            {
                "CYGATE_IDENTITY_PROVIDERS": '[{"issuer": "i", "jwks_url": "http://x/j",'
                ' "audience": "a", "algorithms": ["HS256"]}]'
            },
            "identity_providers",
        ),
        ({"CYGATE_JWT_LEEWAY": "-1"}, "jwt_leeway"),
        ({"CYGATE_JWT_KEY_ALGORITHM": "none"}, "jwt_key_algorithm"),
    ],
)
def test_identity_settings_refused(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert name in str(info.value)
    assert "secret" not in str(info.value)


def test_identity_settings_from_environment() -> None:
    s = load_settings(
        {
            "CYGATE_JWT_KEY_FILES": "a.pem, b.pem",
            "CYGATE_ADMIN_EMAIL": "a@example.com",
            "CYGATE_ADMIN_PASSWORD": "a long secret value",
            "CYGATE_IDENTITY_PROVIDERS": json.dumps(
                [{"issuer": "i", "jwks_url": "https://x/j", "audience": "a"}]
            ),
        }
    )
    assert s.identity.jwt_key_files == ["a.pem", "b.pem"]
    assert s.identity.providers[0].algorithms == ["RS256"]
    assert s.redacted()["admin_password"] == "***"


def test_token_issuer_is_a_url_derived_from_the_public_base_url() -> None:
    """RFC 9068: ``iss`` is the public base URL (no trailing slash) unless set on its own."""
    assert load_settings({}).identity.jwt_issuer == "http://localhost:8000"
    derived = load_settings({"CYGATE_PUBLIC_BASE_URL": "https://api.example.test/v/"})
    assert derived.identity.jwt_issuer == "https://api.example.test/v"
    given = {"CYGATE_PUBLIC_BASE_URL": "https://a.test", "CYGATE_JWT_ISSUER": "https://b.test"}
    assert load_settings(given).identity.jwt_issuer == "https://b.test"
    assert (
        load_settings({"CYGATE_JWT_KEY_ALGORITHM": "RS256"}).identity.jwt_key_algorithm == "RS256"
    )
