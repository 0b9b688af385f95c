"""The edge in process, in front of a tiny ASGI app: limits, errors, HEAD, ids, metrics."""

from __future__ import annotations

import os
import re
from typing import Any

import orjson
import pytest

from cygate.core.router import Router
from cygate.edge.context import EdgeContext, RoutePolicy
from cygate.edge.edge import Edge, Message, Receive, Scope, Send
from cygate.edge.problem import Problem
from cygate.infra.metrics import Metrics


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes the body length; /boom raises; /problem raises a Problem."""
    if scope["path"] == "/boom":
        raise RuntimeError("secret internals")
    if scope["path"] == "/problem":
        raise Problem(409, "conflict here", headers={"x-extra": "1"})
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = orjson.dumps({"size": size, "path": scope["path"], "method": scope["method"]})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": body})


def make_edge(max_body: int = 100) -> Edge:
    router = Router()
    for method, pattern in [
        ("POST", "/upload"),
        ("GET", "/items/{id:int}"),
        ("GET", "/boom"),
        ("GET", "/problem"),
        ("POST", "/small"),
    ]:
        limit = 10 if pattern == "/small" else None
        router.add(method, pattern, RoutePolicy(name=f"{method} {pattern}", max_body_bytes=limit))

    async def fast(ctx: EdgeContext) -> bytes:
        assert ctx.params is not None
        if ctx.params["id"] == "0":
            raise Problem(404, "no item 0")
        return orjson.dumps({"fast": ctx.params["id"]})

    router.add("GET", "/fast/{id:int}", RoutePolicy(name="GET /fast/{id:int}", fast=fast))
    return Edge(inner, router, metrics=Metrics(), max_body_bytes=max_body, hsts_max_age=60)


async def call(
    edge: Edge,
    method: str,
    path: bytes,
    *,
    chunks: list[bytes] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    **scope_extra: Any,
) -> tuple[int, dict[bytes, bytes], bytes]:
    pending = list(chunks or [b""])
    sent: list[Message] = []

    async def receive() -> Message:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path.decode("latin-1"),
        "raw_path": path,
        "query_string": b"",
        "headers": headers or [],
        **scope_extra,
    }
    await edge(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


async def test_streamed_body_over_the_limit_is_413() -> None:
    status, headers, body = await call(make_edge(), "POST", b"/upload", chunks=[b"x" * 60] * 3)
    assert status == 413
    assert headers[b"content-type"] == b"application/problem+json"
    assert orjson.loads(body)["status"] == 413


async def test_streamed_body_under_the_limit_passes() -> None:
    status, _, body = await call(make_edge(), "POST", b"/upload", chunks=[b"x" * 40] * 2)
    assert status == 200 and orjson.loads(body)["size"] == 80


async def test_per_route_limit_and_content_length() -> None:
    edge = make_edge()
    status, _, _ = await call(edge, "POST", b"/small", headers=[(b"content-length", b"11")])
    assert status == 413
    status, _, _ = await call(edge, "POST", b"/upload", headers=[(b"content-length", b"abc")])
    assert status == 400
    status, _, _ = await call(edge, "POST", b"/upload", headers=[(b"content-length", b"101")])
    assert status == 413  # the global limit, for a route without its own
    status, _, _ = await call(edge, "POST", b"/nowhere", headers=[(b"content-length", b"101")])
    assert status == 404  # an unknown path is refused without reading its body either way


async def test_unhandled_error_is_500_without_internals() -> None:
    status, headers, body = await call(make_edge(), "GET", b"/boom")
    doc = orjson.loads(body)
    assert status == 500 and doc["status"] == 500
    assert b"secret internals" not in body and b"Traceback" not in body
    assert doc["request_id"] == headers[b"x-request-id"].decode()


async def test_problem_from_the_app_keeps_status_and_headers() -> None:
    status, headers, body = await call(make_edge(), "GET", b"/problem")
    assert status == 409 and headers[b"x-extra"] == b"1"
    assert orjson.loads(body)["detail"] == "conflict here"


async def test_head_falls_back_to_get_without_a_body() -> None:
    status, headers, body = await call(make_edge(), "HEAD", b"/items/5")
    assert status == 200 and body == b"" and headers[b"x-app"] == b"1"
    status, _, body = await call(make_edge(), "HEAD", b"/fast/5")
    assert status == 200 and body == b""


async def test_fast_handler_and_its_problems() -> None:
    edge = make_edge()
    status, headers, body = await call(edge, "GET", b"/fast/7")
    assert status == 200 and orjson.loads(body) == {"fast": "7"}
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"strict-transport-security"] == b"max-age=60"
    status, _, body = await call(edge, "GET", b"/fast/0")
    assert status == 404 and orjson.loads(body)["detail"] == "no item 0"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", b"/items/abc", 422),
        ("DELETE", b"/items/1", 405),
        ("GET", b"/missing", 404),
        ("GET", b"/items/%zz", 400),
        ("GET", b"/items/%00", 400),
        ("GET", b"relative", 400),
    ],
)
async def test_routing_errors(method: str, path: bytes, status: int) -> None:
    got, headers, body = await call(make_edge(), method, path)
    assert got == status
    doc = orjson.loads(body)
    assert doc["status"] == status and doc["request_id"]
    if status == 405:
        assert headers[b"allow"] == b"GET, HEAD, OPTIONS"
    if status == 422:
        assert doc["errors"] == [
            {"field": "path.id", "message": "invalid value for this parameter"}
        ]


async def test_app_sees_the_canonical_path() -> None:
    status, _, body = await call(make_edge(), "GET", b"//items/./9/")
    assert status == 200 and orjson.loads(body)["path"] == "/items/9"


async def test_ids_are_unique_and_well_formed() -> None:
    edge = make_edge()
    ids, traces = set(), set()
    for _ in range(1000):  # several of the edge's batches of ids
        _, headers, _ = await call(edge, "GET", b"/items/1")
        ids.add(headers[b"x-request-id"])
        assert re.fullmatch(rb"[0-9a-f]{24}", headers[b"x-request-id"])
        trace = headers[b"traceparent"]
        assert re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-01", trace)
        assert trace[3:35] != b"0" * 32 and trace[36:52] != b"0" * 16
        traces.add(trace)
    assert len(ids) == 1000 and len(traces) == 1000


async def test_client_ids_are_kept_and_only_the_missing_one_is_made() -> None:
    edge = make_edge()
    trace = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    _, headers, _ = await call(edge, "GET", b"/items/1", headers=[(b"x-request-id", b"mine-1")])
    assert headers[b"x-request-id"] == b"mine-1" and headers[b"traceparent"] != trace
    _, headers, _ = await call(edge, "GET", b"/items/1", headers=[(b"traceparent", trace)])
    assert headers[b"traceparent"] == trace
    assert re.fullmatch(rb"[0-9a-f]{24}", headers[b"x-request-id"])


def test_a_forked_worker_never_repeats_its_parents_ids() -> None:
    minter = make_edge().ids  # the edge's one minter (its hit path's too)
    minter.take()  # the parent holds a generator (and a batch) a child would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, orjson.dumps([minter.take()[0]]))
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as f:
        child_id = orjson.loads(f.read())[0]
    parent_ids = {minter.take()[0] for _ in range(300)}
    assert child_id not in parent_ids


async def test_metrics_label_by_route_template() -> None:
    edge = make_edge()
    await call(edge, "GET", b"/items/1")
    await call(edge, "GET", b"/items/2")
    await call(edge, "GET", b"/nope")
    text = edge.metrics.render()
    assert 'route="GET /items/{id:int}",method="GET",status="200"} 2' in text
    assert 'route="<unmatched>",method="GET",status="404"} 1' in text


async def test_stages_run_in_order_add_headers_and_refuse() -> None:
    seen: list[str] = []

    def sync_stage(ctx: EdgeContext) -> None:
        seen.append(f"sync {ctx.policy.name} {ctx.path}")
        ctx.response_headers.append((b"ratelimit-limit", b"5"))

    async def async_stage(ctx: EdgeContext) -> None:
        seen.append("async")
        if ctx.params and ctx.params.get("id") == "429":
            raise Problem(429, "slow down", headers={"retry-after": "3"})

    edge = make_edge()
    edge.stages = (sync_stage, async_stage)
    status, headers, _ = await call(edge, "GET", b"/items/1")
    assert status == 200 and headers[b"ratelimit-limit"] == b"5"
    assert seen == ["sync GET /items/{id:int} /items/1", "async"]
    status, headers, body = await call(edge, "GET", b"/items/429")
    assert status == 429
    assert headers[b"retry-after"] == b"3" and headers[b"ratelimit-limit"] == b"5"
    assert orjson.loads(body)["detail"] == "slow down"
    seen.clear()
    status, _, _ = await call(edge, "GET", b"/missing")
    assert status == 404 and seen == []  # stages run only on routed requests


async def test_upstream_targets_go_to_the_dispatcher() -> None:
    edge = make_edge()
    edge.router.add("GET", "/up/{rest:path}", RoutePolicy(name="GET /up", target="orders"))
    status, _, body = await call(edge, "GET", b"/up/x")
    assert status == 502  # no dispatcher configured: never silently served locally

    async def dispatch(ctx: EdgeContext, receive: Receive, send: Send) -> None:
        assert ctx.policy.target == "orders" and ctx.params == {"rest": "x/y"}
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"proxied"})

    edge.upstream = dispatch
    status, headers, body = await call(edge, "GET", b"/up/x/y")
    assert (status, body) == (202, b"proxied")
    assert b"x-request-id" in headers


async def test_client_address_uses_trusted_proxies_only() -> None:
    from cygate.edge.context import TrustedProxies

    seen: list[str] = []

    def record(ctx: EdgeContext) -> None:
        seen.append(ctx.client_ip)

    edge = make_edge()
    edge.stages = (record,)
    edge.trusted = TrustedProxies(["10.0.0.1"])
    xff = [(b"x-forwarded-for", b"6.6.6.6, 1.2.3.4")]
    for peer in ("10.0.0.1", "203.0.113.7"):
        scope_client = (peer, 5000)
        edge_call = _with_client(edge, scope_client)
        await call(edge_call, "GET", b"/items/1", headers=xff)
    assert seen == ["1.2.3.4", "203.0.113.7"]


def _with_client(edge: Edge, client: tuple[str, int]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["client"] = client
        await edge(scope, receive, send)

    return app


# -- HTTP: Host (RFC 9112, section 3.2), OPTIONS and Allow, media types, NUL in queries -------

HOST = (b"host", b"api.example")


@pytest.mark.parametrize(
    "headers",
    [[], [(b"host", b"")], [HOST, HOST], [HOST, (b"host", b"other.example")]],
    ids=["none", "empty", "twice", "two"],
)
async def test_http11_needs_exactly_one_host(headers: list[tuple[bytes, bytes]]) -> None:
    status, got, body = await call(
        make_edge(), "GET", b"/items/1", headers=headers, http_version="1.1"
    )
    assert status == 400 and got[b"content-type"] == b"application/problem+json"
    doc = orjson.loads(body)
    assert "Host" in doc["detail"] and doc["request_id"] == got[b"x-request-id"].decode()


async def test_http10_may_omit_host_but_never_send_two() -> None:
    for version in ("1.0", "1"):  # (Granian says "1" and passes an empty Host)
        assert (await call(make_edge(), "GET", b"/items/1", http_version=version))[0] == 200
        one = [(b"host", b"")]
        assert (await call(make_edge(), "GET", b"/items/1", headers=one, http_version=version))[
            0
        ] == 200
        two = [HOST, HOST]
        assert (await call(make_edge(), "GET", b"/items/1", headers=two, http_version=version))[
            0
        ] == 400


async def test_options_lists_the_same_methods_as_a_405() -> None:
    edge = make_edge()
    status, headers, body = await call(edge, "OPTIONS", b"/items/7", headers=[HOST])
    assert (status, body, headers[b"content-length"]) == (200, b"", b"0")
    refused, refused_headers, _ = await call(edge, "DELETE", b"/items/7", headers=[HOST])
    assert refused == 405
    assert headers[b"allow"] == refused_headers[b"allow"] == b"GET, HEAD, OPTIONS"
    status, headers, _ = await call(edge, "OPTIONS", b"/upload", headers=[HOST])
    assert headers[b"allow"] == b"OPTIONS, POST"
    assert (await call(edge, "OPTIONS", b"/nowhere", headers=[HOST]))[0] == 404


async def test_options_asterisk_is_the_server_wide_ping() -> None:
    status, headers, body = await call(
        make_edge(), "OPTIONS", b"*", headers=[HOST], http_version="1.1"
    )
    assert (status, body, headers[b"content-length"]) == (200, b"", b"0")
    assert b"allow" not in headers  # the server in general, no resource's methods
    assert (await call(make_edge(), "GET", b"*", headers=[HOST]))[0] == 400


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"content-type", b"text/plain"), (b"content-length", b"2")], 415),
        ([(b"content-type", b"application/x-www-form-urlencoded")], 415),
        ([(b"content-length", b"2")], 415),  # a body without a type
        ([(b"transfer-encoding", b"chunked")], 415),
        ([(b"content-type", b"application/json"), (b"content-length", b"2")], 200),
        ([(b"content-type", b"application/merge-patch+json")], 200),
        ([], 200),  # no body, no type
    ],
)
async def test_a_write_takes_json(headers: list[tuple[bytes, bytes]], status: int) -> None:
    got, response_headers, _ = await call(
        make_edge(), "POST", b"/upload", chunks=[b"{}"], headers=headers
    )
    assert got == status
    if status == 415:
        assert response_headers[b"content-type"] == b"application/problem+json"


async def test_nul_in_a_query_parameter_is_422() -> None:
    status, _, body = await call(make_edge(), "GET", b"/items/1", query_string=b"a=1&b=x%00")
    assert status == 422
    assert orjson.loads(body)["errors"] == [{"field": "query.b", "message": "must not contain NUL"}]
