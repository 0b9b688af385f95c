"""Print the micro-benchmark results per group: mean time per operation and ratio to the fastest.

Usage: ``python benchmarks/report_micro.py [RESULTS.json]`` (default: the newest ``*.json`` in
``benchmarks/results/`` written by ``pytest --benchmark-json``). Each case stores the number of
operations in one round as ``extra_info["ops"]`` (1 when absent), so a round's mean divided by it
is the time of one operation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "rows", "table"]

RESULTS = Path(__file__).resolve().parent / "results"


def newest_json(directory: Path = RESULTS) -> Path:
    """The most recently written pytest-benchmark JSON file in ``directory``."""
    candidates = [
        p for p in directory.glob("*.json") if "benchmarks" in json.loads(p.read_text() or "{}")
    ]
    if not candidates:
        raise SystemExit(f"no pytest-benchmark JSON file in {directory}")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def rows(data: dict[str, Any]) -> dict[str, list[tuple[str, float, float, int]]]:
    """Per group: (name, µs per op, ratio to the fastest, ops per round), fastest first."""
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
        fastest = cases[0][1]
        result[group] = [(name, us, us / fastest, ops) for name, us, ops in cases]
    return result


def table(data: dict[str, Any]) -> str:
    """The report as plain text, one table per group."""
    lines = []
    machine = data.get("machine_info", {})
    lines.append(
        f"{machine.get('python_implementation', '?')} {machine.get('python_version', '?')} on "
        f"{machine.get('cpu', {}).get('brand_raw', machine.get('machine', '?'))}"
    )
    for group, cases in rows(data).items():
        width = max(len(name) for name, *_ in cases)
        lines += ["", group, f"  {'case':<{width}}  {'µs/op':>10}  {'× fastest':>10}  {'ops':>5}"]
        lines += [
            f"  {name:<{width}}  {us:>10.3f}  {ratio:>10.2f}  {ops:>5}"
            for name, us, ratio, ops in cases
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, help="pytest-benchmark JSON file")
    args = parser.parse_args(argv)
    path: Path = args.results or newest_json()
    print(f"{path}:")
    print(table(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
