"""Search latency on the 100k-product seed, through a real gateway (``make bench-search``).

The database ``cygate_bench_search`` on the server of ``DATABASE_URL`` is migrated and, unless
it already holds the seed, filled with 100,000 products by the gateway's CLI (``cygate seed``,
random seed 7: :func:`benchmarks.macro.prepare.prepare_catalog`).
A gateway (``cygate serve``, 2 workers) is started on a free port; a query mix (exact words,
multi-word, description phrases, typos, no-hit, filtered, and pages 2-3 of paged queries) runs
from ``--concurrency`` client tasks, first with ``Cache-Control: no-store`` (every request
reaches PostgreSQL: the figure that matters) and then through the response cache.

Latency is measured by the client (httpx), so it includes the client's own overhead and the
loopback; percentiles per group and overall are printed as a table and written to
``benchmarks/results/search-latest.json``. The same mix, as request paths
(:func:`request_paths`), is the search load of the catalog-size curve
(``benchmarks.macro.curves``).

    python -m benchmarks.macro.search [--duration 20] [--concurrency 2] [--reseed]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx

from benchmarks.macro.prepare import prepare_catalog, with_database
from benchmarks.macro.procs import http_get, start_gateway

__all__ = ["MIX", "PAGED", "main", "request_paths", "top_category"]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "search-latest.json"
PRODUCTS = 100_000

# (group, query, extra parameters); categories and prices are filled in from the database
MIX: list[tuple[str, str, dict[str, Any]]] = [
    ("exact word", "headphones", {}),
    ("exact word", "walnut", {}),
    ("exact word", "keyboard", {}),
    ("exact word", "recycled", {}),
    ("multi-word", "wireless headphones", {}),
    ("multi-word", "vintage walnut lamp", {}),
    ("multi-word", "ergonomic chair", {}),
    ("multi-word", '"built to last" kettle', {}),
    ("typo", "wireles hedphones", {}),
    ("typo", "bambo chiar", {}),
    ("typo", "keybaord", {}),
    ("typo", "portabel speeker", {}),
    ("no hit", "qwxzvkj", {}),
    ("no hit", "submarine", {}),
    ("filtered", "lamp", {"min_price_cents": 1000, "max_price_cents": 50_000}),
    ("filtered", "steel", {"category": None}),
]
PAGED = ["lamp", "copper", "wireless headphones", "smart watch"]


async def _top_category(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(
            await conn.fetchval(
                "SELECT category_id FROM products GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
            )
        )
    finally:
        await conn.close()


def top_category(dsn: str) -> str:
    """The category with the most products (the mix's category filter)."""
    return asyncio.run(_top_category(dsn))


def request_paths(host: str, port: int, category: str, rounds: int = len(PAGED)) -> list[str]:
    """The mix as request paths for a load generator, ``rounds`` times round: each round is
    every query of :data:`MIX` and then one paged walk of :data:`PAGED` (page 1, and pages
    2-3 through the cursors a live gateway on ``host:port`` answers now)."""
    mix = [(q, {k: (category if v is None else v) for k, v in p.items()}) for _, q, p in MIX]
    paths: list[str] = []
    for n in range(rounds):
        paths += [f"/api/v1/search?{urlencode({'q': q, **extra})}" for q, extra in mix]
        params: dict[str, Any] = {"q": PAGED[n % len(PAGED)], "limit": 20}
        for _ in range(3):
            path = f"/api/v1/search?{urlencode(params)}"
            paths.append(path)
            resp = http_get(host, port, path, {"cache-control": "no-store"}, timeout=30)
            if resp.status != 200:
                raise RuntimeError(f"{path}: {resp.status} {resp.body[:200]!r}")
            cursor = json.loads(resp.body)["next_cursor"]
            if not cursor:
                break
            params = {**params, "cursor": cursor}
    return paths


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def _run(
    url: str, duration: float, concurrency: int, headers: dict[str, str], category: str
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = defaultdict(list)
    deadline = time.monotonic() + duration
    mix = [(g, q, {k: (category if v is None else v) for k, v in p.items()}) for g, q, p in MIX]

    async def one(c: httpx.AsyncClient, group: str, params: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        r = await c.get("/api/v1/search", params=params, headers=headers)
        elapsed = (time.perf_counter() - start) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"{params}: {r.status_code} {r.text[:200]}")
        samples[group].append(elapsed)
        return dict(r.json())

    async def worker(n: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            i = n
            while time.monotonic() < deadline:
                if i % (len(MIX) + 1) == len(MIX):  # one paged walk per round of the mix
                    q = PAGED[(i // (len(MIX) + 1)) % len(PAGED)]
                    page = await one(c, "paged: page 1", {"q": q, "limit": 20})
                    for _ in range(2):
                        if not page["next_cursor"]:
                            break
                        params = {"q": q, "limit": 20, "cursor": page["next_cursor"]}
                        page = await one(c, "paged: pages 2-3", params)
                else:
                    group, q, extra = mix[i % (len(MIX) + 1)]
                    await one(c, group, {"q": q, **extra})
                i += 1

    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return samples


def _table(title: str, samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    every = [v for vs in samples.values() for v in vs]
    for group, values in [*sorted(samples.items()), ("ALL", every)]:
        rows[group] = {
            "n": len(values),
            "p50": _pct(values, 50),
            "p90": _pct(values, 90),
            "p95": _pct(values, 95),
            "p99": _pct(values, 99),
            "mean": statistics.fmean(values),
        }
    print(f"\n### {title}\n")
    print("| group | n | p50 ms | p90 ms | p95 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for group, r in rows.items():
        print(
            f"| {group} | {r['n']:.0f} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p95']:.2f} "
            f"| {r['p99']:.2f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reseed", action="store_true")
    args = ap.parse_args(argv)
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = os.environ.get("CYGATE_BENCH_SEARCH_DB", "cygate_bench_search")
    dsn = with_database(server, name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYGATE_")}
    env.update(
        CYGATE_DATABASE_URL=dsn,
        CYGATE_REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        CYGATE_REDIS_PREFIX=f"cygate-bench-search-{os.getpid()}:",
        CYGATE_LOG_LEVEL="warning",
        # the query mix comes from one address: no default per-caller limit (explicitly)
        CYGATE_RATE_LIMIT_DEFAULT_CLASS="",
    )
    prepare_catalog(
        name,
        PRODUCTS,
        admin_dsn=server,
        reseed=args.reseed,
        cli_env=env,
        python=sys.executable,
        cwd=ROOT,
        mix_size=1,
    )
    info = {"category": top_category(dsn)}
    log = Path("/tmp") / f"cygate-bench-search-{os.getpid()}.log"
    proc, port = start_gateway(env, workers=args.workers, cwd=ROOT, log_path=log)
    with proc:
        url = f"http://127.0.0.1:{port}"
        cat = info["category"]
        asyncio.run(_run(url, 3, args.concurrency, {"cache-control": "no-store"}, cat))  # warm-up
        uncached = _run(url, args.duration, args.concurrency, {"cache-control": "no-store"}, cat)
        cold = _table(
            f"no-store (every request searches PostgreSQL), concurrency {args.concurrency}",
            asyncio.run(uncached),
        )
        cached = asyncio.run(_run(url, args.duration / 2, args.concurrency, {}, cat))
        warm = _table(f"through the response cache, concurrency {args.concurrency}", cached)
    RESULTS.write_text(
        json.dumps(
            {
                "products": PRODUCTS,
                "duration_s": args.duration,
                "concurrency": args.concurrency,
                "workers": args.workers,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "no_store": cold,
                "cached": warm,
            },
            indent=2,
        )
    )
    print(f"\nwritten {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
