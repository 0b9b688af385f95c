"""The edge's fast handler and the Litestar handler for the same route answer byte for byte alike;
and with PostgreSQL unreachable both answer a quick 503 problem, never a hang or a 500."""

from __future__ import annotations

import uuid

import httpx
import pytest
from tests.acceptance.conftest import Gateway, free_port, start_gateway, stop_gateway
from tests.acceptance.test_catalog_api import assert_problem

pytestmark = pytest.mark.acceptance


@pytest.fixture(scope="module")
def litestar_only(gateway_env: dict[str, str], seeded: object) -> object:
    # NOTE: no response cache here, so the Litestar handler really answers (with the shared
    # L2 it would replay the bytes the fast gateway stored).
    extra = {"CYGATE_EDGE_FAST_PATHS": "false", "CYGATE_CACHE_ENABLED": "false"}
    gw = start_gateway(gateway_env, workers=1, extra_env=extra)
    yield gw
    stop_gateway(gw)


def _strip(resp: httpx.Response) -> tuple[int, str, bytes]:
    return resp.status_code, resp.headers["content-type"], resp.content


def test_same_bytes_both_paths(gateway: Gateway, litestar_only: Gateway) -> None:
    with gateway.client() as fast, litestar_only.client() as slow:
        ids = [p["id"] for p in fast.get("/api/v1/products", params={"limit": 5}).json()["items"]]
        for pid in ids:
            assert _strip(fast.get(f"/api/v1/products/{pid}")) == _strip(
                slow.get(f"/api/v1/products/{pid}")
            )
        missing = f"/api/v1/products/{uuid.uuid4()}"
        a, b = fast.get(missing), slow.get(missing)
        doc_a, doc_b = assert_problem(a, 404), assert_problem(b, 404)
        doc_a.pop("request_id"), doc_b.pop("request_id")
        assert doc_a == doc_b
        head = fast.head(f"/api/v1/products/{ids[0]}")
        assert head.status_code == 200 and head.content == b""


def test_database_down_is_a_quick_503(gateway_env: dict[str, str]) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    env = {**gateway_env, "CYGATE_DATABASE_URL": dead, "CYGATE_DB_ACQUIRE_TIMEOUT": "1"}
    env["CYGATE_CACHE_L2"] = "false"  # NOTE: nothing cached by other gateways may answer here
    gw = _start_unready(env)
    try:
        with gw.client() as c:
            ready = c.get("/readyz")
            assert_problem(ready, 503)
            assert ready.json()["postgres"] == "down"
            for path in (f"/api/v1/products/{uuid.uuid4()}", "/api/v1/products"):
                r = c.get(path)
                assert_problem(r, 503)
                assert r.headers["retry-after"] == "1"
            assert c.get("/healthz").status_code == 200
    finally:
        stop_gateway(gw)


def _start_unready(env: dict[str, str]) -> Gateway:
    """Like start_gateway, but waits for /healthz: /readyz stays 503 by design here."""
    import subprocess
    import sys
    import time

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cygate", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    gw = Gateway(f"http://127.0.0.1:{port}", proc, env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(gw.url + "/healthz", timeout=1).status_code == 200:
                return gw
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("gateway did not start: " + stop_gateway(gw))
