"""The edge: an ASGI layer in front of the Litestar app.

For every HTTP request it normalises the path, resolves the route with the compiled router,
attaches the route's policy, sets ``X-Request-ID`` and ``traceparent``, enforces the body limit,
adds security headers, answers routing errors itself as problem+json, and counts the request.
Routes with a fast handler are answered here without entering Litestar. Later steps (token
check, rate limit, L1 cache) plug in between the route lookup and the hand-over.
"""

from __future__ import annotations

import asyncio.coroutines
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from cygate.core.ids import IdMinter
from cygate.core.router import (
    BAD_PARAM,
    FOUND,
    METHOD_NOT_ALLOWED,
    PathError,
    RouteMatch,
    Router,
    normalize_path,
)
from cygate.edge.asgi import ASGIApp, Message, Receive, Scope, Send
from cygate.edge.auth import TokenStage
from cygate.edge.body import BODY_JSON, json_media, query_nul_errors
from cygate.edge.cache import caller_key
from cygate.edge.compress import CODINGS, VARY_ACCEPT_ENCODING, Compression, strip_suffix, suffixed
from cygate.edge.context import EdgeContext, Stage, TrustedProxies
from cygate.edge.cors import VARY_ORIGIN, Cors
from cygate.edge.hitpath import Head, HitPath, LoggedHitPath, scan_head
from cygate.edge.hitplan import HitPlan
from cygate.edge.policy import PolicyStage
from cygate.edge.problem import PROBLEM_CONTENT_TYPE, Problem, problem_body
from cygate.edge.ratelimit import RateLimitStage
from cygate.infra.logs import reset_request_context, set_request_context

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from cygate.edge.cache import CacheMiss, ResponseCache
    from cygate.edge.context import RoutePolicy
    from cygate.edge.validators import Validators
    from cygate.infra.accesslog import AccessLog
    from cygate.infra.metrics import Metrics
    from cygate.infra.tracing import Incoming, Tracing

__all__ = [
    "ASGIApp",
    "BodyTooLarge",
    "Dispatch",
    "Edge",
    "Message",
    "Receive",
    "ResponseAborted",
    "Scope",
    "Send",
    "TracedEdge",
]

log = logging.getLogger("cygate.edge")

_HOST_CACHE = 256
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_UNMATCHED = "<unmatched>"
_OPTIONS = "<options>"
_REFRESH = "cygate.cache.refresh"
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NO_HOST = "an HTTP/1.1 request needs exactly one, non-empty Host header (RFC 9112, section 3.2)"

Dispatch = Callable[[EdgeContext, Receive, Send], Awaitable[None]]
Headers = tuple[tuple[bytes, bytes], ...]


_hosts: dict[bytes, str] = {}


def _host(value: bytes) -> str:
    """``Host`` without the port, lower-cased (remembered for the next request)."""
    host = value.decode("latin-1").rsplit(":", 1)[0].lower()
    if len(_hosts) >= _HOST_CACHE:
        _hosts.clear()
    _hosts[value] = host
    return host


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the {limit}-byte limit")
        self.limit = limit


class ResponseAborted(Exception):
    """Raised by a dispatcher that cannot finish a response (the upstream failed mid-body, the
    client went away): the server drops the connection. Whoever raises it has logged why, so
    the edge re-raises it without a traceback."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _async_callable(func: _F) -> _F:
    """``func``, which returns an awaitable, marked so that ``inspect.iscoroutinefunction``
    (Python 3.12+) and ``asyncio.iscoroutinefunction`` (3.11) call it a coroutine function:
    uvicorn's ``--interface auto`` decides ASGI 3 or ASGI 2 by that test, and would call a plain
    ``__call__`` with the scope alone. Nothing changes for a server that just awaits the result
    (Granian)."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        return mark(func)  # type: ignore[no-any-return, unused-ignore]  # typeshed-dependent
    marker = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined, unused-ignore]  # (3.11's marker)
    setattr(func, "_is_coroutine", marker)  # noqa: B010
    return func


