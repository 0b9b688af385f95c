"""Order placement through cygate against pgbench's TPC-B-like rate on the same PostgreSQL.

From the repository root (``make bench-orders``)::

    .venv/bin/python -m benchmarks.macro.orders                 # 15 s each side
    .venv/bin/python -m benchmarks.macro.orders --duration 10 --connections 32   # default 16

1. **Floor**: ``pgbench -i`` in a scratch database, then ``pgbench -c 8 -j 2 -T <duration>``
   (the default TPC-B-like script); its tps is the floor the issue compares against.
2. **Gateway**: a scratch database migrated and seeded with the gateway's own CLI (1000 products
   given ample stock), ``cygate serve`` with 2 Granian workers, four customers logged in.
3. **Load**: ``--connections`` keep-alive connections, each sending ``POST /api/v1/orders``
   (1 to 3 random products, quantity 1 to 3, a fresh ``Idempotency-Key``); after 5 % of the answers
   the client "retries": it sends the same key and body again (a lost response, say), and must get
   the same order back with ``Idempotent-Replayed: true``.
4. **Check**: orders in the database == distinct order ids answered 201, no id answered for two
   keys, every replay names its key's order, and stock taken == quantities ordered.

Prints one table and writes ``benchmarks/results/orders-latest.json``; exits 1 when a check fails.

:func:`buyers_curve` runs the same load at several connection counts, every buyer ordering one
product against each ordering a product of its own (``python -m benchmarks.macro.curves
buyers``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import uvloop

from benchmarks.macro.prepare import DatabaseCpu, local_postmaster
from benchmarks.macro.procs import ServerProcess, start_gateway, tree_cpu_seconds

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
SERVER_DSN = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# NOTE: a test of the tools names a database of its own (never a CYGATE_ name: those are settings).
BENCH_DB = os.environ.get("BENCH_ORDERS_DB", "cygate_bench_orders")
PGBENCH_DB = "cygate_bench_pgbench"
RETRY_RATE = 0.05
STOCK = 10_000_000


def _dsn(name: str) -> str:
    return urlunsplit(urlsplit(SERVER_DSN)._replace(path="/" + name))


async def _recreate(name: str) -> None:
    conn = await asyncpg.connect(_dsn("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop(name: str) -> None:
    conn = await asyncpg.connect(_dsn("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# --------------------------------------------------------------------------- pgbench floor


def run_pgbench(duration: int, clients: int, threads: int) -> dict[str, Any]:
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise SystemExit("pgbench is missing (apt-get install postgresql-client)")
    asyncio.run(_recreate(PGBENCH_DB))
    try:
        dsn = _dsn(PGBENCH_DB)
        subprocess.run([pgbench, "-i", "-q", dsn], check=True, capture_output=True)
        argv = [pgbench, "-c", str(clients), "-j", str(threads), "-T", str(duration), dsn]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    finally:
        asyncio.run(_drop(PGBENCH_DB))
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    if tps is None:
        raise RuntimeError(f"no tps in pgbench output:\n{out}")
    return {
        "tps": float(tps.group(1)),
        "latency_avg_ms": float(lat.group(1)) if lat else None,
        "clients": clients,
        "threads": threads,
        "duration_s": duration,
    }


# --------------------------------------------------------------------------- the gateway


def _gateway_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYGATE_")}
    if os.environ.get("CYGATE_NO_EXTENSIONS"):
        env["CYGATE_NO_EXTENSIONS"] = "1"
    env.update(
        CYGATE_DATABASE_URL=_dsn(BENCH_DB),
        CYGATE_REDIS_URL=REDIS_URL,
        CYGATE_REDIS_PREFIX="cygate-bench-orders:",
        CYGATE_LOG_LEVEL="warning",
        CYGATE_ENVIRONMENT="development",
        # NOTE: the load comes from one address: the built-in default limit (100/s per caller)
        # and registration limit (10 an hour per address) would refuse it. Off, explicitly.
        CYGATE_RATE_LIMIT_DEFAULT_CLASS="",
        CYGATE_RATE_LIMIT_ROUTES='{"POST /api/v1/auth/register": ""}',
    )
    env.update(extra or {})
    return env


def prepare_gateway_db(env: dict[str, str]) -> list[str]:
    asyncio.run(_recreate(BENCH_DB))
    cli = [sys.executable, "-m", "cygate"]
    subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True, cwd=ROOT)
    seed = [*cli, "seed", "--users", "4", "--products", "1000", "--categories", "10"]
    subprocess.run(seed, env=env, check=True, capture_output=True, cwd=ROOT)

    async def stock() -> list[str]:
        conn = await asyncpg.connect(_dsn(BENCH_DB))
        try:
            await conn.execute("UPDATE products SET stock = $1, currency = 'EUR'", STOCK)
            await conn.execute("VACUUM (ANALYZE)")
            return [str(r[0]) for r in await conn.fetch("SELECT id FROM products")]
        finally:
            await conn.close()

    return asyncio.run(stock())


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (every process, the kernel), from
    ``/proc/stat``; NaN where there is none."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return math.nan
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def postmaster() -> int | None:
    """The local PostgreSQL server process (its tree's CPU is PostgreSQL's share), if any."""
    return local_postmaster(_dsn(BENCH_DB))


# --------------------------------------------------------------------------- a tiny HTTP client


class Conn:
    """One keep-alive HTTP/1.1 connection (enough for this benchmark: Content-Length bodies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(head.encode() + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        got = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                got[name.strip().lower()] = value.strip()
        data = await self.reader.readexactly(int(got.get("content-length", "0")))
        return status, got, data

    def close(self) -> None:
        self.writer.close()


async def login(host: str, port: int, email: str, password: str) -> str:
    conn = await Conn.open(host, port)
    try:
        body = json.dumps({"email": email, "password": password}).encode()
        status, _, data = await conn.request(
            "POST", "/api/v1/auth/login", {"content-type": "application/json"}, body
        )
        if status != 200:
            raise RuntimeError(f"login failed: {status} {data[:200]!r}")
        return str(json.loads(data)["access_token"])
    finally:
        conn.close()


async def register(host: str, port: int) -> tuple[str, str]:
    email, password = f"bench-{uuid.uuid4().hex[:10]}@example.com", uuid.uuid4().hex
    conn = await Conn.open(host, port)
    try:
        body = json.dumps({"email": email, "password": password}).encode()
        status, _, data = await conn.request(
            "POST", "/api/v1/auth/register", {"content-type": "application/json"}, body
        )
        if status != 201:
            raise RuntimeError(f"register failed: {status} {data[:200]!r}")
        return email, password
    finally:
        conn.close()


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)  # key -> order id (first answer)
    quantities: dict[str, int] = field(default_factory=dict)  # order id -> units
    retries: int = 0
    replays_ok: int = 0
    replays_bad: int = 0
    first_answers: int = 0


async def client(
    host: str, port: int, token: str, ids: list[str], until: float, tally: Tally, seed: int
) -> None:
    """Orders of 1 to 3 of ``ids`` (one line each when ``ids`` is one product) until
    ``until``, each with a fresh key, 5 % of them sent twice."""
    rng = random.Random(seed)
    conn = await Conn.open(host, port)
    auth = f"Bearer {token}"
    # PERF: the client shares the 2 cores with the server and PostgreSQL: bodies are made before
    # the clock starts, and orjson encodes and decodes.
    bodies = [
        orjson.dumps(
            {
                "items": [
                    {"product_id": pid, "quantity": rng.randint(1, 3)}
                    for pid in rng.sample(ids, rng.randint(1, min(3, len(ids))))
                ],
                "shipping_address": "1 Bench Road",
            }
        )
        for _ in range(256)
    ]
    try:
        n = 0
        while time.monotonic() < until:
            body = bodies[n % len(bodies)]
            n += 1
            key = uuid.uuid4().hex
            headers = {
                "content-type": "application/json",
                "authorization": auth,
                "idempotency-key": key,
            }
            t0 = time.perf_counter()
            status, got, data = await conn.request("POST", "/api/v1/orders", headers, body)
            tally.latencies.append(time.perf_counter() - t0)
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            if status != 201:
                continue
            order = orjson.loads(data)
            tally.first_answers += 1
            tally.by_key[key] = order["id"]
            tally.quantities[order["id"]] = sum(i["quantity"] for i in order["items"])
            if rng.random() < RETRY_RATE:
                tally.retries += 1
                t0 = time.perf_counter()
                status, got, again = await conn.request("POST", "/api/v1/orders", headers, body)
                tally.latencies.append(time.perf_counter() - t0)
                tally.statuses[status] = tally.statuses.get(status, 0) + 1
                same = status == 201 and orjson.loads(again)["id"] == order["id"]
                if same and got.get("idempotent-replayed") == "true":
                    tally.replays_ok += 1
                else:
                    tally.replays_bad += 1
    finally:
        conn.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


async def verify(tally: Tally, ids: list[str]) -> dict[str, Any]:
    conn = await asyncpg.connect(_dsn(BENCH_DB))
    try:
        in_db = {str(r[0]) for r in await conn.fetch("SELECT id FROM orders")}
        units = await conn.fetchval("SELECT coalesce(sum(quantity), 0) FROM order_items")
        taken = await conn.fetchval(
            "SELECT sum($1::bigint - stock) FROM products WHERE id = ANY($2::uuid[])", STOCK, ids
        )
        keys_done = await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE state='done'")
        outbox = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE event_type = 'order.created'"
        )
    finally:
        await conn.close()
    answered = set(tally.by_key.values())
    return {
        "orders_in_db": len(in_db),
        "distinct_orders_answered": len(answered),
        "keys_answered_201": len(tally.by_key),
        # answered 201 but not in the database
        "lost": len(answered - in_db),
        # in the database with no key that got it, or one order answered for two keys
        "duplicated": len(in_db - answered) + (len(tally.by_key) - len(answered)),
        "units_ordered_db": int(units),
        "units_answered": sum(tally.quantities.values()),
        "stock_taken": int(taken or 0),
        "idempotency_keys_done": keys_done,
        "order_created_events": outbox,
        "replays_ok": tally.replays_ok,
        "replays_bad": tally.replays_bad,
    }


