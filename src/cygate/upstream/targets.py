"""An upstream: its targets, how one is picked, and how unhealthy ones are left out.

Balancing: ``round_robin`` (weighted, smooth), ``least_outstanding`` (fewest requests in flight,
ties to the first; weight divides the count) and ``consistent_hash`` (a ring of 64 points per
weight unit; a key maps to the first usable target clockwise, so removing one target moves only
its keys). A target is usable unless ejected (passive health: consecutive failures) or marked
down by the active check. When no target is usable, the least recently ejected one is tried
anyway: refusing everything because every target once failed helps nobody (the breaker is what
stops traffic to a dead upstream).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cygate.upstream.client import TargetPool, UpstreamError
from cygate.upstream.config import ResolvedTarget, UpstreamConfig, tls_context
from cygate.upstream.resilience import Bulkhead, CircuitBreaker, RetryBudget

if TYPE_CHECKING:
    from cygate.edge.context import EdgeContext

__all__ = ["Target", "Upstream"]

log = logging.getLogger("cygate.upstream")

_VNODES = 64
_MAX_EJECTION_FACTOR = 10


class Target:
    """One ``host:port`` of an upstream, with its connection pool and health."""

    __slots__ = (
        "_check_fail",
        "_check_ok",
        "base_path",
        "consecutive_failures",
        "current_weight",
        "ejected_until",
        "ejections",
        "healthy",
        "host_header",
        "outstanding",
        "pool",
        "spec",
        "url",
        "weight",
    )

    def __init__(
        self, spec: ResolvedTarget, cfg: UpstreamConfig, tls: ssl.SSLContext | None = None
    ) -> None:
        self.spec = spec
        self.url = spec.url
        self.weight = spec.weight
        self.host_header = spec.host_header
        self.base_path = spec.base_path
        self.pool = TargetPool(
            spec.address,
            spec.port,
            max_idle=cfg.max_idle_per_target,
            idle_timeout=cfg.idle_timeout,
            context=tls if spec.server_name is not None else None,
            server_name=spec.server_name,
        )
        self.outstanding = 0
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejections = 0
        self.healthy = True
        """Set by the active health check (True when there is none)."""
        self.current_weight = 0
        self._check_ok = 0
        self._check_fail = 0

    def usable(self, now: float) -> bool:
        return self.healthy and self.ejected_until <= now

    def view(self, now: float) -> dict[str, Any]:
        return {
            "url": self.url,
            "address": f"{self.spec.address}:{self.spec.port}",
            "weight": self.weight,
            "healthy": self.healthy,
            "ejected": self.ejected_until > now,
            "ejected_for": round(max(0.0, self.ejected_until - now), 3),
            "outstanding": self.outstanding,
            "consecutive_failures": self.consecutive_failures,
            "connections": self.pool.stats(),
        }


class Upstream:
    """A named pool of targets with its breaker, bulkhead and retry budget (per worker)."""

    __slots__ = (
        "_hash_key",
        "_ring",
        "_ring_keys",
        "_rr",
        "_tasks",
        "breaker",
        "budget",
        "bulkhead",
        "cfg",
        "closed",
        "failure_statuses",
        "loop",
        "name",
        "pick",
        "retry_on",
        "targets",
    )

    def __init__(
        self,
        name: str,
        cfg: UpstreamConfig,
        targets: list[ResolvedTarget],
        *,
        on_breaker_change: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        # One client context for the upstream's https:// targets (files checked at validation).
        tls = tls_context(cfg.tls) if any(t.server_name for t in targets) else None
        self.targets = [Target(t, cfg, tls) for t in targets]
        b = cfg.breaker

        def changed(old: str, new: str) -> None:
            log.warning("upstream %s: circuit %s -> %s", name, old, new)
            if on_breaker_change is not None:
                on_breaker_change(name, old, new)

        self.breaker = CircuitBreaker(
            failure_threshold=b.failure_threshold,
            open_seconds=b.open_seconds,
            half_open_requests=b.half_open_requests,
            on_change=changed,
        )
        self.failure_statuses = frozenset(b.failure_statuses)
        self.retry_on = frozenset(cfg.retry.on_status)
        self.bulkhead = Bulkhead(
            max_concurrent=cfg.bulkhead.max_concurrent,
            max_queue=cfg.bulkhead.max_queue,
            queue_timeout=cfg.bulkhead.queue_timeout,
        )
        self.budget = RetryBudget(
            ratio=cfg.retry.budget_ratio, min_per_second=cfg.retry.budget_min_per_second
        )
        self._rr = 0
        self._ring: list[Target] = []
        self._ring_keys: list[int] = []
        self._hash_key = _key_function(cfg.hash_key)
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        """The worker's loop, set by :meth:`start` (PERF: the proxy reads the time from it
        without ``get_running_loop``)."""
        self.closed = False
        if cfg.balance == "consistent_hash":
            points = sorted(
                (_hash64(f"{t.url}#{i}".encode()), n)
                for n, t in enumerate(self.targets)
                for i in range(_VNODES * t.weight)
            )
            self._ring_keys = [p for p, _ in points]
            self._ring = [self.targets[n] for _, n in points]
        self.pick: Callable[[EdgeContext, Target | None], Target] = {
            "round_robin": self._pick_round_robin,
            "least_outstanding": self._pick_least_outstanding,
            "consistent_hash": self._pick_hash,
        }[cfg.balance]
        """``pick(ctx, avoid)``: the target for this request (``avoid``: the one that just
        failed, skipped when another is usable)."""

    # -- balancing ----------------------------------------------------------------------------

    def _fallback(self, avoid: Target | None) -> Target:
        """No usable target: the one whose ejection ends first (not ``avoid`` if possible)."""
        candidates = [t for t in self.targets if t is not avoid] or self.targets
        return min(candidates, key=lambda t: (not t.healthy, t.ejected_until))

    def _pick_round_robin(self, ctx: EdgeContext, avoid: Target | None) -> Target:
        targets = self.targets
        if len(targets) == 1:
            return targets[0]
        now = time.monotonic()
        # Smooth weighted round robin (nginx): every usable target gains its weight; the
        # richest is picked and pays back the total.
        best: Target | None = None
        total = 0
        for t in targets:
            if t is avoid or not t.usable(now):
                continue
            t.current_weight += t.weight
            total += t.weight
            if best is None or t.current_weight > best.current_weight:
                best = t
        if best is None:
            return self._fallback(avoid)
        best.current_weight -= total
        return best

    def _pick_least_outstanding(self, ctx: EdgeContext, avoid: Target | None) -> Target:
        now = time.monotonic()
        best: Target | None = None
        best_load = 0.0
        start = self._rr = (self._rr + 1) % len(self.targets)  # rotate ties
        for i in range(len(self.targets)):
            t = self.targets[(start + i) % len(self.targets)]
            if t is avoid or not t.usable(now):
                continue
            load = t.outstanding / t.weight
            if best is None or load < best_load:
                best, best_load = t, load
        return best if best is not None else self._fallback(avoid)

    def _pick_hash(self, ctx: EdgeContext, avoid: Target | None) -> Target:
        now = time.monotonic()
        keys = self._ring_keys
        i = bisect.bisect_left(keys, _hash64(self._hash_key(ctx)))
        n = len(keys)
        for step in range(n):
            t = self._ring[(i + step) % n]
            if t is not avoid and t.usable(now):
                return t
        return self._fallback(avoid)

    # -- passive health -----------------------------------------------------------------------

    def record(self, target: Target, ok: bool) -> None:
        """One request's outcome on ``target``: outlier ejection (passive health)."""
        if ok:
            target.consecutive_failures = 0
            return
        target.consecutive_failures += 1
        o = self.cfg.outlier
        if target.consecutive_failures < o.consecutive_failures:
            return
        now = time.monotonic()
        if target.ejected_until > now:
            return
        ejected = sum(1 for t in self.targets if t.ejected_until > now)
        if (ejected + 1) * 100 > o.max_ejection_percent * len(self.targets):
            return  # keep enough targets in rotation
        target.ejections = min(target.ejections + 1, _MAX_EJECTION_FACTOR)
        target.ejected_until = now + o.ejection_seconds * target.ejections
        target.consecutive_failures = 0
        log.warning(
            "upstream %s: target %s ejected for %.1f s",
            self.name,
            target.url,
            o.ejection_seconds * target.ejections,
        )

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background work (idle-connection sweeps, active checks) on this loop."""
        loop = self.loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._sweep_loop()))
        if self.cfg.health_check is not None:
            self._tasks.extend(loop.create_task(self._check_loop(t)) for t in self.targets)

    async def close(self) -> None:
        """Stop the background work and close idle connections (busy ones close when done)."""
        self.closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for t in self.targets:
            t.pool.close()

    async def _sweep_loop(self) -> None:
        interval = max(1.0, self.cfg.idle_timeout / 2)
        while True:
            await asyncio.sleep(interval)
            for t in self.targets:
                t.pool.sweep()

    async def _check_loop(self, target: Target) -> None:
        hc = self.cfg.health_check
        assert hc is not None
        request = (
            f"GET {target.base_path}{hc.path} HTTP/1.1\r\nhost: {target.host_header.decode()}\r\n"
            "user-agent: cygate-health-check\r\nconnection: close\r\n\r\n"
        ).encode()
        while True:
            ok = await self._probe(target, request, hc.timeout)
            if ok:
                target._check_fail = 0
                target._check_ok += 1
                if not target.healthy and target._check_ok >= hc.healthy_threshold:
                    target.healthy = True
                    log.warning("upstream %s: target %s healthy again", self.name, target.url)
            else:
                target._check_ok = 0
                target._check_fail += 1
                if target.healthy and target._check_fail >= hc.unhealthy_threshold:
                    target.healthy = False
                    log.warning("upstream %s: target %s failed its checks", self.name, target.url)
            await asyncio.sleep(hc.interval)

    @staticmethod
    async def _probe(target: Target, request: bytes, timeout: float) -> bool:  # noqa: ASYNC109
        conn = None
        try:
            async with asyncio.timeout(timeout):
                conn = await target.pool.connect()
                conn.begin()
                conn.write(request)
                status, _ = await conn.read_head()
                return 200 <= status < 400
        except (TimeoutError, UpstreamError, OSError):
            return False
        finally:
            if conn is not None:
                conn.close()

    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "balance": self.cfg.balance,
            "circuit": self.breaker.view(),
            "bulkhead": self.bulkhead.view(),
            "retry_budget": round(self.budget.balance, 2),
            "targets": [t.view(now) for t in self.targets],
        }


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _key_function(spec: str) -> Callable[[EdgeContext], bytes]:
    if spec == "client_ip":
        return lambda ctx: ctx.client_ip.encode()
    if spec == "path":
        return lambda ctx: ctx.path.encode()
    kind, _, name = spec.partition(":")
    if kind == "header":
        header = name.lower().encode("latin-1")
        return lambda ctx: ctx.header(header) or b""
    param = name

    def from_param(ctx: EdgeContext) -> bytes:
        return (ctx.params or {}).get(param, "").encode()

    return from_param
