"""The import-graph check of ``make lint`` (scripts/import_cycles.py, beside import-linter):
the tree passes, and a planted cycle or upward import, in Python or Cython, fails it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.once

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "import_cycles.py"

_PYPROJECT = """
[tool.importlinter]
root_package = "pkg"

[[tool.importlinter.contracts]]
name = "layers"
type = "layers"
containers = ["pkg"]
layers = ["high", "mid | side", "low"]
"""


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_cycles", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checker = _load()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A package ``pkg`` with layers high > mid | side > low that keeps the rules."""
    (tmp_path / "pyproject.toml").write_text(_PYPROJECT)
    files = {
        "pkg/__init__.py": "",
        "pkg/high.py": "from pkg.mid import a\nimport pkg.low.b\n",
        "pkg/mid/__init__.py": "",
        "pkg/mid/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from pkg.low import b\n",
        "pkg/side.py": "from . import low\n",
        "pkg/low/__init__.py": "",
        "pkg/low/b.py": "import os\n",
        "pkg/low/_c.pyx": "from cpython.bytes cimport PyBytes_GET_SIZE\nfrom pkg.low.b import x\n",
    }
    for name, text in files.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def run(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--repo", str(repo), "--package", "pkg"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_source_tree_has_no_cycle_and_no_upward_import() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_a_clean_package_passes(repo: Path) -> None:
    result = run(repo)
    assert result.returncode == 0, result.stderr
    graph = checker.import_graph(repo / "src", "pkg")
    assert graph["pkg.high"] == {"pkg.mid.a", "pkg.low.b"}
    assert graph["pkg.mid.a"] == {"pkg.low.b"}  # TYPE_CHECKING imports count
    assert graph["pkg.side"] == {"pkg.low"}  # relative
    assert graph["pkg.low._c"] == {"pkg.low.b"}  # Cython, cimports of others ignored


def test_a_planted_cycle_fails(repo: Path) -> None:
    b = repo / "src/pkg/low/b.py"
    b.write_text("def f():\n    from pkg.low import _c\n")  # inside a function: still counts
    result = run(repo)
    assert result.returncode == 1
    assert "import cycle: pkg.low._c, pkg.low.b" in result.stderr


def test_a_cycle_closed_by_a_pxd_cimport_fails(repo: Path) -> None:
    (repo / "src/pkg/low/d.pyx").write_text("from pkg.low._c cimport thing\n")
    (repo / "src/pkg/low/_c.pxd").write_text("from pkg.low.d cimport other\n")
    result = run(repo)
    assert result.returncode == 1
    assert "import cycle: pkg.low._c, pkg.low.d" in result.stderr


def test_upward_and_sibling_imports_fail(repo: Path) -> None:
    (repo / "src/pkg/low/_c.pyx").write_text("from pkg.high import y\n")
    (repo / "src/pkg/side.py").write_text("import pkg.mid.a\n")
    result = run(repo)
    assert result.returncode == 1
    assert "pkg.low._c imports pkg.high (a higher layer)" in result.stderr
    assert "pkg.side imports pkg.mid.a (an independent sibling)" in result.stderr


def lint_imports(cwd: Path, *, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.skip("import-linter is not installed")
    env = None if path is None else {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run(
        [command, "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_lint_imports_keeps_the_contracts() -> None:
    """import-linter's own contracts (layers, acyclic siblings) hold for the tree."""
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_acyclic_contract_refuses_a_planted_cycle(repo: Path) -> None:
    """The contract type pyproject.toml uses for cycles fails on one (under TYPE_CHECKING)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (acyclic,) = [c for c in config["contracts"] if c["type"] == "acyclic_siblings"]
    with (repo / "pyproject.toml").open("a") as fh:
        fh.write(
            '\n[[tool.importlinter.contracts]]\nname = "acyclic"\n'
            f'type = "acyclic_siblings"\nancestors = ["pkg"]\ndepth = {acyclic["depth"]}\n'
        )
    assert lint_imports(repo, path=repo / "src").returncode == 0
    (repo / "src/pkg/low/b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.low import c\n"
    )
    (repo / "src/pkg/low/c.py").write_text("from pkg.low import b\n")
    result = lint_imports(repo, path=repo / "src")
    assert result.returncode == 1
    assert "No cycles are allowed in pkg.low" in result.stdout, result.stdout
