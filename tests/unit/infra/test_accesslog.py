"""The access log's writer (``cygate.infra.accesslog``): its lines, hostile text on one line,
whole lines per write, and a slow stream that drops (and counts) instead of blocking."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from cygate.infra.accesslog import AccessLog, effective_sample
from cygate.infra.metrics import Metrics
from cygate.services.privacy.redaction import redact

TRACEPARENT = b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01"


def entry(
    *, path: str = "/api/v1/products/1", agent: bytes = b"curl/8", status: int = 200
) -> tuple[Any, ...]:
    return (
        1_767_225_600.25, "GET", "GET /api/v1/products/{product_id:uuid}", path, status, 0.00125,
        321, "hit-l1", "allowed", "", "10.0.0.1", b"req-1", TRACEPARENT,
        [(b"host", b"gw"), (b"user-agent", agent), (b"x-forwarded-for", b"203.0.113.9")],
    )  # fmt: skip


class Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.writes.append(data)

    def lines(self) -> list[bytes]:
        return b"".join(self.writes).splitlines()


def test_a_json_access_line_has_every_field() -> None:
    sink = Sink()
    access = AccessLog(sample=1.0, fmt="json", write=sink)
    access.record(entry())
    access.flush()
    [raw] = sink.lines()
    assert json.loads(raw) == {
        "timestamp": "2026-01-01T00:00:00.250Z",
        "level": "INFO",
        "logger": "cygate.access",
        "message": "GET GET /api/v1/products/{product_id:uuid} 200",
        "method": "GET",
        "route": "GET /api/v1/products/{product_id:uuid}",
        "path": "/api/v1/products/1",
        "status": 200,
        "duration_ms": 1.25,
        "bytes": 321,
        "cache": "hit-l1",
        "ratelimit": "allowed",
        "upstream": "",
        "client": "10.0.0.1",
        "request_id": "req-1",
        "trace_id": "ab" * 16,
        "user_agent": "curl/8",
    }
    assert access.written.value == 1


def test_the_client_comes_from_the_resolver_given() -> None:
    sink = Sink()
    access = AccessLog(
        sample=1.0,
        fmt="json",
        write=sink,
        client_of=lambda peer, headers: dict(headers)[b"x-forwarded-for"].decode(),
    )
    access.record(entry())
    access.flush()
    assert json.loads(sink.lines()[0])["client"] == "203.0.113.9"


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize(
    "agent",
    [
        b"a\nb",
        b"a\r\nHTTP/1.1 200 OK",
        b"\x00\x1b[2J",
        b"\xff\xfe not utf-8",
        b'"} {"forged": 1',
        b"Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln",
    ],
)
def test_hostile_text_stays_on_one_line(fmt: str, agent: bytes) -> None:
    sink = Sink()
    access = AccessLog(sample=1.0, fmt=fmt, write=sink, redact=redact)  # type: ignore[arg-type]
    access.record(entry(agent=agent, path="/p/\udcff\n/x"))
    access.flush()
    data = b"".join(sink.writes)
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    data.decode("utf-8")  # valid UTF-8
    assert b"eyJhbGciOiJFZERTQSJ9" not in data  # the redaction applies to the user agent
    if fmt == "json":
        line = json.loads(data)
        assert line["status"] == 200 and line["path"].startswith("/p/")


def test_the_text_format_is_one_line_with_named_fields() -> None:
    sink = Sink()
    access = AccessLog(sample=1.0, fmt="text", write=sink)
    access.record(entry(agent=b"Mozilla/5.0 (X11)"))
    access.flush()
    [line] = sink.lines()
    assert line.startswith(b"2026-01-01T00:00:00.250Z INFO cygate.access GET ")
    assert b'user_agent="Mozilla/5.0 (X11)"' in line and b"bytes=321" in line
    assert b"request_id=req-1" in line and b"trace_id=" + b"ab" * 16 in line


def test_writes_hold_whole_lines_within_pipe_buf() -> None:
    sink = Sink()
    access = AccessLog(sample=1.0, fmt="json", write=sink)
    for _ in range(100):
        access.record(entry())
    access.flush()
    assert len(sink.writes) > 1
    assert all(len(w) <= 4096 and w.endswith(b"\n") for w in sink.writes)
    assert len(sink.lines()) == 100


def test_a_blocked_stream_drops_and_counts_instead_of_blocking() -> None:
    """The writing thread is stuck in a write (a full pipe): requests keep being recorded at
    once, the queue stays bounded, and what does not fit is dropped and counted in the
    metrics; once the stream drains, everything kept is written."""
    release = threading.Event()
    entered = threading.Event()
    written: list[bytes] = []

    def stuck(data: bytes) -> None:
        entered.set()
        release.wait(30)
        written.append(data)

    metrics = Metrics()
    access = AccessLog(
        sample=1.0,
        fmt="json",
        capacity=100,
        write=stuck,
        dropped=metrics.counter("cygate_access_log_dropped_total"),
        written=metrics.counter("cygate_access_log_lines_total"),
        interval=0.01,
    )
    access.start()
    try:
        access.record(entry())
        assert entered.wait(10)  # the thread is now blocked in its write
        for _ in range(5000):
            access.record(entry())
        assert not release.is_set()  # (all 5000 returned while the write was blocked)
        assert len(access.queue) == 100
        assert access.dropped.value == 4900
    finally:
        release.set()
        access.stop()
    assert sum(len(w.splitlines()) for w in written) == 101
    exposition = metrics.render()
    assert "cygate_access_log_dropped_total 4900" in exposition
    assert "cygate_access_log_lines_total 101" in exposition


def test_the_thread_writes_without_being_asked() -> None:
    sink = Sink()
    access = AccessLog(sample=1.0, fmt="json", write=sink, interval=0.01)
    access.start()
    try:
        access.record(entry())
        deadline = time.monotonic() + 10
        while not sink.writes and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        access.stop()
    assert len(sink.lines()) == 1


def test_a_failing_stream_does_not_stop_the_log(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[bytes] = []

    def flaky(data: bytes) -> None:
        calls.append(data)
        if len(calls) == 1:
            raise OSError("stream closed")

    access = AccessLog(sample=1.0, fmt="json", write=flaky, interval=0.01)
    access.start()
    try:
        access.record(entry())
        deadline = time.monotonic() + 10
        while len(calls) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        access.record(entry(status=201))
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        access.stop()
    assert b'"status":201' in calls[-1]
    assert "access log lines not written" in caplog.text


@pytest.mark.parametrize("sample", [0.0, -0.1, 1.5, float("nan")])
def test_an_access_log_needs_a_share_above_zero(sample: float) -> None:
    with pytest.raises(ValueError, match="share"):
        AccessLog(sample=sample, fmt="json")


def test_sampling_draws_the_configured_share() -> None:
    access = AccessLog(sample=0.3, fmt="json")
    drawn = sum(access.sampled() for _ in range(10_000))
    assert 2700 < drawn < 3300  # 3000 expected; a binomial's standard deviation is 46
    assert all(AccessLog(sample=1.0, fmt="json").sampled() for _ in range(100))


@pytest.mark.parametrize(
    ("level", "expected"), [("debug", 0.5), ("info", 0.5), ("warning", 0.0), ("error", 0.0)]
)
def test_access_lines_are_info_lines(level: str, expected: float) -> None:
    assert effective_sample(0.5, level) == expected
