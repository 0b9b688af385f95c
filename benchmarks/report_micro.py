"""Print the micro-benchmark results per group: mean time per operation and ratio to the fastest.

Usage: ``python -m benchmarks.report_micro [RESULTS.json] [--update-doc [FILE]]`` (default: the
newest ``*.json`` in ``benchmarks/results/`` written by ``pytest --benchmark-json``; with
``--update-doc`` the report also goes between the ``micro`` markers of FILE, by default
``docs/benchmarks.md``). Each case stores the number of
operations in one round as ``extra_info["ops"]`` (1 when absent), so a round's mean divided by it
is the time of one operation. A case named ``*_baseline`` (e.g. the bare loop of a workload) is
shown but not ranked, and the others also show their time less the baseline's ("net").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["doc_block", "main", "rows", "table"]

RESULTS = Path(__file__).resolve().parent / "results"
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
MICRO_START = "<!-- micro:start -->"
MICRO_END = "<!-- micro:end -->"


def _is_pytest_benchmark(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "benchmarks" in data and "machine_info" in data


def newest_json(directory: Path = RESULTS) -> Path:
    """The most recently written pytest-benchmark JSON file in ``directory``."""
    candidates = [p for p in directory.glob("*.json") if _is_pytest_benchmark(p)]
    if not candidates:
        raise SystemExit(f"no pytest-benchmark JSON file in {directory}")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def _is_baseline(name: str) -> bool:
    return name.endswith("_baseline")


def rows(data: dict[str, Any]) -> dict[str, list[tuple[str, float, float | None, float, int]]]:
    """Per group, fastest first: (name, µs/op, µs/op less the group's baseline case if any,
    ratio to the fastest non-baseline case, ops per round)."""
    groups: dict[str, list[tuple[str, float, int]]] = {}
    for bench in data["benchmarks"]:
        ops = int(bench.get("extra_info", {}).get("ops", 1)) or 1
        per_op_us = bench["stats"]["mean"] / ops * 1e6
        groups.setdefault(bench.get("group") or "(no group)", []).append(
            (bench["name"], per_op_us, ops)
        )
    result = {}
    for group, cases in groups.items():
        cases.sort(key=lambda case: case[1])
        baseline = next((us for name, us, _ in cases if _is_baseline(name)), None)
        fastest = min((us for name, us, _ in cases if not _is_baseline(name)), default=1.0)
        result[group] = [
            (
                name,
                us,
                None if baseline is None or _is_baseline(name) else us - baseline,
                1.0 if _is_baseline(name) else us / fastest,
                ops,
            )
            for name, us, ops in cases
        ]
    return result


def table(data: dict[str, Any]) -> str:
    """The report as plain text, one table per group (a ``*_baseline`` case is not ranked)."""
    machine = data.get("machine_info", {})
    lines = [
        f"{machine.get('python_implementation', '?')} {machine.get('python_version', '?')} on "
        f"{machine.get('cpu', {}).get('brand_raw', machine.get('machine', '?'))}"
    ]
    for group, cases in rows(data).items():
        width = max(len(name) for name, *_ in cases)
        lines += [
            "",
            group,
            f"  {'case':<{width}}  {'us/op':>9}  {'net us/op':>9}  {'x fastest':>9}  {'ops':>5}",
        ]
        for name, us, net, ratio, ops in cases:
            net_text = "" if net is None else f"{net:.3f}"
            ratio_text = "-" if _is_baseline(name) else f"{ratio:.2f}"
            lines.append(f"  {name:<{width}}  {us:>9.3f}  {net_text:>9}  {ratio_text:>9}  {ops:>5}")
    return "\n".join(lines)


def doc_block(report: str) -> str:
    """The report as ``docs/benchmarks.md`` keeps it, with the command that makes it (the
    date is in the results file and in git)."""
    return (
        "Made by `make bench-micro` (`pytest benchmarks/micro --benchmark-json=...`, then "
        "`python -m benchmarks.report_micro ... --update-doc`); us/op = one operation "
        "(one route match, one path normalised):\n\n```\n" + report + "\n```"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, help="pytest-benchmark JSON file")
    parser.add_argument(
        "--update-doc",
        type=Path,
        nargs="?",
        const=DOC,
        metavar="FILE",
        help=f"replace the text between {MICRO_START} and {MICRO_END} in FILE "
        "(default docs/benchmarks.md)",
    )
    args = parser.parse_args(argv)
    path: Path = args.results or newest_json()
    data = json.loads(path.read_text())
    # pytest-benchmark keeps every round's timing (tens of MB); the summary is what we keep.
    if any("data" in bench.get("stats", {}) for bench in data["benchmarks"]):
        for bench in data["benchmarks"]:
            bench["stats"].pop("data", None)
        path.write_text(json.dumps(data, indent=1) + "\n")
    report = table(data)
    print(f"{path}:")
    print(report)
    if args.update_doc:
        from benchmarks.macro.report import update_doc

        update_doc(args.update_doc, doc_block(report), MICRO_START, MICRO_END)
        print(f"{args.update_doc} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
