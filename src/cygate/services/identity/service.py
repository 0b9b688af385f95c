"""The identity service: accounts, sessions (token pairs), rotation, revocation, erasure, and
multi-factor sign-in (TOTP and recovery codes; see :mod:`cygate.services.identity.mfa`).

One :class:`Identity` per worker, built by the app factory. It owns the verifier (shared with
the edge's token stage), the key ring, the password hasher, the login limiter, the revocation
list and the external providers' keys; the controllers call its methods.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from cygate.core.jwt import JWTError, JWTVerifier
from cygate.edge.context import Principal
from cygate.services.identity import mfa, store
from cygate.services.identity.keys import keyring_from_settings
from cygate.services.identity.limiter import LoginLimiter, Verdict
from cygate.services.identity.models import ROLES, MfaChallengeOut, TokenOut, User
from cygate.services.identity.passwords import Passwords
from cygate.services.identity.providers import ProviderKeys
from cygate.services.identity.revocation import Revocations
from cygate.services.identity.tokens import MAX_OPAQUE, TokenMinter, hash_opaque, new_opaque

if TYPE_CHECKING:
    import asyncpg

    from cygate.infra.redis import RedisHandle
    from cygate.services.identity.settings import IdentitySettings

__all__ = [
    "BadCredentials",
    "Identity",
    "InvalidClient",
    "InvalidGrant",
    "MfaConflict",
    "MfaEnrolmentRequired",
    "MfaUnavailable",
    "RequestInfo",
    "Throttled",
    "WrongCode",
    "client_secret_hash",
    "normalise_email",
]

log = logging.getLogger("cygate.identity")

_KNOWN_ROLES = frozenset(ROLES)
_CLIENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")


class BadCredentials(Exception):
    """Login refused (401); the same for a wrong password and an unknown email."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__("invalid email or password")
        self.verdict = verdict


class Throttled(Exception):
    """Too many failed logins (or codes) for this account or address (429)."""

    def __init__(
        self, verdict: Verdict, message: str = "too many failed logins; try again later"
    ) -> None:
        super().__init__(message)
        self.verdict = verdict


class WrongCode(Exception):
    """An MFA code that is wrong or used already, or given with an unknown, expired or spent
    mfa_token (401 at sign-in, 422 when verifying an enrolment or disabling)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__("the code is wrong, expired or was used already")
        self.verdict = verdict


class MfaConflict(Exception):
    """The request does not fit the MFA state (409): enrol while active, verify without a
    pending enrolment, disable while not active. The message says which."""


class MfaEnrolmentRequired(Exception):
    """A password login of an account whose role requires MFA, which has none active (403)."""


class MfaUnavailable(Exception):
    """A stored TOTP secret does not open under the configured MFA key (503; logged)."""


_AMR_PASSWORD = ["pwd"]
_AMR_SECOND_FACTOR = ["pwd", "otp"]
_THROTTLED_CODES = "too many wrong codes; try again later"


class InvalidGrant(Exception):
    """RFC 6749 ``invalid_grant`` (400)."""


class InvalidClient(Exception):
    """RFC 6749 ``invalid_client`` (401)."""


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """Who asked, for the audit log."""

    client_ip: str = ""
    request_id: str = ""


def normalise_email(email: str) -> str:
    return email.strip().lower()


def client_secret_hash(secret: str) -> str:
    """How a service client's secret is stored: ``sha256$<hex>`` (secrets are 256 random
    bits, so a fast hash is enough; see :mod:`cygate.services.identity.tokens`)."""
    return "sha256$" + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


_DUMMY_SECRET_HASH = client_secret_hash("no such client")


def own_principal(issuer: str) -> Callable[[dict[str, Any]], Principal]:
    """The principal factory for cygate's own tokens."""

    def principal(claims: dict[str, Any]) -> Principal:
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise JWTError("bad_claims")
        return Principal.from_claims(claims, issuer, _KNOWN_ROLES.intersection(roles))

    return principal


