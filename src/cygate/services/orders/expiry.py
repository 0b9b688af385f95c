"""The expiry sweeper: unpaid orders past ``expires_at`` become ``expired`` and give their stock
back (``order.expired`` written in the same transaction).

One sweeper runs in every worker of every instance. NOTE: they need no leader:
``FOR UPDATE SKIP LOCKED`` hands each due order to exactly one sweeper transaction, and one that
a payment or a cancel holds is skipped until the next sweep (whose ``status = 'pending'`` check
then sees what that transaction did). The sweeper also deletes expired Idempotency-Keys.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from cygate.infra.tasks import stop as stop_task
from cygate.services.orders.controllers import invalidate_products
from cygate.services.orders.store import expire_due

if TYPE_CHECKING:
    import asyncpg

    from cygate.services.idempotency import Idempotency

__all__ = ["OrderExpiry"]

log = logging.getLogger("cygate.orders.expiry")

_PURGE_EVERY = 60.0  # seconds between two deletions of expired idempotency keys


class OrderExpiry:
    """``start()`` a background task sweeping every ``interval`` seconds (jittered); ``stop()``."""

    __slots__ = ("_last_purge", "_task", "batch", "cache", "idempotency", "interval", "pool")

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        interval: float,
        batch: int,
        cache: Any = None,
        idempotency: Idempotency | None = None,
    ) -> None:
        self.pool = pool
        self.interval = interval
        self.batch = batch
        self.cache = cache
        self.idempotency = idempotency
        self._task: asyncio.Task[None] | None = None
        self._last_purge = 0.0

    async def sweep(self) -> int:
        """Expire every due order now, one batch per transaction; returns how many."""
        total = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                count, touched = await expire_due(conn, self.batch)
            await invalidate_products(self.cache, touched)
            total += count
            # NOTE: until a batch comes back empty, not merely short: with LIMIT and FOR UPDATE,
            # PostgreSQL drops rows that another sweeper changed meanwhile after the limit, so
            # a short batch does not mean nothing is left (a test saw 28 of 30 expired).
            if count == 0:
                return total

    async def _purge_keys(self) -> None:
        now = time.monotonic()
        if self.idempotency is None or now - self._last_purge < _PURGE_EVERY:
            return
        self._last_purge = now
        await self.idempotency.purge_expired()

    async def _run(self) -> None:
        while True:
            # Jitter: the workers of many instances do not sweep in lockstep.
            await asyncio.sleep(self.interval * random.uniform(0.5, 1.5))
            try:
                expired = await self.sweep()
                if expired:
                    log.info("expired %d unpaid orders", expired)
                await self._purge_keys()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL down: try again next time
                log.warning("order expiry sweep failed: %r", exc)

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
