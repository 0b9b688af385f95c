"""The identity service: accounts, sessions (token pairs), rotation, revocation, erasure.

One :class:`Identity` per worker, built by the app factory. It owns the verifier (shared with
the edge's token stage), the key ring, the password hasher, the login limiter, the revocation
list and the external providers' keys; the controllers call its methods.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from cygate.core.jwt import JWTError, JWTVerifier
from cygate.edge.context import Principal
from cygate.services.identity import store
from cygate.services.identity.keys import keyring_from_settings
from cygate.services.identity.limiter import LoginLimiter, Verdict
from cygate.services.identity.models import ROLES, TokenOut, User
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
    "RequestInfo",
    "Throttled",
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
    """Too many failed logins for this account or address (429)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__("too many failed logins; try again later")
        self.verdict = verdict


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
            cache_seconds=settings.jwt_revocation_cache_seconds,
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
        self._pool: asyncpg.Pool | None = None

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self, pool: asyncpg.Pool, redis: RedisHandle) -> None:
        """Attach the pool and Redis, start the providers' JWKS refresh, and create or reset
        the admin account when ``admin_email`` is set."""
        self._pool = pool
        self.revocations.attach(redis)
        self.limiter = LoginLimiter(
            redis,
            window=self.limiter.window,
            per_account=self.limiter.per_account,
            per_address=self.limiter.per_address,
        )
        await self.providers.start()
        await self.passwords.warm_up()
        if self.settings.admin_email:
            await self.ensure_admin(self.settings.admin_email, self.settings.admin_password)

    async def stop(self) -> None:
        await self.providers.stop()
        self.passwords.close()

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

    async def login(self, email: str, password: str, info: RequestInfo) -> tuple[TokenOut, Verdict]:
        """A new session (token pair), or :class:`BadCredentials` / :class:`Throttled`.

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
        tokens = await self._start_session(row.id, row.roles)
        await store.audit(
            self.pool,
            "login",
            actor_id=row.id,
            client_ip=info.client_ip,
            request_id=info.request_id,
        )
        return tokens, await self.limiter.check(key, address)

    async def _start_session(self, user_id: UUID, roles: list[str]) -> TokenOut:
        access = self.minter.access_token(str(user_id), roles)
        refresh, refresh_hash = new_opaque()
        await store.insert_refresh(
            self.pool,
            user_id=user_id,
            token_hash=refresh_hash,
            access_jti=access.jti,
            access_expires_at=access.expires_at,
            ttl=self.settings.refresh_token_ttl,
            family_ttl=self.settings.refresh_family_ttl,
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
                if consumed is not None:
                    access = self.minter.access_token(str(consumed.user_id), consumed.roles)
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
