"""The application factory: the Litestar app, wrapped by the edge.

``create_app()`` is what Granian loads (``cygate.app:create_app``, factory mode) in every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.routes import HTTPRoute

from cygate import __version__
from cygate.core.router import Router
from cygate.edge.auth import PRINCIPAL, TokenStage, provide_principal
from cygate.edge.body import BODY_JSON, JSONRequest
from cygate.edge.cache import ResponseCache
from cygate.edge.cache_rules import cache_rules
from cygate.edge.compress import Compression
from cygate.edge.context import FastHandler, RoutePolicy, TrustedProxies
from cygate.edge.cors import Cors
from cygate.edge.edge import BodyTooLarge, Edge, TracedEdge
from cygate.edge.policy import PolicyLoader, PolicyStage
from cygate.edge.problem import PROBLEM_CONTENT_TYPE, Problem, problem_body
from cygate.edge.ratelimit import RateLimitStage
from cygate.edge.validators import Validators
from cygate.infra import tracing
from cygate.infra.accesslog import AccessLog, effective_sample
from cygate.infra.db import DB_UNAVAILABLE, close_pool, create_pool
from cygate.infra.logs import configure_logging, resolve_format, set_trace_context_provider
from cygate.infra.metrics import Metrics
from cygate.infra.redis import create_redis
from cygate.services.catalog.fast import unavailable
from cygate.services.catalog.plugin import CatalogPlugin
from cygate.services.catalog.repository import CursorError
from cygate.services.events.plugin import EventsPlugin
from cygate.services.identity.plugin import IdentityPlugin
from cygate.services.openapi import ContractJSON, Operation, document_path
from cygate.services.ops.plugin import OpsPlugin
from cygate.services.orders.plugin import OrdersPlugin
from cygate.services.payments.plugin import PaymentsPlugin
from cygate.services.plugin import ServicePlugin
from cygate.services.privacy.plugin import PrivacyPlugin
from cygate.services.privacy.redaction import install_redaction, redact
from cygate.settings import Settings, load_settings
from cygate.upstream.admin import RoutesAdminController
from cygate.upstream.proxy import UpstreamProxy
from cygate.upstream.table import LocalRoute, RouteTable, RouteTableManager

__all__ = ["build_router", "cache_routes", "create_app", "local_routes", "operations"]

log = logging.getLogger("cygate")


_LITESTAR_TYPES = {"str": "str", "int": "int", "uuid": "uuid", "path": "path"}
_MISSING_PARAM = re.compile(r"Missing required (\w+) parameter '([^']{1,100})'")
_NAMED_FIELD = re.compile(r"Object (?:contains unknown|missing required) field `([^`]{1,100})`")


def _problem(
    request: Request[Any, Any, Any],
    status: int,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response[bytes]:
    body = problem_body(
        status,
        detail,
        instance=request.scope.get("path", ""),
        request_id=str(request.scope.get("cygate.request_id", "")),
        extra=extra,
    )
    return Response(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers)


def _on_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    errors = []
    missing = _MISSING_PARAM.match(exc.detail or "")
    if missing:  # Litestar names a missing parameter in the detail only
        errors.append({"field": f"{missing[1]}.{missing[2]}", "message": "is required"})
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            source = item.get("source") or "body"
            source = getattr(source, "value", source)  # Litestar's ParamType enum: "query"
            key = item.get("key") or ""
            named = _NAMED_FIELD.match(str(item.get("message", "")))
            if named and key == "data":  # name the field that is missing or not writable
                key = named.group(1)
            errors.append(
                {
                    "field": f"{source}.{key}" if key else source,
                    "message": str(item.get("message", "")),
                }
            )
    return _problem(request, 422, exc.detail or "validation failed", extra={"errors": errors})


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    headers = dict(exc.headers or {})
    if exc.status_code == 401:
        headers.setdefault("www-authenticate", 'Bearer error="invalid_token"')
    return _problem(request, exc.status_code, exc.detail, headers=headers)


def _on_cursor(request: Request[Any, Any, Any], exc: CursorError) -> Response[bytes]:
    return _problem(
        request, 422, str(exc), extra={"errors": [{"field": "query.cursor", "message": str(exc)}]}
    )


def _on_problem(request: Request[Any, Any, Any], exc: Problem) -> Response[bytes]:
    return _problem(request, exc.status, exc.detail, headers=exc.headers, extra=exc.extra)


def _on_body_too_large(request: Request[Any, Any, Any], exc: BodyTooLarge) -> Response[bytes]:
    return _problem(request, 413, str(exc))


def _on_db_down(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.warning("database unavailable: %r", exc)
    return _on_problem(request, unavailable())


def _on_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, DB_UNAVAILABLE):
        return _on_db_down(request, exc)
    log.error(
        "unhandled error request_id=%s",
        request.scope.get("cygate.request_id", ""),
        exc_info=exc,
    )
    return _problem(request, 500, "internal error; quote the request_id when reporting it")


def build_router(app: Litestar, fast: dict[str, FastHandler] | None = None) -> Router:
    """The edge's route table, derived from the Litestar app's own routes and handler ``opt``.

    ``fast`` maps a route name (``GET /api/v1/products/{product_id:uuid}``) to a handler the edge
    calls itself for that route.
    """
    router = Router()
    for host, method, pattern, policy in local_routes(app, fast):
        router.add(method, pattern, policy, host)
    return router


def local_routes(app: Litestar, fast: dict[str, FastHandler] | None = None) -> list[LocalRoute]:
    """The gateway's own routes as ``(host, method, pattern, policy)``: what
    :func:`build_router` adds, and what every route-table generation starts from."""
    fast = fast or {}
    routes: list[LocalRoute] = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        pattern = _pattern_of(route)
        for method in sorted(route.methods):
            if method not in route.route_handler_map or method == "OPTIONS":
                # NOTE: the edge answers OPTIONS itself, with the router's methods for the
                # path (Litestar's automatic OPTIONS handlers never see a request).
                continue
            handler = route.route_handler_map[method][0]
            opt = dict(handler.opt)
            policy = RoutePolicy(
                name=f"{method} {route.path}",
                auth=bool(opt.get("auth", False)),
                roles=frozenset(opt.get("roles", ())),
                rate_limit=opt.get("rate_limit"),
                cache=opt.get("cache"),
                max_body_bytes=opt.get("max_body_bytes"),
                body=opt.get("body", BODY_JSON),
                policy=opt.get("policy"),
                policy_resource=opt.get("policy_resource"),
                fast=fast.get(f"{method} {route.path}"),
            )
            routes.append((None, method, pattern, policy))
    unknown = set(fast) - {p.name for *_, p in routes}
    if unknown:
        raise ValueError(f"fast handlers for routes that do not exist: {sorted(unknown)}")
    return routes


def operations(app: Litestar, router: Router, limiter: RateLimitStage) -> list[Operation]:
    """The route table's own (local) routes as the OpenAPI document describes them."""
    handlers: dict[str, HTTPRouteHandler] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for verb, (handler, *_) in route.route_handler_map.items():
                handlers[f"{verb} {route.path}"] = handler
    found = []
    for _host, method, pattern, policy in router.routes():
        known = handlers.get(policy.name)
        if policy.target != "local" or known is None:
            continue
        found.append(
            Operation(
                method=method,
                path=document_path(pattern),
                policy=policy,
                handler=known,
                rate_limited=limiter.plan_for(policy.name) is not None,
            )
        )
    return found


