"""The proxy in process (edge + dispatcher) against real upstream servers on loopback:
headers, retries, breaker, bulkhead, timeouts, failures mid-body, balancing, health."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from proxy_harness import call, close_table, make_edge

from cygate.edge.context import Principal, TrustedProxies
from cygate.edge.edge import ResponseAborted
from cygate.infra.metrics import Metrics
from cygate.upstream.resilience import CLOSED, OPEN
from upstream_servers import Upstream


def one(up: Upstream | list[Upstream], **upstream: Any) -> dict[str, Any]:
    ups = up if isinstance(up, list) else [up]
    route = upstream.pop("route", {})
    return {
        "upstreams": {"svc": {"targets": [u.url for u in ups], **upstream}},
        "routes": [
            {"path": "/svc/{rest:path}", "upstream": "svc", "strip_prefix": "/svc", **route}
        ],
    }


def sent_headers(reply: Any) -> dict[str, str]:
    return {k: v for k, v in reply.json()["headers"]}


async def test_headers_both_ways(servers: list[Upstream]) -> None:
    edge, table = make_edge(
        one(
            servers[0],
            route={
                "request_headers": {"set": {"x-route": "r1"}, "remove": ["cookie"]},
                "response_headers": {"set": {"x-served-by": "gw"}, "remove": ["x-upstream-name"]},
            },
        )
    )
    try:
        r = await call(
            edge,
            "GET",
            "/svc/echo/a%20b",
            query=b"x=1&y=%2F",
            headers=[
                (b"x-request-id", b"req-123"),
                (b"connection", b"keep-alive, x-private"),
                (b"x-private", b"secret"),
                (b"keep-alive", b"timeout=5"),
                (b"te", b"trailers"),
                (b"proxy-authorization", b"Basic Zm9v"),
                (b"x-cygate-sub", b"forged-admin"),
                (b"x-forwarded-for", b"6.6.6.6"),
                (b"forwarded", b"for=6.6.6.6"),
                (b"cookie", b"a=b"),
                (b"x-route", b"client-value"),
                (b"authorization", b"Bearer t"),
            ],
        )
        assert r.status == 200, r.body
        doc = r.json()
        assert doc["target"] == "/echo/a%20b?x=1&y=%2F"
        seen = sent_headers(r)
        for gone in ("connection", "x-private", "keep-alive", "te", "proxy-authorization",
                     "x-cygate-sub", "cookie"):  # fmt: skip
            assert gone not in seen, gone
        assert seen["host"] == servers[0].url.removeprefix("http://")
        assert seen["x-forwarded-for"] == "127.0.0.5"  # the client's own value is not believed
        assert seen["forwarded"] == 'for=127.0.0.5;proto=http;host="gw.example"'
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "gw.example"
        assert seen["x-request-id"] == "req-123"
        assert seen["traceparent"].startswith("00-")
        assert seen["x-route"] == "r1"
        assert seen["authorization"] == "Bearer t"
        assert [k for k, _ in doc["headers"]].count("x-route") == 1
        # response: hop-by-hop and connection-named headers dropped, edge ids not doubled
        assert r.header(b"x-hop") is None and r.header(b"connection") is None
        assert r.headers_named(b"x-request-id") == [b"req-123"]
        assert r.header(b"x-served-by") == b"gw" and r.header(b"x-upstream-name") is None
        assert r.header(b"traceparent") == seen["traceparent"].encode()
    finally:
        await close_table(table)


async def test_forwarded_chain_from_a_trusted_proxy_and_identity_from_the_principal(
    servers: list[Upstream],
) -> None:
    edge, table = make_edge(one(servers[0]), trusted=TrustedProxies(["127.0.0.5"]))

    def stage(ctx: Any) -> None:
        ctx.principal = Principal(sub="user-1", roles=frozenset({"b", "a"}), issuer="iss")

    edge.stages = (stage,)
    try:
        r = await call(
            edge,
            "GET",
            "/svc/x",
            headers=[
                (b"x-forwarded-for", b"203.0.113.9"),
                (b"x-forwarded-proto", b"https"),
                (b"forwarded", b"for=203.0.113.9;proto=https"),
                (b"x-cygate-roles", b"admin"),
            ],
        )
        seen = sent_headers(r)
        assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.5"
        assert seen["x-forwarded-proto"] == "https"
        assert seen["forwarded"].startswith("for=203.0.113.9;proto=https, for=127.0.0.5")
        assert seen["x-cygate-sub"] == "user-1"
        assert seen["x-cygate-roles"] == "a,b"
        assert seen["x-cygate-issuer"] == "iss"
    finally:
        await close_table(table)


async def test_keep_alive_connections_are_reused(servers: list[Upstream]) -> None:
    edge, table = make_edge(one(servers[0]))
    try:
        for _ in range(20):
            assert (await call(edge, "GET", "/svc/x")).status == 200
        assert servers[0].connections == 1
        # the upstream closes: the next request opens a new connection transparently
        assert (await call(edge, "GET", "/svc/close")).status == 200
        assert (await call(edge, "GET", "/svc/x")).status == 200
        assert servers[0].connections == 2
    finally:
        await close_table(table)


async def test_unconfigured_paths_and_other_hosts_are_never_forwarded(
    servers: list[Upstream],
) -> None:
    doc = one(servers[0])
    doc["routes"][0]["host"] = "api.example"
    edge, table = make_edge(doc)
    try:
        assert (await call(edge, "GET", "/svc/x", host=b"api.example")).status == 200
        before = servers[0].requests
        for host, path in [
            (b"evil.example", "/svc/x"),
            (b"169.254.169.254", "/svc/x"),
            (b"api.example", "/other"),
            (b"api.example", "http://169.254.169.254/latest"),
        ]:
            r = await call(edge, "GET", path, host=host)
            assert r.status in (400, 404), (host, path, r.status)
            assert r.header(b"content-type") == b"application/problem+json"
        assert servers[0].requests == before
    finally:
        await close_table(table)


async def test_round_robin_least_outstanding_and_consistent_hash(
    servers: list[Upstream],
) -> None:
    edge, table = make_edge(one(servers))
    try:
        names = [(await call(edge, "GET", "/svc/x")).json()["server"] for _ in range(6)]
        assert names == ["a", "b", "c", "a", "b", "c"]
    finally:
        await close_table(table)

    edge, table = make_edge(one(servers, balance="least_outstanding"))
    try:
        slow = [asyncio.create_task(call(edge, "GET", "/svc/slow/300")) for _ in range(2)]
        await asyncio.sleep(0.05)
        fast = (await call(edge, "GET", "/svc/x")).json()["server"]
        busy = {(await s).json()["server"] for s in slow}
        assert fast not in busy and len(busy) == 2
    finally:
        await close_table(table)

    edge, table = make_edge(one(servers, balance="consistent_hash", hash_key="header:x-user"))
    try:
        chosen: dict[str, str] = {}
        for user in [f"u{i}" for i in range(30)] * 2:
            r = await call(edge, "GET", "/svc/x", headers=[(b"x-user", user.encode())])
            assert chosen.setdefault(user, r.json()["server"]) == r.json()["server"]
        assert len(set(chosen.values())) == 3  # keys spread over every target
    finally:
        await close_table(table)


async def test_weighted_round_robin(servers: list[Upstream]) -> None:
    doc = one(servers[:2])
    doc["upstreams"]["svc"]["targets"] = [
        {"url": servers[0].url, "weight": 3},
        {"url": servers[1].url, "weight": 1},
    ]
    edge, table = make_edge(doc)
    try:
        names = [(await call(edge, "GET", "/svc/x")).json()["server"] for _ in range(8)]
        assert names.count("a") == 6 and names.count("b") == 2
    finally:
        await close_table(table)


async def test_breaker_opens_answers_fast_503_then_half_opens_and_closes(
    servers: list[Upstream],
) -> None:
    up = servers[0]
    up.mode = "fail"
    metrics = Metrics()
    edge, table = make_edge(
        one(
            up,
            breaker={"failure_threshold": 3, "open_seconds": 0.3},
            retry={"attempts": 0},
        ),
        metrics=metrics,
    )
    breaker = table.upstreams["svc"].breaker
    metrics.add_gauge_source(table.breaker_gauges)
    try:
        assert 'cygate_upstream_breaker_state{upstream="svc",state="closed"} 1' in metrics.render()
        for _ in range(3):
            assert (await call(edge, "GET", "/svc/x")).status == 503
        assert breaker.state == OPEN
        text = metrics.render()
        assert "# TYPE cygate_upstream_breaker_state gauge" in text
        assert 'cygate_upstream_breaker_state{upstream="svc",state="open"} 1' in text
        assert 'cygate_upstream_breaker_state{upstream="svc",state="closed"} 0' in text
        seen = up.requests
        t0 = time.perf_counter()
        r = await call(edge, "GET", "/svc/x")
        assert time.perf_counter() - t0 < 0.2  # no upstream round trip, no timeout
        assert r.status == 503 and r.header(b"retry-after") == b"1"
        assert r.header(b"content-type") == b"application/problem+json"
        assert "circuit open" in r.json()["detail"] and r.json()["request_id"]
        assert up.requests == seen  # the upstream was not contacted
        await asyncio.sleep(0.35)
        up.mode = "ok"
        assert (await call(edge, "GET", "/svc/x")).status == 200  # the half-open probe
        assert breaker.state == CLOSED
        text = metrics.render()
        assert (
            'cygate_upstream_breaker_transitions_total{upstream="svc",from_state="closed",'
            'to_state="open"} 1' in text
        )
        assert 'to_state="half_open"} 1' in text and 'to_state="closed"} 1' in text
        assert 'cygate_upstream_shed_total{upstream="svc",route=' in text
    finally:
        await close_table(table)


async def test_flapping_upstream_is_smoothed_by_retries_within_budget(
    servers: list[Upstream],
) -> None:
    for s in servers[:2]:
        s.mode = "flap"
    metrics = Metrics()
    edge, table = make_edge(
        one(servers[:2], retry={"attempts": 2}, breaker={"failure_threshold": 50}),
        metrics=metrics,
    )
    try:
        statuses = [(await call(edge, "GET", "/svc/x")).status for _ in range(10)]
        assert statuses == [200] * 10
        assert "cygate_upstream_retries_total" in metrics.render()
        # a POST is never retried: the client sees the failure
        posts = [(await call(edge, "POST", "/svc/x")).status for _ in range(4)]
        assert 503 in posts
    finally:
        await close_table(table)


async def test_retry_budget_caps_retries(servers: list[Upstream]) -> None:
    servers[0].mode = "fail"
    edge, table = make_edge(
        one(
            servers[0],
            retry={"attempts": 3, "budget_ratio": 0.0, "budget_min_per_second": 0.5},
            breaker={"failure_threshold": 1000},
            outlier={"consecutive_failures": 1000},
        )
    )
    try:
        for _ in range(10):
            assert (await call(edge, "GET", "/svc/x")).status == 503
        # 10 requests; the budget's cap (5 tokens) bounds the retries, not 3 x 10
        assert servers[0].requests <= 10 + 5 + 1
    finally:
        await close_table(table)


async def test_bulkhead_sheds_with_503(servers: list[Upstream]) -> None:
    metrics = Metrics()
    edge, table = make_edge(
        one(servers[0], bulkhead={"max_concurrent": 2, "max_queue": 1, "queue_timeout": 5}),
        metrics=metrics,
    )
    try:
        replies = await asyncio.gather(*(call(edge, "GET", "/svc/slow/200") for _ in range(6)))
        statuses = sorted(r.status for r in replies)
        assert statuses == [200, 200, 200, 503, 503, 503]
        shed = next(r for r in replies if r.status == 503)
        assert shed.header(b"retry-after") == b"1"
        assert "at capacity" in shed.json()["detail"]
        assert 'reason="bulkhead"} 3' in metrics.render()
        assert table.upstreams["svc"].bulkhead.active == 0
    finally:
        await close_table(table)


@pytest.mark.parametrize("path", ["/svc/hang", "/svc/slow/5000"])
async def test_no_request_waits_past_its_total_timeout(servers: list[Upstream], path: str) -> None:
    edge, table = make_edge(
        one(servers[0], timeouts={"total": 0.3, "read": 0.3}, retry={"attempts": 0})
    )
    try:
        t0 = time.perf_counter()
        r = await call(edge, "GET", path)
        elapsed = time.perf_counter() - t0
        # NOTE: 0.3 s total; the bound leaves room for a loaded machine, far below the
        # upstream's 5 s (or never) answer.
        assert r.status == 504 and elapsed < 0.6, elapsed
        assert "did not answer" in r.json()["detail"] or "timed out" in r.json()["detail"]
    finally:
        await close_table(table)


async def test_total_timeout_covers_the_bulkhead_queue(servers: list[Upstream]) -> None:
    edge, table = make_edge(
        one(
            servers[0],
            timeouts={"total": 0.25},
            bulkhead={"max_concurrent": 1, "max_queue": 10, "queue_timeout": 60},
            retry={"attempts": 0},
        )
    )
    try:
        t0 = time.perf_counter()
        replies = await asyncio.gather(*(call(edge, "GET", "/svc/slow/1000") for _ in range(3)))
        assert time.perf_counter() - t0 < 0.6  # 0.25 s total; the upstream takes 1 s each
        assert [r.status for r in replies] == [504, 504, 504]
    finally:
        await close_table(table)


async def test_read_timeout_is_silence_not_total_time(servers: list[Upstream]) -> None:
    edge, table = make_edge(
        one(servers[0], timeouts={"read": 0.2, "total": 5}, retry={"attempts": 0})
    )
    try:
        t0 = time.perf_counter()
        r = await call(edge, "GET", "/svc/slow/600")
        assert r.status == 504 and time.perf_counter() - t0 < 0.5  # 0.2 s of silence allowed
        r = await call(edge, "GET", "/svc/big/5000000", keep_body=False)  # long but never silent
        assert r.status == 200 and r.size == 5_000_000
    finally:
        await close_table(table)


async def test_upstream_dropping_the_connection_mid_body_aborts_the_response(
    servers: list[Upstream],
) -> None:
    metrics = Metrics()
    edge, table = make_edge(one(servers[0]), metrics=metrics)
    try:
        r = await call(edge, "GET", "/svc/drop")
        assert r.status == 200 and r.size == 1000  # the head and the first bytes went out
        assert isinstance(r.error, ResponseAborted)  # then the client connection is dropped
        assert r.messages[-1].get("more_body") is True  # never a clean (truncated) end
        assert 'outcome="reset_error"' in metrics.render()
        assert (await call(edge, "GET", "/svc/x")).status == 200  # the proxy is fine after
    finally:
        await close_table(table)


async def test_connect_failures_retry_on_another_target_then_502(
    servers: list[Upstream],
) -> None:
    dead = Upstream("dead")
    await dead.start()
    await dead.stop()  # a port nobody listens on
    edge, table = make_edge(
        one([dead, servers[0]], retry={"attempts": 1}, outlier={"consecutive_failures": 100})
    )
    try:
        for _ in range(4):
            assert (await call(edge, "GET", "/svc/x")).status == 200
    finally:
        await close_table(table)
    edge, table = make_edge(one(dead, retry={"attempts": 0}))
    try:
        r = await call(edge, "GET", "/svc/x")
        assert r.status == 502 and "connect" in r.json()["detail"]
    finally:
        await close_table(table)


async def test_outlier_ejection_takes_a_failing_target_out(servers: list[Upstream]) -> None:
    servers[1].mode = "fail"
    edge, table = make_edge(
        one(
            servers[:2],
            retry={"attempts": 0},
            outlier={"consecutive_failures": 2, "ejection_seconds": 30, "max_ejection_percent": 50},
            breaker={"failure_threshold": 100},
        )
    )
    try:
        for _ in range(6):
            await call(edge, "GET", "/svc/x")
        servers[1].requests = 0
        statuses = [(await call(edge, "GET", "/svc/x")).status for _ in range(10)]
        assert statuses == [200] * 10 and servers[1].requests == 0
        view = table.upstreams["svc"].view()
        assert [t["ejected"] for t in view["targets"]] == [False, True]
    finally:
        await close_table(table)


async def test_active_health_checks_take_targets_out_and_back(servers: list[Upstream]) -> None:
    edge, table = make_edge(
        one(
            servers[:2],
            health_check={"interval": 0.05, "timeout": 0.5, "unhealthy_threshold": 1,
                          "healthy_threshold": 1},
        )
    )  # fmt: skip
    target_b = table.upstreams["svc"].targets[1]
    try:
        servers[1].healthy = False
        for _ in range(100):
            if not target_b.healthy:
                break
            await asyncio.sleep(0.02)
        assert not target_b.healthy
        names = {(await call(edge, "GET", "/svc/x")).json()["server"] for _ in range(6)}
        assert names == {"a"}
        servers[1].healthy = True
        for _ in range(100):
            if target_b.healthy:
                break
            await asyncio.sleep(0.02)
        assert target_b.healthy
    finally:
        await close_table(table)


async def test_request_bodies_stream_with_limits(servers: list[Upstream]) -> None:
    edge, table = make_edge(one(servers[0], route={"max_body_bytes": 100_000}))
    try:
        chunk = b"z" * 10_000
        r = await call(edge, "PUT", "/svc/up", chunks=[chunk] * 9)
        assert r.status == 200 and r.json()["body_size"] == 90_000
        assert sent_headers(r)["transfer-encoding"] == "chunked"
        r = await call(edge, "PUT", "/svc/up", chunks=[chunk] * 11)
        assert r.status == 413 and r.header(b"content-type") == b"application/problem+json"
        n = 300_000  # above the retry buffer: streamed with its Content-Length
        r = await call(
            edge,
            "POST",
            "/svc/up",
            chunks=[b"q" * 50_000] * 6,
            headers=[(b"content-length", str(n).encode())],
        )
        assert r.status == 413  # the route's 100 kB limit, from the header, before any upstream
        small = b'{"a": 1}'
        r = await call(edge, "POST", "/svc/up", chunks=[small], headers=[(b"content-length", b"8")])
        assert r.status == 200 and r.json()["body_size"] == 8
        assert sent_headers(r)["content-length"] == "8"
    finally:
        await close_table(table)


async def test_head_requests_get_no_body(servers: list[Upstream]) -> None:
    edge, table = make_edge(one(servers[0]))
    try:
        r = await call(edge, "HEAD", "/svc/x")
        assert r.status == 200 and r.body == b"" and r.header(b"content-length") not in (None, b"0")
        assert (await call(edge, "GET", "/svc/x")).status == 200  # the connection is still good
    finally:
        await close_table(table)


async def test_metrics_per_upstream_and_route(servers: list[Upstream]) -> None:
    metrics = Metrics()
    edge, table = make_edge(one(servers[0]), metrics=metrics)
    try:
        await call(edge, "GET", "/svc/x")
        await call(edge, "GET", "/svc/status/404")
        text = metrics.render()
        labels = 'upstream="svc",route="* /svc/{rest:path}",outcome="ok"'
        assert f"cygate_upstream_requests_total{{{labels}}} 2" in text
        assert "cygate_upstream_request_duration_seconds_bucket" in text
        snap = orjson.loads(orjson.dumps(metrics.snapshot()))
        assert any(k.startswith("\x1e") for k in snap)
    finally:
        await close_table(table)


async def test_streamed_body_then_close_is_complete(servers: list[Upstream]) -> None:
    """A large response with ``Connection: close`` streams whole (the close is no error)."""
    edge, table = make_edge(one(servers[0]))
    try:
        r = await call(
            edge,
            "GET",
            "/svc/big/3000000",
            keep_body=False,
            headers=[(b"x-close", b"1")],
            slow_send=0.01,  # reading pauses; the close arrives with the last bytes
        )
        assert r.error is None and r.status == 200 and r.size == 3_000_000
    finally:
        await close_table(table)


async def test_edge_headers_once_whether_the_proxy_sends_directly_or_not(
    servers: list[Upstream],
) -> None:
    """GET goes out on the server's own ``send`` (the proxy adds the edge's headers); HEAD on
    a GET route goes through the edge's wrapper (it drops the body): the same headers, once."""
    edge, table = make_edge(
        one(servers[0], route={"response_headers": {"set": {"x-served-by": "gw"}}})
    )
    try:
        for method in ("GET", "HEAD"):
            r = await call(edge, method, "/svc/x", headers=[(b"x-request-id", b"rid-1")])
            assert r.status == 200, method
            names = [n for n, _ in r.headers]
            for name in (b"x-request-id", b"traceparent", b"x-content-type-options"):
                assert names.count(name) == 1, (method, name)
            assert r.header(b"x-request-id") == b"rid-1"
            assert r.header(b"x-served-by") == b"gw"
            assert b"connection" not in names and b"keep-alive" not in names
        assert edge.metrics.render().count('status="200"') >= 1
    finally:
        await close_table(table)
