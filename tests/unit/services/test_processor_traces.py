"""The payment processor client (services/payments/http.py) with tracing on: a client span per
call, and its traceparent received by a real HTTP server (the echo upstream answers with the
headers it got). Off, no header is added."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from benchmarks.otlp_sink import OTLPReceiver
from tests.upstream_servers import Upstream

from cygate.infra import tracing
from cygate.services.payments.http import JsonClient


@pytest.fixture
async def echo() -> Iterator[Upstream]:
    up = await Upstream("processor").start()
    try:
        yield up
    finally:
        await up.stop()


async def test_processor_call_is_a_client_span_whose_id_the_processor_receives(
    echo: Upstream,
) -> None:
    tracing.shutdown()
    client = JsonClient(echo.url, name="processor")
    with OTLPReceiver() as receiver:
        traced = tracing.configure(
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "50",
            }
        )
        assert traced is not None
        try:
            request = traced.start("POST /api/v1/payments", kind="server", root=True)
            token = traced.use(request)
            try:
                answer = await client.request(
                    "POST", "/v1/charges", json={"amount": 1}, timeout=5,
                    headers={"tracestate": "ignored=by-the-client"},
                )  # fmt: skip
            finally:
                traced.release(token)
                request.end()
            assert answer.status == 200
            got = dict(answer.body["headers"])
            spans = receiver.wait_for(lambda s: len(s) >= 2)
            (call,) = [s for s in spans if s.name == "POST processor"]
            (edge,) = [s for s in spans if s.name == "POST /api/v1/payments"]
            assert got["traceparent"] == f"00-{call.trace_id}-{call.span_id}-01"
            assert call.parent_span_id == edge.span_id
            assert call.attributes["http.response.status_code"] == 200
            assert call.attributes["server.address"] == "127.0.0.1"
        finally:
            tracing.shutdown()
            client.close()


async def test_tracing_off_sends_no_traceparent(echo: Upstream) -> None:
    tracing.shutdown()
    client = JsonClient(echo.url, name="processor")
    try:
        answer = await client.request("GET", "/v1/charges/x", timeout=5)
    finally:
        client.close()
    assert "traceparent" not in dict(answer.body["headers"])
