"""Multi-factor sign-in through a real gateway (two workers), black box over HTTP.

The gateway requires MFA for the ``admin`` role, counts at most ``PER_ACCOUNT`` wrong codes per
user and ``PER_ADDRESS`` per client address, and generates its MFA key in a folder of the
test's own. Codes are computed here with ``pyotp`` from the secret the enrolment answers.

TOTP steps are 30 s and each is usable once per user, so a test that needs several good codes
uses the step before, the current one and the next (all accepted), on a fresh user, and starts
clear of a step boundary (:func:`settle`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt as pyjwt
import pyotp
import pytest
from tests.acceptance.conftest import Gateway, start_gateway, stop_gateway

pytestmark = pytest.mark.acceptance

ADMIN_EMAIL = "mfa-root-admin@example.com"
ADMIN_PASSWORD = secrets.token_urlsafe(12)
PER_ACCOUNT = 3
PER_ADDRESS = 8
LOGIN = "/api/v1/auth/login"
LOGIN_MFA = "/api/v1/auth/login/mfa"
TOTP = "/api/v1/users/me/mfa/totp"
VERIFY = "/api/v1/users/me/mfa/totp/verify"


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mfa-keys")


@pytest.fixture(scope="module")
def gw(gateway_env: dict[str, str], seeded: dict[str, object], key_dir: Path) -> Iterator[Gateway]:
    extra = {
        "CYGATE_JWT_KEY_DIR": str(key_dir),
        "CYGATE_MFA_REQUIRED_ROLES": '["admin"]',
        "CYGATE_ADMIN_EMAIL": ADMIN_EMAIL,
        "CYGATE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CYGATE_ARGON2_TIME_COST": "1",
        "CYGATE_ARGON2_MEMORY_COST": "1024",
        "CYGATE_TRUSTED_PROXIES": "127.0.0.1",
        "CYGATE_LOGIN_MAX_FAILURES_PER_ACCOUNT": str(PER_ACCOUNT),
        "CYGATE_LOGIN_MAX_FAILURES_PER_ADDRESS": str(PER_ADDRESS),
    }
    gateway = start_gateway(gateway_env, extra_env=extra)
    try:
        yield gateway
    finally:
        output = stop_gateway(gateway)
        assert "Traceback" not in output, output


# -- helpers ------------------------------------------------------------------------------------


def settle() -> None:
    """Wait out the end of a TOTP step, so the next seconds stay in one step."""
    left = 30 - time.time() % 30
    if left < 5:
        time.sleep(left + 0.2)


def code(secret: str, steps: int = 0) -> str:
    """The code of the step ``steps`` away from the current one."""
    return pyotp.TOTP(secret).at(time.time() + 30 * steps)


def client(gw: Gateway) -> httpx.Client:
    """A client with a client address of its own (X-Forwarded-For, trusted from loopback)."""
    address = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"
    return gw.client(headers={"x-forwarded-for": address})


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def claims(token: str) -> dict[str, Any]:
    return dict(pyjwt.decode(token, options={"verify_signature": False}))


def is_problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body = dict(r.json())
    assert body["status"] == status and body["request_id"] == r.headers["x-request-id"]
    if field is not None:
        assert [e["field"] for e in body["errors"]] == [field], body
    return body


def db(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


_OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Account:
    """A registered customer, signed in with the password."""

    def __init__(self, gw: Gateway) -> None:
        self.c = client(gw)
        _OPEN.append(self.c)
        self.email = f"mfa-{uuid.uuid4().hex[:12]}@example.com"
        self.password = secrets.token_urlsafe(12)
        r = self.c.post(
            "/api/v1/auth/register", json={"email": self.email, "password": self.password}
        )
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]
        self.tokens = self.password_login()
        self.secret = ""

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.tokens["access_token"])

    def login(self) -> httpx.Response:
        return self.c.post(LOGIN, json={"email": self.email, "password": self.password})

    def password_login(self) -> dict[str, Any]:
        r = self.login()
        assert r.status_code == 200 and "access_token" in r.json(), r.text
        return dict(r.json())

    def enrol(self) -> dict[str, Any]:
        r = self.c.post(TOTP, headers=self.auth)
        assert r.status_code == 201, r.text
        body = dict(r.json())
        self.secret = body["secret"]
        return body

    def activate(self) -> list[str]:
        """Enrol and verify with the code of the step before: the current and next stay
        usable."""
        self.enrol()
        r = self.c.post(VERIFY, json={"code": code(self.secret, -1)}, headers=self.auth)
        assert r.status_code == 200, r.text
        return list(r.json()["recovery_codes"])

    def challenge(self) -> str:
        r = self.login()
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"mfa_required", "mfa_token", "expires_in"}, body
        assert body["mfa_required"] is True and body["expires_in"] == 300
        return str(body["mfa_token"])

    def second_step(self, value: str, token: str | None = None) -> httpx.Response:
        return self.c.post(
            LOGIN_MFA,
            json={"mfa_token": self.challenge() if token is None else token, "code": value},
        )


# -- enrolment ------------------------------------------------------------------------------------


def test_enrol_verify_and_sign_in_with_a_code(gw: Gateway, key_dir: Path) -> None:
    settle()
    a = Account(gw)
    assert claims(a.tokens["access_token"])["amr"] == ["pwd"]
    body = a.enrol()
    assert set(body) == {"secret", "otpauth_uri"}
    assert len(body["secret"]) == 32 and len(pyotp.TOTP(body["secret"]).byte_secret()) == 20
    uri = body["otpauth_uri"]
    assert uri.startswith("otpauth://totp/cygate:") and f"secret={body['secret']}" in uri
    assert "issuer=cygate" in uri
    # inactive until verified: the password alone still signs in
    assert "access_token" in a.login().json()
    r = a.c.post(VERIFY, json={"code": code(a.secret, -1)}, headers=a.auth)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    recovery = r.json()["recovery_codes"]
    assert len(recovery) == 10 and len(set(recovery)) == 10
    # now the password gives an mfa_token, and no tokens
    r = a.login()
    assert r.status_code == 200 and "access_token" not in r.json()
    r = a.second_step(code(a.secret))
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert set(tokens) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert claims(tokens["access_token"])["amr"] == ["pwd", "otp"]
    assert a.c.get("/api/v1/users/me", headers=bearer(tokens["access_token"])).status_code == 200
    # the generated development key: next to the generated signing key, private
    key = key_dir / "mfa.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_secrets_and_recovery_codes_are_not_stored_in_clear(gw: Gateway, test_db_dsn: str) -> None:
    settle()
    a = Account(gw)
    recovery = a.activate()
    [row] = db(
        test_db_dsn, "SELECT secret_sealed FROM mfa_totp WHERE user_id = $1", uuid.UUID(a.id)
    )
    assert a.secret.encode() not in row["secret_sealed"]
    assert pyotp.TOTP(a.secret).byte_secret() not in row["secret_sealed"]
    hashes = db(
        test_db_dsn, "SELECT code_hash FROM mfa_recovery_codes WHERE user_id = $1", uuid.UUID(a.id)
    )
    assert len(hashes) == 10
    stored = {bytes(h["code_hash"]) for h in hashes}
    for value in recovery:
        plain = value.replace("-", "").encode()
        assert plain not in stored and hashlib.sha256(plain).digest() not in stored


def test_enrol_twice_and_verify_without_enrolment(gw: Gateway) -> None:
    settle()
    a = Account(gw)
    is_problem(a.c.post(VERIFY, json={"code": "123456"}, headers=a.auth), 409)
    first = a.enrol()["secret"]
    second = a.enrol()["secret"]  # a pending enrolment is replaced
    assert first != second
    r = a.c.post(VERIFY, json={"code": code(first)}, headers=a.auth)
    is_problem(r, 422, "body.code")  # the replaced secret's codes are no good
    r = a.c.post(VERIFY, json={"code": code(second, -1)}, headers=a.auth)
    assert r.status_code == 200, r.text
    is_problem(a.c.post(TOTP, headers=a.auth), 409)  # active: 409
    is_problem(a.c.post(VERIFY, json={"code": code(second)}, headers=a.auth), 409)


def test_mfa_endpoints_need_a_token(gw: Gateway) -> None:
    with client(gw) as c:
        assert c.post(TOTP).status_code == 401
        assert c.post(VERIFY, json={"code": "123456"}).status_code == 401
        assert c.request("DELETE", TOTP, json={"code": "123456"}).status_code == 401


# -- codes used once ------------------------------------------------------------------------------


def test_a_code_is_used_once(gw: Gateway) -> None:
    settle()
    a = Account(gw)
    a.activate()  # the previous step's code is spent
    is_problem(a.second_step(code(a.secret, -1)), 401)
    now = code(a.secret)
    assert a.second_step(now).status_code == 200
    r = a.second_step(now)  # the same code again, with a new mfa_token
    is_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_a_code_of_the_next_window_is_used_once_and_closes_the_earlier_ones(gw: Gateway) -> None:
    settle()
    a = Account(gw)
    a.activate()
    ahead = code(a.secret, +1)
    assert a.second_step(ahead).status_code == 200
    is_problem(a.second_step(ahead), 401)
    is_problem(a.second_step(code(a.secret)), 401)  # an earlier step after a later one


def test_stale_and_malformed_codes(gw: Gateway) -> None:
    settle()
    a = Account(gw)
    a.activate()
    is_problem(a.second_step(code(a.secret, -2)), 401)  # two steps old
    is_problem(a.second_step(code(a.secret, +2)), 401)  # two steps ahead
    token = a.challenge()
    for bad in (
        "12345",
        "1234567",
        "12345a",
        "",
        " 123456",
        "\uff11\uff12\uff13\uff14\uff15\uff16",
        "abcd-efgh",
    ):
        r = a.c.post(LOGIN_MFA, json={"mfa_token": token, "code": bad})
        is_problem(r, 422, "body.code")
        is_problem(a.c.post(VERIFY, json={"code": bad}, headers=a.auth), 422, "body.code")
        r = a.c.request("DELETE", TOTP, json={"code": bad}, headers=a.auth)
        is_problem(r, 422, "body.code")
    is_problem(a.c.post(LOGIN_MFA, json={"mfa_token": token, "code": 123456}), 422, "body.code")
    is_problem(a.c.post(LOGIN_MFA, json={"mfa_token": token}), 422)
    is_problem(a.c.post(LOGIN_MFA, json={"mfa_token": token, "code": "123456", "extra": 1}), 422)
    # the malformed attempts spent nothing: the token and the current code still work
    assert a.second_step(code(a.secret), token).status_code == 200


def test_verify_refuses_malformed_and_recovery_shaped_codes(gw: Gateway) -> None:
    settle()
    a = Account(gw)
    a.enrol()
    for bad in ("12345", "abcdefg", "aaaa-bbbb-cccc-dddd"):
        is_problem(a.c.post(VERIFY, json={"code": bad}, headers=a.auth), 422, "body.code")
    is_problem(a.c.post(VERIFY, json={"code": code(a.secret, -2)}, headers=a.auth), 422)


# -- the mfa_token --------------------------------------------------------------------------------


def test_unknown_tampered_spent_and_expired_mfa_tokens(gw: Gateway, test_db_dsn: str) -> None:
    settle()
    a = Account(gw)
    a.activate()
    now = code(a.secret)
    is_problem(a.second_step(now, secrets.token_urlsafe(32)), 401)
    token = a.challenge()
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    is_problem(a.second_step(now, tampered), 401)
    is_problem(a.second_step(now, ""), 401)
    is_problem(a.second_step(now, "x" * 257), 422)
    lone_surrogate = b'{"mfa_token": "\\ud800abc", "code": "123456"}'
    r = a.c.post(LOGIN_MFA, content=lone_surrogate, headers={"content-type": "application/json"})
    is_problem(r, 400)  # the strict decoder refuses a lone surrogate
    # not a Bearer token
    r = a.c.get("/api/v1/users/me", headers=bearer(token))
    assert r.status_code == 401
    # expired: its row says so
    digest = hashlib.sha256(token.encode()).digest()
    db(
        test_db_dsn,
        "UPDATE mfa_challenges SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
        digest,
    )
    is_problem(a.second_step(now, token), 401)
    # spent: one use
    token = a.challenge()
    assert a.second_step(now, token).status_code == 200
    is_problem(a.second_step(code(a.secret, +1), token), 401)


def test_a_wrong_code_leaves_the_mfa_token_usable(gw: Gateway) -> None:
    settle()
    a = Account(gw)
    a.activate()
    token = a.challenge()
    wrong = f"{(int(code(a.secret)) + 1) % 1_000_000:06d}"
    is_problem(a.second_step(wrong, token), 401)
    assert a.second_step(code(a.secret), token).status_code == 200


# -- limits ---------------------------------------------------------------------------------------


def test_wrong_codes_are_limited_per_account(gw: Gateway) -> None:
    settle()
    a = Account(gw)
    a.activate()
    good = code(a.secret)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    answers = [a.second_step(wrong).status_code for _ in range(PER_ACCOUNT)]
    assert answers == [401] * PER_ACCOUNT
    r = a.second_step(good)  # even the right code, now
    body = is_problem(r, 429)
    assert int(r.headers["retry-after"]) > 0 and "code" in body["detail"]
    # from another address too: the count is the account's
    with client(gw) as other:
        r = other.post(LOGIN, json={"email": a.email, "password": a.password})
        token = r.json()["mfa_token"]  # the password step is not what is limited
        is_problem(other.post(LOGIN_MFA, json={"mfa_token": token, "code": good}), 429)
    # and the same applies to turning MFA off
    is_problem(a.c.request("DELETE", TOTP, json={"code": good}, headers=a.auth), 429)


def test_wrong_codes_are_limited_per_address(gw: Gateway) -> None:
    with client(gw) as c:
        answers = [
            c.post(
                LOGIN_MFA, json={"mfa_token": secrets.token_urlsafe(32), "code": "000000"}
            ).status_code
            for _ in range(PER_ADDRESS + 1)
        ]
    assert answers == [401] * PER_ADDRESS + [429]


# -- recovery codes -------------------------------------------------------------------------------


def test_a_recovery_code_works_once(gw: Gateway) -> None:
    settle()
    a = Account(gw)
    recovery = a.activate()
    r = a.second_step(recovery[0].upper().replace("-", ""))  # case and hyphens do not matter
    assert r.status_code == 200, r.text
    assert claims(r.json()["access_token"])["amr"] == ["pwd", "otp"]
    is_problem(a.second_step(recovery[0]), 401)
    assert a.second_step(recovery[1]).status_code == 200
    other = Account(gw)
    other.activate()
    is_problem(other.second_step(recovery[2]), 401)  # another user's code


# -- turning MFA off ------------------------------------------------------------------------------


def test_disable_with_a_code(gw: Gateway) -> None:
    settle()
    a = Account(gw)
    recovery = a.activate()
    r = a.c.request("DELETE", TOTP, json={"code": code(a.secret, -1)}, headers=a.auth)
    is_problem(r, 422, "body.code")  # spent by the verification
    r = a.c.request("DELETE", TOTP, json={"code": code(a.secret)}, headers=a.auth)
    assert r.status_code == 204 and r.content == b""
    tokens = a.password_login()  # the password alone again
    assert claims(tokens["access_token"])["amr"] == ["pwd"]
    is_problem(a.c.request("DELETE", TOTP, json={"code": code(a.secret)}, headers=a.auth), 409)
    # the recovery codes went with it: a new enrolment starts clean
    a.tokens = tokens
    a.enrol()
    r = a.c.post(VERIFY, json={"code": code(a.secret)}, headers=a.auth)
    assert r.status_code == 200
    assert not set(r.json()["recovery_codes"]) & set(recovery)
    is_problem(a.second_step(recovery[0]), 401)


def test_disable_with_a_recovery_code(gw: Gateway) -> None:
    settle()
    a = Account(gw)
    recovery = a.activate()
    r = a.c.request("DELETE", TOTP, json={"code": "aaaa-bbbb-cccc-dddd"}, headers=a.auth)
    is_problem(r, 422, "body.code")
    r = a.c.request("DELETE", TOTP, json={"code": recovery[3]}, headers=a.auth)
    assert r.status_code == 204
    assert "access_token" in a.login().json()


# -- roles that require MFA, and amr through refresh ----------------------------------------------


def test_admin_without_mfa_is_refused(gw: Gateway) -> None:
    with client(gw) as c:
        r = c.post(LOGIN, json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        body = is_problem(r, 403)
        assert "multi-factor" in body["detail"] and body["mfa_enrolment_required"] is True
        # a wrong password is still the plain 401
        r = c.post(LOGIN, json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD + "x"})
        is_problem(r, 401)


def test_admin_with_mfa_signs_in_with_a_code(gw: Gateway, test_db_dsn: str) -> None:
    settle()
    a = Account(gw)
    a.activate()
    db(test_db_dsn, "UPDATE users SET roles = ARRAY['admin'] WHERE id = $1", uuid.UUID(a.id))
    r = a.second_step(code(a.secret))
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert claims(tokens["access_token"])["roles"] == ["admin"]
    assert a.c.get("/api/v1/users/", headers=bearer(tokens["access_token"])).status_code == 200
    # amr is carried through refresh
    r = a.c.post(
        "/api/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
    )
    assert r.status_code == 200, r.text
    assert claims(r.json()["access_token"])["amr"] == ["pwd", "otp"]


def test_refresh_keeps_pwd_and_refuses_a_password_session_that_became_admin(
    gw: Gateway, test_db_dsn: str
) -> None:
    a = Account(gw)
    r = a.c.post(
        "/api/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": a.tokens["refresh_token"]},
    )
    assert r.status_code == 200 and claims(r.json()["access_token"])["amr"] == ["pwd"]
    refresh = r.json()["refresh_token"]
    db(test_db_dsn, "UPDATE users SET roles = ARRAY['admin'] WHERE id = $1", uuid.UUID(a.id))
    r = a.c.post(
        "/api/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh}
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    is_problem(a.login(), 403)


def test_client_credentials_tokens_carry_no_amr(gw: Gateway, test_db_dsn: str) -> None:
    client_id = f"svc-{uuid.uuid4().hex[:8]}"
    secret = secrets.token_urlsafe(32)
    stored = "sha256$" + hashlib.sha256(secret.encode()).hexdigest()
    db(
        test_db_dsn,
        "INSERT INTO service_clients (client_id, secret_hash, roles) VALUES ($1, $2, $3)",
        client_id,
        stored,
        ["customer"],
    )
    with client(gw) as c:
        r = c.post(
            "/api/v1/auth/token",
            data={"grant_type": "client_credentials", "client_id": client_id,
                  "client_secret": secret},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        assert "amr" not in claims(r.json()["access_token"])
        # a service client has no account here: no MFA either
        is_problem(c.post(TOTP, headers=bearer(r.json()["access_token"])), 404)


def test_erasure_removes_the_enrolment(gw: Gateway, test_db_dsn: str) -> None:
    settle()
    a = Account(gw)
    a.activate()
    a.second_step(code(a.secret))
    assert a.c.delete("/api/v1/users/me", headers=a.auth).status_code == 204
    uid = uuid.UUID(a.id)
    for table in ("mfa_totp", "mfa_recovery_codes", "mfa_challenges"):
        rows = db(test_db_dsn, f"SELECT 1 FROM {table} WHERE user_id = $1", uid)
        assert rows == [], table


def test_export_names_the_enrolment(gw: Gateway) -> None:
    settle()
    a = Account(gw)
    assert a.c.get("/api/v1/users/me/export", headers=a.auth).json()["mfa"] == {"totp": None}
    a.activate()
    doc = a.c.get("/api/v1/users/me/export", headers=a.auth).json()
    assert doc["mfa"]["totp"]["recovery_codes_left"] == 10
    assert "secret" not in json.dumps(doc["mfa"])


def test_a_bad_mfa_key_file_stops_the_start(gateway_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "mfa.key"
    bad.write_text("not a key\n")
    env = {**gateway_env, "CYGATE_MFA_KEY_FILE": str(bad)}
    run = subprocess.run(
        [sys.executable, "-m", "cygate", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert str(bad) in run.stderr and "Traceback" not in run.stderr
