"""The edge's one scan of a request's headers (``cygate.edge.hitpath.scan_head``): both builds
find the same, and a request the fused hit path declines after scanning it is not scanned again
by the general path (it gets the hit path's ``last_head``)."""

from __future__ import annotations

from typing import Any

import pytest
from cache_helpers import make_edge

import cygate.edge.edge as edge_module
from core_impls import CoreImplementation

FIELDS = (
    "authorization",
    "host",
    "hosts",
    "empty_host",
    "request_id",
    "traceparent",
    "content_length",
    "content_type",
    "chunked",
    "conditional",
    "odd",
)
TRACE = b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01"


def _host_of(value: bytes) -> str:
    return value.decode("latin-1").rsplit(":", 1)[0].lower()


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"host", b"API.example:8000"), (b"authorization", b"Bearer a"), (b"authorization", b"b")],
        [(b"host", b"a"), (b"host", b"")],
        [(b"x-request-id", b"ok-1"), (b"x-request-id", b"bad id"), (b"traceparent", TRACE)],
        [(b"traceparent", TRACE.upper()), (b"content-length", b"12"), (b"content-type", b"x/y")],
        [(b"content-length", b"-1")],
        [(b"content-length", b"9" * 30), (b"transfer-encoding", b"chunked")],
        [(b"pragma", b"no-cache")],
        [(b"cache-control", b"no-cache")],
        [(b"if-none-match", b'"x"')],
    ],
)
def test_both_builds_scan_alike(core_impl: CoreImplementation, headers: list[Any]) -> None:
    mine = core_impl.module("hitpath").scan_head(headers, {}, _host_of)
    reference = core_impl.module("hitpath").__name__.replace("_c", "_py")
    ref = __import__(reference, fromlist=["scan_head"]).scan_head(headers, {}, _host_of)
    assert [getattr(mine, f) for f in FIELDS] == [getattr(ref, f) for f in FIELDS]


def test_the_compiled_scan_skips_a_pair_that_is_not_bytes(core_impl: CoreImplementation) -> None:
    head = core_impl.module("hitpath").scan_head([("host", b"a"), (b"host", b"b")], {}, _host_of)
    assert head.host == "b" and head.hosts == 1
    if core_impl.tag == "c":
        assert head.odd


async def test_a_declined_request_is_scanned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request the hit path declines after its scan (a Content-Length here): the general
    path answers it with that scan; one the hit path does not scan (a POST) is scanned there."""
    edge, _, _ = make_edge()
    edge.stages = ()  # no stage the fused hit path does not know: it is built
    assert edge.hit_path is not None
    scans: list[Any] = []
    real = edge_module.scan_head

    def counting(*args: Any) -> Any:
        scans.append(args)
        return real(*args)

    monkeypatch.setattr(edge_module, "scan_head", counting)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    for method, extra in (("GET", [(b"content-length", b"0")]), ("POST", [])):
        scope = {"type": "http", "method": method, "path": "/nowhere", "raw_path": b"/nowhere",
                 "query_string": b"", "headers": [(b"host", b"a.example"), *extra],
                 "http_version": "1.1", "client": ("10.0.0.1", 1)}  # fmt: skip
        await edge(scope, receive, send)
        assert sent[0]["status"] == 404
        sent.clear()
    assert len(scans) == 1  # the POST's only