class Edge:
    """Wraps an ASGI app (Litestar) with routing, policy and the response contract."""

    __slots__ = (
        "_direct",
        "_hit_path_enabled",
        "_hits",
        "_router",
        "_security_headers",
        "_stages",
        "_traced_hits",
        "_upstream",
        "access",
        "app",
        "body_timeout",
        "cache",
        "compression",
        "cors",
        "fast_paths",
        "ids",
        "max_body",
        "metrics",
        "tracing",
        "trusted",
        "validators",
    )

    def __init__(
        self,
        app: ASGIApp,
        router: Router,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        hsts_max_age: int = 0,
        hsts_include_subdomains: bool = False,
        fast_paths: bool = True,
        hit_path: bool = True,
        stages: Sequence[Stage] = (),
        upstream: Dispatch | None = None,
        trusted_proxies: TrustedProxies | None = None,
        cache: ResponseCache | None = None,
        validators: Validators | None = None,
        body_timeout: float = 30.0,
        ids: IdMinter | None = None,
        cors: Cors | None = None,
        compression: Compression | None = None,
        access: AccessLog | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self.tracing = tracing
        """Traces (``cygate.infra.tracing``), None when off: then nothing of it runs."""
        self.cors = cors
        """CORS for the configured origins (``cygate.edge.cors``), or None: no CORS."""
        self.compression = compression
        """Response compression (``cygate.edge.compress``), or None: none."""
        self.access = access
        """The access log (``cygate.infra.accesslog``), or None: no request is logged, and the
        fused hit path is the plain one (with a log: ``LoggedHitPath`` around it)."""
        self.ids = ids if ids is not None else IdMinter()
        """The one minter of the ids of requests that bring none (``cygate.core.ids``): the
        general path's and the fused hit path's (handed to it in the ``HitPlan``)."""
        self.body_timeout = body_timeout
        """Seconds a request body may take to arrive (slow clients): then 408, connection
        closed."""
        self.cache = cache
        """Answers cacheable routes from L1/L2 after the stages (``cygate.edge.cache``)."""
        self.validators = validators
        """Without the cache: ETag, Cache-Control and 304s on cacheable routes
        (``cygate.edge.validators``)."""
        self.trusted = trusted_proxies or TrustedProxies()
        self._stages = tuple(stages)
        self._upstream: Dispatch | None = None
        self._direct = False
        self.upstream = upstream
        self._router = router
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.fast_paths = fast_paths
        headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]
        if hsts_max_age:
            hsts = f"max-age={hsts_max_age}"
            if hsts_include_subdomains:
                hsts += "; includeSubDomains"
            headers.append((b"strict-transport-security", hsts.encode()))
        self._security_headers = tuple(headers)
        self._hit_path_enabled = hit_path
        self._hits: HitPath | LoggedHitPath | None = None
        self._traced_hits: HitPath | LoggedHitPath | None = None
        self._rebuild_hit_path()

    @property
    def stages(self) -> tuple[Stage, ...]:
        """Run in order on every routed request (token check, rate limit, ...)."""
        return self._stages

    @stages.setter
    def stages(self, stages: Sequence[Stage]) -> None:
        self._stages = tuple(stages)
        self._rebuild_hit_path()

    @property
    def router(self) -> Router:
        """Resolves each request's route (swapped whole when the route table changes)."""
        return self._router

    @router.setter
    def router(self, router: Router) -> None:
        self._router = router
        self._rebuild_hit_path()

    @property
    def hit_path(self) -> HitPath | LoggedHitPath | None:
        """The fused hit path (``cygate.edge.hitpath``), or None: this edge's cache, stages and
        settings leave it nothing to answer."""
        return self._hits

    def _rebuild_hit_path(self) -> None:
        """Build the fused hit path over a new plan (``cygate.edge.hitplan``) of the current
        router, stages, cache routes and rate-limit plans: only with the response cache, and
        only when every stage is one it knows (the token stage, then the rate-limit stage); any
        other stage could refuse or change a request it would answer. A policy stage (after
        them) is passed over when no cached route names a policy action: it decides nothing for
        the requests the hit path answers. Called again whenever one of those changes (the
        cache and the rate-limit stage call it back)."""
        self._hits = self._traced_hits = None
        if not self._hit_path_enabled or self.cache is None:
            return
        self.cache.watch(self._rebuild_hit_path)
        token: TokenStage | None = None
        rate: RateLimitStage | None = None
        for stage in self._stages:
            if isinstance(stage, TokenStage) and token is None and rate is None:
                token = stage
            elif isinstance(stage, RateLimitStage) and rate is None:
                rate = stage
            elif isinstance(stage, PolicyStage) and not self._policy_on_cached_routes():
                continue
            else:
                return
        if rate is not None:
            rate.watch(self._rebuild_hit_path)
        plan = HitPlan.build(
            router=self._router,
            cache=self.cache,
            token=token,
            rate=rate,
            security=self._security_headers,
            trusted=bool(self.trusted),
            caller_key=caller_key,
            recorder=self.metrics,
            ids=self.ids,
            hosts=_hosts,
            host_of=_host,
            cors=self.cors is not None,
            compression=self.compression,
        )
        plain = HitPath(plan=plan)
        hits = plain if self.access is None else LoggedHitPath(plain, self.access)
        if self.tracing is not None:
            # NOTE: with tracing on, the hit path serves only requests the sampler leaves out
            # (``TracedEdge.__call__`` asks first); off, ``__call__`` holds it, nothing else runs.
            self._traced_hits = hits
        else:
            self._hits = hits

    def _policy_on_cached_routes(self) -> bool:
        """A route the cache answers names a policy action (then the policy stage must see
        its requests: no fused hit path)."""
        assert self.cache is not None
        cached = self.cache.route_table()
        return any(
            policy.policy is not None and policy.name in cached
            for *_, policy in self._router.routes()
        )

    @property
    def upstream(self) -> Dispatch | None:
        """Sends a request whose policy target is not ``local`` to its upstream.

        A dispatcher with a true ``direct`` attribute is handed the server's ``send`` when
        nothing needs to see its messages (no cache capture, no HEAD body to drop): it then
        appends ``ctx.direct_headers`` and ``ctx.response_headers`` to its response head itself
        and sets ``ctx.status`` before sending it. Others get the edge's wrapper."""
        return self._upstream

    @upstream.setter
    def upstream(self, dispatch: Dispatch | None) -> None:
        self._upstream = dispatch
        self._direct = bool(getattr(dispatch, "direct", False))

    def _preflight(
        self, scope: Scope, head: Head, match: RouteMatch, path: str, host: str
    ) -> list[tuple[bytes, bytes]] | None:
        """The CORS headers granting a preflight, or None (not one, or refused)."""
        assert self.cors is not None
        requested = _header(scope["headers"], b"access-control-request-method")
        if requested is None or head.origin is None:
            return None
        routes = []
        for allowed in match.allowed:
            if allowed in ("HEAD", "OPTIONS"):
                continue
            found = self._router.match(allowed, path, host or None)
            if found.kind == FOUND:
                routes.append((allowed, found.value))
        return self.cors.preflight(head.origin, requested, routes)

    def _shape(self, scope: Scope, send: Send, head: Head, method: str) -> Send:
        """``send`` with this request's CORS headers and its negotiated compression (and the
        request's validators with the coding's ETag suffix taken off; see
        ``cygate.edge.compress``)."""
        cors = () if self.cors is None else self.cors.response_headers(head.origin)
        compression = self.compression
        coding = None
        stripped = False
        if compression is not None:
            coding = compression.coding_for(head.accept_encoding)
            if head.conditional or method in _WRITES:
                stripped = _strip_validators(scope, coding)
            if coding is not None and _no_transform(scope["headers"]):
                coding = None
        return _shaped(send, cors, compression, coding, stripped, method == "HEAD")

    @_async_callable
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The ASGI entry point: what it returns is awaited by the server (an ASGI app is an
        async callable; this one is a plain function returning an awaitable: a fused hit, or
        the general path's coroutine, marked as a coroutine function for servers that inspect
        the app to tell ASGI 3 from ASGI 2)."""
        hits = self._hits
        head: Head | None = None
        if hits is not None:
            try:
                # PERF: a fresh L1 hit in one call (edge/hitpath), and the awaitable that
                # sends it returned as it is: no frame of the edge's own per hit.
                sending = hits.serve(scope, send)
            except Exception:
                # NOTE: it changes nothing before it answers: the general path says what is
                # wrong with this request (and logs it, if it is a fault of ours).
                sending = None
            else:
                if sending is None:
                    head = hits.last_head  # its scan of the headers: not made again
                    miss = hits.lease_miss
                    if miss is not None:
                        return self._lease_then_hit(scope, receive, send, head, miss, False)
            if sending is not None:
                return sending
        return self._serve(scope, receive, send, head)

    async def _lease_then_hit(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        head: Head | None,
        miss: tuple[RateLimitStage, Any, str],
        traced: bool,
    ) -> None:
        """A fused hit but for its batched limit's lease (``HitPath.lease_miss``): reserve
        one, then ask the hit path again; the general path serves it when Redis did not
        answer, refused, or the hit path declines again (nothing was spent or sent).

        PERF: a caller seen less often than its lease lives (many distinct callers) needs a
        lease per request; through the general path that request paid the whole edge again
        (context, stages, cache look-up) on top of the Redis call."""
        stage, limit, key = miss
        if await stage.lease(limit, key):
            hits = self._traced_hits if traced else self._hits
            if hits is not None:
                try:
                    sending = hits.serve(scope, send)
                except Exception:
                    sending = None  # (the general path says what is wrong: see __call__)
                if sending is not None:
                    await sending
                    return
                head = hits.last_head or head
        await self._serve(scope, receive, send, head, None, traced)

    async def _serve_sampled(
        self, scope: Scope, receive: Receive, send: Send, head: Head, incoming: Incoming
    ) -> None:
        """A request the sampler kept (tracing on, :class:`TracedEdge`): the general path
        under its server span."""
        tracing = self.tracing
        assert tracing is not None
        method: str = scope["method"]
        span = tracing.server_span(incoming, method, {"http.request.method": method})
        with tracing.running(span):
            await self._serve(scope, receive, send, head, span, True)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        head: Head | None = None,
        span: Span | None = None,
        decided: bool = False,
    ) -> None:
        """Everything but a fused hit: lifespan, and every request the general path serves
        (``head``: the hit path's scan of its headers, when it made one; tracing on,
        ``decided`` once the sampler was asked, and ``span``: the request's server span when
        sampled)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan (and websockets, none yet)
            return
        if not decided and self.tracing is not None:
            # (an Edge given tracing rather than a TracedEdge: ask the sampler now)
            await TracedEdge.__call__(self, scope, receive, send)  # type: ignore[arg-type]
            return
        started = time.perf_counter()
        method: str = scope["method"]
        route_name = _UNMATCHED
        status = 500  # the answer's, unless the response started (then ``ctx.status``)
        access = self.access
        tap: _Tap | None = None
        if access is not None and _REFRESH not in scope and access.sampled():
            # (a background cache refresh is the cache's request, not a client's: not logged)
            send = tap = _Tap(send)

        if head is None:
            # PERF: one pass over the headers, the hit path's own (``scan_head``).
            head = scan_head(scope["headers"], _hosts, _host)
        request_id_bytes: bytes = head.request_id
        request_id = request_id_bytes.decode() if request_id_bytes else ""
        traceparent: bytes = head.traceparent
        authorization: bytes | None = head.authorization
        content_length: int = head.content_length
        content_type: bytes | None = head.content_type
        chunked: bool = head.chunked
        host: str = head.host
        hosts: int = head.hosts
        if not request_id or not traceparent:
            new_id, new_id_bytes, new_trace = self.ids.take()
            if not request_id:
                request_id, request_id_bytes = new_id, new_id_bytes
            if not traceparent:
                traceparent = new_trace
                if span is not None and self.tracing is not None:
                    # A new trace: the client is told the one its request's spans are in.
                    traceparent = self.tracing.traceparent(span).encode() or new_trace
                elif decided:
                    # Tracing on, not sampled: so say the flags (upstreams follow them).
                    traceparent = new_trace[:-2] + b"00"
        headers: Headers = (
            (b"x-request-id", request_id_bytes),
            (b"traceparent", traceparent),
            *self._security_headers,
        )
        server_send = send  # (a preflight's answer goes to it unshaped)
        if self.cors is not None or self.compression is not None:
            send = self._shape(scope, send, head, method)
        context = set_request_context(request_id, traceparent)  # (its log lines carry them)
        instance = ""  # the path, once normalised (problems before that: the raw one)
        ctx: EdgeContext | None = None
        miss: CacheMiss | None = None
        cache_result = ""  # (for the span: hit, miss, shared)

        head_only = False
        try:
            if (hosts != 1 or not host) and (hosts > 1 or scope.get("http_version") == "1.1"):
                # NOTE: Granian passes a request without Host on with an empty one.
                raise Problem(400, _NO_HOST)
            raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
            if method == "OPTIONS" and raw_path == b"*":
                # RFC 9110, section 9.3.7: the server in general; a "ping" that answers 200
                # with no content (and says so: Content-Length 0).
                route_name, status = _OPTIONS, 200
                await _send_empty(send, 200, headers)
                return
            try:
                path = normalize_path(raw_path.split(b"?", 1)[0])
            except PathError as exc:
                raise Problem(400, f"malformed request path: {exc}") from None
            instance = path
            if content_length == -2:
                raise Problem(400, "invalid Content-Length header")

            match = self._router.match(method, path, host or None)
            if match.kind != FOUND:
                if method == "OPTIONS" and match.kind == METHOD_NOT_ALLOWED:
                    # The route's methods, from the router: the same list a 405 sends.
                    route_name, status = _OPTIONS, 200
                    allow = (b"allow", _allow(match))
                    if self.cors is None:
                        await _send_empty(send, 200, (*headers, allow))
                        return
                    # A CORS preflight, answered here (204), or refused: the plain answer
                    # without Access-Control-* headers (cygate.edge.cors).
                    granted = self._preflight(scope, head, match, path, host)
                    if granted is not None:
                        status = 204
                        await _send_empty(server_send, 204, (*headers, *granted), length=False)
                    else:
                        await _send_empty(server_send, 200, (*headers, allow, VARY_ORIGIN))
                    return
                raise _routing_problem(match, method, path)
            policy: RoutePolicy = match.value
            route_name = policy.name
            limit = policy.max_body_bytes or self.max_body
            if content_length > limit:
                raise Problem(413, f"request body exceeds the {limit}-byte limit")
            head_only = method == "HEAD" and not route_name.startswith("HEAD ")
            ctx = EdgeContext(
                scope,
                method,
                path,
                host,
                request_id,
                traceparent,
                policy,
                match.params,
                self.trusted,
                authorization,
            )
            for stage in self._stages:
                pending = stage(ctx)
                if pending is not None:
                    await pending
            if policy.target == "local":
                query: bytes = scope.get("query_string", b"")
                if query and b"%00" in query:
                    errors = query_nul_errors(query)
                    raise Problem(
                        422, "query parameters must not contain NUL", extra={"errors": errors}
                    )
                if method in _WRITES and policy.body == BODY_JSON:
                    _check_json_media(content_type, content_length > 0 or chunked)
            if content_length > 0 or (content_length < 0 and method not in ("GET", "HEAD")):
                receive = _timed_receive(receive, self.body_timeout)

            if (
                self._direct
                and policy.target != "local"
                and not head_only
                and (policy.cache is None or (self.cache is None and self.validators is None))
            ):
                # PERF: a dispatcher that adds the edge's headers itself gets the server's own
                # ``send`` (no wrapper coroutine per message); it reports the status.
                ctx.direct_headers = headers
                await self._upstream(ctx, receive, send)  # type: ignore[misc]  # _direct
                return

            if self.cache is not None and policy.cache is not None:
                # The cache step (cache.py), after the stages: auth and limits apply to hits.
                hit = self.cache.lookup(ctx)  # PERF: sync (key + L1), no coroutine on a hit
                cache_result = "miss"
                if hit is not None:
                    cache_result = "hit"
                    # PERF: what the wrapper would do, inline (no call, no coroutine each).
                    start, body_message = hit
                    ctx.status = start["status"]
                    start["headers"] = [*start["headers"], *headers, *ctx.response_headers]
                    await send(start)
                    if head_only:
                        body_message = {"type": "http.response.body", "body": b""}
                    await send(body_message)
                    return
                send_wrapper = _wrap_send(ctx, send, headers, head_only)
                miss = await self.cache.load(ctx, send_wrapper)
                if miss is None:
                    cache_result = "shared"
                    return  # answered by another request's load, or from L2
                send_wrapper = miss.send  # a miss: capture the response to store it
            elif policy.cache is not None and self.validators is not None:
                send_wrapper = self.validators.wrap(ctx, _wrap_send(ctx, send, headers, head_only))
            else:
                send_wrapper = _wrap_send(ctx, send, headers, head_only)

            if policy.target != "local":
                upstream = self._upstream
                if upstream is None:
                    raise Problem(502, f"no upstream dispatcher for target {policy.target!r}")
                await upstream(ctx, receive, send_wrapper)
                return
            if policy.fast is not None and self.fast_paths:
                staged = len(ctx.response_headers)
                body = await policy.fast(ctx)
                fast_headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ]
                if len(ctx.response_headers) > staged:
                    # NOTE: headers the handler added are its response's own (Cache-Control),
                    # not per-request ones like the stages': the cache judges them and keeps
                    # or replaces them, exactly as it does a Litestar handler's.
                    fast_headers += ctx.response_headers[staged:]
                    del ctx.response_headers[staged:]
                await send_wrapper(
                    {"type": "http.response.start", "status": 200, "headers": fast_headers}
                )
                await send_wrapper({"type": "http.response.body", "body": body})
                return

            scope["path"] = path
            scope["raw_path"] = quote(path, safe=_PATH_SAFE).encode("ascii")
            scope["cygate.ctx"] = ctx
            scope["cygate.request_id"] = request_id
            if head_only:
                scope["method"] = "GET"  # the router fell back to the GET route
            if content_length < 0 and method not in ("GET", "HEAD"):
                receive = _limited_receive(receive, limit)
            try:
                await self.app(scope, receive, send_wrapper)
            except BodyTooLarge as exc:
                raise Problem(413, str(exc)) from None
        except ResponseAborted:
            status = 499  # (or the status sent, when the response had started: see finally)
            raise
        except Problem as problem:
            if miss is not None and await miss.failed(problem):
                return  # the cache answered instead (stale-if-error)
            if ctx is not None and ctx.status:
                raise
            status = problem.status
            if ctx is not None and ctx.response_headers:
                headers += tuple(ctx.response_headers)
            instance = instance or scope.get("path", "")
            await _send_problem(send, problem, instance, request_id, headers)
        except Exception:
            log.exception("unhandled error request_id=%s route=%s", request_id, route_name)
            if ctx is not None and ctx.status:
                raise
            status = 500
            detail = "internal error; quote the request_id when reporting it"
            instance = instance or scope.get("path", "")
            await _send_problem(send, Problem(500, detail), instance, request_id, headers)
        finally:
            if miss is not None:
                miss.close()
            if ctx is not None and ctx.status:
                status = ctx.status  # the response started: the status it was sent with
            self.metrics.observe_since(route_name, method, status, started)
            reset_request_context(context)
            if tap is not None:
                access.record(  # type: ignore[union-attr]  # (tap: access is not None)
                    (
                        time.time(),
                        method,
                        route_name,
                        instance or scope.get("path", ""),
                        tap.status or status,
                        time.perf_counter() - started,
                        tap.bytes,
                        tap.cache,
                        "limited" if status == 429 else tap.ratelimit,
                        ctx.policy.target
                        if ctx is not None and ctx.policy.target != "local"
                        else "",
                        ctx.peer if ctx is not None else _peer(scope),
                        request_id,
                        traceparent,
                        scope["headers"],
                    )
                )
            if span is not None:
                _annotate(
                    self.tracing,
                    span,
                    f"{method} {route_name}" if ctx is None else route_name,
                    status,
                    request_id,
                    instance,
                    ctx,
                    cache_result,
                )