class Identity:
    """See the module docstring."""

    def __init__(
        self,
        settings: IdentitySettings,
        *,
        environment: str = "development",
        redis_timeout: float = 0.5,
    ) -> None:
        self.settings = settings
        self.keyring = keyring_from_settings(settings, environment)
        self.verifier = JWTVerifier(
            leeway=settings.jwt_leeway,
            max_token_bytes=settings.jwt_max_token_bytes,
            cache_size=settings.jwt_cache_size,
            cache_bytes=settings.jwt_cache_max_bytes,
        )
        self.verifier.set_issuer(
            settings.jwt_issuer,
            audience=settings.jwt_audience,
            keys=self.keyring.verify_keys(),
            principal=own_principal(settings.jwt_issuer),
        )
        self.minter = TokenMinter(
            self.keyring,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl=settings.access_token_ttl,
            client_id=settings.jwt_client_id,
        )
        self.passwords = Passwords(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost,
            parallelism=settings.argon2_parallelism,
            threads=settings.argon2_threads,
        )
        self.revocations = Revocations(
            None,
            self.verifier,
            interval=settings.jwt_revocation_cache_seconds,
            timeout=redis_timeout,
            backoff=settings.jwt_revocation_redis_backoff,
        )
        self.providers = ProviderKeys(list(settings.providers), self.verifier)
        self.limiter = LoginLimiter(
            None,
            window=settings.login_failure_window,
            per_account=settings.login_max_failures_per_account,
            per_address=settings.login_max_failures_per_address,
        )
        self._mfa_init(settings, environment)
        self._pool: asyncpg.Pool | None = None

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self, pool: asyncpg.Pool, redis: RedisHandle) -> None:
        """Attach the pool and Redis, start the providers' JWKS refresh, and create or reset
        the admin account when ``admin_email`` is set."""
        self._pool = pool
        self.revocations.attach(redis)
        await self.revocations.start()
        self.limiter = LoginLimiter(
            redis,
            window=self.limiter.window,
            per_account=self.limiter.per_account,
            per_address=self.limiter.per_address,
        )
        self.mfa_limiter = self._mfa_limiter(redis)
        await self.providers.start()
        await self.passwords.warm_up()
        if self.settings.admin_email:
            await self.ensure_admin(self.settings.admin_email, self.settings.admin_password)

    async def stop(self) -> None:
        await self.revocations.stop()
        await self.providers.stop()
        self.passwords.close()

    def token_gauges(self) -> Iterator[tuple[str, tuple[str, ...], float]]:
        """This worker's ``cygate_jwt_verified_total`` and ``cygate_jwt_cache_tokens`` (a
        metrics gauge source: read when a snapshot is taken, nothing on the request path)."""
        yield "cygate_jwt_verified_total", (), self.verifier.verified
        yield "cygate_jwt_cache_tokens", (), self.verifier.cache_len()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:  # pragma: no cover - only before start-up completes
            raise RuntimeError("identity service not started")
        return self._pool

    async def ensure_admin(self, email: str, password: str) -> UUID:
        """``CYGATE_ADMIN_EMAIL``/``CYGATE_ADMIN_PASSWORD``: the account exists with role admin."""
        password_hash = await self.passwords.hash(password)
        user_id = await store.upsert_admin(self.pool, normalise_email(email), password_hash)
        await store.audit(self.pool, "admin_bootstrap", actor_id=user_id, target=str(user_id))
        log.info("admin account %s ready", normalise_email(email))
        return user_id

    # -- accounts -----------------------------------------------------------------------------

    async def register(self, email: str, password: str, name: str, info: RequestInfo) -> User:
        """A new customer account; :class:`store.EmailTaken` when the email is in use."""
        password_hash = await self.passwords.hash(password)
        user = await store.create_user(self.pool, normalise_email(email), password_hash, name)
        await store.audit(
            self.pool,
            "register",
            actor_id=user.id,
            target=str(user.id),
            client_ip=info.client_ip,
            request_id=info.request_id,
        )
        return user

    async def login(
        self, email: str, password: str, info: RequestInfo
    ) -> tuple[TokenOut | MfaChallengeOut, Verdict]:
        """A new session (token pair); for an account with MFA active, an mfa_token for
        :meth:`login_mfa` instead; or :class:`BadCredentials` / :class:`Throttled`, or
        :class:`MfaEnrolmentRequired` (right password, a role that requires MFA, none active).

        NOTE: the two failure paths do the same work in the same order (limit check, one
        account look-up, one Argon2 verify, the counters, one audit row), so neither the answer
        nor its timing tells whether the account exists.
        """
        key = normalise_email(email)
        address = info.client_ip or "unknown"
        verdict = await self.limiter.check(key, address)
        if not verdict.allowed:
            await store.audit(
                self.pool,
                "login_throttled",
                client_ip=info.client_ip,
                request_id=info.request_id,
                details={"email_sha256": _digest(key)},
            )
            raise Throttled(verdict)
        row = await store.login_row(self.pool, key)
        ok = await self.passwords.verify(row.password_hash if row else None, password)
        if row is None or not ok:
            verdict = await self.limiter.failed(key, address)
            await store.audit(
                self.pool,
                "login_failed",
                actor_id=row.id if row else None,
                client_ip=info.client_ip,
                request_id=info.request_id,
                details={"email_sha256": _digest(key)},
            )
            raise BadCredentials(verdict)
        await self.limiter.succeeded(key, address)
        assert row.password_hash is not None
        if self.passwords.needs_rehash(row.password_hash):
            await store.set_password_hash(self.pool, row.id, await self.passwords.hash(password))
        verdict = await self.limiter.check(key, address)
        if row.mfa:
            return await self._challenge(row.id, info), verdict
        if self._mfa_required_roles.intersection(row.roles):
            await store.audit(
                self.pool,
                "login_mfa_enrolment_required",
                actor_id=row.id,
                client_ip=info.client_ip,
                request_id=info.request_id,
            )
            raise MfaEnrolmentRequired
        tokens = await self._start_session(row.id, row.roles, _AMR_PASSWORD)
        await store.audit(
            self.pool,
            "login",
            actor_id=row.id,
            client_ip=info.client_ip,
            request_id=info.request_id,
        )
        return tokens, verdict

    async def _start_session(self, user_id: UUID, roles: list[str], amr: list[str]) -> TokenOut:
        access = self.minter.access_token(str(user_id), roles, amr=amr)
        refresh, refresh_hash = new_opaque()
        await store.insert_refresh(
            self.pool,
            user_id=user_id,
            token_hash=refresh_hash,
            access_jti=access.jti,
            access_expires_at=access.expires_at,
            ttl=self.settings.refresh_token_ttl,
            family_ttl=self.settings.refresh_family_ttl,
            amr=amr,
        )
        return TokenOut(
            access_token=access.token,
            token_type="Bearer",
            expires_in=self.settings.access_token_ttl,
            refresh_token=refresh,
        )

    # -- tokens -------------------------------------------------------------------------------

    async def refresh(self, token: str, info: RequestInfo) -> TokenOut:
        """Rotate a refresh token: a new pair, or :class:`InvalidGrant`. Presenting a token
        that was already used revokes its whole family (every token of that login)."""
        if not token or len(token) > MAX_OPAQUE:
            raise InvalidGrant
        token_hash = hash_opaque(token)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                consumed = await store.consume_refresh(conn, token_hash)
                if consumed is not None and self._needs_second_factor(consumed):
                    # NOTE: a password-only session of a user who has since been given a role
                    # that requires MFA: refused like such a login (the token stays unused).
                    raise InvalidGrant
                if consumed is not None:
                    access = self.minter.access_token(
                        str(consumed.user_id), consumed.roles, amr=consumed.amr
                    )
                    refresh, refresh_hash = new_opaque()
                    await store.insert_refresh(
                        conn,
                        user_id=consumed.user_id,
                        token_hash=refresh_hash,
                        access_jti=access.jti,
                        access_expires_at=access.expires_at,
                        ttl=self.settings.refresh_token_ttl,
                        family_id=consumed.family_id,
                        parent_id=consumed.id,
                        family_expires_at=consumed.family_expires_at,
                        amr=consumed.amr,
                    )
                    return TokenOut(
                        access_token=access.token,
                        token_type="Bearer",
                        expires_in=self.settings.access_token_ttl,
                        refresh_token=refresh,
                    )
            state = await store.refresh_state(conn, token_hash)
            if state is None or state["used_at"] is None or state["revoked_at"] is not None:
                raise InvalidGrant  # unknown, expired, or already revoked
            async with conn.transaction():
                live = await store.revoke_family(conn, state["family_id"])
                await store.audit(
                    conn,
                    "refresh_reuse",
                    actor_id=state["user_id"],
                    target=str(state["family_id"]),
                    client_ip=info.client_ip,
                    request_id=info.request_id,
                )
        log.warning("refresh token reuse: family %s revoked", state["family_id"])
        await self.revocations.revoke(live)
        raise InvalidGrant

    async def client_credentials(self, client_id: str, secret: str, info: RequestInfo) -> TokenOut:
        """An access token for a service client, or :class:`InvalidClient`."""
        row = (
            await store.service_client(self.pool, client_id)
            if _CLIENT_ID.fullmatch(client_id)
            else None
        )
        stored = row["secret_hash"] if row is not None else _DUMMY_SECRET_HASH
        ok = hmac.compare_digest(stored.encode(), client_secret_hash(secret).encode())
        if row is None or not ok:
            await store.audit(
                self.pool,
                "client_auth_failed",
                target=client_id[:128],
                client_ip=info.client_ip,
                request_id=info.request_id,
            )
            raise InvalidClient
        roles = [r for r in row["roles"] if r in _KNOWN_ROLES]
        access = self.minter.access_token(client_id, roles, client_id=client_id)
        await store.audit(
            self.pool,
            "client_token",
            target=client_id,
            client_ip=info.client_ip,
            request_id=info.request_id,
        )
        return TokenOut(
            access_token=access.token,
            token_type="Bearer",
            expires_in=self.settings.access_token_ttl,
        )

    async def revoke(self, token: str, info: RequestInfo) -> None:
        """RFC 7009: a refresh token's family stops working (with the access tokens issued
        with it); an access token stops working. Anything else is ignored."""
        if not token or len(token) > max(MAX_OPAQUE, self.settings.jwt_max_token_bytes):
            return
        if token.count(".") == 2:
            try:
                principal: Principal = self.verifier.verify(token)
            except (JWTError, TypeError):
                return
            await self.revocations.revoke([(principal.jti, float(principal.expires_at))])
            await store.audit(
                self.pool,
                "access_token_revoked",
                target=principal.sub,
                client_ip=info.client_ip,
                request_id=info.request_id,
            )
            return
        async with self.pool.acquire() as conn, conn.transaction():
            state = await store.refresh_state(conn, hash_opaque(token))
            if state is None:
                return
            live = await store.revoke_family(conn, state["family_id"])
            await store.audit(
                conn,
                "logout",
                actor_id=state["user_id"],
                target=str(state["family_id"]),
                client_ip=info.client_ip,
                request_id=info.request_id,
            )
        await self.revocations.revoke(live)

    # -- users ----------------------------------------------------------------------------------

    async def set_roles(
        self, admin: Principal, user_id: UUID, roles: list[str], info: RequestInfo
    ) -> User | None:
        """Replace a user's roles (admin); their live access tokens are revoked so the change
        takes effect at once (the next refresh carries the new roles). Raises
        :class:`store.LastAdmin` rather than leave no admin."""
        roles = sorted(set(roles))
        async with self.pool.acquire() as conn, conn.transaction():
            result = await store.set_roles(conn, user_id, roles, actor_id=_uuid_or_none(admin.sub))
            if result is None:
                return None
            before, user = result
            live = await store.live_access_tokens(conn, user_id) if before != roles else []
            await store.audit(
                conn,
                "role_change",
                actor_id=_uuid_or_none(admin.sub),
                target=str(user_id),
                client_ip=info.client_ip,
                request_id=info.request_id,
                details={"before": before, "after": roles},
            )
        await self.revocations.revoke(live)
        return user

    async def erase(self, user_id: UUID, info: RequestInfo) -> bool:
        """GDPR erasure of the caller (one transaction), then every token of theirs revoked.
        Raises :class:`store.LastAdmin` for the last admin."""
        async with self.pool.acquire() as conn, conn.transaction():
            live = await store.erase_user(conn, user_id)
        if live is None:
            return False
        await self.revocations.revoke(live)
        return True

    async def export(self, user_id: UUID) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            return await store.export_user(conn, user_id)

    # -- multi-factor sign-in -------------------------------------------------------------------

    def _mfa_init(self, settings: IdentitySettings, environment: str) -> None:
        """The MFA key, the required roles and the code limiter (the ``mfa_*`` settings)."""
        self.mfa_box: mfa.SecretBox = mfa.mfa_key_from_settings(settings, environment)
        self._mfa_required_roles = frozenset(settings.mfa_required_roles)
        self._mfa_token_ttl = settings.mfa_token_ttl
        self._mfa_issuer = settings.mfa_totp_issuer
        self.mfa_limiter = self._mfa_limiter(None)

    def _mfa_limiter(self, redis: RedisHandle | None) -> LoginLimiter:
        # NOTE: the login budgets, counted apart (per user and per address): a right password
        # clears the login counter, and must not clear the count of wrong codes.
        return LoginLimiter(
            redis,
            window=self.settings.login_failure_window,
            per_account=self.settings.login_max_failures_per_account,
            per_address=self.settings.login_max_failures_per_address,
            namespace="mfa",
        )

    def _needs_second_factor(self, consumed: store.Consumed) -> bool:
        return "otp" not in consumed.amr and bool(
            self._mfa_required_roles.intersection(consumed.roles)
        )

    async def _challenge(self, user_id: UUID, info: RequestInfo) -> MfaChallengeOut:
        token, token_hash = new_opaque()
        await store.insert_challenge(self.pool, user_id, token_hash, self._mfa_token_ttl)
        await store.audit(
            self.pool,
            "login_mfa_challenge",
            actor_id=user_id,
            client_ip=info.client_ip,
            request_id=info.request_id,
        )
        return MfaChallengeOut(mfa_required=True, mfa_token=token, expires_in=self._mfa_token_ttl)

    async def _mfa_limited(self, key: str, info: RequestInfo) -> Verdict:
        """The code budget of ``key`` (a user) and the caller's address; :class:`Throttled`
        when either is spent."""
        verdict = await self.mfa_limiter.check(key, info.client_ip or "unknown")
        if not verdict.allowed:
            await store.audit(
                self.pool,
                "mfa_throttled",
                client_ip=info.client_ip,
                request_id=info.request_id,
                details={"key_sha256": _digest(key)},
            )
            raise Throttled(verdict, _THROTTLED_CODES)
        return verdict

    async def _mfa_failed(self, key: str, user_id: UUID | None, info: RequestInfo) -> WrongCode:
        verdict = await self.mfa_limiter.failed(key, info.client_ip or "unknown")
        await store.audit(
            self.pool,
            "mfa_failed",
            actor_id=user_id,
            client_ip=info.client_ip,
            request_id=info.request_id,
        )
        return WrongCode(verdict)

    def _open(self, user_id: UUID, row: store.TotpRow) -> str:
        try:
            return self.mfa_box.open(user_id, row.secret_sealed, row.key_id)
        except mfa.SealedSecretError as exc:
            log.error("TOTP secret of %s cannot be opened: %s", user_id, exc)
            raise MfaUnavailable from None

    async def _spend_code(self, conn: Any, user_id: UUID, code: str) -> str | None:
        """Check ``code`` against the user's active MFA and spend it: ``"totp"`` (its step is
        recorded) or ``"recovery"`` (the code is used up); None when it is not good now."""
        if mfa.is_totp_code(code):
            row = await store.totp_row(conn, user_id)
            if row is None or not row.active:
                return None
            steps = mfa.matching_steps(self._open(user_id, row), code, time.time())
            fresh = [s for s in steps if row.last_step is None or s > row.last_step]
            if fresh and await store.claim_totp_step(conn, user_id, fresh[0]):
                return "totp"
            return None
        recovery = mfa.normalise_recovery_code(code)
        if recovery is not None:
            code_hash = self.mfa_box.recovery_hash(user_id, recovery)
            if await store.use_recovery_code(conn, user_id, code_hash):
                return "recovery"
        return None

    async def enrol_totp(self, user_id: UUID, info: RequestInfo) -> tuple[str, str] | None:
        """A new pending TOTP enrolment: (secret, otpauth URI); None when there is no such
        user; :class:`MfaConflict` when MFA is active already. A pending one is replaced."""
        user = await store.get_user(self.pool, user_id)
        if user is None:
            return None
        secret = mfa.new_totp_secret()
        sealed = self.mfa_box.seal(user_id, secret)
        if not await store.start_totp(self.pool, user_id, sealed, self.mfa_box.key_id):
            raise MfaConflict("multi-factor authentication is active already; disable it first")
        await store.audit(
            self.pool,
            "mfa_enrolment_started",
            actor_id=user_id,
            client_ip=info.client_ip,
            request_id=info.request_id,
        )
        return secret, mfa.provisioning_uri(secret, user.email, self._mfa_issuer)

    async def verify_totp(self, user_id: UUID, code: str, info: RequestInfo) -> list[str]:
        """Activate the pending enrolment with a current code: the new recovery codes (the
        only time they exist in clear). :class:`WrongCode`, :class:`MfaConflict`,
        :class:`Throttled`."""
        key = f"user:{user_id}"
        await self._mfa_limited(key, info)
        row = await store.totp_row(self.pool, user_id)
        if row is None:
            raise MfaConflict("no TOTP enrolment to verify; start one with POST /mfa/totp")
        if row.active:
            raise MfaConflict("multi-factor authentication is active already")
        steps = (
            mfa.matching_steps(self._open(user_id, row), code, time.time())
            if mfa.is_totp_code(code)
            else []
        )
        if not steps:
            raise await self._mfa_failed(key, user_id, info)
        codes = mfa.new_recovery_codes()
        hashes = [self.mfa_box.recovery_hash(user_id, c.replace("-", "")) for c in codes]
        async with self.pool.acquire() as conn, conn.transaction():
            if not await store.activate_totp(conn, user_id, row.secret_sealed, steps[-1], hashes):
                raise MfaConflict("the enrolment changed meanwhile; start again")
            await store.audit(
                conn,
                "mfa_activated",
                actor_id=user_id,
                client_ip=info.client_ip,
                request_id=info.request_id,
            )
        await self.mfa_limiter.succeeded(key, info.client_ip or "unknown")
        return codes

    async def disable_totp(self, user_id: UUID, code: str, info: RequestInfo) -> None:
        """MFA off, given a current code or an unused recovery code. :class:`WrongCode`,
        :class:`MfaConflict` (not active), :class:`Throttled`."""
        key = f"user:{user_id}"
        await self._mfa_limited(key, info)
        async with self.pool.acquire() as conn:
            row = await store.totp_row(conn, user_id)
            if row is None or not row.active:
                raise MfaConflict("multi-factor authentication is not active")
            async with conn.transaction():
                method = await self._spend_code(conn, user_id, code)
                if method is not None:
                    await store.remove_totp(conn, user_id)
                    await store.audit(
                        conn,
                        "mfa_disabled",
                        actor_id=user_id,
                        client_ip=info.client_ip,
                        request_id=info.request_id,
                        details={"with": method},
                    )
        if method is None:
            raise await self._mfa_failed(key, user_id, info)
        await self.mfa_limiter.succeeded(key, info.client_ip or "unknown")

    async def login_mfa(self, mfa_token: str, code: str, info: RequestInfo) -> TokenOut:
        """The second step of a login: the mfa_token and a current code (or a recovery code)
        for a session whose ``amr`` is ``["pwd", "otp"]``. :class:`WrongCode` (also for an
        unknown, expired or spent mfa_token), :class:`Throttled`.

        NOTE: the mfa_token is spent and the code checked in one transaction: a wrong code
        rolls back and leaves the mfa_token live for another try (within the code budget); of
        two concurrent attempts with one mfa_token, one at most succeeds.
        """
        token_hash = hash_opaque(mfa_token) if 0 < len(mfa_token) <= MAX_OPAQUE else None
        user_id = await store.challenge_user(self.pool, token_hash) if token_hash else None
        # An unknown token is counted against the address (and a key no user has).
        key = f"user:{user_id}" if user_id else f"token:{(token_hash or b'').hex()[:32]}"
        await self._mfa_limited(key, info)
        method: str | None = None
        roles: list[str] = []
        if token_hash is not None and user_id is not None:
            async with self.pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                try:
                    consumed = await store.consume_challenge(conn, token_hash)
                    if consumed is not None and consumed[0] == user_id:
                        roles = consumed[1]
                        method = await self._spend_code(conn, user_id, code)
                except BaseException:
                    await tx.rollback()
                    raise
                if method is None:
                    await tx.rollback()
                else:
                    await tx.commit()
        if method is None or user_id is None:
            raise await self._mfa_failed(key, user_id, info)
        await self.mfa_limiter.succeeded(key, info.client_ip or "unknown")
        tokens = await self._start_session(user_id, roles, _AMR_SECOND_FACTOR)
        await store.audit(
            self.pool,
            "login",
            actor_id=user_id,
            client_ip=info.client_ip,
            request_id=info.request_id,
            details={"amr": _AMR_SECOND_FACTOR, "with": method},
        )
        return tokens

    # -- the edge's needs -----------------------------------------------------------------------

    def refresh_provider(self, issuer: str) -> Awaitable[bool]:
        return self.providers.refresh(issuer)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _uuid_or_none(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None
