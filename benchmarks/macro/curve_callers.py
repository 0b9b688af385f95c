"""How cost grows with distinct callers: cygate-full's read with N tokens instead of one.

``python -m benchmarks.macro.curve_callers [--callers 1,100,1k,10k,100k] [--duration 8]``
(``make bench-callers``). The gateway is the macro harness's ``cygate-full`` contender
(:mod:`benchmarks.macro.registry`: EdDSA ``at+jwt`` tokens, a per-subject batched rate limit,
the product read from the response cache), one Granian worker. For each N, a gateway of its
own is started and wrk cycles its requests over N tokens minted by the harness, each for a
subject of its own (N rate-limit keys, N tokens to verify, N ``jti`` for the revocation
check) and over 1,000 product ids (every one an L1 hit after the warm-up).

Steady state: the warm-up lasts until every token has been sent at least once (wrk runs of
``--warmup`` seconds until N requests were sent; the measured run carries on in the cycle), so
the measured run sees only callers the gateway has met before: what it still pays for them is
what N costs.

Per N: req/s, p99, server CPU µs per request, the server's RSS, the share of requests whose
token was verified in full (``cygate_jwt_verified_total`` over the requests: the verified-token
cache did not know it), the rate-limit keys held (``cygate_ratelimit_keys``), the rate-limit
script calls per request, and req/s and CPU against one caller: the same variant with one token,
measured on a gateway of its own right before each point (a ratio of two runs seconds apart).

``--variant 'NAME:CYGATE_X=v;CYGATE_Y=w'`` (repeatable) runs each N once more with those settings
on top (say, another ``CYGATE_JWT_CACHE_SIZE``): before and after in one run, N by N.
``--variant 'NAME@PATH:...'`` runs that variant's gateway from another checkout at PATH (built:
its ``.venv/bin/python``), e.g. the tree before a change; its settings may be empty.
``--common 'CYGATE_X=v;...'`` puts settings on top of every variant, ``default`` included.

Writes ``benchmarks/results/callers-latest.json`` and ``docs/img/curve-callers.png``.
Environment: ``DATABASE_URL``, ``REDIS_URL`` (the database ``cygate_curve_callers`` on that
server is created and seeded once; keys under ``cygate-curve-callers:``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from .curve_kit import (
    HOST,
    CurveError,
    CurveParser,
    die,
    gateway_argv,
    gateway_database,
    load_average,
    markdown_table,
    parse_sizes,
    plain_env,
    plot_curves,
    ratio,
    service_urls,
    write_run,
)
from .load import ensure_wrk, run_wrk, write_lua
from .prepare import flush_redis_prefix
from .procs import ServerProcess, free_port, http_get, tree_cpu_seconds, tree_rss_mib
from .registry import PRODUCT_PATH, by_name
from .tokens import mint_access_token, write_key

__all__ = ["CallerPoint", "Variant", "main", "memory_per_caller", "parse_variant", "scrape"]

ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m benchmarks.macro.curve_callers"
DATABASE = "cygate_curve_callers"
REDIS_PREFIX = "cygate-curve-callers:"
CONTENDER = "cygate-full"
DEFAULT_CALLERS = "1,100,1k,10k,100k"
SEED = ("--categories", "20", "--products", "5000", "--users", "1")
MIX = 1000
GOAL = 0.8
"""req/s at the largest N against N = 1, at steady state."""


@dataclass(frozen=True, slots=True)
class CallerPoint:
    variant: str
    callers: int
    rps: float
    p99_ms: float
    cpu_us_per_req: float
    rss_mib: float
    verified_share: float
    """Requests whose token was verified in full (signature), over all requests."""
    ratelimit_keys: float
    jwt_cache_tokens: float
    redis_calls_per_req: float
    """Rate-limit script calls per request (a lease that ran out, or expired)."""
    round_trips_per_req: float
    """Round trips to Redis for them per request (calls asked meanwhile share one); NaN for a
    tree that does not count them."""
    l1_entry_bytes: float
    """The product read's L1 entry as the L1 counts it (its bytes over its entries)."""
    warmup_s: float
    warmup_requests: int
    errors: int
    one_rps: float = float("nan")
    """req/s of the same variant with one caller, measured just before this point."""
    one_cpu_us_per_req: float = float("nan")
    rps_ratio: float = float("nan")
    cpu_ratio: float = float("nan")


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    env: dict[str, str]
    """Settings on top of the contender's."""
    python: str = sys.executable
    """The interpreter that serves (another checkout's: that checkout's gateway)."""
    cwd: Path = ROOT


