"""The fused hit path (``cygate.edge.hitpath``) against the general edge, request by request.

Two edges are built alike (router, token stage, rate limits, cache, the same loaders); one
answers with the fused hit path, the other never does (``hit_path=False``). Every scenario
sends the same requests, in the same order, to both and compares the answers: status, header
names in order, header values (the ids generated per request only for their form), body. A
counter around ``HitPath.serve`` shows which requests the fused path answered, so a scenario
fails if it stops exercising it. Both implementations (compiled and the pure twin).
"""

from __future__ import annotations

import asyncio
import json
import re
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
from cygate.edge.compress import Compression
from cygate.edge.context import EdgeContext, RoutePolicy
from cygate.edge.cors import Cors
from cygate.edge.edge import Edge, Message
from cygate.edge.problem import Problem
from cygate.edge.ratelimit import RateLimitStage
from cygate.infra.metrics import Metrics
from cygate.services.identity.service import own_principal
from cygate.settings import CacheRule, load_settings
from jwt_cases import SigningKeys, token

KEYS = SigningKeys()
KID = KEYS.kids["EdDSA"]
RULES = {
    "pub": CacheRule(ttl=60, max_age=30, query=["q"], headers=["Accept-Language"]),
    "mine": CacheRule(ttl=60, max_age=0, scope="private"),
    "short": CacheRule(ttl=0.05, stale_while_revalidate=30, not_found_ttl=5),
    "bare": CacheRule(ttl=60),  # a key of the path alone (the compiled path remembers it)
}
LIMITS = {
    "per-caller": {"rate": 5, "period": 60, "key": ["caller"]},
    "per-sub": {"rate": 100, "period": 60, "key": ["sub"]},
    "per-route": {"rate": 100, "period": 60, "key": ["route"]},
    "per-ip": {"rate": 100, "period": 60, "key": ["ip"]},
    "everyone": {"rate": 100, "period": 60, "key": []},
    "per-key": {"rate": 100, "period": 60, "key": ["api_key"]},
    "two": {"rate": 100, "period": 60, "key": ["caller", "route"]},
    "leased": {"rate": 100000, "period": 60, "key": ["caller"], "mode": "batched"},
}
ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/p/{id:int}", {"cache": "pub", "rate_limit": "per-caller"}),
    ("/open/{id:int}", {"cache": "pub"}),
    ("/auth/{id:int}", {"cache": "pub", "auth": True, "rate_limit": "per-route"}),
    ("/admin/{id:int}", {"cache": "pub", "roles": frozenset({"admin"})}),
    ("/me", {"cache": "mine", "auth": True, "rate_limit": "per-sub"}),
    ("/ip/{id:int}", {"cache": "pub", "rate_limit": "per-ip"}),
    ("/all/{id:int}", {"cache": "pub", "rate_limit": "everyone"}),
    ("/key/{id:int}", {"cache": "pub", "rate_limit": "per-key"}),
    ("/two/{id:int}", {"cache": "pub", "rate_limit": "two"}),
    ("/short/{id:int}", {"cache": "short"}),
    ("/bare/{id:int}", {"cache": "bare", "rate_limit": "per-caller"}),
    ("/plain/{id:int}", {}),
    ("/lease/{id:int}", {"cache": "pub", "rate_limit": "leased"}),
]
_RID = re.compile(rb"[0-9a-f]{24}")
_TRACE = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-01")


def _token(**claims: Any) -> bytes:
    # Minted when the module is collected: valid for a day, not the helper's ten minutes, so a
    # long suite that reaches these tests late does not find them expired.
    claims.setdefault("exp", int(time.time()) + 86400)
    return token(KEYS.header("EdDSA"), KEYS.claims(**claims), "EdDSA", KEYS.ed)


ALICE = _token(sub="alice", jti="jti-alice")
BOB = _token(sub="bob", jti="jti-bob")
ADMIN = _token(sub="root", jti="jti-root", roles=["admin"])
REVOKED = _token(sub="mallory", jti="jti-revoked")  # the verifier refuses it
FED = _token(sub="eve", jti="jti-fed")  # in the revoked set (from the feed), verifies fine
EXPIRED = _token(sub="alice", jti="jti-old", exp=int(time.time()) - 100)


class FedRevocations:
    """What the edge reads of the identity service's revocations (``RevocationCheck``): the
    set a worker keeps from the feed, here holding a jti the verifier was never told of."""

    def __init__(self) -> None:
        self.revoked = {"jti-fed": time.time() + 600}