async def analyze_after_warm_up() -> None:
    """``ANALYZE`` the database once the warm-up has written its first orders.

    NOTE: the scratch database starts with empty ``orders``/``order_items`` tables. The
    foreign-key checks PostgreSQL runs for every order line (``order_items.order_id`` →
    ``orders``) are plans cached per connection; made while ``orders`` is nearly empty, they
    are sequential scans, kept until statistics change. Autovacuum fixes that within a minute
    of a real deployment's first orders (its analyze threshold is 50 rows); a 15 s run on a
    fresh database would measure that cold start instead (``--no-analyze`` shows it: the FK
    checks then read every order row, ~35 M tuples in 8 s). This is the analyze autovacuum
    would do, run before the clock starts.
    """
    conn = await asyncpg.connect(_dsn(BENCH_DB))
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


@dataclass
class Window:
    """One measured window: the orders, and the CPU seconds spent in it."""

    tally: Tally
    elapsed: float
    server_cpu: float
    postgres_cpu: float
    client_cpu: float
    machine_busy: float

    def figures(self) -> dict[str, Any]:
        created = max(self.tally.first_answers, 1)
        return {
            "orders_per_s": self.tally.first_answers / self.elapsed,
            "requests_per_s": len(self.tally.latencies) / self.elapsed,
            "p50_ms": _pct(self.tally.latencies, 0.50),
            "p99_ms": _pct(self.tally.latencies, 0.99),
            "server_cpu_us_per_order": self.server_cpu / created * 1e6,
            # NOTE: the whole local PostgreSQL server (other databases' work too) and this
            # process (the load client); for reading where the two cores go, not a check.
            "postgres_cpu_us_per_order": self.postgres_cpu / created * 1e6,
            "client_cpu_us_per_order": self.client_cpu / created * 1e6,
            "machine_busy_us_per_order": self.machine_busy / created * 1e6,
            "statuses": {str(k): v for k, v in sorted(self.tally.statuses.items())},
            "retries": self.tally.retries,
            "duration_s": self.elapsed,
        }


