"""Soak: the mixed load against a gateway of its own for a long while, sampling its processes.

    python -m loadtests.soak [--seconds 600] [--interval 5] [--users 20] [--workers 2]
                             [--scenario mixed] [--out DIR]

(``make soak``; ``SOAK_SECONDS`` and the other ``SOAK_*`` variables give the defaults.) Starts
``scripts/load.sh`` against a free port on 127.0.0.1, so it brings up a gateway (migrated and
seeded database ``cygate_soak`` unless ``CYGATE_DATABASE_URL`` says otherwise, Redis keys under
``cygate-soak:``, the payment processor simulator) and runs locust's ``mixed`` users (browsers
and shoppers) for ``--seconds``. Meanwhile, every ``--interval`` seconds, it samples each
process of the gateway (Granian's main process and every worker): memory (RSS, and PSS and USS:
see below), open file descriptors and TCP connections (all, and established).

RSS counts every page a process maps, also the ones it shares: Granian forks its workers from
the main process, so a worker's RSS includes the interpreter, the libraries and the heap it
inherited and still shares. USS (unique set size: pages only this process maps) is what one
more worker costs; PSS (proportional set size: shared pages divided among the processes that
map them) summed over the processes is what the instance costs (docs/deployment.md, Memory).

Writes to ``--out`` (default ``loadtests/reports/soak-<UTC time>``): ``soak.csv`` (one row per
process per sample), ``soak.png`` (the three series over time, one line per process),
``summary.txt`` (printed too), ``load.log`` and locust's reports (``locust/``). The summary
gives, per process, the start, end and highest value of each series and its slope over the
second half of the run; a series *levels off* when that slope, carried over the second half,
adds no more than a tolerance (RSS and USS: 5 % of its mean there or 4 MiB; descriptors and
connections: 10 % or 4).

Exit status: 0 the load ran and every series levelled off; 1 a series still grew, or the load
or the gateway failed; 2 bad options (one line saying which).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
from benchmarks.macro.procs import ServerProcess, free_port, http_get

REPO = Path(__file__).resolve().parent.parent
SERIES = ("rss_mib", "uss_mib", "fds", "connections")
UNITS = {"rss_mib": "RSS MiB", "uss_mib": "USS MiB", "fds": "fds", "connections": "conns"}
TOLERANCE = {
    "rss_mib": (0.05, 4.0),
    "uss_mib": (0.05, 4.0),
    "fds": (0.10, 4.0),
    "connections": (0.10, 4.0),
}
"""Per series: (share of the second half's mean, absolute floor) a level series may still add."""
FIELDS = ("t", "pid", "role", "rss_mib", "fds", "connections", "established", "pss_mib", "uss_mib")


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"soak: {message} (see --help)\n")


def _number(low: float, what: str) -> object:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what}") from None
        if not value >= low or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r}: at least {low:g} {what}")
        return value

    return parse


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    env = os.environ.get
    parser = _Parser(prog="soak", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=_number(30, "seconds"),
        default=env("SOAK_SECONDS", "600"),
        help="how long the load runs (SOAK_SECONDS, default 600)",
    )
    parser.add_argument(
        "--interval",
        type=_number(0.5, "seconds"),
        default=env("SOAK_INTERVAL", "5"),
        help="seconds between samples (SOAK_INTERVAL, default 5)",
    )
    parser.add_argument(
        "--users",
        type=_number(1, "users"),
        default=env("SOAK_USERS", "20"),
        help="concurrent locust users (SOAK_USERS, default 20)",
    )
    parser.add_argument(
        "--workers",
        type=_number(1, "workers"),
        default=env("SOAK_WORKERS", "2"),
        help="gateway worker processes (SOAK_WORKERS, default 2)",
    )
    parser.add_argument(
        "--scenario",
        choices=("mixed", "browse", "shop"),
        default=env("SOAK_SCENARIO", "mixed"),
        help="locust users (SOAK_SCENARIO, default mixed: browsers and shoppers)",
    )
    parser.add_argument("--out", type=Path, default=None, help="where the results go")
    options = parser.parse_args(argv)
    if options.interval * 4 > options.seconds:
        parser.error(f"--interval {options.interval:g}: at most a quarter of --seconds")
    return options


# ---------------------------------------------------------------------------------------------
# The gateway's processes
# ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    pid: int
    role: str
    rss_mib: float
    fds: int
    connections: int
    established: int
    pss_mib: float = 0.0
    """Proportional set size: shared pages divided among the processes mapping them."""
    uss_mib: float = 0.0
    """Unique set size: the pages only this process maps (what it alone costs)."""


def _answers(port: int, path: str) -> bool:
    try:
        return http_get("127.0.0.1", port, path, timeout=2).status == 200
    except OSError:
        return False