class _Tap:
    """``send`` for a request the access log samples: what was sent (status, body bytes, the
    cache's ``X-Cache`` and whether rate-limit headers went out), noted on the way."""

    __slots__ = ("bytes", "cache", "ratelimit", "send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0
        self.bytes = 0
        self.cache = ""
        self.ratelimit = ""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", ()):
                if name == b"x-cache":
                    self.cache = value.decode("latin-1")
                elif name == b"ratelimit-policy":
                    self.ratelimit = "allowed"
        elif message["type"] == "http.response.body":
            self.bytes += len(message.get("body", b""))
        await self.send(message)


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


class TracedEdge(Edge):
    """The edge with tracing on (``app.py`` builds it when ``tracing.configure`` gives a
    :class:`~cygate.infra.tracing.Tracing`; with tracing off the plain :class:`Edge` runs,
    whose ``__call__`` has no tracing code at all).

    Each request's sampling decision comes first, from its ``traceparent``
    (``Tracing.incoming``). One the sampler leaves out is served as with tracing off: a fused
    hit when it is one (the awaitable returned as it is, no coroutine of ours), else the
    general path, with no span object. A sampled one takes the general path under its server
    span, so a sampled cache hit is recorded (``cygate.cache: hit``)."""

    __slots__ = ()

    @_async_callable
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        tracing = self.tracing
        if scope["type"] != "http" or tracing is None:
            return self._serve(scope, receive, send, None, None, True)
        headers = scope["headers"]
        head = scan_head(headers, _hosts, _host)
        traceparent: bytes = head.traceparent
        incoming = tracing.incoming(traceparent, _tracestate(headers) if traceparent else None)
        if incoming.sampled:
            return self._serve_sampled(scope, receive, send, head, incoming)
        hits = self._traced_hits
        if hits is not None:
            try:
                sending = hits.serve(scope, send)
            except Exception:
                sending = None  # (the general path says what is wrong: see Edge.__call__)
            if sending is not None:
                return sending
            miss = hits.lease_miss
            if miss is not None:
                return self._lease_then_hit(
                    scope, receive, send, hits.last_head or head, miss, True
                )
        return self._serve(scope, receive, send, head, None, True)


def _annotate(
    tracing: Tracing | None,
    span: Span,
    span_name: str,
    status: int,
    request_id: str,
    path: str,
    ctx: EdgeContext | None,
    cache_result: str,
) -> None:
    """The edge's decision on the request's server span: route, token, limit, cache."""
    if not span.is_recording():
        return
    span.update_name(span_name)
    attributes: dict[str, str | int | bool] = {
        "http.route": ctx.policy.name if ctx is not None else span_name,
        "http.response.status_code": status,
        "url.path": path,
        "cygate.request_id": request_id,
    }
    if ctx is not None:
        policy = ctx.policy
        attributes["client.address"] = ctx.peer
        attributes["cygate.auth"] = "token" if ctx.principal is not None else "none"
        if ctx.principal is not None:
            attributes["enduser.id"] = ctx.principal.sub
        if policy.rate_limit:
            attributes["cygate.rate_limit"] = str(policy.rate_limit)
            attributes["cygate.rate_limited"] = status == 429
        if cache_result:
            attributes["cygate.cache"] = cache_result
        attributes["cygate.target"] = policy.target
    if status >= 500 and tracing is not None:
        span.set_status(tracing.error_status(f"HTTP {status}"))
    span.set_attributes(attributes)


def _tracestate(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The request's ``tracestate`` (several lines joined by commas, as RFC 9110 allows);
    None when there is none. Malformed entries are the propagator's to drop."""
    values = [value for name, value in headers if name == b"tracestate"]
    if not values:
        return None
    return b",".join(values)[:512]  # W3C: at most 32 entries, and a vendor may cut past 512


def _wrap_send(ctx: EdgeContext, send: Send, headers: Headers, head_only: bool) -> Send:
    """``send`` with the edge's headers and the stages' added to the response head, the body
    dropped for a HEAD served by a GET route, and the status noted in ``ctx.status`` (a
    started response). Made only for answers that are not cache hits (PERF: a hit does this
    inline, without the closure and its cells)."""

    async def send_wrapper(message: Message) -> None:
        if message["type"] == "http.response.start":
            ctx.status = message["status"]
            message["headers"] = [*message.get("headers", ()), *headers]
            if ctx.response_headers:
                message["headers"] += ctx.response_headers
        elif head_only and message["type"] == "http.response.body":
            message = {
                "type": "http.response.body",
                "body": b"",
                "more_body": message.get("more_body", False),
            }
        await send(message)

    return send_wrapper


async def _send_problem(
    send: Send, problem: Problem, instance: str, request_id: str, headers: Headers
) -> None:
    body = problem_body(
        problem.status,
        problem.detail,
        instance=instance,
        request_id=request_id,
        extra=problem.extra,
    )
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in problem.headers.items()]
    await send(
        {
            "type": "http.response.start",
            "status": problem.status,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                (b"content-length", b"%d" % len(body)),
                (b"cache-control", b"no-store"),
                *extra,
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_empty(
    send: Send, status: int, headers: Sequence[tuple[bytes, bytes]], *, length: bool = True
) -> None:
    """A response without content (the answer to ``OPTIONS``; ``length``: with
    ``Content-Length: 0``, which a 204 must not carry)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", b"0"), *headers] if length else list(headers),
        }
    )
    await send({"type": "http.response.body", "body": b""})


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of request header ``name``, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def _response_header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of response header ``name`` (any case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _no_transform(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """The request's ``Cache-Control`` says ``no-transform``: no compression for it."""
    return any(k == b"cache-control" and b"no-transform" in v.lower() for k, v in headers)


def _strip_validators(scope: Scope, coding: str | None) -> bool:
    """Take the edge's coding suffixes off the request's ``If-Match`` tags (all of them: a
    write compares the tag of the resource, whatever coding it was read in) and off its
    ``If-None-Match`` tags (only ``coding``'s: a copy in another coding is not the one this
    answer would send). True when an ``If-None-Match`` tag had the suffix (a 304 then carries
    the suffixed tag)."""
    headers = scope["headers"]
    out = []
    stripped = changed = False
    for name, value in headers:
        if name == b"if-match":
            new = strip_suffix(value, CODINGS)
        elif name == b"if-none-match" and coding is not None:
            new = strip_suffix(value, (coding,))
            stripped = stripped or new is not value
        else:
            new = value
        changed = changed or new is not value
        out.append((name, new))
    if changed:
        scope["headers"] = out
    return stripped


def _shaped(
    send: Send,
    cors: Sequence[tuple[bytes, bytes]],
    compression: Compression | None,
    coding: str | None,
    stripped: bool,
    head: bool,
) -> Send:
    """``send`` with ``cors`` added to the response head and, with ``compression``, the body
    of an encodable response (whole, in one message) in ``coding`` (its ``Content-Length``
    and ``ETag`` changed to match, ``Content-Encoding`` added) and ``Vary: Accept-Encoding``
    on every encodable one. Neither message it is given is changed (the cache may hold them)."""
    held: Message | None = None

    async def shaped(message: Message) -> None:
        nonlocal held
        kind = message["type"]
        if kind == "http.response.start":
            headers = [*message.get("headers", ()), *cors]
            message = {**message, "headers": headers}
            if compression is not None and message["status"] == 304:
                if stripped and coding is not None:
                    headers[:] = [
                        (k, suffixed(v, coding)) if k.lower() == b"etag" else (k, v)
                        for k, v in headers
                    ]
                    headers.append(VARY_ACCEPT_ENCODING)
            elif compression is not None:
                held = message  # until the body says whether it can be encoded
                return
            await send(message)
            return
        if held is None or kind != "http.response.body":
            await send(message)
            return
        start, held = held, None
        if message.get("more_body", False):
            await send(start)  # a stream: sent as it is
            await send(message)
            return
        assert compression is not None
        headers = start["headers"]
        body: bytes = message.get("body", b"")
        size = len(body)
        if head:
            length = _response_header(headers, b"content-length")
            size = int(length) if length is not None and length.isdigit() else 0
        if compression.encodable(start["status"], headers, size):
            headers.append(VARY_ACCEPT_ENCODING)
            if coding is not None and not head:
                etag = _response_header(headers, b"etag")
                data = compression.encode(body, coding, etag)
                if len(data) < size:
                    new_etag = suffixed(etag, coding) if etag is not None else None
                    headers[:] = [
                        (k, b"%d" % len(data))
                        if k.lower() == b"content-length"
                        else (k, new_etag)
                        if new_etag is not None and k.lower() == b"etag"
                        else (k, v)
                        for k, v in headers
                    ]
                    headers.append((b"content-encoding", coding.encode()))
                    message = {"type": "http.response.body", "body": data}
        await send(start)
        await send(message)

    return shaped


def _allow(match: RouteMatch) -> bytes:
    """``Allow`` for a path: its routes' methods (the router adds HEAD where GET is) and
    OPTIONS, which the edge answers on every path. A 405 and an ``OPTIONS`` send this one."""
    return ", ".join(sorted({*match.allowed, "OPTIONS"})).encode("latin-1")


def _check_json_media(content_type: bytes | None, has_body: bool) -> None:
    """A write to a JSON route: a 415 unless its body (if any) is declared JSON."""
    if content_type is None:
        if has_body:
            raise Problem(415, "a request body needs Content-Type: application/json")
    elif not json_media(content_type):
        raise Problem(415, "this endpoint takes application/json (or a +json type)")


def _routing_problem(match: RouteMatch, method: str, path: str) -> Problem:
    """The problem for a request that did not route: 405, 422 (bad typed parameter) or 404."""
    if match.kind == METHOD_NOT_ALLOWED:
        allowed = _allow(match).decode("latin-1")
        return Problem(
            405,
            f"{method} is not allowed on {path}; allowed: {allowed}",
            headers={"allow": allowed},
        )
    if match.kind == BAD_PARAM:
        name = match.bad_param
        errors = [{"field": f"path.{name}", "message": "invalid value for this parameter"}]
        return Problem(422, f"path parameter {name!r} is not valid", extra={"errors": errors})
    return Problem(404, f"no route for {path}")


def _timed_receive(receive: Receive, seconds: float) -> Receive:
    """``receive`` until the body is complete, within ``seconds`` from now for the whole body:
    a body that trickles (or never comes) is a 408 and the connection is closed. Messages
    after the body (a disconnect) are not timed."""
    deadline = asyncio.get_running_loop().time() + seconds
    complete = False

    async def timed() -> Message:
        nonlocal complete
        if complete:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise Problem(
                408,
                f"the request body did not arrive within {seconds:g} s",
                headers={"connection": "close"},
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            complete = True
        return message

    return timed


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """Count streamed (chunked) body bytes and stop at the limit."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return limited
