"""The rate-limit stage in process: classes, keys, headers, refusals, failure modes, metrics.

Global (Redis) limits are exercised against a real Redis in tests/integration; here no store is
bound, which is exactly the "Redis unavailable" situation, so the failure modes are tested too.
"""

from __future__ import annotations

import inspect
from typing import Any

import orjson
import pytest

from cygate.core.router import Router
from cygate.edge.context import EdgeContext, Principal, RoutePolicy, TrustedProxies
from cygate.edge.edge import Edge, Receive, Scope, Send
from cygate.edge.problem import Problem
from cygate.edge.ratelimit import RateLimitStage, build_limits
from cygate.infra.metrics import Metrics
from cygate.settings import Settings, load_settings

ROUTES = {
    "GET /a": RoutePolicy(name="GET /a", rate_limit="tight"),
    "GET /b": RoutePolicy(name="GET /b"),
    "GET /items/{id:int}": RoutePolicy(name="GET /items/{id:int}", rate_limit="per_path"),
    "POST /login": RoutePolicy(name="POST /login", rate_limit="login"),
}


def make_settings(**limits: Any) -> Settings:
    env = {
        "CYGATE_RATE_LIMITS": orjson.dumps(
            {
                "tight": {"rate": 3, "period": 60},
                "per_path": {"rate": 2, "period": 60, "key": ["path"]},
                **limits.pop("extra", {}),
            }
        ).decode(),
    }
    env.update({f"CYGATE_{k.upper()}": v for k, v in limits.items()})
    return load_settings(env)


def make_stage(settings: Settings | None = None, metrics: Metrics | None = None) -> RateLimitStage:
    return RateLimitStage.from_settings(
        (settings or make_settings()).rate_limit, ROUTES.values(), metrics or Metrics()
    )


def ctx_for(
    route: str,
    *,
    path: str | None = None,
    peer: str = "203.0.113.9",
    principal: Principal | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    trusted: TrustedProxies | None = None,
) -> EdgeContext:
    policy = ROUTES.get(route) or RoutePolicy(name=route)
    method, _, pattern = route.partition(" ")
    scope = {"headers": headers or [], "client": (peer, 40000)}
    ctx = EdgeContext(scope, method, path or pattern, "", "rid", b"", policy, None, trusted)
    ctx.principal = principal
    return ctx


def decide(stage: RateLimitStage, ctx: EdgeContext) -> tuple[int, dict[bytes, bytes]]:
    """Run a stage that must decide synchronously: (status, response headers)."""
    try:
        pending = stage(ctx)
    except Problem as problem:
        headers = dict(ctx.response_headers)
        headers.update({k.encode(): v.encode() for k, v in problem.headers.items()})
        return problem.status, headers
    assert pending is None, "a local decision must not create a coroutine"
    return 200, dict(ctx.response_headers)


# ---------------------------------------------------------------------------------------------
# Local decisions
# ---------------------------------------------------------------------------------------------


def test_unlimited_route_is_untouched() -> None:
    ctx = ctx_for("GET /b")
    assert make_stage(make_settings(rate_limit_default_class=""))(ctx) is None
    assert ctx.response_headers == []


def test_the_default_limit_applies_to_every_route_without_a_class() -> None:
    """Out of the box (no default class or ``api`` limit configured) a route that names no
    class gets the built-in ``api`` limit: per caller, 100/s with bursts of 200, headers on
    every answer, a 429 with the headers and Retry-After on a flood; other callers untouched."""
    stage = make_stage(make_settings())
    assert stage.limits()["GET /b"] == ("api",)
    assert stage.limits()["POST /login"] == ("login",)  # its own class, not the default
    statuses = []
    for _ in range(400):  # microseconds apart: the refill adds a handful at most
        status, headers = decide(stage, ctx_for("GET /b", peer="198.51.100.7"))
        assert headers[b"ratelimit-limit"] == b"200"
        assert headers[b"ratelimit-policy"] == b"100;w=1;burst=200"
        assert b"ratelimit-remaining" in headers and b"ratelimit-reset" in headers
        statuses.append(status)
        if status == 429:
            assert int(headers[b"retry-after"]) >= 1
            assert headers[b"ratelimit-remaining"] == b"0"
    assert statuses[:200] == [200] * 200 and statuses[-1] == 429
    assert decide(stage, ctx_for("GET /b", peer="198.51.100.8"))[0] == 200
    assert decide(stage, ctx_for("GET /b", principal=Principal(sub="u1")))[0] == 200


