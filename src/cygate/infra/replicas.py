"""PostgreSQL read replicas: a pool per streaming standby, used for reads only while it is
healthy and has replayed what the primary had written ``replica_max_lag`` seconds ago.

Which reads may go to a replica (``docs/scaling.md``, "Read replicas"): the catalog's and
search's reads, and only while no write may be missing from them for the reader:

- **A caller's own writes.** The fast product read sends a request that carries credentials to
  the primary: a caller that can write is signed in. The Litestar handlers behind the response
  cache cannot see the caller (a public entry is one answer for everyone), so for them the next
  rule does the work.
- **The fence.** Every catalog or stock write invalidates the response cache: at once in the
  writer's process, through Redis pub/sub in every other. A process that has seen an
  invalidation (the cache's epoch moved, or :meth:`ReplicaSet.fence` was called) reads only the
  primary for ``replica_max_lag + 3 * replica_check_interval`` seconds, long enough for every
  replica still in use to have replayed the write. So neither the writer nor a cache fill (one
  answer for everyone) reads an older row than the write it follows; in another process, once
  the invalidation has arrived (the same bound the cache itself keeps).
- Writes, and everything in a transaction with a write, use the primary's pool, which this
  module never hands out.

Health (LSN): every ``replica_check_interval`` seconds the primary's ``pg_current_wal_lsn()``
is sampled and each replica asked whether its ``pg_last_wal_replay_lsn()`` has reached the
primary's sample from ``replica_max_lag`` seconds before (the oldest kept while there is none
that old). A replica behind that, one that did not answer, or one that is no longer in recovery
(promoted: not ours to read from) is skipped until a later check passes; the primary serves
meanwhile. A read that fails on a replica with a connection error or a recovery conflict is sent
once more to the primary (reads are safe to repeat) and the replica is marked down until the
next check, so callers never see the replica's trouble. Replica pools are lazy: a replica that
does not answer at start-up costs a logged warning, never a hang. States are trusted only while
the primary sample they were checked against is recent (see :meth:`ReplicaSet.check`): when the
checks fall behind, or the primary does not answer them, the primary serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
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

# True: a standby that has replayed up to the given primary LSN; False: behind; NULL: not a
# standby (or nothing replayed yet).
# (LSNs as byte positions, int8: asyncpg passes pg_lsn as an integer.)
_CAUGHT_UP_SQL = """
SELECT CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 >= $1 END
"""
_PRIMARY_LSN_SQL = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8"


class Replica:
    """One standby: its pool, whether reads may use it, and what it served."""

    __slots__ = ("healthy", "name", "pool", "reads", "seen", "url")

    def __init__(self, name: str, url: str, pool: asyncpg.Pool) -> None:
        self.name = name
        self.url = url
        self.pool = pool
        self.healthy = False
        """Set by the checks only: a replica serves reads once one check passed."""
        self.seen = False
        """A check has had an answer (warnings are logged on changes only)."""
        self.reads = 0


class ReplicaSet:
    """The configured replicas of one worker; :meth:`read` runs a read on one of them."""

    __slots__ = (
        "_count",
        "_epoch",
        "_epoch_seen",
        "_fresh_until",
        "_interval",
        "_max_lag",
        "_next",
        "_primary",
        "_primary_until",
        "_samples",
        "_settings",
        "_task",
        "fallbacks",
        "replicas",
        "window",
    )

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings
        self._max_lag = settings.replica_max_lag
        self._interval = settings.replica_check_interval
        self.window = self._max_lag + 3 * self._interval
        """Seconds after a write (an invalidation seen) during which only the primary reads:
        the lag bound, the age of the primary's sample (one interval) and of the replicas'
        states (at most two intervals: older ones are not trusted, see :meth:`pick`)."""
        self._fresh_until = 0.0
        self.replicas: list[Replica] = []
        self._next = 0
        self._task: asyncio.Task[None] | None = None
        self._count: Callable[[str, str], None] | None = None
        self._primary: asyncpg.Pool | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._primary_until = 0.0
        self._epoch: Callable[[], int] | None = None
        self._epoch_seen = 0
        self.fallbacks = 0
        """Replica reads that failed and were served by the primary."""

    def follow_epoch(self, epoch: Callable[[], int]) -> None:
        """``epoch()`` moves with every cache invalidation this process sees: each move is a
        :meth:`fence` (checked when a read looks for a replica)."""
        self._epoch = epoch
        self._epoch_seen = epoch()

    def fence(self) -> None:
        """A write happened (or may have): read only the primary for :attr:`window` seconds."""
        self._primary_until = time.monotonic() + self.window

    def states(self) -> dict[str, str]:
        """Each replica's state for readiness reports: ``ok`` (serving reads) or ``skipped``
        (lagging, failing, not a standby, or not checked yet: the primary serves)."""
        return {r.name: "ok" if r.healthy else "skipped" for r in self.replicas}

    def counting(self, count: Callable[[str, str], None]) -> None:
        """``count(replica, outcome)`` after each replica read (``ok`` or ``fallback``)."""
        self._count = count

    async def start(self, primary: asyncpg.Pool) -> None:
        """Open a lazy pool per replica and start the checks (the first one at once)."""
        self._primary = primary
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
        if self._epoch is not None:
            epoch = self._epoch()
            if epoch != self._epoch_seen:
                self._epoch_seen = epoch
                self.fence()
        now = time.monotonic()
        if now < self._primary_until or now > self._fresh_until:
            return None  # fenced, or the checks are late: the states may be out of date
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
        """One round of checks: the primary's position, then each replica's."""
        if self._primary is None:
            return
        # NOTE: the time is taken before the question: every write committed before it is
        # within the LSN the primary answers.
        now = time.monotonic()
        try:
            async with asyncio.timeout(self._settings.acquire_timeout):
                lsn = await self._primary.fetchval(_PRIMARY_LSN_SQL)
        except (*REPLICA_FAILURES, asyncpg.PostgresError):
            return  # the primary is away: nothing to compare with (the states go stale)
        samples = self._samples
        samples.append((now, lsn))
        # the newest sample at least max_lag old is the bar; older ones are not needed again
        while len(samples) > 1 and samples[1][0] <= now - self._max_lag:
            samples.popleft()
        bar_time, bar = samples[0]
        await asyncio.gather(*(self._check(r, bar) for r in self.replicas))
        # A healthy replica has every write committed before bar_time; a fence covers writes
        # up to `window` before now. So the states are trusted until bar_time + window: late
        # checks (a busy loop, a slow server) never let a replica serve a read it may lack.
        self._fresh_until = bar_time + self.window

    async def _check(self, replica: Replica, bar: int) -> None:
        try:
            async with asyncio.timeout(self._settings.acquire_timeout):
                caught_up = await replica.pool.fetchval(_CAUGHT_UP_SQL, bar)
        except (*REPLICA_FAILURES, asyncpg.PostgresError) as exc:
            if replica.healthy or not replica.seen:
                log.warning(
                    "replica %s is not answering (%r); the primary serves its reads, "
                    "retrying every %g s",
                    replica.name,
                    exc,
                    self._interval,
                )
            replica.healthy = False
            replica.seen = True
            return
        was = replica.healthy
        replica.seen = True
        replica.healthy = bool(caught_up)
        if was and not replica.healthy:
            log.warning(
                "replica %s skipped: %s",
                replica.name,
                "not a standby"
                if caught_up is None
                else f"replay more than {self._max_lag:g} s behind",
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
