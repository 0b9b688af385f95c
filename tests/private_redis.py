"""A private ``redis-server`` a test may stop, restart or cut connections of.

The system Redis is shared and must never be stopped or reconfigured; tests that need Redis to
fail start one of these on a free port (no persistence) and point the gateway at it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
import redis

__all__ = ["PrivateRedis"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """``with PrivateRedis() as r: r.url ... r.stop() ... r.start()`` (same port)."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL): every connection to it dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)

    def kill_clients(self, name_part: str) -> int:
        """CLIENT KILL every pub/sub connection whose name contains ``name_part``."""
        killed = 0
        with self.client() as c:
            for info in c.client_list(_type="pubsub"):
                if name_part in (info.get("name") or ""):
                    c.execute_command("CLIENT", "KILL", "ID", info["id"])
                    killed += 1
        return killed

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