class Pair:
    """The two edges, and what the fused one answered itself."""

    limits: dict[str, Any] = LIMITS
    default_class = ""
    cors: Cors | None = None
    compression: Compression | None = None

    def __init__(
        self,
        impl: CoreImplementation,
        monkeypatch: pytest.MonkeyPatch,
        limits: dict[str, Any] | None = None,
        default_class: str = "",
    ) -> None:
        self.limits = LIMITS if limits is None else limits
        self.default_class = default_class
        real = impl.module("hitpath").HitPath
        counted: Counter[str] = Counter()

        def build(**kwargs: Any) -> Any:
            """The edge's HitPath, counting what it answers."""
            return CountedHitPath(real(**kwargs), counted)

        monkeypatch.setattr(edge_module, "HitPath", build)
        self.counted = counted
        self.loads: Counter[str] = Counter()
        self.fused = self._edge(hit_path=True)
        self.general = self._edge(hit_path=False)
        assert self.fused.hit_path is not None and self.general.hit_path is None

    def _edge(self, *, hit_path: bool) -> Edge:
        verifier = JWTVerifier(leeway=0)
        verifier.set_issuer(
            "cygate",
            audience="cygate",
            keys=[VerifyKey(KID, "EdDSA", KEYS.ed.public_key())],
            principal=own_principal("cygate"),
        )
        verifier.revoke_jti("jti-revoked", time.time() + 600)
        token_stage = TokenStage(verifier, FedRevocations())
        # NOTE: by default no default limit: routes without a class stay unlimited here (the
        # built-in default is a local per-caller limit, the kind /p/ has; at its 100/s the
        # remaining count depends on timing). test_the_default_limit_keeps_hits_on_the_fused_path
        # turns it on.
        settings = load_settings(
            {
                "CYGATE_RATE_LIMITS": json.dumps(self.limits),
                "CYGATE_RATE_LIMIT_DEFAULT_CLASS": self.default_class,
            },
            cache_key_secret="hit-path-test",
            cache_l2=False,
        )
        metrics = Metrics()
        router = Router()
        policies = []
        for pattern, extra in ROUTES:
            policy = RoutePolicy(name=f"GET {pattern}", fast=self._loader, **extra)
            router.add("GET", pattern, policy)
            policies.append(policy)
        router.add("GET", "/up/{id:int}", RoutePolicy(name="GET /up/{id:int}", target="svc"))
        # One path, two routes: the one of Host b.example, and everybody else's.
        for name, host in (("GET /h/{id:int}", None), ("GET /hb/{id:int}", "b.example")):
            policy = RoutePolicy(name=name, cache="pub", fast=self._loader)
            router.add("GET", "/h/{id:int}", policy, host=host)
            policies.append(policy)
        cache = ResponseCache(settings.cache, metrics, redis=settings.redis, rules=RULES)
        for pattern, extra in ROUTES:
            if "cache" in extra:
                cache.add_route(f"GET {pattern}", extra["cache"])
        cache.add_route("GET /h/{id:int}", "pub")
        cache.add_route("GET /hb/{id:int}", "pub")
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
            cors=self.cors,
            compression=self.compression,
        )
        cache.edge = edge
        return edge

    async def _loader(self, ctx: EdgeContext) -> bytes:
        self.loads[ctx.path] += 1
        if (ctx.params or {}).get("id") == "0":
            raise Problem(404, "no such thing")
        who = ctx.principal.sub if ctx.principal is not None else None
        answer: dict[str, Any] = {"route": ctx.policy.name, "path": ctx.path, "who": who}
        if (ctx.params or {}).get("id") == "999":
            answer["items"] = [{"n": i, "text": "a compressible body"} for i in range(50)]
        return orjson.dumps(answer)

    async def both(self, path: str, **request: Any) -> tuple[Reply, Reply]:
        general = await send(self.general, path, **request)
        fused = await send(self.fused, path, **request)
        return fused, general


