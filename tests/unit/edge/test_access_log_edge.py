"""The edge's access log: the fused hit path and the general path write the same line for the
same request; sample 0 leaves the plain hit path; a full queue drops and counts; log lines made
while a request is served carry its ids. Both implementations of the hit path."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from cache_helpers import CountedHitPath, with_host

import cygate.edge.edge as edge_module
from core_impls import CoreImplementation
from cygate.core.jwt import JWTVerifier, VerifyKey
from cygate.core.router import Router
from cygate.edge.auth import TokenStage
from cygate.edge.cache import ResponseCache
from cygate.edge.context import EdgeContext, RoutePolicy
from cygate.edge.edge import Edge, Message
from cygate.edge.problem import Problem
from cygate.edge.ratelimit import RateLimitStage
from cygate.infra.accesslog import AccessLog
from cygate.infra.logs import JsonFormatter
from cygate.infra.metrics import Metrics
from cygate.services.identity.revocation import Revocations
from cygate.services.identity.service import own_principal
from cygate.settings import CacheRule, load_settings
from jwt_cases import SigningKeys, token

KEYS = SigningKeys()
KID = KEYS.kids["EdDSA"]
RULES = {
    "pub": CacheRule(ttl=60, max_age=30),
    "short": CacheRule(ttl=0.05, stale_while_revalidate=30),
}
LIMITS = {"per-caller": {"rate": 1000, "period": 60, "key": ["caller"]}}
ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/p/{id:int}", {"cache": "pub", "rate_limit": "per-caller"}),
    ("/open/{id:int}", {"cache": "pub"}),
    ("/plain/{id:int}", {}),
    ("/short/{id:int}", {"cache": "short"}),
]
ALICE = token(
    KEYS.header("EdDSA"),
    KEYS.claims(sub="alice", jti="jti-alice", exp=int(time.time()) + 86400),
    "EdDSA",
    KEYS.ed,
)
VARYING = ("timestamp", "duration_ms", "request_id", "trace_id")
log = logging.getLogger("cygate.test.access")


class Lines:
    """What an access log wrote, one parsed line per record."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def parsed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in b"".join(self.chunks).splitlines()]


def access_log(lines: Lines, *, sample: float = 1.0, capacity: int = 10_000) -> AccessLog:
    return AccessLog(sample=sample, fmt="json", capacity=capacity, write=lines.write)


LOADS: Counter[str] = Counter()


async def loader(ctx: EdgeContext) -> bytes:
    LOADS[ctx.path] += 1
    log.warning("loading %s", ctx.path)  # a line made while the request is served
    if (ctx.params or {}).get("id") == "0":
        raise Problem(404, "no such thing")
    return orjson.dumps({"route": ctx.policy.name, "path": ctx.path})


async def upstream(ctx: EdgeContext, receive: Any, send: Any) -> None:
    """A proxied route's dispatcher: answers 201 with a body of its own."""
    await send({"type": "http.response.start", "status": 201, "headers": [(b"x-up", b"1")]})
    await send({"type": "http.response.body", "body": b"from upstream", "more_body": True})
    await send({"type": "http.response.body", "body": b"!"})


