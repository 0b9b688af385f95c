"""The response cache: the edge's cache step, over L1 (in process) and L2 (Redis).

The edge calls it after the stages (so the token check and rate limits apply to hits too):

1. :meth:`ResponseCache.lookup` (sync, PERF: no coroutine): the compiled key of the request and
   an L1 look-up. A fresh hit returns the ready-to-send messages (or a 304); an entry within
   ``stale_while_revalidate`` is returned as ``X-Cache: stale`` and one background request
   refreshes it.
2. On a miss, :meth:`ResponseCache.load`: concurrent misses for a key wait for one loader in
   this process (single-flight); the loader reads L2, and on an L2 miss takes the key's Redis
   lease so that one instance loads while it is held (the others poll L2 briefly, then load).
   It returns a :class:`CacheMiss`, whose ``send`` the edge dispatches through: it captures the
   response, stores it when cacheable (L1 now, L2 after the client has its answer) and hands it
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
import pathlib
import secrets
import socket
import string
import time
from collections.abc import Iterable, Mapping, MutableMapping
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from cygate.core.cachekey import CacheKey
from cygate.edge.cache_entry import (
    HIT_L1,
    HIT_L2,
    MISS,
    STALE,
    Entry,
    cache_control_of,
    decode_entry,
    encode_entry,
    storable_headers,
)
from cygate.edge.cache_l2 import L2, Subscription, decode_message
from cygate.edge.l1 import L1
from cygate.edge.problem import Problem
from cygate.settings import CacheRule

if TYPE_CHECKING:
    from cygate.edge.context import EdgeContext
    from cygate.infra.metrics import Metrics
    from cygate.infra.redis import RedisHandle
    from cygate.settings import Settings

__all__ = [
    "DEFAULT_RULES",
    "CacheMiss",
    "CacheUnavailable",
    "ResponseCache",
    "load_secret",
]

log = logging.getLogger("cygate.cache")

Message = MutableMapping[str, Any]

DEFAULT_RULES: dict[str, CacheRule] = {
    # The seed's gateway tier: 5 minutes, invalidated by the catalog's writes (by tag).
    "product": CacheRule(ttl=300, max_age=60, tags=["product:{product_id}"]),
    "product-list": CacheRule(
        ttl=300,
        max_age=60,
        query=["category", "min_price_cents", "max_price_cents", "sort", "limit", "cursor"],
        tags=["products"],
    ),
    "categories": CacheRule(ttl=300, max_age=60, tags=["categories"]),
}
"""Built-in rules; ``cache_rules`` in the settings adds rules or replaces these by name."""

_REQUESTS = 'cygate_cache_requests_total{result="%s"}'
_C_HIT_L1 = _REQUESTS % "hit-l1"
_C_HIT_L2 = _REQUESTS % "hit-l2"
_C_STALE = _REQUESTS % "stale"
_C_MISS = _REQUESTS % "miss"
_C_COALESCED = _REQUESTS % "coalesced"
_C_BYPASS = _REQUESTS % "bypass"
_C_NOT_MODIFIED = "cygate_cache_not_modified_total"
_C_LOADS = "cygate_cache_loads_total"
_C_LEASE_WAITS = "cygate_cache_lease_waits_total"
_C_STORED = "cygate_cache_stores_total"
_C_INVALIDATIONS = "cygate_cache_invalidations_total"
_C_FLUSHES = "cygate_cache_l1_flushes_total"

_PENDING = "cygate.cache"
_REFRESH = "cygate.cache.refresh"
_RETRY = object()  # flight outcome: the loader vanished (cancelled); waiters try again
_BYPASS = object()  # flight outcome: the answer was not cacheable; waiters load for themselves
_UUID_HEX = frozenset("0123456789abcdefABCDEF-")


class CacheUnavailable(Exception):
    """An invalidation could not reach the other instances (Redis is down)."""


def load_secret(settings: Settings) -> bytes:
    """The cache-key secret: the setting, else (development, test) the key file, created with
    a random secret at first start. Every worker and instance that shares L2 must use the
    same secret, so it is never generated per process."""
    if settings.cache_key_secret:
        return settings.cache_key_secret.encode("utf-8")
    path = pathlib.Path(settings.cache_key_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(secrets.token_urlsafe(32) + "\n")
        tmp.chmod(0o600)
        # NOTE: link() fails if another worker won the race; then its secret is the one.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"the cache key file {path} is empty")
    return secret.encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


class _Route:
    """One cached route: its rule, its key function, its tag templates, its headers."""

    __slots__ = ("extra", "name", "private", "rule", "spec", "tag_templates", "types")

    def __init__(self, name: str, rule: CacheRule, secret: bytes) -> None:
        self.name = name
        self.rule = rule
        self.private = rule.scope == "private"
        self.spec = CacheKey(
            secret, name, query=rule.query, headers=rule.headers, private=self.private
        )
        self.types = _param_types(name)
        extra = [(b"cache-control", cache_control_of(rule))]
        if rule.headers:
            extra.append((b"vary", ", ".join(sorted({h.lower() for h in rule.headers})).encode()))
        self.extra = tuple(extra)
        for template in rule.tags:
            for _, field, _, _ in string.Formatter().parse(template):
                if field is not None and field not in self.types:
                    raise ValueError(
                        f"cache rule tag {template!r} on {name}: no path parameter {field!r}"
                    )
        self.tag_templates = tuple(rule.tags)

    def tags(self, params: Mapping[str, str] | None) -> tuple[str, ...]:
        """The tags of one request: templates filled from its path parameters, normalised so
        that one resource has one tag however its id was spelled (uuid case, int zeros)."""
        if not self.tag_templates:
            return ()
        values: dict[str, str] = {}
        for name, kind in self.types.items():
            raw = (params or {}).get(name, "")
            if kind == "uuid" and set(raw) <= _UUID_HEX:
                raw = raw.lower()
            elif kind == "int":
                with contextlib.suppress(ValueError):
                    raw = str(int(raw))
            values[name] = raw
        return tuple(t.format_map(values) for t in self.tag_templates)


# Handler parameters that are not request input, and ones that expose all of it.
_NOT_INPUT = frozenset({"state"})
_RAW_INPUT = frozenset(
    {"request", "scope", "headers", "cookies", "query", "socket", "body", "data"}
)


def check_inputs(route_name: str, rule: CacheRule, handler: Any) -> None:
    """Refuse a rule whose key leaves out a request input the Litestar handler reads.

    NOTE: this is what makes the allow-lists safe: a query parameter or header the handler
    declares but the rule does not list would let one request's answer be served for
    another's. Dependencies are not inspected (no cached handler has any)."""
    path_params = set(_param_types(route_name))
    queries, headers = set(rule.query), {h.lower() for h in rule.headers}
    for name, param in handler.parsed_fn_signature.parameters.items():
        if name in _NOT_INPUT or name in path_params:
            continue
        if name in _RAW_INPUT:
            raise ValueError(f"{route_name} reads the raw request ({name!r}); it cannot be cached")
        kwarg = getattr(param, "kwarg_definition", None)
        # Parameter(header="x") and HeaderParameter(name="x") both say where and what.
        kind = getattr(getattr(kwarg, "param_type", None), "value", None) or "query"
        alias = (getattr(kwarg, kind, None) or getattr(kwarg, "name", None) or name).lower()
        if kind == "cookie":
            raise ValueError(f"{route_name} reads a cookie ({alias!r}); it cannot be cached")
        if kind == "header" and alias not in headers:
            raise ValueError(f"cache rule for {route_name} must vary on header {alias!r}")
        if kind == "query" and alias not in {q.lower() for q in queries}:
            raise ValueError(f"cache rule for {route_name} must list query parameter {alias!r}")


