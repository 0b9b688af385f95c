"""Helpers of the load tools' tests (tests/loadtests): the tools' folder on the path, the CLI.

Nothing here imports locust (it patches the standard library when imported, which the rest of
the suite must not see): the modules tested directly are locust-free, and the CLI runs in a
subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOADTESTS = REPO / "loadtests"
if str(LOADTESTS) not in sys.path:
    sys.path.insert(0, str(LOADTESTS))

Run = Callable[..., subprocess.CompletedProcess[str]]


def tool(*args: str) -> tuple[str, ...]:
    """The command line of ``loadtests/tool.py`` with ``args``."""
    return (sys.executable, str(LOADTESTS / "tool.py"), *args)