def parse_variant(text: str) -> Variant:
    """``name:CYGATE_A=1;CYGATE_B=2`` or ``name@/other/checkout:[settings]`` -> a Variant;
    CurveError on anything else. (``;`` between settings: a value may be JSON, with commas.)"""
    head, sep, rest = text.partition(":")
    name, at, tree = head.partition("@")
    if not sep or not name or (not rest and not at) or (at and not tree):
        raise CurveError(f"--variant {text!r}: expected NAME[@CHECKOUT]:CYGATE_SETTING=value[;...]")
    env = parse_settings(rest, f"--variant {text!r}") if rest else {}
    if not at:
        return Variant(name, env)
    python = Path(tree) / ".venv" / "bin" / "python"
    if not python.is_file():
        raise CurveError(f"--variant {text!r}: {python} does not exist (`make build` there)")
    return Variant(name, env, str(python), Path(tree))


def parse_settings(text: str, what: str) -> dict[str, str]:
    """``CYGATE_A=1;CYGATE_B=2`` -> env; CurveError naming ``what`` on anything else."""
    env: dict[str, str] = {}
    for item in text.split(";"):
        key, eq, value = item.partition("=")
        if not eq or not key.startswith("CYGATE_"):
            raise CurveError(f"{what}: {item!r} is not CYGATE_SETTING=value")
        env[key] = value
    return env


# --------------------------------------------------------------------------- the database


def _prepare(dsn: str) -> tuple[list[str], int]:
    """(the id mix, the products there are): migrate and seed once, through the CLI."""
    gateway_database(dsn, seed=SEED)
    return asyncio.run(_id_mix(dsn))


async def _id_mix(dsn: str) -> tuple[list[str], int]:
    conn = await asyncpg.connect(dsn)
    try:
        count = int(await conn.fetchval("SELECT count(*) FROM products"))
        await conn.execute("SELECT setseed(0.42)")
        rows = await conn.fetch("SELECT id FROM products ORDER BY random() LIMIT $1", MIX)
    finally:
        await conn.close()
    return [str(r["id"]) for r in rows], count


# --------------------------------------------------------------------------- metrics


