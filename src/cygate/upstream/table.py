"""The live route table: built from the gateway's own routes plus the route file, swapped into
the edge atomically, reloaded when the file changes or on SIGHUP.

A table is one compiled :class:`~cygate.core.router.Router` whose values are policies: the
gateway's own routes keep theirs (a ``local`` entry in the file may replace the policy of one of
them), and each file route gets a :class:`ProxyPolicy` that carries its
:class:`~cygate.upstream.proxy.ProxyRoute` (timeouts, header rules, its
:class:`~cygate.upstream.targets.Upstream` object). A request keeps
the policy it matched, so a swap never changes a request in flight, and an upstream whose
configuration did not change keeps its connections, breaker and counters across reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from cygate.core.router import RouteConflict, Router
from cygate.edge.context import RoutePolicy
from cygate.upstream.config import (
    LOCAL,
    RouteConfig,
    RouteFileError,
    ValidRouteFile,
    load_route_file,
    route_name,
)
from cygate.upstream.proxy import ProxyRoute
from cygate.upstream.resilience import CLOSED, HALF_OPEN, OPEN
from cygate.upstream.targets import Upstream

if TYPE_CHECKING:
    from cygate.edge.edge import Edge
    from cygate.infra.metrics import Metrics

__all__ = [
    "LocalRoute",
    "ProxyPolicy",
    "RouteTable",
    "RouteTableManager",
    "build_table",
]

log = logging.getLogger("cygate.routes")

LocalRoute = tuple[str | None, str, str, RoutePolicy]
"""``(host, method, pattern, policy)`` as ``Router.routes()`` lists them."""


class ProxyPolicy(RoutePolicy, frozen=True, kw_only=True):
    """A route policy whose target is an upstream; carries the route's proxy settings."""

    proxy: Any = None
    """The :class:`~cygate.upstream.proxy.ProxyRoute` (typed Any: msgspec never encodes it)."""


class RouteTable:
    """One immutable generation of the route table."""

    __slots__ = ("digest", "entries", "loaded_at", "router", "source", "upstreams", "version")

    def __init__(
        self,
        router: Router,
        upstreams: dict[str, Upstream],
        entries: list[dict[str, Any]],
        *,
        source: str,
        digest: str,
        version: int,
    ) -> None:
        self.router = router
        self.upstreams = upstreams
        self.entries = entries
        self.source = source
        self.digest = digest
        self.version = version
        self.loaded_at = time.time()

    def view(self) -> dict[str, Any]:
        """What ``GET /admin/routes`` shows (this worker's view of circuit state)."""
        return {
            "version": self.version,
            "source": self.source,
            "digest": self.digest,
            "loaded_at": self.loaded_at,
            "worker_pid": os.getpid(),
            "routes": self.entries,
            "upstreams": {name: up.view() for name, up in sorted(self.upstreams.items())},
        }

    def breaker_gauges(self) -> Iterator[tuple[str, tuple[str, ...], float]]:
        """``cygate_upstream_breaker_state`` of this worker: per upstream, 1 for its breaker's
        state and 0 for the other two (bounded: three series per upstream of the file)."""
        for name, up in sorted(self.upstreams.items()):
            current = up.breaker.state
            for state in (CLOSED, OPEN, HALF_OPEN):
                value = 1.0 if current == state else 0.0
                yield "cygate_upstream_breaker_state", (name, state), value