def _param_types(route_name: str) -> dict[str, str]:
    """``{product_id: "uuid"}`` from ``GET /api/v1/products/{product_id:uuid}``."""
    out = {}
    for segment in route_name.split(" ", 1)[-1].split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            name, _, kind = segment[1:-1].partition(":")
            out[name] = kind or "str"
    return out


class _Pending:
    """What the look-up learned about a request that missed, for :meth:`ResponseCache.load`."""

    __slots__ = ("inm", "key", "no_cache", "route", "stale", "tags")

    def __init__(
        self,
        route: _Route,
        key: bytes,
        inm: bytes | None,
        no_cache: bool,
        stale: Entry | None,
        tags: tuple[str, ...],
    ) -> None:
        self.route = route
        self.key = key
        self.inm = inm
        self.no_cache = no_cache
        self.stale = stale
        self.tags = tags


class _Flight:
    """One load in progress in this process; other requests for the key await ``future``."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def resolve(self, outcome: Any) -> None:
        if not self.future.done():
            self.future.set_result(outcome)


def _directives(value: bytes) -> tuple[bool, bool]:
    """(no-cache, no-store) of a request's Cache-Control (or Pragma)."""
    lowered = value.lower().replace(b" ", b"")
    no_store = b"no-store" in lowered
    no_cache = no_store or b"no-cache" in lowered or b"max-age=0" in lowered.split(b",")
    return no_cache, no_store


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


