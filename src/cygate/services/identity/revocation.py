"""Revoked access tokens: their ``jti`` in Redis until the token's own expiry, checked with a
short per-worker cache.

An access token is revoked by logout (RFC 7009 revoke of its refresh token's family, or of the
access token itself), refresh-token reuse, a role change, or account erasure. The revoking
worker tells its verifier at once; other workers and instances learn it from Redis, asking at
most once per ``cache_seconds`` per ``jti`` (so a revoked token stops working everywhere within
that time plus one Redis round trip).

PERF: :meth:`Revocations.check` answers from the local cache without creating a coroutine;
only a ``jti`` not asked about recently costs an ``EXISTS``, one per worker at a time: the
requests that find the same ``jti`` due meanwhile wait for that answer (without it, every
request of a busy caller in flight when the cache ran out asked at once: 64 connections gave
64 ``EXISTS``, more than the Redis pool allows, and the refused ones were accepted unchecked).

Redis down: tokens are accepted (they are short-lived and signed; availability first, as the
design says for Redis) and the answer is cached as briefly as any other. Each ``EXISTS`` runs
within ``timeout``, behind the circuit the rate limiter uses (:class:`cygate.infra.circuit.
Circuit`): after a failure, tokens are accepted without asking for ``backoff`` seconds, then one
check probes Redis; so a hung Redis (SIGSTOP) costs one request per worker a wait of at most
``timeout`` per ``backoff`` seconds, not every request whose ``jti`` is due. The outage is
logged when the circuit opens and when Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from cygate.infra.circuit import Circuit
from cygate.infra.tasks import spawn, wake

if TYPE_CHECKING:
    from cygate.core.jwt import JWTVerifierPy
    from cygate.infra.redis import RedisHandle

__all__ = ["Revocations"]

log = logging.getLogger("cygate.identity")

_LOCAL_MAX = 200_000


class Revocations:
    """See the module docstring."""

    __slots__ = ("_asking", "_checked", "_redis", "cache_seconds", "circuit", "verifier")

    def __init__(
        self,
        redis: RedisHandle | None,
        verifier: JWTVerifierPy,
        *,
        cache_seconds: float,
        timeout: float = 0.5,
        backoff: float = 1.0,
    ) -> None:
        self._redis = redis
        self.verifier = verifier
        self.cache_seconds = cache_seconds
        self.circuit = Circuit("revocation check (Redis)", timeout=timeout, backoff=backoff,
                               log=log)  # fmt: skip
        self._checked: dict[str, float] = {}  # jti -> trusted "not revoked" until (monotonic)
        # (changed in place only, never rebound: ``trusted_until`` hands it out)
        # jti -> the futures of requests waiting for the EXISTS under way (True/False: its
        # answer; None: the asker was cancelled, ask again)
        self._asking: dict[str, list[asyncio.Future[bool | None]]] = {}

    def attach(self, redis: RedisHandle) -> None:
        self._redis = redis

    def _key(self, jti: str) -> str:
        assert self._redis is not None
        return self._redis.key("revoked", "{" + jti + "}")

    def check(self, jti: str, expires_at: int) -> Awaitable[bool] | None:
        """None when ``jti`` is known not revoked (recently asked); else an awaitable that asks
        Redis and resolves True when revoked (the verifier is told, too)."""
        until = self._checked.get(jti)
        if until is not None and time.monotonic() < until:
            return None
        if self.verifier.is_revoked(jti):
            return _true()
        if self._redis is None:
            return None
        waiting = self._asking.get(jti)
        if waiting is None:
            if not self.circuit.admit():
                return None  # Redis failed moments ago: accepted without asking (see above)
            # One EXISTS per jti at a time, in a task of its own: a caller's cancellation
            # never leaves the others without an answer.
            waiting = self._asking[jti] = []
            spawn(self._ask(jti, expires_at))
        return self._wait(waiting, jti, expires_at)

    @property
    def trusted_until(self) -> Mapping[str, float]:
        """jti -> the monotonic time until which it is known not revoked (asked lately): live
        and read-only, the same mapping for this object's whole life. A jti found here with a
        deadline still ahead is :meth:`known_good`; the compiled hit path looks there first
        and asks :meth:`known_good` for the rest."""
        return self._checked

    def known_good(self, jti: str) -> bool:
        """True when :meth:`check` would return None now (not revoked, nothing to ask); no side
        effects, unlike ``check``: the fused hit path asks this, and leaves every other case to
        the token stage."""
        until = self._checked.get(jti)
        if until is not None and time.monotonic() < until:
            return True
        return (self._redis is None or not self.circuit.usable) and not self.verifier.is_revoked(
            jti
        )

    async def _wait(
        self, waiting: list[asyncio.Future[bool | None]], jti: str, expires_at: int
    ) -> bool:
        mine: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        waiting.append(mine)  # a future of its own: a waiter's cancellation is its own
        revoked = await mine
        if revoked is None:  # the check was cancelled (shutting down): ask once more
            again = self.check(jti, expires_at)
            return False if again is None else await again
        return revoked

    async def _ask(self, jti: str, expires_at: int) -> None:
        try:
            revoked = await self._exists(jti, expires_at)
        except BaseException:
            self._answer(jti, None)
            raise
        self._answer(jti, revoked)

    def _answer(self, jti: str, revoked: bool | None) -> None:
        wake(self._asking.pop(jti), revoked)

    async def _exists(self, jti: str, expires_at: int) -> bool:
        assert self._redis is not None
        now = time.monotonic()
        try:
            # NOTE: a hung Redis accepts the connection and never answers: the socket timeout
            # alone does not bound the whole call.
            async with asyncio.timeout(self.circuit.timeout):
                revoked = bool(await self._redis.client.exists(self._key(jti)))
        except (RedisError, OSError, TimeoutError) as exc:
            self.circuit.failed(exc, "accepting tokens")
            revoked = False
        else:
            self.circuit.succeeded()
        if revoked:
            self.verifier.revoke_jti(jti, float(expires_at))
            self._checked.pop(jti, None)
            return True
        if len(self._checked) >= _LOCAL_MAX:
            self._checked.clear()
        self._checked[jti] = now + self.cache_seconds
        return False

    async def revoke(self, tokens: Iterable[tuple[str, float]]) -> None:
        """Revoke access tokens given as ``(jti, expires_at)`` (seconds since the epoch)."""
        now = time.time()
        live = [(jti, exp) for jti, exp in tokens if jti and exp > now]
        for jti, exp in live:
            self.verifier.revoke_jti(jti, exp)
            self._checked.pop(jti, None)
        if not live or self._redis is None:
            return
        try:
            pipe = self._redis.client.pipeline(transaction=False)
            for jti, exp in live:
                pipe.set(self._key(jti), b"1", exat=int(exp) + 1)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.error("could not record %d revoked access token(s) in Redis (%r)", len(live), exc)


async def _true() -> bool:
    return True
