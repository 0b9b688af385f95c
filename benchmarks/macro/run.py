"""Macro benchmark harness: ``python -m benchmarks.macro.run`` (from the repository root).

What it measures: each contender server (see :mod:`benchmarks.macro.registry`) under the same
HTTP load on this machine, one after another in one run. For each contender:

1. start it in its own process group and poll its readiness URL until it answers 200;
2. check one answer (status, body shape and values) and fail the contender loudly if wrong;
3. warm up with wrk on the same URL/script, then measure with
   ``wrk -t1 -c<connections> -d<duration>s --latency``, reading the CPU time of the server's
   whole process tree (and of PostgreSQL) from ``/proc`` just before and after;
4. for the proxy contenders, an open-loop run at a fixed rate (``--open-rate``, with
   ``fixedrate.c``): latency from each request's due time, and the CPU of that run;
5. kill the process group (also on an exception, Ctrl-C or SIGTERM).

With ``--rounds N`` the whole list runs N times in turn and ratios are taken within a round
(:mod:`benchmarks.macro.rounds`). Then it prints one table (req/s, p50, p99, server CPU
µs/request, PostgreSQL CPU µs/request, errors, RSS, ratio of req/s to the Litestar hello-world
baseline), writes ``benchmarks/results/macro-<UTC>.json`` + ``macro-latest.json`` +
``macro-latest.png``, and with ``--update-doc`` puts the tables between the ``macro`` markers of
``docs/benchmarks.md`` and the headline table (cygate-full, the floor, Litestar's hello-world
and stock Litestar) between the README's ``headline`` markers.

Environment: ``DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``; the
harness creates its own database on that server), ``REDIS_URL`` (default
``redis://127.0.0.1:6379/0``; the gateway uses keys under ``cygate-bench:``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from . import prepare
from .checks import CheckFailed
from .load import build_fixedrate, ensure_wrk, run_fixedrate, run_wrk, write_lua
from .procs import (
    HttpResponse,
    ServerProcess,
    free_port,
    http_get,
    kill_all,
    tree_cpu_seconds,
    tree_rss_mib,
)
from .registry import (
    BASELINE,
    CONTENDERS,
    ME_PATH,
    PRODUCT_PATH,
    PROXY_BASELINE,
    Contender,
    by_name,
)
from .report import (
    BASE_SUFFIX,
    HEADLINE_END,
    HEADLINE_START,
    Failure,
    Result,
    against_baseline,
    cache_goals,
    doc_block,
    headline,
    machine_line,
    machine_summary,
    markdown_table,
    plot,
    update_doc,
    write_json,
)
from .rounds import Rounds, paired
from .tokens import mint_access_token, write_key

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_PREFIX = "cygate-bench:"
DOC = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"


@dataclass(frozen=True, slots=True)
class Bench:
    """Everything a contender run needs, fixed for the whole run."""

    args: argparse.Namespace
    wrk: str | None
    workdir: Path
    db: prepare.BenchDatabase
    base_env: dict[str, str]
    template: dict[str, str]  # the registry's {placeholders}, less {port}
    tokens: dict[str, str]  # token kind (Contender.token) -> a token the harness minted
    expected: dict[str, Any]  # for the checks: product (dict), fixed_body (bytes), user
    scripts: dict[tuple[str, str | None], Path]  # (target, token kind or None) -> wrk script
    fixedrate: str | None = None  # the open-loop load generator (proxy contenders), if built

    def postgres_cpu(self) -> float:
        """CPU seconds of the benchmark's PostgreSQL server so far (NaN if not local)."""
        pid = self.db.postmaster_pid
        return tree_cpu_seconds(pid) if pid is not None else float("nan")


# --------------------------------------------------------------------------- one contender


def _say(text: str) -> None:
    print(text, flush=True)


def _rel(path: Path) -> Path:
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _fill(template: str, values: dict[str, str]) -> str:
    return template.format_map(values)