class ResponseCache:
    """The edge's response cache for one worker process."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        secret: bytes | None = None,
        rules: Mapping[str, CacheRule] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.rules: dict[str, CacheRule] = {**DEFAULT_RULES, **(rules or settings.cache_rules)}
        self.secret = secret if secret is not None else load_secret(settings)
        self.l1 = L1(settings.cache_l1_max_bytes)
        self.l2: L2 | None = None
        self.subscription: Subscription | None = None
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        """Names this process in invalidation messages (it skips its own)."""
        self.epoch = 0
        """Bumped by every invalidation seen here: a fill that began in an older epoch may hold
        data from before it, so it is not put into L1."""
        self.edge: Any = None
        """The ASGI edge, set by the app: background refreshes go through it as requests."""
        self._routes: dict[str, _Route] = {}
        self._flights: dict[bytes, _Flight] = {}
        self._refreshing: set[bytes] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lease_ms = int(settings.cache_lease_ttl * 1000)
        self.l1_hits = 0
        """PERF: fresh L1 hits counted here and moved into the metrics by :meth:`sync_metrics`
        (each second, and on a scrape): a plain integer add on the hottest path."""
        self._counted_hits = 0
        self._sync_task: asyncio.Task[None] | None = None

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
        if not self.settings.cache_enabled or rule.ttl <= 0:
            return False
        self._routes[route_name] = _Route(route_name, rule, self.secret)
        return True

    @property
    def routes(self) -> dict[str, CacheRule]:
        """The cached routes and their rules."""
        return {name: r.rule for name, r in self._routes.items()}

    def attach(self, redis: RedisHandle) -> None:
        """Share entries through ``redis`` (L2, leases, invalidation), unless ``cache_l2`` is
        off. Called in each worker once its Redis client exists."""
        settings = self.settings
        if not settings.cache_l2:
            return
        self.l2 = L2(redis, self.metrics, settings.cache_l2_retry_after)
        self.subscription = Subscription(
            settings.redis_url,
            self.l2.channel,
            on_message=self._on_message,
            on_subscribed=self._on_subscribed,
            on_lost=self._on_lost,
            connect_timeout=settings.redis_timeout,
            name=f"cygate-cache-sub:{self.origin}",
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
            self.metrics.inc(_C_HIT_L1, new)

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
            self._sync_task = None
        self.sync_metrics()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
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
            if ctx.principal is None:
                self.metrics.inc(_C_BYPASS)  # NOTE: anonymous callers of a private rule
                return None
            principal = ctx.principal.sub
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
        self, ctx: EdgeContext, route: _Route, key: bytes
    ) -> tuple[Message, Message] | None:
        spec = route.spec
        inm = spec.if_none_match
        no_cache = refresh = False
        if spec.cache_control is not None:
            no_cache, no_store = _directives(spec.cache_control)
            if no_store:
                self.metrics.inc(_C_BYPASS)
                return None
        scope = ctx.scope
        if _REFRESH in scope:
            refresh = True  # a background refresh: skip L1 (stale, we know), still read L2
        stale = None
        if not no_cache and not refresh:
            now = _monotonic()
            entry: Entry | None = self.l1.get(key, now)
            if entry is not None:
                if now < entry.fresh_until:
                    self.metrics.inc(_C_HIT_L1)
                    return self._answer(entry, HIT_L1, inm, now)
                if now < entry.swr_until:
                    self.metrics.inc(_C_STALE)
                    self._refresh(ctx, key)
                    return self._answer(entry, STALE, inm, now)
                if now < entry.error_until and entry.detail is None:
                    stale = entry  # stale-if-error: the fallback if the load fails
        scope[_PENDING] = _Pending(route, key, inm, no_cache, stale, route.tags(ctx.params))
        return None

    async def load(self, ctx: EdgeContext, send: Any) -> CacheMiss | None:
        """After a look-up that missed: answer from another load or from L2 (returns None), or
        return the :class:`CacheMiss` whose ``send`` the edge must dispatch through."""
        pending: _Pending | None = ctx.scope.pop(_PENDING, None)
        if pending is None:
            return CacheMiss(self, None, None, send)  # not cacheable: pass through
        key = pending.key
        for _ in range(3):
            flight = self._flights.get(key)
            if flight is None:
                break
            outcome = await asyncio.shield(flight.future)
            if outcome is _RETRY:
                continue
            if outcome is _BYPASS:
                return CacheMiss(self, None, None, send)
            self.metrics.inc(_C_COALESCED)
            await self._deliver(outcome, pending, send)
            return None
        if key in self._flights:
            return CacheMiss(self, None, None, send)  # loaders keep vanishing: load, uncached
        flight = _Flight()
        self._flights[key] = flight
        try:
            token = await self._fill_from_l2(pending, flight, send)
        except BaseException:
            self._land(key, flight, _RETRY)
            raise
        if token is True:
            return None  # answered from L2
        self.metrics.inc(_C_LOADS)
        return CacheMiss(self, pending, flight, send, token if isinstance(token, str) else None)

    async def _fill_from_l2(self, pending: _Pending, flight: _Flight, send: Any) -> str | bool:
        """L2 read and lease. True: answered from L2; a str: the lease token; False: load
        without storing in L2 (Redis down, or another loader held the lease too long)."""
        l2 = self.l2
        if l2 is None or not l2.up:
            return False
        key = pending.key
        rule = pending.route.rule
        if not pending.no_cache:
            epoch = self.epoch
            data = await l2.get(key)
            if data is not None and await self._answer_l2(data, pending, flight, send, epoch):
                return True
        tag_ms = int((rule.ttl + max(rule.stale_while_revalidate, rule.stale_if_error)) * 1000)
        tag_ms += self._lease_ms
        token = await l2.acquire(key, pending.tags, self._lease_ms, tag_ms)
        if token is not False:
            return token or False
        # Another instance is loading this key: wait for its entry, briefly.
        self.metrics.inc(_C_LEASE_WAITS)
        epoch = self.epoch
        data = await l2.wait_for(key, self.settings.cache_lease_wait)
        if data is not None and await self._answer_l2(data, pending, flight, send, epoch):
            return True
        token = await l2.acquire(key, pending.tags, self._lease_ms, tag_ms)
        return token or False

    async def _answer_l2(
        self, data: bytes, pending: _Pending, flight: _Flight, send: Any, epoch: int
    ) -> bool:
        entry = decode_entry(data, pending.route.extra)
        if entry is None:
            return False
        now, wall = time.monotonic(), time.time()
        entry.place(now, wall, self._fresh_cap())
        if now >= entry.fresh_until:
            if now < entry.error_until and entry.detail is None:
                pending.stale = entry
            return False  # too old to serve as a hit: load (with it as the error fallback)
        if epoch == self.epoch:
            self.l1.put(pending.key, entry, entry.size, entry.until, now, entry.tags)
        self.metrics.inc(_C_HIT_L2)
        self._land(pending.key, flight, (entry, HIT_L2))
        await self._deliver((entry, HIT_L2), pending, send)
        return True

    def _answer(
        self, entry: Entry, label: bytes, inm: bytes | None, now: float
    ) -> tuple[Message, Message]:
        if entry.detail is not None:
            raise Problem(entry.status, entry.detail, headers={"x-cache": label.decode()})
        if inm is not None and entry.matches(inm):
            self.metrics.inc(_C_NOT_MODIFIED)
            return entry.not_modified(label, now)
        return entry.messages(label, now)

    async def _deliver(self, outcome: Any, pending: _Pending, send: Any) -> None:
        """Send another load's outcome (an entry with its label, or a Problem) as our answer."""
        if isinstance(outcome, Problem):
            raise Problem(
                outcome.status, outcome.detail, headers=dict(outcome.headers), extra=outcome.extra
            )
        entry, label = outcome
        start, body = self._answer(entry, label, pending.inm, time.monotonic())
        await send(start)
        await send(body)

    def _land(self, key: bytes, flight: _Flight | None, outcome: Any) -> None:
        """Finish a flight: waiters get ``outcome``; the next miss starts a new one."""
        if flight is None:
            return
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.resolve(outcome)

    def _fresh_cap(self) -> float | None:
        # While invalidations cannot arrive, new L1 entries live shortly (availability first,
        # staleness bounded); the flush on resubscription removes them anyway.
        sub = self.subscription
        if sub is not None and not sub.connected:
            return self.settings.cache_degraded_ttl
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

    def _store_local(self, key: bytes, entry: Entry, epoch: int) -> bool:
        """Put a freshly loaded entry into L1 unless an invalidation happened meanwhile."""
        if epoch != self.epoch:
            return False
        now = time.monotonic()
        entry.place(now, entry.stored_at, self._fresh_cap())
        return self.l1.put(key, entry, entry.size, entry.until, now, entry.tags)

    async def _store_shared(self, key: bytes, entry: Entry, token: str | None) -> None:
        l2 = self.l2
        if l2 is None or token is None:
            return
        payload = encode_entry(entry)
        if await l2.store(key, token, payload, entry.lifetime_ms(time.time())):
            self.metrics.inc(_C_STORED)

    def _release(self, key: bytes, token: str | None) -> None:
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
        """The key a request would have (for :meth:`invalidate_keys`)."""
        route = self._routes[route_name]
        return route.spec.key("GET", path, query, list(headers), principal)

    async def invalidate_tags(self, tags: Iterable[str]) -> tuple[int, int]:
        """Drop every entry carrying one of ``tags``, here at once and on every instance.

        Returns (L2 entries deleted, other instances that heard it). Raises
        :class:`CacheUnavailable` when Redis could not be told (this process is purged anyway;
        the others keep their entries until their TTL)."""
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
            raise CacheUnavailable(f"Redis did not take the invalidation: {exc!r}") from None
        own = 1 if self.subscription is not None and self.subscription.connected else 0
        return deleted, max(0, heard - own)

    def _apply_tags(self, tags: Iterable[str]) -> None:
        self.epoch += 1
        for tag in tags:
            self.l1.invalidate_tag(tag)
            self.metrics.inc(_C_INVALIDATIONS)

    def _apply_keys(self, keys: Iterable[bytes]) -> None:
        self.epoch += 1
        for key in keys:
            self.l1.discard(key)
            self.metrics.inc(_C_INVALIDATIONS)

    def flush(self) -> int:
        """Drop this process's whole L1."""
        self.epoch += 1
        self.metrics.inc(_C_FLUSHES)
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
        self.metrics.inc("cygate_cache_subscriptions_total")
        self.flush()

    def _on_lost(self) -> None:
        self.epoch += 1

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


