"""How cost grows with routes: router match time, gateway start-up and memory at N routes.

``python -m benchmarks.macro.curve_routes [--routes 10,100,1k,10k]`` (``make bench-routes``).
For each N, one table of N proxied routes (:func:`route_file`: a third static, a third with an
``int`` parameter, a third with a trailing ``path`` wildcard, each under a prefix of its own,
all to one upstream):

- **match**: the compiled router and its pure twin (:mod:`cygate.core.router`), each loaded
  with the N routes, match a fixed mix of 60 requests (routes spread over the table, and 404s);
  ns per match, best of ``--repeats`` timings of ``--rounds`` passes over the mix;
- **start-up**: ``cygate serve`` (one Granian worker) with the N routes as its route file
  (``CYGATE_ROUTES_FILE``, docs/upstreams.md), from the process start to the first 200 of
  ``/readyz`` (best of ``--starts`` starts), and the RSS of its process tree once ready; one
  request to the last route of the file is checked to reach the proxy (its upstream is a port
  nothing listens on: 502 from the proxy, not the 404 of an unmatched path).

Ratios are against the first N. Writes ``benchmarks/results/routes-latest.json`` and
``docs/img/curve-routes.png``. Environment: ``DATABASE_URL`` (database ``cygate_curve_routes``,
migrated by the gateway's CLI), ``REDIS_URL``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cygate.core import router as routing
from cygate.core.router import FOUND, RouterPy

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
from .procs import ServerProcess, free_port, http_get, tree_rss_mib

__all__ = ["MIX_SIZE", "RoutePoint", "main", "match_mix", "route_file", "route_patterns"]

ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m benchmarks.macro.curve_routes"
DATABASE = "cygate_curve_routes"
REDIS_PREFIX = "cygate-curve-routes:"
DEFAULT_ROUTES = "10,100,1k,10k"
MIX_SIZE = 60
UPSTREAM = "svc"


@dataclass(frozen=True, slots=True)
class RoutePoint:
    routes: int
    match_ns_c: float
    match_ns_py: float
    startup_s: float
    rss_mib: float
    match_c_ratio: float = float("nan")
    match_py_ratio: float = float("nan")
    startup_ratio: float = float("nan")
    rss_ratio: float = float("nan")


# --------------------------------------------------------------------------- the table


def route_patterns(n: int) -> list[str]:
    """N distinct path patterns, each under a prefix of its own (``/s00042/...``)."""
    kinds = ("/items", "/items/{id:int}", "/files/{rest:path}")
    return [f"/s{i:05d}{kinds[i % 3]}" for i in range(n)]


def route_file(n: int, upstream_port: int) -> dict[str, Any]:
    """A route file (docs/upstreams.md) with N GET routes to one upstream."""
    return {
        "upstreams": {UPSTREAM: {"targets": [f"http://{HOST}:{upstream_port}"]}},
        "routes": [
            {"path": p, "upstream": UPSTREAM, "methods": ["GET"]} for p in route_patterns(n)
        ],
    }


def _concrete(pattern: str) -> str:
    return pattern.replace("{id:int}", "42").replace("{rest:path}", "a/b.png")


def match_mix(n: int) -> list[tuple[str, str, str | None]]:
    """MIX_SIZE requests: routes spread evenly over the table (first to last), one in six a
    404 (an unknown prefix, a known prefix with a wrong tail), one in six the wrong method."""
    patterns = route_patterns(n)
    mix: list[tuple[str, str, str | None]] = []
    for k in range(MIX_SIZE):
        pattern = patterns[(k * (n - 1)) // (MIX_SIZE - 1)] if n > 1 else patterns[0]
        if k % 6 == 1:
            mix.append(("GET", f"/s{n + k:05d}/items", None))
        elif k % 6 == 3:
            prefix = pattern.split("/", 2)[1]
            mix.append(("GET", f"/{prefix}/nothing", None))
        elif k % 6 == 5:
            mix.append(("POST", _concrete(pattern), None))
        else:
            mix.append(("GET", _concrete(pattern), pattern))
    return mix


def _loaded(cls: type[RouterPy], n: int) -> RouterPy:
    router = cls()
    for pattern in route_patterns(n):
        router.add("GET", pattern, pattern)
    return router


def time_match(cls: type[RouterPy], n: int, rounds: int, repeats: int) -> float:
    """ns per match of the mix on a router with N routes (best of ``repeats``); each request
    is checked first (its route, or none)."""
    router = _loaded(cls, n)
    mix = match_mix(n)
    for method, path, expected in mix:
        result = router.match(method, path, None)
        got = result.value if result.kind is FOUND else None
        if got != expected:
            raise RuntimeError(f"{cls.__name__}: {method} {path} gave {got!r}, not {expected!r}")
    match = router.match
    requests = [(method, path) for method, path, _ in mix]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(rounds):
            for method, path in requests:
                match(method, path, None)
        best = min(best, time.perf_counter() - t0)
    return best / (rounds * len(mix)) * 1e9


# --------------------------------------------------------------------------- the gateway


def startup(n: int, dsn: str, redis_url: str, workdir: Path) -> tuple[float, float]:
    """(seconds from the process start to /readyz 200, RSS MiB of the tree then)."""
    upstream_port = free_port(HOST)  # nothing listens there: the proxy answers 502
    path = workdir / f"routes-{n}.json"
    path.write_text(json.dumps(route_file(n, upstream_port)))
    port = free_port(HOST)
    env = plain_env()
    env.update(
        CYGATE_DATABASE_URL=dsn,
        CYGATE_REDIS_URL=redis_url,
        CYGATE_REDIS_PREFIX=REDIS_PREFIX,
        CYGATE_LOG_LEVEL="warning",
        CYGATE_ROUTES_FILE=str(path),
    )
    argv = gateway_argv(port)
    t0 = time.monotonic()
    with ServerProcess(argv, env=env, cwd=ROOT, log_path=workdir / f"gateway-{n}.log") as srv:
        srv.wait_ready(HOST, port, "/readyz", 300, poll=0.02)
        took = time.monotonic() - t0
        rss = tree_rss_mib(srv.pid)
        last = _concrete(route_patterns(n)[-1])
        resp = http_get(HOST, port, last)
        if resp.status not in (502, 503, 504):
            raise RuntimeError(f"GET {last} answered {resp.status}, not the proxy's 502")
    return took, rss


# --------------------------------------------------------------------------- main


def table(points: list[RoutePoint]) -> str:
    header = ("routes", "match ns (compiled)", "vs first", "match ns (pure)", "vs first",
              "start-up s", "vs first", "RSS MiB", "vs first")  # fmt: skip
    formats = (",d", ",.0f", ".2f", ",.0f", ".2f", ".2f", ".2f", ".0f", ".2f")
    rows = [
        (
            p.routes,
            p.match_ns_c,
            p.match_c_ratio,
            p.match_ns_py,
            p.match_py_ratio,
            p.startup_s,
            p.startup_ratio,
            p.rss_mib,
            p.rss_ratio,
        )
        for p in points
    ]
    return markdown_table(header, rows, formats)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CurveParser(PROG, __doc__.splitlines()[0])
    p.add_argument("--routes", default=DEFAULT_ROUTES, help="sizes, e.g. 10,100,1k,10k")
    p.add_argument("--rounds", type=int, default=3000, help="passes over the mix per timing")
    p.add_argument("--repeats", type=int, default=7, help="match timings per N (the best counts)")
    p.add_argument("--starts", type=int, default=3, help="gateway starts per N (the best counts)")
    p.add_argument("--no-gateway", action="store_true", help="router match times only")
    args = p.parse_args(argv)
    try:
        args.sizes = parse_sizes(args.routes, "--routes", most=100_000)
    except CurveError as exc:
        p.error(str(exc))
    for name in ("rounds", "repeats", "starts"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, not {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    router_c: type[RouterPy] | None = getattr(routing, "RouterC", None)
    dsn, redis_url = service_urls(DATABASE)
    if not args.no_gateway:
        try:
            gateway_database(dsn)
        except CurveError as exc:
            die(str(exc), PROG)
        except OSError as exc:
            die(f"cannot reach PostgreSQL at DATABASE_URL: {exc}", PROG)
    load_start = load_average()
    print(f"load {load_start}; compiled router: {'yes' if router_c else 'no'}", flush=True)
    points: list[RoutePoint] = []
    nan = float("nan")
    with tempfile.TemporaryDirectory(prefix="cygate-curve-routes-") as tmp:
        for n in args.sizes:
            c_ns = time_match(router_c, n, args.rounds, args.repeats) if router_c else nan
            py_ns = time_match(RouterPy, n, args.rounds, args.repeats)
            took, rss = nan, nan
            if not args.no_gateway:
                starts = [startup(n, dsn, redis_url, Path(tmp)) for _ in range(args.starts)]
                took, rss = min(s[0] for s in starts), min(s[1] for s in starts)
            points.append(RoutePoint(n, c_ns, py_ns, took, rss))
            print(
                f"  {n:,} routes: match {c_ns:.0f} ns compiled, {py_ns:.0f} ns pure; "
                f"start-up {took:.2f} s, {rss:.0f} MiB",
                flush=True,
            )
    first = points[0]
    points = [
        replace(
            p,
            match_c_ratio=ratio(p.match_ns_c, first.match_ns_c),
            match_py_ratio=ratio(p.match_ns_py, first.match_ns_py),
            startup_ratio=ratio(p.startup_s, first.startup_s),
            rss_ratio=ratio(p.rss_mib, first.rss_mib),
        )
        for p in points
    ]
    text = table(points)
    write_run("routes", args, prog=PROG, load_start=load_start, points=points, text=text)
    if not args.no_plot:
        xs = [float(p.routes) for p in points]
        png = plot_curves(
            args.img_dir / "curve-routes.png",
            f"cost against routes (load {load_average()})",
            [
                (
                    "match ns",
                    {
                        "compiled": (xs, [p.match_ns_c for p in points]),
                        "pure": (xs, [p.match_ns_py for p in points]),
                    },
                ),
                ("start-up s (to /readyz)", {"gateway": (xs, [p.startup_s for p in points])}),
                ("RSS MiB (once ready)", {"gateway": (xs, [p.rss_mib for p in points])}),
            ],
            xlabel="routes in the route file",
        )
        print(f"written {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
