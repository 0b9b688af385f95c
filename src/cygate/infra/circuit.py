"""A dependency's circuit: after a failure, callers skip the dependency without waiting.

Used for Redis by the rate limiter (``cygate.infra.ratelimit_store``) and the revocation check
(``cygate.services.identity.revocation``): a hung Redis (e.g. SIGSTOP) accepts connections and
never answers, so without a circuit every caller would wait its full timeout, again and again.

A failure opens the circuit for ``backoff`` seconds, during which :meth:`Circuit.admit` says no
at once; then the first caller to ask is the probe (the circuit stays shut for the others until
the probe reports, at most ``timeout`` later), and a success closes it: the dependency is used
again by itself. Per worker process (one event loop, no locks).
"""

from __future__ import annotations

import logging
import time

__all__ = ["Circuit"]


class Circuit:
    """See the module docstring. The caller reports each admitted call with :meth:`succeeded`
    or :meth:`failed`."""

    __slots__ = ("_down_until", "backoff", "failures", "log", "name", "timeout")

    def __init__(self, name: str, *, timeout: float, backoff: float, log: logging.Logger) -> None:
        self.name = name
        """What the log lines call the dependency (``"rate-limit store"``)."""
        self.timeout = timeout
        """Most a probe may take, seconds (the others skip the dependency meanwhile)."""
        self.backoff = backoff
        """Seconds the circuit stays open after a failure."""
        self.log = log
        self.failures = 0
        self._down_until = 0.0

    @property
    def usable(self) -> bool:
        """False while the circuit is open (no side effect, unlike :meth:`admit`)."""
        return not self._down_until or self._down_until <= time.monotonic()

    @property
    def retry_after(self) -> float:
        """Seconds until the dependency is tried again (the backoff while it is closed)."""
        return max(self._down_until - time.monotonic(), 0.0) or self.backoff

    def admit(self) -> bool:
        """May a call go to the dependency now? False while open; the first caller after the
        backoff is the probe (True), and the others are refused until it reports."""
        if self._down_until:
            now = time.monotonic()
            if self._down_until > now:
                return False
            self._down_until = now + self.timeout + self.backoff
        return True

    def succeeded(self) -> None:
        if self._down_until:
            self._down_until = 0.0
            self.log.warning("%s answers again (after %d failures)", self.name, self.failures)

    def failed(self, exc: BaseException, fallback: str) -> None:
        """Open the circuit for ``backoff`` seconds. Logged when it opens (not each failed
        probe); ``fallback`` says what callers do meanwhile."""
        self.failures += 1
        if not self._down_until:
            self.log.warning("%s failed (%r); %s, trying again every %ss",
                             self.name, exc, fallback, self.backoff)  # fmt: skip
        self._down_until = time.monotonic() + self.backoff