def test_the_default_limit_is_configurable_and_removable() -> None:
    tighter = make_settings(extra={"api": {"rate": 2, "period": 60}})
    stage = make_stage(tighter)
    assert [decide(stage, ctx_for("GET /b"))[0] for _ in range(3)] == [200, 200, 429]
    assert make_stage(make_settings(rate_limit_default_class="")).limits().get("GET /b") is None
    other = make_stage(make_settings(rate_limit_default_class="tight")).limits()["GET /b"]
    assert other == ("tight",)


def test_registration_is_limited_per_address() -> None:
    """The built-in ``register`` limit: 10 an hour per client address, decided in Redis (here
    no store: the per-process fallback, as when Redis is down), whoever the caller claims to be."""
    route = RoutePolicy(name="POST /register", rate_limit="register")
    stage = RateLimitStage.from_settings(load_settings({}).rate_limit, [route], Metrics())
    limit = build_limits(load_settings({}).rate_limit, [route], Metrics())["POST /register"].limits[
        0
    ]
    assert (limit.mode, limit.failure, limit.burst, limit.parts) == ("exact", "local", 10, ("ip",))

    def register(peer: str, principal: Principal | None = None) -> int:
        scope = {"headers": [], "client": (peer, 40000)}
        ctx = EdgeContext(scope, "POST", "/register", "", "rid", b"", route, None, None)
        ctx.principal = principal
        return decide(stage, ctx)[0]

    assert [register("192.0.2.1") for _ in range(10)] == [200] * 10
    assert register("192.0.2.1") == 429
    assert register("192.0.2.1", Principal(sub="someone")) == 429  # per address, not caller
    assert register("192.0.2.2") == 200


def test_local_limit_counts_down_then_refuses_honestly() -> None:
    stage = make_stage()
    seen = [decide(stage, ctx_for("GET /a")) for _ in range(4)]
    assert [s for s, _ in seen] == [200, 200, 200, 429]
    assert [h[b"ratelimit-remaining"] for _, h in seen] == [b"2", b"1", b"0", b"0"]
    assert {h[b"ratelimit-limit"] for _, h in seen} == {b"3"}
    assert seen[0][1][b"ratelimit-reset"] == b"20"  # one interval used: back in 20 s
    assert seen[2][1][b"ratelimit-reset"] == b"60"
    assert seen[2][1][b"ratelimit-policy"] == b"3;w=60"
    assert seen[3][1][b"retry-after"] == b"20"  # the next token is free in 20 s


def test_refusal_is_problem_json_through_the_edge() -> None:
    import asyncio

    router = Router()
    router.add("GET", "/a", ROUTES["GET /a"])
    edge = Edge(_ok, router, metrics=Metrics(), max_body_bytes=100, stages=[make_stage()])

    async def run() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        return [await _call(edge, "/a") for _ in range(4)]

    results = asyncio.run(run())
    assert [r[0] for r in results] == [200, 200, 200, 429]
    _, headers, body = results[3]
    doc = orjson.loads(body)
    assert headers[b"content-type"] == b"application/problem+json"
    assert doc["status"] == 429 and doc["limit"] == "tight" and doc["request_id"]
    assert headers[b"retry-after"] == b"20" and headers[b"ratelimit-remaining"] == b"0"
    assert results[0][1][b"ratelimit-remaining"] == b"2"  # headers on allowed responses too


