"""The compiled parsers against their pure twins, fuzzed (atheris): a bounded run in the suite.

Every saved input (``seeds/<target>``, and ``regressions/<target>``: inputs that once found a
disagreement or a crash) replays through its target in this process; then each target is fuzzed
for a few seconds in a process of its own (``fuzz_run.py``, as ``make fuzz`` does for longer):
no crash and no disagreement. ``CYGATE_FUZZ_SECONDS`` sets the seconds per target (default 5:
six targets stay under a minute).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fuzz_run
import fuzz_targets
import pytest

pytestmark = pytest.mark.c_extension

HERE = Path(__file__).resolve().parent
SECONDS = int(os.environ.get("CYGATE_FUZZ_SECONDS", "5"))

if not fuzz_targets.compiled_available():  # pragma: no cover - make build first
    pytest.skip("the compiled core is not built", allow_module_level=True)


def _saved(target: str) -> list[Path]:
    return sorted(
        path
        for folder in ("seeds", "regressions")
        if (HERE / folder / target).is_dir()
        for path in (HERE / folder / target).iterdir()
    )


def test_the_runner_and_the_targets_name_the_same_targets() -> None:
    assert tuple(fuzz_targets.TARGETS) == fuzz_run.NAMES


@pytest.mark.parametrize("target", fuzz_run.NAMES)
def test_saved_inputs_replay_without_disagreement(target: str) -> None:
    """Through the fuzzer's own process (``--child``), as they ran when found: some findings
    hang on the stack depth of the call (the JWT one did)."""
    saved = _saved(target)
    if not saved:
        pytest.skip(f"no saved input for {target}")
    proc = subprocess.run(
        [sys.executable, str(HERE / "fuzz_run.py"), "--child", target, *map(str, saved)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        check=False,
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    assert proc.returncode == 0, f"a saved input of {target} fails:\n{tail}"
    assert f"Executed {saved[-1]}" in proc.stderr + proc.stdout, tail


def test_bounded_fuzz_of_every_target(tmp_path: Path) -> None:
    results = fuzz_run.run_all(
        fuzz_run.NAMES, SECONDS, tmp_path / "corpus", tmp_path / "findings", out=sys.stdout
    )
    failed = [r for r in results if not r.ok]
    if failed:
        fuzz_run.report_failures(failed, out=sys.stdout)
    assert not failed, f"fuzzing found something in {[r.target for r in failed]} (see above)"
    for result in results:
        assert result.executions > 0, f"{result.target}: no input ran"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--targets", "jwt,nope"], "unknown target 'nope'"),
        (["--seconds", "ten"], "'ten' is not a whole number of seconds"),
        (["--seconds", "0"], "at least 1 second"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--child", "nope"], "--child needs a target"),
    ],
)
def test_bad_options_are_one_line_and_status_2(args: list[str], says: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(HERE / "fuzz_run.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and says in lines[0], proc.stderr
