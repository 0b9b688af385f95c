"""An edge with a response cache in front of a small counting ASGI app, for the cache tests.

Kept out of ``conftest.py`` so unit and integration tests can import it by name.
The app answers ``/items/{id}`` with a JSON body that counts its calls; other paths misbehave
on purpose (cookies, no-store, private, Vary, errors, big bodies). A *test stage* sets
``ctx.principal`` from ``X-Test-User`` and adds a per-request response header, as the token
and rate-limit stages will.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import msgspec
import orjson

from cygate.core.router import Router
from cygate.edge.cache import ResponseCache
from cygate.edge.context import EdgeContext, Principal, RoutePolicy
from cygate.edge.edge import Edge, Message, Receive, Scope, Send
from cygate.edge.problem import PROBLEM_CONTENT_TYPE, Problem, problem_body
from cygate.infra.metrics import Metrics
from cygate.settings import CacheRule, Settings, load_settings

__all__ = ["App", "Reply", "cache_settings", "call", "make_edge", "with_host"]

RULES = {
    "items": CacheRule(ttl=60, max_age=30, tags=["item:{id}", "items"], query=["q"]),
    "mine": CacheRule(ttl=60, scope="private", tags=["mine"]),
    "lang": CacheRule(ttl=60, headers=["Accept-Language"]),
    "short": CacheRule(ttl=0.2, stale_while_revalidate=0.5, stale_if_error=0, not_found_ttl=0.2),
    "fallback": CacheRule(ttl=0.1, stale_while_revalidate=0, stale_if_error=60),
    "plain": CacheRule(ttl=60),
    "forced": CacheRule(ttl=60, tags=["item:{id}"], honour_client_no_cache=True),
    "me": CacheRule(
        ttl=60,
        max_age=0,
        stale_while_revalidate=0,
        stale_if_error=0,
        scope="private",
        tags=["user:{caller}"],
    ),
}

ROUTES = [
    ("/items/{id:int}", "items"),
    ("/forced/{id:int}", "forced"),
    ("/mine", "mine"),
    ("/lang", "lang"),
    ("/short/{id:int}", "short"),
    ("/fallback", "fallback"),
    ("/cookie", "plain"),
    ("/nostore", "plain"),
    ("/private-answer", "plain"),
    ("/vary-other", "plain"),
    ("/big", "plain"),
    ("/gone", "plain"),
    ("/slow", "plain"),
    ("/reflect", "plain"),
]


def cache_settings(**overrides: Any) -> Settings:
    """Settings for an in-process cache (L2 off unless a test attaches Redis)."""
    return load_settings({}, **{"cache_key_secret": "unit-test-secret", **overrides})


class App:
    """The loader behind the edge: counts calls per path, can be told to fail or wait."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fail: int | None = None  # status to answer with instead
        self.gate: asyncio.Event | None = None  # /slow waits on it
        self.version = 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        self.calls[path] += 1
        ctx: EdgeContext = scope["cygate.ctx"]
        if path == "/slow" and self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            body = problem_body(self.fail, "loader failed", instance=path)
            await _reply(send, self.fail, body, [(b"content-type", PROBLEM_CONTENT_TYPE.encode())])
            return
        if path == "/gone":
            body = problem_body(404, "nothing here", request_id=ctx.request_id)
            await _reply(send, 404, body, [(b"content-type", PROBLEM_CONTENT_TYPE.encode())])
            return
        doc: dict[str, Any] = {"path": path, "n": self.calls[path], "v": self.version}
        if ctx.principal is not None:
            doc["user"] = ctx.principal.sub
        if path == "/lang":
            doc["lang"] = (ctx.header(b"accept-language") or b"").decode()
        if path == "/reflect":  # what a poisoning attempt would like to see echoed
            doc["host"] = ctx.host
        extra: list[tuple[bytes, bytes]] = []
        if path == "/cookie":
            extra.append((b"set-cookie", b"session=1"))
        elif path == "/nostore":
            extra.append((b"cache-control", b"no-store"))
        elif path == "/private-answer":
            extra.append((b"cache-control", b"private"))
        elif path == "/vary-other":
            extra.append((b"vary", b"Cookie"))
        elif path == "/lang":
            extra.append((b"vary", b"accept-language"))
        if path == "/big":
            doc["pad"] = "x" * 5000
        body = orjson.dumps(doc)
        await _reply(send, 200, body, [(b"content-type", b"application/json"), *extra])


