"""The response cache: the edge's cache step, over L1 (in process) and L2 (Redis).

The edge calls it after the stages (so the token check and rate limits apply to hits too):

1. :meth:`ResponseCache.lookup` (sync, PERF: no coroutine): the compiled key of the request and
   an L1 look-up. A fresh hit returns the ready-to-send messages (or a 304); an entry within
   ``stale_while_revalidate`` is returned as ``X-Cache: stale`` and one background request
   refreshes it.
2. On a miss, :meth:`ResponseCache.load`: concurrent misses for a key wait for one loader in
   this process (single-flight); the loader's one Redis round trip (a script shared by the
   misses of the loop turn) returns the L2 entry, or else takes the key's lease so that one
   instance loads while it is held (the others poll L2 briefly, then load). It returns a
   :class:`CacheMiss`, whose ``send`` the edge dispatches through: it captures the response,
   stores it when cacheable (L1 now, L2 after the client has its answer, batched) and hands it
   to the waiting requests.

Invalidation (:meth:`ResponseCache.invalidate_tags`, :meth:`~ResponseCache.invalidate_keys`)
is immediate in this process and goes to every instance over Redis pub/sub. Details, each
guarantee, the settings and measured figures: ``docs/caching.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

from cygate.core.ratelimit import GCRALimiter
from cygate.edge.asgi import Message
from cygate.edge.cache_entry import HIT_L1, HIT_L2, STALE, Entry, decode_entry, encode_entry
from cygate.edge.cache_l2 import L2, Subscription, decode_message
from cygate.edge.cache_miss import BYPASS, RETRY, CacheMiss, Flight, Pending
from cygate.edge.cache_rules import DEFAULT_RULES, CacheRoute, check_inputs, load_secret
from cygate.edge.l1 import L1
from cygate.edge.problem import Problem
from cygate.edge.validators import Validators
from cygate.infra.redis import tls_options
from cygate.infra.settings import RedisSettings

if TYPE_CHECKING:
    from cygate.edge.context import EdgeContext, Principal
    from cygate.edge.settings import CacheRule, CacheSettings
    from cygate.infra.metrics import Metrics
    from cygate.infra.redis import RedisHandle

__all__ = [
    "DEFAULT_RULES",
    "CacheMiss",
    "CacheUnavailable",
    "ResponseCache",
    "caller_key",
    "check_inputs",
    "load_secret",
]

log = logging.getLogger("cygate.cache")


_MISSED_MAX = 10_000
"""Missed invalidations kept one by one; past that many, L2's generation and every L1 go."""
_PENDING = "cygate.cache"
_REFRESH = "cygate.cache.refresh"


class CacheUnavailable(Exception):
    """An invalidation could not reach the other instances (Redis is down)."""


def caller_key(principal: Principal) -> str:
    """What a private entry's key holds of its caller: issuer and subject.

    NOTE: a subject is unique only within its issuer (OIDC): two providers may both have a
    "12345". The issuer's length goes first, so no pair of strings can pass for another."""
    issuer = principal.issuer
    return f"{len(issuer)}:{issuer}{principal.sub}"


def _directives(value: bytes) -> tuple[bool, bool]:
    """(no-cache, no-store) of a request's ``Cache-Control`` (or ``Pragma``), RFC 9111 5.2.1.

    Strict: a directive counts only well formed (``no-cache`` and ``no-store`` without an
    argument, ``max-age`` of zero as delta-seconds); anything else (``no-cache="x"``,
    ``max-age=-1``, a huge or quoted number, garbage) is ignored, never an error."""
    no_cache = no_store = False
    for part in value.split(b","):
        name, eq, arg = part.partition(b"=")
        name = name.strip().lower()
        if name == b"no-store":
            no_store = no_store or not eq
        elif name == b"no-cache":
            no_cache = no_cache or not eq
        elif name == b"max-age" and eq:
            arg = arg.strip()
            # NOTE: no int(): a 5,000-digit value would raise (Python's conversion limit).
            no_cache = no_cache or (arg.isdigit() and not arg.strip(b"0"))
    return no_cache or no_store, no_store


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


