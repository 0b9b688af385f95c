"""A few pooled connections kept checked out for hot single-statement reads.

PERF: every ``Pool.fetchrow`` acquires and releases a connection through asyncpg's pool: an
``asyncio.Queue.get``, an ``asyncio.timeout`` on release and a future, each of which asks for
the running loop, which costs a ``getpid`` system call on CPython 3.11 (about 15 % of a worker's
CPU on the uncached product read, py-spy). A read lease hands a held connection over with a list
pop and takes it back with an append; it waits (a plain future) only when all are busy.

Safety: a connection that saw any error or cancellation is given back to the pool (which resets
or replaces it) instead of being reused, so one broken query never poisons the next request. The
lease takes connections from the pool lazily (so a database that is down at start-up only costs
the first requests a quick error) and never more than ``size``, leaving the rest of the pool to
everything else.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

__all__ = ["ReadLease"]


class ReadLease:
    """``await lease.fetchrow(sql, *args)``: like ``Pool.fetchrow``, on held connections."""

    __slots__ = ("_closed", "_held", "_idle", "_pool", "_size", "_waiters")

    def __init__(self, pool: asyncpg.Pool, size: int) -> None:
        self._pool = pool
        self._size = max(1, size)
        self._idle: list[Any] = []  # connections ready for a query
        self._held = 0  # connections taken from the pool (idle or busy)
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._closed = False

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        conn = self._idle.pop() if self._idle else await self._get()
        try:
            row = await conn.fetchrow(query, *args)
        except BaseException:
            # NOTE: a failed or cancelled query may leave the connection mid-protocol: the
            # pool knows how to reset or replace it; this lease does not try.
            await self._discard(conn)
            raise
        self._put(conn)
        return row

    async def _get(self) -> Any:
        if self._held < self._size or self._closed:
            self._held += 1
            try:
                return await self._pool.acquire()
            except BaseException:
                self._held -= 1
                self._wake_one()
                raise
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            conn = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._put(waiter.result())  # handed over just as we were cancelled
            raise
        if conn is None:  # a slot was freed rather than a connection handed over
            return await self._get()
        return conn

    def _put(self, conn: Any) -> None:
        if self._closed:
            self._held -= 1
            asyncio.get_running_loop().create_task(self._pool.release(conn))
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def _discard(self, conn: Any) -> None:
        self._held -= 1
        try:
            await self._pool.release(conn)
        finally:
            self._wake_one()

    def _wake_one(self) -> None:
        """A slot is free: let one waiter take a fresh connection from the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Give the idle connections back; busy ones go back when their query ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._held -= len(idle)
        for conn in idle:
            await self._pool.release(conn)
        self._wake_one()
