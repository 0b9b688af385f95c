"""Service plugins: each feature's routes, state and start/stop join the app through one
mechanism, started in the list's order and stopped in reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, get
from litestar.testing import TestClient

from cygate.app import create_app
from cygate.services.plugin import ServicePlugin
from cygate.settings import load_settings


def _recorder(log: list[str], name: str, path: str) -> ServicePlugin:
    @get(path, sync_to_thread=False)
    def handler() -> str:
        return name

    class Recorder(ServicePlugin):
        route_handlers = (handler,)

        def state(self) -> dict[str, Any]:
            return {name: f"{name}-object"}

        @asynccontextmanager
        async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
            log.append(f"start {name} (pool={app.state.pool})")
            try:
                yield
            finally:
                log.append(f"stop {name}")

    return Recorder()


def test_plugins_start_in_order_and_stop_in_reverse_inside_the_shared_resources() -> None:
    log: list[str] = []

    @asynccontextmanager
    async def shared(app: Litestar) -> AsyncIterator[None]:
        app.state.pool = "pool"
        log.append("open shared")
        try:
            yield
        finally:
            log.append("close shared")

    plugins = [_recorder(log, "a", "/a"), _recorder(log, "b", "/b")]
    app = Litestar(plugins=plugins, lifespan=[shared], on_startup=[lambda: log.append("up")])
    with TestClient(app) as client:
        assert client.get("/a").text == "a" and client.get("/b").text == "b"
        assert (app.state.a, app.state.b) == ("a-object", "b-object")
    assert log == [
        "open shared",
        "start a (pool=pool)",
        "start b (pool=pool)",
        "up",
        "stop b",
        "stop a",
        "close shared",
    ]


def test_a_plugin_without_a_lifespan_adds_none() -> None:
    class Routes(ServicePlugin):
        pass

    app = Litestar(plugins=[Routes()])
    assert list(app.state.dict()) == []


def test_the_app_gets_every_feature_from_its_plugin() -> None:
    edge = create_app(load_settings({}, cache_key_secret="unit-test-secret"))
    state = edge.app.state  # type: ignore[attr-defined]
    for name in ("catalog", "catalog_writer", "search", "identity", "idempotency", "payments"):
        assert state.get(name) is not None, name
    names = {policy.name: policy for *_, policy in edge.router.routes()}
    for route in ("GET /api/v1/orders", "POST /api/v1/auth/login", "GET /admin/routes",
                  "GET /metrics", "GET /api/v1/users/me/orders/summary"):  # fmt: skip
        assert route in names, route
    assert names["GET /api/v1/products/{product_id:uuid}"].fast is not None
    assert names["GET /api/v1/users/me"].fast is not None
