"""Headless locust runs against a running gateway: a load shape, or the capacity finder.

    python loadtests/tool.py run        # `make load`: one run (shape, reports, SLO gate)
    python loadtests/tool.py capacity   # `make capacity`: step the rate until the SLO breaks
    python loadtests/tool.py check run  # only check the settings (no gateway, no load)

Settings come from the environment (``make load SHAPE=step RATE=800`` sets ``LOAD_SHAPE`` and
``LOAD_RATE``); docs/load.md lists them. Every value is checked before any load starts, and the
gateway must answer ``/healthz``: a bad value or an unreachable gateway is one line on stderr
and exit status 2, never a traceback.

A run writes, in ``LOAD_REPORT_DIR`` (default ``loadtests/reports/<UTC time>``, with
``loadtests/reports/latest`` pointing at it): locust's CSVs and ``report.html``, ``slo.json``
(exact final figures per endpoint and group, the verdict), ``rate.png``, ``latency.png``,
``errors.png`` and ``summary.md``. Exit status: 0 the SLO holds, 1 it does not, 2 bad input or
the locustfile raised.

Distributed: ``LOAD_PROCESSES`` (default -1: one worker per core, plus the master, through
locust's ``--processes``; 0: one process) on a free master port.

The capacity finder runs the steady shape at ``LOAD_CAPACITY_START`` requests per second, then
``LOAD_CAPACITY_STEP`` more each time (at most ``LOAD_CAPACITY_MAX``), each step
``LOAD_CAPACITY_STEP_TIME`` long after a ``LOAD_RAMP`` ramp (statistics reset once the users
are up). A step is sustainable when every group holds its SLO and the achieved rate is at least
``LOAD_CAPACITY_MIN_ACHIEVED`` (0.9) of the offered one. A step that is not is run again
(``LOAD_CAPACITY_CONFIRM`` times, default 1) before it counts; the finder stops at the first
rate that stays unsustainable and reports the highest sustainable rate (``capacity.json``,
``capacity.md``, ``capacity.png`` beside each step's own reports).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import charts  # noqa: E402
import slo  # noqa: E402
from shapes import ParamError, load_params, parse_duration  # noqa: E402

SCENARIOS = {
    "mix": ("Visitor", "Customer"),
    "browse": ("CatalogBrowser",),
    "shop": ("Shopper",),
    "mixed": ("CatalogBrowser", "Shopper"),
}


def _fail(message: str) -> int:
    print(f"load: {message}", file=sys.stderr)
    return 2


def _number(env: Mapping[str, str], name: str, default: str, *, minimum: float = 0.0,
            above: bool = True, kind: type = float) -> Any:  # fmt: skip
    text = env.get(name, "") or default
    try:
        value = kind(text.strip())
    except ValueError:
        raise ParamError(f"{name}={text!r}: not a number") from None
    if not math.isfinite(value) or (value <= minimum if above else value < minimum):
        raise ParamError(f"{name}={text!r}: must be {'above' if above else 'at least'} {minimum:g}")
    return value


@dataclass(frozen=True, slots=True)
class Setup:
    url: str
    scenario: str
    processes: int
    report_dir: Path | None
    locust: str


def check_common(env: Mapping[str, str]) -> Setup:
    """The settings every run needs, checked (ParamError names the bad one)."""
    scenario = (env.get("LOAD_SCENARIO", "") or "mix").strip().lower()
    if scenario not in SCENARIOS:
        raise ParamError(f"LOAD_SCENARIO={scenario!r}: expected one of {', '.join(SCENARIOS)}")
    if scenario != "mix" and env.get("LOAD_SHAPE"):
        raise ParamError(f"LOAD_SHAPE: shapes drive the mix scenario, not {scenario!r}")
    processes = int(_number(env, "LOAD_PROCESSES", "-1", minimum=-1, above=False, kind=int))
    url = (env.get("CYGATE_URL", "") or "http://127.0.0.1:8000").rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ParamError(f"CYGATE_URL={url!r}: expected an http:// or https:// URL")
    _number(env, "LOAD_THINK_S", "0.5")
    _number(env, "LOAD_MANAGER_THINK_S", "2.0")
    _number(env, "LOAD_ZIPF_S", "1.0")
    _number(env, "LOAD_ACCOUNTS", "100", kind=int)
    _number(env, "LOAD_CATALOG_MAX", "20000", kind=int)
    for name, default in (("LOAD_SLO_P95_MS", "200"), ("LOAD_SLO_P99_MS", "500"),
                          ("LOAD_SLO_ERROR_RATIO", "0.001")):  # fmt: skip
        _number(env, name, default, above=False)
    try:
        slo.parse_overrides(env.get("LOAD_SLO", ""), slo.Limits())
    except ValueError as exc:
        raise ParamError(str(exc)) from None
    if scenario != "mix":
        _number(env, "LOAD_USERS", "50", kind=int)
        _number(env, "LOAD_SPAWN_RATE", "10")
        parse_duration("LOAD_RUN_TIME", env.get("LOAD_RUN_TIME", "") or "30s")
    report_dir = Path(env["LOAD_REPORT_DIR"]) if env.get("LOAD_REPORT_DIR") else None
    locust = env.get("LOCUST", "") or str(Path(sys.executable).with_name("locust"))
    if not os.access(locust, os.X_OK):
        raise ParamError(f"LOCUST={locust!r}: no locust there (make build installs it)")
    return Setup(url, scenario, processes, report_dir, locust)


def reachable(url: str) -> str | None:
    """None when ``url``/healthz answers 2xx, else why not (one line)."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            if 200 <= resp.status < 300:
                return None
            return f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _report_dir(setup: Setup, name: str) -> Path:
    reports = HERE / "reports"
    if setup.report_dir is not None:
        out = setup.report_dir
    else:
        out = reports / time.strftime(f"%Y%m%dT%H%M%SZ-{name}", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    if setup.report_dir is None:
        latest = reports / "latest"
        latest.unlink(missing_ok=True)
        latest.symlink_to(out.name)
    return out


def locust_command(setup: Setup, env: Mapping[str, str], out: Path, *, shaped: bool,
                   reset_stats: bool = False) -> list[str]:  # fmt: skip
    cmd = [
        setup.locust,
        "-f", str(HERE / "locustfile.py"),
        "--headless",
        "--host", setup.url,
        "--stop-timeout", "5",
        "--only-summary",
        "--csv", str(out / "locust"),
        "--html", str(out / "report.html"),
        "--slo-report", str(out / "slo.json"),
    ]  # fmt: skip
    if not shaped:
        cmd += ["--users", env.get("LOAD_USERS", "") or "50",
                "--spawn-rate", env.get("LOAD_SPAWN_RATE", "") or "10",
                "--run-time", env.get("LOAD_RUN_TIME", "") or "30s"]  # fmt: skip
    if reset_stats:
        cmd.append("--reset-stats")
    if setup.processes:
        port = str(_free_port())
        cmd += ["--processes", str(setup.processes), "--master-port", port,
                "--master-bind-port", port]  # fmt: skip
    classes = list(SCENARIOS[setup.scenario])
    if (
        setup.scenario == "mix"
        and env.get("LOAD_MANAGER_EMAIL")
        and env.get("LOAD_MANAGER_PASSWORD")
    ):
        classes.append("CatalogManager")
    return [*cmd, *classes]


def run_locust(cmd: Sequence[str], env: Mapping[str, str], out: Path) -> int:
    """locust, its output both on stdout and in ``locust.log``; its exit status."""
    with (out / "locust.log").open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            cmd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        return proc.wait()


def _describe(env: Mapping[str, str], setup: Setup) -> str:
    if setup.scenario == "mix":
        p = load_params(env)
        return f"mix, {p.shape} shape, {p.rate:g} req/s for {p.run_time:g}s (ramp {p.ramp:g}s)"
    return (f"{setup.scenario}, {env.get('LOAD_USERS') or 50} users for "
            f"{env.get('LOAD_RUN_TIME') or '30s'}")  # fmt: skip


def one_run(setup: Setup, env: dict[str, str], out: Path, *, reset_stats: bool = False) -> int:
    shaped = setup.scenario == "mix"
    if shaped:
        env.setdefault("LOAD_SHAPE", "steady")
    title = _describe(env, setup)
    print(f"load: {title} against {setup.url}; reports in {out}", flush=True)
    rc = run_locust(locust_command(setup, env, out, shaped=shaped, reset_stats=reset_stats), env,
                    out)  # fmt: skip
    pngs, summary = charts.write_all(out, title)
    if summary:
        print("\n" + summary)
    print(f"load: locust exit {rc}; reports in {out} ({len(pngs)} charts)")
    return rc


def cmd_run(env: dict[str, str]) -> int:
    cmd_check(env, "run")
    setup = check_common(env)
    why = reachable(setup.url)
    if why is not None:
        return _fail(f"the gateway at {setup.url} does not answer /healthz ({why}); "
                     "start it (make run) or set CYGATE_URL")  # fmt: skip
    return one_run(setup, env, _report_dir(setup, "run"))


@dataclass(frozen=True, slots=True)
class CapacityParams:
    start: float
    step: float
    maximum: float
    step_time: float
    min_achieved: float
    confirm: int  # times a broken step is run again before it counts


def capacity_params(env: Mapping[str, str]) -> CapacityParams:
    start = _number(env, "LOAD_CAPACITY_START", "200")
    step = _number(env, "LOAD_CAPACITY_STEP", "200")
    maximum = _number(env, "LOAD_CAPACITY_MAX", "50000")
    if maximum < start:
        raise ParamError(f"LOAD_CAPACITY_MAX={maximum:g}: below LOAD_CAPACITY_START={start:g}")
    step_time = parse_duration(
        "LOAD_CAPACITY_STEP_TIME", env.get("LOAD_CAPACITY_STEP_TIME", "") or "30s"
    )
    min_achieved = _number(env, "LOAD_CAPACITY_MIN_ACHIEVED", "0.9")
    if min_achieved > 1:
        raise ParamError(f"LOAD_CAPACITY_MIN_ACHIEVED={min_achieved:g}: at most 1")
    confirm = int(_number(env, "LOAD_CAPACITY_CONFIRM", "1", above=False, kind=int))
    return CapacityParams(start, step, maximum, step_time, min_achieved, confirm)


def step_verdict(report: dict[str, Any], offered: float, min_achieved: float) -> list[str]:
    """Why a capacity step is not sustainable (empty: it is)."""
    problems = list(report.get("problems") or [])
    achieved = float(report["total"]["rps"])
    if achieved < min_achieved * offered:
        problems.append(f"achieved {achieved:.0f} req/s < {min_achieved:g} x {offered:g} offered")
    return problems


def cmd_capacity(env: dict[str, str]) -> int:
    cmd_check(env, "capacity")
    setup = check_common(env)
    cap = capacity_params(env)
    why = reachable(setup.url)
    if why is not None:
        return _fail(f"the gateway at {setup.url} does not answer /healthz ({why}); "
                     "start it (make run) or set CYGATE_URL")  # fmt: skip
    out = _report_dir(setup, "capacity")
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    rate = cap.start
    retries = cap.confirm
    while rate <= cap.maximum:
        step_dir = out / f"step-{len(steps) + 1:02d}-{rate:g}"
        step_dir.mkdir()
        step_env = {**env, "LOAD_SHAPE": "steady", "LOAD_RATE": f"{rate:g}",
                    "LOAD_RUN_TIME": f"{cap.step_time:g}"}  # fmt: skip
        rc = one_run(setup, step_env, step_dir, reset_stats=True)
        try:
            report = json.loads((step_dir / "slo.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return _fail(f"step at {rate:g} req/s: locust exit {rc} without an SLO report "
                         f"(see {step_dir / 'locust.log'})")  # fmt: skip
        problems = step_verdict(report, rate, cap.min_achieved)
        total = report["total"]
        steps.append({"offered": rate, "achieved": total["rps"], "p50_ms": total["p50_ms"],
                      "p95_ms": total["p95_ms"], "p99_ms": total["p99_ms"],
                      "fail_ratio": total["fail_ratio"], "sustainable": not problems,
                      "problems": problems, "dir": step_dir.name})  # fmt: skip
        print(f"load: capacity step {rate:g} req/s: "
              + ("sustainable" if not problems else "NOT sustainable: " + "; ".join(problems)),
              flush=True)  # fmt: skip
        if problems and retries > 0:
            retries -= 1  # a noisy machine: the same rate once more before it counts
            continue
        if problems:
            break
        best = steps[-1]
        rate += cap.step
        retries = cap.confirm
    result = {"highest_sustainable": best, "steps": steps, "step_time_s": cap.step_time,
              "min_achieved": cap.min_achieved, "url": setup.url}  # fmt: skip
    (out / "capacity.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    text = capacity_table(result)
    (out / "capacity.md").write_text(text, encoding="utf-8")
    charts.capacity_chart(steps, out / "capacity.png", "capacity finder: the mix, steady steps")
    print("\n" + text)
    print(f"load: capacity reports in {out}")
    return 0 if best is not None else 1


def capacity_table(result: dict[str, Any]) -> str:
    lines = ["| offered req/s | achieved req/s | p50 ms | p95 ms | p99 ms | errors | verdict |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for s in result["steps"]:
        verdict = "sustainable" if s["sustainable"] else "; ".join(s["problems"])
        lines.append(f"| {s['offered']:g} | {s['achieved']:.0f} | {s['p50_ms']} | {s['p95_ms']} "
                     f"| {s['p99_ms']} | {100 * s['fail_ratio']:.2f} % | {verdict} |")  # fmt: skip
    best = result["highest_sustainable"]
    lines.append("")
    if best is None:
        lines.append("highest sustainable rate: none (the first step already broke the SLO)")
    else:
        lines.append(f"highest sustainable rate: {best['offered']:g} req/s offered "
                     f"({best['achieved']:.0f} achieved)")  # fmt: skip
    return "\n".join(lines) + "\n"


def cmd_check(env: dict[str, str], command: str) -> int:
    """Check the settings of ``command`` without a gateway or any load (scripts/load.sh does it
    before it starts a gateway)."""
    setup = check_common(env)
    if command == "capacity":
        if setup.scenario != "mix":
            raise ParamError("LOAD_SCENARIO: the capacity finder steps the mix scenario")
        load_params({**env, "LOAD_SHAPE": "steady"})  # LOAD_RATE, LOAD_RAMP if set
        capacity_params(env)
    elif setup.scenario == "mix":
        load_params({**env, "LOAD_SHAPE": env.get("LOAD_SHAPE") or "steady"})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    try:
        if args[:1] == ["check"] and len(args) == 2 and args[1] in ("run", "capacity"):
            return cmd_check(env, args[1])
        if args == ["run"]:
            return cmd_run(env)
        if args == ["capacity"]:
            return cmd_capacity(env)
    except ParamError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted")
    return _fail("usage: tool.py [check] run|capacity (settings: LOAD_* variables, docs/load.md)")


if __name__ == "__main__":
    sys.exit(main())
