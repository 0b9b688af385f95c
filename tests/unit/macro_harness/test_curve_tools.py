"""The cost curves (``curve_callers``, ``curve_routes``, ``curve_l1``): bad input is one line and
status 2, the pieces they are made of, and each one run for real at tiny sizes (seconds)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.macro.curve_callers import parse_variant, scrape
from benchmarks.macro.curve_kit import CurveError, parse_sizes, ratio
from benchmarks.macro.curve_l1 import default_l1_bytes, hit_ratios
from benchmarks.macro.curve_rate import thread_times
from benchmarks.macro.curve_routes import match_mix, route_file, route_patterns, time_match
from benchmarks.macro.load import write_lua

from cygate.core import router as routing
from cygate.core.router import RouterPy

pytestmark = pytest.mark.once

REPO = Path(__file__).resolve().parents[3]
CURVES = ("curve_callers", "curve_routes", "curve_l1", "curve_rate")


def _run(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.macro.{module}", *args],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("module", "args", "says"),
    [
        ("curve_callers", ["--callers", "abc"], "'abc' is not a whole number"),
        ("curve_callers", ["--callers", "0"], "0 is out of range"),
        ("curve_callers", ["--callers", "-5"], "'-5' is not a whole number"),
        ("curve_callers", ["--callers", "100,10"], "ascending"),
        ("curve_callers", ["--duration", "abc"], "invalid float value: 'abc'"),
        ("curve_callers", ["--duration", "0"], "--duration must be above 0"),
        (
            "curve_callers",
            ["--variant", "nameless"],
            "expected NAME[@CHECKOUT]:CYGATE_SETTING=value",
        ),
        ("curve_callers", ["--variant", "x:HOME=/"], "is not CYGATE_SETTING=value"),
        ("curve_callers", ["--variant", "b@/nowhere:"], "does not exist (`make build` there)"),
        ("curve_callers", ["--common", "HOME=/"], "--common: 'HOME=/' is not CYGATE_SETTING"),
        ("curve_callers", ["--bogus"], "unrecognized arguments: --bogus"),
        ("curve_routes", ["--routes", "abc"], "'abc' is not a whole number"),
        ("curve_routes", ["--routes", "0"], "0 is out of range"),
        ("curve_routes", ["--routes", "-10"], "is not a whole number"),
        ("curve_routes", ["--repeats", "0"], "--repeats must be at least 1"),
        ("curve_l1", ["--catalog", "abc"], "'abc' is not a whole number"),
        ("curve_l1", ["--requests", "0"], "0 is out of range"),
        ("curve_l1", ["--zipf", "abc"], "'abc' is not a number"),
        ("curve_l1", ["--zipf", "-1"], "out of range"),
        ("curve_l1", ["--policy", "lru"], "unrecognized arguments: --policy"),
        ("curve_rate", ["--rates", "abc"], "'abc' is not a whole number"),
        ("curve_rate", ["--rates", "0"], "0 is out of range"),
        ("curve_rate", ["--rates", "-500"], "is not a whole number"),
        ("curve_rate", ["--rates", "2k,1k"], "ascending"),
        ("curve_rate", ["--saturate", "500"], "--saturate must be 0 or above the last rate"),
        ("curve_rate", ["--saturate", "-1"], "--saturate must be 0 or above the last rate"),
        ("curve_rate", ["--duration", "abc"], "invalid float value: 'abc'"),
        ("curve_rate", ["--duration", "0"], "--duration must be 1 to 600 seconds"),
        ("curve_rate", ["--connections", "0"], "--connections must be 1 to 1024"),
    ],
)
def test_bad_input_is_one_line_and_status_2(module: str, args: list[str], says: str) -> None:
    proc = _run(module, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"python -m benchmarks.macro.{module}: error: "), lines[0]
    assert says in lines[0], lines[0]


def test_sizes_read_like_people_write_them() -> None:
    assert parse_sizes("1,100,1k,10k,100_000", "--x") == [1, 100, 1000, 10_000, 100_000]
    assert parse_sizes("2M", "--x", most=10**7) == [2_000_000]
    for bad in ("", "1.5", "1,,2", "k", "3,3"):
        with pytest.raises(CurveError):
            parse_sizes(bad, "--x")
    with pytest.raises(CurveError, match="out of range"):
        parse_sizes("11", "--x", most=10)


def test_a_variant_takes_json_values() -> None:
    variant = parse_variant('w:CYGATE_A=1;CYGATE_RATE_LIMITS={"b":{"rate":1,"period":1}}')
    assert variant.name == "w" and variant.python == sys.executable
    assert variant.env == {"CYGATE_A": "1", "CYGATE_RATE_LIMITS": '{"b":{"rate":1,"period":1}}'}


def test_a_variant_from_another_checkout(tmp_path: Path) -> None:
    with pytest.raises(CurveError, match="make build"):
        parse_variant(f"before@{tmp_path}:")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text("")
    variant = parse_variant(f"before@{tmp_path}:")
    assert variant.env == {} and variant.python == str(tmp_path / ".venv" / "bin" / "python")
    assert variant.cwd == tmp_path
    for bad in ("before:", "@x:", "b@:CYGATE_A=1", "b@x:A=1", "b"):
        with pytest.raises(CurveError):
            parse_variant(bad)


def test_ratio_is_nan_without_a_first_figure() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, 0.0) != ratio(3.0, 0.0)  # NaN


def test_scrape_sums_the_series_of_a_name() -> None:
    text = (
        "# HELP cygate_ratelimit_keys keys\n"
        'cygate_ratelimit_keys{limit="a"} 3\n'
        'cygate_ratelimit_keys{limit="b"} 4\n'
        "cygate_jwt_verified_total 12\n"
    )
    assert scrape(text) == {"cygate_ratelimit_keys": 7.0, "cygate_jwt_verified_total": 12.0}


# --------------------------------------------------------------------------- the pieces


def test_the_tokens_script_reads_its_tokens_and_starts_at_its_offset(tmp_path: Path) -> None:
    script = write_lua(
        tmp_path / "s.lua", cycle_prefix="/p/", ids=["a", "b"], tokens_file=tmp_path / "t.txt"
    ).read_text()
    assert f'tokens_file = "{tmp_path / "t.txt"}"' in script
    assert "io.lines(tokens_file)" in script and "tonumber(args[1])" in script
    with pytest.raises(ValueError, match="cycling script"):
        write_lua(tmp_path / "x.lua", tokens_file=tmp_path / "t.txt")


def test_route_file_has_n_distinct_routes_and_the_mix_resolves() -> None:
    doc = route_file(30, 9)
    assert len(doc["routes"]) == 30
    assert len({r["path"] for r in doc["routes"]}) == 30
    assert doc["upstreams"]["svc"]["targets"] == ["http://127.0.0.1:9"]
    assert route_patterns(3) == [
        "/s00000/items",
        "/s00001/items/{id:int}",
        "/s00002/files/{rest:path}",
    ]
    mix = match_mix(30)
    assert len(mix) == 60 and any(e is None for *_, e in mix) and any(e for *_, e in mix)
    # time_match checks every request of the mix against its expected route first
    impls = [RouterPy] + ([routing.RouterC] if hasattr(routing, "RouterC") else [])
    for cls in impls:
        assert time_match(cls, 30, rounds=2, repeats=1) > 0


def test_l1_hit_ratio_grows_with_its_size() -> None:
    low, high = hit_ratios(2000, 4000, 1.0, [20, 400], seed=1)
    assert 0 < low < high < 1
    assert default_l1_bytes() == 64 * 2**20


# --------------------------------------------------------------------------- real runs, tiny


def test_l1_curve_runs(tmp_path: Path) -> None:
    proc = _run("curve_l1", "--catalog", "2000", "--requests", "4000", "--zipf", "1.0",
                "--results-dir", str(tmp_path), "--img-dir", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "l1-latest.json").read_text())
    assert {p["zipf"] for p in record["points"]} == {1.0}
    assert (tmp_path / "curve-l1.png").stat().st_size > 0


def test_routes_curve_runs_a_gateway_per_size(tmp_path: Path) -> None:
    proc = _run("curve_routes", "--routes", "10,30", "--rounds", "2", "--repeats", "1",
                "--starts", "1", "--results-dir", str(tmp_path), "--no-plot",
                timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    points = json.loads((tmp_path / "routes-latest.json").read_text())["points"]
    assert [p["routes"] for p in points] == [10, 30]
    assert all(p["startup_s"] > 0 and p["rss_mib"] > 0 for p in points)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_callers_curve_runs_a_gateway_per_size(tmp_path: Path) -> None:
    proc = _run("curve_callers", "--callers", "1,3", "--duration", "1", "--warmup", "1",
                "--results-dir", str(tmp_path), "--no-plot", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((tmp_path / "callers-latest.json").read_text())
    points = record["points"]
    assert [p["callers"] for p in points] == [1, 3]
    assert all(p["errors"] == 0 and p["rps"] > 0 for p in points)
    # every token was met in the warm-up: none is verified in full in the measured run
    assert [p["ratelimit_keys"] >= p["callers"] for p in points] == [True, True]
    assert all(p["verified_share"] == 0 and p["jwt_cache_tokens"] >= p["callers"] for p in points)
    assert record["memory_per_caller"]["revoked token (jti -> expiry)"] > 0


def test_thread_times_count_a_busy_thread_and_its_switches() -> None:
    # A child that spins 0.3 s on its first thread, sleeps in 50 short steps (a switch each),
    # says so, and waits to be killed.
    code = (
        "import sys, time\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "for _ in range(50): time.sleep(0.001)\n"
        "print('done', flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "done\n"
        got = thread_times(child.pid)
        assert got.loop_s >= 0.3 and got.runtime_s == 0
        assert got.total_s == got.loop_s + got.other_s
        assert got.switches >= 50
        assert (got - got).total_s == 0 and (got - got).switches == 0
    finally:
        child.kill()
        child.communicate()
    assert thread_times(child.pid).total_s == 0  # gone: nothing to count


def test_rate_curve_runs_three_servers_side_by_side(tmp_path: Path) -> None:
    proc = _run("curve_rate", "--rates", "200", "--saturate", "0", "--duration", "1",
                "--results-dir", str(tmp_path), "--no-plot", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    points = json.loads((tmp_path / "rate-latest.json").read_text())["points"]
    assert sorted(p["contender"] for p in points) == ["cygate", "granian-bare", "uvicorn-bare"]
    assert all(p["errors"] == 0 and p["achieved"] > 0 and p["cpu_us"] > 0 for p in points)
    floor = next(p for p in points if p["contender"] == "granian-bare")
    assert floor["vs_floor"] == 1.0
    uvicorn = next(p for p in points if p["contender"] == "uvicorn-bare")
    assert uvicorn["runtime_us"] == 0  # one thread: no Rust runtime
