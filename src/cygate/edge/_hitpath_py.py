"""The edge's fused hit path: the pure-Python twin of ``_hitpath_c``, and the reference for it.

A fresh L1 hit of a plain ``GET`` is most of a busy gateway's traffic (cygate-full's request:
route, token from the verifier's cache, one rate-limit token, L1). Through the general edge it
makes dozens of objects and runs several Python frames (the context, two stages, the cache
look-up), allocation-heavy work the server amplifies (docs/caching.md; numbers in
docs/benchmarks.md). :meth:`HitPath.answer` does the same decisions in one call, with no
context object, and answers
only when the request is that common case; for anything else it returns None *before any side
effect* and the general edge serves the request from the start, as if this path did not exist.
:meth:`HitPath.serve` is what the edge calls: the awaitable that sends the answer, or None.

What it answers, and what the general edge would answer for the same request:

- ``GET`` with exactly one, non-empty ``Host`` (RFC 9112: else the general path's 400), no
  ``Content-Length``, no ``?`` in the raw path, a path that normalises, a route that resolves
  to a ``local`` target with a cache rule;
- token: the route's ``auth``/``roles`` as the token stage decides them, for a token that the
  verifier accepts (from its cache or not), whose ``jti`` is not revoked
  (:attr:`~cygate.services.identity.revocation.Revocations.revoked`) and whose roles fit; a
  missing token on a public route (anonymous). Every refusal and a key refresh: the general
  path;
- rate limit: a route with one limit keyed by nothing, ``caller``, ``sub``, ``route`` or
  ``ip`` (no trusted proxies) that its table decides here (local GCRA, or a lease with tokens
  left); refusals and Redis questions go to the general path. Decided *after* the cache
  look-up, the only side effect, so a fallback never spends a token twice. A hit declined only
  because its batched limit's lease ran out or expired says so (:attr:`HitPath.lease_miss`):
  the edge reserves a lease (``RateLimitStage.lease``) and asks this path once more;
- cache: a fresh, non-404 L1 entry for the request's key, no ``Cache-Control``/``Pragma``/
  ``If-None-Match`` on the request;
- CORS and compression (``plan.cors``, ``plan.compression``): no ``Origin`` while CORS is on
  (a cross-origin answer is the general path's); for an entry the edge would compress and a
  request whose ``Accept-Encoding`` negotiates a coding, the variant the compression keeps
  for the entry's tag (``Compression.kept``), smaller than the body: the answer is that
  variant, its ``Content-Length``, suffixed ``ETag`` and ``Content-Encoding`` (none kept yet:
  the general path's, which compresses and keeps it). The answer gets the ``Vary`` headers the
  general path gives it.

The answer's headers are the general path's, in its order: the entry's (with ``x-cache`` and
``age``), ``x-request-id``, ``traceparent``, the security headers, ``RateLimit-*``, then
``Vary: Origin`` (CORS on), ``Vary: Accept-Encoding`` (an entry the edge would compress) and
``Content-Encoding`` (a kept variant).
``tests/unit/edge/test_hitpath.py`` holds both paths to that, request by request.

What it reads: one :class:`~cygate.edge.hitplan.HitPlan` (the router, the cache's routes and
the rate-limit plans of one generation; the edge builds a new plan and a new ``HitPath`` when
any of them changes), and, live, only public interfaces: ``L1.get``, ``Entry.hit``,
``Revocations.revoked``, the rate tables' ``hit``/``take``/``append_headers``,
``RateLimitStage.top_up``. Rate-limit keys are spelled by :mod:`cygate.edge.ratekey`, as the
rate-limit stage spells them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from cygate.core.ids import valid_request_id, valid_traceparent
from cygate.core.ratelimit import GRANTED, NEED_REDIS
from cygate.core.router import FOUND, normalize_path
from cygate.edge.compress import VARY_ACCEPT_ENCODING
from cygate.edge.cors import VARY_ORIGIN
from cygate.edge.hitplan import HitPlan
from cygate.edge.ratekey import ANONYMOUS, EVERYONE, address_key, principal_key, route_key

__all__ = ["Head", "Hit", "HitPath", "LoggedHitPath", "bearer_token", "scan_head"]

_REFRESH = "cygate.cache.refresh"
_BEARER = b"bearer "
_KEY_PARTS = frozenset({(), ("caller",), ("sub",), ("route",), ("ip",)})


def bearer_token(header: bytes) -> bytes | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive), else None."""
    if header[:7].lower() != _BEARER:
        return None
    return header[7:].strip(b" ")


