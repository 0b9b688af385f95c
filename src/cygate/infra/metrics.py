"""Request metrics in Prometheus text format, correct when Granian runs several workers.

Each worker counts in plain dicts (no locks: one event loop per worker) and writes a snapshot of
its counters to ``<metrics_dir>/worker-<pid>.json`` once a second when they changed (the
event-loop lag histogram, observed by that once-a-second timer, changes every time). A scrape,
answered by whichever worker the connection lands on, refreshes that worker's own file and sums
every file in the folder. Counters of a worker that died stay in its file, so totals never go
backwards. The folder is made fresh by ``cygate serve`` for each server run.

Families of kind ``gauge`` in :data:`FAMILIES` are per-worker values read when the snapshot is
taken (from :meth:`Metrics.add_gauge_source`) and summed over the workers still alive: a dead
worker's file keeps its counters but no longer adds to a gauge. :data:`SCRAPE_GAUGES` are read by
the worker answering the scrape (pools, PostgreSQL and Redis reachability, the outbox backlog).

NOTE: what another worker counted in the last second may be missing from a scrape; Prometheus
scrapes every 15 s or so, and the next scrape includes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import tempfile
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from cygate.core.reqmetrics import BUCKETS, RequestRecorder, Tally

__all__ = ["BUCKETS", "FAMILIES", "REQUEST_FAMILIES", "SCRAPE_GAUGES", "Counter", "Metrics"]

log = logging.getLogger("cygate.metrics")

# BUCKETS (seconds) are the request series' (cygate.core.reqmetrics); histograms of FAMILIES
# use the same.
_NB = len(BUCKETS)

# Labelled series beside the request metrics: name -> (type, help, label names). Counters hold
# one number; histograms the same layout as the request series. Summed over workers like them.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "cygate_upstream_requests_total": (
        "counter",
        "Proxied requests by upstream, route and outcome (ok, a failure status, timeout, "
        "connect_error, reset_error, shed, circuit_open, ...).",
        ("upstream", "route", "outcome"),
    ),
    "cygate_upstream_request_duration_seconds": (
        "histogram",
        "Time in the proxy per request: queueing, connect, upstream, and body streaming.",
        ("upstream", "route"),
    ),
    "cygate_upstream_retries_total": (
        "counter",
        "Retries sent to an upstream (within the retry budget).",
        ("upstream", "route"),
    ),
    "cygate_upstream_shed_total": (
        "counter",
        "Requests refused without contacting the upstream: bulkhead full or circuit open.",
        ("upstream", "route", "reason"),
    ),
    "cygate_upstream_breaker_transitions_total": (
        "counter",
        "Circuit breaker state changes (per worker breakers, summed).",
        ("upstream", "from_state", "to_state"),
    ),
    "cygate_db_replica_reads_total": (
        "counter",
        "Reads sent to a PostgreSQL read replica: ok, or fallback (it failed; the primary served).",
        ("replica", "outcome"),
    ),
    "cygate_policy_reload_errors_total": (
        "counter",
        "Policy files that did not load on a reload (the previous policy set stays in force).",
        (),
    ),
    "cygate_policy_decisions_total": (
        "counter",
        "Attribute-based policy decisions of the edge's policy stage: allow or deny.",
        ("decision",),
    ),
    "cygate_worker_starts_total": (
        "counter",
        "Worker processes started in this server run; above the configured workers: respawns of "
        "workers that died (Granian's respawn_failed_workers).",
        (),
    ),
    "cygate_route_table_reloads_total": (
        "counter",
        "Route table reloads by result (ok, rejected).",
        ("result",),
    ),
    "cygate_ratelimit_decisions_total": (
        "counter",
        "Rate-limit decisions by limit: allowed, limited, and those taken without Redis "
        "(fail_open: served unchecked, fallback: decided locally, fail_closed: 503).",
        ("limit", "decision"),
    ),
    "cygate_ratelimit_keys": (
        "gauge",
        "Keys (callers) the rate-limit tables of a limit hold now, summed over the workers.",
        ("limit",),
    ),
    "cygate_jwt_verified_total": (
        "counter",
        "Access tokens verified in full (signature and claims), not answered from the "
        "verified-token cache.",
        (),
    ),
    "cygate_jwt_cache_tokens": (
        "gauge",
        "Verified tokens the workers' caches hold now (jwt_cache_size each at most).",
        (),
    ),
    "cygate_ratelimit_redis_calls_total": (
        "counter",
        "Calls of the rate-limit script in Redis, by limit (batched: one per lease).",
        ("limit",),
    ),
    "cygate_ratelimit_redis_round_trips_total": (
        "counter",
        "Round trips to Redis for rate-limit decisions (the decisions asked meanwhile go "
        "together in one).",
        (),
    ),
    "cygate_compression_total": (
        "counter",
        "Responses the edge sent compressed, by coding and whether the body was compressed "
        "for it (encoded) or a kept variant was sent (kept).",
        ("coding", "result"),
    ),
    "cygate_cache_requests_total": (
        "counter",
        "Cacheable requests by result: hit-l1, hit-l2, miss, stale, coalesced, bypass.",
        ("result",),
    ),
    "cygate_cache_not_modified_total": ("counter", "304 answers from cache entries.", ()),
    "cygate_cache_loads_total": ("counter", "Loader runs (misses that went to the app).", ()),
    "cygate_cache_lease_waits_total": (
        "counter",
        "Misses that waited for another instance's Redis lease.",
        (),
    ),
    "cygate_cache_stores_total": ("counter", "Entries stored (L1 and L2).", ()),
    "cygate_cache_invalidations_total": ("counter", "Invalidations applied here.", ()),
    "cygate_cache_l1_flushes_total": ("counter", "Whole-L1 flushes (lost subscription).", ()),
    "cygate_cache_subscriptions_total": ("counter", "Invalidation (re)subscriptions.", ()),
    "cygate_cache_l2_errors_total": ("counter", "Redis errors in the cache's L2.", ()),
    # -- events (docs/events.md) --
    "cygate_events_published_total": ("counter", "Outbox events the relay published.", ()),
    "cygate_events_relay_errors_total": (
        "counter",
        "Relay rounds that failed (Redis or PostgreSQL down); the rows wait.",
        ("cause",),
    ),
    "cygate_events_applied_total": (
        "counter",
        "Events a consumer applied (duplicates skipped are not counted).",
        ("consumer",),
    ),
    "cygate_events_dead_letters_total": (
        "counter",
        "Messages moved to the dead-letter stream.",
        ("consumer",),
    ),
    "cygate_events_lag_seconds": (
        "histogram",
        "From the outbox insert to the consumer's effect.",
        ("consumer",),
    ),
    # -- access log (docs/observability.md) --
    "cygate_access_log_lines_total": ("counter", "Access-log lines written.", ()),
    "cygate_access_log_dropped_total": (
        "counter",
        "Access-log lines dropped: the worker's queue was full (the log stream is slow).",
        (),
    ),
    # -- traces (docs/observability.md) --
    "cygate_trace_spans_dropped_total": (
        "counter",
        "Spans the OTLP exporter could not deliver (endpoint unreachable or refusing); the "
        "requests they describe were not affected.",
        (),
    ),
    # -- process health --
    "cygate_process_cpu_seconds_total": (
        "counter",
        "CPU time (user + system) of the worker processes of this server run, summed.",
        (),
    ),
    "cygate_event_loop_lag_seconds": (
        "histogram",
        "How late the workers' event loops ran a timer due every second (blocking work).",
        (),
    ),
    "cygate_upstream_breaker_state": (
        "gauge",
        "Workers whose circuit breaker to the upstream is in this state (closed, open, "
        "half_open); a breaker stays open until a request after its open time probes.",
        ("upstream", "state"),
    ),
}

REQUEST_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "cygate_http_requests_total": (
        "counter",
        "HTTP requests answered, by route and status.",
        ("route", "method", "status"),
    ),
    "cygate_http_request_duration_seconds": (
        "histogram",
        "Time from request to response end.",
        ("route", "method", "status"),
    ),
}
"""The request series (:mod:`cygate.core.reqmetrics`): the route label is the route's name
(``GET /api/v1/products/{product_id:uuid}``), never the raw path."""

SCRAPE_GAUGES: dict[str, str] = {
    "cygate_db_pool_size": "Connections in the answering worker's PostgreSQL pool.",
    "cygate_db_pool_idle": "Idle connections in the answering worker's PostgreSQL pool.",
    "cygate_db_pool_max": "The most connections a worker's PostgreSQL pool opens.",
    "cygate_postgres_up": "1 when PostgreSQL answered SELECT 1 within a second, else 0.",
    "cygate_redis_up": "1 when Redis answered PING within a second, else 0.",
    "cygate_events_outbox_pending": "Outbox rows not yet published (0 rows: no lag).",
    "cygate_events_outbox_lag_seconds": "Age of the oldest unpublished outbox row (0: none).",
    "cygate_cpu_cores": "CPU cores this process may run on.",
    "cygate_cache_l1_bytes": "Bytes held by the answering worker's L1 cache.",
    "cygate_cache_l1_entries": "Entries in the answering worker's L1 cache.",
    "cygate_cache_l1_evictions": "Evictions from the answering worker's L1 cache.",
    "cygate_cache_subscribed": "1 while the answering worker receives cache invalidations.",
}
"""Gauges read by the worker answering the scrape (``/metrics``'s ``extra``), name -> help."""

GaugeSource = Callable[[], Iterable[tuple[str, tuple[str, ...], float]]]
"""Yields (family, labels, value) of :data:`FAMILIES` gauges when a snapshot is taken."""
_FAMILY_MARK = "\x1e"  # snapshot keys of labelled families start with it


Counter = Tally
"""A counter of one of :data:`FAMILIES` bound to its labels, for hot paths (``core.reqmetrics``'s
``Tally``). PERF: the owner bumps ``counter.value += 1``: no call, no dict lookup. The snapshot
reads the bound counters beside the :meth:`Metrics.inc` series."""


class Metrics(RequestRecorder):
    """Per-worker request counters and latency histograms, keyed by (route, method, status).

    The request series and their ``observe``/``observe_since`` are the base class's
    (:mod:`cygate.core.reqmetrics`, compiled); the families and the sharing are here."""

    __slots__ = (
        "_bound",
        "_families",
        "_flushed_bound",
        "_gauge_sources",
        "_path",
        "_task",
        "_upstream",
        "directory",
    )

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.directory = pathlib.Path(directory) if directory else None
        self._path = (
            self.directory / f"worker-{os.getpid()}.json" if self.directory is not None else None
        )
        # (family, labels) -> [value] for counters, the request layout for histograms
        self._families: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        # (family, labels) -> a Counter its owner bumps directly (see Counter)
        self._bound: dict[tuple[str, tuple[str, ...]], Counter] = {}
        self._flushed_bound = 0.0  # sum of the bound counters at the last flush
        # (upstream, route, outcome) -> (its requests counter, its route's duration histogram)
        self._upstream: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._gauge_sources: list[GaugeSource] = []

    def add_gauge_source(self, source: GaugeSource) -> None:
        """Read ``source`` at every snapshot: it yields this worker's values of gauge families
        of :data:`FAMILIES` (summed over live workers at the scrape)."""
        self._gauge_sources.append(source)

    def _sampled(self) -> Iterable[tuple[tuple[str, tuple[str, ...]], list[float]]]:
        """The values read when a snapshot is taken: this process's CPU time, the gauges."""
        yield ("cygate_process_cpu_seconds_total", ()), [time.process_time()]
        for source in self._gauge_sources:
            for family, labels, value in source():
                yield (family, labels), [float(value)]

    def inc(self, family: str, labels: tuple[str, ...], value: float = 1.0) -> None:
        """Add to a counter of one of :data:`FAMILIES`."""
        key = (family, labels)
        series = self._families.get(key)
        if series is None:
            series = self._families[key] = [0.0]
        series[0] += value
        self._dirty = True

    def observe_family(self, family: str, labels: tuple[str, ...], seconds: float) -> None:
        """Add one observation to a histogram of one of :data:`FAMILIES`."""
        key = (family, labels)
        series = self._families.get(key)
        if series is None:
            series = self._families[key] = [0.0] * (_NB + 3)
        series[0] += 1
        series[1] += seconds
        series[2 + bisect_left(BUCKETS, seconds)] += 1
        self._dirty = True

    def counter(self, family: str, **labels: str) -> Counter:
        """The bound counter of ``family`` (one of :data:`FAMILIES`) with these labels."""
        names = FAMILIES[family][2]
        if set(labels) != set(names):
            raise ValueError(f"{family} takes labels {names}, not {tuple(labels)}")
        key = (family, tuple(labels[n] for n in names))
        existing = self._bound.get(key)
        if existing is None:
            existing = self._bound[key] = Counter()
        return existing

    def _bound_changed(self) -> bool:
        return sum(c.value for c in self._bound.values()) != self._flushed_bound

    # Upstream proxy (routing issue): thin names so the proxy reads well.

    def upstream_request(self, upstream: str, route: str, outcome: str, seconds: float) -> None:
        # PERF: one lookup finds both series (the same lists the families hold).
        key = (upstream, route, outcome)
        pair = self._upstream.get(key)
        if pair is None:
            count = self._families.setdefault(("cygate_upstream_requests_total", key), [0.0])
            hist = self._families.setdefault(
                ("cygate_upstream_request_duration_seconds", (upstream, route)), [0.0] * (_NB + 3)
            )
            pair = self._upstream[key] = (count, hist)
        count, hist = pair
        count[0] += 1
        hist[0] += 1
        hist[1] += seconds
        hist[2 + bisect_left(BUCKETS, seconds)] += 1
        self._dirty = True

    def upstream_retry(self, upstream: str, route: str) -> None:
        self.inc("cygate_upstream_retries_total", (upstream, route))

    def upstream_shed(self, upstream: str, route: str, reason: str) -> None:
        self.inc("cygate_upstream_shed_total", (upstream, route, reason))

    def breaker_transition(self, upstream: str, old: str, new: str) -> None:
        self.inc("cygate_upstream_breaker_transitions_total", (upstream, old, new))

    # -- sharing between workers --------------------------------------------------------------

    def snapshot(self) -> dict[str, list[float]]:
        out = {"\x1f".join((r, m, str(s))): v.as_list() for (r, m, s), v in self._series.items()}
        for (family, labels), values in self._families.items():
            out[_FAMILY_MARK + "\x1f".join((family, *labels))] = values
        for (family, labels), counter in self._bound.items():
            out[_FAMILY_MARK + "\x1f".join((family, *labels))] = [counter.value]
        for (family, labels), values in self._sampled():
            out[_FAMILY_MARK + "\x1f".join((family, *labels))] = values
        return out

    def flush(self) -> None:
        """Write this worker's snapshot atomically (tmp file + rename)."""
        if self._path is None or self.directory is None:
            return
        self._dirty = False
        self._flushed_bound = sum(c.value for c in self._bound.values())
        data = orjson.dumps(self.snapshot())
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def _flush_loop(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            # How late the timer ran: time the loop spent on something that did not yield.
            self.observe_family("cygate_event_loop_lag_seconds", (), max(0.0, loop.time() - due))
            if self._dirty or self._bound_changed():
                try:
                    self.flush()
                except OSError as exc:  # a full disk must not take the worker down
                    log.warning("metrics snapshot not written: %s", exc)

    def start(self, interval: float = 1.0) -> None:
        if self.directory is not None and self._task is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                self.flush()  # at once: a worker that dies in its first second still counts
            except OSError as exc:
                log.warning("metrics snapshot not written: %s", exc)
            self._task = asyncio.get_running_loop().create_task(self._flush_loop(interval))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(OSError):
            self.flush()

    def collect(self) -> dict[tuple[str, str, int], list[float]]:
        """Every worker's request series summed (this worker's counted live)."""
        return self._collect()[0]

    def _collect(
        self,
    ) -> tuple[
        dict[tuple[str, str, int], list[float]], dict[tuple[str, tuple[str, ...]], list[float]]
    ]:
        total: dict[tuple[str, str, int], list[float]] = {}
        families: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        if self.directory is None:
            for k, v in self._families.items():
                _add(families, k, v)
            for k, counter in self._bound.items():
                _add(families, k, [counter.value])
            for k, values in self._sampled():
                _add(families, k, values)
            return {k: v.as_list() for k, v in self._series.items()}, families
        self.flush()
        for path in self.directory.glob("worker-*.json"):
            try:
                data: dict[str, list[float]] = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # a file being replaced right now; its numbers arrive next scrape
            alive = path == self._path or _alive(path)
            for raw_key, values in data.items():
                if raw_key.startswith(_FAMILY_MARK):
                    family, *labels = raw_key[1:].split("\x1f")
                    if not alive and FAMILIES.get(family, ("counter",))[0] == "gauge":
                        continue  # a dead worker's gauges are gone with it
                    _add(families, (family, tuple(labels)), values)
                    continue
                route, method, status = raw_key.split("\x1f")
                _add(total, (route, method, int(status)), values)
        return total, families

    def render(self, extra: dict[str, Any] | None = None) -> str:
        """Prometheus text exposition format 0.0.4."""
        series, families = self._collect()
        lines = [
            "# HELP cygate_http_requests_total "
            + REQUEST_FAMILIES["cygate_http_requests_total"][1],
            "# TYPE cygate_http_requests_total counter",
        ]
        for (route, method, status), v in sorted(series.items()):
            lines.append(
                f'cygate_http_requests_total{{route="{_esc(route)}",method="{method}",'
                f'status="{status}"}} {int(v[0])}'
            )
        lines += [
            "# HELP cygate_http_request_duration_seconds "
            + REQUEST_FAMILIES["cygate_http_request_duration_seconds"][1],
            "# TYPE cygate_http_request_duration_seconds histogram",
        ]
        for (route, method, status), v in sorted(series.items()):
            labels = f'route="{_esc(route)}",method="{method}",status="{status}"'
            cumulative = 0.0
            for i, bound in enumerate(BUCKETS):
                cumulative += v[2 + i]
                lines.append(
                    f'cygate_http_request_duration_seconds_bucket{{{labels},le="{bound}"}} '
                    f"{int(cumulative)}"
                )
            lines.append(
                f'cygate_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {int(v[0])}'
            )
            lines.append(f"cygate_http_request_duration_seconds_sum{{{labels}}} {v[1]:.6f}")
            lines.append(f"cygate_http_request_duration_seconds_count{{{labels}}} {int(v[0])}")
        lines += _render_families(families)
        for name, value in (extra or {}).items():
            if name in SCRAPE_GAUGES:
                lines.append(f"# HELP {name} {SCRAPE_GAUGES[name]}")
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {_num(value)}")
        return "\n".join(lines) + "\n"


def _alive(path: pathlib.Path) -> bool:
    """Does the worker that wrote ``worker-<pid>.json`` still run? (Other names: assumed so.)"""
    pid = path.stem.removeprefix("worker-")
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _num(value: float) -> str:
    """A sample value: integers without a fraction (as the counters always were)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _add(acc: dict[Any, list[float]], key: Any, values: list[float]) -> None:
    have = acc.get(key)
    if have is None:
        acc[key] = list(values)
    else:
        for i, v in enumerate(values):
            have[i] += v


def _render_families(families: dict[tuple[str, tuple[str, ...]], list[float]]) -> list[str]:
    lines: list[str] = []
    by_family: dict[str, list[tuple[tuple[str, ...], list[float]]]] = {}
    for (family, labels), values in sorted(families.items()):
        by_family.setdefault(family, []).append((labels, values))
    for family, items in by_family.items():
        kind, text, names = FAMILIES.get(family, ("counter", family, ()))
        lines.append(f"# HELP {family} {text}")
        lines.append(f"# TYPE {family} {kind}")
        for labels, v in items:
            label_text = ",".join(
                f'{n}="{_esc(value)}"' for n, value in zip(names, labels, strict=False)
            )
            if kind != "histogram":
                sample = f"{family}{{{label_text}}}" if label_text else family
                lines.append(f"{sample} {_num(v[0])}")
                continue
            base = family
            le_prefix = label_text + "," if label_text else ""
            plain = f"{{{label_text}}}" if label_text else ""
            cumulative = 0.0
            for i, bound in enumerate(BUCKETS):
                cumulative += v[2 + i]
                lines.append(f'{base}_bucket{{{le_prefix}le="{bound}"}} {int(cumulative)}')
            lines.append(f'{base}_bucket{{{le_prefix}le="+Inf"}} {int(v[0])}')
            lines.append(f"{base}_sum{plain} {v[1]:.6f}")
            lines.append(f"{base}_count{plain} {int(v[0])}")
    return lines


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