def find_gateway(root: psutil.Process) -> psutil.Process | None:
    """The ``cygate serve`` process (Granian's main one) among ``root``'s descendants."""
    try:
        for proc in root.children(recursive=True):
            with_args = proc.cmdline()
            if any(Path(a).name == "cygate" for a in with_args[:2]) and "serve" in with_args:
                return proc
    except psutil.Error:
        return None
    return None


def sample(main: psutil.Process, t: float) -> list[Sample]:
    """One reading of the main process and each of its (current) descendants."""
    out = []
    try:
        procs = [(main, "main")] + [(p, "worker") for p in main.children(recursive=True)]
    except psutil.Error:
        return out
    for proc, role in procs:
        try:
            with proc.oneshot():
                memory = proc.memory_full_info()  # reads /proc/<pid>/smaps: PSS and USS
                fds = proc.num_fds()
                conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue  # gone between the listing and the reading
        established = sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED)
        out.append(
            Sample(
                round(t, 2),
                proc.pid,
                role,
                round(memory.rss / 2**20, 2),
                fds,
                len(conns),
                established,
                pss_mib=round(memory.pss / 2**20, 2),
                uss_mib=round(memory.uss / 2**20, 2),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Summary and chart
# ---------------------------------------------------------------------------------------------


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope (per second) of ``(t, value)`` points; 0 for fewer than two."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in points) / var


@dataclass
class Trend:
    start: float
    end: float
    high: float
    per_minute: float
    """Slope over the second half, per minute."""
    added: float
    """That slope carried over the second half."""
    allowed: float
    levels_off: bool


@dataclass
class ProcessSummary:
    pid: int
    role: str
    samples: int
    trends: dict[str, Trend] = field(default_factory=dict)
    pss_start: float | None = None
    """PSS at the first and last sample (None when not read)."""
    pss_end: float | None = None


def summarize(samples: Sequence[Sample]) -> list[ProcessSummary]:
    """Per process, each series' start, end, high and second-half trend."""
    if not samples:
        return []
    t0 = min(s.t for s in samples)
    t1 = max(s.t for s in samples)
    half = t0 + (t1 - t0) / 2
    by_pid: dict[int, list[Sample]] = {}
    for s in samples:
        by_pid.setdefault(s.pid, []).append(s)
    out = []
    for pid, rows in sorted(by_pid.items(), key=lambda kv: (kv[1][0].role != "main", kv[0])):
        summary = ProcessSummary(pid, rows[0].role, len(rows))
        if rows[0].pss_mib and rows[-1].pss_mib:
            summary.pss_start, summary.pss_end = rows[0].pss_mib, rows[-1].pss_mib
        late = [r for r in rows if r.t >= half]
        for name in SERIES:
            values = [float(getattr(r, name)) for r in rows]
            late_points = [(r.t, float(getattr(r, name))) for r in late]
            per_second = slope(late_points)
            span = (late[-1].t - late[0].t) if len(late) > 1 else 0.0
            added = per_second * span
            mean_late = sum(v for _, v in late_points) / len(late_points) if late_points else 0.0
            share, floor = TOLERANCE[name]
            allowed = max(share * mean_late, floor)
            summary.trends[name] = Trend(
                start=values[0],
                end=values[-1],
                high=max(values),
                per_minute=per_second * 60,
                added=added,
                allowed=allowed,
                levels_off=added <= allowed,
            )
        out.append(summary)
    return out


def format_summary(summaries: Sequence[ProcessSummary], seconds: float) -> str:
    lines = [f"soak: {seconds:.0f} s of load; per gateway process (second-half slope per minute):"]
    for p in summaries:
        parts = []
        for name in SERIES:
            tr = p.trends[name]
            verdict = (
                "levels off" if tr.levels_off else f"GROWS (+{tr.added:.1f} > {tr.allowed:.1f})"
            )
            digits = 1 if name.endswith("_mib") else 0
            parts.append(
                f"{UNITS[name]} start {tr.start:.{digits}f} end {tr.end:.{digits}f} "
                f"max {tr.high:.{digits}f} slope {tr.per_minute:+.2f}/min: {verdict}"
            )
        lines.append(f"  {p.role:<6} pid {p.pid:<7} ({p.samples} samples)")
        lines.extend(f"      {part}" for part in parts)
    if summaries and all(p.pss_end is not None for p in summaries):
        # PSS adds up: the sum over the processes is the instance's memory (shared pages once).
        start = sum(p.pss_start or 0.0 for p in summaries)
        end = sum(p.pss_end or 0.0 for p in summaries)
        lines.append(
            f"  instance (sum of PSS over its processes): start {start:.1f} end {end:.1f} MiB"
        )
    return "\n".join(lines)


def chart(samples: Sequence[Sample], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(SERIES), 1, figsize=(10, 12), sharex=True)
    labels = {
        "rss_mib": "RSS (MiB)",
        "uss_mib": "USS (MiB, its own pages)",
        "fds": "open file descriptors",
        "connections": "TCP sockets",
    }
    by_pid: dict[int, list[Sample]] = {}
    for s in samples:
        by_pid.setdefault(s.pid, []).append(s)
    t0 = min((s.t for s in samples), default=0.0)
    t1 = max((s.t for s in samples), default=0.0)
    for ax, name in zip(axes, SERIES, strict=True):
        for pid, rows in sorted(by_pid.items()):
            ax.plot(
                [(r.t - t0) / 60 for r in rows],
                [getattr(r, name) for r in rows],
                label=f"{rows[0].role} {pid}",
                linewidth=1.2,
            )
        ax.axvline((t1 - t0) / 120, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel(labels[name])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="lower right", fontsize="small")
    axes[0].set_title(title)
    axes[-1].set_xlabel("minutes (dotted: start of the second half, where the slope is taken)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def run(options: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = options.out or REPO / "loadtests" / "reports" / f"soak-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    database = env.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    env.setdefault("CYGATE_DATABASE_URL", database.rsplit("/", 1)[0] + "/cygate_soak")
    env.setdefault("CYGATE_REDIS_PREFIX", "cygate-soak:")
    env.update(
        CYGATE_URL=url,
        LOAD_SCENARIO=options.scenario,
        LOAD_USERS=str(int(options.users)),
        LOAD_SPAWN_RATE=str(max(1, int(options.users) // 10)),
        LOAD_RUN_TIME=f"{round(options.seconds)}s",
        LOAD_WORKERS=str(int(options.workers)),
        LOAD_REPORT_DIR=str(out / "locust"),
    )
    print(
        f"soak: {options.scenario} load, {int(options.users)} users, {options.seconds:g} s, "
        f"against a gateway of {int(options.workers)} workers at {url}; sampling every "
        f"{options.interval:g} s; results in {out}",
        flush=True,
    )
    # scripts/load.sh in a session of its own: killed as a group (and at exit) by ServerProcess;
    # the gateway it starts in another session, it stops itself when the load ends.
    load = ServerProcess(
        [str(REPO / "scripts" / "load.sh")], env=env, cwd=REPO, log_path=out / "load.log"
    )
    samples: list[Sample] = []
    load_rc = 1
    try:
        root = psutil.Process(load.pid)
        # Migrations and the seed (first run only) come before the gateway: wait for it.
        deadline = time.monotonic() + 600
        main = None
        while time.monotonic() < deadline and load.alive():
            main = main or find_gateway(root)
            if main is not None and _answers(port, "/readyz"):
                break
            time.sleep(0.5)
        else:
            print(f"soak: the gateway did not come up; see {out / 'load.log'}", file=sys.stderr)
            return 1
        assert main is not None
        started = time.monotonic()
        with open(out / "soak.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(FIELDS)
            next_at = started
            while load.alive() and main.is_running():
                now = time.monotonic()
                rows = sample(main, now - started)
                if not rows:
                    break
                if now - started <= options.seconds:  # not the shutdown after the load
                    samples.extend(rows)
                    writer.writerows([getattr(r, f) for f in FIELDS] for r in rows)
                    fh.flush()
                next_at += options.interval
                time.sleep(max(0.0, next_at - time.monotonic()))
        deadline = time.monotonic() + 120
        while load.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        if load.alive():
            print("soak: scripts/load.sh did not end after the load; stopped", file=sys.stderr)
        else:
            load_rc = load.proc.returncode
    except KeyboardInterrupt:
        print("soak: interrupted; the summary covers what was sampled", file=sys.stderr)
        load_rc = 130
    finally:
        load.kill(grace=20)
    if not samples:
        print(f"soak: no sample taken; see {out / 'load.log'}", file=sys.stderr)
        return 1
    summaries = summarize(samples)
    seconds = max(s.t for s in samples) - min(s.t for s in samples)
    text = format_summary(summaries, seconds)
    chart(
        samples, out / "soak.png", f"cygate soak: {options.scenario} load, {seconds / 60:.1f} min"
    )
    load_line = f"load: scripts/load.sh exit {load_rc} (locust's SLO gate; see {out / 'load.log'})"
    text += "\n" + load_line + f"\nfiles: {out / 'soak.csv'}, {out / 'soak.png'}"
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    level = all(t.levels_off for p in summaries for t in p.trends.values())
    return 0 if level and load_rc == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
