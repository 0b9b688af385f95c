"""HTTP validators for cacheable routes when the response cache is switched off.

API.md promises that cacheable GETs carry ``ETag`` and ``Cache-Control`` and that
``If-None-Match`` gives 304, and the catalog's ``If-Match`` names the same tag. The response
cache (``cache.py``) keeps that promise on the routes it serves. With the cache switched off
(``CYGATE_CACHE_ENABLED=false``), a route's rule switched off (ttl 0) or a request's
``no-store``, this step does: a 200 with a single body gets the tag the cache would give it
(:func:`etag_of` over the exact bytes, so the tag is the same whether or not the cache is on,
on every instance) and the rule's headers (``Cache-Control``; ``Vary`` when its key varies on
request headers), and a request whose ``If-None-Match`` names the tag gets a 304 without the
body. Responses streamed in several parts pass through untagged (the tag needs the whole body,
and buffering a stream is not this step's call), as does anything but a 200.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from cygate.edge.cache_entry import etag_matches, etag_of, rule_headers

if TYPE_CHECKING:
    from cygate.edge.asgi import Message, Send
    from cygate.edge.context import EdgeContext
    from cygate.edge.settings import CacheRule

__all__ = ["Validated", "Validators"]

_KEPT_ON_304 = frozenset({b"etag", b"cache-control", b"vary", b"content-location", b"expires"})
"""What a 304 keeps of the 200's headers (RFC 9110 15.4.5: the validators and caching headers;
the edge adds its own per-request ones after this step)."""


class Validated(Protocol):
    """A ``send`` that adds validators (the type of :meth:`Validators.wrap`'s result)."""

    def __call__(self, message: Message) -> Coroutine[Any, Any, None]: ...


class Validators:
    """Tags the 200s of cacheable routes and answers ``If-None-Match`` with 304."""

    __slots__ = ("_headers",)

    def __init__(self, rules: Mapping[str, CacheRule]) -> None:
        self._headers = {name: rule_headers(rule) for name, rule in rules.items()}

    def wrap(self, ctx: EdgeContext, send: Send) -> Validated:
        """``send`` with validators for the route's rule (``ctx.policy.cache``)."""
        rule = ctx.policy.cache
        own = self._headers.get(rule, ()) if rule is not None else ()
        if_none_match = ctx.header(b"if-none-match")
        held: Message | None = None

        async def validated(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                if message["status"] == 200:
                    held = message  # until the body says whether it comes in one piece
                    return
                await send(message)
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            start, held = held, None
            if message.get("more_body", False):
                await send(start)  # a stream: no tag (see the module docstring)
                await send(message)
                return
            headers = list(start.get("headers", ()))
            names = {name.lower() for name, _ in headers}
            if b"etag" in names:
                etag = next(v for k, v in headers if k.lower() == b"etag")
            else:
                etag = etag_of(message.get("body", b""))
                headers.append((b"etag", etag))
            headers += [(k, v) for k, v in own if k not in names]  # the app's own win
            if if_none_match is not None and etag_matches(if_none_match, etag):
                kept = [(k, v) for k, v in headers if k.lower() in _KEPT_ON_304]
                await send({"type": "http.response.start", "status": 304, "headers": kept})
                await send({"type": "http.response.body", "body": b""})
                return
            await send({**start, "headers": headers})
            await send(message)

        return validated
