"""L2 in Redis: shared entries, loader leases, tag sets, and the invalidation channel.

Keys (all under one hash tag, ``{cache}``, so the scripts below touch one Redis Cluster slot):

- ``<prefix>{cache}:e:<key hex>`` an entry (msgpack, :mod:`cygate.edge.cache_entry`), with a
  ``PX`` until its last stale window ends;
- ``<prefix>{cache}:l:<key hex>`` the lease of the one loader of that key (``SET NX PX``);
- ``<prefix>{cache}:t:<tag>`` the set of key hexes that carry a tag;
- ``<prefix>{cache}:gen`` the generation of L2: every entry is stored as ``<generation>:`` and
  its bytes, and is read only while that is still the generation. Every script names one of
  these keys (the generation where it has no other), so on a Redis Cluster each runs on the
  node of that slot.

The invalidation channel ``<prefix>cache:invalidate`` is plain pub/sub: on a cluster a PUBLISH
reaches the subscribers of every node, and each instance subscribes on the master of the
``{cache}`` slot (so the count of instances that heard a purge is the cluster's).

NOTE: one slot means one shard holds the whole L2 in a cluster. That is the price of atomic
scripts over an entry, its lease and its tags; API responses are small, and sharding L2 later
means tag versions instead of tag sets (see docs/caching.md).

Why the lease is checked when storing: a load that started before an invalidation must not put
its old answer into L2 after it. Acquiring a lease also enters the key in its tag sets; an
invalidation deletes the entries *and the leases* of its keys, then publishes, in one script.
A loader whose lease is gone by the time it stores (invalidated, or expired because the load was
slow) stores nothing.

Why the generation: pub/sub delivers nothing while Redis is away, and an invalidation that
failed then (the write committed, Redis was down) never deleted its entries in L2. So an
instance that lost its subscription increments the generation before it subscribes again
(:class:`Subscription`'s ``before_subscribe``): every entry stored before the outage is then
no longer read anywhere, and one stored under a lease taken before it is refused.

Every Redis error opens a circuit (:class:`cygate.infra.circuit.Circuit`, the rate limiter's):
for ``cache_l2_retry_after`` seconds L2 is skipped and the cache runs on L1 and the loaders
(PostgreSQL) alone; then one request probes Redis again (a refused connection fails at once; a
hung Redis costs that request at most ``redis_timeout`` before the next pause), and a success
closes the circuit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from cygate.infra.circuit import Circuit
from cygate.infra.retry import Backoff

if TYPE_CHECKING:
    from cygate.infra.metrics import Metrics
    from cygate.infra.redis import RedisHandle

__all__ = ["L2", "Subscription", "decode_message", "encode_message"]

log = logging.getLogger("cygate.cache")

_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

# The lease holds ``<token>|<generation>``: a lease of an older generation stores nothing.
# KEYS[1] lease, KEYS[2] generation, KEYS[3..] tag sets; ARGV: token, lease ms, key hex, tag-set ms
_ACQUIRE = """
local held = ARGV[1] .. '|' .. (redis.call('GET', KEYS[2]) or '0')
if not redis.call('SET', KEYS[1], held, 'NX', 'PX', ARGV[2]) then return 0 end
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[3])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[4]) then
    redis.call('PEXPIRE', KEYS[i], ARGV[4])
  end
