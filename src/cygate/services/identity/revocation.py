"""Revoked access tokens: one feed in Redis that every worker reads, and a local set that the
per-request check looks at without Redis.

An access token is revoked by logout (RFC 7009 revoke of its refresh token's family, or of the
access token itself), refresh-token reuse, a role change, or account erasure; each path calls
:meth:`Revocations.revoke`, which puts ``(jti, expiry)`` in this worker's set at once and
appends it to the feed. Each worker loads the whole feed when it starts
(:meth:`Revocations.start`), then reads what is new since its cursor every ``interval`` seconds
(``jwt_revocation_cache_seconds``): a revoked token stops working everywhere within that time
plus one Redis round trip, while Redis answers.

The feed's keys share one hash tag, ``{revoked}``, so its scripts run on one Redis Cluster slot:

- ``<prefix>{revoked}:feed``, a Redis Stream: one entry per revoked token, fields ``j`` (its
  ``jti``) and ``e`` (when the token stops being accepted: its ``exp`` plus the verifier's
  leeway, seconds since the epoch). A stream rather than a sorted set scored by revocation
  time: Redis assigns the entry IDs, increasing even when two instances append in the same
  millisecond or their clocks disagree, so a reader's cursor (the last ID it read) never skips
  an entry, and ``XRANGE (cursor +`` is exactly what is new.
- ``<prefix>{revoked}:exp``, a sorted set of the feed's entry IDs scored by that expiry: the
  expired entries are found without a scan and deleted from both, so no entry outlives its
  token. Every append and every read trims (the feed shrinks while nobody revokes, too).

PERF: the check is a dict look-up in :attr:`Revocations.revoked` (jti -> expiry), which the
token stage and the fused hit path read directly: no Redis call, no coroutine, no method call
per request. The set holds the revoked tokens still live (at most one access token lifetime of
revocations); expired ones are swept every ``sweep_seconds``.

Redis down or slow: availability first (tokens are short-lived and signed), the last known set
is used. Each call runs within ``timeout``, behind :class:`cygate.infra.circuit.Circuit`
(NOTE: a hung Redis accepts the connection and never answers: the socket timeout alone does not
bound a call); reads are skipped while it is open, and the outage is logged when it starts and
when Redis answers again. A worker that starts while Redis is down starts with an empty set and
loads the whole feed at its first read that succeeds (its cursor is still at the start). A
revocation made while Redis is down is in the revoking worker's set at once and kept: the first
read that succeeds appends it first (if its token is still live), and other workers learn it
from the feed then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from cygate.infra.circuit import Circuit
from cygate.infra.tasks import spawn
from cygate.infra.tasks import stop as stop_task

if TYPE_CHECKING:
    from cygate.core.jwt import JWTVerifierPy
    from cygate.infra.redis import RedisHandle

__all__ = ["Revocations"]

log = logging.getLogger("cygate.identity")

PAGE = 10_000
"""Feed entries one read returns at most (a start-up load of more reads page by page)."""

_TRIM = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1000)
if #gone > 0 then
  redis.call('XDEL', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
"""

# KEYS: feed, exp. ARGV: now, then jti and expiry of each revoked token.
_APPEND = (
    _TRIM
    + """
for i = 2, #ARGV, 2 do
  local id = redis.call('XADD', KEYS[1], '*', 'j', ARGV[i], 'e', ARGV[i + 1])
  redis.call('ZADD', KEYS[2], ARGV[i + 1], id)
end
return #ARGV / 2
"""
)

# KEYS: feed, exp. ARGV: now, the cursor ('' at the start), the page size.
_READ = (
    _TRIM
    + """
local start = '-'
if ARGV[2] ~= '' then start = '(' .. ARGV[2] end
return redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[3])
"""
)


