"""The whole-response parser, compiled and pure: what it accepts it reads exactly as httptools
(llhttp) does; everything else is ``None`` (httptools then decides); C and py agree."""

from __future__ import annotations

import importlib
import os
from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_impls import CoreImplementation, compiled
from cygate.core import httpresp as selector
from cygate.core._httpresp_py import parse_response as parse_py

Parse = Any


@pytest.fixture(scope="module")
def parse(core_impl: CoreImplementation) -> Parse:
    return core_impl.module("httpresp").parse_response


class _Reader:
    """httptools, read the way the proxy's client reads (names lower-cased)."""

    def __init__(self, head_only: bool) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.status = 0
        self.keep_alive = False
        self.done = False
        self.head_only = head_only
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only:
            self.done = True

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def _httptools(data: bytes, head_only: bool) -> tuple[Any, ...] | None:
    """(status, headers, keep_alive, body) by httptools, or None if it refuses the bytes or
    does not see one complete response."""
    r = _Reader(head_only)
    try:
        r.parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    if not r.done:
        return None
    return r.status, r.headers, r.keep_alive, r.body


SMALL = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 21:32:25 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 7\r\nConnection: keep-alive\r\n\r\n"
    b'{"a":1}'
)

ACCEPTED = [
    SMALL,
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 201 \r\ncontent-length: 2\r\n\r\nhi",
    b"HTTP/1.1 404 Not Found\r\nX-A:  x y  \r\nX-B:\r\nX-C: \t\r\nContent-Length: 1\r\n\r\n!",
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye",
    b"HTTP/1.1 200 OK\r\nX-Obs: caf\xe9\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n1234567",
    b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nCONNECTION: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
]

DECLINED = [
    b"",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",  # partial body
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc",  # a byte more than the response
    b"HTTP/1.1 200 OK\r\nContent-Len",  # partial head
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nclose-delimited",  # no length
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 1000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # bare LF
    b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",  # a control character in the reason
    b"HTTP/1.1 200 OK\r\nA : b\r\nContent-Length: 0\r\n\r\n",  # space before the colon
    b"HTTP/1.1 200 OK\r\nA: b\x01c\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: b\rc\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: b\nc\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded\r\nContent-Length: 0\r\n\r\n",  # obs-fold
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3 \r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"n" * 257 + b": v\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n",  # pipelined extra bytes
]


@pytest.mark.parametrize("data", ACCEPTED)
def test_accepted_responses_read_as_httptools_reads_them(parse: Parse, data: bytes) -> None:
    parsed = parse(data)
    assert parsed is not None
    status, headers, keep_alive, connection, body = parsed
    assert (status, headers, keep_alive, body) == _httptools(data, False)
    assert connection == next((v for n, v in headers if n == b"connection"), None)


@pytest.mark.parametrize("data", DECLINED)
def test_anything_else_is_no_verdict(parse: Parse, data: bytes) -> None:
    assert parse(data) is None


def test_head_answers_have_no_body(parse: Parse) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 79\r\n\r\n"
    assert parse(data) is None  # as a GET answer the body is missing
    assert parse(data, True) == (200, [(b"content-length", b"79")], True, None, b"")
    assert parse(data + b"x", True) is None


