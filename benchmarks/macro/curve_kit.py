"""What the cost curves (``curve_callers``, ``curve_routes``, ``curve_l1``) share: reading a list
of sizes from the command line, one-line failures, the results file, the chart and the table.

A curve is one measurement repeated at growing sizes in one run, reported against its first
size (a ratio per row), so the shared machine's drift between runs does not enter the figures;
the load average at the start and the end goes into the record beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from cygate.infra.db import ensure_database

from .prepare import with_database
from .report import machine_line, machine_summary

__all__ = [
    "HOST",
    "IMG_DIR",
    "RESULTS_DIR",
    "CurveError",
    "CurveParser",
    "die",
    "gateway_argv",
    "gateway_database",
    "load_average",
    "markdown_table",
    "parse_sizes",
    "plain_env",
    "plot_curves",
    "ratio",
    "service_urls",
    "write_record",
    "write_run",
]

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "benchmarks" / "results"
IMG_DIR = ROOT / "docs" / "img"


class CurveError(ValueError):
    """Bad input to a curve: the message is the one line the user sees."""


def die(message: str, prog: str = "curve") -> NoReturn:
    """One line on stderr and exit status 2 (bad input, or a service that is not there)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class CurveParser(argparse.ArgumentParser):
    """argparse with the curves' habits: a bad option is one line and status 2 (no usage
    block), and ``--results-dir``/``--img-dir``/``--no-plot`` for every curve."""

    def __init__(self, prog: str, description: str) -> None:
        super().__init__(prog=prog, description=description)
        self.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="JSON goes here")
        self.add_argument("--img-dir", type=Path, default=IMG_DIR, help="the PNG goes here")
        self.add_argument("--no-plot", action="store_true", help="no PNG")

    def error(self, message: str) -> NoReturn:
        die(message, self.prog)


HOST = "127.0.0.1"


def service_urls(database: str) -> tuple[str, str]:
    """(the URL of ``database`` on the server of ``DATABASE_URL``, ``REDIS_URL``), with the
    services' defaults."""
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    return with_database(server, database), os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def plain_env() -> dict[str, str]:
    """This environment without its ``CYGATE_*`` names: a gateway the curve starts gets only
    the settings the curve gives it (the gateway refuses unknown ``CYGATE_`` names anyway)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CYGATE_")}


def gateway_argv(port: int, python: str = sys.executable) -> list[str]:
    """``cygate serve`` on ``port`` of the loopback, one Granian worker (``python``: another
    checkout's interpreter runs that checkout's gateway)."""
    return [python, "-m", "cygate", "serve", "--host", HOST, "--port", str(port),
            "--workers", "1"]  # fmt: skip


def gateway_database(dsn: str, *, seed: Sequence[str] = ()) -> None:
    """Create the database at ``dsn`` if missing and bring it to the gateway's schema with
    its own CLI (``cygate migrate``; then ``cygate seed --if-empty SEED`` when ``seed`` is
    given). CurveError when either fails."""
    asyncio.run(ensure_database(dsn))
    env = plain_env()
    env["CYGATE_DATABASE_URL"] = dsn
    steps: list[tuple[str, ...]] = [("migrate",)]
    if seed:
        steps.append(("seed", "--if-empty", *seed))
    for args in steps:
        proc = subprocess.run([sys.executable, "-m", "cygate", *args], env=env, check=False)
        if proc.returncode != 0:
            raise CurveError(f"`cygate {args[0]}` exited with {proc.returncode} (database {dsn})")


def parse_sizes(text: str, what: str, *, most: int = 10_000_000) -> list[int]:
    """``1,100,1k,10k`` -> ``[1, 100, 1000, 10000]`` (``k``/``m`` suffixes, ``_`` allowed);
    each a whole number from 1 to ``most``, ascending and distinct."""
    sizes: list[int] = []
    for raw in text.split(","):
        part = raw.strip().lower().replace("_", "")
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        digits = part[:-1] if scale != 1 else part
        if not digits.isdigit():
            raise CurveError(f"{what}: {raw.strip()!r} is not a whole number (e.g. 1,100,1k)")
        value = int(digits) * scale
        if not 1 <= value <= most:
            raise CurveError(f"{what}: {value} is out of range (1 to {most:,})")
        sizes.append(value)
    if sizes != sorted(set(sizes)):
        raise CurveError(f"{what}: give distinct sizes in ascending order, not {text!r}")
    return sizes


def ratio(value: float, first: float) -> float:
    """``value / first``; NaN when either is missing or ``first`` is 0."""
    if not first or math.isnan(first) or math.isnan(value):
        return math.nan
    return value / first


def load_average() -> str:
    """``uptime``'s three load averages, for the record and the printed table."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], formats: Sequence[str]
) -> str:
    """A Markdown table: the first column left-aligned, the others right-aligned; a NaN or
    None cell is ``-``."""

    def cell(value: Any, fmt: str) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return format(value, fmt)

    lines = [
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
    ]
    lines.extend(
        "| " + " | ".join(cell(v, f) for v, f in zip(row, formats, strict=True)) + " |"
        for row in rows
    )
    return "\n".join(lines)


def write_record(name: str, record: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """``<directory>/<name>-latest.json`` (``benchmarks/results``) with the machine and the
    load added; its path."""
    machine = machine_summary()
    full = {
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {**machine, "line": machine_line(machine)},
        "load_average_at_end": load_average(),
        **record,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-latest.json"
    path.write_text(json.dumps(full, indent=2, default=str) + "\n")
    return path


def write_run(
    name: str,
    args: argparse.Namespace,
    *,
    prog: str,
    load_start: str,
    points: Sequence[Any],
    text: str,
    **extra: Any,
) -> Path:
    """Print the run's table and the load average, and write its record (the command, the
    options, the points as dicts, the table and ``extra``) with :func:`write_record`."""
    print()
    print(text)
    print(f"\nload average: start {load_start}, end {load_average()}")
    record = {
        "command": f"{prog} " + " ".join(sys.argv[1:]),
        "options": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        **extra,
        "load_average_at_start": load_start,
        "points": [asdict(p) for p in points],
        "table": text,
    }
    path = write_record(name, record, args.results_dir)
    print(f"written {path}")
    return path


def plot_curves(
    path: Path,
    title: str,
    panels: Sequence[tuple[str, dict[str, tuple[Sequence[float], Sequence[float]]]]],
    *,
    xlabel: str,
    logx: bool = True,
    hline: Callable[[int], float | None] | None = None,
    vline: float | None = None,
) -> Path:
    """One PNG of side-by-side panels; each panel is (y label, series label -> (x, y)).
    ``hline(panel index)`` draws a dashed reference (a goal) on that panel when not None;
    ``vline`` a dashed vertical one (a default size) on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for n, (ax, (ylabel, series)) in enumerate(zip(axes[0], panels, strict=True)):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=label)
        if logx:
            ax.set_xscale("log")
        goal = hline(n) if hline is not None else None
        if goal is not None:
            ax.axhline(goal, color="tab:gray", linestyle="--", linewidth=1)
        if vline is not None:
            ax.axvline(vline, color="tab:gray", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, 75 * len(panels)), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
