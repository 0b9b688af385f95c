"""A miss: the loader's response captured on its way out, stored, and shared.

:class:`CacheMiss` wraps the edge's ``send`` for one load. A cacheable answer (200, or a 404
remembered briefly) is buffered, turned into an :class:`~cygate.edge.cache_entry.Entry`, put
into L1 at once, sent to the client (a 304 if its ``If-None-Match`` matches), handed to the
requests waiting for the same key, and written to L2 under the loader's lease. A 5xx with an
entry still inside ``stale_if_error`` is answered with that entry instead. Anything else passes
through untouched and the waiters load for themselves.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson

from cygate.edge.asgi import Message
from cygate.edge.cache_entry import MISS, STALE, Entry, storable_headers
from cygate.edge.problem import Problem

if TYPE_CHECKING:
    from cygate.edge.cache_rules import CacheRoute
    from cygate.infra.metrics import Counter

__all__ = ["BYPASS", "RETRY", "CacheMiss", "Flight", "MissStore", "Pending"]


RETRY = object()
"""Flight outcome: the loader vanished (its client went away); waiters try again."""
BYPASS = object()
"""Flight outcome: the answer was not cacheable; waiters load for themselves."""


class Pending:
    """What the cache's look-up learned about a request that missed, for its load."""

    __slots__ = ("current", "inm", "key", "no_cache", "route", "stale", "tags")

    def __init__(
        self,
        route: CacheRoute,
        key: bytes,
        inm: bytes | None,
        no_cache: bool,
        stale: Entry | None,
        tags: tuple[str, ...],
        current: Entry | None = None,
    ) -> None:
        self.current = current
        """A forced reload's entry in L1: a reload with its ETag changes nothing in L2."""
        self.route = route
        self.key = key
        self.inm = inm
        self.no_cache = no_cache
        self.stale = stale
        self.tags = tags


class Flight:
    """One load in progress in this process; other requests for the key await ``future``."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def resolve(self, outcome: Any) -> None:
        """Hand ``outcome`` to the waiters (once; a later outcome is ignored)."""
        if not self.future.done():
            self.future.set_result(outcome)


class MissStore(Protocol):
    """What a miss needs of the cache it fills (:class:`~cygate.edge.cache.ResponseCache`)."""

    epoch: int
    """Bumped by every invalidation: a fill begun in an older epoch does not enter L1."""
    max_entry_bytes: int
    """A response larger than this is streamed, not stored."""
    n_miss: Counter
    n_stale: Counter

    def land(self, key: bytes, flight: Flight | None, outcome: Any) -> None:
        """Finish a flight: waiters get ``outcome``; the next miss starts a new one."""

    def release_lease(self, key: bytes, token: str | None) -> None:
        """Give the key's L2 lease back (nothing stored under it)."""

    def answer(
        self, entry: Entry, label: bytes, inm: bytes | None, now: float
    ) -> tuple[Message, Message]:
        """The messages that answer with ``entry`` (a 304 when ``inm`` matches it)."""
        ...

    def store_local(self, key: bytes, entry: Entry, epoch: int) -> bool:
        """Put a freshly loaded entry into L1 unless an invalidation happened meanwhile."""
        ...

    def store_shared(self, key: bytes, entry: Entry, token: str | None) -> None:
        """Write ``entry`` to L2 under the lease, off the request's path."""