def cache_routes(app: Litestar, cache: ResponseCache) -> None:
    """Give the cache each route whose handler names a rule (``opt={"cache": "<rule>"}``)."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method, (handler, *_) in route.route_handler_map.items():
            rule = handler.opt.get("cache")
            if rule is not None:
                cache.add_route(f"{method} {route.path}", rule, handler)


def _pattern_of(route: Any) -> str:
    parts = []
    for comp in route.path_components:
        if isinstance(comp, str):
            parts.append(comp)
        else:  # a PathParameterDefinition
            kind = _LITESTAR_TYPES.get(comp.type.__name__.lower(), "str")
            if comp.type.__name__ == "UUID":
                kind = "uuid"
            elif comp.type.__name__ in ("Path", "PosixPath"):
                kind = "path"
            parts.append(f"{{{comp.name}:{kind}}}")
    return "/" + "/".join(p.strip("/") for p in parts if p.strip("/"))


def create_app(settings: Settings | None = None) -> Edge:
    """Build the ASGI application (edge + Litestar) from ``settings`` (default: environment)."""
    settings = settings or load_settings()
    log_format = resolve_format(settings.logs.format, settings.server.environment)
    configure_logging(settings.server.log_level, log_format, redact=redact)
    install_redaction()  # restricted data never in a log line (docs/privacy.md)
    metrics = Metrics(settings.metrics.dir or None)
    trusted = TrustedProxies(settings.http.trusted_proxies)
    access = _access_log(settings, metrics, trusted, log_format)
    # Traces when the OTEL_* environment names an endpoint (docs/observability.md); None: off.
    traced = tracing.configure(dropped=metrics.counter("cygate_trace_spans_dropped_total"))
    if traced is not None:
        set_trace_context_provider(tracing.current_ids)  # trace_id / span_id in JSON lines
    environment = settings.server.environment
    identity = IdentityPlugin(
        settings.identity, environment=environment, redis_timeout=settings.redis.timeout
    )
    # NOTE: one plugin per feature (services/<feature>/plugin.py). The list's order is the
    # order of the routes and of start-up; shutdown runs in reverse, before the edge and the
    # shared resources below stop.
    plugins: list[ServicePlugin] = [
        OpsPlugin(),
        CatalogPlugin(
            read_lease_size=max(1, settings.database.pool_max // 2),
            database=settings.database,
            metrics=metrics,
        ),
        identity,
        _UpstreamAdmin(),
        EventsPlugin(
            settings.events,
            database=settings.database,
            redis=settings.redis,
            retention=settings.retention,
        ),
        OrdersPlugin(settings.orders, idempotency=settings.idempotency),
        PaymentsPlugin(settings.payments, environment=environment, metrics=metrics),
        PrivacyPlugin(issuer=settings.identity.jwt_issuer),
    ]
    holder: dict[str, RouteTableManager] = {}
    ratelimit: RateLimitStage | None = None  # built with the route table, below
    # The document at /schema/openapi.json: Litestar's, completed from the route table (the
    # edge's statuses, headers and operations) when it is first asked for.
    contract = ContractJSON()

    @asynccontextmanager
    async def shared(app: Litestar) -> AsyncIterator[None]:
        """The pool, Redis and metrics: started first, stopped last."""
        try:
            pool = await create_pool(settings.database)
        except ssl.SSLError as exc:
            # NOTE: a certificate that fails verification is a configuration error, not an
            # outage: the worker stops with one line instead of starting degraded.
            log.error("PostgreSQL TLS failed at start-up: %s", exc)
            raise
        except DB_UNAVAILABLE as exc:
            # NOTE: start anyway with a lazy pool: requests get a quick 503 until PostgreSQL
            # answers, and /readyz says so, instead of a worker that never starts.
            log.warning("PostgreSQL not reachable at start-up (%r); starting degraded", exc)
            pool = await create_pool(settings.database, lazy=True)
        redis = create_redis(settings.redis)
        app.state.pool = pool
        app.state.redis = redis
        metrics.inc("cygate_worker_starts_total", ())
        metrics.start()
        if access is not None:
            access.start()
        try:
            yield
        finally:
            if access is not None:
                await asyncio.to_thread(access.stop)  # (writes what is queued)
            await metrics.stop()
            await redis.close()
            await close_pool(pool)
            if traced is not None:
                await asyncio.to_thread(tracing.shutdown)  # (joins the export thread)

    @asynccontextmanager
    async def edge_resources(app: Litestar) -> AsyncIterator[None]:
        """The edge's use of Redis (rate limits, cache) and the route table's reloads."""
        redis = app.state.redis
        if ratelimit is not None:
            await ratelimit.bind(redis)
        routes = holder["routes"]
        routes.start(settings.routes.reload_interval)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # NOTE: SIGHUP reloads the route table (``cygate serve`` forwards it to workers
            # through a stamp file; a signal sent to a worker itself lands here).
            loop.add_signal_handler(
                signal.SIGHUP, lambda: loop.create_task(routes.reload("SIGHUP"))
            )
        cache: ResponseCache | None = app.state.cache
        if cache is not None:
            cache.attach(redis)
            cache.start()
        try:
            yield
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await routes.stop()
            if ratelimit is not None:
                await ratelimit.unbind()
            if cache is not None:
                await cache.stop()

    app = Litestar(
        route_handlers=[],
        plugins=plugins,
        lifespan=[shared, edge_resources],
        on_startup=[_freeze_heap],
        # Handlers get the caller as a ``principal`` parameter (edge/auth.py; the cache's input
        # check knows it: cacheable per caller, never publicly).
        dependencies={PRINCIPAL: Provide(provide_principal, sync_to_thread=False)},
        state=_state(settings=settings, metrics=metrics, cache=None),
        exception_handlers={
            ValidationException: _on_validation,
            HTTPException: _on_http,
            CursorError: _on_cursor,
            Problem: _on_problem,
            BodyTooLarge: _on_body_too_large,
            Exception: _on_error,
        },
        openapi_config=OpenAPIConfig(
            title="cygate",
            version=__version__,
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), contract],
        ),
        request_max_body_size=settings.http.max_body_bytes,
        # Bodies decoded strictly into the handler's type; NUL and deep nesting refused.
        request_class=JSONRequest,
        debug=False,
        logging_config=None,
    )
    fast_handlers: dict[str, FastHandler] = {}
    policy_loaders: dict[str, PolicyLoader] = {}
    for plugin in plugins:
        fast_handlers.update(plugin.fast_handlers())
        policy_loaders.update(plugin.policy_loaders())
    local = local_routes(app, fast_handlers)
    cache = None
    if settings.cache.enabled:
        cache = ResponseCache(settings.cache, metrics, redis=settings.redis)
        cache_routes(app, cache)
        app.state.cache = cache
    edge_class = TracedEdge if traced is not None else Edge  # (off: no tracing code per hit)
    edge = edge_class(
        app,  # type: ignore[arg-type, unused-ignore]  # Litestar's ASGI types are narrower TypedDicts
        Router(),  # replaced by the route table just below
        metrics=metrics,
        max_body_bytes=settings.http.max_body_bytes,
        hsts_max_age=settings.http.hsts_max_age,
        hsts_include_subdomains=settings.http.hsts_include_subdomains,
        fast_paths=settings.http.fast_paths,
        hit_path=settings.http.hit_path,
        trusted_proxies=trusted,
        body_timeout=settings.http.body_timeout,
        upstream=UpstreamProxy(metrics, trusted),
        cache=cache,
        cors=(
            Cors(
                settings.http.cors_origins,
                allow_credentials=settings.http.cors_allow_credentials,
                max_age=settings.http.cors_max_age,
            )
            if settings.http.cors_origins
            else None
        ),
        compression=(
            Compression(
                settings.http.compression_min_bytes,
                settings.http.compression_cache_bytes,
                metrics,
            )
            if settings.http.compression_enabled
            else None
        ),
        tracing=traced,
        # Without the cache, cacheable routes still carry their validators (API.md).
        validators=None if cache is not None else Validators(cache_rules(settings.cache)),
        access=access,
    )
    if cache is not None:
        cache.edge = edge  # background refreshes re-enter the edge
    manager = RouteTableManager(
        edge,
        local,
        path=settings.routes.file,
        max_body=settings.http.max_body_bytes,
        on_breaker_change=metrics.breaker_transition,
        metrics=metrics,
        stamp_path=os.environ.get("CYGATE__ROUTES_STAMP", ""),
    )
    manager.load_initial()  # a bad file at start-up is fatal (``cygate serve`` checks first)
    holder["routes"] = manager
    app.state.routes = manager
    metrics.add_gauge_source(manager.breaker_gauges)
    # Rate-limit plans cover every route of the table (own and file routes); a reload plans
    # its table's routes again before it goes live (an unknown class refuses the file).
    ratelimit = RateLimitStage.from_settings(
        settings.rate_limit, (policy for *_, policy in edge.router.routes()), metrics
    )
    # NOTE: order matters: the token stage first, so rate limits keyed by caller see the
    # principal; the cache step runs after every stage (hits are authenticated and limited too).
    token = TokenStage(
        identity.identity.verifier,
        identity.identity.revocations,
        identity.identity.refresh_provider if settings.identity.providers else None,
    )
    limiter = ratelimit  # a name that is never None, for the functions below
    metrics.add_gauge_source(ratelimit.key_gauges)
    metrics.add_gauge_source(identity.identity.token_gauges)
    # Attribute-based policies: a stage only when policy files are configured (none: the
    # stages, and so the fused hit path, are exactly what they were). A file that does not
    # parse is a PolicyError (ValueError): one line and exit 2 from ``cygate serve``.
    policies: tuple[PolicyStage, ...] = ()
    if settings.policy.files:
        policies = (
            PolicyStage(
                settings.policy.files,
                cache_size=settings.policy.cache_size,
                reload_interval=settings.policy.reload_interval,
                loaders=policy_loaders,
                on_reload_error=lambda: metrics.inc("cygate_policy_reload_errors_total", ()),
                on_decision=lambda allowed: metrics.inc(
                    "cygate_policy_decisions_total", ("allow" if allowed else "deny",)
                ),
            ),
        )

    def set_stages() -> None:
        edge.stages = (token, limiter, *policies) if limiter.limits() else (token, *policies)

    def replan(table: RouteTable) -> Callable[[], None]:
        plans = limiter.plan(policy for *_, policy in table.router.routes())

        def commit() -> None:
            limiter.install(plans)
            set_stages()

        return commit

    set_stages()

    manager.prepare = replan
    contract.operations = lambda: operations(app, edge.router, limiter)
    return edge


def _access_log(
    settings: Settings, metrics: Metrics, trusted: TrustedProxies, log_format: str
) -> AccessLog | None:
    """The worker's access log (``cygate.infra.accesslog``), or None when it samples nothing
    (``access_log_sample`` 0, or a log level above ``info``)."""
    sample = effective_sample(settings.logs.access_sample, settings.server.log_level)
    if sample <= 0.0:
        return None

    def client_of(peer: str, headers: Any) -> str:
        if not trusted:
            return peer
        forwarded = next((v for k, v in headers if k == b"x-forwarded-for"), None)
        return trusted.client_ip(peer, forwarded)

    return AccessLog(
        sample=sample,
        fmt="json" if log_format == "json" else "text",
        capacity=settings.logs.access_queue,
        redact=redact,
        client_of=client_of,
        dropped=metrics.counter("cygate_access_log_dropped_total"),
        written=metrics.counter("cygate_access_log_lines_total"),
    )


class _UpstreamAdmin(ServicePlugin):
    """``GET /admin/routes`` (the route table itself is the edge's, wired above)."""

    name = "upstream-admin"
    route_handlers = (RoutesAdminController,)


def _freeze_heap() -> None:
    """After every lifespan has started (a start-up hook runs last)."""
    # PERF: everything built so far lives as long as the worker; move it out of the
    # collector's sight, and collect the young generation less often (each request makes a
    # few dozen short-lived objects; the default threshold of 700 ran a collection every
    # ~20 requests: 2.5 % of a worker's CPU on the product read).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _state(**values: Any) -> Any:
    from litestar.datastructures import State

    return State(values)
