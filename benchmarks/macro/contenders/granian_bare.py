"""``granian-bare`` and ``granian-same-bytes``: a raw ASGI app on Granian that answers every
request with the same bytes.

It measures the floor for Python on Granian: HTTP parsing, the ASGI call and two ``send``s, no
framework, no database. The body is one product's JSON, byte for byte what the product endpoint
returns (the harness passes it in ``BENCH_FIXED_BODY``).

``BENCH_BARE_HEADERS=cygate`` (``granian-same-bytes``): the response also carries the headers
cygate-full sends with that body (:data:`CYGATE_HEADERS`: same names, values of the same length),
and the harness sends it cygate-full's request (with its token), so Granian and wrk do the same
wire work as for cygate-full: 15 headers instead of 2 cost Granian ~2 CPU us per request and
~14 % of this floor's req/s on the 2-core machine. The harness checks the names against
cygate-full's real answer, so the two cannot drift apart unnoticed. Without it (``granian-bare``)
the answer has the body, ``content-type`` and ``content-length`` only.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["app", "rsgi"]

BODY = os.environ.get("BENCH_FIXED_BODY", '{"hello":"world"}').encode()
CYGATE_HEADERS = [
    # what the cache stored with the body
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"etag", b'"' + b"E" * 22 + b'"'),
    (b"cache-control", b"public, max-age=60, stale-while-revalidate=30, stale-if-error=300"),
    (b"x-cache", b"hit-l1"),
    (b"age", b"1"),
    # the edge's own
    (b"x-request-id", b"0123456789abcdef01234567"),
    (b"traceparent", b"00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    # the rate limit's
    (b"ratelimit-limit", b"1000000"),
    (b"ratelimit-remaining", b"999999"),
    (b"ratelimit-reset", b"1"),
    (b"ratelimit-policy", b"1000000;w=1"),
]
"""The headers of cygate-full's answer for this body, in its order."""
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": CYGATE_HEADERS
    if os.environ.get("BENCH_BARE_HEADERS") == "cygate"
    else CYGATE_HEADERS[:2],
}
BODY_MESSAGE = {"type": "http.response.body", "body": BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send(START)
        await send(BODY_MESSAGE)
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


RSGI_HEADERS = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in START["headers"]]


async def rsgi(scope: Any, protocol: Any) -> None:
    """The same answer through Granian's native interface (RSGI): one ``response_bytes`` call,
    no message dicts and no ``send`` awaitables."""
    protocol.response_bytes(200, RSGI_HEADERS, BODY)
