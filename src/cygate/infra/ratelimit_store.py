"""Global rate limits in Redis: one atomic Lua script per decision, and what to do when Redis fails.

The script is GCRA on one key (the theoretical arrival time, in microseconds of Redis's own
clock, so instances whose clocks disagree still share one timeline). It hands out up to
``want`` tokens at once: ``want = 1`` is an ``exact`` decision, ``want = lease`` reserves a lease
for ``batched`` mode. Everything happens in one EVALSHA, so concurrent callers on any number of
instances can never be granted more than the limit allows.

The script is loaded once (``SCRIPT LOAD`` at start-up) and called by its SHA; after a Redis
restart the server answers ``NOSCRIPT`` and the script is loaded again, then called again.

Failure: every call runs under :func:`asyncio.timeout` (a hung Redis, e.g. SIGSTOP, accepts
the connection and never answers: socket timeouts alone do not bound the whole call). A failure
opens the circuit (:class:`cygate.infra.circuit.Circuit`) for ``backoff`` seconds, during which
callers get :class:`QuotaUnavailable` at once (no wait); then one request probes Redis again,
and a success closes the circuit: global limiting resumes by itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, RedisError

from cygate.infra.circuit import Circuit

if TYPE_CHECKING:
    from cygate.infra.redis import RedisHandle

__all__ = ["GCRA_LUA", "QuotaStore", "QuotaUnavailable", "Reservation"]

log = logging.getLogger("cygate.ratelimit")

# KEYS[1]: the limit's key. ARGV: interval (µs between requests), burst, want (tokens asked).
# Returns {granted, reset_us, remaining, retry_us}: granted tokens (0: refused); time until the
# full burst is back; tokens still free after the grant; when refused, time until one is free.
# NOTE: times are integers of microseconds held in Lua doubles (exact below 2^53 µs, the year
# 2255); the TAT is written with %d, as Lua's default number format would round it.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local free = math.floor((tolerance - (tat - now)) / interval)
if free > want then free = want end
if free < 1 then
  return {0, tat - now, 0, tat + interval - tolerance - now}
end
tat = tat + free * interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
return {free, tat - now, math.floor((tolerance - (tat - now)) / interval), 0}
"""


class QuotaUnavailable(Exception):
    """Redis did not answer in time, failed, or the circuit is open: use the fallback."""


class Reservation:
    """The script's answer. Times are nanoseconds, relative to the moment of the decision."""

    __slots__ = ("granted", "remaining", "reset_ns", "retry_ns")

    def __init__(self, granted: int, reset_us: int, remaining: int, retry_us: int) -> None:
        self.granted = granted
        self.reset_ns = reset_us * 1000
        self.remaining = remaining
        self.retry_ns = retry_us * 1000


