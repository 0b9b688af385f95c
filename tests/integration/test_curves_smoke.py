"""The curves tool end to end on tiny inputs (seconds): real PostgreSQL, Redis and gateways,
databases of the test's own, results in a temporary directory. It checks that the tool runs
and writes what it says, not any figure."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from tests.conftest import SERVER_DSN

pytestmark = [pytest.mark.integration, pytest.mark.once]

ROOT = Path(__file__).resolve().parents[2]


async def _drop(names: list[str]) -> None:
    conn = await asyncpg.connect(SERVER_DSN)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def tag() -> Iterator[str]:
    tag = f"cygate_curvetest_{secrets.token_hex(3)}_"
    yield tag
    asyncio.run(_drop([f"{tag}50", f"{tag}120", f"{tag}orders"]))


def _curves(args: list[str], tag: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYGATE_")}
    if os.environ.get("CYGATE_NO_EXTENSIONS"):
        env["CYGATE_NO_EXTENSIONS"] = "1"
    env["BENCH_ORDERS_DB"] = f"{tag}orders"
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.macro.curves", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_the_catalog_curve_measures_each_size_and_writes_json_and_png(
    tag: str, tmp_path: Path
) -> None:
    args = ["catalog", "--sizes", "50,120", "--duration", "1", "--rate", "50"]
    args += ["--search-rate", "10", "--ids", "40", "--db-prefix", tag, "--results", str(tmp_path)]
    run = _curves(args, tag)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads((tmp_path / "curves-catalog-latest.json").read_text())
    assert [s["products"] for s in record["sizes"]] == [50, 120]
    for size in record["sizes"]:
        for window in ("read_open_loop", "read_closed_loop", "search_open_loop"):
            assert size[window]["requests"] > 0 and size[window]["errors"] == 0, size
    assert (tmp_path / "curves-catalog-latest.png").stat().st_size > 0
    assert "| 120 | search, fixed rate |" in run.stdout

    # the second run reuses the filled databases
    again = _curves([*args, "--sizes", "50"], tag)
    assert again.returncode == 0 and f"reusing {tag}50" in again.stdout


def test_the_buyers_curve_checks_stock_taken_against_quantities_ordered(
    tag: str, tmp_path: Path
) -> None:
    args = ["buyers", "--connections", "1,3", "--duration", "1", "--results", str(tmp_path)]
    run = _curves(args, tag)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads((tmp_path / "curves-buyers-latest.json").read_text())
    steps = {(s["mode"], s["connections"]) for s in record["steps"]}
    assert steps == {("hot", 1), ("distinct", 1), ("hot", 3), ("distinct", 3)}
    assert all(s["stock_ok"] and s["units_ordered"] > 0 for s in record["steps"])
    assert record["ok"] and record["checks"]["lost"] == record["checks"]["duplicated"] == 0
    assert (tmp_path / "curves-buyers-latest.png").stat().st_size > 0
