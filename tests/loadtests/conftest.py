"""Fixtures of the load tools' tests: no load is applied; every CLI case stops before locust
starts."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from load_helpers import REPO, Run


@pytest.fixture
def closed_url() -> Iterator[str]:
    """An http URL where nothing listens (a port bound, never listening, so no one else gets
    it while the test runs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def run_cli(closed_url: str) -> Run:
    """Run a command with a clean LOAD_* environment (plus ``env``), the gateway URL pointing
    where nothing listens unless given; stdout and stderr captured."""

    def run(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("LOAD_", "CYGATE_"))}
        full = {**base, "CYGATE_URL": closed_url, **(env or {})}
        return subprocess.run(
            list(cmd), env=full, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
        )

    return run
