"""The rate-limit stage: named limits from the settings, applied by route class at the edge.

A route's class comes from ``CYGATE_RATE_LIMIT_ROUTES`` (route name -> class), else from its
handler's ``opt={"rate_limit": "<class>"}``, else from ``CYGATE_RATE_LIMIT_DEFAULT_CLASS`` (the
built-in ``api`` limit unless configured otherwise); an empty class in either of the first two
exempts the route. A class is a list of limit names (a limit's own name is also a class of
one). Each limit is
decided in one of three modes:

``local``
    GCRA in this process (:mod:`cygate.core.ratelimit`): no I/O, a fraction of a microsecond.
``exact``
    one atomic Lua call to Redis per decision (:mod:`cygate.infra.ratelimit_store`): never more
    than the limit, whatever the number of instances. A refusal is remembered until it expires
    (refusals are monotonic in GCRA), so a flood of refused requests costs no Redis call.
``batched``
    this process reserves ``lease`` tokens at a time from Redis and spends them locally: one
    Redis call per lease, at most one in flight per key; at most ``limit + processes * lease``
    in any window. PERF: when fewer than a quarter of a lease's tokens are left, one request
    tops it up in the background (``lease`` minus what is left, so a process never holds more
    than ``lease``): under steady load the lease never runs dry and no request waits for Redis
    (a dry lease makes every concurrent request of the key wait for the answer).

PERF: the stage is synchronous whenever it can be: local limits, a lease with tokens left or a
remembered refusal return ``None`` without creating a coroutine; only a question to Redis makes
one. Limits are checked cheapest first (local, batched, exact); the first refusal stops the
check and gives back what earlier local limits took.

Response: ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` of the most
restrictive limit (the fewest requests remaining; on a tie, the later reset), and
``RateLimit-Policy`` listing every limit of the route; refusals are 429 problem+json with
``Retry-After`` (whole seconds, rounded up: a retry after it passes that limit).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, NoReturn

from cygate.core.ratelimit import (
    DENIED,
    GRANTED,
    GCRALimiter,
    LeaseTable,
    header_number,
    whole_seconds,
)
from cygate.edge.problem import Problem
from cygate.edge.ratekey import (
    ADDRESS,
    ANONYMOUS,
    API_KEY,
    EVERYONE,
    PATH,
    PRINCIPAL,
    ROUTE,
    SEPARATOR,
)
from cygate.infra.ratelimit_store import QuotaStore, QuotaUnavailable, Reservation
from cygate.infra.tasks import spawn, wake

if TYPE_CHECKING:
    from cygate.edge.context import EdgeContext, RoutePolicy
    from cygate.edge.settings import RateLimitSettings, RateLimitSpec
    from cygate.infra.metrics import Counter, Metrics
    from cygate.infra.redis import RedisHandle

__all__ = ["Limit", "RateLimitStage", "RoutePlan", "build_limits"]

log = logging.getLogger("cygate.ratelimit")

_NS = 1_000_000_000
KeyFn = Callable[["EdgeContext"], str]


def _key_fn(parts: tuple[str, ...], api_header: bytes) -> KeyFn:
    """The function that makes a request's key for a limit keyed by ``parts``.

    Each part is tagged (the format: ``cygate.edge.ratekey``, shared with the fused hit path)
    so two kinds of value can never collide.
    """

    def part(name: str) -> KeyFn:
        if name == "caller":
            return lambda c: PRINCIPAL + c.principal.sub if c.principal else ADDRESS + c.client_ip
        if name == "sub":
            # NOTE: anonymous requests share one "anonymous" counter under a sub-keyed limit.
            return lambda c: PRINCIPAL + c.principal.sub if c.principal else ANONYMOUS
        if name == "ip":
            return lambda c: ADDRESS + c.client_ip
        if name == "api_key":

            def api_key(c: EdgeContext) -> str:
                value = c.header(api_header)
                if not value:
                    return ADDRESS + c.client_ip  # no key: limited per client address
                # A digest, not the key: keys are secrets and Redis key names are not.
                return API_KEY + hashlib.blake2b(value, digest_size=12).hexdigest()

            return api_key
        if name == "route":
            return lambda c: ROUTE + c.policy.name
        if name == "path":
            return _path_key
        raise ValueError(f"unknown key part {name!r}")

    if not parts:
        return lambda c: EVERYONE
    fns = [part(p) for p in parts]
    if len(fns) == 1:
        return fns[0]
    return lambda c: SEPARATOR.join([f(c) for f in fns])


_PARAM_RE = re.compile(r"\{(\w+)(?::(\w+))?\}")
_canonical: dict[str, tuple[tuple[str, str], ...]] = {}  # route name -> (param, type), in order


def _path_key(c: EdgeContext) -> str:
    """The resource's key: the normalised path, with typed parameters in canonical form.

    NOTE: the path is already normalised (``//x``, ``/x/``, ``%2F``, dot segments), but a typed
    parameter has several spellings of one value: ``/products/ABC...`` and ``/products/abc...``
    (a UUID in either case), ``/items/007`` and ``/items/7``. Keyed by route template plus the
    canonical values, each of those shares one counter.
    """
    params = c.params
    if not params:
        return PATH + c.method + " " + c.path
    route = c.policy.name
    spec = _canonical.get(route)
    if spec is None:
        spec = _canonical[route] = tuple(
            (m.group(1), m.group(2) or "str") for m in _PARAM_RE.finditer(route)
        )
    values = []
    for name, kind in spec:
        value = params.get(name, "")
        if kind == "uuid":
            value = value.lower()
        elif kind == "int":
            value = str(int(value)) if value.lstrip("-").isdigit() else value
        values.append(value)
    return PATH + route + SEPARATOR + SEPARATOR.join(values)


class Limit:
    """One configured limit, with its tables and counters (shared by every route using it)."""

    __slots__ = (
        "burst",
        "failure",
        "gcra",
        "inflight",
        "interval_ns",
        "interval_us",
        "key",
        "lease",
        "lease_ttl_ns",
        "leases",
        "limit_header",
        "limit_pair",
        "low_water",
        "mode",
        "n_allowed",
        "n_fail_closed",
        "n_fail_open",
        "n_fallback",
        "n_limited",
        "n_redis",
        "name",
        "parts",
        "policy",
    )

    def __init__(
        self,
        name: str,
        spec: RateLimitSpec,
        *,
        failure: str,
        metrics: Metrics,
        capacity: int,
        api_header: bytes,
    ) -> None:
        self.name = name
        self.mode = spec.mode
        self.failure = failure
        self.burst = spec.effective_burst
        self.interval_ns = spec.interval_ns
        self.interval_us = -(-self.interval_ns // 1000)
        self.lease = spec.effective_lease if spec.mode == "batched" else 1
        self.low_water = self.lease // 4 if spec.mode == "batched" else 0
        """Fewer tokens left than this: top the lease up in the background (0: never)."""
        self.lease_ttl_ns = round(spec.effective_lease_ttl * _NS)
        self.parts = tuple(spec.key)
        """What the key is made of (``caller``, ``ip``, ...): the fused hit path makes the
        simple ones itself (``cygate.edge.hitpath``)."""
        self.key = _key_fn(self.parts, api_header)
        # Local mode decides here; global modes fall back to it when Redis fails.
        self.gcra = GCRALimiter(self.interval_ns, self.burst, capacity)
        # Global modes: Redis's last answers per key (a local limit never asks: one slot).
        self.leases = LeaseTable(capacity if spec.mode != "local" else 1)
        self.inflight: dict[str, list[asyncio.Future[None]]] = {}
        """Keys with a reservation in flight -> the futures of the requests waiting for it."""
        self.limit_header = b"%d" % self.burst
        self.limit_pair = (b"ratelimit-limit", self.limit_header)
        period = f"{spec.period:g}"
        policy = f"{spec.rate};w={period}"
        if self.burst != spec.rate:
            policy += f";burst={self.burst}"
        self.policy = policy

        def counter(decision: str) -> Counter:
            return metrics.counter(
                "cygate_ratelimit_decisions_total", limit=name, decision=decision
            )

        self.n_allowed = counter("allowed")
        self.n_limited = counter("limited")
        self.n_fail_open = counter("fail_open")
        self.n_fail_closed = counter("fail_closed")
        self.n_fallback = counter("fallback")
        self.n_redis = metrics.counter("cygate_ratelimit_redis_calls_total", limit=name)


class RoutePlan:
    """The limits of one route, cheapest first, and its constant ``RateLimit-Policy`` header."""

    __slots__ = ("limits", "policy_header", "policy_pair", "single")

    def __init__(self, limits: tuple[Limit, ...]) -> None:
        order = {"local": 0, "batched": 1, "exact": 2}
        self.limits = tuple(sorted(limits, key=lambda lim: order[lim.mode]))
        self.policy_header = ", ".join(lim.policy for lim in self.limits).encode()
        self.policy_pair = (b"ratelimit-policy", self.policy_header)
        self.single = self.limits[0] if len(self.limits) == 1 else None
        """The one limit of a route that has one (the common case, decided inline)."""


class _Verdict:
    """What one request passed so far: the most restrictive limit, and what to give back."""

    __slots__ = ("limit", "passed", "refunds", "remaining", "reset_ns")

    def __init__(self) -> None:
        self.limit: Limit | None = None
        self.remaining = 0
        self.reset_ns = 0
        self.passed: list[Limit] = []
        self.refunds: list[tuple[GCRALimiter, str]] = []

    def note(self, limit: Limit, remaining: int, reset_ns: int) -> None:
        self.passed.append(limit)
        if (
            self.limit is None
            or remaining < self.remaining
            or (remaining == self.remaining and reset_ns > self.reset_ns)
        ):
            self.limit = limit
            self.remaining = remaining
            self.reset_ns = reset_ns

    def undo(self) -> None:
        for gcra, key in self.refunds:
            gcra.refund(key)


def build_limits(
    settings: RateLimitSettings,
    policies: Iterable[RoutePolicy],
    metrics: Metrics,
    existing: dict[tuple[str, str], Limit] | None = None,
) -> dict[str, RoutePlan]:
    """Route name -> its plan, for every route that a class applies to.

    Raises ValueError naming the route when a handler names an unknown class, or when
    ``rate_limit_routes`` names a route that does not exist (a typo must not go unnoticed).
    ``existing`` (name, failure mode) -> Limit: limits found there are reused, with their
    counters and leases (a route-table reload does not reset anyone's quota); new ones are
    added to it.
    """
    classes_of: dict[str, str] = {}
    names = set()
    for policy in policies:
        names.add(policy.name)
        # NOTE: an empty class ("" in rate_limit_routes or the handler's opt) is a decision:
        # not limited by the edge, the default class included (a handler that counts a limit
        # of its own and sends its own RateLimit headers, like login's, says so).
        cls = settings.routes.get(policy.name)
        if cls is None:
            cls = policy.rate_limit
        if cls is None:
            cls = settings.default_class
        if cls:
            if settings.rate_limit_class(cls) is None:
                raise ValueError(f"route {policy.name!r} names unknown rate-limit class {cls!r}")
            classes_of[policy.name] = cls
    unknown = sorted(set(settings.routes) - names)
    if unknown:
        raise ValueError(
            f"CYGATE_RATE_LIMIT_ROUTES names routes that do not exist: {unknown}; "
            f"routes are named like 'GET /api/v1/categories'"
        )
    specs = settings.all_rate_limits()
    users: dict[str, set[str]] = {}  # limit -> classes applying it
    for cls in classes_of.values():
        for name in settings.rate_limit_class(cls) or ():
            users.setdefault(name, set()).add(cls)
    api_header = settings.api_key_header.lower().encode("latin-1")
    known = {} if existing is None else existing
    limits: dict[str, Limit] = {}
    for name, classes in users.items():
        failure = specs[name].failure_for(frozenset(classes))
        limit = known.get((name, failure))
        if limit is None:
            limit = known[(name, failure)] = Limit(
                name,
                specs[name],
                failure=failure,
                metrics=metrics,
                capacity=settings.max_keys,
                api_header=api_header,
            )
        limits[name] = limit
    plans: dict[str, RoutePlan] = {}
    by_class: dict[str, RoutePlan] = {}
    for route, cls in classes_of.items():
        plan = by_class.get(cls)
        if plan is None:
            names_ = dict.fromkeys(settings.rate_limit_class(cls) or ())  # dedupe, keep order
            plan = by_class[cls] = RoutePlan(tuple(limits[n] for n in names_))
        if plan.limits:
            plans[route] = plan
    return plans


async def _wait_for(waiting: list[asyncio.Future[None]]) -> None:
    """Wait for a key's reservation in flight (one lease request per key at a time).

    PERF: each waiter awaits a future of its own (its cancellation touches no one else's);
    shielding one shared future costs more per waiter, and a dry lease under load has many."""
    mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting.append(mine)
    await mine


class RateLimitStage:
    """The edge stage. ``stage(ctx)`` returns None (decided) or an awaitable (asking Redis)."""

    __slots__ = (
        "_current",
        "_limits",
        "_metrics",
        "_settings",
        "_watchers",
        "backoff",
        "store",
        "timeout",
    )

    def __init__(
        self, settings: RateLimitSettings, policies: Iterable[RoutePolicy], metrics: Metrics
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._limits: dict[tuple[str, str], Limit] = {}
        """(name, failure mode) -> Limit: what a later :meth:`plan` reuses."""
        self._current = build_limits(settings, policies, metrics, self._limits)
        self._watchers: list[Callable[[], None]] = []
        self.timeout = settings.redis_timeout
        self.backoff = settings.redis_backoff
        self.store: QuotaStore | None = None

    @classmethod
    def from_settings(
        cls, settings: RateLimitSettings, policies: Iterable[RoutePolicy], metrics: Metrics
    ) -> RateLimitStage:
        return cls(settings, policies, metrics)

    def plan(self, policies: Iterable[RoutePolicy]) -> dict[str, RoutePlan]:
        """The plans for a new route table, checked as at start-up (ValueError: the table
        must not go live); limits that keep their name and failure mode keep their state."""
        return build_limits(self._settings, policies, self._metrics, self._limits)

    def install(self, plans: dict[str, RoutePlan]) -> None:
        """Use ``plans`` from now on (right after their route table is swapped in); then tells
        every :meth:`watch` callback."""
        self._current = plans
        for watcher in tuple(self._watchers):
            watcher()

    @property
    def plans(self) -> Mapping[str, RoutePlan]:
        """Route name -> its plan, as installed now (read-only: :meth:`install` replaces the
        whole table, never changes one in place; a plan and its limits are never changed)."""
        return self._current

    def plan_for(self, route: str) -> RoutePlan | None:
        """The plan of the route named ``route``, or None: the route is not limited."""
        return self._current.get(route)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every :meth:`install` (once, however often it is given):
        what holds on to :attr:`plans` (the fused hit path's plan) is rebuilt then."""
        if callback not in self._watchers:
            self._watchers.append(callback)

    @property
    def needs_redis(self) -> bool:
        return any(lim.mode != "local" for plan in self._current.values() for lim in plan.limits)

    def limits(self) -> dict[str, tuple[str, ...]]:
        """Route name -> the names of its limits, in the order they are checked."""
        return {route: tuple(lim.name for lim in p.limits) for route, p in self._current.items()}

    def key_gauges(self) -> Iterator[tuple[str, tuple[str, ...], float]]:
        """``cygate_ratelimit_keys`` of this worker (a metrics gauge source): per limit in
        use, the keys its tables hold (leases or refusals of the global modes, GCRA states of
        the local mode and of the fallback), each bounded by ``rate_limit_max_keys``."""
        seen: set[str] = set()
        for plan in self._current.values():
            for lim in plan.limits:
                if lim.name not in seen:
                    seen.add(lim.name)
                    yield "cygate_ratelimit_keys", (lim.name,), len(lim.leases) + len(lim.gcra)

    async def bind(self, redis: RedisHandle) -> None:
        """Use ``redis`` for global limits and load the script (failure is not fatal)."""
        self.store = QuotaStore(
            redis,
            timeout=self.timeout,
            backoff=self.backoff,
            round_trips=self._metrics.counter("cygate_ratelimit_redis_round_trips_total"),
        )
        if self.needs_redis:
            await self.store.load()

    async def unbind(self) -> None:
        """Stop using Redis: close the store's own connection (stopping; tests)."""
        store, self.store = self.store, None
        if store is not None:
            await store.close()

    # -- the request path ---------------------------------------------------------------------

    def __call__(self, ctx: EdgeContext) -> Awaitable[None] | None:
        plan = self._current.get(ctx.policy.name)
        if plan is None:
            return None
        single = plan.single
        if single is not None:
            # PERF: one limit, decided here: no verdict object, no list, no method call but
            # the decision itself (the general loop below gives the same answers).
            key = single.key(ctx)
            table: GCRALimiter | LeaseTable
            if single.mode == "local":
                table = single.gcra
                allowed = table.hit(key)
            else:
                table = single.leases
                allowed = table.take(key) == GRANTED
                if allowed and table.tokens < single.low_water and key not in single.inflight:
                    self.top_up(single, key, table.tokens)
            if allowed:
                single.n_allowed.value += 1
                table.append_headers(ctx.response_headers, single.limit_pair, plan.policy_pair)
                return None
            if single.mode == "local":
                self._refuse(ctx, single, table.retry_ns, table.reset_ns, _Verdict())
        verdict = _Verdict()
        limits = plan.limits
        for i, limit in enumerate(limits):
            key = limit.key(ctx)
            if not self._decide_here(ctx, limit, key, verdict):
                return self._ask_redis(ctx, plan, i, key, verdict)
        self._allow(ctx, plan, verdict)
        return None

    async def _ask_redis(
        self, ctx: EdgeContext, plan: RoutePlan, start: int, key: str, verdict: _Verdict
    ) -> None:
        limits = plan.limits
        for i in range(start, len(limits)):
            limit = limits[i]
            if i != start:
                key = limit.key(ctx)
                if self._decide_here(ctx, limit, key, verdict):
                    continue
            if limit.mode == "exact":
                await self._exact(ctx, limit, key, verdict)
            else:
                await self._batched(ctx, limit, key, verdict)
        self._allow(ctx, plan, verdict)

    def _decide_here(self, ctx: EdgeContext, limit: Limit, key: str, verdict: _Verdict) -> bool:
        """Decide without I/O when possible: True when allowed, False when Redis must answer;
        raises the refusal."""
        if limit.mode == "local":
            gcra = limit.gcra
            if gcra.hit(key):
                verdict.note(limit, gcra.remaining, gcra.reset_ns)
                verdict.refunds.append((gcra, key))
                return True
            self._refuse(ctx, limit, gcra.retry_ns, gcra.reset_ns, verdict)
        # A lease with tokens left, or a refusal that still holds, is a decision even while
        # Redis is away.
        leases = limit.leases
        taken = leases.take(key)
        if taken == GRANTED:
            verdict.note(limit, leases.remaining, leases.reset_ns)
            if leases.tokens < limit.low_water and key not in limit.inflight:
                self.top_up(limit, key, leases.tokens)
            return True
        if taken == DENIED:
            self._refuse(ctx, limit, leases.retry_ns, leases.reset_ns, verdict)
        store = self.store
        if store is None or not store.usable:
            self._fallback(ctx, limit, key, verdict)
            return True
        return False

    async def _exact(self, ctx: EdgeContext, limit: Limit, key: str, verdict: _Verdict) -> None:
        answer = await self._reserve(limit, key, 1)
        if answer is None:
            self._fallback(ctx, limit, key, verdict)
            return
        sent, res = answer
        if res.granted:
            verdict.note(limit, res.remaining, res.reset_ns)
            return
        self._remember_refusal(limit, key, sent, res)
        self._refuse(ctx, limit, res.retry_ns, res.reset_ns, verdict)

    async def _batched(self, ctx: EdgeContext, limit: Limit, key: str, verdict: _Verdict) -> None:
        leases = limit.leases
        while True:
            waiting = limit.inflight.get(key)
            if waiting is not None:
                await _wait_for(waiting)
                if self._decide_here(ctx, limit, key, verdict):
                    return
                continue
            answer = await self._reserve_once(limit, key)
            if answer is None:
                self._fallback(ctx, limit, key, verdict)
                return
            sent, res = answer
            if res.granted:
                # This request spends one token; the rest of the lease is for the next ones.
                if res.granted > 1:
                    leases.grant(
                        key,
                        res.granted - 1,
                        sent + limit.lease_ttl_ns,
                        res.remaining,
                        sent + res.reset_ns,
                    )
                else:
                    # NOTE: nothing left to hold: a lease of 0 tokens reads as a refusal (it
                    # refused the key until the lease's expiry, whatever Redis would answer).
                    leases.drop(key)
                verdict.note(limit, res.remaining + res.granted - 1, res.reset_ns)
                return
            self._remember_refusal(limit, key, sent, res)
            self._refuse(ctx, limit, res.retry_ns, res.reset_ns, verdict)

    async def lease(self, limit: Limit, key: str) -> bool:
        """Reserve a lease for ``key`` of the batched ``limit`` (the fused hit path found none
        with tokens left: ``HitPath.lease_miss``), or wait for the reservation in flight for
        it. True when Redis answered (the lease table now holds a lease for it, or a refusal,
        which the caller's next ``take`` finds), False when it did not (Redis away, or this key
        failed there): the general path decides then, by the limit's failure mode. Spends no
        token: the caller's ``take`` does, so a request is decided once."""
        waiting = limit.inflight.get(key)
        if waiting is not None:
            await _wait_for(waiting)
            return True
        store = self.store
        if store is None or not store.usable:
            return False
        answer = await self._reserve_once(limit, key)
        if answer is None:
            return False
        sent, res = answer
        if res.granted:
            limit.leases.grant(
                key, res.granted, sent + limit.lease_ttl_ns, res.remaining, sent + res.reset_ns
            )
        else:
            self._remember_refusal(limit, key, sent, res)
        return True

    async def _reserve_once(self, limit: Limit, key: str) -> tuple[int, Reservation] | None:
        """Reserve a lease for ``key`` as the key's one request in flight: requests that find
        it meanwhile wait (:func:`_wait_for`) for its answer instead of asking Redis too."""
        limit.inflight[key] = []
        try:
            return await self._reserve(limit, key, limit.lease)
        finally:
            # The waiters run after the caller has stored the answer (no await between).
            wake(limit.inflight.pop(key), None)

    def top_up(self, limit: Limit, key: str, left: int) -> None:
        """Reserve ``lease - left`` more tokens for ``key`` in the background (after a take
        left the lease below ``limit.low_water``; the fused hit path calls it too). It is the
        key's reservation in flight: a request finding the lease dry meanwhile waits for it
        rather than asking Redis too."""
        store = self.store
        if store is None or not store.usable:
            return  # a dry lease falls back as usual
        limit.inflight[key] = []
        spawn(self._topping_up(limit, key, limit.lease - left))

    async def _topping_up(self, limit: Limit, key: str, want: int) -> None:
        try:
            answer = await self._reserve(limit, key, want)
        except Exception:  # pragma: no cover - _reserve turns Redis failures into None
            log.exception("lease top-up failed limit=%s", limit.name)
            answer = None
        finally:
            wake(limit.inflight.pop(key), None)
        if answer is None:
            return  # Redis away: the tokens left are spent, then the limit falls back
        sent, res = answer
        if res.granted:
            limit.leases.top_up(
                key, res.granted, sent + limit.lease_ttl_ns, res.remaining, sent + res.reset_ns
            )
        # NOTE: a refusal is not remembered here: the tokens left were reserved and stay
        # valid; when they are spent, the next request asks and remembers the refusal.

    async def _reserve(self, limit: Limit, key: str, want: int) -> tuple[int, Reservation] | None:
        store = self.store
        if store is None:
            return None
        # Times Redis reports are relative to its decision, which came after this moment:
        # anchoring them here ends a remembered refusal a little early, never late.
        sent = limit.leases.now()
        try:
            res = await store.reserve(
                store.key(limit.name, key), limit.interval_us, limit.burst, want
            )
        except QuotaUnavailable:
            return None
        limit.n_redis.value += 1
        return sent, res

    @staticmethod
    def _remember_refusal(limit: Limit, key: str, sent: int, res: Reservation) -> None:
        limit.leases.grant(key, 0, sent + res.retry_ns, 0, sent + res.reset_ns)

    def _fallback(self, ctx: EdgeContext, limit: Limit, key: str, verdict: _Verdict) -> None:
        """Redis is unavailable: the limit's failure mode decides."""
        if limit.failure == "closed":
            limit.n_fail_closed.value += 1
            verdict.undo()
            wait = max(1, math.ceil(self.store.retry_after if self.store else self.backoff))
            raise Problem(
                503,
                "the rate-limit store is unavailable; retry shortly",
                headers={"retry-after": str(wait)},
            )
        gcra = limit.gcra
        allowed = gcra.hit(key)
        if limit.failure == "open":
            # Served whatever the local count says; the count still feeds the headers.
            limit.n_fail_open.value += 1
            verdict.note(limit, gcra.remaining if allowed else 0, gcra.reset_ns)
            if allowed:
                verdict.refunds.append((gcra, key))
            return
        limit.n_fallback.value += 1
        if not allowed:
            self._refuse(ctx, limit, gcra.retry_ns, gcra.reset_ns, verdict)
        verdict.note(limit, gcra.remaining, gcra.reset_ns)
        verdict.refunds.append((gcra, key))

    @staticmethod
    def _allow(ctx: EdgeContext, plan: RoutePlan, verdict: _Verdict) -> None:
        for limit in verdict.passed:
            limit.n_allowed.value += 1
        best = verdict.limit
        if best is not None:
            ctx.response_headers += (
                best.limit_pair,
                (b"ratelimit-remaining", header_number(verdict.remaining)),
                (b"ratelimit-reset", header_number(whole_seconds(verdict.reset_ns))),
                plan.policy_pair,
            )

    @staticmethod
    def _refuse(
        ctx: EdgeContext, limit: Limit, retry_ns: int, reset_ns: int, verdict: _Verdict
    ) -> NoReturn:
        verdict.undo()
        limit.n_limited.value += 1
        retry = whole_seconds(retry_ns)
        ctx.response_headers += (
            (b"ratelimit-limit", limit.limit_header),
            (b"ratelimit-remaining", b"0"),
            (b"ratelimit-reset", b"%d" % max(whole_seconds(reset_ns), retry)),
            (b"ratelimit-policy", limit.policy.encode()),
        )
        if retry:
            detail = f"rate limit {limit.name!r} exceeded; retry after {retry} s"
        else:
            detail = f"rate limit {limit.name!r} exceeded"
        raise Problem(
            429, detail, headers={"retry-after": str(max(retry, 1))}, extra={"limit": limit.name}
        )