def run_http(c: Contender, bench: Bench) -> Result:
    """Start, check, warm up and measure one HTTP contender (after its upstream, if any)."""
    with contextlib.ExitStack() as stack:
        values = {**bench.template, "upstream_port": "0", "otlp_port": "0"}
        if c.otlp:
            values["otlp_port"] = str(free_port(HOST))
            sink = stack.enter_context(
                ServerProcess(
                    [sys.executable, "-m", "benchmarks.otlp_sink", "--port", values["otlp_port"]],
                    env=bench.base_env,
                    cwd=ROOT,
                    log_path=bench.workdir / f"{c.name}-otlp.log",
                )
            )
            sink.wait_ready(HOST, int(values["otlp_port"]), "/", c.ready_timeout)
        if c.upstream:
            values["upstream_port"] = str(free_port(HOST))
            up_argv = [_fill(part, values) for part in c.upstream]
            up = stack.enter_context(
                ServerProcess(
                    up_argv,
                    env=bench.base_env,
                    cwd=ROOT,
                    log_path=bench.workdir / f"{c.name}-upstream.log",
                )
            )
            up.wait_ready(HOST, int(values["upstream_port"]), c.path, c.ready_timeout)
        return _run_http(c, bench, values)


def _run_http(c: Contender, bench: Bench, values: dict[str, str]) -> Result:
    assert bench.wrk is not None
    args = bench.args
    port = free_port(HOST)
    values = {**values, "port": str(port)}
    argv = [_fill(part, values) for part in c.command]
    env = {**bench.base_env, **{k: _fill(v, values) for k, v in c.env.items()}}
    headers = {"Authorization": f"Bearer {bench.tokens[c.token]}"} if c.auth else {}
    path = {"root": c.path, "me": ME_PATH}.get(c.target)
    check_path = path if path is not None else PRODUCT_PATH + bench.db.check_id
    url = f"http://{HOST}:{port}{path if path is not None else '/'}"
    script = bench.scripts[(c.target, c.token if c.auth else None)]

    t0 = time.monotonic()
    with ServerProcess(argv, env=env, cwd=ROOT, log_path=bench.workdir / f"{c.name}.log") as srv:
        srv.wait_ready(HOST, port, c.ready_path, c.ready_timeout)
        _say(f"  ready after {time.monotonic() - t0:.1f} s (pid {srv.pid}, port {port})")
        c.check(http_get(HOST, port, check_path, headers), bench.expected)
        _say(f"  check ok: GET {check_path}")
        if args.warmup > 0:
            run_wrk(bench.wrk, url, script, connections=args.connections, duration=args.warmup)
        cpu0, pg0 = tree_cpu_seconds(srv.pid), bench.postgres_cpu()
        w = run_wrk(bench.wrk, url, script, connections=args.connections, duration=args.duration)
        cpu, pg = tree_cpu_seconds(srv.pid) - cpu0, bench.postgres_cpu() - pg0
        rss = tree_rss_mib(srv.pid)
        open_loop = None
        if bench.fixedrate is not None and _is_proxy(c):
            cpu1 = tree_cpu_seconds(srv.pid)
            f = run_fixedrate(
                bench.fixedrate,
                url,
                connections=args.connections,
                rate=args.open_rate,
                duration=args.duration,
                headers=headers,
            )
            open_loop = {
                **asdict(f),
                "cpu_us_per_req": (tree_cpu_seconds(srv.pid) - cpu1) * 1e6 / f.requests
                if f.requests
                else float("nan"),
            }
            _say(
                f"  open loop at {f.rate:,.0f} req/s: p50 {f.p50_ms:.3f} ms, "
                f"p99 {f.p99_ms:.3f} ms (from due; from send p50 {f.sent_p50_ms:.3f} ms), "
                f"{open_loop['cpu_us_per_req']:.1f} CPU µs/req, {f.late} late, {f.errors} errors"
            )
        if not srv.alive():
            raise RuntimeError(f"the server died during the run; log tail:\n{srv.log_tail()}")
    per_req = 1e6 / w.requests if w.requests else float("nan")
    return Result(
        name=c.name,
        summary=c.summary,
        kind=c.kind,
        requests=w.requests,
        duration_s=w.duration_s,
        rps=w.rps,
        p50_ms=w.p50_ms,
        p90_ms=w.p90_ms,
        p99_ms=w.p99_ms,
        cpu_us_per_req=cpu * per_req,
        pg_cpu_us_per_req=pg * per_req,
        errors=w.errors,
        error_detail=w.error_detail,
        rss_mib=rss,
        client_cpu_pct=100 * w.client_cpu_s / w.duration_s if w.duration_s else None,
        open_loop=open_loop,
    )