async def measure(
    port: int,
    tokens: list[str],
    ids_of: Callable[[int], list[str]],
    connections: int,
    duration: float,
    server_pid: int,
    pg_pid: int | None,
    seed: int = 0,
    database_cpu: DatabaseCpu | None = None,
) -> Window:
    """``connections`` clients ordering for ``duration`` s (client n orders from
    ``ids_of(n)``), with the CPU of the gateway, PostgreSQL (the postmaster's whole tree, or
    with ``database_cpu`` the backends of the benchmark's database), this process and the
    machine."""
    if database_cpu is not None:
        await database_cpu.start()
    cpu0, t0 = tree_cpu_seconds(server_pid), time.monotonic()
    pg0 = tree_cpu_seconds(pg_pid) if pg_pid else math.nan
    own0 = time.process_time()
    busy0 = machine_busy_seconds()
    tally = Tally()
    end = t0 + duration
    await asyncio.gather(
        *(
            client("127.0.0.1", port, tokens[n % len(tokens)], ids_of(n), end, tally, seed + n)
            for n in range(connections)
        )
    )
    elapsed, cpu = time.monotonic() - t0, tree_cpu_seconds(server_pid) - cpu0
    pg = (tree_cpu_seconds(pg_pid) if pg_pid else math.nan) - pg0
    own, busy = time.process_time() - own0, machine_busy_seconds() - busy0
    if database_cpu is not None:
        pg = await database_cpu.stop()
    return Window(tally, elapsed, cpu, pg, own, busy)