class Revocations:
    """See the module docstring."""

    __slots__ = (
        "_append",
        "_cursor",
        "_read",
        "_redis",
        "_revoked",
        "_swept",
        "_task",
        "_unsent",
        "circuit",
        "interval",
        "keys",
        "sweep_seconds",
        "verifier",
    )

    def __init__(
        self,
        redis: RedisHandle | None,
        verifier: JWTVerifierPy,
        *,
        interval: float,
        timeout: float = 0.5,
        backoff: float = 1.0,
        sweep_seconds: float = 30.0,
    ) -> None:
        self.verifier = verifier
        self.interval = interval
        """Seconds between two reads of the feed."""
        self.sweep_seconds = sweep_seconds
        """Seconds between two sweeps of the expired entries out of the local set."""
        self.circuit = Circuit("revocation feed (Redis)", timeout=timeout, backoff=backoff,
                               log=log)  # fmt: skip
        self._revoked: dict[str, float] = {}  # jti -> expiry (changed in place, never rebound)
        self._unsent: list[tuple[str, float]] = []  # revoked while Redis failed
        self._cursor = ""  # the last feed entry read ('' : none yet)
        self._swept = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._redis: RedisHandle | None = None
        self.keys: list[str] = []
        """The feed's keys (the stream, the expiry index), once Redis is attached."""
        self._append: Any = None
        self._read: Any = None
        if redis is not None:
            self.attach(redis)

    def attach(self, redis: RedisHandle) -> None:
        self._redis = redis
        base = redis.key("{revoked}", "")
        self.keys = [base + "feed", base + "exp"]
        # NOTE: redis-py's Script sends EVALSHA and loads the script on NOSCRIPT, once.
        self._append = redis.client.register_script(_APPEND)
        self._read = redis.client.register_script(_READ)

    @property
    def revoked(self) -> Mapping[str, float]:
        """jti -> expiry (seconds since the epoch) of every revoked token this worker knows:
        live and read-only, the same mapping for this object's whole life. A verified token
        whose ``jti`` is found here is refused (PERF: the token stage and the compiled hit path
        look it up directly)."""
        return self._revoked

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the whole feed (when Redis answers), then read it every ``interval`` seconds
        in a task of its own until :meth:`stop`."""
        await self.refresh()
        if self._task is None and self._redis is not None:
            self._task = spawn(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:  # pragma: no cover - a malformed entry: keep reading
                log.exception("reading the revocation feed failed")
            if time.monotonic() - self._swept >= self.sweep_seconds:
                self.sweep()

    # -- the feed -----------------------------------------------------------------------------

    async def revoke(self, tokens: Iterable[tuple[str, float]]) -> None:
        """Revoke access tokens given as ``(jti, expires_at)`` (seconds since the epoch): in
        this worker's set at once, and appended to the feed (kept for the next read that
        succeeds when Redis fails)."""
        now = time.time()
        leeway = self.verifier.leeway
        live = [(jti, exp + leeway) for jti, exp in tokens if jti and exp + leeway > now]
        self._learn(live)
        if not live or self._redis is None:
            return
        if not self.circuit.usable:
            self._unsent.extend(live)
            log.error("revocation feed (Redis) unavailable: %d revoked access token(s) kept, "
                      "appended when Redis answers again", len(live))  # fmt: skip
            return
        try:
            await self._call(self._append, now, _flat(live))
        except (RedisError, OSError, TimeoutError) as exc:
            self._unsent.extend(live)
            self.circuit.failed(exc, "using the revocations known so far")
            log.error("could not append %d revoked access token(s) to the feed (%r); kept, "
                      "appended when Redis answers again", len(live), exc)  # fmt: skip

    async def refresh(self) -> bool:
        """Append what was kept while Redis failed, then read what is new in the feed (all of
        it, page by page). False when Redis was not asked (none attached, the circuit open)
        or failed."""
        if self._redis is None or not self.circuit.admit():
            return False
        now = time.time()
        # (taken whole: a revocation made meanwhile joins the next list, never lost)
        unsent, self._unsent = [(jti, exp) for jti, exp in self._unsent if exp > now], []
        try:
            if unsent:
                await self._call(self._append, now, _flat(unsent))
                unsent = []
            while True:
                page = await self._call(self._read, now, [self._cursor, PAGE])
                self._apply(page, now)
                if len(page) < PAGE:
                    break
        except (RedisError, OSError, TimeoutError) as exc:
            self._unsent[:0] = unsent
            self.circuit.failed(exc, "using the revocations known so far")
            return False
        self.circuit.succeeded()
        return True

    def sweep(self, now: float | None = None) -> int:
        """Drop the entries whose tokens have expired from the local set; how many."""
        if now is None:
            now = time.time()
        gone = [jti for jti, exp in self._revoked.items() if exp <= now]
        for jti in gone:
            del self._revoked[jti]
        self._swept = time.monotonic()
        return len(gone)

    async def _call(self, script: Any, now: float, args: list[Any]) -> Any:
        async with asyncio.timeout(self.circuit.timeout):
            return await script(keys=self.keys, args=[f"{now:.3f}", *args])

    def _apply(self, page: list[Any], now: float) -> None:
        learnt = []
        for entry_id, fields in page:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            exp = float(values[b"e"])
            if exp > now:
                learnt.append((values[b"j"].decode(), exp))
            self._cursor = entry_id.decode()
        self._learn(learnt)

    def _learn(self, tokens: Iterable[tuple[str, float]]) -> None:
        revoked = self._revoked
        for jti, exp in tokens:
            if exp > revoked.get(jti, 0.0):
                revoked[jti] = exp


def _flat(tokens: list[tuple[str, float]]) -> list[str]:
    return [part for jti, exp in tokens for part in (jti, f"{exp:.3f}")]
