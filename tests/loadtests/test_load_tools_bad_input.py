"""Bad input to the load tools: one clear line on stderr and exit status 2, never a traceback,
and no load (the checks come before locust or a gateway is started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from load_helpers import LOADTESTS, REPO, Run, tool

pytestmark = pytest.mark.once


def _one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


BAD_RUN = [
    ({"LOAD_SHAPE": "zigzag"}, ("LOAD_SHAPE='zigzag'", "unknown shape", "steady, step")),
    ({"LOAD_RATE": "0"}, ("LOAD_RATE='0'", "above 0")),
    ({"LOAD_RATE": "-50"}, ("LOAD_RATE='-50'", "above 0")),
    ({"LOAD_RATE": "fast"}, ("LOAD_RATE='fast'", "not a number")),
    ({"LOAD_RATE": "nan"}, ("LOAD_RATE='nan'", "above 0")),
    ({"LOAD_RUN_TIME": "abc"}, ("LOAD_RUN_TIME='abc'", "not a duration")),
    ({"LOAD_RUN_TIME": "0s"}, ("LOAD_RUN_TIME='0s'", "more than 0")),
    ({"LOAD_RAMP": "-1"}, ("LOAD_RAMP='-1'", "not a duration")),
    ({"LOAD_STEPS": "0", "LOAD_SHAPE": "step"}, ("LOAD_STEPS='0'",)),
    ({"LOAD_SCENARIO": "stampede"}, ("LOAD_SCENARIO='stampede'", "mix")),
    ({"LOAD_PROCESSES": "-2"}, ("LOAD_PROCESSES='-2'", "at least -1")),
    ({"LOAD_THINK_S": "0"}, ("LOAD_THINK_S='0'",)),
    ({"LOAD_SLO": "checkout.p95=100"}, ("LOAD_SLO", "unknown group")),
    ({"LOAD_SLO": "search.p95=slow"}, ("LOAD_SLO", "not a number")),
    ({"LOAD_SCENARIO": "browse", "LOAD_SHAPE": "step"}, ("LOAD_SHAPE", "mix scenario")),
    ({"CYGATE_URL": "127.0.0.1:8000"}, ("CYGATE_URL", "http://")),
]


@pytest.mark.parametrize(("env", "needles"), BAD_RUN, ids=lambda v: str(v))
def test_a_bad_setting_of_a_run_is_one_line_and_exit_2(
    run_cli: Run, env: dict[str, str], needles: tuple[str, ...]
) -> None:
    proc = run_cli(*tool("run"), env=env)
    _one_line_error(proc, *needles)
    assert proc.stdout == ""  # nothing started


BAD_CAPACITY = [
    ({"LOAD_CAPACITY_START": "0"}, ("LOAD_CAPACITY_START='0'", "above 0")),
    ({"LOAD_CAPACITY_START": "-100"}, ("LOAD_CAPACITY_START='-100'", "above 0")),
    ({"LOAD_CAPACITY_STEP": "-5"}, ("LOAD_CAPACITY_STEP='-5'",)),
    ({"LOAD_CAPACITY_STEP_TIME": "abc"}, ("LOAD_CAPACITY_STEP_TIME='abc'", "not a duration")),
    ({"LOAD_CAPACITY_MAX": "100", "LOAD_CAPACITY_START": "200"}, ("below",)),
    ({"LOAD_CAPACITY_MIN_ACHIEVED": "1.5"}, ("LOAD_CAPACITY_MIN_ACHIEVED", "at most 1")),
    ({"LOAD_SCENARIO": "shop"}, ("capacity finder steps the mix",)),
    ({"LOAD_RAMP": "abc"}, ("LOAD_RAMP='abc'",)),
    ({"LOAD_RATE": "-5"}, ("LOAD_RATE='-5'", "above 0")),
    ({"LOAD_CAPACITY_CONFIRM": "-1"}, ("LOAD_CAPACITY_CONFIRM='-1'", "at least 0")),
]


@pytest.mark.parametrize(("env", "needles"), BAD_CAPACITY, ids=lambda v: str(v))
def test_a_bad_setting_of_the_capacity_finder_is_one_line_and_exit_2(
    run_cli: Run, env: dict[str, str], needles: tuple[str, ...]
) -> None:
    proc = run_cli(*tool("capacity"), env=env)
    _one_line_error(proc, *needles)
    assert proc.stdout == ""


@pytest.mark.parametrize("command", ["run", "capacity"])
def test_an_unreachable_gateway_is_one_line_and_exit_2(
    run_cli: Run, closed_url: str, command: str
) -> None:
    proc = run_cli(*tool(command))
    _one_line_error(proc, closed_url, "does not answer /healthz", "make run")
    assert proc.stdout == ""


def test_good_settings_pass_the_check(run_cli: Run) -> None:
    env = {"LOAD_SHAPE": "spike", "LOAD_RATE": "500", "LOAD_RUN_TIME": "1h30m"}
    proc = run_cli(*tool("check", "run"), env=env)
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = run_cli(*tool("check", "capacity"), env={"LOAD_CAPACITY_STEP_TIME": "45s"})
    assert (proc.returncode, proc.stderr) == (0, "")


@pytest.mark.parametrize("args", [(), ("walk",), ("run", "extra")])
def test_an_unknown_command_is_the_usage_line(run_cli: Run, args: tuple[str, ...]) -> None:
    _one_line_error(run_cli(*tool(*args)), "usage: tool.py")


def test_make_load_checks_the_settings_before_it_starts_a_gateway(run_cli: Run) -> None:
    """scripts/load.sh (``make load``) refuses a bad setting before migrating, seeding or
    starting anything."""
    proc = run_cli("bash", str(REPO / "scripts" / "load.sh"), "run",
                   env={"LOAD_RUN_TIME": "abc"})  # fmt: skip
    _one_line_error(proc, "LOAD_RUN_TIME='abc'")
    assert proc.stdout == ""


def test_locust_with_an_unknown_shape_is_one_line(run_cli: Run) -> None:
    """The locustfile run directly (without the tool): the same one line, no traceback."""
    locust = str(Path(sys.executable).with_name("locust"))
    proc = run_cli(locust, "-f", str(LOADTESTS / "locustfile.py"), "--headless", "-t", "1s",
                   env={"LOAD_SHAPE": "zigzag"})  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        "locustfile: LOAD_SHAPE='zigzag': unknown shape; known: steady, step, spike, soak"
    )
