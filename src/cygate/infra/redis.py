"""Redis: one asyncio client per worker, with the hiredis parser, closed on shutdown.

Every key cygate writes goes through :meth:`RedisHandle.key`, which adds the configured prefix,
so tests (and several deployments sharing one server) never touch each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.utils import HIREDIS_AVAILABLE

# NOTE: hiredis is a dependency (redis[hiredis]); its stub types the command as a 1-tuple.
_pack: Any = hiredis.pack_command

if TYPE_CHECKING:
    from cygate.infra.settings import RedisSettings

__all__ = ["HIREDIS_AVAILABLE", "HeldConnection", "RedisHandle", "create_redis", "tls_options"]


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
    client = aioredis.Redis.from_url(
        settings.url,
        socket_timeout=settings.timeout,
        socket_connect_timeout=settings.timeout,
        health_check_interval=30,
        retry_on_timeout=False,
        max_connections=64,
        **tls_options(settings),
    )
    return RedisHandle(client, settings.prefix)


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


class HeldConnection:
    """A Redis connection held by one caller for its own script calls, one call at a time.

    PERF: a call through redis-py's client costs the worker 60-90 µs of CPU (the pool, packing
    argument by argument, the response callbacks, an ``asyncio.wait_for`` task per write); the
    same ``EVALSHA`` packed by hiredis, written and read on a held connection costs about a
    third of that. It is made from the client's own settings (address, database, auth, TLS,
    connect timeout); the call as a whole is bounded by ``timeout`` (``asyncio.timeout``: no
    task of its own).

    NOTE: a held connection goes stale when Redis restarts or something between drops it: the
    first write or read on it fails although Redis answers. So a connection error on a
    connection that had answered before is followed by one new connection and one more try
    (what redis-py's client does with its retries); a new connection that fails raises. A
    script whose reply was lost may so run twice: the caller's scripts must allow it (the
    cache's lookup takes a lease its own token already holds as its own). ``NOSCRIPT`` (a
    restarted Redis has no scripts) loads the script on the connection and calls once more.
    A timeout, a cancellation or any error but a Redis error reply drops the connection."""

    __slots__ = ("_class", "_conn", "_kwargs", "_timeout")

    def __init__(self, client: aioredis.Redis, timeout: float) -> None:
        pool = client.connection_pool
        self._class: Any = pool.connection_class
        # The whole call is bounded below; redis-py's per-write wait_for is not needed.
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._timeout = timeout
        self._conn: Any = None

    async def evalsha(self, sha: str, script: str, keys: list[bytes], args: list[bytes]) -> Any:
        """``EVALSHA sha keys args`` (``script``'s text is loaded when Redis lacks it)."""
        command = _pack((b"EVALSHA", sha, len(keys), *keys, *args))
        async with asyncio.timeout(self._timeout):
            conn = self._conn
            if conn is not None:
                try:
                    return await self._call(conn, command, script)
                except (RedisConnectionError, OSError):
                    pass  # stale (Redis restarted?), dropped: one new connection, once
            conn = self._conn = self._class(**self._kwargs)
            return await self._call(conn, command, script)

    async def _call(self, conn: Any, command: bytes, script: str) -> Any:
        try:
            await conn.send_packed_command(command, check_health=False)
            try:
                return await conn.read_response()
            except NoScriptError:
                await conn.send_packed_command(_pack((b"SCRIPT", b"LOAD", script)), False)
                await conn.read_response()
                await conn.send_packed_command(command, check_health=False)
                return await conn.read_response()
        except ResponseError:
            raise  # an error reply: the connection is in step, keep it
        except BaseException:
            await self._drop()
            raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        await self._drop()
