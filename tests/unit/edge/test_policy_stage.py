"""The policy stage (Cedar): decisions, the decision table, reloads, and that without policy
files nothing changes (no stage, the fused hit path as it was)."""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any

import pytest
from tests.unit.edge.cache_helpers import cache_settings

from cygate.edge.auth import TokenStage
from cygate.edge.context import EdgeContext, Principal, RoutePolicy, custom_claims
from cygate.edge.policy import PolicyError, PolicyStage
from cygate.edge.problem import Problem
from cygate.edge.ratelimit import RateLimitStage

POLICY = """
permit (principal, action, resource) when { principal.roles.contains("admin") };
permit (principal, action == Action::"update_product", resource is Product)
when {
    principal.roles.contains("catalog_manager") &&
    principal has category_ids && resource has category_id &&
    principal.category_ids.contains(resource.category_id)
};
"""

CAT_A = "11111111-1111-1111-1111-111111111111"
CAT_B = "22222222-2222-2222-2222-222222222222"


def manager(*categories: str) -> Principal:
    return Principal(
        sub="m1",
        roles=frozenset({"catalog_manager"}),
        claims=custom_claims({"sub": "m1", "category_ids": list(categories)}),
    )


ADMIN = Principal(sub="a1", roles=frozenset({"admin"}))


def write(path: pathlib.Path, text: str, bump: int = 0) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def ctx(principal: Principal | None, params: dict[str, str], **policy: Any) -> EdgeContext:
    scope = {"headers": [], "client": ("127.0.0.1", 5000)}
    route = RoutePolicy(name="PATCH /api/v1/products/{product_id:uuid}", **policy)
    c = EdgeContext(scope, "PATCH", "/p", "", "rid", b"tp", route, params)
    c.principal = principal
    return c


@pytest.fixture
def policy_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "catalog.cedar"
    write(path, POLICY)
    return path


def stage_with(policy_file: pathlib.Path, **kw: Any) -> PolicyStage:
    categories = {"p-a": CAT_A, "p-b": CAT_B}

    async def product(product_id: str) -> dict[str, Any] | None:
        category = categories.get(product_id)
        return None if category is None else {"category_id": category}

    return PolicyStage([str(policy_file)], loaders={"Product": product}, **kw)


def run(stage: PolicyStage, c: EdgeContext) -> None:
    pending = stage(c)
    if pending is not None:
        asyncio.run(pending)  # type: ignore[arg-type]


ROUTE = {"policy": "update_product", "policy_resource": "Product"}


def test_own_category_allowed_other_denied_admin_unaffected(policy_file: pathlib.Path) -> None:
    stage = stage_with(policy_file)
    run(stage, ctx(manager(CAT_A), {"product_id": "p-a"}, **ROUTE))
    with pytest.raises(Problem) as refused:
        run(stage, ctx(manager(CAT_A), {"product_id": "p-b"}, **ROUTE))
    assert refused.value.status == 403
    for product in ("p-a", "p-b", "missing"):
        run(stage, ctx(ADMIN, {"product_id": product}, **ROUTE))
    with pytest.raises(Problem):  # no token: Cedar denies by default
        run(stage, ctx(None, {"product_id": "p-a"}, **ROUTE))
    with pytest.raises(Problem):  # another action the policy does not permit managers
        run(stage, ctx(manager(CAT_A), {"product_id": "p-a"}, policy="delete_product",
                       policy_resource="Product"))  # fmt: skip


def test_routes_without_an_action_are_not_asked(policy_file: pathlib.Path) -> None:
    stage = stage_with(policy_file)
    assert stage(ctx(None, {})) is None


def test_decisions_are_remembered_in_a_bounded_table(policy_file: pathlib.Path) -> None:
    stage = stage_with(policy_file, cache_size=2)
    attrs = (("category_id", CAT_A),)
    assert stage.decide(manager(CAT_A), "update_product", "Product", "p-a", attrs)
    assert stage.decide(manager(CAT_A), "update_product", "Product", "p-a", attrs)
    assert stage.remembered == 1
    assert not stage.decide(manager(CAT_B), "update_product", "Product", "p-a", attrs)
    stage.decide(ADMIN, "update_product", "Product", "p-a", attrs)
    stage.decide(ADMIN, "update_product", "Product", "p-b", attrs)
    assert 1 <= stage.remembered <= 2
    stage.forget()
    assert stage.remembered == 0


