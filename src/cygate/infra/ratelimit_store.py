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

Decisions asked for while a call is under way go together in the next call. On a plain client
that call is one ``EVALSHA`` of :data:`GCRA_MANY_LUA` over all their keys, on a connection the
store holds (:class:`cygate.infra.redis.HeldConnection`): the same GCRA per key, in order, so
a key asked twice sees its first answer's write; on a Redis Cluster (each key is its own hash
slot) it is a pipeline of :data:`GCRA_LUA` calls through the cluster client. Either way one
key's failure (a value that is not a TAT) fails that decision only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from cygate.infra.circuit import Circuit
from cygate.infra.redis import HeldConnection

if TYPE_CHECKING:
    from cygate.infra.metrics import Counter
    from cygate.infra.redis import RedisHandle

__all__ = ["GCRA_LUA", "GCRA_MANY_LUA", "QuotaStore", "QuotaUnavailable", "Reservation"]

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

# The same GCRA over KEYS[1..n] in one call (one TIME for all): ARGV holds (interval, burst,
# want) for each key in turn. Returns 4 numbers per key, as GCRA_LUA's; a key whose value is
# not a TAT (another type, or not a number) answers {-1, 0, 0, 0} and is left as it is.
GCRA_MANY_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = interval * tonumber(ARGV[3 * i - 1])
  local want = tonumber(ARGV[3 * i])
  local raw = redis.pcall('GET', key)
  local tat = nil
  if type(raw) ~= 'table' then tat = tonumber(raw or '0') end
  local n = #out
  if tat == nil then
    out[n + 1] = -1; out[n + 2] = 0; out[n + 3] = 0; out[n + 4] = 0
  else
    if tat < now then tat = now end
    local free = math.floor((tolerance - (tat - now)) / interval)
    if free > want then free = want end
    if free < 1 then
      out[n + 1] = 0; out[n + 2] = tat - now; out[n + 3] = 0
      out[n + 4] = tat + interval - tolerance - now
    else
      tat = tat + free * interval
      redis.call('SET', key, string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
      out[n + 1] = free; out[n + 2] = tat - now
      out[n + 3] = math.floor((tolerance - (tat - now)) / interval); out[n + 4] = 0
    end
  end
end
return out
"""
_GCRA_MANY_SHA = hashlib.sha1(GCRA_MANY_LUA.encode()).hexdigest()


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


class KeyFailed(QuotaUnavailable):
    """Redis answered, but not for this key (its value is not a TAT): this decision only uses
    the fallback; the circuit stays closed."""


_Item = tuple[str, int, int, int, "asyncio.Future[list[int]] | None", float]
"""key, interval µs, burst, tokens wanted, the waiter's future (None: the caller sends it
itself) and its deadline (the event loop's time)."""
_Answer = list[int] | KeyFailed


class QuotaStore:
    """Runs the GCRA script against the app's Redis, within a deadline, behind a circuit.

    PERF: decisions asked for while a call is under way are queued and sent together in one
    call when it returns (one multi-key ``EVALSHA`` on the store's own connection; on a
    cluster, one pipeline of one ``EVALSHA`` per key), each decision still atomic. Under load
    this is one round-trip, one connection and (on a plain client) one command for many
    decisions: a command through redis-py's client costs the worker tens of microseconds
    whatever it carries, and its pool (64 connections) would otherwise run out with a burst of
    concurrent requests (an exhausted pool must not look like a Redis failure).
    """

    __slots__ = (
        "_flushing",
        "_line",
        "_queue",
        "_sha",
        "_task",
        "batches",
        "calls",
        "circuit",
        "redis",
        "round_trips",
        "timeout",
    )

    MAX_BATCH = 256
    """Decisions sent in one call at most."""

    def __init__(
        self,
        redis: RedisHandle,
        *,
        timeout: float,
        backoff: float,
        round_trips: Counter | None = None,
    ) -> None:
        self.redis = redis
        self.round_trips = round_trips
        """Counts :attr:`batches` for the metrics, when given."""
        self.timeout = timeout
        """Most one decision may wait, seconds (queue, round-trip, NOSCRIPT reload included)."""
        self.circuit = Circuit("rate-limit store", timeout=timeout, backoff=backoff, log=log)
        self._sha: str | None = None
        self._queue: list[_Item] = []
        self._flushing = False
        self._task: asyncio.Task[None] | None = None  # the running flush (a strong reference)
        # NOTE: a plain client only: a cluster client routes each key to its slot's node.
        client = redis.client
        self._line = HeldConnection(client, timeout) if isinstance(client, aioredis.Redis) else None
        self.calls = 0
        """Decisions sent (one key of a script call each)."""
        self.batches = 0
        """Round-trips made for them (a reload after NOSCRIPT not counted)."""

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
                if self._line is not None:
                    await self.redis.client.script_load(GCRA_MANY_LUA)
                else:
                    self._sha = str(await self.redis.client.script_load(GCRA_LUA))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("rate-limit script not loaded (Redis unreachable: %r); retrying later", exc)
            return False
        return True

    async def close(self) -> None:
        """Close the store's own connection (a later call opens a new one)."""
        if self._line is not None:
            await self._line.close()

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
                    raw = (await self._run([(redis_key, interval_us, burst, want, None, 0.0)]))[0]
            except (RedisError, OSError, TimeoutError, ValueError) as exc:
                self._trip(exc)
                raise QuotaUnavailable(repr(exc)) from None
            finally:
                self._flushing = False
                if self._queue:
                    self._flushing = True
                    self._task = asyncio.get_running_loop().create_task(self._flush())
            self.circuit.succeeded()
            if isinstance(raw, KeyFailed):
                raise raw
            return Reservation(*raw)
        # NOTE: no timer of its own: the call under way ends within the timeout of its own
        # start (before this moment), and the call that carries this decision is bounded by
        # the deadline of the first decision in it (see _flush); so this one waits at most
        # the timeout, and the whole queue costs one timer per call, not one per waiter.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        deadline = loop.time() + self.timeout
        self._queue.append((redis_key, interval_us, burst, want, future, deadline))
        return Reservation(*(await future))

    def _trip(self, exc: BaseException) -> None:
        self.circuit.failed(exc, "deciding locally")

    async def _flush(self) -> None:
        queue = self._queue
        try:
            while queue:
                batch = queue[: self.MAX_BATCH]
                del queue[: self.MAX_BATCH]
                batch = [item for item in batch if item[4] is not None and not item[4].done()]
                if not batch:
                    continue  # waiters gone: skip
                if not self.circuit.usable:
                    # The call before failed: these use the fallback now, not after a timeout.
                    _fail(batch, QuotaUnavailable("circuit open"))
                    continue
                try:
                    # The queue is in arrival order: the first decision's deadline is the
                    # earliest of the batch (the others end early, never late).
                    async with asyncio.timeout_at(batch[0][5]):
                        answers = await self._run(batch)
                except (RedisError, OSError, TimeoutError, ValueError) as exc:
                    self._trip(exc)
                    _fail(batch, QuotaUnavailable(repr(exc)))
                    continue
                except BaseException as exc:  # a bug, or stopping: no waiter may hang on it
                    _fail(batch, QuotaUnavailable(repr(exc)))
                    if not isinstance(exc, Exception):
                        raise
                    log.exception("rate-limit decisions failed")
                    continue
                self.circuit.succeeded()
                for item, answer in zip(batch, answers, strict=True):
                    future = item[4]
                    if future is None or future.done():
                        continue
                    if isinstance(answer, KeyFailed):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            self._flushing = False
            if queue:  # left by a cancellation (stopping): their requests use the fallback
                _fail(queue, QuotaUnavailable("stopping"))
                queue.clear()

    async def _run(self, batch: list[_Item]) -> list[_Answer]:
        """One round trip for ``batch``: an answer per item (a :class:`KeyFailed` for a key
        Redis could not decide); raises when the call as a whole failed."""
        self.calls += len(batch)
        self.batches += 1
        if self.round_trips is not None:
            self.round_trips.value += 1
        line = self._line
        if line is not None:
            keys = [key.encode() for key, *_ in batch]
            args = [b"%d" % v for _, interval_us, burst, want, _, _ in batch
                    for v in (interval_us, burst, want)]  # fmt: skip
            reply = await line.evalsha(_GCRA_MANY_SHA, GCRA_MANY_LUA, keys, args)
            values = [int(v) for v in reply]
            if len(values) != 4 * len(batch):
                raise ValueError(f"unexpected script reply of {len(values)} numbers")
            return [
                _failed(batch[i][0]) if values[4 * i] < 0 else values[4 * i : 4 * i + 4]
                for i in range(len(batch))
            ]
        client = self.redis.client
        if self._sha is None:
            self._sha = str(await client.script_load(GCRA_LUA))
        replies = await self._pipeline(batch)
        if any(isinstance(r, NoScriptError) for r in replies):
            # Redis restarted (or its script cache was flushed): load again, call again.
            self._sha = str(await client.script_load(GCRA_LUA))
            replies = await self._pipeline(batch)
        answers: list[_Answer] = []
        for (key, *_), reply in zip(batch, replies, strict=True):
            if isinstance(reply, ResponseError):
                answers.append(_failed(key, reply))  # this key's script failed, not Redis
            elif isinstance(reply, Exception):
                raise reply
            else:
                answers.append(_ints(reply))
        return answers

    async def _pipeline(self, batch: list[_Item]) -> list[Any]:
        assert self._sha is not None
        async with self.redis.client.pipeline(transaction=False) as pipe:
            for key, interval_us, burst, want, _, _ in batch:
                pipe.evalsha(self._sha, 1, key, interval_us, burst, want)
            return await pipe.execute(raise_on_error=False)


def _fail(items: list[_Item], exc: QuotaUnavailable) -> None:
    for item in items:
        future = item[4]
        if future is not None and not future.done():
            future.set_exception(exc)


def _failed(key: str, reply: object = "not a TAT") -> KeyFailed:
    log.warning("rate-limit key %r not decided by Redis (%s); using the fallback", key, reply)
    return KeyFailed(f"key {key!r}: {reply}")


def _ints(reply: Any) -> list[int]:
    values = [int(v) for v in reply]
    if len(values) != 4:
        raise ValueError(f"unexpected script reply {reply!r}")
    return values
