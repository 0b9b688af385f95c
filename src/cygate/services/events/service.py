"""Starts and stops the relay and the consumers (in each gateway worker, or ``cygate worker``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from cygate.services.events.consumer import ConsumerRunner, Handler
from cygate.services.events.handlers import AnalyticsHandler, CacheHandler, OrderSummaryHandler
from cygate.services.events.relay import Relay
from cygate.services.events.stream import events_redis

if TYPE_CHECKING:
    import asyncpg

    from cygate.edge.cache import ResponseCache
    from cygate.infra.metrics import Metrics
    from cygate.infra.redis import RedisHandle
    from cygate.infra.settings import DatabaseSettings, RedisSettings
    from cygate.services.events.settings import EventsSettings
    from cygate.services.privacy.settings import RetentionSettings

__all__ = ["EventsService"]

log = logging.getLogger("cygate.events")


class EventsService:
    """The relay (leader or standby) and one runner per configured consumer kind."""

    def __init__(
        self,
        settings: EventsSettings,
        pool: asyncpg.Pool,
        cache: ResponseCache | None,
        *,
        database: DatabaseSettings,
        redis: RedisSettings,
        relay: bool | None = None,
        consumers: list[str] | None = None,
        metrics: Metrics | None = None,
        retention: RetentionSettings | None = None,
    ) -> None:
        self.settings = settings
        self.retention = retention
        self.database = database
        self.redis_settings = redis
        self.metrics = metrics
        self.pool = pool
        self.redis: RedisHandle | None = None
        self.relay: Relay | None = None
        self.runners: list[ConsumerRunner] = []
        self._run_relay = settings.relay if relay is None else relay
        self._consumers = settings.consumers if consumers is None else consumers
        self._cache = cache
        self._tasks: list[asyncio.Task[None]] = []

    def _handlers(self) -> list[Handler]:
        out: list[Handler] = []
        for kind in self._consumers:
            if kind == "cache":
                if self._cache is None:
                    log.info("events: cache consumer skipped (caching is off)")
                    continue
                out.append(CacheHandler(self._cache))
            elif kind == "order_summary":
                out.append(OrderSummaryHandler())
            elif kind == "analytics":
                out.append(AnalyticsHandler())
        return out

    async def start(self) -> None:
        """Start the tasks in the running loop (returns at once)."""
        redis = self.redis = events_redis(self.settings, self.redis_settings)
        if self._run_relay:
            self.relay = Relay(
                self.settings, redis, self.metrics, database=self.database, retention=self.retention
            )
            self._spawn("relay", self.relay.run)
        for handler in self._handlers():
            runner = ConsumerRunner(self.settings, redis, self.pool, handler, metrics=self.metrics)
            self.runners.append(runner)
            self._spawn(f"consumer {handler.name}", runner.run)

    def _spawn(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        async def supervise() -> None:
            # NOTE: run() handles Redis and PostgreSQL outages itself; anything else is a bug,
            # logged, and the loop restarts rather than leaving the worker without it.
            while True:
                try:
                    await run()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("events: %s crashed; restarting in 1s", what)
                    await asyncio.sleep(1.0)

        self._tasks.append(asyncio.get_running_loop().create_task(supervise(), name=what))

    async def stop(self, within: float = 10.0) -> None:
        """Cancel every task (unacknowledged messages are reclaimed by another consumer) and
        wait for them, at most ``within`` seconds: a task stuck past its cancellation (say, in
        a database call waiting for the server to confirm a cancel) must not hang shutdown."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=within)
            if stuck:
                log.warning(
                    "events: %s still running %g s after cancellation; left behind",
                    ", ".join(sorted(t.get_name() for t in stuck)),
                    within,
                )
        self._tasks.clear()
        if self.redis is not None:
            await self.redis.close()
            self.redis = None