def test_reload_picks_up_a_change_and_keeps_the_set_on_a_bad_file(
    policy_file: pathlib.Path,
) -> None:
    errors: list[int] = []
    stage = stage_with(policy_file, reload_interval=1.0, on_reload_error=lambda: errors.append(1))
    admin_only = 'permit (principal, action, resource) when { principal.roles.contains("admin") };'
    write(policy_file, admin_only, bump=5)
    assert stage.maybe_reload(now=10**9)
    with pytest.raises(Problem):
        run(stage, ctx(manager(CAT_A), {"product_id": "p-a"}, **ROUTE))
    write(policy_file, "permit (principal, action, resource", bump=10)
    assert not stage.maybe_reload(now=10**9 + 10)
    assert errors == [1]
    assert stage.policies.text == admin_only  # the previous set stays
    run(stage, ctx(ADMIN, {"product_id": "p-a"}, **ROUTE))


def test_a_bad_file_at_start_up_is_one_line(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.cedar"
    bad.write_text("permit (principal, action, resource")
    with pytest.raises(PolicyError) as err:
        PolicyStage([str(bad)])
    assert "\n" not in str(err.value) and "bad.cedar" in str(err.value)
    with pytest.raises(PolicyError, match="not readable"):
        PolicyStage([str(tmp_path / "missing.cedar")])


def test_custom_claims_keep_scalars_and_lists_only() -> None:
    claims = {"sub": "u", "roles": ["admin"], "category_ids": ["a", "b"], "org": "x",
              "nested": {"a": 1}, "mixed": [1, {"b": 2}]}  # fmt: skip
    assert custom_claims(claims) == (("category_ids", ("a", "b")), ("org", "x"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_without_policy_files_the_stages_and_the_hit_path_are_unchanged(
    policy_file: pathlib.Path,
) -> None:
    from cygate.app import create_app

    edge = create_app(cache_settings())
    assert all(isinstance(s, TokenStage | RateLimitStage) for s in edge.stages)
    assert edge.hit_path is not None  # the fused hit path still answers cached hits
    with_policies = create_app(cache_settings(policy_files=[str(policy_file)]))
    assert any(isinstance(s, PolicyStage) for s in with_policies.stages)
    # no cached route names a policy action: the hit path still answers the cached reads
    assert with_policies.hit_path is not None
    assert [type(s) for s in with_policies.stages][: len(edge.stages)] == [
        type(s) for s in edge.stages
    ]
    route = with_policies.router.match(
        "PATCH", "/api/v1/products/11111111-1111-1111-1111-111111111111", None
    )
    assert route.value.policy == "update_product" and route.value.policy_resource == "Product"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_bad_policy_file_fails_create_app(tmp_path: pathlib.Path) -> None:
    from cygate.app import create_app

    bad = tmp_path / "bad.cedar"
    bad.write_text("forbid (principal")
    with pytest.raises(ValueError, match="not valid Cedar"):
        create_app(cache_settings(policy_files=[str(bad)]))


def test_check_config_stops_on_a_bad_policy_file_with_one_line(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.cedar"
    bad.write_text("permit (principal")
    proc = subprocess.run(
        [sys.executable, "-m", "cygate", "check-config"],
        env={"CYGATE_POLICY_FILES": str(bad), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not valid Cedar" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_cached_route_that_names_an_action_turns_the_hit_path_off(
    policy_file: pathlib.Path,
) -> None:
    from cygate.app import create_app
    from cygate.core.router import Router

    edge = create_app(cache_settings(policy_files=[str(policy_file)]))
    assert edge.hit_path is not None
    name = "GET /api/v1/products/{product_id:uuid}"  # a cached route
    governed = Router()
    for host, method, pattern, route in edge.router.routes():
        if route.name == name:
            route = RoutePolicy(name=name, cache=route.cache, policy="read_product")
        governed.add(method, pattern, route, host)
    edge.router = governed
    assert edge.hit_path is None  # the policy stage must see those requests