class Head:
    """What :func:`scan_head` found in a request's headers: the one scan of them that both the
    fused hit path and the general edge use (the edge gets the hit path's when it declines a
    request after scanning it: ``HitPath.last_head``)."""

    __slots__ = (
        "accept_encoding",
        "authorization",
        "chunked",
        "conditional",
        "content_length",
        "content_type",
        "empty_host",
        "host",
        "hosts",
        "odd",
        "origin",
        "request_id",
        "traceparent",
    )

    def __init__(self) -> None:
        self.authorization: bytes | None = None
        """The first ``Authorization`` header."""
        self.host = ""
        """The last ``Host``, lower-cased and without its port (``host_of``)."""
        self.hosts = 0
        """How many ``Host`` headers."""
        self.empty_host = False
        """A ``Host`` header was empty."""
        self.request_id = b""
        """The last valid ``X-Request-ID`` (``valid_request_id``), else empty."""
        self.traceparent = b""
        """The last valid ``traceparent`` (``valid_traceparent``), else empty."""
        self.content_length = -1
        """The last ``Content-Length``: -1 none, -2 not a number."""
        self.content_type: bytes | None = None
        """The last ``Content-Type``."""
        self.chunked = False
        """A ``Transfer-Encoding`` header was sent."""
        self.conditional = False
        """A ``Cache-Control``, ``Pragma`` or ``If-None-Match`` header was sent."""
        self.accept_encoding: bytes | None = None
        """The last ``Accept-Encoding``."""
        self.origin: bytes | None = None
        """The last ``Origin``."""
        self.odd = False
        """A header name or value that is not bytes (never from a server; the compiled scan
        skips such a pair)."""


def scan_head(
    headers: Iterable[tuple[bytes, bytes]],
    hosts: Mapping[bytes, str],
    host_of: Callable[[bytes], str],
) -> Head:
    """One pass over a request's headers (names arrive lower-cased: ASGI). ``hosts`` maps
    the ``Host`` values seen to their form; ``host_of`` makes (and remembers) a new one's."""
    head = Head()
    for name, value in headers:
        if name == b"authorization":
            if head.authorization is None:
                head.authorization = value
        elif name == b"host":
            # PERF: clients repeat a few Host values; each is lower-cased once.
            head.host = hosts.get(value) or host_of(value)
            head.hosts += 1
            if not value:
                head.empty_host = True
        elif name == b"x-request-id":
            if valid_request_id(value):
                head.request_id = value
        elif name == b"traceparent":
            if valid_traceparent(value):
                head.traceparent = value
        elif name == b"content-length":
            head.content_length = int(value) if value.isdigit() else -2
        elif name == b"content-type":
            head.content_type = value
        elif name == b"transfer-encoding":
            head.chunked = True
        elif name in (b"cache-control", b"pragma", b"if-none-match"):
            head.conditional = True
        elif name == b"accept-encoding":
            head.accept_encoding = value
        elif name == b"origin":
            head.origin = value
    return head


