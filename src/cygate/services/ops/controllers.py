"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio
import hmac
import os
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from litestar import Controller, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException

from cygate.edge.access import require_loopback
from cygate.edge.problem import PROBLEM_CONTENT_TYPE, problem_body
from cygate.infra import outbox
from cygate.services.openapi import answers, problems

if TYPE_CHECKING:
    from cygate.infra.replicas import ReplicaSet
    from cygate.infra.settings import MetricsSettings

__all__ = ["OpsController", "Readiness"]

_CHECK_TIMEOUT = 1.0
_CPU_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _draining() -> bool:
    """Whether ``cygate serve`` got SIGTERM and holds the drain back (its shutdown delay):
    the main process marks it with a file whose path the workers inherit."""
    mark = os.environ.get("CYGATE__DRAIN_MARK", "")
    return bool(mark) and os.path.exists(mark)


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    postgres: Literal["ok", "down"]
    redis: Literal["ok", "degraded"]
    replicas: dict[str, Literal["ok", "skipped"]] | msgspec.UnsetType = msgspec.UNSET
    """Each read replica, when replicas are configured (never gating readiness)."""


async def _postgres_ok(state: State) -> bool:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT):
            return bool(await state.pool.fetchval("SELECT 1"))
    except Exception:  # any failure means "cannot serve"; the reason goes to the log elsewhere
        return False


async def _redis_ok(state: State) -> bool:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT):
            return bool(await state.redis.ping())
    except Exception:
        return False


async def _outbox_backlog(state: State) -> tuple[int, float] | None:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT):
            return await outbox.backlog(state.pool)
    except Exception:  # PostgreSQL down: cygate_postgres_up says so; no backlog figure
        return None


class OpsController(Controller):
    tags = ["operations"]
    include_in_schema = True

    @get("/healthz", summary="Liveness: 200 while the process lives", cache_control=None)
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/readyz",
        summary=(
            "Readiness: PostgreSQL must answer and the instance not be shutting down; Redis down "
            "is degraded; replicas reported"
        ),
        responses=answers(200, Readiness, "Ready (Redis may be degraded)")
        | problems(503, s503="PostgreSQL is not answering, or the instance is shutting down"),
    )
    async def readyz(self, request: Request[Any, Any, Any], state: State) -> Response[Any]:
        pg, rd = await asyncio.gather(_postgres_ok(state), _redis_ok(state))
        doc: dict[str, Any] = {
            "postgres": "ok" if pg else "down",
            "redis": "ok" if rd else "degraded",
        }
        replicas: ReplicaSet | None = state.get("replicas")
        if replicas is not None:
            # reported, never gating: a skipped replica's reads go to the primary
            doc["replicas"] = replicas.states()
        draining = _draining()
        if pg and not draining:
            return Response(doc, headers={"cache-control": "no-store"})
        if draining:
            doc["shutting_down"] = True
        body = problem_body(
            503,
            "the instance is shutting down" if draining else "PostgreSQL is not answering",
            instance=request.url.path,
            request_id=str(request.scope.get("cygate.request_id", "")),
            extra=doc,
        )
        return Response(
            body,
            status_code=503,
            media_type=PROBLEM_CONTENT_TYPE,
            headers={"retry-after": "1", "cache-control": "no-store"},
        )

    @get(
        "/metrics",
        summary="Prometheus text format",
        media_type=MediaType.TEXT,
        responses=problems(401, 403, s403="Served to loopback callers only (configurable)"),
    )
    async def metrics(self, request: Request[Any, Any, Any], state: State) -> Response[str]:
        settings: MetricsSettings = state.settings.metrics
        if settings.access == "loopback":
            require_loopback(request, "metrics are served to")
        elif settings.access == "token":
            expected = f"Bearer {settings.token}"
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), expected.encode()):
                raise NotAuthorizedException("a metrics token is required")
        pool = state.pool
        pg, rd, backlog = await asyncio.gather(
            _postgres_ok(state), _redis_ok(state), _outbox_backlog(state)
        )
        extra: dict[str, float] = {
            "cygate_db_pool_size": pool.get_size(),
            "cygate_db_pool_idle": pool.get_idle_size(),
            "cygate_db_pool_max": pool.get_max_size(),
            "cygate_postgres_up": 1 if pg else 0,
            "cygate_redis_up": 1 if rd else 0,
            "cygate_cpu_cores": _CPU_CORES or 1,
        }
        if backlog is not None:
            extra["cygate_events_outbox_pending"] = backlog[0]
            extra["cygate_events_outbox_lag_seconds"] = round(backlog[1], 3)
        if state.cache is not None:
            extra.update(state.cache.gauges())
        return Response(
            state.metrics.render(extra),
            media_type="text/plain; version=0.0.4; charset=utf-8",
            headers={"cache-control": "no-store"},
        )
