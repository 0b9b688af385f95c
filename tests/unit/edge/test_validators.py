"""Validators without the response cache (``cygate.edge.validators``): the cache's own tag and
``Cache-Control`` on a cacheable route's 200, 304 for a matching ``If-None-Match``, and
everything else passed through untouched."""

from __future__ import annotations

from cache_helpers import RULES, App, cache_settings, call, make_edge, who_stage

from cygate.core.router import Router
from cygate.edge.cache_entry import cache_control_of, etag_of
from cygate.edge.context import RoutePolicy
from cygate.edge.edge import Edge, Receive, Scope, Send
from cygate.edge.validators import Validators
from cygate.infra.metrics import Metrics
from cygate.settings import CacheRule


class Fixed(App):
    """The same body every time (so a tag can match); /stream in two parts, /tagged with an
    ETag of its own; /gone is the helper app's 404."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/gone":
            await super().__call__(scope, receive, send)
            return
        self.calls[path] += 1
        headers = [(b"content-type", b"application/json")]
        if path == "/tagged":
            headers.append((b"etag", b'"mine"'))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if path == "/stream":
            await send({"type": "http.response.body", "body": b"[1,", "more_body": True})
        await send({"type": "http.response.body", "body": b"2]"})


def cacheless_edge(app: App | None = None) -> Edge:
    router = Router()
    for pattern, rule in (("/items/{id:int}", "items"), ("/gone", "plain"), ("/lang", "lang"),
                          ("/stream", "plain"), ("/tagged", "plain")):  # fmt: skip
        router.add("GET", pattern, RoutePolicy(name=f"GET {pattern}", cache=rule))
    router.add("GET", "/nocache", RoutePolicy(name="GET /nocache"))
    return Edge(
        app or Fixed(),
        router,
        metrics=Metrics(),
        max_body_bytes=1000,
        stages=[who_stage],
        validators=Validators(RULES),
    )


async def test_a_200_gets_the_caches_tag_and_cache_control() -> None:
    edge = cacheless_edge()
    r = await call(edge, "/items/1")
    assert r.status == 200 and b"x-cache" not in r.headers
    assert r.headers[b"etag"] == etag_of(r.body)
    assert r.headers[b"cache-control"] == cache_control_of(RULES["items"])
    assert r.headers[b"x-stage"]  # the stages' headers still come
    assert b"vary" not in r.headers
    # a rule keyed on a request header says so, as the cache's answers do
    assert (await call(edge, "/lang")).headers[b"vary"] == b"accept-language"


async def test_a_matching_if_none_match_is_a_304_without_the_body() -> None:
    edge = cacheless_edge()
    tag = (await call(edge, "/items/1")).headers[b"etag"]
    for inm in (tag, b'"x", ' + tag, b"W/" + tag, b"*"):
        r = await call(edge, "/items/1", headers=[(b"if-none-match", inm)])
        assert r.status == 304 and r.body == b"", inm
        assert r.headers[b"etag"] == tag and b"content-type" not in r.headers
        assert r.headers[b"x-request-id"] and r.headers[b"x-stage"]
    r = await call(edge, "/items/1", headers=[(b"if-none-match", b'"other"')])
    assert r.status == 200 and r.body


async def test_errors_streams_and_unruled_routes_pass_through() -> None:
    edge = cacheless_edge()
    gone = await call(edge, "/gone", headers=[(b"if-none-match", b"*")])
    assert gone.status == 404 and b"etag" not in gone.headers
    plain = await call(edge, "/nocache")
    assert plain.status == 200 and b"etag" not in plain.headers
    stream = await call(edge, "/stream", headers=[(b"if-none-match", b"*")])
    assert stream.status == 200 and stream.body == b"[1,2]" and b"etag" not in stream.headers


async def test_the_apps_own_tag_is_kept() -> None:
    edge = cacheless_edge()
    r = await call(edge, "/tagged")
    assert r.headers[b"etag"] == b'"mine"' and [k for k, _ in r.raw].count(b"etag") == 1
    assert (await call(edge, "/tagged", headers=[(b"if-none-match", b'"mine"')])).status == 304


async def test_with_the_cache_what_is_not_stored_still_has_validators() -> None:
    # A rule switched off (ttl 0) and a request's no-store: answered by the app, not stored.
    rules = {**RULES, "off": CacheRule(ttl=0)}
    app = Fixed()
    edge, cache, _ = make_edge(app, settings=cache_settings(cache_l2=False))
    cache.rules = rules
    cache.validators = Validators(rules)
    edge.router.add("GET", "/off", RoutePolicy(name="GET /off", cache="off"))
    assert not cache.add_route("GET /off", "off")
    # (/forced: a rule that honours the client's directives)
    for path, headers in (("/off", []), ("/forced/7", [(b"cache-control", b"no-store")])):
        r = await call(edge, path, headers=headers)
        assert r.status == 200 and r.headers[b"etag"] == etag_of(r.body), path
        assert b"x-cache" not in r.headers
        tag = r.headers[b"etag"]
        again = await call(edge, path, headers=[*headers, (b"if-none-match", tag)])
        assert again.status == 304, path
    assert app.calls["/off"] == 2  # nothing was stored