def _is_proxy(c: Contender) -> bool:
    """A proxy contender or the upstream they are compared with."""
    return bool(c.upstream) or c.name == PROXY_BASELINE


def run_self_timed(c: Contender, bench: Bench) -> Result:
    """Check, then run a contender that applies the load itself and reports its own numbers."""
    args = bench.args
    values = {**bench.template, "port": "0"}
    argv = [_fill(part, values) for part in c.command]
    env = {**bench.base_env, **{k: _fill(v, values) for k, v in c.env.items()}}

    log = bench.workdir / f"{c.name}-check.log"
    with ServerProcess([*argv, "--check", bench.db.check_id], env=env, cwd=ROOT, log_path=log) as p:
        try:
            code = p.proc.wait(timeout=c.ready_timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"--check did not finish in {c.ready_timeout:.0f} s") from None
        lines = p.log_tail(1).strip()
    body = lines.encode()
    c.check(HttpResponse(200 if code == 0 else 500, "application/json", body), bench.expected)
    _say(f"  check ok: --check {bench.db.check_id}")

    log = bench.workdir / f"{c.name}.log"
    deadline = time.monotonic() + args.warmup + args.duration + c.ready_timeout
    pg0 = pg1 = None
    with ServerProcess(argv, env=env, cwd=ROOT, log_path=log) as proc:
        while True:
            alive = proc.alive()  # before reading, so a dead process's last words are read
            text = log.read_text(errors="replace")
            if pg0 is None and "@@measure start" in text:
                pg0 = bench.postgres_cpu()
            if pg1 is None and "@@measure end" in text:
                pg1 = bench.postgres_cpu()
            marker = next((ln for ln in text.splitlines() if ln.startswith("@@result ")), None)
            if marker is not None:
                break
            if not alive:
                raise RuntimeError(f"exited with {proc.proc.returncode}; log:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no result in time; log tail:\n{proc.log_tail()}")
            time.sleep(0.02)
    r = json.loads(marker.removeprefix("@@result "))
    pg = (pg1 - pg0) if pg0 is not None and pg1 is not None else float("nan")
    return Result(
        name=c.name,
        summary=c.summary,
        kind=c.kind,
        requests=r["requests"],
        duration_s=r["duration_s"],
        rps=r["rps"],
        p50_ms=r["p50_ms"],
        p90_ms=r["p90_ms"],
        p99_ms=r["p99_ms"],
        cpu_us_per_req=r["cpu_us_per_req"],
        pg_cpu_us_per_req=pg * 1e6 / r["requests"] if r["requests"] else float("nan"),
        errors=r["errors"],
        rss_mib=r["max_rss_mib"],
    )


