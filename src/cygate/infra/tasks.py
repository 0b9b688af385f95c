"""Small pieces for background tasks and "one does the work, the others wait for it" on the
event loop.

``spawn(coro)`` runs a coroutine as a task that nobody awaits, keeping it alive until it ends
(the loop itself holds only weak references to tasks); ``stop(task)`` cancels one and waits
for it to end. ``wake(waiting, value)`` gives ``value``
to every waiter's own future: each waiter awaits a future of its own, so a waiter's
cancellation never touches the others (and shielding one shared future costs more per waiter).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

__all__ = ["spawn", "stop", "wake"]

T = TypeVar("T")

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task of ``coro`` on the running loop, referenced until it is done."""
    task = asyncio.get_running_loop().create_task(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing to do) and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def wake(waiting: Iterable[asyncio.Future[T]], value: T) -> None:
    """Resolve every waiter's future that is still pending with ``value``."""
    for future in waiting:
        if not future.done():
            future.set_result(value)