def _merge(into: Tally, part: Tally) -> None:
    """Add one window's orders to the run's (what :func:`verify` checks)."""
    into.latencies += part.latencies
    for status, n in part.statuses.items():
        into.statuses[status] = into.statuses.get(status, 0) + n
    into.by_key.update(part.by_key)
    into.quantities.update(part.quantities)
    into.retries += part.retries
    into.replays_ok += part.replays_ok
    into.replays_bad += part.replays_bad
    into.first_answers += part.first_answers


async def _customers(port: int, n: int = 4) -> list[str]:
    tokens = []
    for _ in range(n):
        email, password = await register("127.0.0.1", port)
        tokens.append(await login("127.0.0.1", port, email, password))
    return tokens


def _serve(env: dict[str, str], workers: int) -> tuple[ServerProcess, int]:
    log = Path(tempfile.gettempdir()) / "cygate-bench-orders.log"
    return start_gateway(env, workers=workers, cwd=ROOT, log_path=log)


def run_gateway(
    duration: int,
    connections: int,
    workers: int,
    extra: dict[str, str] | None = None,
    analyze: bool = True,
) -> dict[str, Any]:
    env = _gateway_env(extra)
    ids = prepare_gateway_db(env)
    pg_pid = postmaster()
    RESULTS.mkdir(parents=True, exist_ok=True)
    server, port = _serve(env, workers)
    with server:

        async def load() -> tuple[Tally, Window]:
            tokens = await _customers(port)
            warm = await measure(
                port, tokens, lambda n: ids, connections, 2, server.pid, pg_pid, seed=1000
            )
            if analyze:
                await analyze_after_warm_up()
            window = await measure(
                port, tokens, lambda n: ids, connections, duration, server.pid, pg_pid
            )
            everything = Tally()
            _merge(everything, warm.tally)
            _merge(everything, window.tally)
            return everything, window

        # PERF: the load client shares the two cores with the gateway and PostgreSQL: on uvloop
        # (the gateway's loop too) it costs less CPU per request than on asyncio's own loop.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            everything, window = runner.run(load())
    checks = asyncio.run(verify(everything, ids))
    return {**window.figures(), "connections": connections, "workers": workers, "checks": checks}


async def _stock_of(ids: list[str]) -> int:
    conn = await asyncpg.connect(_dsn(BENCH_DB))
    try:
        return int(
            await conn.fetchval("SELECT sum(stock) FROM products WHERE id = ANY($1::uuid[])", ids)
        )
    finally:
        await conn.close()


def buyers_curve(
    counts: list[int],
    duration: float,
    workers: int,
    extra: dict[str, str] | None = None,
    keep_db: bool = False,
    rounds: int = 1,
) -> dict[str, Any]:
    """Order placement at each connection count in ``counts``, twice: every buyer ordering the
    SAME product (one line, ample stock: all of them queue on that product's row lock) and
    each buyer ordering a product of its own (no two orders share a row), on one gateway and
    database, ``rounds`` times over. Per step: the figures of :meth:`Window.figures` and
    whether the stock taken in the window equals the quantities its 201s answered; at the end
    :func:`verify` over every order of the run."""
    env = _gateway_env(extra)
    ids = prepare_gateway_db(env)
    if len(ids) < max(counts) + 1:
        raise ValueError(f"{max(counts)} buyers of their own need {max(counts) + 1} products")
    hot, own = ids[0], ids[1:]
    modes: dict[str, Callable[[int], list[str]]] = {
        "hot": lambda n: [hot],
        "distinct": lambda n: [own[n]],
    }
    pg_pid = postmaster()
    steps: list[dict[str, Any]] = []
    everything = Tally()
    try:
        server, port = _serve(env, workers)
        with server:

            async def load() -> None:
                tokens = await _customers(port)
                warm = await measure(
                    port, tokens, modes["distinct"], 8, 2, server.pid, pg_pid, seed=10_000
                )
                _merge(everything, warm.tally)
                await analyze_after_warm_up()
                for round_no, (i, connections) in (
                    (r, step) for r in range(rounds) for step in enumerate(counts)
                ):
                    # NOTE: the two modes take turns at going first, step after step and round
                    # after round, so neither always runs on a machine the other has just
                    # warmed or loaded.
                    order = ("hot", "distinct") if (i + round_no) % 2 == 0 else ("distinct", "hot")
                    for mode in order:
                        used = sorted({p for n in range(connections) for p in modes[mode](n)})
                        before = await _stock_of(used)
                        window = await measure(
                            port,
                            tokens,
                            modes[mode],
                            connections,
                            duration,
                            server.pid,
                            pg_pid,
                            seed=100 * (i + len(counts) * round_no),
                            database_cpu=DatabaseCpu(_dsn(BENCH_DB)),
                        )
                        taken = before - await _stock_of(used)
                        ordered = sum(window.tally.quantities.values())
                        _merge(everything, window.tally)
                        steps.append(
                            {
                                "mode": mode,
                                "connections": connections,
                                "round": round_no + 1,
                                **window.figures(),
                                "stock_taken": taken,
                                "units_ordered": ordered,
                                "stock_ok": taken == ordered,
                            }
                        )
                        print(
                            f"  {connections:>3} connections, {mode:>8}: "
                            f"{steps[-1]['orders_per_s']:,.0f} orders/s, "
                            f"p99 {steps[-1]['p99_ms']:.1f} ms",
                            flush=True,
                        )

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(load())
        checks = asyncio.run(verify(everything, ids))
    finally:
        if not keep_db:
            asyncio.run(_drop(BENCH_DB))
    ok = _checks_ok(checks) and all(s["stock_ok"] for s in steps)
    ok = ok and all(k == "201" for s in steps for k in s["statuses"])
    return {
        "workers": workers,
        "duration_s": duration,
        "hot_product": hot,
        "steps": steps,
        "checks": checks,
        "ok": ok,
    }


