"""PostgreSQL read replicas: a pool per streaming standby, used for reads only while it is
healthy and close enough behind the primary.

Which reads may go to a replica (the callers decide; see ``docs/scaling.md``): the catalog and
search reads of *anonymous* requests. A request that carries credentials reads from the
primary, always. That is the read-your-writes rule, and it needs no state: every write a caller
can make is an authenticated request, so a caller who may have written reads where it wrote,
whichever worker, gateway instance or region answers it next. Nothing in a transaction with a
write ever reaches a replica (writes take the primary pool, which this module never sees).

Health: a background task asks each replica every ``replica_check_interval`` seconds how far
its replay is behind (``now() - pg_last_xact_replay_timestamp()``, or 0 when it has replayed
everything it received). A replica further behind than ``replica_max_lag``, one that did not
answer, or one that is no longer in recovery (promoted: not ours to read from) is skipped until
a later check passes; the primary serves meanwhile. A read that fails on a replica with a
connection error or a recovery conflict is sent once more to the primary (reads are safe to
repeat) and the replica is marked down until the next check, so callers never see the
replica's trouble. Replica pools are lazy: a replica that does not answer at start-up costs a
logged warning, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncpg
import msgspec

from cygate.infra.db import DB_UNAVAILABLE, close_pool, create_pool

if TYPE_CHECKING:
    from cygate.infra.settings import DatabaseSettings

__all__ = ["REPLICA_FAILURES", "Replica", "ReplicaSet"]

log = logging.getLogger("cygate.db.replicas")

T = TypeVar("T")

# A read that failed this way on a replica is sent to the primary instead: the replica is
# unreachable, or it cancelled the query in a conflict with replay (hot standby).
REPLICA_FAILURES: tuple[type[BaseException], ...] = (
    *DB_UNAVAILABLE,
    asyncpg.SerializationError,
    asyncpg.QueryCanceledError,
)

# Seconds of replay lag: 0 when everything received is replayed (an idle primary makes no
# new transactions, so the replay timestamp alone would look ever older); NULL when the server
# is not a standby.
_LAG_SQL = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN NULL
    WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0.0
    ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8, 1e9)
END
"""


class Replica:
    """One standby: its pool, whether reads may use it, and what it served."""

    __slots__ = ("healthy", "lag", "name", "pool", "reads", "url")

    def __init__(self, name: str, url: str, pool: asyncpg.Pool) -> None:
        self.name = name
        self.url = url
        self.pool = pool
        self.healthy = False
        """Set by the checks only: a replica serves reads once one check passed."""
        self.lag: float | None = None
        self.reads = 0


class ReplicaSet:
    """The configured replicas of one worker; :meth:`read` runs a read on one of them."""

    __slots__ = (
        "_count",
        "_interval",
        "_max_lag",
        "_next",
        "_settings",
        "_task",
        "fallbacks",
        "replicas",
    )

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings
        self._max_lag = settings.replica_max_lag
        self._interval = settings.replica_check_interval
        self.replicas: list[Replica] = []
        self._next = 0
        self._task: asyncio.Task[None] | None = None
        self._count: Callable[[str, str], None] | None = None
        self.fallbacks = 0
        """Replica reads that failed and were served by the primary."""

    def counting(self, count: Callable[[str, str], None]) -> None:
        """``count(replica, outcome)`` after each replica read (``ok`` or ``fallback``)."""
        self._count = count

    async def start(self) -> None:
        """Open a lazy pool per replica and start the checks (the first one at once)."""
        for i, url in enumerate(self._settings.replica_urls):
            settings = msgspec.structs.replace(self._settings, url=url, replica_urls=[])
            pool = await create_pool(settings, lazy=True)
            self.replicas.append(Replica(f"replica{i}", url, pool))
        if self.replicas:
            self._task = asyncio.get_running_loop().create_task(self._check_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for replica in self.replicas:
            await close_pool(replica.pool, within=2.0)

    def pick(self) -> Replica | None:
        """A healthy replica (round robin), or None: the primary serves."""
        replicas = self.replicas
        n = len(replicas)
        for _ in range(n):
            replica = replicas[self._next % n]
            self._next += 1
            if replica.healthy:
                return replica
        return None

    async def read(
        self,
        op: Callable[[asyncpg.Pool], Awaitable[T]],
        fallback: Callable[[], Awaitable[T]],
    ) -> T:
        """``op`` on a healthy replica's pool; ``fallback()`` (the primary's read) when none is
        healthy or the replica fails the read."""
        replica = self.pick()
        if replica is None:
            return await fallback()
        try:
            result = await op(replica.pool)
        except REPLICA_FAILURES as exc:
            if replica.healthy:
                replica.healthy = False
                log.warning("replica %s failed a read (%r); the primary serves", replica.name, exc)
            self.fallbacks += 1
            if self._count is not None:
                self._count(replica.name, "fallback")
            return await fallback()
        replica.reads += 1
        if self._count is not None:
            self._count(replica.name, "ok")
        return result

    async def check(self) -> None:
        """One round of checks: each replica's lag, and whether it answers at all."""
        await asyncio.gather(*(self._check(r) for r in self.replicas))

    async def _check(self, replica: Replica) -> None:
        try:
            async with asyncio.timeout(self._settings.acquire_timeout):
                lag = await replica.pool.fetchval(_LAG_SQL)
        except (*REPLICA_FAILURES, asyncpg.PostgresError) as exc:
            if replica.healthy or replica.lag is None:
                log.warning(
                    "replica %s is not answering (%r); the primary serves its reads, "
                    "retrying every %g s",
                    replica.name,
                    exc,
                    self._interval,
                )
            replica.healthy = False
            replica.lag = float("inf")
            return
        was = replica.healthy
        replica.lag = float("inf") if lag is None else float(lag)
        replica.healthy = replica.lag <= self._max_lag
        if was and not replica.healthy:
            log.warning(
                "replica %s skipped: %s",
                replica.name,
                "not a standby" if lag is None else f"replay {lag:.1f} s behind",
            )
        elif replica.healthy and not was:
            log.info("replica %s serves reads", replica.name)

    async def _check_loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # pragma: no cover - a bug must not end the checks
                log.exception("replica check failed")
            await asyncio.sleep(self._interval)
