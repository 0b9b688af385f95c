"""Failed-login limits: per account and per client address, fixed windows counted in Redis.

Deliberately small and private to identity: the general rate limiter is another piece of work
(rate-limiting issue). Everything goes through :class:`LoginLimiter`'s three methods, so it can
be swapped for that limiter later without touching the login handler.

- ``check`` before the password is verified: over either budget is a 429, for an existing
  account and an unknown email alike (the account key is a hash of the normalised email).
- ``failed`` after a failed login: both counters go up; the window starts at the first failure.
- ``succeeded`` after a good login: the account's counter is cleared (the address's is not).

Multi-factor sign-in counts its failed codes with a limiter of its own (``namespace="mfa"``,
keyed by user rather than email): a good password must not clear the budget of code guesses.

When Redis cannot be reached, the counts are kept in this process instead (a per-worker
fallback: still a limit, just not a shared one), and Redis is tried again on the next call.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from cygate.infra.redis import RedisHandle

__all__ = ["LoginLimiter", "Verdict"]

log = logging.getLogger("cygate.identity")

_LOCAL_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """The tighter of the two budgets after a call."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    """Seconds until the counter that decides starts again."""

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` (and ``Retry-After`` when refused)."""
        out = {
            "ratelimit-limit": str(self.limit),
            "ratelimit-remaining": str(self.remaining),
            "ratelimit-reset": str(self.reset),
        }
        if not self.allowed:
            out["retry-after"] = str(max(1, self.reset))
        return out


class LoginLimiter:
    """Counts failed logins; see the module docstring."""

    __slots__ = ("_local", "_redis", "namespace", "per_account", "per_address", "window")

    def __init__(
        self,
        redis: RedisHandle | None,
        *,
        window: int,
        per_account: int,
        per_address: int,
        namespace: str = "login",
    ) -> None:
        self._redis = redis
        self.namespace = namespace
        self.window = window
        self.per_account = per_account
        self.per_address = per_address
        self._local: dict[str, tuple[int, float]] = {}  # key -> (count, window ends, monotonic)

    def _keys(self, email: str, address: str) -> tuple[str, str]:
        digest = hashlib.sha256(email.encode()).hexdigest()[:32]
        prefix = self._redis.prefix if self._redis is not None else ""
        # NOTE: one hash tag per counter: each is a single-key command, any slot will do.
        ns = f"{prefix}{self.namespace}"
        return f"{ns}:{{acct:{digest}}}", f"{ns}:{{addr:{address}}}"

    def _verdict(self, counts: list[tuple[int, int]]) -> Verdict:
        (acct, acct_ttl), (addr, addr_ttl) = counts
        acct_left = self.per_account - acct
        addr_left = self.per_address - addr
        if acct_left <= addr_left:
            limit, left, ttl = self.per_account, acct_left, acct_ttl
        else:
            limit, left, ttl = self.per_address, addr_left, addr_ttl
        reset = ttl if ttl > 0 else self.window
        return Verdict(left > 0, limit, max(0, left), reset)

    async def check(self, email: str, address: str) -> Verdict:
        """The budgets before a login attempt; ``allowed`` False means answer 429."""
        keys = self._keys(email, address)
        counts = await self._read(keys)
        return self._verdict(counts)

    async def failed(self, email: str, address: str) -> Verdict:
        """Count a failed login; the verdict says what is left."""
        keys = self._keys(email, address)
        counts = await self._incr(keys)
        verdict = self._verdict(counts)
        return Verdict(True, verdict.limit, verdict.remaining, verdict.reset)

    async def succeeded(self, email: str, address: str) -> None:
        """Clear the account's counter after a good login."""
        account_key = self._keys(email, address)[0]
        self._local.pop(account_key, None)
        if self._redis is not None:
            try:
                await self._redis.client.delete(account_key)
            except (RedisError, OSError) as exc:
                log.warning("login limiter: Redis unavailable (%r)", exc)

    # -- storage ------------------------------------------------------------------------------

    async def _read(self, keys: tuple[str, str]) -> list[tuple[int, int]]:
        if self._redis is not None:
            try:
                pipe = self._redis.client.pipeline(transaction=False)
                for key in keys:
                    pipe.get(key)
                    pipe.ttl(key)
                raw = await pipe.execute()
                return [(int(raw[i] or 0), int(raw[i + 1])) for i in (0, 2)]
            except (RedisError, OSError) as exc:
                log.warning("login limiter: Redis unavailable, counting locally (%r)", exc)
        return [self._local_read(key) for key in keys]

    async def _incr(self, keys: tuple[str, str]) -> list[tuple[int, int]]:
        if self._redis is not None:
            try:
                pipe = self._redis.client.pipeline(transaction=False)
                for key in keys:
                    pipe.incr(key)
                    pipe.expire(key, self.window, nx=True)
                    pipe.ttl(key)
                raw = await pipe.execute()
                return [(int(raw[i]), int(raw[i + 2])) for i in (0, 3)]
            except (RedisError, OSError) as exc:
                log.warning("login limiter: Redis unavailable, counting locally (%r)", exc)
        return [self._local_incr(key) for key in keys]

    def _local_read(self, key: str) -> tuple[int, int]:
        entry = self._local.get(key)
        now = time.monotonic()
        if entry is None or entry[1] <= now:
            return 0, -2
        return entry[0], int(entry[1] - now) + 1

    def _local_incr(self, key: str) -> tuple[int, int]:
        now = time.monotonic()
        entry = self._local.get(key)
        if entry is None or entry[1] <= now:
            if len(self._local) >= _LOCAL_MAX:
                self._local = {k: v for k, v in self._local.items() if v[1] > now}
            entry = (0, now + self.window)
        entry = (entry[0] + 1, entry[1])
        self._local[key] = entry
        return entry[0], int(entry[1] - now) + 1
