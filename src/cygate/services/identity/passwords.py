"""Password hashing: Argon2id (argon2-cffi) in a thread pool, never on the event loop.

PERF/NOTE: one hash or verify is expensive in CPU by design (the Argon2 parameters).
argon2-cffi calls the C library through cffi, which releases the GIL, so the work runs in a
small thread pool (``argon2_threads`` per worker) while the event loop keeps serving other
requests.

A login for an email that has no account verifies the password against a dummy hash made with
the same parameters, so both answers cost the same time.
"""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["Passwords"]


class Passwords:
    """Hash and verify passwords off the event loop."""

    __slots__ = ("_dummy", "_executor", "_hasher")

    def __init__(self, *, time_cost: int, memory_cost: int, parallelism: int, threads: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        """A new Argon2id PHC string for ``password``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``; with ``stored`` None (no such account, or an
        erased one) the same work is done against a dummy hash, and the answer is False."""
        loop = asyncio.get_running_loop()
        if stored is None:
            if self._dummy is None:
                self._dummy = await self.hash(secrets.token_urlsafe(16))
            await loop.run_in_executor(self._executor, self._check, self._dummy, password)
            return False
        return await loop.run_in_executor(self._executor, self._check, stored, password)

    def _check(self, stored: str, password: str) -> bool:
        try:
            return bool(self._hasher.verify(stored, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """True when ``stored`` was made with other parameters than the current ones."""
        try:
            return bool(self._hasher.check_needs_rehash(stored))
        except InvalidHashError:
            return True

    async def warm_up(self) -> None:
        """Make the dummy hash now, so the first unknown-account login is not the slow one."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
