"""POST /admin/cache/purge in process: loopback only by default, validation, a down Redis."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.testing import TestClient

from cygate.app import _on_problem
from cygate.edge.cache import CacheUnavailable
from cygate.edge.problem import Problem
from cygate.services.ops.cache import CacheAdminController
from cygate.settings import load_settings


class FakeCache:
    """Stands in for ResponseCache (the endpoint only calls invalidate_tags)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.tags: list[str] = []

    async def invalidate_tags(self, tags: list[str]) -> tuple[int, int]:
        if self.fail:
            raise CacheUnavailable("redis down")
        self.tags += tags
        return 3, 1


def app(cache: Any, **settings: Any) -> Litestar:
    settings = load_settings({}, **{"cache_key_secret": "x", **settings})
    return Litestar(
        route_handlers=[CacheAdminController],
        state=State({"settings": settings, "cache": cache}),
        exception_handlers={Problem: _on_problem},  # as the real app has
    )


def test_non_loopback_peers_are_refused() -> None:
    cache = FakeCache()
    with TestClient(app(cache)) as client:  # the test client's peer is "testclient"
        assert client.post("/admin/cache/purge", json={"tags": ["a"]}).status_code == 403
    assert cache.tags == []


def test_purge_when_loopback_is_not_required() -> None:
    cache = FakeCache()
    with TestClient(app(cache, cache_purge_loopback_only=False)) as client:
        r = client.post("/admin/cache/purge", json={"tags": ["b", "a", "a"]})
    assert r.status_code == 200 and r.json() == {"tags": ["a", "b"], "deleted": 3, "instances": 1}
    assert r.headers["cache-control"] == "no-store"


def test_redis_down_is_a_503() -> None:
    with TestClient(app(FakeCache(fail=True), cache_purge_loopback_only=False)) as client:
        r = client.post("/admin/cache/purge", json={"tags": ["a"]})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.headers["content-type"] == "application/problem+json"


def test_cache_off_purges_nothing() -> None:
    with TestClient(app(None, cache_purge_loopback_only=False)) as client:
        r = client.post("/admin/cache/purge", json={"tags": ["a"]})
    assert r.json() == {"tags": ["a"], "deleted": 0, "instances": 0}
