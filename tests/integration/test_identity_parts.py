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
from cygate.services.identity.revocation import PAGE, Revocations
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
# Revocations: the feed in Redis, each worker's set
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


async def started(redis: RedisHandle | None, **kw: Any) -> Revocations:
    revocations = Revocations(redis, verifier(), **({"interval": 0.05} | kw))
    await revocations.start()
    return revocations


async def test_a_revocation_reaches_other_workers_within_the_interval(redis: RedisHandle) -> None:
    a, b = await started(redis), await started(redis, interval=0.2)
    try:
        tok = KEYS.good(jti="jti-1")
        b.verifier.verify(tok)
        assert "jti-1" not in b.revoked
        await a.revoke([("jti-1", time.time() + 600), ("expired", time.time() - 1)])
        assert "jti-1" in a.revoked  # the revoking worker: at once
        waited = time.monotonic()
        while "jti-1" not in b.revoked:
            assert time.monotonic() - waited < 0.2 + 0.5, "not read within the interval"
            await asyncio.sleep(0.01)
        assert "expired" not in b.revoked
        feed, index = a.keys
        assert await redis.client.xlen(feed) == 1  # the expired token was not appended
        assert await redis.client.zcard(index) == 1
        assert feed.startswith(redis.prefix + "{revoked}") and index.endswith("}:exp")
    finally:
        await a.stop()
        await b.stop()


async def test_a_worker_started_after_revocations_loads_them_at_once(redis: RedisHandle) -> None:
    a = Revocations(redis, verifier(), interval=60)
    exp = time.time() + 600
    many = [(f"jti-{i}", exp) for i in range(PAGE + 5)]  # more than one page
    await a.revoke(many)
    late = Revocations(redis, verifier(), interval=60)
    await late.start()  # the whole feed, before the worker serves
    try:
        assert len(late.revoked) == PAGE + 5
        assert all(jti in late.revoked for jti, _ in many)
        await a.revoke([("one-more", exp)])
        assert await late.refresh()  # only what is new since its cursor
        assert len(late.revoked) == PAGE + 6
    finally:
        await late.stop()


async def test_expired_entries_leave_the_feed_and_the_local_set(redis: RedisHandle) -> None:
    a = Revocations(redis, verifier(), interval=60)
    b = Revocations(redis, verifier(), interval=60)
    now = time.time()
    await a.revoke([("short", now + 0.3), ("long", now + 600)])
    assert await b.refresh()
    assert set(b.revoked) == {"short", "long"}
    feed, index = a.keys
    await asyncio.sleep(0.4)
    assert await b.refresh()  # a read trims the feed, too
    assert await redis.client.xlen(feed) == 1 and await redis.client.zcard(index) == 1
    assert b.sweep() == 1 and set(b.revoked) == {"long"}
    assert a.sweep() == 1 and set(a.revoked) == {"long"}


async def test_without_redis_tokens_are_accepted_and_revocations_stay_local(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handle = dead_redis()
    with caplog.at_level(logging.WARNING, logger="cygate.identity"):
        revocations = await started(handle, interval=0.05)  # starts empty, does not fail
        assert not revocations.revoked
        await revocations.revoke([("jti-y", time.time() + 60)])  # logged, in its own set
    assert "jti-y" in revocations.revoked
    assert "revocation feed (Redis) failed" in caplog.text
    await revocations.stop()
    await handle.close()


async def test_redis_stopped_then_back(caplog: pytest.LogCaptureFixture) -> None:
    """Redis stops: every worker keeps what it knew (tokens accepted otherwise), the outage is
    logged once; a revocation made meanwhile is refused by its own worker at once and reaches
    the others once Redis is back (appended by the worker that kept it). A worker started while
    Redis is down loads the feed when Redis returns."""
    with PrivateRedis() as server:

        def handle() -> RedisHandle:
            client = aioredis.Redis.from_url(server.url, socket_timeout=0.3,
                                             socket_connect_timeout=0.3)  # fmt: skip
            return RedisHandle(client, "stopped:")

        handles = [handle(), handle(), handle()]
        kw = {"interval": 0.05, "timeout": 0.3, "backoff": 0.3}
        a, b = await started(handles[0], **kw), await started(handles[1], **kw)
        exp = time.time() + 600
        await a.revoke([("before", exp)])
        await asyncio.sleep(0.2)
        assert "before" in b.revoked
        with caplog.at_level(logging.WARNING, logger="cygate.identity"):
            server.stop()
            late = await started(handles[2], **kw)  # Redis down: starts with an empty set
            await a.revoke([("during", exp)])
            await asyncio.sleep(1.0)  # several intervals, several failed probes
            assert "during" in a.revoked  # its own worker refuses it at once
            assert "during" not in b.revoked and "before" in b.revoked  # the last known set
            assert not late.revoked
            failed = [r for r in caplog.records if "failed" in r.getMessage()]
            # one line per worker when the outage starts (not one per read), and the kept one
            assert len([r for r in failed if "revocation feed" in r.getMessage()]) == 3, failed
            server.start()  # empty: no persistence
            deadline = time.monotonic() + 5
            while not ("during" in b.revoked and "during" in late.revoked):
                assert time.monotonic() < deadline, "not learnt after Redis came back"
                await asyncio.sleep(0.05)
        assert "answers again" in caplog.text
        for r in (a, b, late):
            await r.stop()
        for h in handles:
            await h.close()


async def test_reads_behind_a_circuit_when_redis_hangs() -> None:
    """Redis paused (SIGSTOP: it accepts connections, never answers): a read waits its timeout
    and opens the circuit; for the backoff, reads return at once without asking; after SIGCONT
    a probe closes the circuit and what was revoked meanwhile is read."""
    with PrivateRedis() as server:
        client = aioredis.Redis.from_url(server.url, socket_timeout=0.3, socket_connect_timeout=0.3)
        handle = RedisHandle(client, "circuit:")
        revocations = Revocations(handle, verifier(), interval=60, timeout=0.3, backoff=0.6)
        assert await revocations.refresh()  # a connection in the pool, Redis known
        server.pause()
        t0 = time.monotonic()
        assert not await revocations.refresh()
        assert 0.25 <= time.monotonic() - t0 < 1.0  # bounded by the timeout
        t0 = time.monotonic()
        assert not await revocations.refresh()  # the circuit is open: not asked
        assert time.monotonic() - t0 < 0.05
        server.resume()
        await Revocations(handle, verifier(), interval=60).revoke(
            [("revoked-later", time.time() + 60)]
        )
        deadline = time.monotonic() + 5
        while not await revocations.refresh() or "revoked-later" not in revocations.revoked:
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
