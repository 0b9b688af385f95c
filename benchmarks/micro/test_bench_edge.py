"""The edge's hit path in process: what cygate-full does per request, without a server.

One request is ``GET /api/v1/products/{id}`` with ``Host`` and an EdDSA ``Authorization``, as
wrk sends it in the macro benchmark; the edge routes it, verifies the token (from the
verifier's cache after the first time), takes one token of a per-caller rate limit (local
GCRA here: the macro run's batched lease needs Redis, and decides locally the same way between
top-ups) and answers from L1. Against it, in the same run: the edge with the cache step only
(no stages), and the floor, an ASGI app sending the same two messages (the macro benchmark's
``granian-same-bytes``). One round = 100 requests driven by one coroutine, so the event loop's
own cost is spread thin.

This measures the Python the edge adds per hit (the macro benchmark's server multiplies it
about threefold, docs/caching.md); it is the yardstick for work on the hit path (a compiled
front, typed stages): compare within one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt as pyjwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from cygate.core.jwt import JWTVerifier, VerifyKey
from cygate.core.router import Router
from cygate.edge.auth import TokenStage
from cygate.edge.cache import DEFAULT_RULES, ResponseCache
from cygate.edge.compress import Compression
from cygate.edge.context import EdgeContext, RoutePolicy
from cygate.edge.cors import Cors
from cygate.edge.edge import Edge, Message, TracedEdge
from cygate.edge.ratelimit import RateLimitStage
from cygate.edge.validators import Validators
from cygate.infra.metrics import Metrics
from cygate.infra.redis import create_redis
from cygate.services.identity.revocation import Revocations
from cygate.services.identity.service import own_principal
from cygate.settings import load_settings

GROUP = "edge hit path in process: route + token + rate limit + L1 (per request)"
ROUTE = "GET /api/v1/products/{product_id:uuid}"
PATH = "/api/v1/products/01a215cd-a2bf-7e06-a4b3-df04c97ad5d8"
BODY = json.dumps({"id": PATH.rsplit("/", 1)[1], "name": "Compact Titanium Monitor",
                   "price_cents": 175444, "currency": "EUR", "stock": 379}).encode()  # fmt: skip
PER_ROUND = 100


def _token(key: ed25519.Ed25519PrivateKey) -> bytes:
    now = int(time.time())
    claims = {"iss": "cygate", "aud": "cygate", "sub": "bench-user", "exp": now + 3600,
              "iat": now, "jti": "bench-jti", "roles": ["customer"]}  # fmt: skip
    encoded = pyjwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "k1", "typ": "at+jwt"})
    return encoded.encode()


def make_edge(
    *,
    stages: bool,
    default: bool = False,
    cache: bool = True,
    l2: bool = False,
    body: bytes = BODY,
    cors: Cors | None = None,
    compression: Compression | None = None,
    hit_path: bool = True,
    access: Any = None,
    tracing: Any = None,
) -> tuple[Edge, list[tuple[bytes, bytes]]]:
    """The edge cygate-full runs for the product read, and the request headers wrk sends.

    ``default``: the route names no limit and gets the default class instead (the built-in
    ``api`` limit's kind: local, per caller; raised so the benchmark is never refused).
    ``cache=False``: the edge with the cache off (its validators instead, as the app does);
    ``l2``: the cache with L2 in the Redis of ``CYGATE_REDIS_URL`` (a prefix of its own);
    ``body``: what the route answers; ``cors``, ``compression``: the edge's (off by default);
    ``hit_path=False``: no fused hit path; ``access``: an access log (``AccessLog``);
    ``tracing``: a ``cygate.infra.tracing.Tracing``: the edge is a ``TracedEdge`` (as the app
    builds it with tracing on)."""
    key = ed25519.Ed25519PrivateKey.generate()
    verifier = JWTVerifier(leeway=0)
    verifier.set_issuer("cygate", audience="cygate", principal=own_principal("cygate"),
                        keys=[VerifyKey("k1", "EdDSA", key.public_key())])  # fmt: skip
    token = TokenStage(verifier, Revocations(None, verifier, interval=60.0))
    limits = {
        "bench": {"rate": 1_000_000_000, "period": 1, "mode": "local"},
        "api": {"rate": 1_000_000_000, "period": 1, "key": ["caller"], "mode": "local"},
    }
    settings = load_settings(
        {
            "CYGATE_RATE_LIMITS": json.dumps(limits),
            "CYGATE_RATE_LIMIT_DEFAULT_CLASS": "api" if default else "",
        },
        cache_key_secret="micro-benchmark-secret",
        cache_l2=l2,
    )
    metrics = Metrics()

    async def product(ctx: EdgeContext) -> bytes:
        return body

    policy = RoutePolicy(
        name=ROUTE, cache="product", rate_limit=None if default else "bench", fast=product
    )
    router = Router()
    router.add("GET", "/api/v1/products/{product_id:uuid}", policy)
    if l2:
        url, prefix = os.environ["CYGATE_REDIS_URL"], f"cygate-micro-{os.getpid()}:"
        # NOTE: a long timeout: under callgrind the process itself is ~50 times slower, and a
        # call that timed out would open L2's circuit and leave the misses without L2.
        redis = msgspec.structs.replace(settings.redis, url=url, prefix=prefix, timeout=30.0)
        settings = msgspec.structs.replace(settings, redis=redis)
    response_cache = ResponseCache(
        settings.cache, metrics, redis=settings.redis, rules=DEFAULT_RULES
    )
    response_cache.add_route(ROUTE, "product")
    if l2:
        response_cache.attach(create_redis(settings.redis))
    limiter = RateLimitStage.from_settings(settings.rate_limit, [policy], metrics)

    async def not_litestar(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a hit never enters the app")

    edge = (Edge if tracing is None else TracedEdge)(
        not_litestar,
        router,
        metrics=metrics,
        max_body_bytes=1 << 20,
        stages=(token, limiter) if stages else (),
        cache=response_cache if cache else None,
        validators=None if cache else Validators(DEFAULT_RULES),
        cors=cors,
        compression=compression,
        hit_path=hit_path,
        **({"access": access} if access is not None else {}),
        tracing=tracing,
    )
    response_cache.edge = edge
    headers = [(b"host", b"127.0.0.1:8000"), (b"authorization", b"Bearer " + _token(key))]
    return edge, headers


def same_bytes_app(start: Message, body: Message) -> Any:
    """The floor: an ASGI app that sends the hit's two messages and nothing else."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send(body)

    return app


class Driver:
    """Sends requests to an ASGI app in process and keeps the last answer."""

    def __init__(self, app: Any, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.headers = headers
        self.sent: list[Message] = []
        self.loop = asyncio.new_event_loop()

    def scope(self) -> dict[str, Any]:
        # What Granian hands over: a new dict per request.
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
                "scheme": "http", "method": "GET", "root_path": "", "path": PATH,
                "raw_path": PATH.encode(), "query_string": b"",
                "headers": self.headers}  # fmt: skip

    async def _receive(self) -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def _send(self, message: Message) -> None:
        self.sent.append(message)

    async def _round(self, n: int) -> None:
        app, scope, receive, send, sent = self.app, self.scope, self._receive, self._send, self.sent
        for _ in range(n):
            sent.clear()
            await app(scope(), receive, send)

    def run(self, n: int = PER_ROUND) -> None:
        self.loop.run_until_complete(self._round(n))

    def answer(self) -> tuple[int, dict[bytes, bytes], bytes]:
        self.run(1)
        start = self.sent[0]
        return start["status"], dict(start["headers"]), self.sent[1]["body"]


@pytest.fixture(scope="module")
def drivers() -> Iterator[dict[str, Driver]]:
    full, headers = make_edge(stages=True)
    bare, _ = make_edge(stages=False)
    defaulted, its_headers = make_edge(stages=True, default=True)  # its own key signs
    made = {
        "full": Driver(full, headers),
        "cache-only": Driver(bare, headers),
        "default-limit": Driver(defaulted, its_headers),
    }
    for d in made.values():
        d.run(2)  # the first request fills L1; the token is verified once
    status, answer, body = made["full"].answer()
    assert status == 200 and body == BODY, (status, body)
    assert answer[b"x-cache"] == b"hit-l1" and answer[b"ratelimit-remaining"]
    # The floor sends the same messages the full edge just sent (same headers, same body).
    floor = same_bytes_app(dict(made["full"].sent[0]), made["full"].sent[1])
    made["floor"] = Driver(floor, headers)
    yield made
    for d in made.values():
        d.loop.close()


def _case(drivers: dict[str, Driver], name: str, micro: Callable[..., Any]) -> None:
    d = drivers[name]
    status, answer, body = d.answer()
    assert status == 200 and body == BODY and answer[b"x-cache"] == b"hit-l1"
    micro(d.run, group=GROUP, ops=PER_ROUND)


def test_edge_hit_token_limit_l1(drivers: dict[str, Driver], micro: Callable[..., Any]) -> None:
    """cygate-full's request: route, token (verified before), one rate-limit token, L1 hit."""
    _case(drivers, "full", micro)
    assert drivers["full"].answer()[1][b"ratelimit-limit"] == b"1000000000"


def test_edge_hit_token_default_limit_l1(
    drivers: dict[str, Driver], micro: Callable[..., Any]
) -> None:
    """The same, the route's limit being the default class's (no class of its own)."""
    _case(drivers, "default-limit", micro)
    assert drivers["default-limit"].answer()[1][b"ratelimit-limit"] == b"1000000000"


def test_edge_hit_cache_only(drivers: dict[str, Driver], micro: Callable[..., Any]) -> None:
    """The same request through the edge with no stages: route and L1 hit only."""
    _case(drivers, "cache-only", micro)


def test_floor_same_bytes(drivers: dict[str, Driver], micro: Callable[..., Any]) -> None:
    """An ASGI app sending the full hit's two messages: what any app pays per request."""
    _case(drivers, "floor", micro)
