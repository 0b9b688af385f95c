"""The reverse proxy: the edge's ``upstream`` dispatcher.

For a route whose policy targets an upstream, :class:`UpstreamProxy` (an ``async (ctx, receive,
send)`` callable) checks the circuit breaker, takes a bulkhead slot, picks a target, writes the
request on a pooled keep-alive connection and streams the response back, all under the route's
total deadline. Headers: hop-by-hop ones are dropped both ways, ``X-Forwarded-*`` and
``Forwarded`` are set (a client's own values are believed only from trusted proxies), the request
id and ``traceparent`` go along, and identity headers come only from the verified principal.

Retries happen only for idempotent requests whose body is in hand (empty, or read first up to
``retry.buffer_bytes``), only before anything was sent to the client, only within the retry
budget, and go to another target when there is one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

from cygate.edge.asgi import Receive, Send
from cygate.edge.context import TrustedProxies
from cygate.edge.edge import ResponseAborted
from cygate.edge.problem import Problem
from cygate.infra import tracing
from cygate.upstream.client import (
    ConnectError,
    Connection,
    ConnectionLost,
    ReadTimeout,
    TotalTimeout,
    UpstreamError,
)
from cygate.upstream.resilience import CLOSED, Shed

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from cygate.edge.context import EdgeContext
    from cygate.infra.metrics import Metrics
    from cygate.upstream.config import RouteConfig
    from cygate.upstream.targets import Target, Upstream

__all__ = ["DEFAULT_TIMEOUTS", "IDEMPOTENT", "ProxyRoute", "UpstreamProxy"]

log = logging.getLogger("cygate.proxy")


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    }
)  # fmt: skip
# Request headers the proxy writes itself (a client's copy is read, then replaced).
_SET_BY_PROXY = frozenset(
    {
        b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
        b"x-forwarded-host", b"forwarded", b"x-request-id", b"traceparent",
    }
)  # fmt: skip
# Response headers the edge adds on every response: the upstream's copies are dropped.
EDGE_RESPONSE_HEADERS = frozenset(
    {
        b"x-request-id", b"traceparent", b"x-content-type-options", b"x-frame-options",
        b"referrer-policy", b"strict-transport-security",
    }
)  # fmt: skip
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_SCHEMES = {"http": b"http", "https": b"https"}
_NEEDS_QUOTE = re.compile(r"[^A-Za-z0-9/:@!$&'()*+,;=\-._~]").search
_QUERY_OK = frozenset(range(0x21, 0x7F)) - {ord("#")}
_FORWARDING_CACHE = 4096
# Connection header values that name no other header (the common ones: nothing more to drop).
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close"})
DEFAULT_TIMEOUTS = {"connect": 2.0, "read": 30.0, "total": 60.0}


class ProxyRoute:
    """What the proxy needs for one file route, resolved once when the table is built."""

    __slots__ = (
        "add_prefix",
        "config",
        "connect_timeout",
        "identity",
        "max_body",
        "name",
        "preserve_host",
        "read_timeout",
        "retries",
        "set_request",
        "set_response",
        "skip_request",
        "skip_response",
        "strip_prefix",
        "total_timeout",
        "upstream",
    )

    def __init__(self, route: RouteConfig, upstream: Upstream, *, name: str, max_body: int) -> None:
        cfg = upstream.cfg
        self.config = route
        self.name = name
        self.upstream = upstream
        self.strip_prefix = route.strip_prefix
        self.add_prefix = route.add_prefix
        self.preserve_host = route.preserve_host
        self.max_body = route.max_body_bytes or max_body
        self.connect_timeout: float = (
            route.timeouts.connect or cfg.timeouts.connect or DEFAULT_TIMEOUTS["connect"]
        )
        self.read_timeout: float = (
            route.timeouts.read or cfg.timeouts.read or DEFAULT_TIMEOUTS["read"]
        )
        self.total_timeout: float = (
            route.timeouts.total or cfg.timeouts.total or DEFAULT_TIMEOUTS["total"]
        )
        self.retries = route.retries if route.retries is not None else cfg.retry.attempts
        ids = cfg.identity_headers
        self.identity = tuple(
            h.lower().encode("latin-1") for h in (ids.subject, ids.roles, ids.client_id, ids.issuer)
        )
        request_set = {k.lower(): v for k, v in route.request_headers.set.items()}
        self.set_request = [
            k.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n"
            for k, v in request_set.items()
        ]
        self.skip_request = (
            HOP_BY_HOP
            | _SET_BY_PROXY
            | frozenset(self.identity)
            | frozenset(h.lower().encode("latin-1") for h in cfg.strip_request_headers)
            | frozenset(h.lower().encode("latin-1") for h in route.request_headers.remove)
            | frozenset(k.encode("latin-1") for k in request_set)
        )
        response_set = {k.lower(): v for k, v in route.response_headers.set.items()}
        self.set_response = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in response_set.items()
        ]
        self.skip_response = (
            HOP_BY_HOP
            | EDGE_RESPONSE_HEADERS
            | frozenset(h.lower().encode("latin-1") for h in route.response_headers.remove)
            | frozenset(k.encode("latin-1") for k in response_set)
        )


def _too_slow(up: Upstream, route: ProxyRoute) -> Problem:
    return Problem(504, f"upstream {up.name!r} did not answer within {route.total_timeout:g} s")


def _circuit_open(up: Upstream) -> Problem:
    return Problem(
        503,
        f"upstream {up.name!r} is unavailable (circuit open)",
        headers={"retry-after": str(up.breaker.retry_after())},
    )


class _Exchange:
    """What one proxied request has done so far (read by the error paths)."""

    __slots__ = ("outcome", "started", "status", "target")

    def __init__(self) -> None:
        self.started = False
        self.status = 0
        self.outcome = ""
        self.target: Target | None = None


class UpstreamProxy:
    """``await proxy(ctx, receive, send)`` for requests whose route targets an upstream."""

    __slots__ = ("_any_trusted", "_forwarding", "_tracing", "metrics", "trusted")

    direct = True
    """Adds the edge's response headers itself (see :attr:`cygate.edge.edge.Edge.upstream`)."""

    def __init__(self, metrics: Metrics, trusted: TrustedProxies | None = None) -> None:
        self.metrics = metrics
        self.trusted = trusted or TrustedProxies()
        self._any_trusted = bool(self.trusted)
        # PERF: (peer, scheme, host) -> the forwarding headers for a peer that is not a trusted
        # proxy (they depend on nothing else); emptied when it grows past _FORWARDING_CACHE.
        self._forwarding: dict[tuple[str, bytes, bytes], bytes] = {}
        self._tracing = tracing.current()  # (None: tracing off; no span, nothing checked)

    async def __call__(self, ctx: EdgeContext, receive: Receive, send: Send) -> None:
        route: ProxyRoute | None = getattr(ctx.policy, "proxy", None)
        if route is None:
            raise Problem(502, f"no upstream configured for target {ctx.policy.target!r}")
        up = route.upstream
        metrics = self.metrics
        breaker = up.breaker
        admitted = False
        if breaker.state != CLOSED:
            if not breaker.allow():
                metrics.upstream_shed(up.name, route.name, "circuit_open")
                raise _circuit_open(up)
            admitted = True  # a half-open probe
        started = time.perf_counter()
        ex = _Exchange()
        loop = up.loop or asyncio.get_running_loop()
        deadline = loop.time() + route.total_timeout
        traced = self._tracing
        span = token = None
        if traced is not None and traced.tracer_active():
            # The exchange's span (retries included); the upstream's traceparent names it as
            # the parent (``ctx.traceparent`` is what _request_head sends; the client's answer
            # was already given the edge's).
            span = traced.start(
                f"{ctx.method} {up.name}",
                kind="client",
                attributes={
                    "http.request.method": ctx.method,
                    "http.route": route.name,
                    "cygate.upstream": up.name,
                },
            )
            token = traced.use(span)
            if span.get_span_context().is_valid:
                ctx.traceparent = traced.traceparent(span).encode()
        try:
            if not up.bulkhead.try_acquire():
                await up.bulkhead.acquire(deadline - loop.time())
            try:
                if not admitted:  # it may have opened while we queued
                    admitted = breaker.state == CLOSED or breaker.allow()
                if admitted:
                    await self._exchange(ctx, receive, send, route, up, ex, deadline)
                else:
                    ex.outcome = "circuit_open"
            finally:
                up.bulkhead.release()
        except Shed as shed:
            if loop.time() >= deadline - 0.001:
                ex.outcome = "timeout"
                raise _too_slow(up, route) from None
            ex.outcome = "shed"
            metrics.upstream_shed(up.name, route.name, "bulkhead")
            raise Problem(
                503,
                f"upstream {up.name!r} is at capacity ({shed.reason}); try again shortly",
                headers={"retry-after": "1"},
            ) from None
        finally:
            if admitted:
                if ex.outcome in ("shed", "client_gone", ""):
                    breaker.release()  # no verdict on the upstream
                else:
                    breaker.record(ex.outcome == "ok")
            metrics.upstream_request(
                up.name, route.name, ex.outcome or "error", time.perf_counter() - started
            )
            if span is not None:
                _end_span(traced, span, token, ex)
        if ex.outcome == "circuit_open":
            metrics.upstream_shed(up.name, route.name, "circuit_open")
            raise _circuit_open(up)

    # -- one request --------------------------------------------------------------------------

    async def _exchange(
        self,
        ctx: EdgeContext,
        receive: Receive,
        send: Send,
        route: ProxyRoute,
        up: Upstream,
        ex: _Exchange,
        deadline: float,
    ) -> None:
        method = ctx.method
        head_rest, length, chunked, idempotent = self._request_head(ctx, route)
        body = b""
        streamed = False
        limit = ctx.policy.max_body_bytes or route.max_body
        if chunked or length > up.cfg.retry.buffer_bytes:
            streamed = True
        elif length > 0:
            body = await _read_body(receive, length)
        replayable = idempotent and not streamed
        attempts = 1 + (route.retries if replayable else 0)
        path = self._path(ctx, route)
        head_only = method == "HEAD"
        avoid: Target | None = None
        attempt = 0
        up.budget.deposit()
        while True:
            target = up.pick(ctx, avoid)
            ex.target = target
            head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (
                method.encode("ascii"),
                (target.base_path + path).encode("latin-1"),
                ctx.header(b"host")
                if route.preserve_host and ctx.header(b"host")
                else (target.host_header),
                head_rest,
            )
            target.outstanding += 1
            conn: Connection | None = target.pool.take_idle()
            try:
                if streamed:
                    conn = await self._send_streamed(
                        conn, target, route, head, receive, chunked, length, limit, head_only,
                        deadline,
                    )  # fmt: skip
                    status, headers = await conn.read_head()
                else:
                    # PERF: the common case inline (no extra coroutine per request).
                    reused = conn is not None
                    if conn is None:
                        conn = await self._connect(target, route, deadline)
                    conn.begin(head_only=head_only, skip=route.skip_response)
                    conn.arm(route.read_timeout, deadline)
                    conn.write(head + body if body else head)
                    try:
                        status, headers = await conn.read_head()
                    except ConnectionLost as exc:
                        # NOTE: a pooled connection the upstream closed just before we wrote
                        # (its keep-alive timeout) returns nothing: send a replayable request
                        # once more on a fresh connection; not an upstream failure.
                        if not (reused and replayable) or exc.received:
                            raise
                        conn.close()
                        conn = None
                        conn = await self._connect(target, route, deadline)
                        conn.begin(head_only=head_only, skip=route.skip_response)
                        conn.arm(route.read_timeout, deadline)
                        conn.write(head + body if body else head)
                        status, headers = await conn.read_head()
            except UpstreamError as exc:
                target.outstanding -= 1
                if conn is not None:
                    conn.close()
                up.record(target, False)
                ex.outcome = "timeout" if exc.kind == "timeout" else f"{exc.kind}_error"
                if isinstance(exc, TotalTimeout):
                    raise _too_slow(up, route) from None
                if replayable and attempt < attempts - 1 and up.budget.try_withdraw():
                    attempt += 1
                    avoid = target
                    self.metrics.upstream_retry(up.name, route.name)
                    continue
                log.warning("upstream %s: %s (%s)", up.name, exc, target.url)
                if isinstance(exc, ReadTimeout):
                    raise Problem(504, f"upstream {up.name!r} timed out") from None
                raise Problem(502, f"upstream {up.name!r} failed: {exc.kind}") from None
            except BaseException:
                target.outstanding -= 1
                if conn is not None:
                    conn.close()
                raise
            failed = status in up.failure_statuses
            if (
                status in up.retry_on
                and replayable
                and attempt < attempts - 1
                and up.budget.try_withdraw()
            ):
                target.outstanding -= 1
                conn.close()
                up.record(target, not failed)
                attempt += 1
                avoid = target
                self.metrics.upstream_retry(up.name, route.name)
                continue
            break
        # The response: from here on nothing is retried.
        ex.status = status
        try:
            out = _response_headers(headers, route, conn.connection)
            direct = ctx.direct_headers
            if direct is not None:  # the edge's headers are ours to add (see Edge.upstream)
                out += direct
                if ctx.response_headers:
                    out += ctx.response_headers
                ctx.status = status
            if conn.has_body_ready:  # PERF: a small response is whole already: two sends
                data = conn.take_body()
                await send({"type": "http.response.start", "status": status, "headers": out})
                ex.started = True
                await send({"type": "http.response.body", "body": data})
            else:
                await send({"type": "http.response.start", "status": status, "headers": out})
                ex.started = True
                more = True
                while more:
                    data, more = await conn.read_body()
                    await send({"type": "http.response.body", "body": data, "more_body": more})
        except UpstreamError as exc:
            conn.close()
            up.record(target, False)
            ex.outcome = "timeout" if exc.kind == "timeout" else f"{exc.kind}_error"
            log.warning("upstream %s: response cut: %s (%s)", up.name, exc, target.url)
            raise ResponseAborted(f"upstream {up.name!r} failed mid-response") from None
        except BaseException:
            conn.close()
            raise
        finally:
            target.outstanding -= 1
        up.record(target, not failed)
        ex.outcome = "ok" if not failed else str(status)
        target.pool.release(conn)

    async def _send_streamed(
        self,
        conn: Connection | None,
        target: Target,
        route: ProxyRoute,
        head: bytes,
        receive: Receive,
        chunked: bool,
        length: int,
        limit: int,
        head_only: bool,
        deadline: float,
    ) -> Connection:
        """Write the head, then copy the client's body as it arrives (not replayable)."""
        if conn is None:
            conn = await self._connect(target, route, deadline)
        conn.begin(head_only=head_only, skip=route.skip_response)
        try:
            conn.write(head)
            # NOTE: a slow client upload is bounded by the deadline too (a slow path, so an
            # asyncio.timeout is fine here); the upstream's silence is not timed meanwhile.
            async with asyncio.timeout_at(deadline):
                await _stream_body(conn, receive, chunked, length, limit)
        except TimeoutError:
            conn.close()
            raise TotalTimeout("the total timeout passed during the upload") from None
        except BaseException:
            conn.close()
            raise
        conn.arm(route.read_timeout, deadline)
        return conn

    @staticmethod
    async def _connect(target: Target, route: ProxyRoute, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        left = deadline - loop.time()
        limit = min(route.connect_timeout, left)
        try:
            async with asyncio.timeout(limit):
                return await target.pool.connect()
        except TimeoutError:
            if limit >= left:
                raise TotalTimeout("the total timeout passed while connecting") from None
            raise ConnectError(
                f"connect to {target.url} timed out after {route.connect_timeout:g} s"
            ) from None

    # -- request head -------------------------------------------------------------------------

    def _path(self, ctx: EdgeContext, route: ProxyRoute) -> str:
        path = ctx.path
        if route.strip_prefix:
            path = path[len(route.strip_prefix) :]
            if not path.startswith("/"):
                path = "/" + path
        if route.add_prefix:
            path = route.add_prefix + (path if path != "/" else "")
        # PERF: most paths need no escaping; quote() only when something does.
        quoted = quote(path, safe=_PATH_SAFE) if _NEEDS_QUOTE(path) else path
        query = ctx.query
        if query:
            if not _QUERY_OK.issuperset(query):
                query = quote(query, safe="".join(map(chr, _QUERY_OK))).encode("ascii")
            return quoted + "?" + query.decode("ascii")
        return quoted

    def _request_head(self, ctx: EdgeContext, route: ProxyRoute) -> tuple[bytes, int, bool, bool]:
        """Everything in the request head after ``Host``: (bytes, content-length or -1,
        chunked, idempotent)."""
        skip = route.skip_request
        parts: list[bytes] = []
        append = parts.append
        length = -1
        chunked = False
        host = b""
        xff = xfp = xfh = fwd = None
        idempotent = ctx.method in IDEMPOTENT
        connection_tokens: list[bytes] = []
        for name, value in ctx.headers:
            if name in skip:
                if name == b"content-length":
                    length = int(value) if value.isdigit() else -1
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"host":
                    host = value
                elif name == b"x-forwarded-for":
                    xff = value
                elif name == b"x-forwarded-proto":
                    xfp = value
                elif name == b"x-forwarded-host":
                    xfh = value
                elif name == b"forwarded":
                    fwd = value
                elif name == b"connection":
                    connection_tokens.extend(t.strip().lower() for t in value.split(b","))
                continue
            if name.startswith(b"x-cygate-"):
                continue  # NOTE: the gateway's own namespace is never taken from a client
            if name == b"idempotency-key":
                idempotent = True
            append(name + b": " + value + b"\r\n")
        if connection_tokens:
            named = frozenset(connection_tokens)
            parts = [p for p in parts if p.split(b":", 1)[0] not in named]
            append = parts.append
        peer = ctx.peer
        scheme = _SCHEMES.get(ctx.scope.get("scheme", "http")) or b"http"
        trusted_peer = self._any_trusted and peer in self.trusted
        forwarding = None if trusted_peer else self._forwarding.get((peer, scheme, host))
        if forwarding is None:
            peer_b = peer.encode("latin-1")
            node = b'"[' + peer_b + b']"' if b":" in peer_b else peer_b
            element = b"for=%s;proto=%s" % (node, scheme)
            if host:
                element += b';host="%s"' % host.replace(b'"', b"")
            if trusted_peer:
                xff = xff + b", " + peer_b if xff else peer_b
                xfp = xfp or scheme
                xfh = xfh or host
                fwd = fwd + b", " + element if fwd else element
            else:
                xff, xfp, xfh, fwd = peer_b, scheme, host, element
            forwarding = b"x-forwarded-for: %s\r\nx-forwarded-proto: %s\r\nforwarded: %s\r\n" % (
                xff,
                xfp,
                fwd,
            )
            if xfh:
                forwarding += b"x-forwarded-host: " + xfh + b"\r\n"
            if not trusted_peer:
                cache = self._forwarding
                if len(cache) >= _FORWARDING_CACHE:
                    cache.clear()
                cache[(peer, scheme, host)] = forwarding
        # PERF: one format for the headers every request gets.
        append(
            b"%sx-request-id: %s\r\ntraceparent: %s\r\n"
            % (forwarding, ctx.request_id.encode(), ctx.traceparent)
        )
        principal = ctx.principal
        if principal is not None:
            ids = route.identity
            append(ids[0] + b": " + principal.sub.encode() + b"\r\n")
            append(ids[1] + b": " + ",".join(sorted(principal.roles)).encode() + b"\r\n")
            if principal.client_id:
                append(ids[2] + b": " + principal.client_id.encode() + b"\r\n")
            if principal.issuer:
                append(ids[3] + b": " + principal.issuer.encode() + b"\r\n")
        parts.extend(route.set_request)
        if chunked:
            append(b"transfer-encoding: chunked\r\n")
        elif length > 0 or (length == 0 and ctx.method not in ("GET", "HEAD")):
            append(b"content-length: %d\r\n" % length)
        elif ctx.method in ("POST", "PUT", "PATCH"):
            append(b"content-length: 0\r\n")
        return b"".join(parts), length, chunked, idempotent


def _end_span(traced: tracing.Tracing | None, span: Span, token: object, ex: _Exchange) -> None:
    assert traced is not None
    traced.release(token)
    span.set_attribute("cygate.upstream.outcome", ex.outcome or "error")
    if ex.status:
        span.set_attribute("http.response.status_code", ex.status)
    if ex.target is not None:
        span.set_attribute("server.address", ex.target.url)
    if ex.outcome not in ("ok", "client_gone"):
        span.set_status(traced.error_status(ex.outcome or "error"))
    span.end()


def _response_headers(
    headers: list[tuple[bytes, bytes]], route: ProxyRoute, connection: bytes | None
) -> list[tuple[bytes, bytes]]:
    """The upstream's headers (the client already left out ``route.skip_response``: hop-by-hop
    ones and those the route removes) less those its ``Connection`` header names
    (``connection``: its value); plus the route's own."""
    if connection is not None and connection not in _PLAIN_CONNECTION:
        named = {t.strip().lower() for t in connection.split(b",")}
        headers = [h for h in headers if h[0] not in named]
    if route.set_response:
        headers.extend(route.set_response)
    return headers


async def _read_body(receive: Receive, length: int) -> bytes:
    """The whole (small) request body, for one write and a possible replay."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ResponseAborted("client went away while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > length:
            raise Problem(400, "request body longer than its Content-Length")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    if size != length:
        raise Problem(400, "request body shorter than its Content-Length")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _stream_body(
    conn: Connection, receive: Receive, chunked: bool, length: int, limit: int
) -> None:
    """Copy the client's body to the upstream as it arrives (with back-pressure both ways)."""
    sent = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ResponseAborted("client went away while sending the body")
        chunk = message.get("body", b"")
        if conn.answered:
            # The upstream answered before reading everything (a 413, a redirect): stop
            # sending; the connection cannot be reused since the request was cut short.
            conn.keep_alive = False
            return
        if chunk:
            sent += len(chunk)
            if sent > limit:
                raise Problem(413, f"request body exceeds the {limit}-byte limit")
            if not chunked and sent > length:
                raise Problem(400, "request body longer than its Content-Length")
            conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await conn.drain()
        if not message.get("more_body"):
            break
    if chunked:
        conn.write(b"0\r\n\r\n")
    elif sent != length:
        raise Problem(400, "request body shorter than its Content-Length")
