"""``granian-bare``: a raw ASGI app on Granian that answers every request with the same bytes.

It measures the floor for Python on Granian: HTTP parsing, the ASGI call and two ``send``s, no
framework, no database. The body is one product's JSON, byte for byte what the product endpoint
returns (the harness passes it in ``BENCH_FIXED_BODY``), so the wire work equals the real
endpoint's.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["app"]

BODY = os.environ.get("BENCH_FIXED_BODY", '{"hello":"world"}').encode()
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ],
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
