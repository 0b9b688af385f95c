"""A few pooled connections kept checked out for hot single-statement reads.

PERF: every ``Pool.fetchrow`` acquires and releases a connection through asyncpg's pool: an
``asyncio.Queue.get``, an ``asyncio.timeout`` on release and a future, each of which asks for
the running loop, which costs a ``getpid`` system call on CPython 3.11 (a visible share of a
worker's CPU on the uncached product read in a profile). A read lease hands a held connection
over with a list pop and takes it back with an append; it waits (a plain future) only when all
are busy.

Safety: a connection that saw any error or cancellation is given back to the pool (which resets
or replaces it) instead of being reused, so one broken query never poisons the next request.
A held connection found dead (PostgreSQL restarted, or dropped it) costs no client an error:
every dead one held idle goes back to the pool, and the read (one statement, safe to repeat) is
sent once more on a fresh connection; only if that one fails too does the caller see it. The
lease takes connections from the pool lazily (so a database that is down at start-up only costs
the first requests a quick error) and never more than ``size``, leaving the rest of the pool to
everything else.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

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
        except BaseException as exc:
            dead = isinstance(exc, Exception) and _dead(conn)
            # NOTE: a failed or cancelled query may leave the connection mid-protocol: the
            # pool knows how to reset or replace it; this lease does not try.
            await self._discard(conn)
            if not dead:
                raise  # the query's own error (or a cancellation): the caller's
            await self._drop_dead()
            return await self._fetchrow_fresh(query, args)
        self._put(conn)
        return row

    async def _fetchrow_fresh(self, query: str, args: tuple[Any, ...]) -> asyncpg.Record | None:
        """The read again, after a held connection was found dead, on a connection taken from
        the pool now (which connects anew if it has none alive)."""
        conn = await self._get()
        try:
            row = await conn.fetchrow(query, *args)
        except BaseException:
            await self._discard(conn)
            raise
        self._put(conn)
        return row

    async def _drop_dead(self) -> None:
        """Give back every idle connection that is closed: they died together (a restart)."""
        dead = [conn for conn in self._idle if _dead(conn)]
        if dead:
            self._idle[:] = [conn for conn in self._idle if conn not in dead]
            for conn in dead:
                await self._discard(conn)

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


def _dead(conn: Any) -> bool:
    """The connection is closed; or the pool took it back when it closed (a pool connection
    whose server went away is released by asyncpg itself, and refuses every call)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True
