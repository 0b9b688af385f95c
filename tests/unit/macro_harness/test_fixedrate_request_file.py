"""``fixedrate -f``: the labelled requests of a file go out in order, and each label's statuses
and counts come back apart; the single-URL mode still works. Against a real local HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from benchmarks.macro.load import build_fixedrate, run_fixedrate, write_request_file

pytestmark = pytest.mark.once


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # head and body in one write (flushed after each request)
    seen: list[str] = []

    def do_GET(self) -> None:
        _Handler.seen.append(self.path)
        if self.path == "/empty":  # 204: no body, no Content-Length
            self.send_response(204)
            self.end_headers()
            return
        status = 409 if self.path == "/conflict" else 200
        body = b'{"ok":true}' * (2000 if self.path == "/big" else 1)  # bigger than a read
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_fixedrate(tmp_path_factory.mktemp("fixedrate"))


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def test_each_label_reports_its_own_statuses(server: str, binary: str, tmp_path: Path) -> None:
    paths = ["/a", "/conflict", "/big", "/empty"]
    file = tmp_path / "requests"
    write_request_file(file, ["ok", "conflict", "big", "empty"], ((i, _get(p)) for i, p in
                                                                  enumerate(paths)))  # fmt: skip
    _Handler.seen.clear()
    got = run_fixedrate(binary, server, connections=2, rate=100, duration=1, warmup=0.2,
                        request_file=file)  # fmt: skip
    by = {label.label: label for label in got.labels}
    assert list(by) == ["ok", "conflict", "big", "empty"]
    assert set(by["ok"].statuses) == {"200"} and set(by["big"].statuses) == {"200"}
    assert by["conflict"].statuses.keys() == {"409"} and by["conflict"].classes["4xx"] > 0
    assert by["empty"].statuses.keys() == {"204"}
    assert all(label.errors == 0 for label in got.labels), got.labels
    # file order, cycling: request s is the file's s mod 4
    assert _Handler.seen[:8] == paths * 2
    counts = [label.requests for label in got.labels]
    assert max(counts) - min(counts) <= 1 and sum(counts) == got.requests


def test_the_single_url_mode_still_works(server: str, binary: str) -> None:
    got = run_fixedrate(binary, server + "a", connections=2, rate=100, duration=0.5, warmup=0)
    assert got.requests >= 45 and got.errors == 0 and got.labels == ()


def test_a_bad_request_file_is_refused(binary: str, server: str, tmp_path: Path) -> None:
    file = tmp_path / "bad"
    file.write_bytes(b"fixedrate-requests a\n3 10\nGET / HTTP\n")
    with pytest.raises(RuntimeError, match="known label index"):
        run_fixedrate(binary, server, connections=1, rate=10, duration=0.1, request_file=file)