def build_table(
    local: Iterable[LocalRoute],
    valid: ValidRouteFile | None,
    *,
    max_body: int,
    previous: RouteTable | None = None,
    on_breaker_change: Callable[[str, str, str], None] | None = None,
) -> RouteTable:
    """Compile the gateway's own routes plus the file's into one table (raises
    :class:`RouteFileError` on a conflict). Upstreams whose configuration is unchanged are
    taken over from ``previous``."""
    local = list(local)
    overrides: dict[tuple[str, str], tuple[RouteConfig, str]] = {}
    upstreams: dict[str, Upstream] = {}
    entries: list[dict[str, Any]] = []
    if valid is not None:
        old = previous.upstreams if previous is not None else {}
        for name, cfg in valid.config.upstreams.items():
            kept = old.get(name)
            targets = valid.targets[name]
            if kept is not None and kept.cfg == cfg and [t.spec for t in kept.targets] == targets:
                upstreams[name] = kept
            else:
                upstreams[name] = Upstream(name, cfg, targets, on_breaker_change=on_breaker_change)
        for i, route in enumerate(valid.config.routes):
            if route.upstream == LOCAL:
                for method in route.methods:
                    key = (method, route.path)
                    if key in overrides:
                        raise RouteFileError(f"routes[{i}]: {method} {route.path} is listed twice")
                    overrides[key] = (route, f"routes[{i}]")
    router = Router()
    local_keys = set()
    for host, method, pattern, policy in local:
        local_keys.add((method, pattern))
        override = overrides.get((method, pattern)) if host is None else None
        if override is not None:
            route = override[0]
            policy = msgspec.structs.replace(
                policy,
                auth=route.auth,
                roles=frozenset(route.roles),
                rate_limit=route.rate_limit,
                cache=route.cache,
                max_body_bytes=route.max_body_bytes,
            )
        router.add(method, pattern, policy, host)
        entries.append(_entry(policy, host, method, pattern, LOCAL, override is not None))
    for (method, pattern), (_, where) in overrides.items():
        if (method, pattern) not in local_keys:
            raise RouteFileError(
                f"{where}: no local route {method} {pattern} to set a policy on "
                "(a local route must name one of the gateway's own routes exactly)"
            )
    if valid is not None:
        for i, route in enumerate(valid.config.routes):
            if route.upstream == LOCAL:
                continue
            name = route_name(route)
            proxy = ProxyRoute(route, upstreams[route.upstream], name=name, max_body=max_body)
            policy = ProxyPolicy(
                name=name,
                auth=route.auth,
                roles=frozenset(route.roles),
                rate_limit=route.rate_limit,
                cache=route.cache,
                target=route.upstream,
                max_body_bytes=route.max_body_bytes,
                proxy=proxy,
            )
            for method in route.methods:
                try:
                    router.add(method, route.path, policy, route.host)
                except RouteConflict as exc:
                    raise RouteFileError(f"routes[{i}]: {exc}") from None
            entries.append(
                _entry(policy, route.host, ",".join(route.methods), route.path, route.upstream)
                | {
                    "strip_prefix": route.strip_prefix,
                    "add_prefix": route.add_prefix,
                    "timeouts": {
                        "connect": proxy.connect_timeout,
                        "read": proxy.read_timeout,
                        "total": proxy.total_timeout,
                    },
                    "retries": proxy.retries,
                    "request_headers": msgspec.to_builtins(route.request_headers),
                    "response_headers": msgspec.to_builtins(route.response_headers),
                }
            )
    version = previous.version + 1 if previous is not None else 1
    return RouteTable(
        router,
        upstreams,
        entries,
        source=valid.source if valid is not None else "",
        digest=valid.digest if valid is not None else "",
        version=version,
    )


def _entry(
    policy: RoutePolicy,
    host: str | None,
    methods: str,
    pattern: str,
    upstream: str,
    overridden: bool = False,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": policy.name,
        "host": host,
        "methods": methods,
        "path": pattern,
        "upstream": upstream,
        "auth": policy.auth,
        "roles": sorted(policy.roles),
        "rate_limit": policy.rate_limit,
        "cache": policy.cache,
        "max_body_bytes": policy.max_body_bytes,
    }
    if overridden:
        entry["from_file"] = True
    return entry