class CacheMiss:
    """Wraps the edge's ``send`` for one load: captures the response, stores it when it may,
    and answers the requests waiting for it. Without a pending look-up it passes through."""

    __slots__ = (
        "_body",
        "_buffering",
        "_cache",
        "_done",
        "_epoch",
        "_flight",
        "_headers",
        "_out",
        "_pending",
        "_size",
        "_started",
        "_status",
        "_swallow",
        "_token",
    )

    _CACHEABLE: ClassVar[frozenset[int]] = frozenset({200, 404})

    def __init__(
        self,
        cache: MissStore,
        pending: Pending | None,
        flight: Flight | None,
        out: Any,
        token: str | None = None,
    ) -> None:
        self._cache = cache
        self._pending = pending
        self._flight = flight
        self._out = out
        self._token = token
        self._epoch = cache.epoch
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._buffering = False
        self._swallow = False
        self._started = False
        self._done = False

    async def send(self, message: Message) -> None:
        """The ``send`` the loader's response goes through."""
        pending = self._pending
        if pending is None:
            await self._out(message)
            return
        if message["type"] == "http.response.start":
            self._started = True
            self._status = status = message["status"]
            self._headers = list(message.get("headers", ()))
            if status >= 500 and pending.stale is not None:
                self._swallow = True  # stale-if-error: answer with the old entry instead
            elif status in self._CACHEABLE:
                self._buffering = True
            else:
                self._finish(BYPASS)
                await self._out(message)
            return
        if self._swallow:
            if not message.get("more_body", False):
                await self._serve_stale()
            return
        if not self._buffering:
            await self._out(message)
            return
        chunk = message.get("body", b"")
        self._body.append(chunk)
        self._size += len(chunk)
        more = message.get("more_body", False)
        if self._size > self._cache.max_entry_bytes:
            await self._give_up(more)
        elif not more:
            await self._complete()

    async def failed(self, problem: Problem) -> bool:
        """The loader raised ``problem``. True when this answered instead (stale-if-error);
        else the waiting requests get the same problem (a 404 is also remembered)."""
        pending = self._pending
        if pending is None or self._started:
            return False
        if problem.status >= 500 and pending.stale is not None:
            await self._serve_stale()
            return True
        if problem.status == 404:
            problem.headers.setdefault("x-cache", "miss")
            self._remember_404(problem.detail)
        else:
            self._finish(problem)
        return False

    def close(self) -> None:
        """Called by the edge when the request ends, however it ended."""
        if self._pending is not None and not self._done:
            self._finish(RETRY)

    # -- internals ---------------------------------------------------------------------------

    def _finish(self, outcome: Any) -> None:
        """Hand ``outcome`` to the waiting requests; give the lease back unless an entry is
        about to be stored under it."""
        self._done = True
        assert self._pending is not None
        self._cache.land(self._pending.key, self._flight, outcome)
        if not isinstance(outcome, tuple) or outcome[1] is STALE:
            self._cache.release_lease(self._pending.key, self._token)
            self._token = None

    async def _serve_stale(self) -> None:
        pending = self._pending
        assert pending is not None and pending.stale is not None
        self._cache.n_stale.value += 1
        self._finish((pending.stale, STALE))
        start, body = self._cache.answer(pending.stale, STALE, pending.inm, time.monotonic())
        await self._out(start)
        await self._out(body)

    async def _give_up(self, more: bool) -> None:
        # Too big to store: send what we hold and stream the rest.
        self._buffering = False
        self._finish(BYPASS)
        await self._out(
            {"type": "http.response.start", "status": self._status, "headers": self._headers}
        )
        body, self._body = b"".join(self._body), []
        await self._out({"type": "http.response.body", "body": body, "more_body": more})

    async def _complete(self) -> None:
        pending = self._pending
        assert pending is not None
        cache = self._cache
        body = b"".join(self._body)
        rule = pending.route.rule
        base = storable_headers(self._headers, rule, frozenset(pending.route.spec.header_names))
        if self._status == 404:
            detail = _problem_detail(body) if base is not None else None
            if detail is not None:
                self._remember_404(detail)
            else:
                self._finish(BYPASS)
            await self._out(
                {"type": "http.response.start", "status": 404, "headers": self._headers}
            )
            await self._out({"type": "http.response.body", "body": body})
            return
        if base is None:
            self._finish(BYPASS)
            await self._out(
                {"type": "http.response.start", "status": self._status, "headers": self._headers}
            )
            await self._out({"type": "http.response.body", "body": body})
            return
        entry = Entry.response(
            self._status, base, body, rule, pending.tags, time.time(), pending.route.extra
        )
        cache.n_miss.value += 1
        cache.store_local(pending.key, entry, self._epoch)
        self._finish((entry, MISS))
        start, body_message = cache.answer(entry, MISS, pending.inm, time.monotonic())
        await self._out(start)
        await self._out(body_message)
        # PERF: L2 after the client has its answer, batched with this loop turn's other
        # stores; the lease keeps other instances waiting meanwhile.
        token, self._token = self._token, None
        current = pending.current
        if current is not None and current.etag == entry.etag and current.detail is None:
            cache.release_lease(pending.key, token)  # revalidated: the same body, L2 unchanged
        else:
            cache.store_shared(pending.key, entry, token)

    def _remember_404(self, detail: str) -> None:
        pending = self._pending
        assert pending is not None
        rule = pending.route.rule
        if rule.not_found_ttl <= 0:
            self._finish(Problem(404, detail))
            return
        cache = self._cache
        entry = Entry.not_found(detail, rule, pending.tags, time.time())
        cache.store_local(pending.key, entry, self._epoch)
        token, self._token = self._token, None
        self._finish((entry, MISS))
        cache.store_shared(pending.key, entry, token)


def _problem_detail(body: bytes) -> str | None:
    """The ``detail`` of a problem document, or None if the body is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    detail = doc.get("detail") if isinstance(doc, dict) else None
    return detail if isinstance(detail, str) else None
