"""Redis: one asyncio client per worker, with the hiredis parser, closed on shutdown.

Every key cygate writes goes through :meth:`RedisHandle.key`, which adds the configured prefix,
so tests (and several deployments sharing one server) never touch each other's data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.utils import HIREDIS_AVAILABLE

from cygate.infra import tracing

if TYPE_CHECKING:
    from cygate.infra.settings import RedisSettings

__all__ = ["HIREDIS_AVAILABLE", "RedisHandle", "create_redis", "tls_options"]


class RedisHandle:
    """The app's Redis client and its key prefix."""

    __slots__ = ("client", "prefix")

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()


def create_redis(settings: RedisSettings) -> RedisHandle:
    """A client that fails fast: a hung Redis costs at most ``timeout`` per call."""
    # NOTE: redis-py picks the hiredis parser by itself when hiredis is importable
    # (its DefaultParser); pyproject installs redis[hiredis], and /readyz reports which one runs.
    # Traced (infra/tracing.py): a client span per command and per pipeline; off, the plain
    # client (no check per command).
    cls = TracedRedis if tracing.current() is not None else aioredis.Redis
    client = cls.from_url(
        settings.url,
        socket_timeout=settings.timeout,
        socket_connect_timeout=settings.timeout,
        health_check_interval=30,
        retry_on_timeout=False,
        max_connections=64,
        **tls_options(settings),
    )
    return RedisHandle(client, settings.prefix)


async def _traced(name: str, size: int, call: Any) -> Any:
    traced = tracing.current()
    if traced is None or not traced.tracer_active():
        return await call
    span = traced.start(
        f"redis {name}",
        kind="client",
        attributes={
            "db.system.name": "redis",
            "db.operation.name": name,
            "db.operation.batch.size": size,
        },
    )
    try:
        return await call
    except BaseException as exc:
        traced.fail(span, exc)
        raise
    finally:
        span.end()


class TracedRedis(aioredis.Redis):
    """The client with a span per command (child of the current span; none outside a sampled
    request or task)."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        name = str(args[0]).upper() if args else "?"
        return await _traced(name, 1, super().execute_command(*args, **options))  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return TracedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )


class TracedPipeline(Pipeline):
    """A pipeline with one span for its round trip."""

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        name = "MULTI" if self.is_transaction else "PIPELINE"
        size = len(self.command_stack)
        return await _traced(name, size, super().execute(raise_on_error))  # type: ignore[no-any-return]


def tls_options(settings: RedisSettings) -> dict[str, Any]:
    """The TLS keywords of every Redis client cygate opens (``from_url``): none for redis:// and
    unix://; for rediss:// the certificate and host name are verified (redis-py's defaults,
    said here so they cannot drift), against ``tls_ca_file`` or the system's CAs."""
    if not settings.url.startswith("rediss://"):
        return {}
    tls: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.tls_ca_file:
        tls["ssl_ca_certs"] = settings.tls_ca_file
    if settings.tls_cert_file:
        tls["ssl_certfile"] = settings.tls_cert_file
        tls["ssl_keyfile"] = settings.tls_key_file
    return tls