def proxy_overhead(rounds: Rounds) -> str:
    """For the proxy contenders: latency added to the upstream alone (within each round)."""
    runs = rounds.runs
    proxies = [
        r for r in rounds.representatives([c.name for c in CONTENDERS if c.upstream]) if r.rps
    ]
    baseline = rounds.representatives([PROXY_BASELINE])
    if not baseline or not proxies:
        return ""

    def added(name: str, field: str) -> str:
        diff = paired(
            runs, name, PROXY_BASELINE, lambda p, d: getattr(p, field) - getattr(d, field)
        )
        return diff.text("+.2f") if diff is not None else "-"

    lines = [
        f"Proxying a small JSON response (added = proxy minus `{PROXY_BASELINE}`, same round):",
        "",
        "| proxy | req/s | p50 ms | added p50 ms | p99 ms | added p99 ms | CPU µs/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines.extend(
        f"| {r.name} | {r.rps:,.0f} | {r.p50_ms:.2f} | {added(r.name, 'p50_ms')} | "
        f"{r.p99_ms:.2f} | {added(r.name, 'p99_ms')} | {r.cpu_us_per_req:.1f} |"
        for r in proxies
    )
    d = baseline[0].open_loop
    opened = [r for r in proxies if r.open_loop is not None]
    if d is None or not opened:
        return "\n".join(lines)

    def added_open(name: str, key: str) -> str:
        diff = paired(
            runs,
            name,
            PROXY_BASELINE,
            lambda p, b: (
                p.open_loop[key] - b.open_loop[key] if p.open_loop and b.open_loop else float("nan")
            ),
        )
        return diff.text("+.3f") if diff is not None else "-"

    saturated = [r.name for r in opened if d["rate"] >= SATURATED * r.rps]
    lines += [
        "",
        f"Open loop (`fixedrate`): the same {d['rate']:,.0f} req/s in total over the same "
        "connections; latency from when each request was due "
        f"(`{PROXY_BASELINE}` p50 {d['p50_ms']:.3f} ms, p99 {d['p99_ms']:.3f} ms):",
        "",
        "| proxy | req/s | p50 ms | added p50 ms | p99 ms | added p99 ms | late | CPU µs/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in opened:
        o = r.open_loop
        assert o is not None
        mark = " (saturated)" if r.name in saturated else ""
        lines.append(
            f"| {r.name}{mark} | {o['achieved_rps']:,.0f} | {o['p50_ms']:.3f} | "
            f"{added_open(r.name, 'p50_ms')} | {o['p99_ms']:.3f} | "
            f"{added_open(r.name, 'p99_ms')} | {o['late']} | {o['cpu_us_per_req']:.1f} |"
        )
    if saturated:
        lines += [
            "",
            f"(saturated): the open-loop rate is at least {SATURATED:.0%} of what the contender "
            "served closed-loop (wrk, above): requests queue, and its added latency measures the "
            "queue, not the proxy. Choose a lower `--open-rate` on this machine.",
        ]
    return "\n".join(lines)


SATURATED = 0.8
"""An open-loop rate at this fraction of a contender's closed-loop req/s or above is saturation."""


def run_contender(c: Contender, bench: Bench) -> Result:
    return run_self_timed(c, bench) if c.kind == "self-timed" else run_http(c, bench)


# --------------------------------------------------------------------------- set-up


def _python_path(extra: list[Path]) -> str:
    parts = [str(p) for p in extra]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def _base_env() -> dict[str, str]:
    """The environment every child gets: the repository on ``sys.path`` (for the contender
    modules), and ``src`` too when cygate is not installed in this interpreter."""
    extra = [ROOT]
    if importlib.util.find_spec("cygate") is None:
        extra.append(ROOT / "src")
    return {**os.environ, "PYTHONPATH": _python_path(extra)}


def _mint_token(secret: str) -> str:
    import jwt

    now = datetime.now(UTC)
    claims = {"sub": "bench-user", "iat": now, "exp": now + timedelta(hours=6)}
    return jwt.encode(claims, secret, algorithm="HS256")


def _write_scripts(
    workdir: Path, db: prepare.BenchDatabase, tokens: dict[str, str]
) -> dict[tuple[str, str | None], Path]:
    scripts = {}
    for target in ("products", "root", "me"):
        for kind in (None, *tokens):
            auth = {"Authorization": f"Bearer {tokens[kind]}"} if kind else None
            scripts[(target, kind)] = write_lua(
                workdir / f"{target}{'-' + kind if kind else ''}.lua",
                headers=auth,
                cycle_prefix=PRODUCT_PATH if target == "products" else None,
                ids=db.product_ids,
            )
    return scripts


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = ", ".join(c.name for c in CONTENDERS)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.macro.run",
        description="Run the macro benchmark: each contender under the same wrk load.",
        epilog=f"contenders: {names}",
    )
    p.add_argument("--duration", type=int, default=10, help="measured seconds (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up seconds (default 3)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--only", metavar="NAME,NAME", help="run only these contenders")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every contender this many times, in turn; ratios are taken within a round "
        "and reported as median and range (default 1)",
    )
    p.add_argument(
        "--update-doc",
        metavar="FILE",
        type=Path,
        nargs="?",
        const=DOC,
        help="write the tables between <!-- macro:start --> and <!-- macro:end --> of FILE "
        "(default docs/benchmarks.md) and, when cygate-full, granian-same-bytes, "
        "litestar-hello and litestar-stock all finished, the headline table between "
        "<!-- headline:start --> and <!-- headline:end --> of --readme",
    )
    p.add_argument(
        "--readme",
        metavar="FILE",
        type=Path,
        default=README,
        help="where --update-doc writes the headline table (default README.md)",
    )
    p.add_argument(
        "--prepare",
        choices=prepare.PREPARE_MODES,
        default="cli",
        help="fill the database with the gateway's CLI (default) or a scratch COPY",
    )
    p.add_argument(
        "--keep-db",
        action="store_true",
        help="reuse the benchmark database if it exists, and never drop it",
    )
    p.add_argument("--pool-size", type=int, default=10, help="asyncpg pool size of the peers")
    p.add_argument(
        "--id-mix",
        type=int,
        default=prepare.MIX_SIZE,
        metavar="N",
        help=f"product ids the load cycles through (default {prepare.MIX_SIZE}); 1 is the "
        "hot-memory control: every hit finds its entry in the CPU's caches",
    )
    p.add_argument(
        "--open-rate",
        type=float,
        default=10_000,
        help="proxy contenders: also an open-loop run at this total req/s (0: skip)",
    )
    p.add_argument(
        "--baseline-tree",
        metavar="DIR",
        type=Path,
        help="also run each selected cygate contender on the code of another checkout (a git "
        "worktree with its extensions built), as NAME@base right after it, and report this "
        "tree against it within each round",
    )
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--list", action="store_true", help="list the contenders and exit")
    args = p.parse_args(argv)
    if args.duration < 1 or args.warmup < 0 or args.connections < 1 or args.rounds < 1:
        p.error("--duration >= 1, --warmup >= 0, --connections >= 1 and --rounds >= 1, please")
    if args.id_mix < 1:
        p.error("--id-mix >= 1, please")
    try:
        args.contenders = by_name(args.only.split(",") if args.only else None)
    except KeyError as exc:
        p.error(str(exc.args[0]))
    if args.baseline_tree is not None:
        tree = args.baseline_tree.resolve()
        if not (tree / "src" / "cygate").is_dir():
            p.error(f"--baseline-tree: {tree} has no src/cygate (a checkout of this repository?)")
        args.contenders = with_baseline(args.contenders, tree)
    return args