class ResponseCache:
    """The edge's response cache for one worker process."""

    def __init__(
        self,
        settings: CacheSettings,
        metrics: Metrics,
        *,
        redis: RedisSettings | None = None,
        secret: bytes | None = None,
        rules: Mapping[str, CacheRule] | None = None,
    ) -> None:
        self.settings = settings
        self.redis_settings = redis if redis is not None else RedisSettings()
        """Where the invalidation subscription connects."""
        self.metrics = metrics
        self.max_entry_bytes = settings.max_entry_bytes
        """A response larger than this is streamed, not stored."""
        # PERF: counters bound once; a hit bumps ``.value`` (no call, no lookup).
        requests = "cygate_cache_requests_total"
        self.n_hit_l1 = metrics.counter(requests, result="hit-l1")
        """NOTE: the compiled hit path adds its hits to this counter itself: never rebind it."""
        self.n_hit_l2 = metrics.counter(requests, result="hit-l2")
        self.n_miss = metrics.counter(requests, result="miss")
        self.n_stale = metrics.counter(requests, result="stale")
        self.n_coalesced = metrics.counter(requests, result="coalesced")
        self.n_bypass = metrics.counter(requests, result="bypass")
        self.n_not_modified = metrics.counter("cygate_cache_not_modified_total")
        self.n_loads = metrics.counter("cygate_cache_loads_total")
        self.n_lease_waits = metrics.counter("cygate_cache_lease_waits_total")
        self.n_stored = metrics.counter("cygate_cache_stores_total")
        self.n_invalidations = metrics.counter("cygate_cache_invalidations_total")
        self.n_flushes = metrics.counter("cygate_cache_l1_flushes_total")
        self.n_subscriptions = metrics.counter("cygate_cache_subscriptions_total")
        self.rules: dict[str, CacheRule] = {**DEFAULT_RULES, **(rules or settings.rules)}
        self.secret = secret if secret is not None else load_secret(settings)
        self.validators = Validators(self.rules)
        """ETag and 304 for the answers of cacheable routes that are not stored."""
        self.l1 = L1(settings.l1_max_bytes)
        self.l2: L2 | None = None
        self.subscription: Subscription | None = None
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        """Names this process in invalidation messages (it skips its own)."""
        self.epoch = 0
        """Bumped by every invalidation seen here: a fill that began in an older epoch may hold
        data from before it, so it is not put into L1."""
        self.edge: Any = None
        """The ASGI edge, set by the app: background refreshes go through it as requests."""
        self._routes: dict[str, CacheRoute] = {}
        self._watchers: list[Callable[[], None]] = []
        self._flights: dict[bytes, Flight] = {}
        self._refreshing: set[bytes] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lease_ms = int(settings.lease_ttl * 1000)
        self._reloads: GCRALimiter | None = None
        """Reloads each caller forces with a request's Cache-Control (rules that honour it);
        made at the first such request."""
        self.l1_hits = 0
        """PERF: fresh L1 hits counted here and moved into the metrics by :meth:`sync_metrics`
        (each second, and on a scrape): a plain integer add on the hottest path. (The compiled
        hit path adds its hits to ``n_hit_l1`` itself, in C.)"""
        self._counted_hits = 0
        self._sync_task: asyncio.Task[None] | None = None
        self._missed_tags: set[str] = set()
        self._missed_keys: set[bytes] = set()
        """Invalidations Redis did not take: sent again by :meth:`_resend` until it does."""
        self._missed_all = False
        """More were missed than are kept one by one: :meth:`_resend` drops everything."""
        self._resending: asyncio.Task[None] | None = None

    # -- set-up ------------------------------------------------------------------------------

    def add_route(self, route_name: str, rule_name: str, handler: Any = None) -> bool:
        """Cache the route ``route_name`` (``GET /path``) under the named rule; False when the
        rule is switched off (ttl 0) or caching is. Raises ValueError for an unknown rule, a
        method other than GET, a tag naming no path parameter, or (given the Litestar
        ``handler``) a request input the handler reads that the key does not vary on."""
        rule = self.rules.get(rule_name)
        if rule is None:
            raise ValueError(f"route {route_name} names an unknown cache rule {rule_name!r}")
        if not route_name.startswith("GET "):
            raise ValueError(f"route {route_name}: only GET routes can be cached")
        if handler is not None:
            check_inputs(route_name, rule, handler)
        if not self.settings.enabled or rule.ttl <= 0:
            return False
        self._routes[route_name] = CacheRoute(route_name, rule, self.secret)
        for watcher in tuple(self._watchers):
            watcher()
        return True

    def route_table(self) -> dict[str, CacheRoute]:
        """The cached routes with their compiled rules (key spec, privacy), as they are now:
        a copy, for a reader that keeps it until :meth:`watch` says the routes changed."""
        return dict(self._routes)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every route :meth:`add_route` caches (once, however often
        it is given): what keeps a :meth:`route_table` (the fused hit path) is rebuilt then."""
        if callback not in self._watchers:
            self._watchers.append(callback)

    @property
    def routes(self) -> dict[str, CacheRule]:
        """The cached routes and their rules."""
        return {name: r.rule for name, r in self._routes.items()}

    def attach(self, redis: RedisHandle) -> None:
        """Share entries through ``redis`` (L2, leases, invalidation), unless ``cache_l2`` is
        off. Called in each worker once its Redis client exists."""
        settings = self.settings
        if not settings.l2:
            return
        server = self.redis_settings
        self.l2 = L2(redis, self.metrics, settings.l2_retry_after, server.timeout)
        max_age = settings.unsubscribed_max_age
        self.subscription = Subscription(
            server.url,
            self.l2.channel,
            on_message=self._on_message,
            on_subscribed=self._on_subscribed,
            on_lost=self._on_lost,
            connect_timeout=server.timeout,
            name=f"cygate-cache-sub:{self.origin}",
            # A silent Redis is noticed within 2 * idle: about the bound itself.
            idle=min(5.0, max(0.5, max_age / 2)),
            before_subscribe=self.l2.new_generation,
            tls=tls_options(server),
            locate=partial(redis.node_url, self.l2.gen_key) if redis.cluster else None,
        )

    def start(self) -> None:
        """Start listening for invalidations (call inside the worker's event loop)."""
        if self.subscription is not None:
            self.subscription.start()
        if self._sync_task is None:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sync_metrics()

    def sync_metrics(self) -> None:
        """Move the hit count into the metrics."""
        new = self.l1_hits - self._counted_hits
        if new:
            self._counted_hits = self.l1_hits
            self.n_hit_l1.value += new

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
            self._sync_task = None
        self.sync_metrics()
        if self._resending is not None:
            self._resending.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.l2 is not None:
            await self.l2.drain()
        if self.subscription is not None:
            await self.subscription.stop()

    # -- the edge's step ---------------------------------------------------------------------

    def lookup(self, ctx: EdgeContext) -> tuple[Message, Message] | None:
        """Key the request and look in L1. Returns the messages of a hit (or 304), or None:
        then call :meth:`load`. Raises the remembered Problem for a cached 404."""
        route = self._routes.get(ctx.policy.name)
        if route is None:
            return None
        principal = None
        if route.private:
            caller = ctx.principal
            if caller is None:
                self.n_bypass.value += 1  # NOTE: anonymous callers of a private rule
                return None
            principal = caller_key(caller)
        spec = route.spec
        key = spec.key("GET", ctx.path, ctx.query, ctx.headers, principal)
        if spec.cache_control is None and spec.if_none_match is None and _REFRESH not in ctx.scope:
            # PERF: the common case, a fresh hit on a plain GET: one look-up, one call.
            now = _monotonic()
            entry: Entry | None = self.l1.get(key, now)
            if entry is not None and now < entry.fresh_until and entry.detail is None:
                self.l1_hits += 1
                return entry.hit(now)
        return self._lookup(ctx, route, key)

    def _lookup(
        self, ctx: EdgeContext, route: CacheRoute, key: bytes
    ) -> tuple[Message, Message] | None:
        spec = route.spec
        inm = spec.if_none_match
        no_cache = refresh = False
        if spec.cache_control is not None and route.honours_no_cache:
            no_cache, no_store = _directives(spec.cache_control)
            if no_cache and not self._may_reload(ctx):
                no_cache = no_store = False  # past this caller's forced reloads: ignored
            if no_store:
                self.n_bypass.value += 1
                return None
        scope = ctx.scope
        if _REFRESH in scope:
            refresh = True  # a background refresh: skip L1 (stale, we know), still read L2
        stale = current = None
        if no_cache:
            # A forced reload revalidates the entry held: same body (ETag), no L2 write.
            current = self.l1.get(key, _monotonic())
        elif not refresh:
            now = _monotonic()
            entry: Entry | None = self.l1.get(key, now)
            if entry is not None:
                if now < entry.fresh_until:
                    self.n_hit_l1.value += 1
                    return self.answer(entry, HIT_L1, inm, now)
                if now < entry.swr_until:
                    self.n_stale.value += 1
                    self._refresh(ctx, key)
                    return self.answer(entry, STALE, inm, now)
                if now < entry.error_until and entry.detail is None:
                    stale = entry  # stale-if-error: the fallback if the load fails
        caller = ctx.principal.sub if route.private and ctx.principal is not None else ""
        tags = route.tags(ctx.params, caller)
        scope[_PENDING] = Pending(route, key, inm, no_cache, stale, tags, current)
        return None

    def _may_reload(self, ctx: EdgeContext) -> bool:
        """A forced reload within its caller's limit (the token's caller, else the client
        address: ``cache_forced_reloads_per_minute``)."""
        limiter = self._reloads
        if limiter is None:
            per_minute = self.settings.forced_reloads_per_minute
            burst = max(1, per_minute // 10)
            limiter = self._reloads = GCRALimiter(60 * 10**9 // per_minute, burst, 65536)
        principal = ctx.principal
        caller = caller_key(principal) if principal is not None else "ip:" + ctx.client_ip
        return bool(limiter.hit(caller))

    async def load(self, ctx: EdgeContext, send: Any) -> CacheMiss | None:
        """After a look-up that missed: answer from another load or from L2 (returns None), or
        return the :class:`CacheMiss` whose ``send`` the edge must dispatch through."""
        pending: Pending | None = ctx.scope.pop(_PENDING, None)
        if pending is None:
            # Not stored (a rule switched off, a request's no-store, an anonymous caller of a
            # private rule): passed through, still with its validators.
            return CacheMiss(self, None, None, self.validators.wrap(ctx, send))
        key = pending.key
        for _ in range(3):
            flight = self._flights.get(key)
            if flight is None:
                break
            outcome = await asyncio.shield(flight.future)
            if outcome is RETRY:
                continue
            if outcome is BYPASS:
                return CacheMiss(self, None, None, send)
            self.n_coalesced.value += 1
            await self._deliver(outcome, pending, send)
            return None
        if key in self._flights:
            return CacheMiss(self, None, None, send)  # loaders keep vanishing: load, uncached
        flight = Flight()
        self._flights[key] = flight
        try:
            token = await self._fill_from_l2(pending, flight, send)
        except BaseException:
            self.land(key, flight, RETRY)
            raise
        if token is True:
            return None  # answered from L2
        self.n_loads.value += 1
        return CacheMiss(self, pending, flight, send, token if isinstance(token, str) else None)

    async def _fill_from_l2(self, pending: Pending, flight: Flight, send: Any) -> str | bool:
        """L2 read and lease. True: answered from L2; a str: the lease token; False: load
        without storing in L2 (Redis down, not subscribed, or another loader held the lease
        too long)."""
        l2 = self.l2
        if l2 is None or not l2.up or self._max_age() is not None:
            # NOTE: not subscribed, L2 is not read: it may hold entries an invalidation that
            # failed meanwhile did not delete (until the generation moves on resubscribing).
            return False
        key = pending.key
        rule = pending.route.rule
        tag_ms = int((rule.ttl + max(rule.stale_while_revalidate, rule.stale_if_error)) * 1000)
        tag_ms += self._lease_ms
        # PERF: one round trip: the entry, else the lease (shared with this loop turn's misses).
        epoch = self.epoch
        got = await l2.lookup(key, pending.tags, not pending.no_cache, self._lease_ms, tag_ms)
        if got is None:
            return False  # Redis failed: load without L2
        if isinstance(got, str):
            return got  # leased: this instance loads
        if isinstance(got, bytes):
            if await self._answer_l2(got, pending, flight, send, epoch):
                return True
            # Too old to serve (or unreadable): load, under the lease (a second trip, rare).
            token = await l2.acquire(key, pending.tags, self._lease_ms, tag_ms)
            if token is not False:
                return token or False
        # Another instance is loading this key: wait for its entry, briefly.
        self.n_lease_waits.value += 1
        epoch = self.epoch
        data = await l2.wait_for(key, self.settings.lease_wait)
        if data is not None and await self._answer_l2(data, pending, flight, send, epoch):
            return True
        token = await l2.acquire(key, pending.tags, self._lease_ms, tag_ms)
        return token or False

    async def _answer_l2(
        self, data: bytes, pending: Pending, flight: Flight, send: Any, epoch: int
    ) -> bool:
        entry = decode_entry(data, pending.route.extra)
        if entry is None:
            return False
        now, wall = time.monotonic(), time.time()
        entry.place(now, wall, self._max_age())
        if now >= entry.fresh_until:
            if now < entry.error_until and entry.detail is None:
                pending.stale = entry
            return False  # too old to serve as a hit: load (with it as the error fallback)
        if epoch == self.epoch:
            self.l1.put(pending.key, entry, entry.size, entry.until, now, entry.tags)
        self.n_hit_l2.value += 1
        self.land(pending.key, flight, (entry, HIT_L2))
        await self._deliver((entry, HIT_L2), pending, send)
        return True

    def answer(
        self, entry: Entry, label: bytes, inm: bytes | None, now: float
    ) -> tuple[Message, Message]:
        """The messages that answer with ``entry`` labelled ``label`` (``X-Cache``): a 304 when
        ``inm`` matches it; a remembered 404 is raised as its Problem."""
        if entry.detail is not None:
            raise Problem(entry.status, entry.detail, headers={"x-cache": label.decode()})
        if inm is not None and entry.matches(inm):
            self.n_not_modified.value += 1
            return entry.not_modified(label, now)
        return entry.messages(label, now)

    async def _deliver(self, outcome: Any, pending: Pending, send: Any) -> None:
        """Send another load's outcome (an entry with its label, or a Problem) as our answer."""
        if isinstance(outcome, Problem):
            raise Problem(
                outcome.status, outcome.detail, headers=dict(outcome.headers), extra=outcome.extra
            )
        entry, label = outcome
        start, body = self.answer(entry, label, pending.inm, time.monotonic())
        await send(start)
        await send(body)

    def land(self, key: bytes, flight: Flight | None, outcome: Any) -> None:
        """Finish a flight: waiters get ``outcome``; the next miss starts a new one."""
        if flight is None:
            return
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.resolve(outcome)

    def _max_age(self) -> float | None:
        """While invalidations cannot arrive: the age past which an entry is not served
        (``cache_unsubscribed_max_age``; the entries of L1 are capped when the subscription is
        lost, new ones when placed). None while subscribed, or without L2 (one instance)."""
        sub = self.subscription
        if sub is not None and not sub.connected:
            return self.settings.unsubscribed_max_age
        return None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refresh(self, ctx: EdgeContext, key: bytes) -> None:
        """Stale-while-revalidate: refresh ``key`` with a background request through the edge
        (same path, query, headers and caller; its own stages and metrics)."""
        if self.edge is None or key in self._flights or key in self._refreshing:
            return
        self._refreshing.add(key)
        scope = {k: v for k, v in ctx.scope.items() if not k.startswith("cygate.")}
        scope["method"] = "GET"
        scope["headers"] = [
            (n, v) for n, v in ctx.headers if n not in (b"if-none-match", b"cache-control")
        ]
        scope[_REFRESH] = True
        self._spawn(self._run_refresh(scope, key))

    async def _run_refresh(self, scope: dict[str, Any], key: bytes) -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def discard(message: Message) -> None:
            return None

        try:
            await self.edge(scope, receive, discard)
        except Exception:  # the edge answers errors itself; anything left is only logged
            log.exception("background cache refresh failed")
        finally:
            self._refreshing.discard(key)

    # -- storing -----------------------------------------------------------------------------

    def store_local(self, key: bytes, entry: Entry, epoch: int) -> bool:
        """Put a freshly loaded entry into L1 unless an invalidation happened meanwhile."""
        if epoch != self.epoch:
            return False
        now = time.monotonic()
        entry.place(now, entry.stored_at, self._max_age())
        return self.l1.put(key, entry, entry.size, entry.until, now, entry.tags)

    def store_shared(self, key: bytes, entry: Entry, token: str | None) -> None:
        """Write ``entry`` to L2 under the lease, off the request's path (batched, see
        :meth:`L2.store_later`; encoded when sent)."""
        l2 = self.l2
        if l2 is None or token is None:
            return
        l2.store_later(key, token, lambda: (encode_entry(entry), entry.lifetime_ms(time.time())))

    def release_lease(self, key: bytes, token: str | None) -> None:
        """Give the key's L2 lease back (in the background) when nothing is stored under it."""
        if token is not None and self.l2 is not None:
            self._spawn(self.l2.release(key, token))

    # -- invalidation ------------------------------------------------------------------------

    def key_for(
        self,
        route_name: str,
        path: str,
        query: bytes = b"",
        headers: Iterable[tuple[bytes, bytes]] = (),
        principal: str | None = None,
    ) -> bytes:
        """The key a request would have (for :meth:`invalidate_keys`); for a private rule,
        ``principal`` is :func:`caller_key` of the caller (as :meth:`lookup` keys it).
        Per-caller entries are easier to drop by tag (``user:{caller}``)."""
        route = self._routes[route_name]
        return route.spec.key("GET", path, query, list(headers), principal)

    async def invalidate_tags(self, tags: Iterable[str]) -> tuple[int, int]:
        """Drop every entry carrying one of ``tags``, here at once and on every instance.

        Returns (L2 entries deleted, other instances that heard it). Raises
        :class:`CacheUnavailable` when Redis could not be told: this process is purged anyway,
        the invalidation is sent again until Redis takes it, and meanwhile the others serve
        their entries at most ``cache_unsubscribed_max_age`` old once they notice the outage
        (docs/caching.md, "Staleness")."""
        tags = sorted(set(tags))
        self._apply_tags(tags)
        return await self._broadcast(tags, [])

    async def invalidate_keys(self, keys: Iterable[bytes]) -> tuple[int, int]:
        """Drop the entries under ``keys`` (see :meth:`key_for`) everywhere."""
        keys = list(dict.fromkeys(keys))
        self._apply_keys(keys)
        return await self._broadcast([], keys)

    async def _broadcast(self, tags: list[str], keys: list[bytes]) -> tuple[int, int]:
        if self.l2 is None or (not tags and not keys):
            return 0, 0
        try:
            deleted, heard = await self.l2.invalidate(self.origin, tags, keys)
        except Exception as exc:
            self._missed_tags.update(tags)
            self._missed_keys.update(keys)
            if len(self._missed_tags) + len(self._missed_keys) > _MISSED_MAX:
                self._missed_all = True
                self._missed_tags.clear()
                self._missed_keys.clear()
            if self._resending is None:
                self._resending = asyncio.get_running_loop().create_task(self._resend())
            raise CacheUnavailable(f"Redis did not take the invalidation: {exc!r}") from None
        own = 1 if self.subscription is not None and self.subscription.connected else 0
        return deleted, max(0, heard - own)

    async def _resend(self) -> None:
        """Send the invalidations Redis did not take, once it takes them (L2's entries, and
        instances whose subscription outlived the failure). Past ``_MISSED_MAX`` of them: a
        new generation of L2 and a flush of every L1 instead."""
        l2 = self.l2
        assert l2 is not None
        try:
            while self._missed_tags or self._missed_keys or self._missed_all:
                await asyncio.sleep(l2.retry_after)
                tags, keys = sorted(self._missed_tags), list(self._missed_keys)
                everything = self._missed_all
                try:
                    if everything:
                        await l2.new_generation()
                        await l2.flush_all(self.origin)
                    if tags:
                        await l2.invalidate(self.origin, tags, [])
                    if keys:
                        await l2.invalidate(self.origin, [], keys)
                except Exception as exc:  # still down: try again later
                    log.debug("missed cache invalidations not sent yet: %r", exc)
                    continue
                if everything:
                    self._missed_all = False
                self._missed_tags.difference_update(tags)
                self._missed_keys.difference_update(keys)
                log.info("sent %d missed cache invalidations", len(tags) + len(keys))
        finally:
            self._resending = None

    def _apply_tags(self, tags: Iterable[str]) -> None:
        self.epoch += 1
        for tag in tags:
            self.l1.invalidate_tag(tag)
            self.n_invalidations.value += 1

    def _apply_keys(self, keys: Iterable[bytes]) -> None:
        self.epoch += 1
        for key in keys:
            self.l1.discard(key)
            self.n_invalidations.value += 1

    def flush(self) -> int:
        """Drop this process's whole L1."""
        self.epoch += 1
        self.n_flushes.value += 1
        return self.l1.clear()

    def _on_message(self, data: bytes) -> None:
        message = decode_message(data)
        if message is None:
            log.warning("unreadable cache invalidation message ignored")
            return
        if message.origin == self.origin:
            return  # applied before it was sent
        if message.kind == "*":
            self.flush()
        elif message.kind == "t":
            self._apply_tags(message.tags)
        else:
            self._apply_keys(message.keys)

    def _on_subscribed(self) -> None:
        # NOTE: pub/sub delivers at most once; whatever was published while we were not
        # subscribed is lost, so nothing in L1 can be trusted any more.
        self.n_subscriptions.value += 1
        self.flush()

    def _on_lost(self) -> None:
        # Invalidations cannot arrive from now on: what L1 holds is served only until it is
        # cache_unsubscribed_max_age old (new fills are capped as they are placed), and a
        # load that began before now does not enter L1 (the epoch).
        self.epoch += 1
        max_age = self.settings.unsubscribed_max_age
        for entry in self.l1.values():
            entry.cap(max_age)

    def gauges(self) -> dict[str, float]:
        """Per-worker gauges for /metrics (and the hit count brought up to date)."""
        self.sync_metrics()
        sub = self.subscription
        return {
            "cygate_cache_l1_bytes": self.l1.size,
            "cygate_cache_l1_entries": len(self.l1),
            "cygate_cache_l1_evictions": self.l1.evictions,
            "cygate_cache_subscribed": 1 if sub is not None and sub.connected else 0,
        }