def _checks_ok(c: dict[str, Any]) -> bool:
    """No order lost or duplicated, every unit ordered taken from stock, every replay right."""
    return bool(
        c["lost"] == 0
        and c["duplicated"] == 0
        and c["orders_in_db"] == c["distinct_orders_answered"]
        and c["units_ordered_db"] == c["units_answered"] == c["stock_taken"]
        and c["replays_bad"] == 0
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep-db", action="store_true")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="CYGATE_NAME=VALUE",
        help="a setting for the gateway (repeatable), e.g. CYGATE_CACHE_ENABLED=false",
    )
    ap.add_argument("--skip-pgbench", action="store_true", help="gateway only (no ratio)")
    ap.add_argument(
        "--no-analyze",
        action="store_true",
        help="no ANALYZE after the warm-up (measures the cold start: FK checks as seq scans)",
    )
    args = ap.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.set)
    print(f"pgbench -c 8 -j 2 -T {args.duration} (TPC-B-like) ...", flush=True)
    floor = {"tps": float("nan")} if args.skip_pgbench else run_pgbench(args.duration, 8, 2)
    print(f"  {floor['tps']:.0f} tps", flush=True)
    print(f"cygate POST /api/v1/orders, {args.connections} connections ...", flush=True)
    try:
        gw = run_gateway(
            args.duration, args.connections, args.workers, extra, analyze=not args.no_analyze
        )
    finally:
        if not args.keep_db:
            asyncio.run(_drop(BENCH_DB))
    ratio = gw["orders_per_s"] / floor["tps"]
    c = gw["checks"]
    ok = _checks_ok(c) and all(k in ("201",) for k in gw["statuses"])
    print()
    print("| what | rate | p50 ms | p99 ms | CPU µs/order |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| pgbench TPC-B-like (-c 8 -j 2) | {floor['tps']:.0f} tps | - | - | - |")
    print(
        f"| cygate POST /api/v1/orders | {gw['orders_per_s']:.0f} orders/s "
        f"({gw['requests_per_s']:.0f} req/s with retries) | {gw['p50_ms']:.1f} | "
        f"{gw['p99_ms']:.1f} | {gw['server_cpu_us_per_order']:.0f} |"
    )
    print(
        f"CPU µs/order: PostgreSQL (whole server) {gw['postgres_cpu_us_per_order']:.0f}, "
        f"load client {gw['client_cpu_us_per_order']:.0f}, "
        f"whole machine busy {gw['machine_busy_us_per_order']:.0f}"
    )
    print(f"\nratio orders/s ÷ pgbench tps = {ratio:.2f} (goal ≥ 0.25)")
    print(f"statuses {gw['statuses']}, retries {gw['retries']}")
    print("checks", json.dumps(c))
    print("zero lost or duplicated orders:", "yes" if ok else "NO")
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pgbench": floor,
        "cygate": gw,
        "ratio": ratio,
        "ok": ok,
        "compiled": not os.environ.get("CYGATE_NO_EXTENSIONS"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "orders-latest.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
