"""Multi-factor parts: the TOTP arithmetic (RFC 6238's own test vector), the sealed secrets and
their key file, recovery codes, and the identity service against real PostgreSQL and Redis where
it matters most: concurrent uses of one code, of which exactly one may pass."""

from __future__ import annotations

import asyncio
import base64
import pathlib
import secrets
import stat
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pyotp
import pytest
import redis.asyncio as aioredis
from tests.conftest import REDIS_URL
from tests.store_helpers import app_pool

from cygate.infra.redis import RedisHandle
from cygate.services.identity import mfa, store
from cygate.services.identity.keys import KeyConfigError
from cygate.services.identity.models import MfaChallengeOut, TokenOut
from cygate.services.identity.service import Identity, RequestInfo, WrongCode
from cygate.settings import load_settings

pytestmark = pytest.mark.integration

# RFC 6238 Appendix B: the SHA-1 seed, and its 8-digit TOTP at T = 59 s is 94287082.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()


# ---------------------------------------------------------------------------------------------
# TOTP and recovery codes
# ---------------------------------------------------------------------------------------------


def test_rfc6238_vector_and_the_window() -> None:
    assert mfa.matching_steps(RFC_SECRET, "287082", 59) == [1]
    assert mfa.matching_steps(RFC_SECRET, "287082", 59 + 30) == [1]  # one step late
    assert mfa.matching_steps(RFC_SECRET, "287082", 59 - 30) == [1]  # one step early
    assert mfa.matching_steps(RFC_SECRET, "287082", 59 + 60) == []  # stale
    assert mfa.matching_steps(RFC_SECRET, "287083", 59) == []
    # RFC 6238 Appendix B, T = 1111111109: 07081804 -> 081804
    assert mfa.matching_steps(RFC_SECRET, "081804", 1111111109) == [1111111109 // 30]


def test_new_secrets_are_160_bits_and_the_uri_names_the_parameters() -> None:
    secret = mfa.new_totp_secret()
    assert len(pyotp.TOTP(secret).byte_secret()) == 20 and secret != mfa.new_totp_secret()
    uri = mfa.provisioning_uri(secret, "a@example.com", "cygate")
    assert uri.startswith("otpauth://totp/cygate:a%40example.com?secret=" + secret)
    assert "issuer=cygate" in uri


def test_code_forms() -> None:
    assert mfa.is_totp_code("012345")
    for bad in ("12345", "1234567", "12a456", "\uff10" * 6, "123456\n"):
        assert not mfa.is_totp_code(bad)
    codes = mfa.new_recovery_codes()
    assert len(codes) == mfa.RECOVERY_CODES == len(set(codes))
    for value in codes:
        assert len(value) == 19 and value.count("-") == 3
        normal = mfa.normalise_recovery_code(value)
        assert normal == value.replace("-", "")
        assert mfa.normalise_recovery_code(value.upper().replace("-", "")) == normal
    for bad in ("abcd-efgh-ijkl-mno", "abcd-efgh-ijkl-mno1", "abcd--efgh-ijkl-mnop", "123456"):
        assert mfa.normalise_recovery_code(bad) is None


# ---------------------------------------------------------------------------------------------
# Sealed secrets and the MFA key
# ---------------------------------------------------------------------------------------------


def test_sealed_secrets_open_only_for_their_user_under_their_key() -> None:
    key = secrets.token_bytes(32)
    box, same = mfa.SecretBox(key), mfa.SecretBox(key)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    sealed = box.seal(alice, "JBSWY3DPEHPK3PXP")
    assert b"JBSWY3DPEHPK3PXP" not in sealed and sealed != box.seal(alice, "JBSWY3DPEHPK3PXP")
    assert same.open(alice, sealed, box.key_id) == "JBSWY3DPEHPK3PXP"
    with pytest.raises(mfa.SealedSecretError):
        box.open(bob, sealed, box.key_id)  # moved to another user's row
    altered = bytearray(sealed)
    altered[-1] ^= 1
    with pytest.raises(mfa.SealedSecretError):
        box.open(alice, bytes(altered), box.key_id)
    other = mfa.SecretBox(secrets.token_bytes(32))
    with pytest.raises(mfa.SealedSecretError, match="another MFA key"):
        other.open(alice, sealed, box.key_id)
    assert box.recovery_hash(alice, "x" * 16) != box.recovery_hash(bob, "x" * 16)
    assert box.recovery_hash(alice, "x" * 16) != other.recovery_hash(alice, "x" * 16)
    with pytest.raises(KeyConfigError):
        mfa.SecretBox(b"short")


def test_key_files(tmp_path: pathlib.Path) -> None:
    key = secrets.token_bytes(32)
    for text in (base64.b64encode(key), base64.urlsafe_b64encode(key).rstrip(b"=")):
        path = tmp_path / "k"
        path.write_bytes(text + b"\n")
        assert mfa.load_mfa_key(path) == key
    for bad in (b"not base64!", base64.b64encode(key[:16]), b"\xff\xfe"):
        path.write_bytes(bad)
        with pytest.raises(KeyConfigError, match=str(path)):
            mfa.load_mfa_key(path)
    with pytest.raises(KeyConfigError, match="cannot read"):
        mfa.load_mfa_key(tmp_path / "missing")


def test_development_key_is_made_once(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "keys"
    results: list[bytes] = []

    def make() -> None:
        results.append(mfa.load_mfa_key(mfa.development_mfa_key(folder)))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert [p.name for p in folder.iterdir()] == ["mfa.key"]
    assert stat.S_IMODE((folder / "mfa.key").stat().st_mode) == 0o600
    settings = load_settings({}, jwt_key_dir=str(folder))
    assert (
        mfa.mfa_key_from_settings(settings.identity, "development").key_id
        == mfa.SecretBox(results[0]).key_id
    )
    given = tmp_path / "given.key"
    given.write_bytes(base64.b64encode(secrets.token_bytes(32)))
    assert (
        mfa.mfa_key_from_settings(
            load_settings({}, mfa_key_file=str(given)).identity, "development"
        ).key_id
        != mfa.SecretBox(results[0]).key_id
    )


def test_production_needs_an_mfa_key_file() -> None:
    from cygate.settings import SettingsError

    prod = {
        "CYGATE_ENVIRONMENT": "production",
        "CYGATE_JWT_KEY_FILES": "/keys/a.pem",
        "CYGATE_CACHE_KEY_SECRET": "k3y",
    }
    with pytest.raises(SettingsError, match="mfa_key_file"):
        load_settings(prod)
    s = load_settings(
        {**prod, "CYGATE_MFA_KEY_FILE": "/keys/mfa.key", "CYGATE_MFA_REQUIRED_ROLES": "admin"}
    )
    assert s.identity.mfa_required_roles == ["admin"]
    assert load_settings(
        {"CYGATE_MFA_REQUIRED_ROLES": '["admin", "catalog_manager"]'}
    ).identity.mfa_required_roles == [
        "admin",
        "catalog_manager",
    ]
    with pytest.raises(SettingsError, match="mfa_required_roles"):
        load_settings({"CYGATE_MFA_REQUIRED_ROLES": '["root"]'})


# ---------------------------------------------------------------------------------------------
# The service: one code, concurrent uses
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def identity(
    test_db_dsn: str, redis_prefix: str, tmp_path: pathlib.Path
) -> AsyncIterator[Identity]:
    settings = load_settings(
        {},
        database_url=test_db_dsn,
        jwt_key_dir=str(tmp_path / "keys"),
        argon2_time_cost=1,
        argon2_memory_cost=1024,
        login_max_failures_per_account=50,
    )
    client = aioredis.Redis.from_url(REDIS_URL)
    service = Identity(settings.identity, environment=settings.server.environment)
    async with app_pool(test_db_dsn, max_size=20) as pool:
        await service.start(pool, RedisHandle(client, f"{redis_prefix}mfa-{time.monotonic_ns()}:"))
        try:
            yield service
        finally:
            await service.stop()
            await client.aclose()


INFO = RequestInfo("192.0.2.7", "test")


def settle() -> None:
    left = 30 - time.time() % 30
    if left < 5:
        time.sleep(left + 0.2)


async def enrolled(identity: Identity) -> tuple[str, str, str, list[str]]:
    """A user with MFA active (verified with the previous step's code): (email, password,
    secret, recovery codes)."""
    email, password = f"mfa-{uuid.uuid4().hex[:10]}@example.com", secrets.token_urlsafe(12)
    user = await identity.register(email, password, "", INFO)
    enrolment = await identity.enrol_totp(user.id, INFO)
    assert enrolment is not None
    secret = enrolment[0]
    codes = await identity.verify_totp(user.id, pyotp.TOTP(secret).at(time.time() - 30), INFO)
    return email, password, secret, codes


async def challenge(identity: Identity, email: str, password: str) -> str:
    answer, _ = await identity.login(email, password, INFO)
    assert isinstance(answer, MfaChallengeOut)
    return answer.mfa_token


async def attempt(identity: Identity, token: str, code: str) -> Any:
    try:
        return await identity.login_mfa(token, code, INFO)
    except WrongCode as exc:
        return exc


async def test_concurrent_uses_of_one_code_let_one_through(identity: Identity) -> None:
    settle()
    email, password, secret, _ = await enrolled(identity)
    now = pyotp.TOTP(secret).now()
    tokens = [await challenge(identity, email, password) for _ in range(6)]
    results = await asyncio.gather(*(attempt(identity, t, now) for t in tokens))
    assert sum(isinstance(r, TokenOut) for r in results) == 1, results
    assert sum(isinstance(r, WrongCode) for r in results) == 5


async def test_concurrent_uses_of_one_mfa_token_let_one_through(identity: Identity) -> None:
    settle()
    email, password, secret, recovery = await enrolled(identity)
    token = await challenge(identity, email, password)
    totp = pyotp.TOTP(secret)
    codes = [totp.now(), totp.at(time.time() + 30), recovery[0], recovery[1]]
    results = await asyncio.gather(*(attempt(identity, token, c) for c in codes))
    assert sum(isinstance(r, TokenOut) for r in results) == 1, results


async def test_concurrent_uses_of_one_recovery_code_let_one_through(
    identity: Identity, test_db_dsn: str
) -> None:
    settle()
    email, password, _, recovery = await enrolled(identity)
    tokens = [await challenge(identity, email, password) for _ in range(5)]
    results = await asyncio.gather(*(attempt(identity, t, recovery[4]) for t in tokens))
    assert sum(isinstance(r, TokenOut) for r in results) == 1, results
    conn = await asyncpg.connect(test_db_dsn)
    try:
        used = await conn.fetchval(
            "SELECT count(*) FROM mfa_recovery_codes r JOIN users u ON u.id = r.user_id"
            " WHERE u.email = $1 AND r.used_at IS NOT NULL",
            email,
        )
    finally:
        await conn.close()
    assert used == 1


async def test_a_sealed_secret_under_another_key_is_reported(
    identity: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    from cygate.services.identity.service import MfaUnavailable

    settle()
    email, password, secret, _ = await enrolled(identity)
    token = await challenge(identity, email, password)
    original = identity.mfa_box
    identity.mfa_box = mfa.SecretBox(secrets.token_bytes(32))  # as if the key file changed
    try:
        with pytest.raises(MfaUnavailable):
            await identity.login_mfa(token, pyotp.TOTP(secret).now(), INFO)
    finally:
        identity.mfa_box = original
    assert "cannot be opened" in caplog.text
    # nothing was spent: with the right key the same token and code work
    assert isinstance(await attempt(identity, token, pyotp.TOTP(secret).now()), TokenOut)


async def test_claim_of_a_step_is_atomic(identity: Identity) -> None:
    settle()
    email, _, _, _ = await enrolled(identity)
    row = await store.login_row(identity.pool, email)
    assert row is not None and row.mfa
    step = int(time.time() // 30) + 5
    results = await asyncio.gather(
        *(store.claim_totp_step(identity.pool, row.id, step) for _ in range(10))
    )
    assert sorted(results) == [False] * 9 + [True]
    assert not await store.claim_totp_step(identity.pool, row.id, step - 1)
