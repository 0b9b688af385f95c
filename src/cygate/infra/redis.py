"""Redis: one asyncio client per worker, with the hiredis parser, closed on shutdown.

Every key cygate writes goes through :meth:`RedisHandle.key`, which adds the configured prefix,
so tests (and several deployments sharing one server) never touch each other's data.

With ``redis_cluster`` the client is redis-py's :class:`~redis.asyncio.cluster.RedisCluster`:
``redis_url`` names one node or several (``redis://host1:7000,host2:7001/0``), the others are
found from the cluster itself. Every multi-key script and MGET of cygate keeps its keys under
one hash tag (``{...}``), so each call lands on one slot; see docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError
from redis.utils import HIREDIS_AVAILABLE

from cygate.infra import tracing

# NOTE: hiredis is a dependency (redis[hiredis]); its stub types the command as a 1-tuple.
_pack: Any = hiredis.pack_command

if TYPE_CHECKING:
    from cygate.infra.settings import RedisSettings

__all__ = [
    "HIREDIS_AVAILABLE",
    "Client",
    "HeldConnection",
    "RedisHandle",
    "check_cluster",
    "cluster_nodes",
    "create_redis",
    "redis_client",
    "tls_options",
]

Client = aioredis.Redis | RedisCluster
"""A plain client or a cluster client: cygate calls only what both offer."""


class RedisHandle:
    """The app's Redis client and its key prefix."""

    __slots__ = ("client", "prefix", "settings")

    def __init__(self, client: Client, prefix: str, settings: RedisSettings | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.settings = settings

    @property
    def cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def ping(self) -> bool:
        if isinstance(self.client, RedisCluster):
            # NOTE: PING goes to one random node; ready means every slot has a master that
            # answers (cluster_state:ok), which a node we reach reports for the whole cluster.
            info: Any = await self.client.cluster_info()
            return bool(info.get("cluster_state") == "ok")
        return bool(await self.client.ping())

    async def node_url(self, key: str) -> str:
        """A URL of the server that holds ``key`` (its master, on a cluster; the configured
        URL on a single Redis): where a plain connection, e.g. a subscriber, should go."""
        assert self.settings is not None
        client = self.client
        if not isinstance(client, RedisCluster):
            return self.settings.url
        await client.initialize()
        node = client.get_node_from_key(key)
        if node is None:
            raise RedisClusterException(f"no master holds the slot of {key!r}")
        return _node_url(self.settings.url, node.host, int(node.port))

    async def close(self) -> None:
        await self.client.aclose()


def create_redis(settings: RedisSettings) -> RedisHandle:
    """A client that fails fast: a hung Redis costs at most ``timeout`` per call."""
    client = redis_client(
        settings,
        socket_timeout=settings.timeout,
        connect_timeout=settings.timeout,
        max_connections=64,
    )
    return RedisHandle(client, settings.prefix, settings)


def redis_client(
    settings: RedisSettings, *, socket_timeout: float, connect_timeout: float, max_connections: int
) -> Client:
    """The client of ``settings`` (plain or cluster) with these timeouts; every Redis client of
    the app and of the events machinery is made here."""
    # NOTE: redis-py picks the hiredis parser by itself when hiredis is importable
    # (its DefaultParser); pyproject installs redis[hiredis], and /readyz reports which one runs.
    if not settings.cluster:
        # Traced (infra/tracing.py): a client span per command and per pipeline; off, the
        # plain client (no check per command). A cluster client is not traced.
        cls = TracedRedis if tracing.current() is not None else aioredis.Redis
        return cls.from_url(
            settings.url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            health_check_interval=30,
            retry_on_timeout=False,
            max_connections=max_connections,
            **tls_options(settings),
        )
    parts = urlsplit(settings.url)
    tls = tls_options(settings)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(settings.url)],
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=30,
        # NOTE: a refused or timed-out node costs one more try after the slot map is read
        # again (a failover moved its slots), not redis-py's default of three.
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        max_connections=max_connections,
        ssl=bool(tls),
        **tls,
    )


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The ``host:port`` pairs of a cluster URL: ``redis://[user:pw@]h1:p1[,h2:p2...][/0]``."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("redis", "rediss") or not sep:
        raise ValueError("a Redis Cluster URL is redis:// or rediss:// (no unix sockets)")
    hosts = rest.split("/", 1)[0].rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "6379"
        host = host.strip("[]")  # IPv6 literals
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad node {item!r} in the Redis Cluster URL")
        nodes.append((host, int(port)))
    return nodes


def _node_url(url: str, host: str, port: int) -> str:
    """``url`` with its host list replaced by one node (credentials and scheme kept)."""
    scheme, _, rest = url.partition("://")
    netloc = rest.split("/", 1)[0]
    creds, at, _hosts = netloc.rpartition("@")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{creds}{at}{host}:{port}/0"


def check_cluster(settings: RedisSettings) -> str | None:
    """With ``redis_cluster``: why the workers cannot use the cluster, as one line, or None.

    Run once before the workers, bounded by ``redis_timeout`` (at least a second) per node: no
    node of ``redis_url`` answers, or the one that answers is not in cluster mode. A node list
    with some dead nodes is fine as long as one answers (the others are learned from it)."""
    if not settings.cluster:
        return None
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        nodes = cluster_nodes(settings.url)
    except ValueError as exc:
        return f"invalid setting redis_url: {exc}"
    timeout = max(settings.timeout, 1.0)
    parts = urlsplit(settings.url)
    dead = []
    for host, port in nodes:
        client = redis.Redis(
            host=host,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            ssl=settings.url.startswith("rediss://"),
            **tls_options(settings),
        )
        try:
            enabled = client.info("cluster").get("cluster_enabled")
        except (TimeoutError, redis.RedisError, OSError) as exc:
            dead.append(f"{host}:{port} ({type(exc).__name__})")
            continue
        finally:
            client.close()
        if not enabled:
            return (
                f"redis_cluster is true but {host}:{port} (redis_url) is a Redis without "
                "cluster mode (cluster_enabled:0); set CYGATE_REDIS_CLUSTER=false for it"
            )
        return None
    return f"redis_cluster: no node of redis_url answers: {', '.join(dead)}"


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


class HeldConnection:
    """A Redis connection held by one caller for its own script calls, one call at a time.

    PERF: a call through redis-py's client costs the worker 60-90 µs of CPU (the pool, packing
    argument by argument, the response callbacks, an ``asyncio.wait_for`` task per write); the
    same ``EVALSHA`` packed by hiredis, written and read on a held connection costs far less
    (docs/caching.md, "The miss path"). It is made from the client's own settings (address,
    database, auth, TLS, connect timeout); the call as a whole is bounded by ``timeout``
    (``asyncio.timeout``: no task of its own). A plain client's only: a cluster client routes
    by slot itself.

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

    def evalsha(
        self, sha: str, script: str, keys: list[bytes], args: list[bytes]
    ) -> Awaitable[Any]:
        """``EVALSHA sha keys args``, to await (``script``'s text is loaded when Redis lacks
        it); a client span when tracing is on, as the traced client makes for its commands."""
        # PERF: the call's coroutine returned as it is (no frame of ours around it, off).
        call = self._evalsha(_pack((b"EVALSHA", sha, len(keys), *keys, *args)), script)
        if tracing.current() is not None:
            return _traced("EVALSHA", 1, call)
        return call

    async def _evalsha(self, command: bytes, script: str) -> Any:
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
