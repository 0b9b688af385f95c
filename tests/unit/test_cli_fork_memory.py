"""``cygate serve`` hands Granian a frozen heap: the workers it forks keep sharing what the main
process imported and built instead of copying it at their first collection; and what only some
configurations use is not imported without them (docs/deployment.md, Memory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.once

# Granian's serve() replaced by a probe (nothing is bound or forked): the heap as it would fork.
PROBE = """
import gc, sys
import granian

def serve(self, *args, **kwargs):
    print("frozen", gc.get_freeze_count(), "app", "cygate.app" in sys.modules,
          "cedarpy", "cedarpy" in sys.modules, flush=True)

granian.Granian.serve = serve
from cygate.cli import main
sys.exit(main(["serve", "--host", "127.0.0.1", "--port", "8999", "--workers", "1"]))
"""


def test_the_heap_is_frozen_when_granian_forks(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYGATE_")}
    if "CYGATE_NO_EXTENSIONS" in os.environ:
        env["CYGATE_NO_EXTENSIONS"] = os.environ["CYGATE_NO_EXTENSIONS"]
    env["CYGATE_METRICS_DIR"] = str(tmp_path / "metrics")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,  # development keys are generated under ./.cygate
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[:1] == ["frozen"] and words[2:4] == ["app", "True"], proc.stdout
    # The app the checks built (its modules are what the workers share) is in the permanent
    # generation, out of every later collection's sight.
    assert int(words[1]) > 10_000, proc.stdout
    # Without policy files nothing loads Cedar (its module is ~3.5 MiB in every process).
    assert words[4:] == ["cedarpy", "False"], proc.stdout