class RouteTableManager:
    """Owns the live table of one worker: first load, reloads, the swap into the edge."""

    def __init__(
        self,
        edge: Edge,
        local: list[LocalRoute],
        *,
        path: str,
        max_body: int,
        on_breaker_change: Callable[[str, str, str], None] | None = None,
        metrics: Metrics | None = None,
        stamp_path: str = "",
    ) -> None:
        self.edge = edge
        self.local = local
        self.path = path
        self.max_body = max_body
        self.stamp_path = stamp_path
        self.on_breaker_change = on_breaker_change
        self.metrics = metrics
        self.table: RouteTable | None = None
        self.last_error: str | None = None
        self._seen: tuple[Any, ...] = ()
        self._watch_file = True
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.prepare: Callable[[RouteTable], Callable[[], None]] | None = None
        """Checks what a new table needs beside the router (the rate-limit plans of its
        routes): raises ValueError to refuse the table, else returns what to run right
        after the swap (no await between the two: no request sees one without the other)."""

    def load_initial(self) -> RouteTable:
        """Build the first table (blocking; raises :class:`RouteFileError` on a bad file)."""
        self._seen = self._signature()
        valid = load_route_file(self.path) if self.path else None
        table = build_table(
            self.local, valid, max_body=self.max_body, on_breaker_change=self.on_breaker_change
        )
        self._install(table)
        return table

    def _install(self, table: RouteTable) -> None:
        # NOTE: one attribute store: a request sees the old router or the new one, never a mix.
        self.edge.router = table.router
        self.table = table

    async def reload(self, reason: str = "requested") -> bool:
        """Load the file again; swap the new table in only if it is valid. Returns whether a
        new table went live; a bad file keeps the old one and logs why."""
        async with self._lock:
            self._seen = self._signature()
            old = self.table
            try:
                valid = await asyncio.to_thread(load_route_file, self.path) if self.path else None
                table = build_table(
                    self.local,
                    valid,
                    max_body=self.max_body,
                    previous=old,
                    on_breaker_change=self.on_breaker_change,
                )
                commit = self.prepare(table) if self.prepare is not None else None
            except (RouteFileError, RouteConflict, ValueError) as exc:
                self.last_error = str(exc)
                if self.metrics is not None:
                    self.metrics.inc("cygate_route_table_reloads_total", ("rejected",))
                log.error(
                    "route table NOT reloaded (%s); still serving version %s: %s",
                    reason,
                    old.version if old else "-",
                    exc,
                )
                return False
            for up in table.upstreams.values():
                if old is None or old.upstreams.get(up.name) is not up:
                    up.start()
            self._install(table)
            if commit is not None:
                commit()
            self.last_error = None
            if self.metrics is not None:
                self.metrics.inc("cygate_route_table_reloads_total", ("ok",))
            log.warning(
                "route table version %s live (%s): %d routes, %d upstreams",
                table.version,
                reason,
                len(table.entries),
                len(table.upstreams),
            )
            if old is not None:
                for name, up in old.upstreams.items():
                    if table.upstreams.get(name) is not up:
                        await up.close()  # in-flight requests finish on their connections
            return True

    def _signature(self) -> tuple[Any, ...]:
        sig: list[Any] = []
        for path in (self.path if self._watch_file else "", self.stamp_path):
            if not path:
                continue
            try:
                st = os.stat(path)
            except OSError:
                sig.append(None)
            else:
                sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sig)

    def start(self, interval: float) -> None:
        """Start the upstreams' background work; poll the file every ``interval`` seconds
        (0: not at all), and the SIGHUP stamp of ``cygate serve`` every second."""
        if self.table is not None:
            for up in self.table.upstreams.values():
                up.start()
        self._watch_file = interval > 0
        self._seen = self._signature()
        if (self._watch_file and self.path) or self.stamp_path:
            every = interval if self._watch_file else 1.0
            self._task = asyncio.get_running_loop().create_task(self._watch(every))

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._signature() != self._seen:
                try:
                    await self.reload("file changed")
                except Exception:  # never let the watcher die
                    log.exception("route table reload failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.table is not None:
            for up in self.table.upstreams.values():
                await up.close()

    def view(self) -> dict[str, Any]:
        out = self.table.view() if self.table is not None else {"routes": [], "upstreams": {}}
        out["last_reload_error"] = self.last_error
        return out

    def breaker_gauges(self) -> Iterator[tuple[str, tuple[str, ...], float]]:
        """The live table's :meth:`RouteTable.breaker_gauges` (a metrics gauge source)."""
        if self.table is not None:
            yield from self.table.breaker_gauges()
