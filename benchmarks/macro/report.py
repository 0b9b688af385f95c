"""What a run leaves behind: the tables (printed, and optionally written into
``docs/benchmarks.md`` between ``<!-- macro:start -->`` and ``<!-- macro:end -->``, with the
headline table into the README between ``<!-- headline:start -->`` and ``<!-- headline:end -->``),
``benchmarks/results/macro-<UTC>.json`` and ``macro-latest.json``, and a bar chart
``macro-latest.png`` (req/s and server CPU µs/request).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .rounds import Rounds, paired

__all__ = [
    "BASE_SUFFIX",
    "DOC_END",
    "DOC_START",
    "HEADLINE_END",
    "HEADLINE_START",
    "Failure",
    "Panel",
    "Result",
    "against_baseline",
    "doc_block",
    "headline",
    "machine_line",
    "machine_summary",
    "markdown_table",
    "plot",
    "plot_curves",
    "update_doc",
    "write_json",
]

DOC_START = "<!-- macro:start -->"
DOC_END = "<!-- macro:end -->"
"""Around the full tables in ``docs/benchmarks.md``."""
HEADLINE_START = "<!-- headline:start -->"
HEADLINE_END = "<!-- headline:end -->"
"""Around the headline table in the README."""
BASE_SUFFIX = "@base"
"""``--baseline-tree``: the name of a contender's twin running the other tree's code."""
_NAN = float("nan")


@dataclass(slots=True)
class Result:
    name: str
    summary: str
    kind: str
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_us_per_req: float  # server process tree (or the self-timed process), utime + stime
    pg_cpu_us_per_req: float  # every postgres process on the machine, same window
    errors: int
    rss_mib: float
    client_cpu_pct: float | None = None  # wrk's CPU over the run, % of one core
    error_detail: dict[str, int] = field(default_factory=dict)
    ratio: float | None = None  # rps / baseline rps, set once the run is over
    open_loop: dict[str, Any] | None = None
    """Proxy contenders: the open-loop run at a fixed rate (``load.FixedRateResult`` fields
    plus ``cpu_us_per_req``), measured after the wrk run on the same server."""
    rounds_rps: list[float] = field(default_factory=list)
    """With ``--rounds N``: this contender's req/s in each round (this result is the median
    one's); empty for a single round."""


@dataclass(slots=True)
class Failure:
    name: str
    error: str


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _wrk_version() -> str | None:
    wrk = shutil.which("wrk")
    if not wrk:
        return None
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else None


def machine_summary() -> dict[str, Any]:
    dists = (
        "granian",
        "litestar",
        "fastapi",
        "uvicorn",
        "uvloop",
        "httptools",
        "asyncpg",
        "msgspec",
        "pyjwt",
    )
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_start": list(os.getloadavg()),
        "wrk": _wrk_version(),
        "versions": {d: v for d in dists if (v := _version(d))},
    }


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu_model']}, {machine['cores']} cores, Linux {machine['kernel']}, "
        f"Python {machine['python']}"
    )


# --------------------------------------------------------------------------- table


