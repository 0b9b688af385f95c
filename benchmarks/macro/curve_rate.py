"""How CPU per request falls as the offered rate rises: what a request that arrives alone costs.

``python -m benchmarks.macro.curve_rate [--rates 250,500,1k,2k,4k,8k]`` (``make bench-rate``).
Three servers answer the same cached read, each with one worker, side by side in one run:

- ``cygate``: ``cygate serve`` (the gateway's default of one Granian worker), the anonymous
  product read ``GET /api/v1/products/{id}`` over 100 ids, every one an L1 hit after the
  warm-up: the request that is 37 % of the seed's traffic mix;
- ``granian-bare``: a raw ASGI app on Granian (uvloop, one worker) that answers every request
  with one product's JSON bytes (:mod:`benchmarks.macro.contenders.granian_bare`): the floor
  of any Python app on the server cygate runs on;
- ``uvicorn-bare``: the same app on uvicorn (uvloop, httptools): a server whose one thread
  reads the socket and runs the app, so a request wakes one thread instead of three.

For each offered rate (the open-loop generator, ``fixedrate.c``; latency from each request's
due time) the three run in turn (the order rotates per rate). Each row: the server's CPU per
request (its process tree, from ``/proc``; the idle CPU measured first is taken out), the
context switches per request (every thread of the tree), the CPU of each kind of thread (the
thread that runs the event loop, Granian's Rust runtime thread, the others), p50/p99 and late
sends. The last rate (``--saturate``, 30,000 by default) is far beyond what one worker
answers: its CPU per request is the marginal cost under full load. Writes
``benchmarks/results/rate-latest.json`` and ``docs/img/curve-rate.png``. Environment:
``DATABASE_URL`` (database ``cygate_curve_rate``, migrated and seeded by the gateway's CLI),
``REDIS_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

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
from .load import build_fixedrate, run_fixedrate, write_paths
from .procs import CLK_TCK, ServerProcess, free_port, http_get, tree_pids

__all__ = ["RatePoint", "ThreadTimes", "main", "thread_times"]

ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m benchmarks.macro.curve_rate"
DATABASE = "cygate_curve_rate"
REDIS_PREFIX = "cygate-curve-rate:"
DEFAULT_RATES = "250,500,1k,2k,4k,8k"
SATURATE = 30_000
IDS = 100
CONTENDERS = ("cygate", "granian-bare", "uvicorn-bare")
FLOOR = "granian-bare"


@dataclass(frozen=True, slots=True)
class ThreadTimes:
    """CPU seconds and context switches of a process tree, split by kind of thread."""

    loop_s: float = 0.0
    runtime_s: float = 0.0
    other_s: float = 0.0
    switches: int = 0

    @property
    def total_s(self) -> float:
        return self.loop_s + self.runtime_s + self.other_s

    def __sub__(self, other: ThreadTimes) -> ThreadTimes:
        return ThreadTimes(
            self.loop_s - other.loop_s,
            self.runtime_s - other.runtime_s,
            self.other_s - other.other_s,
            self.switches - other.switches,
        )


def thread_times(root_pid: int) -> ThreadTimes:
    """Every thread of ``root_pid``'s tree: a process's first thread is the one that runs its
    event loop (Granian and uvicorn both run it there), ``tokio-rt-worker`` threads are
    Granian's runtime, the rest are "other" (Granian's thread that calls into Python, the
    process's helpers). Threads that ended before the reading are not counted, so read
    around a run, not across a restart."""
    loop = runtime = other = 0.0
    switches = 0
    for pid in tree_pids(root_pid):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            base = f"/proc/{pid}/task/{tid}"
            try:
                raw = Path(f"{base}/stat").read_text()
                status = Path(f"{base}/status").read_text()
            except OSError:
                continue
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            rest = raw[raw.rindex(")") + 2 :].split()
            cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK  # utime + stime
            for line in status.splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
            if int(tid) == pid:
                loop += cpu
            elif comm.startswith("tokio-rt"):
                runtime += cpu
            else:
                other += cpu
    return ThreadTimes(loop, runtime, other, switches)


@dataclass(frozen=True, slots=True)
class RatePoint:
    contender: str
    offered: float
    achieved: float
    cpu_us: float
    loop_us: float
    runtime_us: float
    other_us: float
    switches: float
    p50_ms: float
    p99_ms: float
    late: int
    errors: int
    vs_floor: float = float("nan")


@dataclass
class Server:
    name: str
    proc: ServerProcess
    port: int
    paths: Path
    idle_per_s: ThreadTimes


def _body_and_ids(port: int) -> tuple[str, list[str]]:
    """One product's JSON (the bare apps' body) and IDS product ids, from the gateway."""
    resp = http_get(HOST, port, f"/api/v1/products?limit={IDS}")
    if resp.status != 200:
        raise CurveError(f"the gateway's product list answered {resp.status}")
    ids = [item["id"] for item in json.loads(resp.body)["items"]]
    if len(ids) < IDS:
        raise CurveError(f"the catalog holds {len(ids)} products, not {IDS}")
    one = http_get(HOST, port, f"/api/v1/products/{ids[0]}")
    return one.body.decode(), ids


def _idle(proc: ServerProcess, seconds: float = 2.0) -> ThreadTimes:
    before = thread_times(proc.pid)
    time.sleep(seconds)
    after = thread_times(proc.pid) - before
    return ThreadTimes(
        after.loop_s / seconds,
        after.runtime_s / seconds,
        after.other_s / seconds,
        round(after.switches / seconds),
    )


def start_servers(workdir: Path, dsn: str, redis_url: str) -> list[Server]:
    """The three contenders, each ready and warmed (every path served once)."""
    env = plain_env()
    env.update(
        CYGATE_DATABASE_URL=dsn,
        CYGATE_REDIS_URL=redis_url,
        CYGATE_REDIS_PREFIX=REDIS_PREFIX,
        CYGATE_LOG_LEVEL="warning",
        CYGATE_RATE_LIMIT_DEFAULT_CLASS="",  # one address sends everything
    )
    port = free_port(HOST)
    gateway = ServerProcess(gateway_argv(port), env=env, cwd=ROOT, log_path=workdir / "cygate.log")
    servers: list[Server] = []
    try:
        gateway.wait_ready(HOST, port, "/readyz", 60)
        body, ids = _body_and_ids(port)
        paths = [f"/api/v1/products/{i}" for i in ids]
        gw_paths = write_paths(workdir / "cygate.req", paths)
        servers.append(Server("cygate", gateway, port, gw_paths, ThreadTimes()))
        bare_env = {**plain_env(), "BENCH_FIXED_BODY": body}
        bindir = Path(sys.executable).parent
        app = "benchmarks.macro.contenders.granian_bare:app"
        commands = {
            "granian-bare": [str(bindir / "granian"), "--interface", "asgi", "--loop", "uvloop",
                             "--workers", "1", "--http", "1", "--host", HOST, "--port", "{port}",
                             "--no-access-log", "--log-level", "warning", app],
            "uvicorn-bare": [str(bindir / "uvicorn"), "--loop", "uvloop", "--http", "httptools",
                             "--host", HOST, "--port", "{port}", "--no-access-log",
                             "--log-level", "warning", app],
        }  # fmt: skip
        for name, argv in commands.items():
            p = free_port(HOST)
            proc = ServerProcess(
                [a.replace("{port}", str(p)) for a in argv],
                env=bare_env,
                cwd=ROOT,
                log_path=workdir / f"{name}.log",
            )
            servers.append(Server(name, proc, p, gw_paths, ThreadTimes()))
            proc.wait_ready(HOST, p, "/", 30)
        for server in servers:
            for path in paths:
                resp = http_get(HOST, server.port, path)
                if resp.status != 200:
                    raise CurveError(f"{server.name}: GET {path} answered {resp.status}")
            server.idle_per_s = _idle(server.proc)
    except BaseException:
        for server in servers:
            server.proc.kill()
        gateway.kill()
        raise
    return servers


def measure(
    binary: str, server: Server, rate: float, duration: float, connections: int
) -> RatePoint:
    """One open-loop run of ``server`` at ``rate``: its CPU per request, idle taken out."""
    before = thread_times(server.proc.pid)
    t0 = time.monotonic()
    result = run_fixedrate(
        binary,
        f"http://{HOST}:{server.port}/",
        connections=connections,
        rate=rate,
        duration=duration,
        warmup=1.0,
        request_file=server.paths,
    )
    wall = time.monotonic() - t0
    used = thread_times(server.proc.pid) - before
    idle = server.idle_per_s
    # NOTE: the readings span the warm-up too, so the requests counted are the whole run's.
    sent = max(1.0, result.achieved_rps * wall)

    def per_req(seconds: float, idle_rate: float) -> float:
        return max(0.0, seconds - idle_rate * wall) / sent * 1e6

    return RatePoint(
        contender=server.name,
        offered=rate,
        achieved=result.achieved_rps,
        cpu_us=per_req(used.total_s, idle.total_s),
        loop_us=per_req(used.loop_s, idle.loop_s),
        runtime_us=per_req(used.runtime_s, idle.runtime_s),
        other_us=per_req(used.other_s, idle.other_s),
        switches=max(0.0, used.switches - idle.switches * wall) / sent,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        late=result.late,
        errors=result.errors,
    )


def table(points: Sequence[RatePoint]) -> str:
    header = ("server", "offered req/s", "achieved", "CPU µs/req", "÷ floor", "event loop",
              "Rust runtime", "other threads", "switches/req", "p50 ms", "p99 ms", "late",
              "errors")  # fmt: skip
    formats = ("s", ",.0f", ",.0f", ".0f", ".2f", ".0f", ".0f", ".0f", ".1f", ".2f", ".2f",
               ",d", ",d")  # fmt: skip
    columns = ("contender", "offered", "achieved", "cpu_us", "vs_floor", "loop_us", "runtime_us",
               "other_us", "switches", "p50_ms", "p99_ms", "late", "errors")  # fmt: skip
    ordered = sorted(points, key=lambda p: (CONTENDERS.index(p.contender), p.offered))
    rows = [tuple(getattr(p, c) for c in columns) for p in ordered]
    return markdown_table(header, rows, formats)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CurveParser(PROG, __doc__.splitlines()[0])
    p.add_argument("--rates", default=DEFAULT_RATES, help="offered req/s, e.g. 250,500,1k,2k")
    p.add_argument("--saturate", type=int, default=SATURATE,
                   help="a last rate past what one worker answers (0: none)")  # fmt: skip
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    p.add_argument("--connections", type=int, default=32, help="the generator's connections")
    args = p.parse_args(argv)
    try:
        args.rate_list = parse_sizes(args.rates, "--rates", most=200_000)
    except CurveError as exc:
        p.error(str(exc))
    if args.saturate < 0 or (args.saturate and args.saturate <= args.rate_list[-1]):
        p.error(f"--saturate must be 0 or above the last rate, not {args.saturate}")
    if args.saturate:
        args.rate_list.append(args.saturate)
    if not 1 <= args.duration <= 600:
        p.error(f"--duration must be 1 to 600 seconds, not {args.duration}")
    if not 1 <= args.connections <= 1024:
        p.error(f"--connections must be 1 to 1024, not {args.connections}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    dsn, redis_url = service_urls(DATABASE)
    try:
        gateway_database(dsn, seed=("--products", "2000", "--users", "5", "--random-seed", "7"))
    except CurveError as exc:
        die(str(exc), PROG)
    except OSError as exc:
        die(f"cannot reach PostgreSQL at DATABASE_URL: {exc}", PROG)
    load_start = load_average()
    print(f"load {load_start}", flush=True)
    points: list[RatePoint] = []
    with tempfile.TemporaryDirectory(prefix="cygate-curve-rate-") as tmp:
        workdir = Path(tmp)
        binary = build_fixedrate(workdir)
        try:
            servers = start_servers(workdir, dsn, redis_url)
        except (CurveError, RuntimeError) as exc:
            die(str(exc), PROG)
        try:
            for n, rate in enumerate(args.rate_list):
                turn = servers[n % len(servers) :] + servers[: n % len(servers)]
                for server in turn:
                    point = measure(binary, server, rate, args.duration, args.connections)
                    points.append(point)
                    print(
                        f"  {server.name:13} {rate:>8,.0f} req/s offered: "
                        f"{point.achieved:,.0f} achieved, {point.cpu_us:.0f} µs CPU/req, "
                        f"{point.switches:.1f} switches/req, p99 {point.p99_ms:.2f} ms",
                        flush=True,
                    )
        finally:
            for server in servers:
                server.proc.kill()
    floor = {p.offered: p.cpu_us for p in points if p.contender == FLOOR}
    points = [replace(p, vs_floor=ratio(p.cpu_us, floor.get(p.offered, 0.0))) for p in points]
    text = table(points)
    write_run("rate", args, prog=PROG, load_start=load_start, points=points, text=text)
    if not args.no_plot:
        series_cpu = {}
        series_sw = {}
        for name in CONTENDERS:
            mine = sorted((p for p in points if p.contender == name), key=lambda p: p.offered)
            xs = [p.achieved for p in mine]
            series_cpu[name] = (xs, [p.cpu_us for p in mine])
            series_sw[name] = (xs, [p.switches for p in mine])
        png = plot_curves(
            args.img_dir / "curve-rate.png",
            f"CPU per request against the rate answered, one worker (load {load_average()})",
            [
                ("server CPU µs per request", series_cpu),
                ("context switches per request", series_sw),
            ],
            xlabel="requests answered per second",
        )
        print(f"written {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
