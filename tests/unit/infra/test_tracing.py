"""infra/tracing.py: configuration from the OTEL_* environment, sampling decisions made before
the fused hit path, propagation, the log filter; spans exported to a real OTLP receiver."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
from collections.abc import Iterator

import pytest
from benchmarks.otlp_sink import OTLPReceiver

from cygate.core.reqmetrics import Tally
from cygate.infra import tracing


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as r:
        yield r


@pytest.fixture
def make(receiver: OTLPReceiver) -> Iterator[object]:
    """``make(**env)``: the process's Tracing for this environment (shut down afterwards, so
    no other test sees tracing on)."""
    tracing.shutdown()

    def build(**env: str) -> tracing.Tracing:
        environ = {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            **env,
        }
        made = tracing.configure(environ)
        assert made is not None
        return made

    yield build
    tracing.shutdown()


def test_off_without_an_endpoint_and_nothing_of_the_sdk_imported() -> None:
    code = (
        "import sys, cygate.app, cygate.cli\n"
        "from cygate.infra import tracing\n"
        "assert tracing.configure({'OTEL_SERVICE_NAME': 'x'}) is None\n"
        "assert tracing.configure({'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://h',"
        " 'OTEL_SDK_DISABLED': 'true'}) is None\n"
        "bad = [m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace',"
        " 'opentelemetry.exporter'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes'"),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "is not one of"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "'half'"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "0 to 1"),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "-0.1"},
            "",
        ),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "nan"}, "'nan'"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT='soon'"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "0"}, "above 0"),
    ],
)
def test_sampler_garbage_is_a_configuration_error(env: dict[str, str], error: str) -> None:
    with pytest.raises(tracing.TracingConfigError, match=error or None):
        tracing.check(env)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("parentbased_always_on", 1.0)),
        ({"OTEL_TRACES_SAMPLER": " ALWAYS_OFF "}, ("always_off", 1.0)),
        ({"OTEL_TRACES_SAMPLER": "traceidratio"}, ("traceidratio", 1.0)),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
            ("parentbased_traceidratio", 0.01),
        ),
    ],
)
def test_samplers_accepted(env: dict[str, str], expected: tuple[str, float]) -> None:
    assert tracing.check(env) == expected


@pytest.mark.parametrize(
    "sampler",
    [
        "parentbased_traceidratio",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "always_on",
        "always_off",
    ],
)
def test_decision_is_the_spans_own(make: object, sampler: str) -> None:
    """The decision taken before the hit path (``incoming``) and the SDK's sampling of the
    server span agree, on roots and on remote parents sampled or not, and a root span takes
    the decided trace id (else a ratio sampler would keep p² of roots)."""
    traced = make(OTEL_TRACES_SAMPLER=sampler, OTEL_TRACES_SAMPLER_ARG="0.5")  # type: ignore[operator]
    rng = random.Random(7)
    sampled = roots = 0
    for n in range(600):
        if n % 2:
            flags = rng.choice((b"00", b"01", b"03"))
            traceparent = b"00-%032x-%016x-%s" % (
                rng.getrandbits(128) | 1, rng.getrandbits(64) | 1, flags,
            )  # fmt: skip
        else:
            traceparent = b""
        incoming = traced.incoming(traceparent)
        span = traced.server_span(incoming, "GET", {})
        context = span.get_span_context()
        assert context.trace_id == incoming.trace_id
        assert context.trace_flags.sampled == incoming.sampled, (traceparent, sampler)
        if not traceparent:
            roots += 1
            sampled += incoming.sampled
        span.end()
    if sampler.endswith("traceidratio"):
        assert 0.35 * roots < sampled < 0.65 * roots  # 0.5 of roots, far from 0.25 and 1
    else:
        assert sampled == (roots if sampler.endswith("always_on") else 0)


def test_parent_decides_under_parentbased(make: object) -> None:
    traced = make(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0")  # type: ignore[operator]
    parent = b"00-" + b"ab" * 16 + b"-" + b"cd" * 8
    assert traced.incoming(parent + b"-01").sampled
    assert not traced.incoming(parent + b"-00").sampled
    assert not traced.incoming(b"").sampled  # a root at ratio 0
    span = traced.server_span(traced.incoming(parent + b"-01", b"k=v"), "GET", {})
    assert traced.traceparent(span).startswith("00-" + "ab" * 16 + "-")
    assert traced.traceparent(span).endswith("-01")
    assert traced.tracestate(span) == "k=v"
    span.end()


def test_spans_links_and_propagation_reach_the_receiver(
    make: object, receiver: OTLPReceiver
) -> None:
    traced = make(OTEL_SERVICE_NAME="unit")  # type: ignore[operator]
    writer = "00-" + "12" * 16 + "-" + "34" * 8 + "-01"
    assert traced.link("garbage") is None and traced.link(None) is None
    link = traced.link(writer)
    assert link is not None
    root = traced.start("consume cache", kind="consumer", root=True, links=[link])
    token = traced.use(root)
    try:
        child = traced.start("redis GET", kind="client")
        outgoing = traced.traceparent(child)
        child.end()
    finally:
        traced.release(token)
    root.end()
    spans = receiver.wait_for(lambda s: len(s) >= 2)
    by_name = {s.name: s for s in spans}
    consumer, redis = by_name["consume cache"], by_name["redis GET"]
    assert consumer.links == [("12" * 16, "34" * 8)]
    assert consumer.parent_span_id == "" and consumer.service == "unit"
    assert redis.parent_span_id == consumer.span_id and redis.trace_id == consumer.trace_id
    assert outgoing == f"00-{redis.trace_id}-{redis.span_id}-01"


def test_export_failures_are_counted() -> None:
    tracing.shutdown()
    dropped = Tally()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    traced = tracing.configure(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        },
        dropped=dropped,
    )
    assert traced is not None
    try:
        for _ in range(3):
            traced.start("lost", root=True).end()
        traced.provider.force_flush(5000)
        assert dropped.value == 3
    finally:
        tracing.shutdown()


def test_log_filter_sets_trace_and_span_ids(make: object) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    tracing.install_log_filter(handler)
    tracing.install_log_filter(handler)  # once only
    assert len(handler.filters) == 1
    log = logging.getLogger("test.tracing.filter")
    log.addHandler(handler)
    try:
        log.warning("off")
        traced = make()  # type: ignore[operator]
        log.warning("no span")
        span = traced.start("work", root=True)
        token = traced.use(span)
        log.warning("in span")
        inside_ids = tracing.current_ids()
        traced.release(token)
        assert tracing.current_ids() is None
        span.end()
    finally:
        log.removeHandler(handler)
    off, none, inside = records
    assert (off.trace_id, off.span_id) == ("", "")  # type: ignore[attr-defined]
    assert (none.trace_id, none.span_id) == ("", "")  # type: ignore[attr-defined]
    context = span.get_span_context()
    assert inside.trace_id == f"{context.trace_id:032x}"  # type: ignore[attr-defined]
    assert inside.span_id == f"{context.span_id:016x}"  # type: ignore[attr-defined]
    assert inside_ids == (inside.trace_id, inside.span_id)  # type: ignore[attr-defined]