def test_principal_keys_and_anonymous_by_address() -> None:
    stage = make_stage()
    alice = Principal(sub="alice")
    for _ in range(3):
        assert decide(stage, ctx_for("GET /a", principal=alice))[0] == 200
    assert decide(stage, ctx_for("GET /a", principal=alice, peer="198.51.100.1"))[0] == 429
    assert decide(stage, ctx_for("GET /a", principal=Principal(sub="bob")))[0] == 200
    assert decide(stage, ctx_for("GET /a"))[0] == 200  # anonymous: its own address's counter


def test_spoofed_forwarded_for_from_an_untrusted_peer_shares_the_counter() -> None:
    stage = make_stage()
    statuses = [
        decide(stage, ctx_for("GET /a", headers=[(b"x-forwarded-for", f"10.9.9.{i}".encode())]))[0]
        for i in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]
    # From a trusted proxy the header is believed: each client has its own counter.
    trusted = TrustedProxies(["203.0.113.9"])
    for i in range(5):
        xff = [(b"x-forwarded-for", f"10.8.8.{i}".encode())]
        assert decide(stage, ctx_for("GET /a", headers=xff, trusted=trusted))[0] == 200


def test_per_path_key_uses_the_normalised_path() -> None:
    stage = make_stage()
    assert decide(stage, ctx_for("GET /items/{id:int}", path="/items/1"))[0] == 200
    assert decide(stage, ctx_for("GET /items/{id:int}", path="/items/1"))[0] == 200
    assert decide(stage, ctx_for("GET /items/{id:int}", path="/items/1"))[0] == 429
    assert decide(stage, ctx_for("GET /items/{id:int}", path="/items/2"))[0] == 200


def test_per_path_key_canonicalises_typed_parameters() -> None:
    route = "GET /items/{id:int}/{u:uuid}"
    policy = RoutePolicy(name=route, rate_limit="per_path")
    stage = RateLimitStage.from_settings(make_settings().rate_limit, [policy], Metrics())
    u = "3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b"

    def at(i: str, uuid: str) -> EdgeContext:
        c = ctx_for(route, path=f"/items/{i}/{uuid}")
        c.policy = policy
        c.params = {"id": i, "u": uuid}
        return c

    assert decide(stage, at("7", u))[0] == 200
    assert decide(stage, at("007", u.upper()))[0] == 200  # same resource, same counter
    assert decide(stage, at("7", u.upper()))[0] == 429
    assert decide(stage, at("8", u))[0] == 200


def test_several_limits_most_restrictive_headers_and_refund() -> None:
    settings = make_settings(
        extra={
            "burst": {"rate": 2, "period": 1},  # 2 per second
            "hourly": {"rate": 5, "period": 3600},
        },
        rate_limit_classes='{"both": ["burst", "hourly"]}',
        rate_limit_routes='{"GET /b": "both"}',
    )
    stage = make_stage(settings)
    _, h1 = decide(stage, ctx_for("GET /b"))
    # burst: 1 left (reset 1 s); hourly: 4 left. The fewest remaining wins.
    assert (h1[b"ratelimit-limit"], h1[b"ratelimit-remaining"]) == (b"2", b"1")
    assert h1[b"ratelimit-policy"] == b"2;w=1, 5;w=3600"
    decide(stage, ctx_for("GET /b"))
    status, h3 = decide(stage, ctx_for("GET /b"))
    assert status == 429 and h3[b"ratelimit-limit"] == b"2"
    limits = {lim.name: lim for lim in stage.plans["GET /b"].limits}
    assert limits["hourly"].n_allowed.value == 2 and limits["burst"].n_limited.value == 1
    # Refused by the first limit, the request took nothing from the second.
    assert limits["hourly"].gcra.hit("i:203.0.113.9") and limits["hourly"].gcra.remaining == 2


