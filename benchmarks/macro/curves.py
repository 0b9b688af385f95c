"""How cost grows: with the catalog's size, and with concurrent buyers of one product.

From the repository root (``make bench-catalog``, ``make bench-buyers``)::

    .venv/bin/python -m benchmarks.macro.curves catalog [--sizes 10k,100k,1m] [--duration 10]
        [--rate 400] [--search-rate 40] [--workers 2] [--rounds 1] [--reseed]
    .venv/bin/python -m benchmarks.macro.curves buyers [--connections 1,2,4,8,16,32,64]
        [--duration 6] [--workers 2] [--rounds 1]

**catalog**: for each size a database of its own on ``DATABASE_URL``'s server
(``cygate_curve_10k``, ...), migrated and seeded by the gateway's CLI and reused while it holds
that many products (``--reseed`` fills it again; :func:`benchmarks.macro.prepare.prepare_catalog`).
All databases are filled first; then, one size after another, a gateway of its own
(``cygate serve``, the response cache off, so every request reaches PostgreSQL) is measured
on: the product read ``GET /api/v1/products/{id}`` at a fixed offered rate (the open-loop
generator, latency from each request's due time) with ids drawn uniformly from the whole
catalog, the same read closed-loop under wrk (req/s), and search at a fixed rate with the
query mix of ``benchmarks.macro.search``. Server CPU per request (the gateway's process tree)
and PostgreSQL's (the backends connected to that size's database:
:class:`benchmarks.macro.prepare.DatabaseCpu`, so other databases on a shared server do not
count) come from ``/proc`` around each window; every figure is also given as a ratio to the
smallest size. With ``--rounds N`` the sizes are measured N times in turn (each round
starting at another size) and each figure is the median of its rounds.

**buyers**: order placement at each connection count, every buyer ordering the same product
against each ordering a product of its own (:func:`benchmarks.macro.orders.buyers_curve`).

Each writes ``benchmarks/results/curves-<curve>-latest.json`` and a PNG beside it, and prints
a Markdown table. Bad arguments, or a PostgreSQL that does not answer, are one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg

from benchmarks.macro import orders
from benchmarks.macro.load import (
    build_fixedrate,
    ensure_wrk,
    run_fixedrate,
    run_wrk,
    write_lua,
    write_paths,
)
from benchmarks.macro.prepare import (
    BenchDatabase,
    DatabaseCpu,
    PrepareError,
    prepare_catalog,
    with_database,
)
from benchmarks.macro.procs import start_gateway, tree_cpu_seconds
from benchmarks.macro.report import Panel, machine_line, machine_summary, plot_curves
from benchmarks.macro.search import request_paths, top_category

__all__ = ["UsageError", "main", "median_row", "parse_counts", "parse_sizes"]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
HOST = "127.0.0.1"
T = TypeVar("T")


class UsageError(Exception):
    """A bad argument: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# --------------------------------------------------------------------------- arguments

_SIZE = re.compile(r"(\d+)([km]?)")


def parse_sizes(text: str) -> list[int]:
    """``10k,100k,1m`` (or plain counts) → ascending distinct product counts, each ≥ 1."""
    sizes = []
    for part in text.split(","):
        m = _SIZE.fullmatch(part.strip().lower())
        if m is None:
            raise UsageError(f"--sizes: {part.strip()!r} is not a count like 10000, 10k or 1m")
        size = int(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2)]
        if size < 1:
            raise UsageError(f"--sizes: {part.strip()!r} must be at least 1")
        sizes.append(size)
    return sorted(set(sizes))


def parse_counts(text: str) -> list[int]:
    """``1,2,4`` → ascending distinct connection counts, each 1 to 512."""
    counts = []
    for part in text.split(","):
        try:
            n = int(part.strip())
        except ValueError:
            raise UsageError(f"--connections: {part.strip()!r} is not a whole number") from None
        if not 1 <= n <= 512:
            raise UsageError(f"--connections: {n} must be 1 to 512")
        counts.append(n)
    return sorted(set(counts))


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def _label(size: int) -> str:
    if size % 1_000_000 == 0:
        return f"{size // 1_000_000}m"
    return f"{size // 1000}k" if size % 1000 == 0 else str(size)


def _check_postgres(admin_dsn: str) -> None:
    async def probe() -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise UsageError(f"cannot reach PostgreSQL at DATABASE_URL ({exc})") from None


def _uptime() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