def _num(value: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def markdown_table(results: list[Result], failures: list[Failure], baseline: str) -> str:
    header: tuple[str, ...] = (
        "contender",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU µs/req",
        "PG µs/req",
        "errors",
        "RSS MiB",
        f"vs {baseline}",
    )
    rows: list[tuple[str, ...]] = [
        (
            r.name,
            _num(r.rps, ",.0f"),
            _num(r.p50_ms, ".2f"),
            _num(r.p99_ms, ".2f"),
            _num(r.cpu_us_per_req, ".1f"),
            _num(r.pg_cpu_us_per_req, ".1f"),
            str(r.errors),
            _num(r.rss_mib, ".0f"),
            _num(r.ratio, ".2f") + ("x" if r.ratio is not None else ""),
        )
        for r in results
    ]
    if any(len(r.rounds_rps) > 1 for r in results):
        # NOTE: the req/s column is the median round's; the range says how far rounds strayed.
        header = (*header, "req/s range")
        rows = [
            (*row, f"{min(r.rounds_rps):,.0f} to {max(r.rounds_rps):,.0f}" if r.rounds_rps else "-")
            for row, r in zip(rows, results, strict=True)
        ]
    rows += [(f.name, "FAILED", *("-",) * (len(header) - 2)) for f in failures]
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(header)
    ]

    def line(cells: tuple[str, ...]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


CACHE_GOALS = (
    # (contender compared, goal: at least this many times its req/s)
    ("granian-same-bytes", 0.70),
    ("granian-bare", 0.70),
    ("litestar-hello", 2.0),
    ("litestar-stock", 15.0),
)
"""cygate-full's goals (granian-same-bytes is the floor: a bare Granian app returning the same
bytes; granian-bare, the body with two headers, is shown too)."""
FLOOR = "granian-same-bytes"


def cache_goals(rounds: Rounds, subject: str = "cygate-full") -> str:
    """cygate-full against the contenders its goals name (ratios within a round), with p99,
    and the ceiling: the floor's own ratio, which no gateway doing more can pass."""
    p99 = rounds.each(subject, lambda r: r.p99_ms)
    if p99 is None:
        return ""
    floor_p99 = rounds.each(FLOOR, lambda r: r.p99_ms)
    lines = [
        f"`{subject}` against its goals (same run; p99 goal < 5 ms: "
        f"{p99.text('.2f', ' ms')}, {'met' if p99.median < 5 else 'not met'}"
        + (f"; the floor's own p99: {floor_p99.text('.2f', ' ms')}" if floor_p99 else "")
        + "):",
        "",
        f"| compared with | its req/s | {subject} / it | goal | met | ceiling |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, goal in CACHE_GOALS:
        ratio = rounds.ratio(subject, name)
        if ratio is None:
            continue
        (other,) = rounds.representatives([name])
        ceiling = rounds.ratio(FLOOR, name) if name != FLOOR else None
        lines.append(
            f"| {name} | {other.rps:,.0f} | {ratio.text('.2f', 'x')} | >= {goal:g}x | "
            f"{'yes' if ratio.median >= goal else 'no'} | "
            f"{ceiling.text('.2f', 'x') if ceiling is not None else '-'} |"
        )
    if len(lines) == 4:
        return ""
    lines += [
        "",
        f"Ceiling: `{FLOOR}`'s own ratio (a bare Granian app sending the same bytes; a gateway "
        "that does anything more cannot pass it on this machine).",
    ]
    return "\n".join(lines)


def against_baseline(rounds: Rounds, names: Sequence[str]) -> str:
    """Each ``name`` against ``name@base`` (``--baseline-tree``: the same contender on another
    tree's code), round by round: req/s and server CPU per request."""
    lines = []
    for name in names:
        rps = rounds.ratio(name, name + BASE_SUFFIX)
        cpu = paired(
            rounds.runs,
            name,
            name + BASE_SUFFIX,
            lambda a, b: a.cpu_us_per_req / b.cpu_us_per_req if b.cpu_us_per_req else _NAN,
        )
        if rps is None or cpu is None:
            continue
        lines.append(f"| {name} | {rps.text('.3f', 'x')} | {cpu.text('.3f', 'x')} |")
    if not lines:
        return ""
    return "\n".join(
        [
            "This tree against the baseline tree (`--baseline-tree`; ratios within a round):",
            "",
            "| contender | req/s, this / base | CPU µs per request, this / base |",
            "| --- | ---: | ---: |",
            *lines,
        ]
    )


HEADLINE = (
    ("cygate-full", "cygate: cached, authenticated (EdDSA token), rate-limited product read"),
    (FLOOR, "the floor: a bare Granian ASGI app sending the same bytes"),
    ("litestar-hello", "Litestar's hello-world on Granian"),
    ("litestar-stock", "stock Litestar: JWT auth, rate-limit middleware, response cache, asyncpg"),
)
"""The README's one table: cygate-full beside the floor and the two Litestar peers."""


def headline(rounds: Rounds, command: str, machine: dict[str, Any]) -> str:
    """The README's headline table (cygate-full against each of the others, median of the
    per-round ratios), or "" unless all four of :data:`HEADLINE` finished."""
    names = [name for name, _ in HEADLINE]
    results = rounds.representatives(names)
    if len(results) != len(names):
        return ""
    subject = names[0]
    lines = [
        f"| contender | req/s | p99 ms | CPU µs/req | {subject} / it |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for (name, role), result in zip(HEADLINE, results, strict=True):
        ratio = rounds.ratio(subject, name) if name != subject else None
        lines.append(
            f"| `{name}`: {role} | {result.rps:,.0f} | {_num(result.p99_ms, '.2f')} | "
            f"{_num(result.cpu_us_per_req, '.1f')} | "
            f"{'-' if ratio is None else format(ratio.median, '.2f') + 'x'} |"
        )
    n = len(rounds.runs)
    lines += [
        "",
        f"{machine_line(machine)}; "
        + (f"median of {n} rounds" if n > 1 else "one round")
        + f". Command: `{command}`",
    ]
    return "\n".join(lines)


def doc_block(table: str, command: str, machine: dict[str, Any]) -> str:
    """The full tables as ``docs/benchmarks.md`` keeps them: with the command and the machine
    (the date is in the run's JSON file and in git)."""
    return (
        f"{table}\n\n"
        f"Command: `{command}`  \n"
        f"Machine: {machine_line(machine)}\n"
        "(wrk and the server share the machine; req/s moves ±20 % between runs, CPU µs/req and "
        "ratios less; with `--rounds N` every ratio is the median of the rounds' own, with "
        "the range.)"
    )


def update_doc(path: Path, block: str, start: str = DOC_START, end: str = DOC_END) -> None:
    """Replace the text between the markers; the markers must be there, once each."""
    text = path.read_text()
    if text.count(start) != 1 or text.count(end) != 1:
        raise SystemExit(f"{path}: needs exactly one {start} and one {end}")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{path}: {end} comes before {start}")
    new = pattern.sub(lambda _: f"{start}\n{block}\n{end}", text, count=1)
    path.write_text(new)


# --------------------------------------------------------------------------- files


def write_json(record: dict[str, Any], results_dir: Path, when: datetime) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamped = results_dir / f"macro-{when:%Y%m%dT%H%M%SZ}.json"
    latest = results_dir / "macro-latest.json"
    text = json.dumps(_plain(record), indent=2, allow_nan=False) + "\n"
    stamped.write_text(text)
    latest.write_text(text)
    return stamped, latest


def _plain(obj: object) -> object:
    """JSON-ready: dataclasses as dicts, datetimes as ISO strings, NaN as null."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def plot(results: list[Result], path: Path, title: str) -> Path:
    """Two horizontal bar charts side by side: req/s (higher is better) and server CPU
    µs/request (lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results]
    fig, (ax_rps, ax_cpu) = plt.subplots(
        1, 2, figsize=(12, 0.55 * len(results) + 1.8), sharey=True, constrained_layout=True
    )
    bars = ax_rps.barh(names, [r.rps for r in results], color="tab:blue")
    ax_rps.bar_label(bars, labels=[f"{r.rps:,.0f}" for r in results], padding=3, fontsize=8)
    ax_rps.set_xlabel("requests / s (higher is better)")
    ax_rps.invert_yaxis()
    ax_rps.margins(x=0.2)
    cpu = [0.0 if math.isnan(r.cpu_us_per_req) else r.cpu_us_per_req for r in results]
    bars = ax_cpu.barh(names, cpu, color="tab:orange")
    ax_cpu.bar_label(bars, labels=[f"{c:.1f}" for c in cpu], padding=3, fontsize=8)
    ax_cpu.set_xlabel("server CPU µs / request (lower is better)")
    ax_cpu.margins(x=0.2)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True, slots=True)
class Panel:
    """One chart of :func:`plot_curves`: named series over the shared x values."""

    ylabel: str
    series: dict[str, list[float]]
    log_y: bool = False


def plot_curves(
    x: Sequence[float], panels: Sequence[Panel], path: Path, *, title: str, xlabel: str
) -> Path:
    """Line charts side by side, one per panel, over the same x values (log scale: sizes and
    connection counts grow by factors); NaN points are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.6 * len(panels), 3.8), constrained_layout=True, squeeze=False
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        for name, ys in panel.series.items():
            ax.plot(x, ys, marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xticks(list(x), [f"{v:,.0f}" for v in x], fontsize=8)
        ax.minorticks_off()
        if panel.log_y:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)  # NOTE: a rate axis from zero, so a 10 % dip looks like one
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
