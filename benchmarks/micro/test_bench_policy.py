"""Policy stage micro-benchmarks: a remembered decision, a Cedar evaluation, and, beside them in
the same run, one route match of the compiled router (what every request pays anyway).

- ``route match``: ``Router.match`` of a product write's path (a table of a few routes);
- ``cached decision``: ``PolicyStage.decide`` answered by its decision table (a dict lookup on
  a tuple key);
- ``uncached decision``: the same question with the table emptied before each one (cedarpy
  builds its entities and evaluates the policy set).

``-s`` prints the mean of each in µs.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from cygate.core.router import Router
from cygate.edge.context import Principal, custom_claims
from cygate.edge.policy import PolicyStage

GROUP = "policy: decision vs route match"
N = 100

POLICY = """
permit (principal, action, resource) when { principal.roles.contains("admin") };
permit (principal, action == Action::"update_product", resource is Product)
when {
    principal.roles.contains("catalog_manager") &&
    principal has category_ids && resource has category_id &&
    principal.category_ids.contains(resource.category_id)
};
"""
PRODUCT = "0b0f8f4e-8a4e-4a59-9f43-6f1f6f1c2b11"
CATEGORY = "7d4f2a52-93a2-4f61-8a2e-5c0d5f3f8e21"
ATTRS = (("category_id", CATEGORY),)
WHO = Principal(
    sub="manager-1",
    roles=frozenset({"catalog_manager"}),
    claims=custom_claims({"category_ids": [CATEGORY]}),
)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> PolicyStage:
    path = pathlib.Path(tmp_path_factory.mktemp("policy")) / "catalog.cedar"
    path.write_text(POLICY)
    return PolicyStage([str(path)], reload_interval=0)


def _report(benchmark: Any, label: str) -> None:
    if benchmark.stats is None:  # --benchmark-disable (the suite's smoke run): nothing timed
        return
    stats = benchmark.stats.stats
    print(f"\n{label}: {stats.mean / N * 1e6:.3f} µs per operation")


def test_route_match(micro: Any, benchmark: Any) -> None:
    router = Router()
    for method in ("GET", "PATCH", "DELETE"):
        router.add(method, "/api/v1/products/{product_id:uuid}", method)
    router.add("GET", "/api/v1/products", "list")
    path = f"/api/v1/products/{PRODUCT}"
    match = router.match

    def run() -> None:
        for _ in range(N):
            match("PATCH", path, None)

    micro(run, group=GROUP, ops=N)
    _report(benchmark, "route match")


def test_cached_decision(micro: Any, benchmark: Any, stage: PolicyStage) -> None:
    decide = stage.decide
    assert decide(WHO, "update_product", "Product", PRODUCT, ATTRS)

    def run() -> None:
        for _ in range(N):
            decide(WHO, "update_product", "Product", PRODUCT, ATTRS)

    micro(run, group=GROUP, ops=N)
    _report(benchmark, "cached decision")


def test_uncached_decision(micro: Any, benchmark: Any, stage: PolicyStage) -> None:
    decide = stage.decide
    forget = stage.forget

    def run() -> None:
        for _ in range(N):
            forget()
            decide(WHO, "update_product", "Product", PRODUCT, ATTRS)

    micro(run, group=GROUP, ops=N)
    _report(benchmark, "uncached decision")
