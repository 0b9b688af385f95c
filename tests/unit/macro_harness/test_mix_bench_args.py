"""``benchmarks.macro.mix``: bad input is one line and exit status 2 before anything starts,
and the mix's shares follow loadtests' weights and the visit model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.macro.mix import BY_NAME, cost_table, mix_shares

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[3]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.macro.mix", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--rate", "0"), "--rate: '0': must be above 0"),
        (("--rate", "-5"), "--rate: '-5': must be above 0"),
        (("--rate", "abc"), "--rate: 'abc' is not a number"),
        (("--duration", "abc"), "--duration: 'abc' is not a number"),
        (("--groups", "product,nope"), "unknown group nope"),
        (("--find", "--start", "5000", "--max", "1000"), "below --start"),
        (("--find", "--cost"), "one at a time"),
        (("--cost", "--cost-rate", "0"), "--cost-rate: '0': must be above 0"),
    ],
)
def test_bad_arguments_are_one_line_and_status_2(args: tuple[str, ...], says: str) -> None:
    got = _run(*args)
    assert got.returncode == 2
    assert got.stderr.count("\n") == 1 and says in got.stderr, got.stderr
    assert "Traceback" not in got.stderr


def test_an_unreachable_database_is_one_line_and_status_2() -> None:
    with socket.socket() as sock:  # bound, never listening: nothing answers there
        sock.bind(("127.0.0.1", 0))
        url = f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/postgres"
        got = _run("--rate", "100", env={"DATABASE_URL": url})
    assert got.returncode == 2
    assert got.stderr.count("\n") == 1 and "cannot reach PostgreSQL" in got.stderr, got.stderr


def test_the_shares_sum_to_one_and_keep_the_locust_ratios() -> None:
    shares = mix_shares(10_000, 900, list(BY_NAME))
    assert sum(shares.values()) == pytest.approx(1.0)
    # loadtests/workload.py: anonymous product reads 40, lists 10 (same class)
    assert shares["product"] / shares["list"] == pytest.approx(4.0)
    # sign-in: one visit in ten of 60 requests, far below locust's 1 task in 50
    assert shares["sign_in"] < 0.001 < shares["refresh"] < 0.01
    # the manager offers a fixed rate: its share halves when the rate doubles
    assert mix_shares(20_000, 900, list(BY_NAME))["manager_patch"] == pytest.approx(
        shares["manager_patch"] / 2
    )


def test_a_subset_is_renormalised() -> None:
    shares = mix_shares(1000, 900, ["product", "search"])
    assert set(shares) == {"product", "search"}
    assert sum(shares.values()) == pytest.approx(1.0)


def test_cost_table_puts_the_costliest_group_first_and_says_the_ceiling() -> None:
    rows = [
        {"group": "product", "share": 0.9, "rate": 200.0, "server_cpu_us_per_req": 50.0,
         "postgres_cpu_us_per_req": 10.0, "server_cpu_share": 0.45 / 1.45,
         "cache": {"hit-l1": 0.9}},
        {"group": "pay", "share": 0.1, "rate": 200.0, "server_cpu_us_per_req": 1000.0,
         "postgres_cpu_us_per_req": 900.0, "server_cpu_share": 1 - 0.45 / 1.45, "cache": {}},
    ]  # fmt: skip
    text = cost_table(rows, workers=2)
    body = [line for line in text.splitlines() if line.startswith("| ")][2:]
    assert body[0].startswith("| pay |") and body[1].startswith("| product |")
    # 0.9 x 50 + 0.1 x 1000 = 145 µs per request of the mix: 2 cores serve ~13,793 req/s
    assert "145 µs of server CPU" in text and "13,793 req/s" in text