class Reply:
    def __init__(self, start: Message, body: bytes) -> None:
        self.status: int = start["status"]
        self.headers: list[tuple[bytes, bytes]] = [tuple(h) for h in start["headers"]]
        self.body = body

    def get(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


async def send(
    edge: Edge,
    path: str,
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
    raw_path: bytes | None = None,
    client: str = "10.0.0.1",
) -> Reply:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def record(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode() if raw_path is None else raw_path,
        "query_string": query,
        "headers": with_host(headers),
        "client": (client, 5000),
    }
    await edge(scope, receive, record)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return Reply(sent[0], body)


def assert_same(fused: Reply, general: Reply, request_headers: list[tuple[bytes, bytes]]) -> None:
    """Same status, same header names in the same order, same values but for the ids made
    per request (then: well formed, unless the request gave valid ones to keep), ``age`` and
    ``ratelimit-reset`` (whole seconds counted from each answer's own clock: within one, as the
    two answers can fall either side of a second's edge on a loaded machine); same body (a
    problem's ``request_id`` is its own request's)."""
    assert fused.status == general.status
    assert [k for k, _ in fused.headers] == [k for k, _ in general.headers]
    given = dict(request_headers)
    for (name, mine), (_, theirs) in zip(fused.headers, general.headers, strict=True):
        if name == b"x-request-id" and given.get(name) != theirs:
            assert _RID.fullmatch(mine), mine
        elif name == b"traceparent" and given.get(name) != theirs:
            assert _TRACE.fullmatch(mine), mine
        elif name in (b"age", b"ratelimit-reset"):
            assert abs(int(mine) - int(theirs)) <= 1, (name, mine, theirs)
        else:
            assert mine == theirs, (name, mine, theirs)
    if fused.get(b"content-type") == b"application/problem+json":
        mine, theirs = orjson.loads(fused.body), orjson.loads(general.body)
        assert mine.pop("request_id") == fused.get(b"x-request-id").decode()  # type: ignore[union-attr]
        theirs.pop("request_id")
        assert mine == theirs
    else:
        assert fused.body == general.body


def bearer(tok: bytes, scheme: bytes = b"Bearer ") -> list[tuple[bytes, bytes]]:
    return [(b"authorization", scheme + tok)]


@pytest.fixture
def pair(core_impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    yield Pair(core_impl, monkeypatch)


async def check(pair: Pair, path: str, **request: Any) -> Reply:
    fused, general = await pair.both(path, **request)
    assert_same(fused, general, request.get("headers") or [])
    return fused


# -- what the fused path answers ----------------------------------------------------------------


async def test_a_hit_is_answered_by_the_fused_path_with_the_general_paths_answer(
    pair: Pair,
) -> None:
    headers = [(b"host", b"api.example:8000"), *bearer(ALICE)]
    first = await check(pair, "/p/1", headers=headers)
    assert first.get(b"x-cache") == b"miss" and pair.counted["fused"] == 0
    hit = await check(pair, "/p/1", headers=headers)
    assert hit.get(b"x-cache") == b"hit-l1" and pair.counted["fused"] == 1
    assert hit.get(b"ratelimit-remaining") == b"3" and hit.get(b"ratelimit-policy") == b"5;w=60"
    assert pair.loads["/p/1"] == 2  # once per edge


@pytest.mark.parametrize(
    "extra",
    [
        [(b"x-request-id", b"client-id_1.2:3")],
        [(b"x-request-id", b"bad id")],
        [(b"x-request-id", b"x" * 129)],
        [(b"traceparent", b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01")],
        [(b"traceparent", b"00-" + b"AB" * 16 + b"-" + b"cd" * 8 + b"-01")],
        [(b"traceparent", b"00-" + b"0" * 32 + b"-" + b"cd" * 8 + b"-01")],
        [(b"traceparent", b"01-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01")],
        [(b"traceparent", b"00-" + b"ab" * 16 + b"-" + b"0" * 16 + b"-01")],  # zero parent id
        [(b"traceparent", b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01-extra")],
        [(b"x-request-id", b"one"), (b"x-request-id", b"two")],
        [(b"accept-language", b"de")],
        [(b"accept", b"text/html"), (b"x-forwarded-host", b"evil.example")],
        [(b"host", b"API.example")],
    ],
)
async def test_request_headers_the_hit_path_reads(pair: Pair, extra: list[Any]) -> None:
    headers = [*bearer(ALICE), *extra]
    await check(pair, "/p/2", headers=headers)
    hit = await check(pair, "/p/2", headers=headers)
    assert pair.counted["fused"] == 1 and hit.get(b"x-cache") == b"hit-l1"
    if extra[0] == (b"x-request-id", b"client-id_1.2:3"):
        assert hit.get(b"x-request-id") == b"client-id_1.2:3"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/open/1", []),  # anonymous, no limit
        ("/ip/1", []),  # anonymous, limited per address
        ("/ip/1", bearer(ALICE)),  # an address limit, whoever calls
        ("/all/1", bearer(BOB)),  # one counter for everyone
        ("/auth/1", bearer(ALICE)),  # auth, limited per route
        ("/admin/1", bearer(ADMIN)),  # the right role
        ("/p/1", []),  # per caller, anonymous: per address
        ("/p/1", bearer(BOB, b"bEaReR  ")),  # scheme in any case, spaces
        ("/me", bearer(ALICE)),  # private, per sub
        ("/bare/1", bearer(ALICE)),  # a key of the path alone
    ],
)
async def test_kinds_of_route_answered_by_the_fused_path(
    pair: Pair, path: str, headers: list[Any]
) -> None:
    for _ in range(3):
        await check(pair, path, headers=headers)
    assert pair.counted["fused"] == 2


async def test_the_default_limit_keeps_hits_on_the_fused_path(
    core_impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Routes without a class get the default limit (``rate_limit_default_class``: the built-in
    ``api``, per caller, local): the fused path still answers their hits, with the general
    path's RateLimit headers (the limit slowed down here so the countdown is exact)."""
    slow_api = {"api": {"rate": 100, "period": 3600, "burst": 200, "key": ["caller"]}}
    pair = Pair(core_impl, monkeypatch, {**LIMITS, **slow_api}, default_class="api")
    for headers in ([], bearer(ALICE)):
        for i in range(3):
            reply = await check(pair, "/open/1", headers=headers)
            assert reply.get(b"ratelimit-limit") == b"200"
            assert reply.get(b"ratelimit-remaining") == b"%d" % (199 - i)
            assert reply.get(b"ratelimit-policy") == b"100;w=3600;burst=200"
    assert pair.counted["fused"] == 5  # all but the first (the miss)


async def test_private_entries_stay_with_their_caller(pair: Pair) -> None:
    for tok, who in ((ALICE, "alice"), (BOB, "bob"), (ALICE, "alice"), (BOB, "bob")):
        reply = await check(pair, "/me", headers=bearer(tok))
        assert orjson.loads(reply.body)["who"] == who
    assert pair.counted["fused"] == 2


async def test_more_callers_than_remembered_tokens_each_get_their_own(pair: Pair) -> None:
    """The compiled path remembers recent tokens in 64 slots (by their last bytes): with 100
    callers in turn slots are shared, and each caller still gets their own entry, each time."""
    callers = [(_token(sub=f"user{i}", jti=f"jti-{i}"), f"user{i}") for i in range(100)]
    for _ in range(2):
        for tok, who in callers:
            reply = await check(pair, "/me", headers=bearer(tok))
            assert orjson.loads(reply.body)["who"] == who
    assert pair.counted["fused"] == 100
    reply = await check(pair, "/me", headers=bearer(callers[7][0], b"bearer   "))
    assert orjson.loads(reply.body)["who"] == "user7"


# -- what it leaves to the general path, answered the same --------------------------------------


@pytest.mark.parametrize(
    ("path", "request_"),
    [
        ("/auth/1", {}),  # 401: no token
        ("/auth/1", {"headers": bearer(b"not.a.token")}),  # 401: a bad one
        ("/auth/1", {"headers": bearer(EXPIRED)}),  # 401: expired
        ("/auth/1", {"headers": bearer(REVOKED)}),  # 401: revoked
        ("/auth/1", {"headers": bearer(FED)}),  # 401: revoked, known from the feed
        ("/admin/1", {"headers": bearer(FED)}),  # 401 before the roles
        ("/auth/1", {"headers": [(b"authorization", b"Basic dXNlcjpwYXNz")]}),
        ("/admin/1", {"headers": bearer(ALICE)}),  # 403: not an admin
        ("/admin/1", {}),  # 401: roles need a token
        ("/p/1", {"headers": bearer(b"not.a.token")}),  # public: a bad token is ignored
        ("/p/1", {"headers": bearer(REVOKED)}),  # public: a revoked one too
        ("/p/1", {"headers": bearer(FED)}),
        ("/me", {}),  # private rule, anonymous
        ("/key/1", {"headers": [(b"x-api-key", b"k1")]}),  # api_key limit
        ("/two/1", {"headers": bearer(ALICE)}),  # a key of two parts
        ("/short/1", {}),  # goes stale between requests (below)
        ("/p/0", {"headers": bearer(ALICE)}),  # a remembered 404
        ("/plain/1", {}),  # no cache rule
        ("/up/1", {}),  # an upstream target
        ("/nowhere", {}),  # 404 route
        ("/p/abc", {}),  # 422 parameter
        ("/p/1", {"method": "HEAD"}),
        ("/p/1", {"method": "POST"}),
        ("/p/1", {"headers": [(b"cache-control", b"no-cache")]}),
        ("/p/1", {"headers": [(b"pragma", b"no-cache")]}),
        ("/p/1", {"headers": [(b"content-length", b"0")]}),
        ("/p/1", {"headers": [(b"content-length", b"x")]}),  # 400
        ("/p/1", {"raw_path": b"/p/1?q=1"}),
        ("/p/1", {"raw_path": b"/p/%zz"}),  # 400: malformed path
    ],
)
async def test_what_the_general_path_answers_is_answered_the_same(
    pair: Pair, path: str, request_: dict[str, Any]
) -> None:
    for _ in range(3):
        await check(pair, path, **request_)
        if path.startswith("/short"):
            await asyncio.sleep(0.06)  # stale within its while-revalidate window
    assert pair.counted["fused"] == 0


async def test_path_spellings_share_an_entry(pair: Pair) -> None:
    await check(pair, "/open/7")
    for raw in (b"//open/7", b"/open/7/", b"/open/./7", b"/open/%37"):
        await check(pair, "/open/7", raw_path=raw)
    assert pair.counted["fused"] == 4


async def test_one_path_routed_by_host(pair: Pair) -> None:
    """The fused path remembers each raw path's route: with the Host it was routed for."""
    routes = []
    for host in (b"a.example", b"b.example:8000", b"a.example", b"B.EXAMPLE", b"c.example"):
        reply = await check(pair, "/h/1", headers=[(b"host", host)])
        routes.append(orjson.loads(reply.body)["route"])
    assert routes == ["GET /h/{id:int}", "GET /hb/{id:int}"] * 2 + ["GET /h/{id:int}"]
    assert pair.counted["fused"] == 3


async def test_paths_and_hosts_alike_in_their_last_bytes_stay_apart(pair: Pair) -> None:
    """The compiled path looks recent raw paths and Host values up by their length and last
    8 bytes first: values alike there share a slot and must still be told apart."""
    seen = []
    for path in ("/open/100000001", "/bare/100000001") * 3:  # 15 bytes, same last 8
        reply = await check(pair, path, headers=bearer(ALICE))
        seen.append(orjson.loads(reply.body)["route"])
    assert seen == ["GET /open/{id:int}", "GET /bare/{id:int}"] * 3
    routes = []
    for host in (b"a.example", b"b.example") * 3:  # 9 bytes, same last 8
        reply = await check(pair, "/h/2", headers=[(b"host", host)])
        routes.append(orjson.loads(reply.body)["route"])
    assert routes == ["GET /h/{id:int}", "GET /hb/{id:int}"] * 3
    assert pair.counted["fused"] == 8


async def test_a_remembered_key_follows_the_routes_rule(pair: Pair) -> None:
    """A route whose key is its path alone: then given a rule that varies on the query, the
    old key is not used again (the new entry is a miss, then a hit of its own)."""
    for _ in range(4):
        await check(pair, "/bare/3", headers=bearer(BOB))
    assert pair.counted["fused"] == 3
    for edge in (pair.fused, pair.general):
        assert edge.cache is not None and edge.cache.add_route("GET /bare/{id:int}", "pub")
    # (another caller: Bob has one token of his five a minute left)
    replies = [await check(pair, "/bare/3", query=b"q=1", headers=bearer(ALICE)) for _ in "ab"]
    assert [r.get(b"x-cache") for r in replies] == [b"miss", b"hit-l1"]
    await check(pair, "/bare/3", query=b"q=2", headers=bearer(ALICE))
    assert pair.counted["fused"] == 4


async def test_query_and_conditional_requests(pair: Pair) -> None:
    first = await check(pair, "/open/3", query=b"q=x&other=1")
    await check(pair, "/open/3", query=b"q=x")
    assert pair.counted["fused"] == 1
    etag = first.get(b"etag")
    assert etag is not None
    not_modified = await check(pair, "/open/3", headers=[(b"if-none-match", etag)])
    assert not_modified.status == 304 and pair.counted["fused"] == 1


async def test_the_rate_limit_refuses_the_same_and_counts_once(pair: Pair) -> None:
    """Five per minute per caller: a hit served by the fused path spends one token, and a
    request it leaves to the general path is not charged twice (the answers stay equal)."""
    replies = [await check(pair, "/p/5", headers=bearer(BOB)) for _ in range(7)]
    assert [r.status for r in replies] == [200] * 5 + [429] * 2
    assert [r.get(b"ratelimit-remaining") for r in replies[:5]] == [b"4", b"3", b"2", b"1", b"0"]
    assert replies[5].get(b"retry-after") is not None
    assert pair.counted["fused"] == 4


async def test_rate_limit_decisions_are_counted_as_the_general_path_counts_them(
    pair: Pair,
) -> None:
    for _ in range(4):
        await check(pair, "/ip/1")
    allowed = [
        edge.stages[1].plans["GET /ip/{id:int}"].single.n_allowed.value  # type: ignore[attr-defined]
        for edge in (pair.fused, pair.general)
    ]
    assert allowed == [4.0, 4.0]
    assert pair.counted["fused"] == 3


async def test_a_batched_limit_with_tokens_in_hand_is_decided_here(pair: Pair) -> None:
    """A Redis lease already granted (Redis itself is not needed for that): the fused path
    spends its tokens, with the same RateLimit headers as the general path's; a dry lease
    goes to the general path (which would ask Redis: here, with none, it fails open)."""
    for edge in (pair.fused, pair.general):
        limit = edge.stages[1].plans["GET /lease/{id:int}"].single  # type: ignore[attr-defined]
        now = limit.leases.now()
        limit.leases.grant("p:alice", 5000, now + 60 * 10**9, 90000, now + 60 * 10**9)
    for _ in range(4):
        await check(pair, "/lease/1", headers=bearer(ALICE))
    assert pair.counted["fused"] == 3
    await check(pair, "/lease/1", headers=bearer(BOB))  # no lease for bob: general path
    assert pair.counted["fused"] == 3
    # It says why: bob's lease is the only thing missing (the edge would reserve one and ask
    # again; with no Redis here, the general path decides, failing open).
    hits = pair.fused.hit_path
    assert hits is not None
    stage, limit, key = hits.lease_miss
    assert stage is pair.fused.stages[1] and key == "p:bob"
    assert limit is stage.plans["GET /lease/{id:int}"].single  # type: ignore[attr-defined]
    await check(pair, "/lease/1", headers=bearer(ALICE))
    assert hits.lease_miss is None and pair.counted["fused"] == 4


async def test_invalidation_is_seen_by_the_fused_path(pair: Pair) -> None:
    await check(pair, "/open/9")
    await check(pair, "/open/9")
    for edge in (pair.fused, pair.general):
        assert edge.cache is not None
        edge.cache.l1.clear()
    reply = await check(pair, "/open/9")
    assert reply.get(b"x-cache") == b"miss" and pair.counted["fused"] == 1


async def test_metrics_count_fused_hits_like_the_general_path(pair: Pair) -> None:
    for _ in range(3):
        await check(pair, "/open/4")
    series = {k: v for k, v in pair.fused.metrics.collect().items() if k[0] == "GET /open/{id:int}"}
    theirs = {
        k: v for k, v in pair.general.metrics.collect().items() if k[0] == "GET /open/{id:int}"
    }
    assert {k: v[0] for k, v in series.items()} == {k: v[0] for k, v in theirs.items()}
    assert series[("GET /open/{id:int}", "GET", 200)][0] == 3
    for edge in (pair.fused, pair.general):
        assert edge.cache is not None
        edge.cache.sync_metrics()
    assert pair.fused.cache.n_hit_l1.value == pair.general.cache.n_hit_l1.value == 2  # type: ignore[union-attr]


async def test_made_ids_are_new_for_every_hit_and_after_a_fork(
    core_impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that bring no ids get new ones from the edge's one minter (``Edge.ids``, handed
    to the fused path in its plan): the general path's and the hits' in one sequence, all
    distinct and well formed (``assert_same``); after a fork the minter seeds anew."""
    ids_module = core_impl.module("ids")
    seeded: list[int] = []  # the minters seeded, in order (0: the fused edge's, made first)

    def minter() -> Any:
        number = len(made)

        def seed(n: int) -> bytes:
            seeded.append(number)
            return bytes([16 * number + seeded.count(number)]) * n

        made.append(ids_module.IdMinter(seed))
        return made[-1]

    made: list[Any] = []
    monkeypatch.setattr(edge_module, "IdMinter", minter)
    pair = Pair(core_impl, monkeypatch)
    assert pair.fused.ids is made[0]
    replies = [await check(pair, "/open/11") for _ in range(300)]
    assert pair.counted["fused"] == 299 and pair.counted["general"] == 1
    for name in (b"x-request-id", b"traceparent"):
        assert len({r.get(name) for r in replies}) == 300
    # One minter: the first reply (a miss, the general path's) and the hits' are one
    # sequence, that of a minter seeded alike.
    again = ids_module.IdMinter(lambda n: bytes([1]) * n)
    expected = [again.take() for _ in range(301)]
    assert [r.get(b"x-request-id") for r in replies] == [rid for _, rid, _ in expected[:300]]
    assert [r.get(b"traceparent") for r in replies] == [tp for _, _, tp in expected[:300]]
    assert sorted(seeded) == [0, 1]  # (each edge's minter, seeded once)
    ids_module._after_fork()  # what a fork runs in the child
    reply = await check(pair, "/open/11")
    assert pair.counted["fused"] == 300 and seeded.count(0) == 2  # seeded anew
    assert reply.get(b"x-request-id") != expected[300][1]
    assert reply.get(b"x-request-id") not in {r.get(b"x-request-id") for r in replies}


async def test_a_failing_send_still_counts_the_request(pair: Pair) -> None:
    await check(pair, "/open/8")

    class Gone(Exception):
        pass

    async def broken(message: Message) -> None:
        raise Gone

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/open/8", "raw_path": b"/open/8",
             "query_string": b"", "headers": with_host([]), "client": ("10.0.0.1", 1)}  # fmt: skip
    with pytest.raises(Gone):
        await pair.fused(scope, receive, broken)
    assert pair.counted["fused"] == 1
    assert pair.fused.metrics.collect()[("GET /open/{id:int}", "GET", 200)][0] == 2


def _open_scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
            "query_string": b"", "headers": with_host([]), "client": ("10.0.0.1", 1)}  # fmt: skip


async def _receive() -> Message:
    return {"type": "http.request", "body": b""}


def _count_of(pair: Pair, route: str = "GET /open/{id:int}") -> int:
    return int(pair.fused.metrics.collect()[(route, "GET", 200)][0])


async def test_sends_that_suspend_or_complete_at_once_are_awaited_through(pair: Pair) -> None:
    """The hit is awaited by the server: a ``send`` whose awaitable suspends (a coroutine
    that yields to the loop) and one whose awaitable is no coroutine and completes at once
    (Granian's kind) both get the two messages, in order, and the request is counted once."""
    await check(pair, "/open/9")
    sent: list[Message] = []

    async def slow(message: Message) -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        sent.append(message)

    class Ready:
        def __await__(self) -> Any:
            return iter(())

    def at_once(message: Message) -> Ready:
        sent.append(message)
        return Ready()

    for send in (slow, at_once):
        sent.clear()
        before = pair.counted["fused"], _count_of(pair)
        await pair.fused(_open_scope("/open/9"), _receive, send)
        assert pair.counted["fused"] == before[0] + 1
        assert _count_of(pair) == before[1] + 1
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[0]["status"] == 200 and sent[1]["body"]


async def test_a_hit_cancelled_in_its_send_is_counted_once(pair: Pair) -> None:
    await check(pair, "/open/10")
    started = asyncio.Event()
    sent: list[Message] = []

    async def stuck(message: Message) -> None:
        sent.append(message)
        started.set()
        await asyncio.Event().wait()

    before = _count_of(pair)
    task = asyncio.ensure_future(pair.fused(_open_scope("/open/10"), _receive, stuck))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert _count_of(pair) == before + 1


async def test_a_request_it_cannot_read_goes_to_the_general_path(pair: Pair) -> None:
    """A header name that is not bytes: whatever the fused path makes of it (the compiled
    one declines, the twin may answer), the answer is the general path's (compiled cache
    key: a 500, it refuses the header; the pure one reads it)."""
    await check(pair, "/open/6")
    odd: Any = [("accept", "x")]
    await check(pair, "/open/6", headers=odd)
    await check(pair, "/open/6")
    assert pair.counted["fused"] >= 1


def test_the_edge_builds_it_only_for_stages_it_knows(core_impl: CoreImplementation) -> None:
    pair_edge = Pair.__new__(Pair)
    pair_edge.loads = Counter()
    edge = pair_edge._edge(hit_path=True)
    assert edge.hit_path is not None
    token_stage, limiter = edge.stages
    edge.stages = (limiter, token_stage)  # the limit would not see the caller: no fused path
    assert edge.hit_path is None
    edge.stages = (token_stage, lambda ctx: None)
    assert edge.hit_path is None
    edge.stages = (token_stage,)
    assert edge.hit_path is not None
    edge.router = Router()  # a new route table: rebuilt over it
    assert edge.hit_path is not None and edge.hit_path.router is edge.router


@pytest.mark.parametrize(
    "hosts",
    [[], [b""], [b"api.example", b"api.example"], [b"api.example", b"other.example"]],
    ids=["none", "empty", "twice", "two"],
)
async def test_a_request_without_exactly_one_host_is_left_to_the_general_path(
    pair: Pair, hosts: list[bytes]
) -> None:
    await check(pair, "/open/12")  # cached: the fused path answers it
    sent: list[Message] = []

    async def record(message: Message) -> None:
        sent.append(message)

    good = {**_open_scope("/open/12"), "http_version": "1.1"}
    fused = pair.counted["fused"]
    await pair.fused(good, _receive, record)
    assert pair.counted["fused"] == fused + 1 and sent[0]["status"] == 200
    sent.clear()
    bad = {**good, "headers": [(b"host", host) for host in hosts]}
    await pair.fused(bad, _receive, record)
    assert pair.counted["fused"] == fused + 1  # left to the general path: its 400
    assert sent[0]["status"] == 400


# -- CORS and compression on ---------------------------------------------------------------------


class NegotiatingPair(Pair):
    """Both edges with CORS and compression on (bodies of 40 bytes and more compressed)."""

    def __init__(self, impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cors = Cors(["https://app.example"], allow_credentials=False, max_age=60)
        self.compression = self.make_compression()
        super().__init__(impl, monkeypatch)

    def make_compression(self) -> Compression:
        return Compression(40, 1 << 20)


@pytest.fixture
def negotiating(core_impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch) -> NegotiatingPair:
    return NegotiatingPair(core_impl, monkeypatch)


async def test_with_cors_and_compression_plain_hits_stay_fused_with_their_vary(
    negotiating: NegotiatingPair,
) -> None:
    for _ in range(3):
        hit = await check(negotiating, "/open/7")
    assert negotiating.counted["fused"] == 2 and hit.get(b"x-cache") == b"hit-l1"
    assert [v for k, v in hit.headers if k == b"vary"] == [
        b"accept-language",
        b"Origin",
        b"Accept-Encoding",
    ]
    assert hit.get(b"content-encoding") is None


async def test_below_the_threshold_only_vary_origin(
    core_impl: CoreImplementation, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Big(NegotiatingPair):
        def make_compression(self) -> Compression:
            return Compression(10_000, 1 << 20)

    pair = Big(core_impl, monkeypatch)
    for _ in range(2):
        hit = await check(pair, "/open/7", headers=[(b"accept-encoding", b"gzip")])
    assert pair.counted["fused"] == 1  # too small to compress: the fused path answers
    assert [v for k, v in hit.headers if k == b"vary"] == [b"accept-language", b"Origin"]


@pytest.mark.parametrize(
    "extra",
    [
        [(b"origin", b"https://app.example")],
        [(b"origin", b"https://evil.example")],
        [(b"origin", b"null")],
    ],
)
async def test_cross_origin_requests_go_to_the_general_path(
    negotiating: NegotiatingPair, extra: list[Any]
) -> None:
    for _ in range(3):
        hit = await check(negotiating, "/open/8", headers=extra)
    assert negotiating.counted["fused"] == 0 and hit.get(b"x-cache") == b"hit-l1"


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        (b"gzip", b"gzip"),
        (b"br;q=0.5, zstd", b"zstd"),
        (b"gzip, deflate, br", b"br"),
        (b"identity", None),
        (b"*;q=0", None),
        (b"gzip;q=bad", None),
    ],
)
async def test_compressed_hits_send_the_kept_variant(
    negotiating: NegotiatingPair, accept: bytes, coding: bytes | None
) -> None:
    headers = [(b"accept-encoding", accept)]
    first = await check(negotiating, "/open/999", headers=headers)
    assert first.get(b"content-encoding") == coding and first.get(b"x-cache") == b"miss"
    compression = negotiating.compression
    assert compression is not None
    encoded = compression.encoded
    for _ in range(3):
        hit = await check(negotiating, "/open/999", headers=headers)
    assert hit.get(b"x-cache") == b"hit-l1" and hit.get(b"content-encoding") == coding
    assert compression.encoded == encoded  # kept: compressed once per coding and edge
    # the general edge keeps its variant at its first hit; the fused one at the miss, then
    # answers every hit with it
    assert negotiating.counted["fused"] == 3
    if coding is not None:
        assert hit.get(b"etag").endswith(b"." + coding + b'"')  # type: ignore[union-attr]
