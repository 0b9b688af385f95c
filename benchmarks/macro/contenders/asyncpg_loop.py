"""``asyncpg-loop``: not an HTTP server. One Python process (uvloop) with an asyncpg pool runs the
product query as fast as it can from N concurrent tasks, over the benchmark's id mix.

What it measures: the floor for the uncached product read in Python, the database round trip
with no HTTP and no framework. It times itself: queries/s, latency p50/p99 from its own clock,
and its own process CPU per query (``getrusage``, all threads).

Protocol with the harness (stdout, one line each, flushed):

- ``--check ID``: prints the product's JSON object for ID and exits.
- otherwise: ``@@measure start`` and ``@@measure end`` around the measured phase (the harness
  reads PostgreSQL's CPU at those moments), then ``@@result {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
from uuid import UUID

import uvloop

from ._product import PRODUCT_SQL, create_pool, product_dict

__all__ = ["main"]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile in milliseconds."""
    if not sorted_ns:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


def _read_lines(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _hammer(
    pool: object, ids: list[UUID], start: int, seconds: float, latencies: list[int] | None
) -> int:
    """Run the query back to back until the deadline; return the number of errors."""
    fetchrow = pool.fetchrow  # type: ignore[attr-defined]
    clock = time.perf_counter_ns
    deadline = time.monotonic() + seconds
    errors = 0
    i = start
    n = len(ids)
    while time.monotonic() < deadline:
        i = (i + 1) % n
        t0 = clock()
        try:
            row = await fetchrow(PRODUCT_SQL, ids[i])
        except Exception:  # a failed query is counted, and the run goes on
            errors += 1
            continue
        if row is None:
            errors += 1
        elif latencies is not None:
            latencies.append(clock() - t0)
    return errors


async def _run(args: argparse.Namespace) -> None:
    pool = await create_pool()
    try:
        if args.check:
            row = await pool.fetchrow(PRODUCT_SQL, UUID(args.check))
            _say(json.dumps(product_dict(row)) if row is not None else "null")
            return

        ids = [UUID(line) for line in _read_lines(args.ids_file)]
        stride = max(1, len(ids) // args.concurrency)

        if args.warmup > 0:
            await asyncio.gather(
                *(
                    _hammer(pool, ids, k * stride, args.warmup, None)
                    for k in range(args.concurrency)
                )
            )

        per_task: list[list[int]] = [[] for _ in range(args.concurrency)]
        _say("@@measure start")
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        errors = await asyncio.gather(
            *(
                _hammer(pool, ids, k * stride, args.duration, per_task[k])
                for k in range(args.concurrency)
            )
        )
        elapsed, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        _say("@@measure end")

        latencies = sorted(ns for task in per_task for ns in task)
        done = len(latencies)
        result = {
            "requests": done,
            "errors": sum(errors),
            "duration_s": elapsed,
            "rps": done / elapsed,
            "p50_ms": _percentile(latencies, 50),
            "p90_ms": _percentile(latencies, 90),
            "p99_ms": _percentile(latencies, 99),
            "cpu_s": cpu,
            "cpu_us_per_req": cpu / done * 1e6 if done else math.nan,
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        _say("@@result " + json.dumps(result))
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids-file", help="product ids, one per line")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--check", metavar="ID", help="print one product's JSON and exit")
    args = parser.parse_args(argv)
    if not args.check and not args.ids_file:
        parser.error("--ids-file is required unless --check is given")
    uvloop.run(_run(args))


if __name__ == "__main__":
    main()