class Hit:
    """An answer: the two messages to send, then :meth:`done` (counts the request)."""

    __slots__ = ("body", "owner", "route", "start", "started", "status")

    def __init__(
        self,
        owner: HitPath,
        route: str,
        status: int,
        started: float,
        start: dict[str, Any],
        body: Any,
    ) -> None:
        self.owner = owner
        """The hit path that answered (its recorder counts the request)."""
        self.route = route
        self.status = status
        self.started = started
        self.start = start
        self.body = body

    def done(self) -> None:
        """Record the request in the edge's metrics (its status, timed from ``started``)."""
        self.owner.recorder.observe_since(self.route, "GET", self.status, self.started)


class EntryHot:
    """What the compiled hit path reads of a cache entry (``cygate.edge.cache_entry.Entry``
    keeps it as ``hot``): the deadlines (mirrored by ``place``), the hit headers and the
    whole-second age they were built for (kept here only, by ``Entry.hit``), the status,
    whether it may be served (not a remembered 404), the body message, and the body's size
    when the edge would compress it for a client that asks (-1: it would not).

    PERF: compiled, these are C fields of one small object, read in place: a hit of one of a
    thousand entries in turn reads one cold object instead of seven attributes and the
    number objects behind them. This twin is the same record in Python (the pure hit path
    calls the entry's own methods)."""

    __slots__ = (
        "age",
        "body_message",
        "born",
        "encodable",
        "fresh_until",
        "hit",
        "servable",
        "status",
    )

    def __init__(self, status: int, servable: bool, body_message: Any, encodable: int = -1) -> None:
        self.status = status
        self.encodable = encodable
        self.servable = servable
        self.body_message = body_message
        self.born = 0.0
        self.fresh_until = 0.0
        self.age = -1
        self.hit: tuple[tuple[bytes, bytes], ...] = ()


async def _send(hit: Hit, send: Any) -> None:
    try:
        await send(hit.start)
        await send(hit.body)
    finally:
        hit.done()