def build_edge(
    impl: CoreImplementation,
    monkeypatch: pytest.MonkeyPatch,
    *,
    hit_path: bool,
    access: AccessLog | None,
) -> Edge:
    hitpath = impl.module("hitpath")
    monkeypatch.setattr(edge_module, "HitPath", hitpath.HitPath)
    monkeypatch.setattr(edge_module, "LoggedHitPath", hitpath.LoggedHitPath)
    verifier = JWTVerifier(leeway=0)
    verifier.set_issuer(
        "cygate",
        audience="cygate",
        keys=[VerifyKey(KID, "EdDSA", KEYS.ed.public_key())],
        principal=own_principal("cygate"),
    )
    token_stage = TokenStage(verifier, Revocations(None, verifier, interval=60.0))
    settings = load_settings(
        {"CYGATE_RATE_LIMITS": json.dumps(LIMITS), "CYGATE_RATE_LIMIT_DEFAULT_CLASS": ""},
        cache_key_secret="access-log-test",
        cache_l2=False,
    )
    metrics = Metrics()
    router = Router()
    policies = []
    for pattern, extra in ROUTES:
        policy = RoutePolicy(name=f"GET {pattern}", fast=loader, **extra)
        router.add("GET", pattern, policy)
        policies.append(policy)
    router.add("GET", "/up/{id:int}", RoutePolicy(name="GET /up/{id:int}", target="svc"))
    cache = ResponseCache(settings.cache, metrics, redis=settings.redis, rules=RULES)
    for pattern, extra in ROUTES:
        if "cache" in extra:
            cache.add_route(f"GET {pattern}", extra["cache"])
    limiter = RateLimitStage.from_settings(settings.rate_limit, policies, metrics)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("every route here has a fast handler")

    edge = Edge(
        app,
        router,
        metrics=metrics,
        max_body_bytes=1000,
        hit_path=hit_path,
        stages=(token_stage, limiter),
        cache=cache,
        access=access,
        upstream=upstream,
    )
    cache.edge = edge
    return edge


