"""Request metrics in Prometheus text format, correct when Granian runs several workers.

Each worker counts in plain dicts (no locks: one event loop per worker) and writes a snapshot of
its counters to ``<metrics_dir>/worker-<pid>.json`` once a second when they changed. A scrape,
answered by whichever worker the connection lands on, refreshes that worker's own file and sums
every file in the folder. Counters of a worker that died stay in its file, so totals never go
backwards. The folder is made fresh by ``cygate serve`` for each server run.

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
from bisect import bisect_left
from typing import Any

import orjson

__all__ = ["BUCKETS", "Metrics"]

log = logging.getLogger("cygate.metrics")

# Seconds. Fine-grained at the low end: the gateway's own work is measured in microseconds.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_NB = len(BUCKETS)


class Metrics:
    """Per-worker request counters and latency histograms, keyed by (route, method, status)."""

    __slots__ = ("_counters", "_dirty", "_path", "_series", "_task", "directory")

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = pathlib.Path(directory) if directory else None
        self._path = (
            self.directory / f"worker-{os.getpid()}.json" if self.directory is not None else None
        )
        # key -> [count, sum_seconds, bucket_0, ..., bucket_n-1, +Inf bucket]
        self._series: dict[tuple[str, str, int], list[float]] = {}
        # series text (``name{labels}``) -> value; summed over workers like the requests
        self._counters: dict[str, float] = {}
        self._dirty = False
        self._task: asyncio.Task[None] | None = None

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request. PERF: one dict lookup, one bisect, no allocation once warm."""
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0.0] * (_NB + 3)
        series[0] += 1
        series[1] += seconds
        series[2 + bisect_left(BUCKETS, seconds)] += 1
        self._dirty = True

    def inc(self, series: str, amount: float = 1.0) -> None:
        """Add to a counter; ``series`` is its exposition name with labels,
        ``cygate_cache_requests_total{result="hit-l1"}``. PERF: one dict update."""
        self._counters[series] = self._counters.get(series, 0.0) + amount
        self._dirty = True

    def counter(self, series: str) -> float:
        """This worker's value of a counter (tests and the lead's dashboards read the sum)."""
        return self._counters.get(series, 0.0)

    # -- sharing between workers --------------------------------------------------------------

    def snapshot(self) -> dict[str, list[float]]:
        out = {"\x1f".join((r, m, str(s))): v for (r, m, s), v in self._series.items()}
        # NOTE: counters share the file under a "#" prefix, which no route key starts with.
        out.update({"#" + name: [value] for name, value in self._counters.items()})
        return out

    def flush(self) -> None:
        """Write this worker's snapshot atomically (tmp file + rename)."""
        if self._path is None or self.directory is None:
            return
        self._dirty = False
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
        while True:
            await asyncio.sleep(interval)
            if self._dirty:
                try:
                    self.flush()
                except OSError as exc:  # a full disk must not take the worker down
                    log.warning("metrics snapshot not written: %s", exc)

    def start(self, interval: float = 1.0) -> None:
        if self.directory is not None and self._task is None:
            self.directory.mkdir(parents=True, exist_ok=True)
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
        """Every worker's series summed (this worker's counted live)."""
        return self._gather()[0]

    def _gather(self) -> tuple[dict[tuple[str, str, int], list[float]], dict[str, float]]:
        if self.directory is None:
            return {k: list(v) for k, v in self._series.items()}, dict(self._counters)
        self.flush()
        total: dict[tuple[str, str, int], list[float]] = {}
        counters: dict[str, float] = {}
        for path in self.directory.glob("worker-*.json"):
            try:
                data: dict[str, list[float]] = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # a file being replaced right now; its numbers arrive next scrape
            for raw_key, values in data.items():
                if raw_key.startswith("#"):
                    name = raw_key[1:]
                    counters[name] = counters.get(name, 0.0) + values[0]
                    continue
                route, method, status = raw_key.split("\x1f")
                key = (route, method, int(status))
                acc = total.get(key)
                if acc is None:
                    total[key] = list(values)
                else:
                    for i, v in enumerate(values):
                        acc[i] += v
        return total, counters

    def render(self, extra: dict[str, Any] | None = None) -> str:
        """Prometheus text exposition format 0.0.4."""
        series, counters = self._gather()
        lines = [
            "# HELP cygate_http_requests_total HTTP requests answered, by route and status.",
            "# TYPE cygate_http_requests_total counter",
        ]
        for (route, method, status), v in sorted(series.items()):
            lines.append(
                f'cygate_http_requests_total{{route="{_esc(route)}",method="{method}",'
                f'status="{status}"}} {int(v[0])}'
            )
        lines += [
            "# HELP cygate_http_request_duration_seconds Time from request to response end.",
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
        typed: set[str] = set()
        for name, value in sorted(counters.items()):
            base = name.split("{", 1)[0]
            if base not in typed:
                typed.add(base)
                lines.append(f"# TYPE {base} counter")
            lines.append(f"{name} {int(value) if value.is_integer() else value}")
        for name, value in (extra or {}).items():
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {value}")
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