class HitPath:
    """See the module docstring. Built by the edge (``Edge._rebuild_hit_path``) over a
    :class:`~cygate.edge.hitplan.HitPlan`; a new plan, a new ``HitPath``."""

    __slots__ = (
        "cache",
        "caller_key",
        "compression",
        "cors",
        "host_of",
        "hosts",
        "ids",
        "l1",
        "last_head",
        "lease_miss",
        "plan",
        "rate",
        "rate_plans",
        "recorder",
        "revocations",
        "router",
        "routes",
        "security",
        "token",
        "trusted",
        "verifier",
    )

    def __init__(self, *, plan: HitPlan) -> None:
        self.plan = plan
        self.router = plan.router
        self.cache = plan.cache
        self.routes = plan.routes
        self.l1 = plan.cache.l1
        token = plan.token
        self.token = token
        self.verifier: Any = token.verifier if token is not None else None
        self.revocations: Any = token.revocations if token is not None else None
        self.rate = plan.rate
        self.rate_plans = plan.rate_plans
        self.security = plan.security
        self.trusted = plan.trusted
        self.caller_key = plan.caller_key
        self.recorder = plan.recorder
        self.ids = plan.ids
        self.hosts = plan.hosts
        self.host_of = plan.host_of
        self.cors = plan.cors
        self.compression = plan.compression
        self.last_head: Head | None = None
        """The scan of the last request :meth:`answer` declined after scanning it, else None:
        what the general edge then uses instead of scanning again."""
        self.lease_miss: tuple[Any, Any, str] | None = None
        """After a None from :meth:`answer`: (the rate-limit stage, the limit, the key) when
        the request was a hit in every other way and its batched limit's lease for the key ran
        out or expired (Redis must be asked), else None."""

    def serve(self, scope: MutableMapping[str, Any], send: Any) -> Awaitable[None] | None:
        """What the edge awaits for a hit (its two messages sent through ``send``, then the
        request counted, even when a send fails), or None: as :meth:`answer`."""
        hit = self.answer(scope)
        return None if hit is None else _send(hit, send)

    def answer(self, scope: MutableMapping[str, Any]) -> Hit | None:
        """The hit for ``scope``, or None: then the general edge serves it (nothing changed;
        :attr:`last_head` holds the scan of its headers, if it got that far)."""
        self.last_head = None
        self.lease_miss = None
        if scope["type"] != "http" or scope["method"] != "GET" or _REFRESH in scope:
            return None
        head = scan_head(scope["headers"], self.hosts, self.host_of)
        hit = self._answer(scope, head)
        if hit is None:
            self.last_head = head
        return hit

    def _answer(self, scope: MutableMapping[str, Any], head: Head) -> Hit | None:
        started = time.perf_counter()
        headers = scope["headers"]
        if head.hosts != 1 or head.empty_host:
            return None  # no Host, a second one, an empty one: the general path's (a 400)
        if head.content_length != -1 or head.odd:
            return None
        if self.cors and head.origin is not None:
            return None  # a cross-origin request: the general path adds its CORS headers
        authorization = head.authorization
        host = head.host
        request_id = head.request_id
        traceparent = head.traceparent
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        if b"?" in raw_path:
            return None
        try:
            path = normalize_path(raw_path)
        except Exception:
            return None
        match = self.router.match("GET", path, host or None)
        if match.kind != FOUND:
            return None
        policy = match.value
        if policy.target != "local" or policy.cache is None:
            return None
        route_name: str = policy.name
        route = self.routes.get(route_name)
        if route is None:
            return None

        principal = None
        if self.token is not None:
            token = bearer_token(authorization) if authorization is not None else None
            if token is None:
                if policy.auth or policy.roles:
                    return None  # the 401
            else:
                try:
                    principal = self.verifier.verify(token)
                except Exception:
                    return None
                if principal.jti in self.revocations.revoked:
                    return None  # revoked: the token stage refuses it
                if policy.roles and policy.roles.isdisjoint(principal.roles):
                    return None  # the 403

        caller = None
        if route.private:
            if principal is None:
                return None
            caller = self.caller_key(principal)
        spec = route.spec
        key = spec.key("GET", path, scope.get("query_string", b""), headers, caller)
        if spec.cache_control is not None or spec.if_none_match is not None:
            return None
        # (equally: ``head.conditional`` for a Pragma; ``spec.key`` read those headers)
        if head.conditional:
            return None
        now = time.monotonic()
        entry = self.l1.get(key, now)
        if entry is None or now >= entry.fresh_until or entry.detail is not None:
            return None
        vary_encoding = False
        kept = None
        compression = self.compression
        if compression is not None and compression.min_bytes <= entry.hot.encodable:
            coding = compression.coding_for(head.accept_encoding)
            if coding is not None:
                kept = compression.kept(entry.etag, coding)
                if kept is None or len(kept.value.body) >= entry.hot.encodable:
                    return None  # none kept yet, or no smaller: the general path's
            vary_encoding = True

        limited = None
        rate = self.rate
        if rate is not None:
            plan = self.rate_plans.get(route_name)
            if plan is not None:
                limited = self._take(scope, rate, plan, route_name, principal)
                if limited is None:
                    return None

        self.cache.l1_hits += 1
        start, body = entry.hit(now)
        out = list(start["headers"])
        if kept is not None:
            assert compression is not None
            variant = kept.value
            compression.served(kept)
            body = variant.message
            out = [
                variant.length if k == b"content-length" else variant.etag if k == b"etag" else h
                for h in out
                for k in (h[0],)
            ]
        if not request_id or not traceparent:
            _, new_id, new_trace = self.ids.take()  # (the edge's minter, the plan's)
            request_id = request_id or new_id
            traceparent = traceparent or new_trace
        out.append((b"x-request-id", request_id))
        out.append((b"traceparent", traceparent))
        out.extend(self.security)
        if limited is not None:
            table, single, plan = limited
            table.append_headers(out, single.limit_pair, plan.policy_pair)
        if self.cors:
            out.append(VARY_ORIGIN)
        if vary_encoding:
            out.append(VARY_ACCEPT_ENCODING)
        if kept is not None:
            out.append(kept.value.encoding)
        start["headers"] = out
        return Hit(self, route_name, start["status"], started, start, body)

    def _take(
        self, scope: MutableMapping[str, Any], rate: Any, plan: Any, name: str, principal: Any
    ) -> tuple[Any, Any, Any] | None:
        """One token of the route's single limit: (table, limit, plan), or None (fall back)."""
        single = plan.single
        if single is None or single.parts not in _KEY_PARTS:
            return None
        parts = single.parts
        if not parts:
            key = EVERYONE
        elif parts[0] == "route":
            key = route_key(name)
        elif principal is not None and parts[0] != "ip":
            key = principal_key(principal.sub)
        elif parts[0] == "sub":
            key = ANONYMOUS
        else:  # caller (anonymous) or ip: the socket peer, unless proxies are trusted
            if self.trusted:
                return None
            client = scope.get("client")
            key = address_key(client[0] if client else "")
        if single.mode == "local":
            table = single.gcra
            if not table.hit(key):
                return None
        else:
            table = single.leases
            taken = table.take(key)
            if taken != GRANTED:
                if taken == NEED_REDIS:
                    self.lease_miss = (rate, single, key)
                return None
            if table.tokens < single.low_water and key not in single.inflight:
                rate.top_up(single, key, table.tokens)
        single.n_allowed.value += 1
        return table, single, plan


