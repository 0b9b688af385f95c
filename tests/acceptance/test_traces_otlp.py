"""Traces from a real gateway process to a real OTLP/HTTP receiver the test starts.

The receiver decodes each ``ExportTraceServiceRequest`` (``opentelemetry-proto``); the echo
upstream (tests/upstream_servers.py) answers with the headers it received, so the test reads the
``traceparent`` the gateway sent it. docs/observability.md, "Traces".
"""

from __future__ import annotations

import json
import pathlib
import secrets
import time
import uuid
from collections.abc import Iterator

import pytest
from benchmarks.otlp_sink import OTLPReceiver, ReceivedSpan
from tests.acceptance.conftest import (
    Gateway,
    admin_headers,
    free_port,
    private_data,
    start_gateway,
    stop_gateway,
)
from tests.upstream_servers import Upstream, running_upstreams

pytestmark = pytest.mark.acceptance

SERVER, CLIENT, CONSUMER = 2, 3, 5  # OTLP span kinds


def tp(trace_id: str, span_id: str, flags: str = "01") -> str:
    return f"00-{trace_id}-{span_id}-{flags}"


def new_ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstreams("traced") as servers:
        yield servers[0]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced_gw(
    gateway_env: dict[str, str],
    upstream: Upstream,
    receiver: OTLPReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    path = tmp_path_factory.mktemp("routes") / "routes.json"
    doc = {
        "upstreams": {"svc": {"targets": [upstream.url], "retry": {"attempts": 0}}},
        "routes": [{"path": "/svc/{rest:path}", "upstream": "svc", "strip_prefix": "/svc"}],
    }
    path.write_text(json.dumps(doc))
    # NOTE: data of its own: the session's gateways share the test database and Redis prefix,
    # so their reads fill L2 (a "miss" here would be an L2 hit) and their relays and consumers
    # would take this gateway's events (no span of its own to find).
    with private_data(gateway_env, "traces", categories=3, products=30, users=1) as env:
        gw = start_gateway(
            env,
            workers=1,
            extra_env={
                "CYGATE_ROUTES_FILE": str(path),
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
                "OTEL_SERVICE_NAME": "cygate-test",
                "OTEL_TRACES_SAMPLER": "parentbased_always_on",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        try:
            yield gw
        finally:
            output = stop_gateway(gw)
            assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def product_id(traced_gw: Gateway) -> str:
    with traced_gw.client() as c:
        r = c.get("/api/v1/products", params={"limit": 5})
    assert r.status_code == 200, r.text
    return str(r.json()["items"][-1]["id"])


def of_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def server_span(spans: list[ReceivedSpan], trace_id: str) -> ReceivedSpan:
    found = [s for s in of_trace(spans, trace_id) if s.kind == SERVER]
    assert len(found) == 1, [(s.name, s.kind) for s in of_trace(spans, trace_id)]
    return found[0]


def descendants(spans: list[ReceivedSpan], root: ReceivedSpan) -> list[ReceivedSpan]:
    by_parent: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        by_parent.setdefault(s.parent_span_id, []).append(s)
    out, todo = [], [root.span_id]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            out.append(child)
            todo.append(child.span_id)
    return out


# -- one request's tree ----------------------------------------------------------------------


def test_request_tree_continues_the_clients_trace(
    traced_gw: Gateway, receiver: OTLPReceiver, product_id: str
) -> None:
    """A cache miss: the edge's server span is the client's span's child, and the database
    queries and the cache fill (Redis, L2) are its descendants, all in the client's trace."""
    trace_id, parent = new_ids()
    with traced_gw.client() as c:
        # A miss for sure: a product id the cache has not seen in this trace's form.
        r = c.get(f"/api/v1/products/{product_id}", headers={"traceparent": tp(trace_id, parent)})
    assert r.status_code == 200, r.text
    assert r.headers["traceparent"] == tp(trace_id, parent)  # echoed, as before

    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = of_trace(spans, trace_id)
        return any(s.kind == SERVER for s in mine) and any(s.name.startswith("db ") for s in mine)

    spans = of_trace(receiver.wait_for(complete), trace_id)
    edge = server_span(spans, trace_id)
    assert edge.parent_span_id == parent
    assert edge.name == "GET /api/v1/products/{product_id:uuid}"
    assert edge.service == "cygate-test"
    attrs = edge.attributes
    assert attrs["http.route"] == "GET /api/v1/products/{product_id:uuid}"
    assert attrs["http.response.status_code"] == 200
    assert attrs["cygate.cache"] in ("miss", "shared")
    assert attrs["cygate.auth"] == "none"
    assert attrs["cygate.request_id"] == r.headers["x-request-id"]
    below = descendants(spans, edge)
    db = [s for s in below if s.name.startswith("db ")]
    assert db and all(s.kind == CLIENT for s in db)
    assert any("products" in str(s.attributes.get("db.query.text")) for s in db)
    redis_calls = [s for s in below if s.name.startswith("redis ")]
    assert redis_calls, [s.name for s in below]  # the L2 look-up and fill
    assert {s.trace_id for s in below} == {trace_id}


def test_cached_hit_is_traced_when_sampled_and_not_otherwise(
    traced_gw: Gateway, receiver: OTLPReceiver, product_id: str
) -> None:
    """A cache hit the fused hit path would serve: with a sampled traceparent it is served by
    the general path and recorded (cache: hit); with an unsampled one nothing is recorded."""
    with traced_gw.client() as c:
        for _ in range(3):  # warm the L1
            assert c.get(f"/api/v1/products/{product_id}").status_code == 200
        quiet, quiet_parent = new_ids()
        r = c.get(
            f"/api/v1/products/{product_id}",
            headers={"traceparent": tp(quiet, quiet_parent, "00")},
        )
        assert r.status_code == 200
        assert r.headers["traceparent"] == tp(quiet, quiet_parent, "00")
        loud, loud_parent = new_ids()
        r = c.get(f"/api/v1/products/{product_id}", headers={"traceparent": tp(loud, loud_parent)})
        assert r.status_code == 200
    spans = receiver.wait_for(lambda s: any(x.trace_id == loud for x in s))
    edge = server_span(spans, loud)
    assert edge.parent_span_id == loud_parent
    assert edge.attributes["cygate.cache"] == "hit"
    # The unsampled request was answered before the sampled one: its spans, had there been
    # any, were exported in the same batch or earlier.
    time.sleep(0.3)
    assert of_trace(receiver.spans, quiet) == []


@pytest.mark.once
def test_json_log_lines_carry_the_requests_trace_and_request_ids(
    gateway_env: dict[str, str], seeded: dict[str, object], receiver: OTLPReceiver
) -> None:
    """JSON logs with the access log, tracing on: the line for a request carries the trace id
    of the client's traceparent and the request id the response carries, and so does the
    request's server span at the receiver."""
    gw = start_gateway(
        gateway_env,
        workers=1,
        extra_env={
            "CYGATE_LOG_FORMAT": "json",
            "CYGATE_LOG_LEVEL": "info",
            "CYGATE_ACCESS_LOG_SAMPLE": "1",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "cygate-logs-test",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    trace_id, parent = new_ids()
    try:
        with gw.client() as c:
            listed = c.get("/api/v1/products", params={"limit": 2})
            assert listed.status_code == 200, listed.text
            product = listed.json()["items"][-1]["id"]
            r = c.get(f"/api/v1/products/{product}", headers={"traceparent": tp(trace_id, parent)})
        assert r.status_code == 200, r.text
        request_id = r.headers["x-request-id"]
        spans = of_trace(
            receiver.wait_for(lambda got: any(s.kind == SERVER for s in of_trace(got, trace_id))),
            trace_id,
        )
        assert server_span(spans, trace_id).attributes["cygate.request_id"] == request_id
    finally:
        output = stop_gateway(gw)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == request_id]
    assert mine, output[-2000:]
    assert all(line["trace_id"] == trace_id for line in mine), mine
    access = [line for line in mine if line["logger"] == "cygate.access"]
    assert len(access) == 1, mine
    assert access[0]["status"] == 200 and access[0]["method"] == "GET", access[0]


def test_new_trace_is_returned_to_the_client(traced_gw: Gateway, receiver: OTLPReceiver) -> None:
    """No traceparent: the response names the trace the request's spans are in."""
    with traced_gw.client() as c:
        r = c.get("/api/v1/categories")
    assert r.status_code == 200
    _, trace_id, span_id, flags = r.headers["traceparent"].split("-")
    assert flags == "01"
    spans = receiver.wait_for(lambda s: any(x.trace_id == trace_id for x in s))
    edge = server_span(spans, trace_id)
    assert edge.span_id == span_id
    assert edge.parent_span_id == ""


# -- upstreams ------------------------------------------------------------------------------


def test_proxied_request_carries_the_trace_to_the_upstream(
    traced_gw: Gateway, receiver: OTLPReceiver, upstream: Upstream
) -> None:
    trace_id, parent = new_ids()
    with traced_gw.client() as c:
        r = c.get(
            "/svc/echo/traced",
            headers={"traceparent": tp(trace_id, parent), "tracestate": "vendor=abc"},
        )
    assert r.status_code == 200, r.text
    received = dict(r.json()["headers"])
    _, up_trace, up_parent, up_flags = received["traceparent"].split("-")
    assert up_trace == trace_id
    assert up_flags == "01"
    assert received["tracestate"] == "vendor=abc"

    def has_client(spans: list[ReceivedSpan]) -> bool:
        return any(s.trace_id == trace_id and s.kind == CLIENT for s in spans)

    spans = of_trace(receiver.wait_for(has_client), trace_id)
    edge = server_span(spans, trace_id)
    assert edge.parent_span_id == parent
    (exchange,) = [s for s in spans if s.kind == CLIENT]
    assert exchange.span_id == up_parent  # the upstream's parent is the gateway's exchange
    assert exchange.parent_span_id == edge.span_id
    assert exchange.name == "GET svc"
    assert exchange.attributes["http.response.status_code"] == 200
    assert exchange.attributes["cygate.upstream.outcome"] == "ok"


# -- events ---------------------------------------------------------------------------------


@pytest.mark.once
def test_outbox_consumer_span_links_to_the_request_that_wrote_the_event(
    traced_gw: Gateway, receiver: OTLPReceiver
) -> None:
    admin = admin_headers(traced_gw)
    with traced_gw.client() as c:
        category = c.get("/api/v1/categories").json()["items"][0]["id"]
        trace_id, parent = new_ids()
        body = {
            "sku": f"TRACE-{uuid.uuid4().hex[:8]}",
            "name": "Traced",
            "description": "d",
            "price_cents": 100,
            "currency": "USD",
            "category_id": category,
            "stock": 1,
        }
        r = c.post(
            "/api/v1/products", json=body, headers={**admin, "traceparent": tp(trace_id, parent)}
        )
    assert r.status_code == 201, r.text

    def linked(spans: list[ReceivedSpan]) -> bool:
        # (the relay's span ends after its UPDATE: a consumer may be done before it)
        return all(
            any(kind(s) and any(t == trace_id for t, _ in s.links) for s in spans)
            for kind in (lambda s: s.kind == CONSUMER, lambda s: s.name == "outbox publish")
        ) and any(s.trace_id == trace_id and s.kind == SERVER for s in spans)

    spans = receiver.wait_for(linked, timeout=20)
    edge = server_span(spans, trace_id)
    consumers = [s for s in spans if s.kind == CONSUMER and (trace_id, edge.span_id) in s.links]
    assert consumers, "no consumer span linked to the writing request's span"
    assert all(s.trace_id != trace_id for s in consumers)  # a trace of its own, linked
    assert any(s.name == "consume cache" for s in consumers)
    publish = [
        s for s in spans if s.name == "outbox publish" and (trace_id, edge.span_id) in s.links
    ]
    assert publish


# -- bad input ------------------------------------------------------------------------------

_T, _S = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
MALFORMED = {
    "all-zero trace id": tp("0" * 32, _S),
    "all-zero parent id": tp(_T, "0" * 16),
    "version ff": f"ff-{_T}-{_S}-01",
    "version 01": f"01-{_T}-{_S}-01",
    "short trace id": tp(_T[:-1], _S),
    "long parent id": tp(_T, _S + "a"),
    "uppercase hex": tp(_T.upper(), _S),
    "extra field": tp(_T, _S) + "-extra",
    "no dashes": f"00{_T}{_S}01",
    "non-hex flags": tp(_T, _S, "zz"),
    "empty": "",
    "control characters": tp(_T, _S).replace("-", "\t", 1),
}


@pytest.mark.parametrize("value", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_traceparent_starts_a_fresh_trace(
    traced_gw: Gateway, receiver: OTLPReceiver, product_id: str, value: str
) -> None:
    with traced_gw.client() as c:
        for path in (f"/api/v1/products/{product_id}", "/svc/echo/bad"):
            r = c.get(path, headers={"traceparent": value})
            assert r.status_code == 200, r.text
            _, trace_id, _, _ = r.headers["traceparent"].split("-")
            assert trace_id not in (_T, "0" * 32)
            spans = receiver.wait_for(lambda s, t=trace_id: any(x.trace_id == t for x in s))
            assert server_span(spans, trace_id).parent_span_id == ""


@pytest.mark.parametrize(
    "state",
    [
        "",
        "=",
        "a=b,,,,c",
        "x" * 2000,
        "bad key=1",
        "k=v\t,=",
        ",".join(f"k{i}=v" for i in range(40)),
    ],
)
def test_malformed_tracestate_keeps_the_trace_and_never_fails(
    traced_gw: Gateway, receiver: OTLPReceiver, state: str
) -> None:
    trace_id, parent = new_ids()
    with traced_gw.client() as c:
        r = c.get(
            "/svc/echo/state", headers={"traceparent": tp(trace_id, parent), "tracestate": state}
        )
    assert r.status_code == 200, r.text
    spans = receiver.wait_for(lambda s: any(x.trace_id == trace_id and x.kind == SERVER for x in s))
    assert server_span(spans, trace_id).parent_span_id == parent


@pytest.mark.once
def test_unreachable_collector_leaves_requests_alone_and_counts_dropped_spans(
    gateway_env: dict[str, str], seeded: dict[str, object]
) -> None:
    closed = free_port()  # nothing listens there
    gw = start_gateway(
        gateway_env,
        workers=1,
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    try:
        with gw.client() as c:
            for _ in range(20):
                r = c.get("/api/v1/categories")
                assert r.status_code == 200
                assert r.elapsed.total_seconds() < 1.0
            deadline = time.monotonic() + 20
            dropped = 0.0
            while time.monotonic() < deadline:
                text = c.get("/metrics").text
                line = [
                    ln
                    for ln in text.splitlines()
                    if ln.startswith("cygate_trace_spans_dropped_total")
                ]
                dropped = float(line[0].split()[-1]) if line else 0.0
                if dropped >= 20:
                    break
                time.sleep(0.5)
            assert dropped >= 20, text
    finally:
        output = stop_gateway(gw)
    assert "Traceback" not in output, output


def test_sampler_garbage_stops_the_start_with_a_clear_message(
    gateway_env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    env = {
        **gateway_env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_TRACES_SAMPLER": "sometimes",
    }
    with pytest.raises(RuntimeError) as failed:
        start_gateway(env, workers=1)
    assert "OTEL_TRACES_SAMPLER='sometimes'" in str(failed.value)


def test_tracing_off_sends_no_span(gateway: Gateway, receiver: OTLPReceiver) -> None:
    """The suite's gateway (no OTEL_* endpoint): traceparent echoed, nothing exported."""
    trace_id, parent = new_ids()
    with gateway.client() as c:
        r = c.get("/api/v1/categories", headers={"traceparent": tp(trace_id, parent)})
    assert r.status_code == 200
    assert r.headers["traceparent"] == tp(trace_id, parent)
    time.sleep(0.3)
    assert of_trace(receiver.spans, trace_id) == []
