"""PNG charts and a summary table of one locust run, from its CSV history and SLO report.

``rate.png`` (requests and failures per second as locust's history reports them, a moving
average of a few seconds; users), ``latency.png`` (p50, p95, p99 over
time: locust's percentiles of the last few seconds) and ``errors.png`` (the failure ratio over
time) from ``locust_stats_history.csv``; ``summary.md``, a table per endpoint group with the
exact final figures and the SLO verdict, from ``slo.json``. :func:`capacity_chart` draws a
capacity search (achieved against offered rate, latency per step) for ``tool.py capacity`` and
the open-loop mix benchmark (``benchmarks/macro/mix.py --find``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["capacity_chart", "history", "summary_table", "write_charts"]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "N/A" before the first request


def history(path: Path) -> list[dict[str, float | None]]:
    """The aggregated rows of locust's ``*_stats_history.csv``, time in seconds from the
    first row."""
    rows: list[dict[str, float | None]] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("Name") != "Aggregated":
                continue
            rows.append({key: _number(value) for key, value in row.items() if key != "Name"})
    if rows:
        start = rows[0]["Timestamp"] or 0.0
        for row in rows:
            row["t"] = (row["Timestamp"] or start) - start
    return rows


def write_charts(rows: list[dict[str, float | None]], out: Path, title: str) -> list[Path]:
    """rate.png, latency.png and errors.png in ``out``; the paths written (none without rows)."""
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    t = [r["t"] for r in rows]

    def series(key: str) -> list[float]:
        return [v if (v := r.get(key)) is not None else float("nan") for r in rows]

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t, series("Requests/s"), label="requests/s")
    ax.plot(t, series("Failures/s"), label="failures/s", color="tab:red")
    ax.set_xlabel("seconds")
    ax.set_ylabel("per second")
    users = ax.twinx()
    users.plot(t, series("User Count"), label="users", color="tab:gray", linestyle="--")
    users.set_ylabel("users")
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = users.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, loc="upper left")
    save(fig, "rate.png")

    fig, ax = plt.subplots(figsize=(9, 4))
    for key in ("50%", "95%", "99%"):
        ax.plot(t, series(key), label=f"p{key[:-1]}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.legend(loc="upper left")
    save(fig, "latency.png")

    fig, ax = plt.subplots(figsize=(9, 3))
    ratio = [
        (f / (f + r) if f is not None and r is not None and f + r > 0 else 0.0)
        for r, f in zip(series("Requests/s"), series("Failures/s"), strict=True)
    ]
    ax.plot(t, [100 * x for x in ratio], color="tab:red", label="failed requests %")
    ax.set_xlabel("seconds")
    ax.set_ylabel("%")
    ax.legend(loc="upper left")
    save(fig, "errors.png")
    return written


def capacity_chart(steps: list[dict[str, Any]], path: Path, title: str) -> None:
    """Achieved against offered req/s, and p50/p95/p99 per step (``offered``, ``achieved``,
    ``p50_ms``, ``p95_ms``, ``p99_ms`` of each step); nothing without steps."""
    if not steps:
        return
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    offered = [s["offered"] for s in steps]
    fig, (rate_ax, lat_ax) = plt.subplots(1, 2, figsize=(10, 4))
    rate_ax.plot(offered, [s["achieved"] for s in steps], marker="o", label="achieved")
    rate_ax.plot(offered, offered, linestyle="--", color="tab:gray", label="offered")
    rate_ax.set_xlabel("offered req/s")
    rate_ax.set_ylabel("achieved req/s")
    rate_ax.legend()
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        lat_ax.plot(offered, [s[key] for s in steps], marker="o", label=key[:3])
    lat_ax.set_xlabel("offered req/s")
    lat_ax.set_ylabel("ms")
    lat_ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


def summary_table(report: dict[str, Any]) -> str:
    """A Markdown table per endpoint group (and the total) with the verdict under it."""
    limits = report.get("limits") or {}
    lines = [
        "| group | requests | req/s | p50 ms | p95 ms | p99 ms | errors "
        "| limits (p95/p99/errors) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    rows = [*report.get("groups", {}).items(), ("TOTAL", report["total"])]
    for group, g in rows:
        lim = limits.get(group)
        bounds = (
            "/".join("off" if lim[k] is None else f"{lim[k]:g}" for k in ("p95", "p99", "errors"))
            if lim
            else ""
        )
        lines.append(
            f"| {group} | {g['requests']} | {g['rps']:.1f} | {_ms(g['p50_ms'])} | "
            f"{_ms(g['p95_ms'])} | {_ms(g['p99_ms'])} | {100 * g['fail_ratio']:.2f} % | {bounds} |"
        )
    verdict = "PASS" if report["passed"] else "FAIL: " + "; ".join(report["problems"])
    lines += ["", f"SLO {verdict}"]
    if report.get("outcomes"):
        lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in report["outcomes"].items()))
    return "\n".join(lines) + "\n"


def write_all(out: Path, title: str) -> tuple[list[Path], str | None]:
    """Charts and ``summary.md`` for the run in ``out``; (PNGs written, summary text or None
    when there is no SLO report)."""
    hist = out / "locust_stats_history.csv"
    pngs = write_charts(history(hist), out, title) if hist.exists() else []
    slo_path = out / "slo.json"
    if not slo_path.exists():
        return pngs, None
    text = summary_table(json.loads(slo_path.read_text(encoding="utf-8")))
    (out / "summary.md").write_text(text, encoding="utf-8")
    return pngs, text
