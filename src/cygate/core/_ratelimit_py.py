"""Rate-limit decisions over a bounded key table: the pure-Python reference.

Two tables, one per kind of state a limit keeps in the process:

``GCRALimiterPy``
    One limit (``interval_ns`` between requests at the sustained rate, ``burst`` requests at
    once) decided entirely here, with the Generic Cell Rate Algorithm: per key one number, the
    theoretical arrival time (TAT). A request at ``now`` is allowed when
    ``max(TAT, now) + interval - now <= interval * burst``; then ``TAT`` moves on by one
    interval. Nothing else is stored, no window, no list of timestamps.

``LeaseTablePy``
    Per key, what Redis last said: a lease of tokens this process may spend on its own until
    it expires (``batched`` mode), or "refused until T" (both global modes). See
    :mod:`cygate.edge.ratelimit` for how the stage uses it.

Both keep at most ``capacity`` keys in fixed slots. When a new key needs a slot and none is
free, a CLOCK hand sweeps the slots: an *idle* slot (a GCRA key whose TAT has passed, which is
exactly the state of a key never seen; a lease or refusal that has expired) is taken first, as
forgetting it loses nothing. A slot hit since the hand last passed gets a second chance. Only
when the sweep meets an active, unreferenced key is state lost (``evicted`` counts those): that
key starts again with a full burst. New keys enter unreferenced, so a flood of one-off keys
(random client addresses) cannot push out keys that are hit repeatedly.

Clock: monotonic nanoseconds from ``clock()`` (default :func:`time.monotonic_ns`; the compiled
twin reads ``CLOCK_MONOTONIC`` itself, the same clock). Tests inject their own.

After each decision the attributes ``remaining``, ``reset_ns`` and ``retry_ns`` describe it
(read them before the next call): the requests still allowed at once, the time until the full
burst is available again, and (when refused) the time until one request would be allowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = [
    "DENIED",
    "GRANTED",
    "MAX_SPAN_NS",
    "NEED_REDIS",
    "GCRALimiterPy",
    "LeaseTablePy",
    "header_number",
    "whole_seconds",
]

Clock = Callable[[], int]

GRANTED = 1
"""``LeaseTable.take``: a token of the lease was spent; the request is allowed."""
DENIED = 0
"""``LeaseTable.take``: Redis refused this key recently and that refusal still holds."""
NEED_REDIS = -1
"""``LeaseTable.take``: no usable lease (none, spent or expired): ask Redis."""

MAX_SPAN_NS = 1 << 62
"""``interval_ns * burst`` (and every stored time) stays below this: int64 arithmetic in C."""


_NS = 1_000_000_000
REMAINING = b"ratelimit-remaining"
RESET = b"ratelimit-reset"
# PERF: header values for small numbers, made once (b"%d" % n costs more than the lookup).
HEADER_NUMBERS = tuple(b"%d" % n for n in range(4096))


def header_number(n: int) -> bytes:
    """``n`` as a header value (decimal ASCII)."""
    return HEADER_NUMBERS[n] if 0 <= n < 4096 else b"%d" % n


def whole_seconds(ns: int) -> int:
    """Whole seconds, rounded up (0 when not positive): a client that waits this long has
    waited long enough (``RateLimit-Reset``, ``Retry-After``)."""
    return -(-ns // _NS) if ns > 0 else 0


class _Headers:
    """The ``RateLimit-*`` headers of a table's last allowed decision."""

    __slots__ = ()
    remaining: int
    reset_ns: int

    def append_headers(
        self,
        out: list[tuple[bytes, bytes]],
        limit_pair: tuple[bytes, bytes],
        policy_pair: tuple[bytes, bytes],
    ) -> None:
        """Append to ``out``: ``limit_pair``, ``RateLimit-Remaining`` (:attr:`remaining`),
        ``RateLimit-Reset`` (:attr:`reset_ns` in whole seconds, rounded up; 0 when not
        positive) and ``policy_pair``. PERF: the edge's rate-limit stage, once per request."""
        out += (
            limit_pair,
            (REMAINING, header_number(self.remaining)),
            (RESET, header_number(whole_seconds(self.reset_ns))),
            policy_pair,
        )


def _check_capacity(capacity: int) -> None:
    if not 1 <= capacity <= 1 << 30:
        raise ValueError(f"capacity must be between 1 and 2**30, got {capacity}")


