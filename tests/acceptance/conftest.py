"""A real gateway process (Granian, two workers) over the session's test database."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import asyncpg
import httpx
import pytest
from tests.acceptance.contract_helpers import undocumented_answers
from tests.admin import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.conftest import migrated_database

from cygate.infra import seed as seeding


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    output: IO[bytes] | None = None
    """Where the server writes (a file: a pipe nobody reads while the test runs fills up and
    blocks the server's log writes, access lines at level info included); None: ``proc.stdout``."""

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kw)  # type: ignore[arg-type]


def admin_headers(gw: Gateway) -> dict[str, str]:
    """A Bearer header for the admin account every test gateway starts with (gateway_env)."""
    r = httpx.post(
        gw.url + "/api/v1/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def start_gateway(
    env: dict[str, str], *, workers: int = 2, extra_env: dict[str, str] | None = None
) -> Gateway:
    port = free_port()
    env = {**env, **(extra_env or {})}
    output = tempfile.TemporaryFile()  # noqa: SIM115  # (closed by stop_gateway)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cygate", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers)],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    gw = Gateway(url, proc, env, output)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = stop_gateway(gw)
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return gw
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_gateway(gw)
    raise RuntimeError("gateway did not become ready in 30 s")


def stop_gateway(gw: Gateway) -> str:
    if gw.proc.poll() is None:
        os.killpg(gw.proc.pid, signal.SIGTERM)
        try:
            gw.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait()
    if gw.output is not None:
        with gw.output:
            gw.output.seek(0)
            return gw.output.read().decode()
    if gw.proc.stdout is None:
        return ""
    with gw.proc.stdout:
        return gw.proc.stdout.read().decode()


@contextmanager
def private_data(
    gateway_env: dict[str, str], name: str, *, rng_seed: int = 7, **sizes: int
) -> Iterator[dict[str, str]]:
    """``gateway_env`` pointed at a database and a Redis prefix of the caller's own, the
    database migrated and seeded (``sizes``: categories, products, users), dropped afterwards:
    for a gateway whose test must not share caches, outbox rows or streams with the session's
    gateways (whose relays and consumers would take its events)."""
    with migrated_database(f"cygate_{name}_") as dsn:

        async def seed() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await seeding.seed(conn, rng_seed=rng_seed, **sizes)
            finally:
                await conn.close()

        asyncio.run(seed())
        yield {
            **gateway_env,
            "CYGATE_DATABASE_URL": dsn,
            "CYGATE_REDIS_PREFIX": f"{gateway_env['CYGATE_REDIS_PREFIX']}{name}:",
        }


@pytest.fixture(scope="session")
def seeded(test_db_dsn: str) -> dict[str, object]:
    """Demo data in the test database (small, reproducible)."""

    async def run() -> dict[str, object]:
        conn = await asyncpg.connect(test_db_dsn)
        try:
            await seeding.reset(conn)
            report = await seeding.seed(conn, categories=12, products=300, users=3, rng_seed=7)
            return {"report": report}
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture(scope="session")
def gateway(gateway_env: dict[str, str], seeded: dict[str, object]) -> Iterator[Gateway]:
    gw = start_gateway(gateway_env)
    undocumented: list[Any] = []
    try:
        yield gw
        # NOTE: the published document must list every status this gateway answered for the
        # whole suite (docs/api-contract.md); a new refusal that is not documented fails here.
        _, undocumented = undocumented_answers(gw.url)
    finally:
        output = stop_gateway(gw)
        if "Traceback" in output:
            print(output)
    assert not undocumented, f"answered but not in /schema/openapi.json: {undocumented}"
