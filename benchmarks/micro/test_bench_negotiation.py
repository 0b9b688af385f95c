"""A cached product list (100 products, about 34 KB of JSON) through the edge, compressed and not.

The request of ``test_bench_edge.py`` (route, token, one rate-limit token, L1 hit) for a body the
size of ``GET /api/v1/products?limit=100``, in one run:

- ``plain_hit_compression_off``: no Accept-Encoding, compression off: the fused hit path;
- ``plain_hit``: no Accept-Encoding, compression on: still the fused hit path (and
  ``Vary: Accept-Encoding``);
- ``br_hit`` and ``gzip_hit``: ``Accept-Encoding`` accepting the coding: the fused hit path
  sends the variant the compression keeps for the entry (no compression per hit);
- ``br_hit_general``: the same through the general path (``CYGATE_EDGE_HIT_PATH=false``);
- ``cors_hit``: CORS on, ``Origin`` allowed, no Accept-Encoding: the general path, which adds
  the CORS headers;
- ``gzip_per_request`` and ``br_per_request``: the body compressed on every request (what the
  kept variant saves): the compression alone, no edge.

One round = 100 requests driven by one coroutine (``Driver``); compare within one run.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from benchmarks.micro.test_bench_edge import PER_ROUND, Driver, make_edge
from cygate.edge.compress import Compression
from cygate.edge.cors import Cors

GROUP = "edge cached hit of a 34 KB product list: compressed and not (per request)"
ORIGIN = b"https://app.example"
LIST = json.dumps(
    {
        "items": [
            {
                "id": str(uuid.UUID(int=i * 7919)),
                "name": f"Compact Titanium Monitor {i}",
                "description": "A sturdy, well-reviewed product for home and office use, "
                f"model {i % 17}, with a two-year warranty.",
                "price_cents": 1000 + i * 37,
                "currency": "EUR",
                "stock": i * 3 % 400,
                "category_id": str(uuid.UUID(int=i % 12)),
                "created_at": "2026-01-01T00:00:00Z",
            }
            for i in range(100)
        ],
        "next_cursor": "eyJpZCI6IjAxOTMifQ",
    }
).encode()


@pytest.fixture(scope="module")
def drivers() -> Iterator[dict[str, Driver]]:
    def compression() -> Compression:
        return Compression(1024, 16 << 20)

    off, headers = make_edge(stages=True, body=LIST)
    on, on_headers = make_edge(stages=True, body=LIST, compression=compression())
    general, general_headers = make_edge(
        stages=True, body=LIST, compression=compression(), hit_path=False
    )
    cors, cors_headers = make_edge(
        stages=True,
        body=LIST,
        compression=compression(),
        cors=Cors([ORIGIN.decode()], allow_credentials=False, max_age=600),
    )
    made = {
        "off": Driver(off, headers),
        "plain": Driver(on, on_headers),
        "br": Driver(on, [*on_headers, (b"accept-encoding", b"gzip, deflate, br")]),
        "gzip": Driver(on, [*on_headers, (b"accept-encoding", b"gzip")]),
        "br-general": Driver(general, [*general_headers, (b"accept-encoding", b"br")]),
        "cors": Driver(cors, [*cors_headers, (b"origin", ORIGIN)]),
    }
    for d in made.values():
        d.run(2)  # fill L1 (and the kept variant)
    yield made
    for d in made.values():
        d.loop.close()


def _case(
    drivers: dict[str, Driver],
    name: str,
    micro: Callable[..., Any],
    coding: bytes | None = None,
    fused: bool | None = True,
) -> None:
    d = drivers[name]
    edge = d.app
    compression = edge.compression
    before = compression.encoded if compression is not None else 0
    status, answer, body = d.answer()
    assert status == 200 and answer[b"x-cache"] == b"hit-l1"
    assert answer.get(b"content-encoding") == coding
    assert (body == LIST) if coding is None else len(body) < len(LIST) / 4
    if fused is None:
        assert edge.hit_path is None
    else:  # the fused path answers it, or leaves it to the general one
        assert (edge.hit_path.answer(d.scope()) is not None) is fused
    micro(d.run, group=GROUP, ops=PER_ROUND)
    if compression is not None:
        assert compression.encoded == before  # a kept variant: nothing compressed per hit


def test_plain_hit_compression_off(drivers: dict[str, Driver], micro: Callable[..., Any]) -> None:
    """No Accept-Encoding, compression off: the fused hit path."""
    _case(drivers, "off", micro)


def test_plain_hit(drivers: dict[str, Driver], micro: Callable[..., Any]) -> None:
    """No Accept-Encoding, compression on: the fused hit path, with Vary: Accept-Encoding."""
    _case(drivers, "plain", micro)
    assert drivers["plain"].answer()[1][b"vary"] == b"Accept-Encoding"


def test_br_hit(drivers: dict[str, Driver], micro: Callable[..., Any]) -> None:
    """Accept-Encoding: gzip, deflate, br: the fused hit path sends the kept br variant."""
    _case(drivers, "br", micro, b"br")


def test_gzip_hit(drivers: dict[str, Driver], micro: Callable[..., Any]) -> None:
    """Accept-Encoding: gzip: the fused hit path sends the kept gzip variant."""
    _case(drivers, "gzip", micro, b"gzip")


def test_br_hit_general(drivers: dict[str, Driver], micro: Callable[..., Any]) -> None:
    """The br hit through the general path (no fused hit path): the kept variant too."""
    _case(drivers, "br-general", micro, b"br", fused=None)


def test_cors_hit(drivers: dict[str, Driver], micro: Callable[..., Any]) -> None:
    """CORS on, an allowed Origin: the general path, with the CORS headers."""
    _case(drivers, "cors", micro, fused=False)
    assert drivers["cors"].answer()[1][b"access-control-allow-origin"] == ORIGIN


def _per_request(coding: str) -> Callable[[], None]:
    compression = Compression(1024, 0)

    def run() -> None:
        for _ in range(PER_ROUND):
            compression.encode(LIST, coding, None)

    return run


def test_gzip_per_request(micro: Callable[..., Any]) -> None:
    """The list gzipped on every request (no kept variant): the compression alone."""
    micro(_per_request("gzip"), group=GROUP, ops=PER_ROUND)


def test_br_per_request(micro: Callable[..., Any]) -> None:
    """The list compressed with br on every request (no kept variant): the compression alone."""
    micro(_per_request("br"), group=GROUP, ops=PER_ROUND)
