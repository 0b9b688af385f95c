"""Accept-Encoding negotiation, the ETag suffixes and the kept variants (``edge/compress``)."""

from __future__ import annotations

import gzip

import brotli
import pytest
import zstandard

from cygate.edge.compress import (
    Compression,
    encodable_kind,
    negotiate,
    strip_suffix,
    suffixed,
)

BODY = (
    b'{"items": ['
    + b", ".join(b'{"id": %d, "name": "product %d"}' % (i, i) for i in range(200))
    + b"]}"
)
JSON = [(b"content-type", b"application/json")]


def decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    return zstandard.ZstdDecompressor().decompress(data)


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        (b"gzip", "gzip"),
        (b"GZIP", "gzip"),
        (b"x-gzip", "gzip"),
        (b"br", "br"),
        (b"zstd", "zstd"),
        (b"gzip, deflate, br, zstd", "br"),  # ties: the edge's order
        (b"gzip;q=1.0, br;q=0.5", "gzip"),
        (b"gzip;q=0.2, zstd;q=0.8, br;q=0.5", "zstd"),
        (b"br;q=0, gzip", "gzip"),
        (b"*", "br"),
        (b"*;q=0.5, gzip", "gzip"),  # a named coding beats the wildcard's q
        (b"gzip, *;q=0", "gzip"),
        (b"*;q=0", None),  # nothing acceptable, identity refused too: sent as it is
        (b"identity", None),
        (b"identity;q=0", None),
        (b"", None),
        (b"deflate", None),
        (b"compress, unknown-coding, snappy", None),
        (b"gzip;q=0", None),
        (b"gzip;q=0.000", None),
        (b"gzip;q=0.001", "gzip"),
        (b"gzip;q=1.", "gzip"),
        # malformed elements are ignored, the rest counts
        (b"gzip;q=2, br", "br"),
        (b"gzip;q=abc", None),
        (b"gzip;q=0.12345", None),
        (b"gzip;q=-1", None),
        (b"gzip;q=1.5", None),
        (b"gzip;q=", None),
        (b"gzip;level=9", None),
        (b"gzip;q=0.5;q", None),
        (b",,, ;q=1, gzip ;  q=0.9 ,", "gzip"),
        (b"\xff\xfe, br", "br"),
        (b"br;q=0.5, br;q=0", "br"),  # the highest q of a repeated coding
    ],
)
def test_negotiation(header: bytes, coding: str | None) -> None:
    assert negotiate(header) == coding


def test_negotiation_memo_is_bounded() -> None:
    c = Compression(10, 1 << 20)
    for i in range(2000):
        assert c.coding_for(b"gzip;q=0.%d" % (i % 1000)) in ("gzip", None)
    assert len(c._memo) <= 512
    assert c.coding_for(None) is None


def test_etag_suffixes_round_trip() -> None:
    assert suffixed(b'"abc"', "br") == b'"abc.br"'
    assert suffixed(b'W/"abc"', "gzip") == b'W/"abc.gzip"'
    assert strip_suffix(b'"abc.br"', ("br",)) == b'"abc"'
    assert strip_suffix(b'"abc.br"', ("gzip",)) == b'"abc.br"'  # another coding's: kept
    assert strip_suffix(b'"x.gzip", W/"y.zstd", "z"', ("gzip", "zstd", "br")) == b'"x", W/"y", "z"'
    value = b'"plain"'
    assert strip_suffix(value, ("gzip",)) is value
    assert strip_suffix(b"*", ("gzip",)) == b"*"


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, JSON, True),
        (200, [(b"content-type", b"application/problem+json")], True),
        (404, [(b"Content-Type", b"application/problem+json")], True),
        (200, [(b"content-type", b"application/jwk-set+json")], True),
        (200, [(b"content-type", b"text/plain; charset=utf-8")], True),
        (200, [(b"content-type", b"image/png")], False),
        (200, [(b"content-type", b"application/octet-stream")], False),
        (200, [], False),
        (200, [*JSON, (b"content-encoding", b"gzip")], False),
        (200, [*JSON, (b"cache-control", b"public, No-Transform")], False),
        (204, JSON, False),
        (206, JSON, False),
        (304, JSON, False),
    ],
)
def test_what_is_encodable(status: int, headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert encodable_kind(status, headers) is expected
    assert Compression(1, 1 << 20).encodable(status, headers, 100) is expected
    assert Compression(101, 1 << 20).encodable(status, headers, 100) is False  # below threshold


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_each_coding_round_trips_and_is_kept_once(coding: str) -> None:
    c = Compression(10, 1 << 20)
    first = c.encode(BODY, coding, b'"tag"')
    assert decode(coding, first) == BODY and len(first) < len(BODY) / 3
    assert (c.encoded, c.reused) == (1, 0)
    again = c.encode(BODY, coding, b'"tag"')
    assert again is first and (c.encoded, c.reused) == (1, 1)
    # a weak or missing tag names no exact bytes: encoded every time
    c.encode(BODY, coding, b'W/"tag"')
    c.encode(BODY, coding, None)
    assert (c.encoded, c.reused) == (3, 1)


def test_kept_variants_stay_within_their_bytes() -> None:
    c = Compression(10, 4096)
    for i in range(50):
        c.encode(BODY + b" " * i, "gzip", b'"t%d"' % i)
    assert c.variants.size <= 4096 and len(c.variants) < 50
