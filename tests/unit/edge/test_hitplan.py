"""The fused hit path's plan is one generation: the edge builds a new one (and a new
``HitPath``) when the cache caches another route or the rate-limit stage installs new plans,
and a plan holds copies of those tables, not the owners' own."""

from __future__ import annotations

from cache_helpers import cache_settings, make_edge

from cygate.edge.ratelimit import RateLimitStage


def test_a_new_route_or_new_limits_make_a_new_plan() -> None:
    edge, cache, _ = make_edge()
    settings = cache_settings(cache_l2=False)
    limiter = RateLimitStage.from_settings(
        settings.rate_limit, (policy for *_, policy in edge.router.routes()), edge.metrics
    )
    edge.stages = (limiter,)
    first = edge.hit_path
    assert first is not None
    assert first.plan.routes == cache.route_table()
    assert first.plan.routes is not cache.route_table()
    assert first.plan.rate_plans == dict(limiter.plans)

    assert cache.add_route("GET /more/{id:int}", "items")
    second = edge.hit_path
    assert second is not None and second is not first
    assert "GET /more/{id:int}" in second.plan.routes
    assert "GET /more/{id:int}" not in first.plan.routes

    plans = limiter.plan(policy for *_, policy in edge.router.routes())
    limiter.install(plans)
    third = edge.hit_path
    assert third is not None and third is not second
    assert third.plan.rate_plans == plans and third.plan.rate_plans is not plans
    assert limiter.plans is plans