def test_keep_alive_and_connection(parse: Parse) -> None:
    closing = parse(b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n")
    assert closing is not None and closing[2:4] == (False, b"Close")
    assert parse(SMALL)[2:4] == (True, b"keep-alive")


@pytest.mark.skipif(os.environ.get("CYGATE_NO_EXTENSIONS") is not None, reason="pure mode")
def test_compiled_parser_is_in_use_and_the_client_uses_it() -> None:
    if compiled("httpresp") is None:
        pytest.skip("not compiled")
    module = importlib.import_module("cygate.core._httpresp_c")
    assert selector.parse_response is module.parse_response
    from cygate.upstream import client

    assert client._parse_whole is module.parse_response


@pytest.mark.skipif(not os.environ.get("CYGATE_NO_EXTENSIONS"), reason="extensions are on")
def test_pure_mode_reads_everything_with_httptools() -> None:
    from cygate.upstream import client

    assert selector.parse_response is parse_py
    assert client._parse_whole is None


# -- generated responses: the two twins and httptools agree --------------------------------------

_TCHAR = st.sampled_from(
    list(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
)
_ANY_BYTE = st.integers(0, 255)
_NAMES = st.one_of(
    st.sampled_from(
        [b"Content-Length", b"content-length", b"Connection", b"Transfer-Encoding", b"Server"]
    ),
    st.lists(st.one_of(_TCHAR, _ANY_BYTE), min_size=0, max_size=12).map(bytes),
)
_VALUES = st.one_of(
    st.sampled_from([b"0", b"3", b"12", b"close", b"keep-alive", b"chunked", b" 3", b"3 "]),
    st.lists(st.one_of(st.integers(0x20, 0x7E), _ANY_BYTE), max_size=16).map(bytes),
)


_VALID_NAMES = st.lists(_TCHAR, min_size=1, max_size=10).map(bytes)
_VALID_VALUES = st.lists(
    st.one_of(st.integers(0x20, 0x7E), st.integers(0x80, 0xFF), st.just(9)), max_size=16
).map(bytes)


@st.composite
def _valid_responses(draw: st.DrawFn) -> bytes:
    """Mostly acceptable responses (each generated header is valid; the length is right)."""
    status = draw(st.sampled_from([b"200", b"201", b"204", b"304", b"404", b"502"]))
    reason = draw(st.sampled_from([b" OK", b"", b" ", b" Not\tFound \xe9"]))
    headers = draw(st.lists(st.tuples(_VALID_NAMES, _VALID_VALUES), max_size=6))
    headers = [(n, v) for n, v in headers if n.lower() not in _SPECIAL]
    body = draw(st.binary(max_size=20))
    extra = draw(
        st.sampled_from([b"", b"", b"Connection: close\r\n", b"connection: Keep-Alive\r\n"])
    )
    length = b"Content-Length: %d\r\n" % len(body)
    cut = draw(st.sampled_from([0, 0, 0, 1, -1]))
    data = b"HTTP/1.1 " + status + reason + b"\r\n"
    data += b"".join(
        n + b":" + draw(st.sampled_from([b" ", b"", b"\t "])) + v + b"\r\n" for n, v in headers
    )
    data += extra + length + b"\r\n" + body
    return data[: len(data) - cut] if cut >= 0 else data + b"x"


_SPECIAL = {b"content-length", b"transfer-encoding", b"connection"}


@st.composite
def _responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([b"200", b"204", b"304", b"404", b"199", b"600", b"20"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    reason = draw(st.sampled_from([b" OK", b"", b" ", b" Not\tFound", b" \x01"]))
    headers = draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=5))
    sep = draw(st.sampled_from([b": ", b":", b" : ", b":\t"]))
    body = draw(st.binary(max_size=12))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    head = version + b" " + status + reason + eol
    head += b"".join(n + sep + v + eol for n, v in headers)
    return head + eol + body


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_responses(), _valid_responses()), st.booleans())
def test_generated_responses_agree_with_httptools(data: bytes, head_only: bool) -> None:
    parsed = parse_py(data, head_only)
    if parsed is not None:
        status, headers, keep_alive, _connection, body = parsed
        assert (status, headers, keep_alive, body) == _httptools(data, head_only)
    module = compiled("httpresp")
    if module is not None:
        assert module.parse_response(data, head_only) == parsed


def test_skipped_names_are_read_but_left_out(parse: Parse) -> None:
    skip = frozenset({b"connection", b"server", b"content-length"})
    parsed = parse(SMALL, False, skip)
    assert parsed is not None
    status, headers, keep_alive, connection, body = parsed
    assert [n for n, _ in headers] == [b"date", b"content-type"]
    assert (status, keep_alive, connection, body) == (200, True, b"keep-alive", b'{"a":1}')
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"
    assert parse(closing, False, skip) == (200, [], False, b"close", b"x")
