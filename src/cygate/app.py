"""The application factory: the Litestar app, wrapped by the edge.

``create_app()`` is what Granian loads (``cygate.app:create_app``, factory mode) in every worker.
"""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.routes import HTTPRoute

from cygate import __version__
from cygate.core.router import Router
from cygate.edge.auth import TokenStage
from cygate.edge.context import TrustedProxies
from cygate.edge.edge import BodyTooLarge, Edge
from cygate.edge.policy import FastHandler, RoutePolicy
from cygate.edge.problem import PROBLEM_CONTENT_TYPE, Problem, problem_body
from cygate.infra.db import DB_UNAVAILABLE, create_pool
from cygate.infra.metrics import Metrics
from cygate.infra.redis import create_redis
from cygate.services.catalog.controllers import CatalogController
from cygate.services.catalog.fast import product_by_id, unavailable
from cygate.services.catalog.repository import CatalogRepository, CursorError
from cygate.services.identity.controllers import (
    AuthController,
    JWKSController,
    UsersController,
)
from cygate.services.identity.fast import my_profile
from cygate.services.identity.service import Identity
from cygate.services.ops.controllers import OpsController
from cygate.settings import Settings, load_settings

__all__ = ["build_router", "create_app"]

log = logging.getLogger("cygate")


_LITESTAR_TYPES = {"str": "str", "int": "int", "uuid": "uuid", "path": "path"}
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
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            source = item.get("source") or "body"
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
    fast = fast or {}
    router = Router()
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        pattern = _pattern_of(route)
        for method in sorted(route.methods):
            if method not in route.route_handler_map:
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
                fast=fast.get(f"{method} {route.path}"),
            )
            router.add(method, pattern, policy)
    unknown = set(fast) - {p.name for *_, p in router.routes()}
    if unknown:
        raise ValueError(f"fast handlers for routes that do not exist: {sorted(unknown)}")
    return router


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
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    metrics = Metrics(settings.metrics_dir or None)
    catalog = CatalogRepository()
    identity = Identity(settings)

    @asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
        try:
            pool = await create_pool(settings)
        except DB_UNAVAILABLE as exc:
            # NOTE: start anyway with a lazy pool: requests get a quick 503 until PostgreSQL
            # answers, and /readyz says so, instead of a worker that never starts.
            log.warning("PostgreSQL not reachable at start-up (%r); starting degraded", exc)
            pool = await create_pool(settings, lazy=True)
        redis = create_redis(settings)
        app.state.pool = pool
        app.state.redis = redis
        catalog.pool = pool
        try:
            await identity.start(pool, redis)
        except DB_UNAVAILABLE as exc:
            log.warning("identity start-up without PostgreSQL (%r); admin not ensured", exc)
        metrics.start()
        # PERF: everything built so far lives as long as the worker; move it out of the
        # collector's sight, and collect the young generation less often (each request makes a
        # few dozen short-lived objects; the default threshold of 700 ran a collection every
        # ~20 requests: 2.5 % of a worker's CPU on the product read).
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
        try:
            yield
        finally:
            await identity.stop()
            await metrics.stop()
            await redis.close()
            await pool.close()

    app = Litestar(
        route_handlers=[
            OpsController,
            CatalogController,
            AuthController,
            UsersController,
            JWKSController,
        ],
        lifespan=[resources],
        state=_state(settings=settings, metrics=metrics, catalog=catalog, identity=identity),
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
            render_plugins=[ScalarRenderPlugin()],
        ),
        request_max_body_size=settings.max_body_bytes,
        debug=False,
        logging_config=None,
    )
    fast_handlers = {
        "GET /api/v1/products/{product_id:uuid}": product_by_id(catalog),
        "GET /api/v1/users/me": my_profile(identity),
    }
    return Edge(
        app,  # type: ignore[arg-type]  # Litestar's ASGI types are narrower TypedDicts
        build_router(app, fast_handlers),
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        hsts_max_age=settings.hsts_max_age,
        hsts_include_subdomains=settings.hsts_include_subdomains,
        fast_paths=settings.edge_fast_paths,
        trusted_proxies=TrustedProxies(settings.trusted_proxies),
        stages=[
            # The token stage first: later stages (rate limits) may key on the principal.
            TokenStage(
                identity.verifier,
                identity.revocations,
                identity.refresh_provider if settings.identity_providers else None,
            ),
        ],
    )


def _state(**values: Any) -> Any:
    from litestar.datastructures import State

    return State(values)