def test_refused_by_a_later_limit_gives_back_the_earlier_one() -> None:
    settings = make_settings(
        extra={"roomy": {"rate": 100, "period": 60}, "one": {"rate": 1, "period": 60}},
        rate_limit_classes='{"pair": ["roomy", "one"]}',
        rate_limit_routes='{"GET /b": "pair"}',
    )
    stage = make_stage(settings)
    assert decide(stage, ctx_for("GET /b"))[0] == 200
    for _ in range(5):
        assert decide(stage, ctx_for("GET /b"))[0] == 429
    roomy = stage.plans["GET /b"].limits[0]
    assert roomy.name == "roomy"
    assert roomy.gcra.hit("i:203.0.113.9") and roomy.gcra.remaining == 98  # only one taken


def test_route_key_part_and_global_counter() -> None:
    settings = make_settings(
        extra={
            "endpoint": {"rate": 1, "period": 60, "key": ["route"]},
            "everyone": {"rate": 2, "period": 60, "key": []},
        },
        rate_limit_routes='{"GET /b": "endpoint", "GET /a": "everyone"}',
    )
    stage = make_stage(settings)
    assert decide(stage, ctx_for("GET /b", peer="1.1.1.1"))[0] == 200
    assert decide(stage, ctx_for("GET /b", peer="2.2.2.2"))[0] == 429  # one counter per route
    assert decide(stage, ctx_for("GET /a", peer="1.1.1.1"))[0] == 200
    assert decide(stage, ctx_for("GET /a", peer="2.2.2.2"))[0] == 200
    assert decide(stage, ctx_for("GET /a", peer="3.3.3.3"))[0] == 429


def test_api_key_part() -> None:
    settings = make_settings(
        extra={"keyed": {"rate": 1, "period": 60, "key": ["api_key"]}},
        rate_limit_routes='{"GET /b": "keyed"}',
        rate_limit_api_key_header="X-Partner-Key",
    )
    stage = make_stage(settings)
    k1 = [(b"x-partner-key", b"secret-one")]
    k2 = [(b"x-partner-key", b"secret-two")]
    assert decide(stage, ctx_for("GET /b", headers=k1))[0] == 200
    assert decide(stage, ctx_for("GET /b", headers=k1, peer="9.9.9.9"))[0] == 429
    assert decide(stage, ctx_for("GET /b", headers=k2))[0] == 200
    assert decide(stage, ctx_for("GET /b"))[0] == 200  # no key: by address
    assert decide(stage, ctx_for("GET /b"))[0] == 429
    limit = stage.plans["GET /b"].limits[0]
    key = limit.key(ctx_for("GET /b", headers=k1))
    assert key.startswith("k:") and "secret" not in key  # a digest, never the secret


def test_sub_part_puts_anonymous_callers_in_one_counter() -> None:
    settings = make_settings(
        extra={"subs": {"rate": 1, "period": 60, "key": ["sub", "route"]}},
        rate_limit_routes='{"GET /b": "subs"}',
    )
    stage = make_stage(settings)
    assert decide(stage, ctx_for("GET /b", peer="1.1.1.1"))[0] == 200
    assert decide(stage, ctx_for("GET /b", peer="2.2.2.2"))[0] == 429
    assert decide(stage, ctx_for("GET /b", principal=Principal(sub="a")))[0] == 200


# ---------------------------------------------------------------------------------------------
# Classes and configuration errors
# ---------------------------------------------------------------------------------------------


def test_classes_routes_and_default() -> None:
    settings = make_settings(rate_limit_default_class="tight")
    limits = make_stage(settings).limits()
    assert limits["GET /b"] == ("tight",)  # no class of its own: the default
    assert limits["POST /login"] == ("login",)  # the built-in login limit
    assert limits["GET /items/{id:int}"] == ("per_path",)
    settings = make_settings(rate_limit_routes='{"GET /a": "per_path"}')
    assert make_stage(settings).limits()["GET /a"] == ("per_path",)  # config beats opt