async def _reply(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def who_stage(ctx: EdgeContext) -> None:
    """Test stage: the caller named in X-Test-User, and a per-request header like RateLimit-*."""
    user = ctx.header(b"x-test-user")
    if user:
        issuer = (ctx.header(b"x-test-issuer") or b"").decode()
        ctx.principal = Principal(sub=user.decode(), issuer=issuer)
    ctx.response_headers.append((b"x-stage", ctx.request_id.encode()))


class CountedHitPath:
    """An edge's fused hit path, counting the requests it answered (``"fused"``) and those it
    left to the general path (``"general"``). A compiled HitPath cannot be patched or
    subclassed: its instance is wrapped (``edge._hits``, or the edge module's ``HitPath``)."""

    def __init__(self, inner: Any, counted: Counter[str]) -> None:
        self.inner = inner
        self.counted = counted

    def serve(self, scope: Any, send: Any) -> Any:
        sending = self.inner.serve(scope, send)
        self.counted["fused" if sending is not None else "general"] += 1
        return sending

    @property
    def last_head(self) -> Any:
        return self.inner.last_head

    @property
    def lease_miss(self) -> Any:
        return self.inner.lease_miss


def make_edge(
    app: App | None = None,
    *,
    settings: Settings | None = None,
    metrics: Metrics | None = None,
    fast_calls: Counter[str] | None = None,
) -> tuple[Edge, ResponseCache, App]:
    """An edge over ``app`` with the cache rules above (and a fast handler under /fast)."""
    app = app or App()
    settings = settings or cache_settings(cache_l2=False)
    metrics = metrics or Metrics()
    cache = ResponseCache(settings.cache, metrics, redis=settings.redis, rules=RULES)
    router = Router()
    for pattern, rule in ROUTES:
        name = f"GET {pattern}"
        router.add("GET", pattern, RoutePolicy(name=name, cache=rule))
        cache.add_route(name, rule)
    calls = fast_calls if fast_calls is not None else Counter()

    async def fast(ctx: EdgeContext) -> bytes:
        assert ctx.params is not None
        calls[ctx.params["id"]] += 1
        if app.fail is not None:
            raise Problem(app.fail, "fast loader failed")
        if ctx.params["id"] == "0":
            raise Problem(404, "no fast item 0")
        if ctx.params["id"] == "503":
            await asyncio.sleep(0.01)  # a real loader waits: the others queue behind it
            raise Problem(503, "database down", headers={"retry-after": "1"})
        return orjson.dumps({"fast": ctx.params["id"], "n": calls[ctx.params["id"]]})

    async def fast_me(ctx: EdgeContext) -> bytes:
        # A per-caller fast handler with a Cache-Control of its own (as identity's /users/me).
        assert ctx.principal is not None
        calls[ctx.principal.sub] += 1
        ctx.response_headers.append((b"cache-control", ctx.header(b"x-test-cc") or b"private"))
        return orjson.dumps({"user": ctx.principal.sub, "issuer": ctx.principal.issuer})

    for pattern, rule, handler in (
        ("/fast/{id:int}", "items", fast),
        ("/fastfb/{id:int}", "fallback", fast),
        ("/fastme", "me", fast_me),
    ):
        name = f"GET {pattern}"
        router.add("GET", pattern, RoutePolicy(name=name, cache=rule, fast=handler))
        cache.add_route(name, rule)
    router.add("GET", "/nocache", RoutePolicy(name="GET /nocache"))
    edge = Edge(app, router, metrics=metrics, max_body_bytes=1000, stages=[who_stage], cache=cache)
    cache.edge = edge
    return edge, cache, app


class Reply(msgspec.Struct):
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    raw: list[tuple[bytes, bytes]] = []
    """The headers as sent (repeats kept)."""

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def x_cache(self) -> str:
        return self.headers.get(b"x-cache", b"").decode()


def with_host(headers: list[tuple[bytes, bytes]] | None) -> list[tuple[bytes, bytes]]:
    """``headers`` with a ``Host`` first when they have none, as every HTTP/1.1 request has
    (the fused hit path leaves a request without one to the general path: RFC 9112's 400)."""
    headers = list(headers or [])
    if not any(name == b"host" for name, _ in headers):
        headers.insert(0, (b"host", b"gateway.test"))
    return headers


async def call(
    edge: Edge,
    path: str,
    *,
    method: str = "GET",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    user: str | None = None,
    issuer: str | None = None,
) -> Reply:
    """One request through the edge; the reply's headers as a dict (last value wins)."""
    sent: list[Message] = []
    hdrs = with_host(headers)
    if user is not None:
        hdrs.append((b"x-test-user", user.encode()))
    if issuer is not None:
        hdrs.append((b"x-test-issuer", issuer.encode()))

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": hdrs,
        "client": ("127.0.0.1", 5000),
    }
    await edge(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    raw = [tuple(h) for h in start["headers"]]
    return Reply(start["status"], dict(start["headers"]), body, raw)  # type: ignore[arg-type]
