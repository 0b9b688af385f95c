"""Graceful shutdown: SIGTERM stops accepting, lets in-flight requests finish, closes the pools."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import asyncpg
import httpx
import pytest
from tests.acceptance.conftest import start_gateway, stop_gateway

pytestmark = pytest.mark.acceptance


def test_in_flight_request_finishes_after_sigterm(
    gateway_env: dict[str, str], test_db_dsn: str, seeded: object
) -> None:
    gw = start_gateway(gateway_env, workers=1)
    try:
        pid = httpx.get(gw.url + "/api/v1/products", params={"limit": 1}).json()["items"][0]["id"]
        locked = threading.Event()
        release = threading.Event()

        async def hold_lock() -> None:
            # A real reason for a request to be slow: the products table is locked.
            conn = await asyncpg.connect(test_db_dsn)
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
                    locked.set()
                    await asyncio.to_thread(release.wait, 20)
            finally:
                await conn.close()

        locker = threading.Thread(target=asyncio.run, args=(hold_lock(),))
        locker.start()
        assert locked.wait(10)
        result: dict[str, object] = {}

        def request() -> None:
            try:
                result["response"] = httpx.get(f"{gw.url}/api/v1/products/{pid}", timeout=20)
            except Exception as exc:  # recorded for the assertion below
                result["error"] = exc

        client = threading.Thread(target=request)
        client.start()
        time.sleep(0.5)  # the request is now waiting on the lock inside the gateway
        os.killpg(gw.proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        # No new connections once shutdown has begun...
        with pytest.raises(httpx.TransportError):
            httpx.get(gw.url + "/healthz", timeout=2)
        release.set()
        client.join(20)
        locker.join(10)
        # ...but the one in flight completed normally.
        assert "error" not in result, result
        response = result["response"]
        assert isinstance(response, httpx.Response)
        assert response.status_code == 200 and response.json()["id"] == pid
        assert gw.proc.wait(timeout=20) == 0
    finally:
        stop_gateway(gw)


def test_shutdown_delay_fails_readiness_first_and_keeps_serving(
    gateway_env: dict[str, str], seeded: object
) -> None:
    # SIGTERM to the main process only, as a container runtime sends it.
    gw = start_gateway({**gateway_env, "CYGATE_SHUTDOWN_DELAY": "2"}, workers=2)
    try:
        assert httpx.get(gw.url + "/readyz").status_code == 200
        t0 = time.monotonic()
        os.kill(gw.proc.pid, signal.SIGTERM)
        deadline = t0 + 1.5
        while (ready := httpx.get(gw.url + "/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "readiness never failed"
            time.sleep(0.05)
        assert ready.status_code == 503
        assert ready.headers["content-type"].startswith("application/problem+json")
        body = ready.json()
        assert body["detail"] == "the instance is shutting down" and body["shutting_down"] is True
        assert body["postgres"] == "ok"
        # Still serving, on new connections, while the balancer takes it out.
        for _ in range(4):
            with httpx.Client(base_url=gw.url) as fresh:
                assert fresh.get("/api/v1/products", params={"limit": 1}).status_code == 200
        assert gw.proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 >= 2.0
    finally:
        stop_gateway(gw)


def test_a_second_signal_ends_the_shutdown_delay(
    gateway_env: dict[str, str], seeded: object
) -> None:
    gw = start_gateway({**gateway_env, "CYGATE_SHUTDOWN_DELAY": "60"}, workers=1)
    try:
        os.kill(gw.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 1.5
        while httpx.get(gw.url + "/readyz").status_code == 200:
            assert time.monotonic() < deadline, "readiness never failed"
            time.sleep(0.05)
        t0 = time.monotonic()
        os.kill(gw.proc.pid, signal.SIGINT)
        assert gw.proc.wait(timeout=15) == 0
        assert time.monotonic() - t0 < 15
    finally:
        stop_gateway(gw)