def test_login_defaults_to_closed_with_local_fallback() -> None:
    plans = build_limits(make_settings().rate_limit, ROUTES.values(), Metrics())
    login = plans["POST /login"].limits[0]
    assert (login.mode, login.failure) == ("exact", "local")
    settings = make_settings(extra={"login": {"rate": 2, "period": 60, "mode": "exact"}})
    login = build_limits(settings.rate_limit, ROUTES.values(), Metrics())["POST /login"].limits[0]
    assert (login.burst, login.failure) == (2, "local")  # replaced, still closed-with-fallback
    assert (
        build_limits(settings.rate_limit, ROUTES.values(), Metrics())["GET /a"].limits[0].failure
        == "open"
    )


def test_unknown_class_in_code_or_route_in_config_fails_at_start() -> None:
    bad = [RoutePolicy(name="GET /x", rate_limit="nonesuch")]
    with pytest.raises(ValueError, match="nonesuch"):
        build_limits(make_settings().rate_limit, bad, Metrics())
    settings = make_settings(rate_limit_routes='{"GET /typo": "tight"}')
    with pytest.raises(ValueError, match="GET /typo"):
        build_limits(settings.rate_limit, ROUTES.values(), Metrics())


# ---------------------------------------------------------------------------------------------
# Redis unavailable (no store bound): the failure modes
# ---------------------------------------------------------------------------------------------


def _global(failure: str, **extra: Any) -> RateLimitStage:
    spec = {"rate": 2, "period": 60, "mode": "exact", "failure": failure, **extra}
    settings = make_settings(extra={"g": spec}, rate_limit_routes='{"GET /b": "g"}')
    return make_stage(settings)


def test_fail_open_serves_and_counts_locally() -> None:
    stage = _global("open")
    results = [decide(stage, ctx_for("GET /b")) for _ in range(4)]
    assert [s for s, _ in results] == [200] * 4
    assert [h[b"ratelimit-remaining"] for _, h in results] == [b"1", b"0", b"0", b"0"]
    limit = stage.plans["GET /b"].limits[0]
    assert limit.n_fail_open.value == 4 and limit.n_allowed.value == 4


def test_fail_closed_is_503_with_retry_after() -> None:
    stage = _global("closed")
    status, headers = decide(stage, ctx_for("GET /b"))
    assert status == 503 and int(headers[b"retry-after"]) >= 1
    assert stage.plans["GET /b"].limits[0].n_fail_closed.value == 1


def test_fail_local_enforces_per_process() -> None:
    stage = _global("local", mode="batched", lease=1)
    assert [decide(stage, ctx_for("GET /b"))[0] for _ in range(3)] == [200, 200, 429]
    assert stage.plans["GET /b"].limits[0].n_fallback.value == 3


def test_metrics_render_the_decisions() -> None:
    metrics = Metrics()
    stage = make_stage(metrics=metrics)
    for _ in range(4):
        decide(stage, ctx_for("GET /a"))
    text = metrics.render()
    assert "# TYPE cygate_ratelimit_decisions_total counter" in text
    assert 'cygate_ratelimit_decisions_total{limit="tight",decision="allowed"} 3' in text
    assert 'cygate_ratelimit_decisions_total{limit="tight",decision="limited"} 1' in text


def test_stage_signature_is_sync() -> None:
    assert not inspect.iscoroutinefunction(RateLimitStage.__call__)


# ---------------------------------------------------------------------------------------------


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _call(edge: Edge, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "client": ("203.0.113.9", 1234),
    }
    await edge(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_key_gauges_count_the_callers_each_limit_holds() -> None:
    """``cygate_ratelimit_keys``: per limit in use, the keys its tables hold now."""
    stage = make_stage()
    before = {labels: value for _, labels, value in stage.key_gauges()}
    assert before[("tight",)] == 0 and before[("per_path",)] == 0
    for peer in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
        decide(stage, ctx_for("GET /a", peer=peer))
    decide(stage, ctx_for("GET /items/{id:int}", path="/items/7"))
    after = {labels: value for family, labels, value in stage.key_gauges()}
    assert {family for family, _, _ in stage.key_gauges()} == {"cygate_ratelimit_keys"}
    assert after[("tight",)] == 3 and after[("per_path",)] == 1