# ---------------------------------------------------------------------------------------------
# A miss: capture the response on its way out
# ---------------------------------------------------------------------------------------------


class CacheMiss:
    """Wraps the edge's ``send`` for one load: captures the response, stores it when it may,
    and answers the requests waiting for it. Without a pending look-up it passes through."""

    __slots__ = (
        "_body",
        "_buffering",
        "_cache",
        "_done",
        "_epoch",
        "_flight",
        "_headers",
        "_out",
        "_pending",
        "_size",
        "_started",
        "_status",
        "_swallow",
        "_token",
    )

    _CACHEABLE: ClassVar[frozenset[int]] = frozenset({200, 404})

    def __init__(
        self,
        cache: ResponseCache,
        pending: _Pending | None,
        flight: _Flight | None,
        out: Any,
        token: str | None = None,
    ) -> None:
        self._cache = cache
        self._pending = pending
        self._flight = flight
        self._out = out
        self._token = token
        self._epoch = cache.epoch
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._buffering = False
        self._swallow = False
        self._started = False
        self._done = False

    async def send(self, message: Message) -> None:
        """The ``send`` the loader's response goes through."""
        pending = self._pending
        if pending is None:
            await self._out(message)
            return
        if message["type"] == "http.response.start":
            self._started = True
            self._status = status = message["status"]
            self._headers = list(message.get("headers", ()))
            if status >= 500 and pending.stale is not None:
                self._swallow = True  # stale-if-error: answer with the old entry instead
            elif status in self._CACHEABLE:
                self._buffering = True
            else:
                self._finish(_BYPASS)
                await self._out(message)
            return
        if self._swallow:
            if not message.get("more_body", False):
                await self._serve_stale()
            return
        if not self._buffering:
            await self._out(message)
            return
        chunk = message.get("body", b"")
        self._body.append(chunk)
        self._size += len(chunk)
        more = message.get("more_body", False)
        if self._size > self._cache.settings.cache_max_entry_bytes:
            await self._give_up(more)
        elif not more:
            await self._complete()

    async def failed(self, problem: Problem) -> bool:
        """The loader raised ``problem``. True when this answered instead (stale-if-error);
        else the waiting requests get the same problem (a 404 is also remembered)."""
        pending = self._pending
        if pending is None or self._started:
            return False
        if problem.status >= 500 and pending.stale is not None:
            await self._serve_stale()
            return True
        if problem.status == 404:
            problem.headers.setdefault("x-cache", "miss")
            self._remember_404(problem.detail)
        else:
            self._finish(problem)
        return False

    def close(self) -> None:
        """Called by the edge when the request ends, however it ended."""
        if self._pending is not None and not self._done:
            self._finish(_RETRY)

    # -- internals ---------------------------------------------------------------------------

    def _finish(self, outcome: Any) -> None:
        """Hand ``outcome`` to the waiting requests; give the lease back unless an entry is
        about to be stored under it."""
        self._done = True
        assert self._pending is not None
        self._cache._land(self._pending.key, self._flight, outcome)
        if not isinstance(outcome, tuple) or outcome[1] is STALE:
            self._cache._release(self._pending.key, self._token)
            self._token = None

    async def _serve_stale(self) -> None:
        pending = self._pending
        assert pending is not None and pending.stale is not None
        self._cache.metrics.inc(_C_STALE)
        self._finish((pending.stale, STALE))
        start, body = self._cache._answer(pending.stale, STALE, pending.inm, time.monotonic())
        await self._out(start)
        await self._out(body)

    async def _give_up(self, more: bool) -> None:
        # Too big to store: send what we hold and stream the rest.
        self._buffering = False
        self._finish(_BYPASS)
        await self._out(
            {"type": "http.response.start", "status": self._status, "headers": self._headers}
        )
        body, self._body = b"".join(self._body), []
        await self._out({"type": "http.response.body", "body": body, "more_body": more})

    async def _complete(self) -> None:
        pending = self._pending
        assert pending is not None
        cache = self._cache
        body = b"".join(self._body)
        rule = pending.route.rule
        base = storable_headers(self._headers, rule, frozenset(pending.route.spec.header_names))
        if self._status == 404:
            detail = _problem_detail(body) if base is not None else None
            if detail is not None:
                self._remember_404(detail)
            else:
                self._finish(_BYPASS)
            await self._out(
                {"type": "http.response.start", "status": 404, "headers": self._headers}
            )
            await self._out({"type": "http.response.body", "body": body})
            return
        if base is None:
            self._finish(_BYPASS)
            await self._out(
                {"type": "http.response.start", "status": self._status, "headers": self._headers}
            )
            await self._out({"type": "http.response.body", "body": body})
            return
        entry = Entry.response(
            self._status, base, body, rule, pending.tags, time.time(), pending.route.extra
        )
        cache.metrics.inc(_C_MISS)
        cache._store_local(pending.key, entry, self._epoch)
        self._finish((entry, MISS))
        start, body_message = cache._answer(entry, MISS, pending.inm, time.monotonic())
        await self._out(start)
        await self._out(body_message)
        # PERF: L2 after the client has its answer; the lease keeps others waiting meanwhile.
        token, self._token = self._token, None
        await cache._store_shared(pending.key, entry, token)

    def _remember_404(self, detail: str) -> None:
        pending = self._pending
        assert pending is not None
        rule = pending.route.rule
        if rule.not_found_ttl <= 0:
            self._finish(Problem(404, detail))
            return
        cache = self._cache
        entry = Entry.not_found(detail, rule, pending.tags, time.time())
        cache._store_local(pending.key, entry, self._epoch)
        token, self._token = self._token, None
        self._finish((entry, MISS))
        if token is not None:
            cache._spawn(cache._store_shared(pending.key, entry, token))


def _problem_detail(body: bytes) -> str | None:
    """The ``detail`` of a problem document, or None if the body is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    detail = doc.get("detail") if isinstance(doc, dict) else None
    return detail if isinstance(detail, str) else None
