"""Slow and silent clients, with real sockets against a gateway process: a connection that never
sends a byte, headers or a body that trickle, an idle kept-alive connection: each is closed (a
body that trickles gets a 408 problem+json first) within its timeout, and the gateway keeps
answering everybody else meanwhile.

The gateway runs with 2 s timeouts; every client runs in a thread of its own at once, so the
module takes a few seconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from tests.acceptance.conftest import Gateway, start_gateway, stop_gateway

pytestmark = pytest.mark.acceptance

TIMEOUT = 2.0
# The most a test waits for the server to close a connection: the timeout, plus a wide margin
# for a loaded machine; a server without the timeout holds the connection far longer.
GIVE_UP = TIMEOUT + 8.0


@pytest.fixture(scope="module")
def slow_gw(gateway_env: dict[str, str], seeded: object) -> Iterator[Gateway]:
    gw = start_gateway(
        gateway_env,
        workers=1,
        extra_env={
            "CYGATE_HTTP_HEADER_TIMEOUT": str(TIMEOUT),
            "CYGATE_HTTP_BODY_TIMEOUT": str(TIMEOUT),
        },
    )
    try:
        yield gw
    finally:
        stop_gateway(gw)


def _port(gw: Gateway) -> int:
    return int(gw.url.rsplit(":", 1)[1])


class Slow:
    """One client socket that sends ``steps`` (bytes, then a pause) and then reads until the
    server closes the connection; records what arrived and when the connection closed."""

    def __init__(self, port: int, steps: list[tuple[bytes, float]]) -> None:
        self.port = port
        self.steps = steps
        self.received = b""
        self.closed_after: float | None = None  # seconds from connect to EOF/reset
        self.send_failed = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=GIVE_UP) as s:
            opened = time.monotonic()
            for data, pause in self.steps:
                try:
                    s.sendall(data)
                except OSError:
                    self.send_failed = True  # closed by the server already
                    break
                time.sleep(pause)
            try:
                while chunk := s.recv(65536):
                    self.received += chunk
            except TimeoutError:
                return  # still open after GIVE_UP: closed_after stays None
            except OSError:
                pass  # reset by the server: closed too
            self.closed_after = time.monotonic() - opened

    def start(self) -> Slow:
        self.thread.start()
        return self

    def join(self) -> Slow:
        self.thread.join(GIVE_UP + 10)
        return self


def _trickle(data: bytes, every: float, pieces: int) -> list[tuple[bytes, float]]:
    """``data`` then ``pieces`` single bytes, one each ``every`` seconds."""
    return [(data, every), *((b" ", every) for _ in range(pieces))]


def test_slow_and_silent_connections_are_closed_within_their_timeouts(slow_gw: Gateway) -> None:
    port = _port(slow_gw)
    body_head = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 100\r\n\r\n{"
    )
    clients = {
        "silent": Slow(port, []),
        "partial headers": Slow(port, [(b"GET /healthz HTTP/1.1\r\nHo", 0.0)]),
        # a header line every 0.5 s, for longer than the timeout: never complete
        "trickled headers": Slow(port, _trickle(b"GET /healthz HTTP/1.1\r\n", 0.5, 12)),
        # headers complete, then the body a byte each 0.5 s (it would take 50 s)
        "trickled body": Slow(port, _trickle(body_head, 0.5, 12)),
        # headers complete, then no body at all
        "missing body": Slow(port, [(body_head[:-1], 0.0)]),
        # a complete request, then the connection left open and idle
        "idle keep-alive": Slow(port, [(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)]),
    }
    for c in clients.values():
        c.start()
    # Meanwhile everybody else is served as usual.
    with httpx.Client(base_url=slow_gw.url, timeout=5) as client:
        for _ in range(10):
            assert client.get("/healthz").status_code == 200
            time.sleep(0.1)
    for c in clients.values():
        c.join()
    seen = {name: (c.closed_after, c.received[:12]) for name, c in clients.items()}
    print(f"\nslow clients (closed after s, first bytes): {seen}")
    for name, c in clients.items():
        assert c.closed_after is not None, f"{name}: still open after {GIVE_UP} s"
        assert c.closed_after < GIVE_UP, (name, c.closed_after)
    # No answer where there was no request; the idle connection got its one answer first.
    for name in ("silent", "partial headers", "trickled headers"):
        assert clients[name].received == b"", (name, clients[name].received)
    assert clients["idle keep-alive"].received.startswith(b"HTTP/1.1 200")
    # A body that did not come in time: a 408 problem+json, and the connection closed.
    for name in ("trickled body", "missing body"):
        head, _, body = clients[name].received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), (name, clients[name].received[:200])
        assert b"application/problem+json" in head.lower()
        doc = json.loads(body)
        assert doc["status"] == 408 and doc["request_id"], doc
        assert "did not arrive within 2 s" in doc["detail"]
        assert clients[name].closed_after >= TIMEOUT - 0.5  # type: ignore[operator]


def test_a_body_sent_in_pieces_within_the_timeout_is_served(slow_gw: Gateway) -> None:
    """The body timeout bounds the whole body, not a healthy client's pauses between pieces."""
    body = json.dumps({"email": "nobody@example.com", "password": "wrong-password"}).encode()
    head = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    half = len(body) // 2
    c = Slow(_port(slow_gw), [(head, 0.3), (body[:half], 0.5), (body[half:], 0.0)]).start().join()
    assert c.received.startswith(b"HTTP/1.1 401"), c.received[:200]