# --------------------------------------------------------------------------- catalog


def _gateway_env(dsn: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYGATE_")}
    if os.environ.get("CYGATE_NO_EXTENSIONS"):
        env["CYGATE_NO_EXTENSIONS"] = "1"
    env.update(
        CYGATE_DATABASE_URL=dsn,
        CYGATE_REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        CYGATE_REDIS_PREFIX=prefix,
        CYGATE_LOG_LEVEL="warning",
        # The uncached read and search, as the macro harness's `cygate` contender: every
        # request reaches PostgreSQL.
        CYGATE_CACHE_ENABLED="false",
        # NOTE: the load comes from one address: no default per-caller limit (explicitly).
        CYGATE_RATE_LIMIT_DEFAULT_CLASS="",
    )
    return env


def _windowed(server_pid: int, pg: DatabaseCpu, run: Callable[[], T]) -> tuple[T, float, float]:
    """``run()`` with the CPU seconds spent by the gateway's process tree and by PostgreSQL
    on the measured database."""
    asyncio.run(pg.start())
    cpu0 = tree_cpu_seconds(server_pid)
    result = run()
    cpu = tree_cpu_seconds(server_pid) - cpu0
    return result, cpu, asyncio.run(pg.stop())


def _open_loop(result: Any, cpu: float, pg: float) -> dict[str, Any]:
    served = max(result.requests, 1)
    return {
        "rate": result.rate,
        "requests": result.requests,
        "achieved_rps": result.achieved_rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "p999_ms": result.p999_ms,
        "errors": result.errors,
        "late": result.late,
        "cpu_us_per_req": cpu / served * 1e6,
        "pg_cpu_us_per_req": pg / served * 1e6,
    }


def _database_info(dsn: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return {
                "database_mib": await conn.fetchval("SELECT pg_database_size(current_database())")
                / 2**20,
                "shared_buffers": await conn.fetchval("SHOW shared_buffers"),
            }
        finally:
            await conn.close()

    return asyncio.run(read())


def measure_size(
    db: BenchDatabase, args: argparse.Namespace, tools: dict[str, str]
) -> dict[str, Any]:
    """One size: a gateway on its database, then the product read (open loop, then wrk) and
    search (open loop), each window with the gateway's and PostgreSQL's CPU."""
    env = _gateway_env(db.dsn, f"cygate-curves-{os.getpid()}-{db.name}:")
    work = Path(tools["workdir"])
    log = work / f"{db.name}.log"
    server, port = start_gateway(env, workers=args.workers, cwd=ROOT, log_path=log, host=HOST)
    url = f"http://{HOST}:{port}"
    with server:
        ids = db.product_ids
        products = write_paths(
            work / f"{db.name}-products.txt", [f"/api/v1/products/{i}" for i in ids]
        )
        lua = write_lua(work / f"{db.name}.lua", cycle_prefix="/api/v1/products/", ids=ids)
        category = top_category(db.dsn)
        searches = write_paths(work / f"{db.name}-search.txt", request_paths(HOST, port, category))
        # Warm-up: connections, prepared statements, the interpreter's caches (not the data:
        # the measured ids are drawn over the whole catalog).
        warm = min(2.0, args.duration)
        run_wrk(tools["wrk"], url + "/", lua, connections=args.connections, duration=warm)
        run_fixedrate(
            tools["fixedrate"],
            url + "/",
            connections=4,
            rate=args.search_rate,
            duration=warm,
            warmup=0.5,
            request_file=searches,
        )
        pg = DatabaseCpu(db.dsn)
        read = _open_loop(
            *_windowed(
                server.pid,
                pg,
                lambda: run_fixedrate(
                    tools["fixedrate"],
                    url + "/",
                    connections=args.connections,
                    rate=args.rate,
                    duration=args.duration,
                    request_file=products,
                ),
            )
        )
        wrk, cpu, pg_cpu = _windowed(
            server.pid,
            pg,
            lambda: run_wrk(
                tools["wrk"], url + "/", lua, connections=args.connections, duration=args.duration
            ),
        )
        closed = {
            "rps": wrk.rps,
            "requests": wrk.requests,
            "p50_ms": wrk.p50_ms,
            "p99_ms": wrk.p99_ms,
            "errors": wrk.errors,
            "cpu_us_per_req": cpu / max(wrk.requests, 1) * 1e6,
            "pg_cpu_us_per_req": pg_cpu / max(wrk.requests, 1) * 1e6,
        }
        search = _open_loop(
            *_windowed(
                server.pid,
                pg,
                lambda: run_fixedrate(
                    tools["fixedrate"],
                    url + "/",
                    connections=args.search_connections,
                    rate=args.search_rate,
                    duration=args.duration,
                    request_file=searches,
                ),
            )
        )
    return {
        "products": db.product_count,
        "database": db.name,
        "ids": len(ids),
        **_database_info(db.dsn),
        "read_open_loop": read,
        "read_closed_loop": closed,
        "search_open_loop": search,
        "load_after": _uptime(),
    }


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One size's rounds as one row: every figure of every window the median of the rounds'
    (the rounds themselves kept under ``rounds``)."""
    row = dict(runs[-1])
    for key, value in runs[0].items():
        if isinstance(value, dict):
            row[key] = {
                f: statistics.median(r[key][f] for r in runs) if isinstance(v, int | float) else v
                for f, v in value.items()
            }
    row["rounds"] = runs if len(runs) > 1 else []
    return row


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def catalog_table(rows: list[dict[str, Any]]) -> str:
    """One line per size and workload, with each figure's ratio to the smallest size."""
    base = rows[0]
    lines = [
        "| products | workload | p50 ms | p99 ms | req/s | CPU µs/req | PG µs/req "
        "| ÷ smallest: p99 | req/s | CPU | PG |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        for key, what, rate in (
            ("read_open_loop", "product read, fixed rate", "achieved_rps"),
            ("read_closed_loop", "product read, wrk", "rps"),
            ("search_open_loop", "search, fixed rate", "achieved_rps"),
        ):
            r, b = row[key], base[key]
            lines.append(
                f"| {row['products']:,} | {what} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r[rate]:,.0f} | {r['cpu_us_per_req']:.0f} | {r['pg_cpu_us_per_req']:.0f} | "
                f"{_ratio(r['p99_ms'], b['p99_ms']):.2f}x | "
                f"{_ratio(r[rate], b[rate]):.2f}x | "
                f"{_ratio(r['cpu_us_per_req'], b['cpu_us_per_req']):.2f}x | "
                f"{_ratio(r['pg_cpu_us_per_req'], b['pg_cpu_us_per_req']):.2f}x |"
            )
    return "\n".join(lines)


def catalog_goals(rows: list[dict[str, Any]]) -> list[str]:
    """The goals at the largest size: uncached read p99 within 1.5x of the smallest size's,
    search p99 under 50 ms."""
    first, last = rows[0], rows[-1]
    ratio = _ratio(last["read_open_loop"]["p99_ms"], first["read_open_loop"]["p99_ms"])
    search = last["search_open_loop"]["p99_ms"]
    return [
        f"uncached product read p99 at {last['products']:,} ÷ at {first['products']:,}: "
        f"{ratio:.2f}x (goal ≤ 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})",
        f"search p99 at {last['products']:,}: {search:.1f} ms "
        f"(goal < 50 ms: {'met' if search < 50 else 'NOT met'})",
    ]


def catalog_chart(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    x = [float(r["products"]) for r in rows]

    def col(key: str, field: str) -> list[float]:
        return [float(r[key][field]) for r in rows]

    return plot_curves(
        x,
        [
            Panel(
                "ms (fixed rate, from due time)",
                {
                    "read p50": col("read_open_loop", "p50_ms"),
                    "read p99": col("read_open_loop", "p99_ms"),
                    "search p50": col("search_open_loop", "p50_ms"),
                    "search p99": col("search_open_loop", "p99_ms"),
                },
                log_y=True,
            ),
            Panel("req/s (product read, wrk)", {"req/s": col("read_closed_loop", "rps")}),
            Panel(
                "CPU µs / request",
                {
                    "read: gateway": col("read_open_loop", "cpu_us_per_req"),
                    "read: PostgreSQL": col("read_open_loop", "pg_cpu_us_per_req"),
                    "search: gateway": col("search_open_loop", "cpu_us_per_req"),
                    "search: PostgreSQL": col("search_open_loop", "pg_cpu_us_per_req"),
                },
                log_y=True,
            ),
        ],
        path,
        title=title,
        xlabel="products in the catalog",
    )


def write_record(args: argparse.Namespace, machine: dict[str, Any], data: dict[str, Any]) -> Path:
    """``curves-<curve>-latest.json`` in ``--results``: ``data`` with the command, the
    machine, its load at the end and the settings."""
    out: Path = args.results / f"curves-{args.curve}-latest.json"
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m benchmarks.macro.curves", args.curve, *args.argv]),
        "machine": machine,
        "load_at_end": _uptime(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("run", "argv")},
        **data,
        "compiled": not os.environ.get("CYGATE_NO_EXTENSIONS"),
    }
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out


def run_catalog(args: argparse.Namespace, admin_dsn: str) -> int:
    sizes = parse_sizes(args.sizes)
    _check_postgres(admin_dsn)
    machine = machine_summary()
    print(f"{machine_line(machine)}; {_uptime()}", flush=True)
    dbs = []
    for size in sizes:
        name = f"{args.db_prefix}{_label(size)}"
        env = _gateway_env(with_database(admin_dsn, name), "cygate-curves-seed:")
        started = time.monotonic()
        dbs.append(
            prepare_catalog(
                name,
                size,
                admin_dsn=admin_dsn,
                reseed=args.reseed,
                cli_env=env,
                python=sys.executable,
                cwd=ROOT,
                mix_size=args.ids,
            )
        )
        print(f"  {name} ready in {time.monotonic() - started:.0f} s", flush=True)
    runs: list[list[dict[str, Any]]] = [[] for _ in dbs]
    with tempfile.TemporaryDirectory(prefix="cygate-curves-") as tmp:
        tools = {"workdir": tmp, "wrk": ensure_wrk(), "fixedrate": build_fixedrate(Path(tmp))}
        for n in range(args.rounds):
            # NOTE: each round starts at another size, so none always runs first or last.
            for i in [(n + k) % len(dbs) for k in range(len(dbs))]:
                db = dbs[i]
                print(f"round {n + 1}: {db.product_count:,} products ({_uptime()}) ...", flush=True)
                runs[i].append(measure_size(db, args, tools))
    rows = [median_row(r) for r in runs]
    table = catalog_table(rows)
    goals = catalog_goals(rows)
    print(f"\n{table}\n")
    print("\n".join(goals))
    args.results.mkdir(parents=True, exist_ok=True)
    png = catalog_chart(
        rows,
        args.results / "curves-catalog-latest.png",
        f"cygate: cost against catalog size "
        f"(uncached; {args.workers} workers; {machine['cpu_model']})",
    )
    out = write_record(args, machine, {"sizes": rows, "goals": goals})
    print(f"written {out}, {png}")
    return 0


# --------------------------------------------------------------------------- buyers


def median_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (mode, connections) step's rounds as one: numbers the median of the rounds',
    ``stock_ok`` only when every round's was, in the order the steps first ran."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for step in steps:
        groups.setdefault((step["mode"], step["connections"]), []).append(step)
    out = []
    for group in groups.values():
        row = median_row([{"step": g} for g in group])["step"]
        row.update(mode=group[0]["mode"], connections=group[0]["connections"])
        row["stock_ok"] = all(g["stock_ok"] for g in group)
        row["rounds"] = len(group)
        out.append(row)
    return out


def buyers_table(steps: list[dict[str, Any]]) -> str:
    """Per connection count: the hot product against distinct products."""
    lines = [
        "| connections | buyers of | orders/s | p50 ms | p99 ms | CPU µs/order | PG µs/order "
        "| orders/s ÷ distinct | stock taken = ordered |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    distinct = {s["connections"]: s for s in steps if s["mode"] == "distinct"}
    for s in steps:
        other = distinct.get(s["connections"], s)
        lines.append(
            f"| {s['connections']} | {'one product' if s['mode'] == 'hot' else 'own product'} | "
            f"{s['orders_per_s']:,.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
            f"{s['server_cpu_us_per_order']:.0f} | {s['postgres_cpu_us_per_order']:.0f} | "
            f"{_ratio(s['orders_per_s'], other['orders_per_s']):.2f}x | "
            f"{'yes' if s['stock_ok'] else 'NO'} |"
        )
    return "\n".join(lines)


def buyers_chart(steps: list[dict[str, Any]], path: Path, title: str) -> Path:
    counts = sorted({s["connections"] for s in steps})

    def col(mode: str, field: str) -> list[float]:
        by = {s["connections"]: s for s in steps if s["mode"] == mode}
        return [float(by[c][field]) if c in by else math.nan for c in counts]

    return plot_curves(
        [float(c) for c in counts],
        [
            Panel(
                "orders / s",
                {
                    "one product": col("hot", "orders_per_s"),
                    "own product each": col("distinct", "orders_per_s"),
                },
            ),
            Panel(
                "p99 ms",
                {
                    "one product": col("hot", "p99_ms"),
                    "own product each": col("distinct", "p99_ms"),
                },
                log_y=True,
            ),
            Panel(
                "CPU µs / order",
                {
                    "gateway, one product": col("hot", "server_cpu_us_per_order"),
                    "gateway, own product": col("distinct", "server_cpu_us_per_order"),
                    "PostgreSQL, one product": col("hot", "postgres_cpu_us_per_order"),
                    "PostgreSQL, own product": col("distinct", "postgres_cpu_us_per_order"),
                },
            ),
        ],
        path,
        title=title,
        xlabel="concurrent buyers (connections)",
    )


def run_buyers(args: argparse.Namespace, admin_dsn: str) -> int:
    counts = parse_counts(args.connections)
    _check_postgres(admin_dsn)
    machine = machine_summary()
    print(f"{machine_line(machine)}; {_uptime()}", flush=True)
    curve = orders.buyers_curve(
        counts, args.duration, args.workers, keep_db=args.keep_db, rounds=args.rounds
    )
    steps = median_steps(curve["steps"])
    table = buyers_table(steps)
    print(f"\n{table}\n")
    print("checks over the whole run", json.dumps(curve["checks"]))
    print("zero lost or duplicated orders, stock taken = ordered:", "yes" if curve["ok"] else "NO")
    args.results.mkdir(parents=True, exist_ok=True)
    png = buyers_chart(
        steps,
        args.results / "curves-buyers-latest.png",
        f"cygate: order placement, buyers of one product vs of their own "
        f"({args.workers} workers; {machine['cpu_model']})",
    )
    out = write_record(args, machine, {**curve, "medians": steps})
    print(f"written {out}, {png}")
    return 0 if curve["ok"] else 1


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m benchmarks.macro.curves", description=__doc__.split("\n", 1)[0])
    sub = ap.add_subparsers(dest="curve", required=True, parser_class=_Parser)
    cat = sub.add_parser("catalog", help="cost against catalog size")
    cat.add_argument("--sizes", default="10k,100k,1m", help="product counts (10k, 1m, 2500)")
    cat.add_argument("--duration", type=_positive(float), default=10.0, help="s per window")
    cat.add_argument(
        "--rate", type=_positive(float), default=400.0, help="product reads / s offered (open loop)"
    )
    cat.add_argument(
        "--search-rate",
        type=_positive(float),
        default=40.0,
        help="searches / s offered (open loop)",
    )
    cat.add_argument("--connections", type=_positive(int), default=16)
    cat.add_argument("--search-connections", type=_positive(int), default=8)
    cat.add_argument("--workers", type=_positive(int), default=2, help="Granian workers")
    cat.add_argument(
        "--ids",
        type=_positive(int),
        default=20_000,
        help="product ids drawn uniformly from the catalog (the read's spread)",
    )
    cat.add_argument(
        "--rounds",
        type=_positive(int),
        default=1,
        help="measure every size this many times in turn; figures are medians",
    )
    cat.add_argument("--reseed", action="store_true", help="fill every database again")
    cat.add_argument("--db-prefix", default="cygate_curve_", help="database name before the size")
    cat.add_argument("--results", type=Path, default=RESULTS, help="where JSON and PNG go")
    cat.set_defaults(run=run_catalog)
    buy = sub.add_parser("buyers", help="order placement against concurrent buyers of one product")
    buy.add_argument("--connections", default="1,2,4,8,16,32,64", help="counts, comma-separated")
    buy.add_argument("--duration", type=_positive(int), default=6, help="s per step and mode")
    buy.add_argument("--workers", type=_positive(int), default=2, help="Granian workers")
    buy.add_argument(
        "--rounds",
        type=_positive(int),
        default=1,
        help="measure every step this many times; figures are medians",
    )
    buy.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    buy.add_argument("--results", type=Path, default=RESULTS, help="where JSON and PNG go")
    buy.set_defaults(run=run_buyers)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    admin_dsn = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        args = _parser().parse_args(argv)
        args.argv = argv[1:]
        return int(args.run(args, admin_dsn))
    except (UsageError, PrepareError) as exc:
        print(f"curves: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
