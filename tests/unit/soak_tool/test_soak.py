"""The soak tool (``loadtests/soak.py``, ``make soak``): its options, its verdict, its chart.

The soak itself (a gateway under load for minutes) is not run here; these check what it does
with bad options and with the samples it takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from loadtests.soak import Sample, chart, format_summary, parse_args, slope, summarize

pytestmark = pytest.mark.once

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--seconds", "ten"], {}, "--seconds: 'ten' is not a number of seconds"),
        (["--seconds", "10"], {}, "--seconds: '10': at least 30 seconds"),
        (["--seconds", "nan"], {}, "at least 30 seconds"),
        (["--seconds", "inf"], {}, "at least 30 seconds"),
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
        ([], {"SOAK_SECONDS": "5m"}, "'5m' is not a number of seconds"),
        (["--interval", "0"], {}, "--interval: '0': at least 0.5 seconds"),
        (["--seconds", "60", "--interval", "20"], {}, "at most a quarter of --seconds"),
        (["--users", "many"], {}, "'many' is not a number of users"),
        (["--scenario", "chaos"], {}, "invalid choice: 'chaos'"),
    ],
)
def test_bad_options_are_one_line_and_status_2(
    args: list[str], env: dict[str, str], says: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.soak", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("soak: ") and says in lines[0], lines[0]


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SOAK_SECONDS", "SOAK_INTERVAL", "SOAK_USERS", "SOAK_WORKERS", "SOAK_SCENARIO"):
        monkeypatch.delenv(name, raising=False)
    options = parse_args([])
    assert (options.seconds, options.interval, options.users, options.workers) == (600, 5, 20, 2)
    assert options.scenario == "mixed"
    monkeypatch.setenv("SOAK_SECONDS", "180")
    assert parse_args([]).seconds == 180
    assert parse_args(["--seconds", "45.5"]).seconds == 45.5


def test_slope_is_least_squares_per_second() -> None:
    assert slope([(0, 1), (10, 21), (20, 41)]) == pytest.approx(2.0)
    assert slope([(0, 5), (10, 5)]) == 0.0
    assert slope([(3, 7)]) == 0.0
    assert slope([(3, 7), (3, 9)]) == 0.0  # no spread in time: no slope


def _series(rss: list[float], fds: list[int], pid: int = 11, role: str = "worker") -> list[Sample]:
    return [
        Sample(float(i * 5), pid, role, r, f, f // 2, f // 2)
        for i, (r, f) in enumerate(zip(rss, fds, strict=True))
    ]


def test_a_series_that_rises_then_stays_levels_off() -> None:
    # Warm-up in the first half (caches filling), then flat with noise.
    rss = [60.0, 80, 95, 100, 101, 100.5, 101, 100.8, 101.2, 100.9, 101, 101.1]
    fds = [20, 40, 50, 52, 52, 53, 52, 52, 53, 52, 52, 53]
    (summary,) = summarize(_series(rss, fds))
    assert summary.samples == 12
    trend = summary.trends["rss_mib"]
    assert (trend.start, trend.end, trend.high) == (60.0, 101.1, 101.2)
    assert all(t.levels_off for t in summary.trends.values())
    assert "GROWS" not in format_summary([summary], 55)


def test_a_leak_in_the_second_half_is_reported() -> None:
    rss = [60.0 + 3 * i for i in range(20)]  # 3 MiB per 5 s, steadily
    fds = [20 + i for i in range(20)]  # one descriptor more per sample
    main = _series([50.0] * 20, [10] * 20, pid=1, role="main")
    summaries = summarize(main + _series(rss, fds))
    assert [s.role for s in summaries] == ["main", "worker"]
    assert all(t.levels_off for t in summaries[0].trends.values())
    worker = summaries[1].trends
    assert not worker["rss_mib"].levels_off
    assert worker["rss_mib"].per_minute == pytest.approx(36.0)
    assert not worker["fds"].levels_off
    text = format_summary(summaries, 95)
    assert text.count("GROWS") == 3  # RSS, descriptors, connections of the worker


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    samples = _series([60.0, 70, 75], [10, 12, 12]) + _series([50.0] * 3, [5] * 3, pid=1)
    chart(samples, tmp_path / "soak.png", "test")
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