class QuotaStore:
    """Runs the GCRA script against the app's Redis, within a deadline, behind a circuit.

    PERF: decisions asked for while a round-trip is under way are queued and sent together as
    one pipeline when it returns (each EVALSHA in it is still its own atomic decision). Under
    load this is one round-trip and one connection for many decisions, instead of one
    connection per concurrent request: redis-py's pool (64 connections) would otherwise run
    out with a burst of concurrent requests, and an exhausted pool must not look like a
    Redis failure.
    """

    __slots__ = (
        "_flushing",
        "_queue",
        "_sha",
        "_task",
        "batches",
        "calls",
        "circuit",
        "redis",
        "timeout",
    )

    MAX_BATCH = 256
    """Decisions sent in one pipeline at most."""

    def __init__(self, redis: RedisHandle, *, timeout: float, backoff: float) -> None:
        self.redis = redis
        self.timeout = timeout
        """Most one decision may wait, seconds (queue, round-trip, NOSCRIPT reload included)."""
        self.circuit = Circuit("rate-limit store", timeout=timeout, backoff=backoff, log=log)
        self._sha: str | None = None
        self._queue: list[tuple[str, int, int, int, asyncio.Future[list[int]]]] = []
        self._flushing = False
        self._task: asyncio.Task[None] | None = None  # the running flush (a strong reference)
        self.calls = 0
        """Script calls made (one EVALSHA each; a reload after NOSCRIPT adds a SCRIPT LOAD)."""
        self.batches = 0
        """Round-trips made for them."""

    @property
    def usable(self) -> bool:
        """False while the circuit is open: decide locally without waiting."""
        return self.circuit.usable

    @property
    def retry_after(self) -> float:
        """Seconds until Redis is tried again (for a fail-closed 503's Retry-After)."""
        return self.circuit.retry_after

    async def load(self) -> bool:
        """Load the script (at start-up); False when Redis is not reachable now."""
        try:
            async with asyncio.timeout(self.timeout * 5):
                self._sha = str(await self.redis.client.script_load(GCRA_LUA))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("rate-limit script not loaded (Redis unreachable: %r); retrying later", exc)
            return False
        return True

    def key(self, limit: str, key: str) -> str:
        """The Redis key of ``key`` under ``limit``; the braces make it one Cluster hash slot."""
        return self.redis.key("rl", "{" + limit + "\x1f" + key + "}")

    async def reserve(self, redis_key: str, interval_us: int, burst: int, want: int) -> Reservation:
        """Ask for up to ``want`` tokens of ``redis_key``; raises :class:`QuotaUnavailable`."""
        # NOTE: the one request that finds the circuit half-open probes; the others keep
        # deciding locally until it answers (or fails within the timeout).
        if not self.circuit.admit():
            raise QuotaUnavailable("circuit open")
        if not self._flushing:
            # PERF: nothing under way: this request sends its own decision at once (no task,
            # no extra turn of the event loop); those that arrive meanwhile are queued and go
            # together when it returns.
            self._flushing = True
            try:
                async with asyncio.timeout(self.timeout):
                    raw = (await self._run([(redis_key, interval_us, burst, want, None)]))[0]
            except (RedisError, OSError, TimeoutError, ValueError) as exc:
                self._trip(exc)
                raise QuotaUnavailable(repr(exc)) from None
            finally:
                self._flushing = False
                if self._queue:
                    self._flushing = True
                    self._task = asyncio.get_running_loop().create_task(self._flush())
            self.circuit.succeeded()
            return Reservation(*raw)
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append((redis_key, interval_us, burst, want, future))
        try:
            async with asyncio.timeout(self.timeout):
                raw = await future
        except TimeoutError:
            self._trip(TimeoutError(f"no answer from Redis in {self.timeout}s"))
            raise QuotaUnavailable("timeout") from None
        return Reservation(*raw)

    def _trip(self, exc: BaseException) -> None:
        self.circuit.failed(exc, "deciding locally")

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.MAX_BATCH]
                del self._queue[: self.MAX_BATCH]
                batch = [item for item in batch if not item[4].done()]  # waiters gone: skip
                if not batch:
                    continue
                try:
                    async with asyncio.timeout(self.timeout):
                        answers = await self._run(batch)
                except (RedisError, OSError, TimeoutError, ValueError) as exc:
                    self._trip(exc)
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(QuotaUnavailable(repr(exc)))
                    continue
                self.circuit.succeeded()
                for (*_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._flushing = False

    async def _run(self, batch: list[tuple[str, int, int, int, Any]]) -> list[list[int]]:
        client = self.redis.client
        self.calls += len(batch)
        self.batches += 1
        if self._sha is None:
            self._sha = str(await client.script_load(GCRA_LUA))
        if len(batch) == 1:
            key, interval_us, burst, want, _ = batch[0]
            try:
                answer = await client.evalsha(self._sha, 1, key, interval_us, burst, want)
            except NoScriptError:
                # Redis restarted (or its script cache was flushed): load again, call again.
                self._sha = str(await client.script_load(GCRA_LUA))
                answer = await client.evalsha(self._sha, 1, key, interval_us, burst, want)
            return [_ints(answer)]
        replies = await self._pipeline(batch)
        if any(isinstance(r, NoScriptError) for r in replies):
            self._sha = str(await client.script_load(GCRA_LUA))
            replies = await self._pipeline(batch)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [_ints(r) for r in replies]

    async def _pipeline(self, batch: list[tuple[str, int, int, int, Any]]) -> list[Any]:
        assert self._sha is not None
        async with self.redis.client.pipeline(transaction=False) as pipe:
            for key, interval_us, burst, want, _ in batch:
                pipe.evalsha(self._sha, 1, key, interval_us, burst, want)
            return await pipe.execute(raise_on_error=False)


def _ints(reply: Any) -> list[int]:
    values = [int(v) for v in reply]
    if len(values) != 4:
        raise ValueError(f"unexpected script reply {reply!r}")
    return values