def with_baseline(contenders: list[Contender], tree: Path) -> list[Contender]:
    """``contenders`` with a ``NAME@base`` twin after each cygate one: the same command and
    environment, with ``tree``'s ``src`` first on ``sys.path`` (ahead of this checkout's
    editable install), so both trees' code runs in one run, round by round."""
    path = os.pathsep.join([str(tree / "src"), _base_env()["PYTHONPATH"]])
    out = []
    for c in contenders:
        out.append(c)
        if c.name.startswith("cygate"):
            out.append(
                replace(
                    c,
                    name=c.name + BASE_SUFFIX,
                    summary=f"{c.summary} (the code of {tree})",
                    env={**c.env, "PYTHONPATH": path.replace("{", "{{").replace("}", "}}")},
                )
            )
    return out


def round_order(contenders: list[Contender], round_no: int) -> list[Contender]:
    """The order of round ``round_no`` (from 1): the list as given, except that in even rounds
    each ``NAME@base`` runs before ``NAME``, so neither tree always runs first (the machine
    drifts within a round too)."""
    if round_no % 2:
        return contenders
    out = list(contenders)
    for i in range(len(out) - 1):
        if out[i + 1].name == out[i].name + BASE_SUFFIX:
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def _terminate(signum: int, _frame: object) -> None:
    # SystemExit unwinds through every `finally` and context manager: contenders get killed.
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.list:
        for c in CONTENDERS:
            _say(f"{c.name:16} {c.summary}")
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    command = shlex.join(["python", "-m", "benchmarks.macro.run", *sys.argv[1:]])
    started = datetime.now(UTC)
    contenders: list[Contender] = args.contenders
    wrk = ensure_wrk() if any(c.kind == "http" for c in contenders) else None
    machine = machine_summary()
    admin_dsn = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    base_env = _base_env()
    db_name = prepare.DATABASE_NAMES[args.prepare]
    bench_dsn = prepare.with_database(admin_dsn, db_name)

    _say(f"macro benchmark: {machine_line(machine)}")
    _say(f"database: {args.prepare} -> {db_name}")
    rounds = Rounds()
    failures: list[Failure] = []
    failed: set[str] = set()
    try:
        cli_env = {
            **base_env,
            "CYGATE_DATABASE_URL": bench_dsn,
            "CYGATE_REDIS_URL": redis_url,
            "CYGATE_REDIS_PREFIX": REDIS_PREFIX,
            "CYGATE_LOG_LEVEL": "warning",
        }
        if args.prepare == "cli" and not args.keep_db:
            try:
                n = prepare.flush_redis_prefix(redis_url, REDIS_PREFIX)
                _say(f"  redis: deleted {n} stale {REDIS_PREFIX}* keys")
            except Exception as exc:
                _say(f"  WARNING: could not clear {REDIS_PREFIX}* in Redis ({exc!r})")
        try:
            db = prepare.prepare_database(
                args.prepare,
                admin_dsn=admin_dsn,
                keep_db=args.keep_db,
                cli_env=cli_env,
                python=sys.executable,
                cwd=ROOT,
                mix_size=args.id_mix,
            )
        except prepare.PrepareError as exc:
            _say(f"\nERROR preparing the database: {exc}")
            return 2
        _say(f"  {db.product_count:,} products; id mix of {len(db.product_ids)}")

        with tempfile.TemporaryDirectory(prefix="cygate-macro-") as tmp:
            workdir = Path(tmp)
            ids_file = workdir / "ids.txt"
            ids_file.write_text("\n".join(db.product_ids) + "\n")
            secret = secrets.token_urlsafe(32)
            key_file, jwt_key = write_key(workdir)
            tokens = {
                "hs256": _mint_token(secret),
                "eddsa": mint_access_token(jwt_key, db.user),
            }
            fixed_body = json.dumps(db.check_product, separators=(",", ":")).encode()
            bench = Bench(
                args=args,
                wrk=wrk,
                workdir=workdir,
                db=db,
                base_env={
                    **base_env,
                    "BENCH_DATABASE_URL": db.dsn,
                    "BENCH_POOL_SIZE": str(args.pool_size),
                    "BENCH_JWT_SECRET": secret,
                    "BENCH_FIXED_BODY": fixed_body.decode(),
                },
                template={
                    "python": sys.executable,
                    "bindir": str(Path(sys.executable).parent),
                    "host": HOST,
                    "bench_dsn": db.dsn,
                    "redis_url": redis_url,
                    "redis_prefix": REDIS_PREFIX,
                    "ids_file": str(ids_file),
                    "connections": str(args.connections),
                    "duration": str(args.duration),
                    "warmup": str(args.warmup),
                    "workdir": str(workdir),
                    "jwt_key_file": str(key_file),
                },
                tokens=tokens,
                expected={"product": db.check_product, "fixed_body": fixed_body, "user": db.user},
                scripts=_write_scripts(workdir, db, tokens),
                fixedrate=build_fixedrate(workdir)
                if args.open_rate > 0 and any(_is_proxy(c) for c in contenders)
                else None,
            )
            for round_no in range(1, args.rounds + 1):
                rounds.start()
                if args.rounds > 1:
                    _say(f"\n=== round {round_no} of {args.rounds}")
                for c in round_order(contenders, round_no):
                    if c.name in failed:
                        continue  # failed once: its other rounds would say the same
                    _say(f"\n▶ {c.name}: {c.summary}")
                    try:
                        result = run_contender(c, bench)
                    except (CheckFailed, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        kind = "WRONG ANSWER" if isinstance(exc, CheckFailed) else "FAILED"
                        _say(f"\n{'!' * 78}\n!! {c.name} {kind}: {exc}\n{'!' * 78}")
                        if not isinstance(exc, CheckFailed | RuntimeError):  # those say it all
                            traceback.print_exc()
                        failures.append(Failure(c.name, f"{kind}: {exc}"))
                        failed.add(c.name)
                        continue
                    rounds.add(result)
                    _say(
                        f"  {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                        f"p99 {result.p99_ms:.2f} ms, {result.cpu_us_per_req:.1f} CPU µs/req, "
                        f"{result.errors} errors"
                    )
    finally:
        kill_all()
        if args.prepare == "scratch" and not args.keep_db:
            try:
                prepare.drop_database(admin_dsn, db_name)
                _say(f"\ndropped scratch database {db_name}")
            except Exception as exc:
                _say(f"\nWARNING: could not drop {db_name}: {exc!r}")

    results = rounds.representatives([c.name for c in contenders])
    base = next((r for r in results if r.name == BASELINE), None)
    for r in results:
        ratio = rounds.ratio(r.name, BASELINE)
        r.ratio = ratio.median if ratio is not None else None
    table = markdown_table(results, failures, BASELINE)
    _say("\n" + table)
    overhead = proxy_overhead(rounds)
    if overhead:
        table += "\n\n" + overhead
        _say("\n" + overhead)
    if args.baseline_tree is not None:
        names = [c.name for c in contenders if not c.name.endswith(BASE_SUFFIX)]
        versus = against_baseline(rounds, names)
        if versus:
            table += "\n\n" + versus
            _say("\n" + versus)
    goals = cache_goals(rounds)
    if goals:
        table += "\n\n" + goals
        _say("\n" + goals)
    if base is None:
        _say(f"(no ratios: the baseline {BASELINE} was not run or failed)")

    record = {
        "command": command,
        "started_utc": started,
        "machine": machine,
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": 1,
            "pool_size": args.pool_size,
            "prepare": args.prepare,
            "database": db.name,
            "products": db.product_count,
            "id_mix": len(db.product_ids),
            "baseline": BASELINE,
            "open_rate": args.open_rate,
            "rounds": args.rounds,
            "baseline_tree": str(args.baseline_tree) if args.baseline_tree else None,
        },
        "results": results,
        "rounds": rounds.runs if args.rounds > 1 else [],
        "failures": failures,
        "table_markdown": table,
    }
    stamped, _ = write_json(record, args.results_dir, started)
    _say(f"\nresults: {_rel(stamped)}")
    if results:
        png = plot(
            results,
            args.results_dir / "macro-latest.png",
            f"cygate macro benchmark, {started:%Y-%m-%d %H:%M} UTC: {machine_line(machine)}",
        )
        _say(f"chart:   {_rel(png)}")
        if args.update_doc:
            for line in write_docs(
                args.update_doc,
                args.readme,
                doc_block(table, command, machine),
                headline(rounds, command, machine),
            ):
                _say(line)
    elif args.update_doc:
        _say(f"docs:    {args.update_doc} left alone (no contender finished)")
    if failures:
        _say(f"\n{len(failures)} contender(s) failed: {', '.join(f.name for f in failures)}")
        return 1
    return 0


def write_docs(doc: Path, readme: Path, block: str, headline_block: str) -> list[str]:
    """The full tables into ``doc``; the headline into ``readme`` when there is one (a run
    without all four of its contenders leaves the README's as it was). What was done, said."""
    update_doc(doc, block)
    said = [f"docs:    {_rel(doc)} updated"]
    if headline_block:
        update_doc(readme, headline_block, HEADLINE_START, HEADLINE_END)
        said.append(f"readme:  {_rel(readme)} headline updated")
    else:
        said.append(
            f"readme:  {_rel(readme)} left alone (the headline's contenders did not all run)"
        )
    return said


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # The contenders are already gone: every ServerProcess was killed on the way out.
        print("\ninterrupted: contenders stopped, nothing written", file=sys.stderr)
        sys.exit(130)