class LoggedHitPath:
    """A :class:`HitPath` whose answers the access log samples (``cygate.infra.accesslog``):
    the edge serves through it only when an access log is on, so with none the hit path is
    exactly the one above, at no cost. A sampled hit's record is handed to the log when its
    two messages are sent (the log queues it; a thread formats and writes it); others are
    the inner path's answers as they are."""

    __slots__ = ("access", "inner")

    def __init__(self, inner: HitPath, access: Any) -> None:
        self.inner = inner
        self.access = access
        """The ``AccessLog``: its ``sample``, ``queue``, ``capacity`` and ``dropped``."""

    @property
    def last_head(self) -> Head | None:
        return self.inner.last_head

    @property
    def lease_miss(self) -> tuple[Any, Any, str] | None:
        return self.inner.lease_miss

    def serve(self, scope: MutableMapping[str, Any], send: Any) -> Awaitable[None] | None:
        """As :meth:`HitPath.serve`; a sampled hit is also recorded once sent."""
        hit = self.inner.answer(scope)
        if hit is None:
            return None
        access = self.access
        if access.sample < 1.0 and random.random() >= access.sample:
            return _send(hit, send)
        return _send_logged(self, hit, scope, send)

    def record(self, hit: Hit, scope: MutableMapping[str, Any]) -> None:
        """Queue the record of ``hit`` (dropped and counted when the queue is full)."""
        access = self.access
        queue = access.queue
        if len(queue) >= access.capacity:
            access.dropped.value += 1
            return
        request_id = traceparent = b""
        for name, value in hit.start["headers"]:
            if name == b"x-request-id":
                request_id = value
            elif name == b"traceparent":
                traceparent = value
                break
        client = scope.get("client")
        limited = self.inner.rate is not None and hit.route in self.inner.rate_plans
        queue.append(
            (
                time.time(),
                "GET",
                hit.route,
                scope["path"],
                hit.status,
                time.perf_counter() - hit.started,
                len(hit.body.get("body", b"")),
                "hit-l1",
                "allowed" if limited else "",
                "",
                client[0] if client else "",
                request_id,
                traceparent,
                scope["headers"],
            )
        )


async def _send_logged(
    path: LoggedHitPath, hit: Hit, scope: MutableMapping[str, Any], send: Any
) -> None:
    try:
        await send(hit.start)
        await send(hit.body)
    finally:
        hit.done()
        path.record(hit, scope)