class GCRALimiterPy(_Headers):
    """One rate limit decided locally (GCRA), over at most ``capacity`` keys."""

    __slots__ = (
        "_clock",
        "_hand",
        "_index",
        "_keys",
        "_ref",
        "_tat",
        "_used",
        "burst",
        "capacity",
        "evicted",
        "interval_ns",
        "remaining",
        "reset_ns",
        "retry_ns",
        "tolerance_ns",
    )

    def __init__(
        self, interval_ns: int, burst: int, capacity: int = 65536, clock: Clock | None = None
    ) -> None:
        if interval_ns < 1:
            raise ValueError(f"interval_ns must be at least 1, got {interval_ns}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if interval_ns * burst >= MAX_SPAN_NS:
            raise ValueError("interval_ns * burst is too large (over 146 years)")
        _check_capacity(capacity)
        self.interval_ns = interval_ns
        self.burst = burst
        self.tolerance_ns = interval_ns * burst
        self.capacity = capacity
        self._clock: Clock = clock or time.monotonic_ns
        self._index: dict[str, int] = {}
        self._keys: list[str] = []  # grows with the keys seen (slots are handed out in order)
        self._tat = [0] * capacity
        self._ref = bytearray(capacity)
        self._used = 0
        self._hand = 0
        self.evicted = 0
        """Active keys forgotten because the table was full (each got a fresh burst)."""
        self.remaining = 0
        self.reset_ns = 0
        self.retry_ns = 0

    def __len__(self) -> int:
        return len(self._index)

    def hit(self, key: str, cost: int = 1) -> bool:
        """Decide one request (``cost`` tokens) for ``key``; True when allowed.

        A cost above ``burst`` can never be allowed (``retry_ns`` is then 0: no wait helps).
        """
        if cost < 1:
            raise ValueError(f"cost must be at least 1, got {cost}")
        now = self._clock()
        slot = self._index.get(key)
        if slot is None:
            tat = now
        else:
            tat = self._tat[slot]
            tat = max(tat, now)
            self._ref[slot] = 1
        tolerance = self.tolerance_ns
        if cost > self.burst:
            self.remaining = max(0, (tolerance - (tat - now)) // self.interval_ns)
            self.reset_ns = tat - now
            self.retry_ns = 0
            return False
        new_tat = tat + self.interval_ns * cost
        if new_tat - now > tolerance:
            self.remaining = 0
            self.reset_ns = tat - now
            self.retry_ns = new_tat - tolerance - now
            return False
        if slot is None:
            slot = self._insert(key, now)
        self._tat[slot] = new_tat
        self.remaining = (tolerance - (new_tat - now)) // self.interval_ns
        self.reset_ns = new_tat - now
        self.retry_ns = 0
        return True

    def refund(self, key: str, cost: int = 1) -> None:
        """Give back ``cost`` tokens taken by an allowed :meth:`hit` (a later limit refused)."""
        if not 1 <= cost <= self.burst:
            raise ValueError(f"cost must be between 1 and burst, got {cost}")
        slot = self._index.get(key)
        if slot is not None:
            self._tat[slot] -= self.interval_ns * cost

    def _insert(self, key: str, now: int) -> int:
        if self._used < self.capacity:
            slot = self._used
            self._used += 1
            self._keys.append(key)
        else:
            slot = self._sweep(now)
            self._keys[slot] = key
        self._index[key] = slot
        self._ref[slot] = 0  # NOTE: new keys enter unreferenced (see the module docstring)
        return slot

    def _sweep(self, now: int) -> int:
        # Terminates within two turns: the first clears every reference bit it passes.
        capacity = self.capacity
        while True:
            slot = self._hand
            self._hand = slot + 1 if slot + 1 < capacity else 0
            if self._tat[slot] <= now:
                break  # idle: the state of a key never seen, nothing is lost
            if self._ref[slot]:
                self._ref[slot] = 0
                continue
            self.evicted += 1
            break
        del self._index[self._keys[slot]]
        return slot


def _check_answer(tokens: int, until_ns: int, remaining: int, reset_at_ns: int) -> None:
    """Refuse an answer of Redis that :meth:`LeaseTablePy.grant` cannot store."""
    if tokens < 0 or remaining < 0:
        raise ValueError("tokens and remaining must not be negative")
    if not (0 <= until_ns < MAX_SPAN_NS and 0 <= reset_at_ns < MAX_SPAN_NS):
        raise ValueError("until_ns and reset_at_ns must be clock times")


class LeaseTablePy(_Headers):
    """Per key, the last answer of Redis: a lease of tokens, or a refusal, and until when."""

    __slots__ = (
        "_clock",
        "_denied",
        "_hand",
        "_index",
        "_keys",
        "_ref",
        "_remaining",
        "_reset_at",
        "_tokens",
        "_until",
        "_used",
        "capacity",
        "evicted",
        "remaining",
        "reset_ns",
        "retry_ns",
        "tokens",
    )

    def __init__(self, capacity: int = 65536, clock: Clock | None = None) -> None:
        _check_capacity(capacity)
        self.capacity = capacity
        self._clock: Clock = clock or time.monotonic_ns
        self._index: dict[str, int] = {}
        self._keys: list[str] = []  # grows with the keys seen (slots are handed out in order)
        self._tokens = [0] * capacity
        self._until = [0] * capacity
        self._remaining = [0] * capacity
        self._reset_at = [0] * capacity
        self._denied = bytearray(capacity)
        self._ref = bytearray(capacity)
        self._used = 0
        self._hand = 0
        self.evicted = 0
        """Unexpired leases or refusals dropped because the table was full (always safe: a
        dropped lease is unused tokens, a dropped refusal one more question to Redis)."""
        self.remaining = 0
        self.reset_ns = 0
        self.retry_ns = 0
        self.tokens = 0
        """After a GRANTED :meth:`take`: the tokens of the lease left unspent (the caller tops
        the lease up before it runs dry)."""

    def __len__(self) -> int:
        return len(self._index)

    def now(self) -> int:
        """The table's clock (for callers computing the absolute times :meth:`grant` takes)."""
        return self._clock()

    def take(self, key: str) -> int:
        """Spend one token of ``key``'s lease: :data:`GRANTED`, :data:`DENIED` (a refusal from
        Redis still holds) or :data:`NEED_REDIS`."""
        slot = self._index.get(key)
        if slot is None:
            return NEED_REDIS
        now = self._clock()
        if now >= self._until[slot]:
            return NEED_REDIS
        self._ref[slot] = 1
        tokens = self._tokens[slot]
        if tokens > 0:
            self._tokens[slot] = tokens - 1
            self.tokens = tokens - 1
            # What the caller may still send at once: the global remainder Redis reported when
            # it granted the lease, plus the tokens of the lease not spent yet.
            self.remaining = self._remaining[slot] + tokens - 1
            self.reset_ns = max(0, self._reset_at[slot] - now)
            self.retry_ns = 0
            return GRANTED
        if self._denied[slot]:
            self.remaining = 0
            self.reset_ns = max(0, self._reset_at[slot] - now)
            self.retry_ns = self._until[slot] - now
            return DENIED
        return NEED_REDIS

    def grant(self, key: str, tokens: int, until_ns: int, remaining: int, reset_at_ns: int) -> None:
        """Store Redis's answer for ``key``: ``tokens`` (0: refused) valid until ``until_ns``
        (the lease's expiry, or when the refusal ends), with the global ``remaining`` and the
        time ``reset_at_ns`` when the full burst is back (absolute, on this table's clock)."""
        _check_answer(tokens, until_ns, remaining, reset_at_ns)
        now = self._clock()
        slot = self._index.get(key)
        if slot is None:
            if until_ns <= now:
                return  # already expired: nothing worth a slot
            slot = self._insert(key, now)
        self._tokens[slot] = tokens
        self._until[slot] = until_ns
        self._remaining[slot] = remaining
        self._reset_at[slot] = reset_at_ns
        self._denied[slot] = 1 if tokens == 0 else 0

    def top_up(
        self, key: str, tokens: int, until_ns: int, remaining: int, reset_at_ns: int
    ) -> None:
        """Add ``tokens`` from a further reservation to ``key``'s live lease (the lease now ends
        at ``until_ns``, with Redis's newer ``remaining`` and ``reset_at_ns``); without a live
        lease (none, expired, or a refusal) this is :meth:`grant`. ``tokens`` must be > 0."""
        if tokens <= 0:
            raise ValueError("a top-up adds at least one token")
        slot = self._index.get(key)
        if slot is None or self._denied[slot] or self._clock() >= self._until[slot]:
            self.grant(key, tokens, until_ns, remaining, reset_at_ns)
            return
        _check_answer(tokens, until_ns, remaining, reset_at_ns)
        self._tokens[slot] += tokens
        self._until[slot] = max(self._until[slot], until_ns)
        self._remaining[slot] = remaining
        self._reset_at[slot] = reset_at_ns

    def drop(self, key: str) -> None:
        """Forget ``key``'s lease or refusal (the next :meth:`take` asks Redis)."""
        slot = self._index.get(key)
        if slot is not None:
            self._until[slot] = 0

    def _insert(self, key: str, now: int) -> int:
        if self._used < self.capacity:
            slot = self._used
            self._used += 1
            self._keys.append(key)
        else:
            slot = self._sweep(now)
            self._keys[slot] = key
        self._index[key] = slot
        self._ref[slot] = 0
        return slot

    def _sweep(self, now: int) -> int:
        capacity = self.capacity
        while True:
            slot = self._hand
            self._hand = slot + 1 if slot + 1 < capacity else 0
            if self._until[slot] <= now:
                break
            if self._ref[slot]:
                self._ref[slot] = 0
                continue
            self.evicted += 1
            break
        del self._index[self._keys[slot]]
        return slot
