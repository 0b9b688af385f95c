"""``benchmarks.macro.mix`` for real, tiny: a small catalog, 200 req/s for 2 s. The per-group
output parses and every group answered only what the mix expects of it (no errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.macro.mix import BY_NAME

pytestmark = [pytest.mark.integration, pytest.mark.once]

ROOT = Path(__file__).resolve().parents[2]


def test_the_mix_runs_and_every_group_answers_as_expected(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "benchmarks.macro.mix", "--rate", "200", "--duration", "2",
            "--warmup", "1", "--products", "300", "--categories", "5", "--customers", "8",
            "--connections", "32", "--db", "cygate_bench_mix_smoke", "--results-dir",
            str(tmp_path)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYGATE_")}
    got = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
                         check=False)  # fmt: skip
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    record = json.loads((tmp_path / "mix-latest.json").read_text())
    (run,) = record["runs"]
    rows = {r["group"]: r for r in run["groups"]}
    assert set(rows) == set(BY_NAME)
    for name, row in rows.items():
        codes = {int(code) for code in row["statuses"]}
        assert codes <= BY_NAME[name].expected, (name, row["statuses"])
        assert row["errors"] == 0, (name, row)
    assert run["overall"]["requests"] > 300 and run["overall"]["errors"] == 0
    assert run["overall"]["server_cpu_us_per_req"] > 0
    assert "| overall |" in got.stdout
