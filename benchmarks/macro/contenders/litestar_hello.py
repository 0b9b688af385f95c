"""``litestar-hello``: Litestar's hello-world on Granian, the BASELINE of every ratio.

``GET /`` returns ``{"hello": "world"}``: routing, the handler call and msgspec encoding, nothing
else. Ratios against it are steadier than raw req/s on a shared machine.
"""

from __future__ import annotations

from litestar import Litestar, get

__all__ = ["app"]


@get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


app = Litestar(route_handlers=[hello])
