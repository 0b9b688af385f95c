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
