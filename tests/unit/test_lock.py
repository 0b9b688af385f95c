"""The dependency lock's check (scripts/lock.py, run by ``make lint``): a lock that no longer
matches pyproject.toml fails with one clear line naming what changed, without a network."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.once

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "lock.py"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what the check reads: pyproject.toml and requirements/."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "requirements", tmp_path / "requirements")
    return tmp_path


def check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "check", "--repo", str(repo)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def refused(repo: Path) -> str:
    result = check(repo)
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_the_committed_lock_matches_pyproject() -> None:
    result = check(REPO)
    assert result.returncode == 0, result.stderr


def test_a_copy_of_the_checkout_passes(checkout: Path) -> None:
    assert check(checkout).returncode == 0


def test_a_dependency_added_to_pyproject_is_one_line(checkout: Path) -> None:
    edit(
        checkout / "pyproject.toml", '"orjson>=3.10",', '"orjson>=3.10",\n    "Some_Package>=1.2",'
    )
    line = refused(checkout)
    assert line == (
        "lock: requirements/dev.txt is out of date with pyproject.toml "
        "(added some-package>=1.2); run `make lock`"
    )


def test_a_changed_range_names_old_and_new(checkout: Path) -> None:
    edit(checkout / "pyproject.toml", '"pytest>=8",', '"pytest>=9.9",')
    line = refused(checkout)
    assert "requirements/dev.txt is out of date" in line
    assert "added pytest>=9.9" in line and "removed pytest>=8" in line


def test_a_removed_runtime_dependency_is_seen(checkout: Path) -> None:
    edit(checkout / "pyproject.toml", '    "httptools>=0.6",\n', "")
    line = refused(checkout)
    assert "removed httptools>=0.6" in line


def test_spacing_and_name_case_do_not_count_as_a_change(checkout: Path) -> None:
    edit(checkout / "pyproject.toml", '"orjson>=3.10",', '"OrJSON >= 3.10",')
    assert check(checkout).returncode == 0


def test_build_system_and_build_group_must_agree(checkout: Path) -> None:
    edit(
        checkout / "pyproject.toml", 'requires = ["setuptools>=77"', 'requires = ["setuptools>=80"'
    )
    line = refused(checkout)
    assert "[build-system].requires" in line and "[dependency-groups].build" in line


def test_a_runtime_pin_that_disagrees_with_dev_is_seen(checkout: Path) -> None:
    runtime = checkout / "requirements" / "runtime.txt"
    text = runtime.read_text()
    pin = next(line for line in text.splitlines() if line.startswith("orjson=="))
    runtime.write_text(text.replace(pin, "orjson==0.0.1 \\", 1))
    line = refused(checkout)
    assert "requirements/runtime.txt pins orjson==0.0.1" in line


def test_a_missing_lock_file_is_one_line(checkout: Path) -> None:
    (checkout / "requirements" / "build.txt").unlink()
    assert refused(checkout) == "lock: requirements/build.txt is missing; run `make lock`"


def test_an_unreadable_pyproject_is_one_line(checkout: Path) -> None:
    (checkout / "pyproject.toml").write_text("[project\n")
    assert refused(checkout).startswith("lock: pyproject.toml cannot be read:")
