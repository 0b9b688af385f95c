"""Exponential back-off for the loops that retry: one helper instead of a doubling written out
in each loop.

A loop makes one :class:`Backoff` and, after each failure, waits :meth:`Backoff.next` seconds
(or ``await backoff.sleep()``): the first wait is ``first``, each later one ``factor`` times the
one before, never more than ``cap``. After a success it calls :meth:`Backoff.reset`, so the next
failure starts from ``first`` again. ``jitter`` (0 to 1) shortens each wait by a random part of
up to that fraction of it, so that processes which failed together do not retry in step; 0 (the
default) keeps the waits exact.

The loops decide the rest themselves (what counts as a failure, whether to give up, what to log
with the wait they are about to take): the helper only says how long to wait.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Waits that grow by ``factor`` from ``first`` up to ``cap`` seconds (see the module
    docstring)."""

    __slots__ = ("_current", "_random", "cap", "factor", "first", "jitter")

    def __init__(
        self,
        first: float,
        cap: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.0,
        random_fn: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"need 0 < first <= cap, got first={first!r}, cap={cap!r}")
        if factor < 1:
            raise ValueError(f"factor must be at least 1, got {factor!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {jitter!r}")
        self.first = first
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._random = random_fn
        self._current = first

    def next(self) -> float:
        """The wait after this failure (jitter applied); the one after it grows."""
        delay = self._current
        self._current = min(delay * self.factor, self.cap)
        if self.jitter:
            delay -= delay * self.jitter * self._random()
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits ``first`` again."""
        self._current = self.first

    async def sleep(self) -> float:
        """Wait :meth:`next` seconds; returns how long that was."""
        delay = self.next()
        await asyncio.sleep(delay)
        return delay
