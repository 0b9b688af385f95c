"""A real OTLP/HTTP trace receiver: ``POST /v1/traces`` (protobuf), answered 200.

Tests keep what it receives (:class:`OTLPReceiver` with ``keep=True``: the spans decoded with
``opentelemetry-proto``'s ``ExportTraceServiceRequest``); the macro benchmark's traced
contenders run it as a process of its own that reads and discards (its CPU is not the
gateway's):

    python -m benchmarks.otlp_sink --port 4318          # GET / answers 200 (ready check)
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OTLPReceiver", "ReceivedSpan"]


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One span as the receiver decoded it (ids as lower-case hex)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]] = field(default_factory=list)
    """(trace id, span id) of each link."""
    service: str = ""
    status_code: int = 0


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest``."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            out.extend(
                ReceivedSpan(
                    name=s.name,
                    trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(),
                    kind=s.kind,
                    attributes={a.key: _value(a.value) for a in s.attributes},
                    links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                    service=str(resource.get("service.name", "")),
                    status_code=s.status.code,
                )
                for s in scope_spans.spans
            )
    return out


class OTLPReceiver:
    """A threaded HTTP server on ``127.0.0.1`` (``port`` 0: a free one). ``keep``: decode and
    keep every span (:attr:`spans`); else read and discard. :attr:`requests` counts POSTs."""

    def __init__(self, port: int = 0, *, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if self.path != "/v1/traces":
                    self._answer(404)
                    return
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                spans = decode(body) if receiver.keep else []
                with receiver.lock:
                    receiver.requests += 1
                    receiver.spans.extend(spans)
                self._answer(200, b"", "application/x-protobuf")

            def do_GET(self) -> None:
                self._answer(200, b"ok\n", "text/plain")

            def _answer(self, status: int, body: bytes = b"", ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` for this receiver."""
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def start(self) -> OTLPReceiver:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> list[ReceivedSpan]:
        """The spans received, once ``predicate(spans)`` holds (AssertionError after
        ``timeout`` seconds, with what came)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({s.name for s in spans})
                raise AssertionError(f"not received in {timeout} s; {len(spans)} spans: {names}")
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    receiver = OTLPReceiver(args.port, keep=False)
    with contextlib.suppress(KeyboardInterrupt):
        receiver.server.serve_forever()


if __name__ == "__main__":
    main()