async def request(
    edge: Edge, path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[bytes, bytes]]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": with_host(headers),
        "client": ("10.0.0.7", 5000),
    }
    await edge(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"])


class Formatted(logging.Handler):
    """Formats each record as it is logged (as cygate's stream handler does)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def formatted() -> Iterator[Formatted]:
    handler = Formatted()
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


REQUESTS: list[tuple[str, list[tuple[bytes, bytes]]]] = [
    ("/p/1", [(b"authorization", b"Bearer " + ALICE), (b"user-agent", b"curl/8")]),
    ("/p/1", [(b"authorization", b"Bearer " + ALICE), (b"user-agent", b"curl/8")]),
    ("/open/2", [(b"user-agent", b'evil\n{"x":1}\x1b[31m')]),
    ("/open/2", [(b"user-agent", b'evil\n{"x":1}\x1b[31m')]),
    ("/open/0", []),
    ("/open/0", []),
    ("/plain/3", [(b"x-request-id", b"client-chosen.1")]),
    ("/nowhere", []),
    ("/up/9", [(b"x-forwarded-for", b"203.0.113.1")]),
]


async def test_the_fused_and_the_general_path_write_the_same_line(
    core_impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch
) -> None:
    fused_lines, general_lines = Lines(), Lines()
    fused = build_edge(core_impl, monkeypatch, hit_path=True, access=access_log(fused_lines))
    general = build_edge(core_impl, monkeypatch, hit_path=False, access=access_log(general_lines))
    assert type(fused.hit_path) is core_impl.module("hitpath").LoggedHitPath
    counted: Counter[str] = Counter()
    fused._hits = CountedHitPath(fused.hit_path, counted)  # type: ignore[assignment]
    answers = []
    for path, headers in REQUESTS:
        answers.append(await request(fused, path, headers))
        await request(general, path, headers)
    assert fused.access is not None and general.access is not None
    fused.access.flush()
    general.access.flush()
    assert counted["fused"] == 2  # the two hits of 200s (a remembered 404 is the general path's)
    mine, theirs = fused_lines.parsed(), general_lines.parsed()
    assert len(mine) == len(theirs) == len(REQUESTS)
    assert [line["cache"] for line in mine] == [
        "miss", "hit-l1", "miss", "hit-l1", "miss", "hit-l1", "", "", ""
    ]  # fmt: skip
    for (status, headers), line, other in zip(answers, mine, theirs, strict=True):
        assert line["status"] == status
        assert line["request_id"] == headers[b"x-request-id"].decode()
        assert line["trace_id"] == headers[b"traceparent"].decode()[3:35]
        assert {k: v for k, v in line.items() if k not in VARYING} == {
            k: v for k, v in other.items() if k not in VARYING
        }
        assert line["duration_ms"] >= 0 and line["level"] == "INFO"
    hit = mine[1]
    assert hit["route"] == "GET /p/{id:int}" and hit["path"] == "/p/1"
    assert hit["method"] == "GET" and hit["ratelimit"] == "allowed" and hit["bytes"] > 0
    assert hit["client"] == "10.0.0.7" and hit["user_agent"] == "curl/8"
    assert mine[3]["ratelimit"] == "" and mine[3]["user_agent"] == 'evil\n{"x":1}\x1b[31m'
    assert mine[5]["status"] == 404 and mine[6]["request_id"] == "client-chosen.1"
    assert mine[7]["route"] == "<unmatched>" and mine[7]["status"] == 404
    proxied = mine[8]
    assert proxied["upstream"] == "svc" and proxied["status"] == 201 and proxied["bytes"] == 14
    assert proxied["client"] == "10.0.0.7"  # X-Forwarded-For from an untrusted peer: ignored


async def test_without_an_access_log_the_hit_path_is_the_plain_one(
    core_impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch
) -> None:
    edge = build_edge(core_impl, monkeypatch, hit_path=True, access=None)
    assert type(edge.hit_path) is core_impl.module("hitpath").HitPath


async def test_hits_are_sampled_at_the_configured_share(
    core_impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = Lines()
    edge = build_edge(core_impl, monkeypatch, hit_path=True, access=access_log(lines, sample=0.25))
    await request(edge, "/open/5")  # the miss (general path, sampled too)
    assert edge.access is not None
    edge.access.queue.clear()
    for _ in range(2000):
        status, headers = await request(edge, "/open/5")
        assert status == 200 and headers[b"x-cache"] == b"hit-l1"
    # 500 expected; a binomial's standard deviation here is about 19
    assert 400 < len(edge.access.queue) < 600


async def test_a_full_queue_drops_and_counts_the_hits_it_cannot_hold(
    core_impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = Lines()
    edge = build_edge(core_impl, monkeypatch, hit_path=True, access=access_log(lines, capacity=3))
    for _ in range(50):
        status, _ = await request(edge, "/open/6")
        assert status == 200  # answered all the same
    assert edge.access is not None
    assert len(edge.access.queue) == 3 and edge.access.dropped.value == 47
    edge.access.flush()
    assert len(lines.parsed()) == 3 and edge.access.written.value == 3


async def test_lines_logged_while_a_request_is_served_carry_its_ids(
    core_impl: CoreImplementation,
    monkeypatch: pytest.MonkeyPatch,
    formatted: Formatted,
) -> None:
    edge = build_edge(core_impl, monkeypatch, hit_path=True, access=None)
    status, headers = await request(edge, "/open/7", [(b"x-request-id", b"req-7")])
    assert status == 200
    [line] = formatted.lines
    assert line["request_id"] == "req-7" and line["message"] == "loading /open/7"
    assert line["trace_id"] == headers[b"traceparent"].decode()[3:35]
    after = json.loads(JsonFormatter().format(logging.makeLogRecord({"msg": "later"})))
    assert "request_id" not in after and "trace_id" not in after  # the request is over


async def test_a_background_refresh_is_not_a_logged_request(
    core_impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = Lines()
    edge = build_edge(core_impl, monkeypatch, hit_path=True, access=access_log(lines))
    LOADS.clear()
    await request(edge, "/short/1")
    await asyncio.sleep(0.1)  # stale now: the next answer is stale and refreshes in the back
    status, headers = await request(edge, "/short/1")
    assert status == 200 and headers[b"x-cache"] == b"stale"
    for _ in range(200):
        await asyncio.sleep(0.01)
        if LOADS["/short/1"] == 2:
            break
    assert LOADS["/short/1"] == 2  # the refresh ran (through the edge)
    await asyncio.sleep(0.05)  # (and finished)
    assert edge.access is not None
    edge.access.flush()
    assert [line["cache"] for line in lines.parsed()] == ["miss", "stale"]
