"""Rate-limit decisions over a bounded key table, compiled twin of :mod:`cygate.core._ratelimit_py`.

The pure module is the reference (algorithm, eviction order, errors, constants); this one keeps
the same state in typed C arrays and answers the common case (a known key) with one borrowed
dict look-up, a few int64 operations and ``Py_True``/``Py_False``: no Python object is created.
The default clock is ``clock_gettime(CLOCK_MONOTONIC)``, the clock behind ``time.monotonic_ns``.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_DelItem, PyDict_GetItem, PyDict_SetItem
from cpython.long cimport PyLong_AsSsize_t
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

# NOTE: constants and argument checks come from the reference, so both twins agree by
# construction and raise the very same errors.
from cygate.core._ratelimit_py import (
    DENIED,
    GRANTED,
    HEADER_NUMBERS,
    MAX_SPAN_NS,
    NEED_REDIS,
    REMAINING,
    RESET,
    _check_capacity,
)

__all__ = ["DENIED", "GRANTED", "NEED_REDIS", "GCRALimiterC", "LeaseTableC"]

cdef int64_t _MAX_SPAN = MAX_SPAN_NS
cdef tuple _HEADER_NUMBERS = HEADER_NUMBERS
cdef bytes _REMAINING = REMAINING
cdef bytes _RESET = RESET
cdef object _GRANTED = GRANTED
cdef object _DENIED = DENIED
cdef object _NEED_REDIS = NEED_REDIS
# PERF: the remaining/reset headers of small numbers as whole pairs, made once (a hit then
# appends four existing tuples); other numbers are formatted per request.
cdef tuple _REMAINING_PAIRS = tuple([(_REMAINING, v) for v in HEADER_NUMBERS])
cdef tuple _RESET_PAIRS = tuple([(_RESET, v) for v in HEADER_NUMBERS])
cdef Py_ssize_t _PAIRS = len(HEADER_NUMBERS)


cdef object _header_number(int64_t n):
    """``n`` in decimal ASCII (the twin's ``header_number``)."""
    cdef char buf[24]
    cdef Py_ssize_t i = 24
    cdef bint negative = n < 0
    cdef uint64_t u
    if 0 <= n < 4096:
        return _HEADER_NUMBERS[n]
    u = <uint64_t>(-(n + 1)) + 1 if negative else <uint64_t>n
    while True:
        i -= 1
        buf[i] = <char>(48 + u % 10)  # '0'
        u //= 10
        if u == 0:
            break
    if negative:
        i -= 1
        buf[i] = b'-'
    return PyBytes_FromStringAndSize(buf + i, 24 - i)


cdef inline int64_t _monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef void* _alloc(Py_ssize_t n) except NULL:
    # Zeroed memory of n bytes (n > 0): every slot starts as "never used".
    # PERF: calloc, not malloc + memset: a large block comes from fresh pages the kernel zeroes
    # when first touched, so a table's slots cost memory only once keys reach them (a limit's
    # tables at the default max_keys are ~7 MiB per worker, mostly never used).
    cdef void* p = PyMem_Calloc(<size_t>n, 1)
    if p == NULL:
        raise MemoryError()
    return p


cdef class _Table:
    """The bounded key -> slot index and the CLOCK hand shared by both tables.

    Invariants: ``_index[key] == slot`` iff ``_keys[slot] is key``; slots ``[0, _used)`` are in
    use (once the table filled up, all of them) and ``len(_keys) == _used``; ``_ref[slot]`` is
    the CLOCK reference bit.
    """

    def __cinit__(self, *args, **kwargs):
        self._ref = NULL

    def __dealloc__(self):
        PyMem_Free(self._ref)

    cdef int _setup(self, Py_ssize_t capacity, object clock) except -1:
        _check_capacity(capacity)
        self.capacity = capacity
        self._clock = clock
        self._index = {}
        # PERF: grows with the keys seen (slots are handed out in order), not 8 bytes a slot
        # of max_keys at start-up in every worker.
        self._keys = []
        self._ref = <uint8_t*>_alloc(capacity)
        return 0

    def __len__(self):
        return len(self._index)

    def append_headers(self, list out not None, object limit_pair, object policy_pair):
        """Append the ``RateLimit-*`` headers of the last allowed decision (see the twin)."""
        self._append_headers(out, limit_pair, policy_pair)

    cdef int _append_headers(self, list out, object limit_pair, object policy_pair) except -1:
        cdef int64_t reset = self.reset_ns
        cdef int64_t remaining = self.remaining
        out.append(limit_pair)
        if 0 <= remaining < _PAIRS:
            out.append(_REMAINING_PAIRS[remaining])
        else:
            out.append((_REMAINING, _header_number(remaining)))
        # whole seconds, rounded up (reset > 0: no overflow below MAX_SPAN_NS)
        reset = (reset + 999999999) // 1000000000 if reset > 0 else 0
        if reset < _PAIRS:
            out.append(_RESET_PAIRS[reset])
        else:
            out.append((_RESET, _header_number(reset)))
        out.append(policy_pair)
        return 0

    cdef int64_t _now(self) except? -1:
        if self._clock is None:
            return _monotonic_ns()
        return self._clock()

    cdef Py_ssize_t _find(self, str key) noexcept:
        # -1 when absent. PERF: a borrowed look-up, no exception machinery, no new object.
        cdef PyObject* found = PyDict_GetItem(self._index, key)
        if found == NULL:
            return -1
        return PyLong_AsSsize_t(<object>found)

    cdef bint _idle(self, Py_ssize_t slot, int64_t now) noexcept:
        return True

    cdef Py_ssize_t _insert(self, str key, int64_t now) except -1:
        cdef Py_ssize_t slot
        if self._used < self.capacity:
            slot = self._used
            self._used += 1
            self._keys.append(key)
        else:
            slot = self._sweep(now)
            self._keys[slot] = key
        PyDict_SetItem(self._index, key, slot)
        self._ref[slot] = 0  # NOTE: new keys enter unreferenced (see the reference module)
        return slot

    cdef Py_ssize_t _sweep(self, int64_t now) except -1:
        cdef Py_ssize_t slot
        while True:
            slot = self._hand
            self._hand = slot + 1 if slot + 1 < self.capacity else 0
            if self._idle(slot, now):
                break
            if self._ref[slot]:
                self._ref[slot] = 0
                continue
            self.evicted += 1
            break
        PyDict_DelItem(self._index, self._keys[slot])
        return slot


cdef class GCRALimiterC(_Table):
    """One rate limit decided locally (GCRA); see :class:`cygate.core._ratelimit_py.GCRALimiterPy`."""

    def __cinit__(self, *args, **kwargs):
        self._tat = NULL

    def __init__(self, interval_ns, burst, capacity=65536, clock=None):
        if interval_ns < 1:
            raise ValueError(f"interval_ns must be at least 1, got {interval_ns}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if interval_ns * burst >= MAX_SPAN_NS:
            raise ValueError("interval_ns * burst is too large (over 146 years)")
        if self._tat != NULL:
            raise RuntimeError("GCRALimiterC is already initialised")
        self._setup(capacity, clock)
        self.interval_ns = interval_ns
        self.burst = burst
        self.tolerance_ns = self.interval_ns * self.burst
        self._tat = <int64_t*>_alloc(self.capacity * sizeof(int64_t))

    def __dealloc__(self):
        PyMem_Free(self._tat)

    cdef bint _idle(self, Py_ssize_t slot, int64_t now) noexcept:
        return self._tat[slot] <= now

    def hit(self, str key not None, int64_t cost=1):
        """Decide one request (``cost`` tokens) for ``key``; True when allowed."""
        return self._hit(key, cost) == 1

    cdef int _hit(self, str key, int64_t cost) except -1:
        """:meth:`hit`: 1 allowed, 0 refused."""
        cdef int64_t now, tat, new_tat, left
        cdef Py_ssize_t slot
        if cost < 1:
            raise ValueError(f"cost must be at least 1, got {cost}")
        if self._tat == NULL:
            raise RuntimeError("GCRALimiterC is not initialised")
        now = self._now()
        slot = self._find(key)
        if slot < 0:
            tat = now
        else:
            tat = self._tat[slot]
            if tat < now:
                tat = now
            self._ref[slot] = 1
        if cost > self.burst:
            left = (self.tolerance_ns - (tat - now)) // self.interval_ns
            self.remaining = left if left > 0 else 0
            self.reset_ns = tat - now
            self.retry_ns = 0
            return 0
        new_tat = tat + self.interval_ns * cost
        if new_tat - now > self.tolerance_ns:
            self.remaining = 0
            self.reset_ns = tat - now
            self.retry_ns = new_tat - self.tolerance_ns - now
            return 0
        if slot < 0:
            slot = self._insert(key, now)
        self._tat[slot] = new_tat
        self.remaining = (self.tolerance_ns - (new_tat - now)) // self.interval_ns
        self.reset_ns = new_tat - now
        self.retry_ns = 0
        return 1

    def refund(self, str key not None, int64_t cost=1):
        """Give back ``cost`` tokens taken by an allowed :meth:`hit` (a later limit refused)."""
        cdef Py_ssize_t slot
        if not 1 <= cost <= self.burst:
            raise ValueError(f"cost must be between 1 and burst, got {cost}")
        slot = self._find(key)
        if slot >= 0:
            self._tat[slot] -= self.interval_ns * cost


cdef int _check_answer(int64_t tokens, int64_t until_ns, int64_t remaining,
                       int64_t reset_at_ns) except -1:
    """Refuse an answer of Redis that ``grant`` cannot store (see the reference's)."""
    if tokens < 0 or remaining < 0:
        raise ValueError("tokens and remaining must not be negative")
    if not (0 <= until_ns < _MAX_SPAN and 0 <= reset_at_ns < _MAX_SPAN):
        raise ValueError("until_ns and reset_at_ns must be clock times")
    return 0


cdef class LeaseTableC(_Table):
    """Per key, Redis's last answer; see :class:`cygate.core._ratelimit_py.LeaseTablePy`."""

    def __cinit__(self, *args, **kwargs):
        self._tokens = self._until = self._left = self._reset_at = NULL
        self._denied = NULL

    def __init__(self, capacity=65536, clock=None):
        if self._tokens != NULL:
            raise RuntimeError("LeaseTableC is already initialised")
        self._setup(capacity, clock)
        n = self.capacity
        self._tokens = <int64_t*>_alloc(n * sizeof(int64_t))
        self._until = <int64_t*>_alloc(n * sizeof(int64_t))
        self._left = <int64_t*>_alloc(n * sizeof(int64_t))
        self._reset_at = <int64_t*>_alloc(n * sizeof(int64_t))
        self._denied = <uint8_t*>_alloc(n)

    def __dealloc__(self):
        PyMem_Free(self._tokens)
        PyMem_Free(self._until)
        PyMem_Free(self._left)
        PyMem_Free(self._reset_at)
        PyMem_Free(self._denied)

    cdef bint _idle(self, Py_ssize_t slot, int64_t now) noexcept:
        return self._until[slot] <= now

    def now(self):
        """The table's clock (for callers computing the absolute times :meth:`grant` takes)."""
        return self._now()

    def take(self, str key not None):
        """Spend one token of ``key``'s lease: GRANTED, DENIED or NEED_REDIS."""
        return self._take(key)

    cdef object _take(self, str key):
        cdef int64_t now, tokens
        cdef Py_ssize_t slot
        if self._tokens == NULL:
            raise RuntimeError("LeaseTableC is not initialised")
        slot = self._find(key)
        if slot < 0:
            return _NEED_REDIS
        now = self._now()
        if now >= self._until[slot]:
            return _NEED_REDIS
        self._ref[slot] = 1
        tokens = self._tokens[slot]
        if tokens > 0:
            self._tokens[slot] = tokens - 1
            self.tokens = tokens - 1
            self.remaining = self._left[slot] + tokens - 1
            self.reset_ns = self._reset_at[slot] - now if self._reset_at[slot] > now else 0
            self.retry_ns = 0
            return _GRANTED
        if self._denied[slot]:
            self.remaining = 0
            self.reset_ns = self._reset_at[slot] - now if self._reset_at[slot] > now else 0
            self.retry_ns = self._until[slot] - now
            return _DENIED
        return _NEED_REDIS

    def grant(self, str key not None, int64_t tokens, int64_t until_ns, int64_t remaining,
              int64_t reset_at_ns):
        """Store Redis's answer for ``key`` (see the reference's ``grant``)."""
        cdef int64_t now
        cdef Py_ssize_t slot
        if self._tokens == NULL:
            raise RuntimeError("LeaseTableC is not initialised")
        _check_answer(tokens, until_ns, remaining, reset_at_ns)
        now = self._now()
        slot = self._find(key)
        if slot < 0:
            if until_ns <= now:
                return
            slot = self._insert(key, now)
        self._tokens[slot] = tokens
        self._until[slot] = until_ns
        self._left[slot] = remaining
        self._reset_at[slot] = reset_at_ns
        self._denied[slot] = 1 if tokens == 0 else 0

    def top_up(self, str key not None, int64_t tokens, int64_t until_ns, int64_t remaining,
               int64_t reset_at_ns):
        """Add tokens to ``key``'s live lease (see the reference's ``top_up``)."""
        cdef Py_ssize_t slot
        if self._tokens == NULL:
            raise RuntimeError("LeaseTableC is not initialised")
        if tokens <= 0:
            raise ValueError("a top-up adds at least one token")
        slot = self._find(key)
        if slot < 0 or self._denied[slot] or self._now() >= self._until[slot]:
            self.grant(key, tokens, until_ns, remaining, reset_at_ns)
            return
        _check_answer(tokens, until_ns, remaining, reset_at_ns)
        self._tokens[slot] += tokens
        if until_ns > self._until[slot]:
            self._until[slot] = until_ns
        self._left[slot] = remaining
        self._reset_at[slot] = reset_at_ns

    def drop(self, str key not None):
        """Forget ``key``'s lease or refusal (the next :meth:`take` asks Redis)."""
        cdef Py_ssize_t slot = self._find(key)
        if slot >= 0:
            self._until[slot] = 0
