"""Fixtures shared by the upstream benchmarks: an nginx upstream serving a small JSON body on a
free port (installed with apt-get if missing, run in the foreground, killed afterwards), and one
uvloop loop per module to run async rounds on."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from benchmarks.nginx import ensure_nginx, nginx_config

__all__ = ["Runner", "runner_fixture", "upstream_fixture"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", name="upstream")
def upstream_fixture() -> Iterator[int]:
    nginx = ensure_nginx()
    root = Path(tempfile.mkdtemp(prefix="cygate-bench-nginx-"))
    port = _free_port()
    conf = nginx_config(root, "json", port)
    proc = subprocess.Popen(
        [nginx, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


class Runner:
    """One uvloop loop for the module; ``run(coro_fn)`` runs a round on it."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()

    def run(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return self.loop.run_until_complete(fn())


@pytest.fixture(scope="module", name="runner")
def runner_fixture() -> Iterator[Runner]:
    r = Runner()
    yield r
    r.loop.close()