end
return 1
"""
# KEYS[1] entry, KEYS[2] lease, KEYS[3] generation; ARGV: token, payload, px
_STORE = """
local gen = redis.call('GET', KEYS[3]) or '0'
if redis.call('GET', KEYS[2]) ~= ARGV[1] .. '|' .. gen then return 0 end
redis.call('SET', KEYS[1], gen .. ':' .. ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"""
# The miss's one round trip, for every miss of a loop turn at once: each key's entry if it is
# of the current generation, else its lease (entering the key in its tag sets), else 0.
# PERF: one argument per key (redis-py spends Python time on each argument):
# ``<key hex> <token> <read: 1|0> <tag-set ms> `` then each tag as ``<length>:<tag>``. Every
# name is the key hex under a prefix of the one hash tag (as _INVALIDATE's): one cluster slot.
# KEYS[1] generation; ARGV: lease ms, entry prefix, lease prefix, tag prefix, one per key.
# Returns per key: the entry's bytes, 1 (leased) or 0 (another loader holds the lease).
_LOOKUP = """
local gen = redis.call('GET', KEYS[1]) or '0'
local stamp = gen .. ':'
local out = {}
for a = 5, #ARGV do
  local item = ARGV[a]
  local hex, token, read, tag_ms, pos = string.match(item, '^(%x+) (%x+) ([01]) (%d+) ()')
  local result = 0
  if read == '1' then
    local value = redis.call('GET', ARGV[2] .. hex)
    if value and string.sub(value, 1, #stamp) == stamp then
      result = string.sub(value, #stamp + 1)
    end
  end
  local lease = ARGV[3] .. hex
  if result == 0 and redis.call('SET', lease, token .. '|' .. gen, 'NX', 'PX', ARGV[1]) then
    tag_ms = tonumber(tag_ms)
    while pos <= #item do
      local n, start = string.match(item, '^(%d+):()', pos)
      local tag = ARGV[4] .. string.sub(item, start, start + n - 1)
      pos = start + n
      redis.call('SADD', tag, hex)
      if redis.call('PTTL', tag) < tag_ms then
        redis.call('PEXPIRE', tag, tag_ms)
      end
    end
    result = 1
  end
  out[#out + 1] = result
end
return out
"""
# _STORE for many entries at once. KEYS[1] generation; ARGV: entry prefix, lease prefix, then
# two per entry: ``<key hex> <token> <px>`` and the payload. Returns the number stored.
_STORE_MANY = """
local gen = redis.call('GET', KEYS[1]) or '0'
local n = 0
for a = 3, #ARGV, 2 do
  local hex, token, px = string.match(ARGV[a], '^(%x+) (%x+) (%d+)$')
  local lease = ARGV[2] .. hex
  if redis.call('GET', lease) == token .. '|' .. gen then
    redis.call('SET', ARGV[1] .. hex, gen .. ':' .. ARGV[a + 1], 'PX', px)
    redis.call('DEL', lease)
    n = n + 1
  end
end
return n
"""
# KEYS[1] lease; ARGV: token
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS[1] generation (unused: it names the slot, so that a cluster runs this where the
# entries are, also for a purge by keys alone), KEYS[2..] tag sets; ARGV: channel, message,
# entry prefix, lease prefix, key hexes...
_INVALIDATE = """
local n = 0
for i = 2, #KEYS do
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    n = n + redis.call('DEL', ARGV[3] .. m)
    redis.call('DEL', ARGV[4] .. m)
  end
  redis.call('DEL', KEYS[i])
end
for i = 5, #ARGV do
  n = n + redis.call('DEL', ARGV[3] .. ARGV[i])
  redis.call('DEL', ARGV[4] .. ARGV[i])
end
return {n, redis.call('PUBLISH', ARGV[1], ARGV[2])}
"""


class _Message(msgspec.Struct, array_like=True, frozen=True):
    """An invalidation on the channel: ``kind`` ``t`` (tags), ``k`` (keys) or ``*`` (all)."""

    origin: str
    kind: str
    tags: list[str] = []
    keys: list[bytes] = []


_msg_encoder = msgspec.msgpack.Encoder()
_msg_decoder = msgspec.msgpack.Decoder(_Message)


def encode_message(origin: str, kind: str, tags: list[str], keys: list[bytes]) -> bytes:
    return _msg_encoder.encode(_Message(origin, kind, tags, keys))


def decode_message(data: bytes) -> _Message | None:
    try:
        return _msg_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _current(value: Any, generation: Any) -> bytes | None:
    """The entry bytes of a stored ``<generation>:<entry>`` while that is the generation."""
    if not isinstance(value, bytes):
        return None
    stamp, sep, payload = value.partition(b":")
    return payload if sep and stamp == (generation or b"0") else None


_BATCH = 256
"""Keys per lookup or store script call at most (a longer queue goes in several)."""
_STORE_LINGER = 0.005
"""Seconds a store waits for others to go with it."""


class _Lookup:
    __slots__ = ("future", "key", "read", "tag_ms", "tags")

    def __init__(
        self,
        key: bytes,
        tags: tuple[str, ...],
        read: bool,
        tag_ms: int,
        future: asyncio.Future[bytes | str | bool | None],
    ) -> None:
        self.key = key
        self.tags = tags
        self.read = read
        self.tag_ms = tag_ms
        self.future = future


class L2:
    """Entries, leases and invalidation in Redis, behind a breaker."""

    __slots__ = (
        "_acquire",
        "_invalidate",
        "_looking",
        "_lookup",
        "_lookups",
        "_prefixes",
        "_release",
        "_store",
        "_store_many",
        "_stores",
        "_tasks",
        "_timer",
        "_token_base",
        "_tokens",
        "channel",
        "circuit",
        "client",
        "entry_prefix",
        "gen_key",
        "lease_prefix",
        "metrics",
        "n_errors",
        "n_stored",
        "tag_prefix",
    )

    def __init__(
        self, redis: RedisHandle, metrics: Metrics, retry_after: float, timeout: float = 0.5
    ) -> None:
        self.client = redis.client
        base = redis.key("{cache}", "")
        self.entry_prefix = base + "e:"
        self.lease_prefix = base + "l:"
        self.tag_prefix = base + "t:"
        self.gen_key = base + "gen"
        self.channel = redis.key("cache", "invalidate")
        self.metrics = metrics
        self.n_errors = metrics.counter("cygate_cache_l2_errors_total")
        self.n_stored = metrics.counter("cygate_cache_stores_total")
        self.circuit = Circuit("cache L2 (Redis)", timeout=timeout, backoff=retry_after, log=log)
        # NOTE: redis-py's Script sends EVALSHA and loads the script on NOSCRIPT, once.
        self._acquire = self.client.register_script(_ACQUIRE)
        self._store = self.client.register_script(_STORE)
        self._release = self.client.register_script(_RELEASE)
        self._invalidate = self.client.register_script(_INVALIDATE)
        self._lookup = self.client.register_script(_LOOKUP)
        self._store_many = self.client.register_script(_STORE_MANY)
        self._prefixes = (
            self.entry_prefix.encode(),
            self.lease_prefix.encode(),
            self.tag_prefix.encode(),
        )
        self._looking = False
        """A lookup call is in flight: new misses queue for the next one."""
        self._lookups: list[_Lookup] = []
        """Misses of this loop turn, sent together by :meth:`_send_lookups`."""
        self._stores: list[tuple[bytes, str, Callable[[], tuple[bytes, int]]]] = []
        """Entries waiting for :meth:`_send_stores`: key, lease token, their payload and px."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._token_base = secrets.token_hex(8)
        self._tokens = itertools.count()

    @property
    def up(self) -> bool:
        """False while the circuit is open (a Redis error happened less than retry_after ago)."""
        return self.circuit.usable

    @property
    def retry_after(self) -> float:
        """Seconds Redis is skipped after an error (``cache_l2_retry_after``)."""
        return self.circuit.backoff

    def _failed(self, what: str, exc: BaseException) -> None:
        self.circuit.failed(exc, f"serving from L1 and the loaders ({what} failed)")
        self.n_errors.value += 1

    async def _call(self, what: str, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run one Redis call unless the circuit is open; None on any error."""
        if not self.circuit.admit():
            return None
        try:
            result = await make()
        except _ERRORS as exc:
            self._failed(what, exc)
            return None
        self.circuit.succeeded()
        return result

    async def get(self, key: bytes) -> bytes | None:
        """The entry's bytes, or None (absent, of an older generation, or Redis failed)."""
        names = [self.entry_prefix + key.hex(), self.gen_key]
        got = await self._call("GET", lambda: self.client.mget(names))
        return None if got is None else _current(got[0], got[1])

    def lookup(
        self, key: bytes, tags: Iterable[str], read: bool, lease_ms: int, tag_ms: int
    ) -> asyncio.Future[bytes | str | bool | None]:
        """A miss's one round trip: the entry's bytes (``read``: when it is there, of the
        current generation), else the loader's lease (its token, the key entered in its tag
        sets), False when another loader holds it, None on a Redis error.

        PERF: one lookup call is in flight at a time, and the misses that arrive meanwhile
        go together in the next (one ``EVALSHA``, one script runs them all): a Redis call
        costs the worker tens of microseconds (redis-py, the system calls) whatever it
        carries. Nothing waits when nothing is in flight, so a lone miss is sent at once."""
        future: asyncio.Future[bytes | str | bool | None] = (
            asyncio.get_running_loop().create_future()
        )
        if not self.up:
            future.set_result(None)
            return future
        self._lookups.append(_Lookup(key, tuple(tags), read, tag_ms, future))
        if not self._looking:
            self._looking = True
            self._spawn(self._send_lookups(lease_ms))
        return future

    async def _send_lookups(self, lease_ms: int) -> None:
        try:
            while self._lookups:
                batch, self._lookups = self._lookups[:_BATCH], self._lookups[_BATCH:]
                await self._send_lookup_batch(batch, lease_ms)
        finally:
            self._looking = False

    async def _send_lookup_batch(self, batch: list[_Lookup], lease_ms: int) -> None:
        prefixes = self._prefixes
        args: list[bytes] = [b"%d" % lease_ms, *prefixes]
        tokens = []
        for item in batch:
            token = self._new_token()
            tokens.append(token)
            packed = b"%s %s %s %d " % (
                item.key.hex().encode(),
                token.encode(),
                b"1" if item.read else b"0",
                item.tag_ms,
            )
            for tag in item.tags:
                encoded = tag.encode()
                packed += b"%d:%s" % (len(encoded), encoded)
            args.append(packed)
        got = None
        try:
            got = await self._call("lookup", lambda: self._lookup(keys=[self.gen_key], args=args))
        finally:  # NOTE: whatever happened, every waiting miss gets an answer
            self._answer_lookups(batch, tokens, got)

    def _answer_lookups(self, batch: list[_Lookup], tokens: list[str], got: Any) -> None:
        for i, item in enumerate(batch):
            result: bytes | str | bool | None = None
            if got is not None:
                value = got[i]
                result = value if isinstance(value, bytes) else tokens[i] if value == 1 else False
            if not item.future.done():
                item.future.set_result(result)
            elif isinstance(result, str):  # its request went away: give the lease back
                self._spawn(self.release(item.key, result))

    def _new_token(self) -> str:
        """A lease token no other loader holds: this client's random part and a count (PERF:
        no ``getrandom`` system call per miss)."""
        return f"{self._token_base}{next(self._tokens):x}"

    def store_later(self, key: bytes, token: str, payload: Callable[[], tuple[bytes, int]]) -> None:
        """Store under the lease, off the request's path: the stores of ``_STORE_LINGER``
        seconds (or ``_BATCH`` of them) go in one ``EVALSHA`` (PERF: a Redis call costs the
        worker tens of microseconds of Python whatever it carries; the lease keeps other
        instances waiting meanwhile). ``payload`` gives the entry's bytes and ``PX`` when they
        are sent."""
        stores = self._stores
        stores.append((key, token, payload))
        if len(stores) == 1:
            self._timer = asyncio.get_running_loop().call_later(_STORE_LINGER, self._flush_stores)
        elif len(stores) >= _BATCH:
            self._flush_stores()

    def _flush_stores(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stores:
            self._spawn(self._send_stores())

    async def _send_stores(self) -> None:
        batch, self._stores = self._stores[:_BATCH], self._stores[_BATCH:]
        if self._stores:
            self._spawn(self._send_stores())
        args: list[bytes] = [*self._prefixes[:2]]
        for key, token, payload in batch:
            data, px = payload()
            args += (b"%s %s %d" % (key.hex().encode(), token.encode(), px), data)
        got = await self._call("store", lambda: self._store_many(keys=[self.gen_key], args=args))
        if got:
            self.n_stored.value += int(got)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Send the stores waiting and wait for every lookup and store (stopping; tests)."""
        self._flush_stores()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def acquire(
        self, key: bytes, tags: Iterable[str], lease_ms: int, tag_ms: int
    ) -> str | bool | None:
        """Take the loader lease: its token, False when another loader holds it, None on error."""
        token = secrets.token_hex(8)
        hexkey = key.hex()
        keys = [self.lease_prefix + hexkey, self.gen_key, *(self.tag_prefix + t for t in tags)]
        got = await self._call(
            "lease", lambda: self._acquire(keys=keys, args=[token, lease_ms, hexkey, tag_ms])
        )
        if got is None:
            return None
        return token if got == 1 else False

    async def store(self, key: bytes, token: str, payload: bytes, px: int) -> bool:
        """Store under the lease; False when the lease is gone (invalidated, expired, or taken
        in an older generation)."""
        hexkey = key.hex()
        keys = [self.entry_prefix + hexkey, self.lease_prefix + hexkey, self.gen_key]
        got = await self._call("store", lambda: self._store(keys=keys, args=[token, payload, px]))
        return bool(got == 1)

    async def release(self, key: bytes, token: str) -> None:
        keys = [self.lease_prefix + key.hex()]
        await self._call("release", lambda: self._release(keys=keys, args=[token]))

    async def wait_for(self, key: bytes, patience: float) -> bytes | None:
        """Poll for the entry another instance is loading, until it appears, its lease goes
        away, or ``patience`` seconds pass (2, 4, 8, 16, 16, ... ms apart)."""
        hexkey = key.hex()
        names = [self.entry_prefix + hexkey, self.lease_prefix + hexkey, self.gen_key]
        deadline = time.monotonic() + patience
        pause = Backoff(0.002, 0.016)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(pause.next(), remaining))
            got = await self._call("wait", lambda: self.client.mget(names))
            if got is None:
                return None
            value, lease, generation = got
            entry = _current(value, generation)
            if entry is not None:
                return entry
            if lease is None:
                return None  # the loader finished without storing (or failed)

    async def invalidate(self, origin: str, tags: list[str], keys: list[bytes]) -> tuple[int, int]:
        """Delete the entries (and leases) of ``tags`` and ``keys`` and tell every instance.
        Returns (entries deleted, instances that heard it). Raises on a Redis error: a purge
        that did not reach the others must not look like one that did."""
        kind = "t" if tags else "k"
        message = encode_message(origin, kind, tags, keys)
        hexes = [k.hex() for k in keys]
        try:
            got = await self._invalidate(
                keys=[self.gen_key, *(self.tag_prefix + t for t in tags)],
                args=[self.channel, message, self.entry_prefix, self.lease_prefix, *hexes],
            )
        except _ERRORS as exc:
            self._failed("invalidate", exc)
            raise
        self.circuit.succeeded()
        deleted, heard = got
        return int(deleted), int(heard)

    async def new_generation(self) -> int:
        """Stop every entry stored so far from being read (see the module's docstring)."""
        return int(await self.client.incr(self.gen_key))

    async def flush_all(self, origin: str) -> int:
        """Tell every instance to drop its whole L1 (entries in L2 stay; used by tests/ops)."""
        message = encode_message(origin, "*", [], [])
        heard = await self.client.publish(self.channel, message)
        return int(heard)


class Subscription:
    """Listens on the invalidation channel on a connection of its own, for ever.

    Pub/sub delivers at most once: a message published while this connection is down is lost.
    So every (re)subscription, confirmed by the server, calls ``on_subscribed`` (the cache
    flushes its L1), and ``connected`` is False from the moment a failure is seen until then;
    after a failure ``before_subscribe`` is awaited first (an error there is a failed attempt).
    Attempts follow each other 10 ms apart, doubling up to 0.1 s. A silent connection is
    probed with PING after ``idle`` seconds; no answer within ``idle`` more seconds counts as
    a failure. ``name`` is its CLIENT SETNAME (operators see which process a subscription
    belongs to).
    """

    def __init__(
        self,
        redis_url: str,
        channel: str,
        *,
        on_message: Callable[[bytes], None],
        on_subscribed: Callable[[], None],
        on_lost: Callable[[], None],
        connect_timeout: float,
        name: str,
        idle: float = 5.0,
        before_subscribe: Callable[[], Awaitable[Any]] | None = None,
        tls: dict[str, Any] | None = None,
        locate: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self.channel = channel
        self.connected = False
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self._before = before_subscribe
        self._lost = False
        """A subscription was lost since the last one was confirmed."""
        self._idle = idle
        self._task: asyncio.Task[None] | None = None
        self._locate = locate
        self._options: dict[str, Any] = {
            "client_name": name,
            "socket_connect_timeout": connect_timeout,
            "socket_keepalive": True,
            # NOTE: no automatic retries: a dropped connection must surface here, so that the
            # flush happens (redis-py would otherwise reconnect and resubscribe quietly).
            "retry": Retry(NoBackoff(), 0),
            **(tls or {}),
        }
        self._url = redis_url
        # NOTE: with ``locate``, ``redis_url`` may list several nodes: the client is made for
        # the node found at each attempt instead.
        self._client: aioredis.Redis | None = (
            None if locate is not None else aioredis.Redis.from_url(redis_url, **self._options)
        )

    async def _connect_to(self) -> None:
        """On a Redis Cluster, subscribe on the master of the slot the invalidation script
        runs on (``locate``), found again at every attempt (a failover moves it): PUBLISH
        reaches every node of a cluster, but counts the subscribers of its own node only."""
        if self._locate is None:
            return
        url = await self._locate()
        if url != self._url or self._client is None:
            if self._client is not None:
                await self._client.aclose()
            self._url = url
            self._client = aioredis.Redis.from_url(url, **self._options)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        pause = Backoff(0.01, 0.1)
        while True:
            pubsub = None
            try:
                await self._connect_to()
                assert self._client is not None
                pubsub = self._client.pubsub()
                if self._lost and self._before is not None:
                    await self._before()
                await pubsub.subscribe(self.channel)
                pause.reset()
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: count it, drop the connection, reconnect
                if self.connected:
                    log.warning("cache invalidation subscription lost: %r", exc)
            finally:
                if self.connected:
                    self.connected = False
                    self._lost = True
                    self._on_lost()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        # redis-py types aclose() from 8.x on; older releases in our range
                        # do not.
                        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await pause.sleep()

    async def _listen(self, pubsub: Any) -> None:
        last = time.monotonic()
        pinged = 0.0
        while True:
            message = await pubsub.get_message(timeout=min(1.0, self._idle))
            now = time.monotonic()
            if message is None:
                if pinged and now - pinged > self._idle:
                    raise ConnectionError("no answer to PING on the subscription")
                if not pinged and now - last > self._idle:
                    await pubsub.ping()
                    pinged = now
                continue
            last, pinged = now, 0.0
            kind = message.get("type")
            if kind == "message":
                self._on_message(message["data"])
            elif kind == "subscribe":
                self.connected = True
                self._lost = False
                self._on_subscribed()