def scrape(text: str) -> dict[str, float]:
    """Prometheus text -> ``name`` (labels dropped, series of one name summed) -> value."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values


def _metrics(port: int) -> dict[str, float]:
    # NOTE: workers write their snapshots once a second: wait for the one after the run.
    time.sleep(1.2)
    resp = http_get(HOST, port, "/metrics", timeout=10)
    if resp.status != 200:
        raise RuntimeError(f"/metrics answered {resp.status}")
    return scrape(resp.body.decode())


# --------------------------------------------------------------------------- one point


@dataclass(frozen=True, slots=True)
class _Run:
    args: argparse.Namespace
    wrk: str
    workdir: Path
    dsn: str
    redis_url: str
    key_file: Path
    ids: list[str]
    tokens: list[str]


def _gateway_env(run: _Run, port: int, extra: dict[str, str]) -> dict[str, str]:
    contender = by_name([CONTENDER])[0]
    values = {
        "host": HOST,
        "port": str(port),
        "bench_dsn": run.dsn,
        "redis_url": run.redis_url,
        "redis_prefix": REDIS_PREFIX,
        "jwt_key_file": str(run.key_file),
    }
    env = plain_env()
    env.update({k: v.format_map(values) for k, v in contender.env.items()})
    env.update(extra)
    return env


def measure(run: _Run, variant: Variant, n: int) -> CallerPoint:
    """One gateway, N callers: warm-up over every token, then the measured wrk run."""
    args = run.args
    port = free_port(HOST)
    tokens_file = run.workdir / f"tokens-{n}.txt"
    tokens_file.write_text("\n".join(run.tokens[:n]) + "\n")
    script = write_lua(
        run.workdir / f"callers-{n}.lua",
        cycle_prefix=PRODUCT_PATH,
        ids=run.ids,
        tokens_file=tokens_file,
    )
    argv = gateway_argv(port, variant.python)
    log = run.workdir / f"gateway-{variant.name}-{n}.log"
    url = f"http://{HOST}:{port}/"
    env = _gateway_env(run, port, {**run.args.common, **variant.env})
    with ServerProcess(argv, env=env, cwd=variant.cwd, log_path=log) as srv:
        srv.wait_ready(HOST, port, "/readyz", 60)
        auth = {"Authorization": f"Bearer {run.tokens[0]}"}
        resp = http_get(HOST, port, PRODUCT_PATH + run.ids[0], auth)
        if resp.status != 200:
            raise RuntimeError(f"the product read answered {resp.status}: {resp.body[:200]!r}")
        # Every token once (wrk runs of --warmup seconds, each carrying on where the last one
        # stopped in the cycle), then steady state.
        t0, sent = time.monotonic(), 0
        while True:
            w0 = run_wrk(run.wrk, url, script, connections=args.connections,
                         duration=args.warmup, script_args=[str(sent)])  # fmt: skip
            sent += w0.requests
            if sent >= n or w0.requests == 0:
                break
        warmup = time.monotonic() - t0
        before = _metrics(port)
        cpu0 = tree_cpu_seconds(srv.pid)
        w = run_wrk(run.wrk, url, script, connections=args.connections,
                    duration=args.duration, script_args=[str(sent)])  # fmt: skip
        cpu = tree_cpu_seconds(srv.pid) - cpu0
        rss = tree_rss_mib(srv.pid)
        after = _metrics(port)
        if not srv.alive():
            raise RuntimeError(f"the gateway died during the run; log tail:\n{srv.log_tail()}")

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    nan = float("nan")
    per_req = 1.0 / w.requests if w.requests else nan
    entries = after.get("cygate_cache_l1_entries", 0.0)
    return CallerPoint(
        variant=variant.name,
        callers=n,
        rps=w.rps,
        p99_ms=w.p99_ms,
        cpu_us_per_req=cpu * 1e6 * per_req,
        rss_mib=rss,
        verified_share=delta("cygate_jwt_verified_total") * per_req,
        ratelimit_keys=after.get("cygate_ratelimit_keys", float("nan")),
        jwt_cache_tokens=after.get("cygate_jwt_cache_tokens", float("nan")),
        redis_calls_per_req=delta("cygate_ratelimit_redis_calls_total") * per_req,
        round_trips_per_req=(
            delta("cygate_ratelimit_redis_round_trips_total") * per_req
            if "cygate_ratelimit_redis_round_trips_total" in after
            else nan
        ),
        l1_entry_bytes=after.get("cygate_cache_l1_bytes", nan) / entries if entries else nan,
        warmup_s=warmup,
        warmup_requests=sent,
        errors=w.errors,
    )


# --------------------------------------------------------------------------- memory


def memory_per_caller(n: int = 5000) -> list[tuple[str, float]]:
    """Bytes per remembered caller in each per-caller table, compiled and pure, measured in
    this process with tracemalloc: N callers' tokens verified (the token bytes included, as the
    gateway keeps the request's copy), N rate-limit keys in a lease table and a GCRA table
    (the key strings included; beyond the tables' fixed arrays); and the bytes of one revoked
    token in a worker's revoked set (per revocation still live, not per caller)."""
    import gc
    import tracemalloc

    from cygate.core import jwt as jwt_impl
    from cygate.core import ratelimit as rl_impl
    from cygate.services.identity.keys import thumbprint
    from cygate.services.identity.service import own_principal

    from .registry import BENCH_ISSUER

    with tempfile.TemporaryDirectory(prefix="cygate-curve-memory-") as tmp:
        _, key = write_key(Path(tmp))
    tokens = [mint_access_token(key, sub=str(UUID(int=i + 1, version=4))) for i in range(n)]
    subjects = [str(UUID(int=i + 1, version=4)) for i in range(n)]

    def traced(fill: Any) -> float:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = fill()
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        del kept
        return used / n

    def verifier(cls: Any) -> Any:
        v = cls(cache_size=n, cache_bytes=0)
        v.set_issuer(
            BENCH_ISSUER,
            audience="cygate",
            keys=[jwt_impl.VerifyKey(thumbprint(key.public_key()), "EdDSA", key.public_key())],
            principal=own_principal(BENCH_ISSUER),
        )
        for t in tokens:
            v.verify(t.encode())  # a fresh bytes object, as a request's header slice is
        return v

    def leases(cls: Any) -> Any:
        table = cls(n)
        now = table.now()
        for sub in subjects:
            table.grant("p:" + sub, 100, now + 10**12, 100, now + 10**9)
        return table

    def gcra(cls: Any) -> Any:
        table = cls(1000, 1000, n)
        for sub in subjects:
            table.hit("p:" + sub)
        return table

    rows: list[tuple[str, float]] = []
    for tag in ("C", "Py"):
        jwt_cls = getattr(jwt_impl, f"JWTVerifier{tag}", None)
        if jwt_cls is not None:
            rows.append((f"verified token ({tag})", traced(lambda c=jwt_cls: verifier(c))))
    for tag in ("C", "Py"):
        tables = (
            ("LeaseTable", leases, lambda c: c(n)),
            ("GCRALimiter", gcra, lambda c: c(1000, 1000, n)),
        )
        for name, fill, empty in tables:
            cls = getattr(rl_impl, f"{name}{tag}", None)
            if cls is not None:
                fixed = traced(lambda c=cls, e=empty: e(c))  # the arrays sized for n keys
                used = traced(lambda c=cls, f=fill: f(c))
                rows.append((f"rate-limit key, {name} ({tag})", used - fixed))
    rows.append(  # per revoked token still live, not per caller (the jti string included)
        ("revoked token (jti -> expiry)", traced(lambda: {f"{i:022d}": i + 0.5 for i in range(n)}))
    )
    return rows


# --------------------------------------------------------------------------- report


def table(points: list[CallerPoint]) -> str:
    header = ("variant", "callers", "req/s", "vs 1 caller", "p99 ms", "CPU µs/req", "CPU vs 1",
              "RSS MiB", "verified in full", "rate-limit keys", "token cache",
              "RL Redis calls/req", "RL round trips/req", "errors")  # fmt: skip
    formats = ("", ",d", ",.0f", ".2f", ".2f", ".0f", ".2f", ".0f", ".1%", ",.0f", ",.0f",
               ".3f", ".3f", "d")  # fmt: skip
    rows = [
        (
            p.variant,
            p.callers,
            p.rps,
            p.rps_ratio,
            p.p99_ms,
            p.cpu_us_per_req,
            p.cpu_ratio,
            p.rss_mib,
            p.verified_share,
            p.ratelimit_keys,
            p.jwt_cache_tokens,
            p.redis_calls_per_req,
            p.round_trips_per_req,
            p.errors,
        )
        for p in points
    ]
    return markdown_table(header, rows, formats)


def _plot(points: list[CallerPoint], path: Path) -> Path:
    variants = list(dict.fromkeys(p.variant for p in points))

    def series(attr: str) -> dict[str, tuple[list[float], list[float]]]:
        out = {}
        for v in variants:
            mine = [p for p in points if p.variant == v]
            out[v] = ([float(p.callers) for p in mine], [float(getattr(p, attr)) for p in mine])
        return out

    return plot_curves(
        path,
        f"{CONTENDER}: cost against distinct callers (load {load_average()})",
        [
            ("req/s vs 1 caller", series("rps_ratio")),
            ("CPU µs/request", series("cpu_us_per_req")),
            ("RSS MiB", series("rss_mib")),
        ],
        xlabel="distinct callers (tokens, rate-limit keys)",
        hline=lambda i: GOAL if i == 0 else None,
    )


# --------------------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CurveParser(PROG, __doc__.splitlines()[0])
    p.add_argument("--callers", default=DEFAULT_CALLERS, help="sizes, e.g. 1,100,1k,10k,100k")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per N")
    p.add_argument("--warmup", type=float, default=3.0, help="least warm-up seconds per N")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument(
        "--variant", action="append", default=[], metavar="NAME[@CHECKOUT]:CYGATE_X=v;..."
    )
    p.add_argument("--common", default="", metavar="CYGATE_X=v;...", help="on top of every variant")
    p.add_argument(
        "--memory", action="store_true", help="only the bytes per remembered caller (in process)"
    )
    args = p.parse_args(argv)
    try:
        args.sizes = parse_sizes(args.callers, "--callers", most=1_000_000)
        args.variants = [Variant("default", {})] + [parse_variant(v) for v in args.variant]
        args.common = parse_settings(args.common, "--common") if args.common else {}
    except CurveError as exc:
        p.error(str(exc))
    for name in ("duration", "warmup"):
        if not getattr(args, name) > 0:
            p.error(f"--{name} must be above 0, not {getattr(args, name)}")
    if args.connections < 1:
        p.error(f"--connections must be at least 1, not {args.connections}")
    return args


def memory_table(rows: list[tuple[str, float]]) -> str:
    return markdown_table(("per remembered caller", "bytes"), rows, ("", ",.0f"))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.memory:
        print(memory_table(memory_per_caller()))
        return 0
    dsn, redis_url = service_urls(DATABASE)
    try:
        ids, count = _prepare(dsn)
        flush_redis_prefix(redis_url, REDIS_PREFIX)
    except CurveError as exc:
        die(str(exc), PROG)
    except (OSError, asyncpg.PostgresError) as exc:
        die(f"cannot prepare {DATABASE} at DATABASE_URL: {exc}", PROG)
    except Exception as exc:  # redis-py's connection errors
        die(f"cannot reach Redis at REDIS_URL: {exc}", PROG)
    wrk = ensure_wrk()
    load_start = load_average()
    print(f"{count:,} products, {len(ids)} in the mix; load {load_start}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cygate-curve-callers-") as tmp:
        workdir = Path(tmp)
        key_file, key = write_key(workdir)
        most = args.sizes[-1]
        t0 = time.monotonic()
        # Distinct subjects (the rate limit's key) and jti; the same expiry for all.
        tokens = [mint_access_token(key, sub=str(UUID(int=i + 1, version=4))) for i in range(most)]
        print(f"minted {most:,} tokens in {time.monotonic() - t0:.1f} s", flush=True)
        run = _Run(args, wrk, workdir, dsn, redis_url, key_file, ids, tokens)
        points: list[CallerPoint] = []
        # N by N, every variant at each N before the next N: before/after side by side. Each
        # point's one-caller reference is measured right before it (the machine's load moves
        # within minutes), so every ratio is of two runs a few seconds apart.
        for n in args.sizes:
            for variant in args.variants:
                print(f"-- {variant.name}, {n:,} callers", flush=True)
                one = measure(run, variant, 1) if n > 1 else None
                point = measure(run, variant, n)
                one = one or point
                point = replace(
                    point,
                    one_rps=one.rps,
                    one_cpu_us_per_req=one.cpu_us_per_req,
                    rps_ratio=ratio(point.rps, one.rps),
                    cpu_ratio=ratio(point.cpu_us_per_req, one.cpu_us_per_req),
                )
                points.append(point)
                print(
                    f"   {point.rps:,.0f} req/s ({point.rps_ratio:.2f}x one caller just before), "
                    f"{point.cpu_us_per_req:.0f} CPU µs/req, "
                    f"verified in full {point.verified_share:.1%}, "
                    f"{point.ratelimit_keys:,.0f} rate-limit keys, {point.rss_mib:.0f} MiB",
                    flush=True,
                )
    memory = memory_per_caller()
    text = table(points) + "\n\n" + memory_table(memory)
    write_run(
        "callers",
        args,
        prog=PROG,
        load_start=load_start,
        points=points,
        text=text,
        contender=CONTENDER,
        memory_per_caller=dict(memory),
    )
    if not args.no_plot:
        png = _plot(points, args.img_dir / "curve-callers.png")
        print(f"written {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
