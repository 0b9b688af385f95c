"""The local limiter, compiled and pure: GCRA rules, the bounded table, leases, C/py agreement."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_impls import CoreImplementation, require_compiled
from cygate.core import ratelimit as selector
from cygate.core._ratelimit_py import (
    DENIED,
    GRANTED,
    NEED_REDIS,
    GCRALimiterPy,
    LeaseTablePy,
)

S = 1_000_000_000  # one second in ns


class FakeClock:
    """An injectable monotonic clock (ns) that moves only when told."""

    def __init__(self, now: int = 10 * S) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns


@pytest.fixture(scope="module")
def gcra_cls(core_impl: CoreImplementation) -> Any:
    """GCRALimiterC or GCRALimiterPy."""
    return getattr(core_impl.module("ratelimit"), f"GCRALimiter{core_impl.tag.capitalize()}")


@pytest.fixture(scope="module")
def lease_cls(core_impl: CoreImplementation) -> Any:
    """LeaseTableC or LeaseTablePy."""
    return getattr(core_impl.module("ratelimit"), f"LeaseTable{core_impl.tag.capitalize()}")


# ---------------------------------------------------------------------------------------------
# The selector and the compiled module
# ---------------------------------------------------------------------------------------------


def test_selector_exports() -> None:
    for name in ("GCRALimiter", "GCRALimiterPy", "LeaseTable", "LeaseTablePy", "GRANTED"):
        assert name in selector.__all__
    assert (GRANTED, DENIED, NEED_REDIS) == (1, 0, -1)


@pytest.mark.c_extension
def test_compiled_module_is_in_use() -> None:
    c = require_compiled("ratelimit")
    assert selector.GCRALimiter is c.GCRALimiterC
    assert selector.LeaseTable is c.LeaseTableC
    assert c.GCRALimiterC.__module__ == "cygate.core._ratelimit_c"


def test_no_extensions_selects_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYGATE_NO_EXTENSIONS", "1")
    import cygate._compat

    try:
        importlib.reload(cygate._compat)
        fresh = importlib.reload(selector)
        assert fresh.GCRALimiter is GCRALimiterPy
        assert fresh.LeaseTable is LeaseTablePy
    finally:
        monkeypatch.delenv("CYGATE_NO_EXTENSIONS")
        if not os.environ.get("CYGATE_NO_EXTENSIONS"):
            importlib.reload(cygate._compat)
            importlib.reload(selector)
        sys.modules["cygate.core.ratelimit"] = selector


# ---------------------------------------------------------------------------------------------
# GCRA
# ---------------------------------------------------------------------------------------------


def test_burst_then_refusal_with_exact_retry(gcra_cls: Any) -> None:
    clock = FakeClock()
    lim = gcra_cls(12 * S, 5, clock=clock)  # 5 per minute
    remaining = []
    for _ in range(5):
        assert lim.hit("a")
        remaining.append(lim.remaining)
    assert remaining == [4, 3, 2, 1, 0]  # counts down exactly
    assert lim.reset_ns == 60 * S  # the full burst is back in a minute
    assert not lim.hit("a")
    assert (lim.remaining, lim.retry_ns, lim.reset_ns) == (0, 12 * S, 60 * S)
    clock.advance(12 * S - 1)
    assert not lim.hit("a")  # one nanosecond early
    assert lim.retry_ns == 1
    clock.advance(1)
    assert lim.hit("a")  # exactly when retry_ns said
    assert lim.remaining == 0
    assert not lim.hit("a")
    assert lim.hit("b")  # other keys are not affected


def test_refill_never_exceeds_burst(gcra_cls: Any) -> None:
    clock = FakeClock()
    lim = gcra_cls(S, 3, clock=clock)
    assert lim.hit("k")
    clock.advance(3600 * S)  # idle for an hour: still only the burst
    allowed = sum(lim.hit("k") for _ in range(10))
    assert allowed == 3


def test_cost_and_refund(gcra_cls: Any) -> None:
    clock = FakeClock()
    lim = gcra_cls(S, 4, clock=clock)
    assert lim.hit("k", 3)
    assert lim.remaining == 1
    assert not lim.hit("k", 2)
    assert lim.retry_ns == S
    lim.refund("k", 3)
    assert lim.hit("k", 4)
    assert not lim.hit("k", 5)  # more than the burst: never
    assert lim.retry_ns == 0
    lim.refund("absent")  # nothing to give back: no error
    with pytest.raises(ValueError, match="cost"):
        lim.hit("k", 0)
    with pytest.raises(ValueError, match="cost"):
        lim.refund("k", 5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1), "interval_ns"),
        ((1, 0), "burst"),
        ((1 << 61, 2), "too large"),
        ((1, 1, 0), "capacity"),
    ],
)
def test_bad_arguments(gcra_cls: Any, args: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gcra_cls(*args)


def test_real_clock_default(gcra_cls: Any) -> None:
    lim = gcra_cls(3600 * S, 2)
    assert lim.hit("x") and lim.hit("x") and not lim.hit("x")
    assert 3599 * S < lim.retry_ns <= 3600 * S


# ---------------------------------------------------------------------------------------------
# The bounded table
# ---------------------------------------------------------------------------------------------


def test_table_is_bounded_and_idle_keys_go_first(gcra_cls: Any) -> None:
    clock = FakeClock()
    lim = gcra_cls(S, 1, capacity=4, clock=clock)
    for k in "abcd":
        assert lim.hit(k)
    clock.advance(S)  # all four idle now
    assert lim.hit("e") and len(lim) == 4 and lim.evicted == 0
    for k in "fghijklmnop":
        lim.hit(k)
        assert len(lim) <= 4
    assert lim.capacity == 4


def test_repeat_callers_survive_a_flood_of_new_keys(gcra_cls: Any) -> None:
    clock = FakeClock()
    lim = gcra_cls(60 * S, 1, capacity=8, clock=clock)
    assert lim.hit("regular")
    assert not lim.hit("regular")  # hit again: its reference bit is set
    for i in range(5):
        lim.hit(f"one-off-{i}")
    assert not lim.hit("regular")  # still remembered (and referenced again)
    for i in range(5, 12):
        lim.hit(f"one-off-{i}")
    assert not lim.hit("regular")
    assert lim.evicted > 0  # one-off keys were forgotten instead


def test_forgotten_active_key_is_counted(gcra_cls: Any) -> None:
    clock = FakeClock()
    lim = gcra_cls(60 * S, 1, capacity=2, clock=clock)
    assert lim.hit("a") and lim.hit("b") and lim.hit("c")
    assert lim.evicted == 1 and len(lim) == 2
    assert lim.hit("a")  # "a" was forgotten: a fresh burst (the documented cost of the cap)


def _eight_calls(fn: Any, k0: str, k1: str, k2: str, k3: str) -> None:
    fn(k0), fn(k1), fn(k2), fn(k3), fn(k0), fn(k1), fn(k2), fn(k3)


def _peak_bytes(fn: Any, keys: list[str]) -> int:
    """Peak traced memory while ``fn`` is called eight times on known keys."""
    _eight_calls(fn, *keys)  # warm: every key is in the table, every code path was run
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        _eight_calls(fn, *keys)
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_common_path_allocates_nothing(gcra_cls: Any, core_impl: CoreImplementation) -> None:
    """A decision on a known key (allowed or refused) makes no object: the memory peak of eight
    decisions is that of eight calls to a function that does nothing."""
    if core_impl.is_pure_python:
        pytest.skip("the pure twin allocates ints; the claim is about the compiled one")
    keys = ["key-0", "key-1", "key-2", "key-3"]
    allowed = gcra_cls(1, 10**9, capacity=64)
    refused = gcra_cls(3600 * S, 1, capacity=64)
    for k in keys:
        allowed.hit(k)
        refused.hit(k)
    floor = _peak_bytes(lambda k: None, keys)
    assert _peak_bytes(allowed.hit, keys) <= floor
    assert _peak_bytes(refused.hit, keys) <= floor
    assert not refused.hit(keys[0])


# ---------------------------------------------------------------------------------------------
# Leases
# ---------------------------------------------------------------------------------------------


def test_lease_is_spent_then_expires(lease_cls: Any) -> None:
    clock = FakeClock()
    t = lease_cls(capacity=8, clock=clock)
    assert t.take("k") == NEED_REDIS
    t.grant("k", 3, clock.now + S, 10, clock.now + 5 * S)
    results = [t.take("k") for _ in range(4)]
    assert results == [GRANTED, GRANTED, GRANTED, NEED_REDIS]
    t.grant("k", 2, clock.now + S, 0, clock.now + 5 * S)
    assert t.take("k") == GRANTED and t.remaining == 1 and t.reset_ns == 5 * S
    clock.advance(S)
    assert t.take("k") == NEED_REDIS  # expired with a token unspent: never used late


def test_top_up_adds_to_a_live_lease_and_grants_otherwise(lease_cls: Any) -> None:
    clock = FakeClock()
    t = lease_cls(capacity=8, clock=clock)
    t.grant("k", 3, clock.now + S, 10, clock.now + 5 * S)
    assert t.take("k") == GRANTED and t.tokens == 2
    t.top_up("k", 4, clock.now + 2 * S, 6, clock.now + 4 * S)  # 2 left + 4 new
    assert t.take("k") == GRANTED and t.tokens == 5
    assert t.remaining == 6 + 5 and t.reset_ns == 4 * S  # Redis's newer figures
    t.top_up("k", 1, clock.now + S // 2, 0, clock.now)  # an earlier end never shortens it
    clock.advance(S)
    assert [t.take("k") for _ in range(7)] == [GRANTED] * 6 + [NEED_REDIS]
    clock.advance(S)
    t.top_up("k", 2, clock.now + S, 0, clock.now + S)  # expired: a fresh lease of 2
    assert [t.take("k") for _ in range(3)] == [GRANTED, GRANTED, NEED_REDIS]
    t.grant("r", 0, clock.now + S, 0, clock.now + S)
    t.top_up("r", 2, clock.now + S, 0, clock.now + S)  # a refusal is replaced, not added to
    assert t.take("r") == GRANTED and t.tokens == 1
    t.top_up("new", 1, clock.now + S, 0, clock.now + S)
    assert t.take("new") == GRANTED and t.tokens == 0
    with pytest.raises(ValueError):
        t.top_up("k", 0, clock.now + S, 0, clock.now)


def test_refusal_is_remembered_until_it_ends(lease_cls: Any) -> None:
    clock = FakeClock()
    t = lease_cls(clock=clock)
    t.grant("k", 0, clock.now + 2 * S, 0, clock.now + 9 * S)
    assert t.take("k") == DENIED
    assert (t.retry_ns, t.reset_ns, t.remaining) == (2 * S, 9 * S, 0)
    clock.advance(2 * S)
    assert t.take("k") == NEED_REDIS
    t.grant("k", 0, clock.now + S, 0, clock.now + S)
    t.drop("k")
    assert t.take("k") == NEED_REDIS
    t.grant("old", 0, clock.now - 1, 0, clock.now)  # already over: not stored
    assert len(t) == 1
    with pytest.raises(ValueError):
        t.grant("k", -1, clock.now + S, 0, clock.now)
    with pytest.raises(ValueError):
        t.grant("k", 1, -5, 0, clock.now)


def test_lease_table_is_bounded(lease_cls: Any) -> None:
    clock = FakeClock()
    t = lease_cls(capacity=3, clock=clock)
    for i in range(10):
        t.grant(f"k{i}", 5, clock.now + S, 0, clock.now + S)
        assert len(t) <= 3
    assert t.evicted == 7 and t.now() == clock.now


# ---------------------------------------------------------------------------------------------
# C and py agree on generated workloads (same clock, same operations)
# ---------------------------------------------------------------------------------------------

_keys = st.sampled_from([f"k{i}" for i in range(12)])
_gcra_ops = st.lists(
    st.one_of(
        st.tuples(st.just("hit"), _keys, st.integers(1, 6)),
        st.tuples(st.just("refund"), _keys, st.integers(1, 3)),
        st.tuples(st.just("tick"), st.integers(0, 5 * S), st.just(0)),
    ),
    max_size=200,
)


def _run_gcra(cls: Any, interval: int, burst: int, capacity: int, ops: list[Any]) -> list[Any]:
    clock = FakeClock()
    lim = cls(interval, burst, capacity=capacity, clock=clock)
    out: list[Any] = []
    for op, a, b in ops:
        if op == "tick":
            clock.advance(a)
        elif op == "refund":
            lim.refund(a, min(b, burst))
        else:
            out.append((lim.hit(a, b), lim.remaining, lim.reset_ns, lim.retry_ns))
    out.append((len(lim), lim.evicted))
    return out


@pytest.mark.c_extension
@settings(max_examples=300, deadline=None)
@given(
    interval=st.integers(1, 3 * S),
    burst=st.integers(1, 8),
    capacity=st.integers(1, 16),
    ops=_gcra_ops,
)
def test_gcra_c_and_py_agree(interval: int, burst: int, capacity: int, ops: list[Any]) -> None:
    c = require_compiled("ratelimit")
    assert _run_gcra(c.GCRALimiterC, interval, burst, capacity, ops) == _run_gcra(
        GCRALimiterPy, interval, burst, capacity, ops
    )


@settings(max_examples=200, deadline=None)
@given(interval=st.integers(1, 3 * S), burst=st.integers(1, 8), ops=_gcra_ops)
def test_gcra_matches_a_textbook_model(interval: int, burst: int, ops: list[Any]) -> None:
    """With room for every key, the table is exactly GCRA over a plain dict."""
    clock = FakeClock()
    lim = GCRALimiterPy(interval, burst, capacity=64, clock=clock)
    tat: dict[str, int] = {}
    for op, a, b in ops:
        if op == "tick":
            clock.advance(a)
        elif op == "refund":
            if a in tat:
                tat[a] -= interval * min(b, burst)
            lim.refund(a, min(b, burst))
        else:
            t = max(tat.get(a, clock.now), clock.now)
            ok = b <= burst and t + b * interval - clock.now <= interval * burst
            if ok:
                tat[a] = t + b * interval
            assert lim.hit(a, b) == ok


_lease_ops = st.lists(
    st.one_of(
        st.tuples(st.just("take"), _keys, st.just(0), st.just(0), st.just(0)),
        st.tuples(
            st.just("grant"), _keys, st.integers(0, 4), st.integers(-S, 3 * S), st.integers(0, 9)
        ),
        st.tuples(
            st.just("top_up"), _keys, st.integers(1, 4), st.integers(-S, 3 * S), st.integers(0, 9)
        ),
        st.tuples(st.just("drop"), _keys, st.just(0), st.just(0), st.just(0)),
        st.tuples(st.just("tick"), st.just(""), st.integers(0, 2 * S), st.just(0), st.just(0)),
    ),
    max_size=200,
)


def _run_leases(cls: Any, capacity: int, ops: list[Any]) -> list[Any]:
    clock = FakeClock()
    t = cls(capacity=capacity, clock=clock)
    out: list[Any] = []
    for op, key, a, b, c in ops:
        if op == "tick":
            clock.advance(a)
        elif op == "grant":
            t.grant(key, a, clock.now + b, c, clock.now + abs(b))
        elif op == "top_up":
            t.top_up(key, a, clock.now + b, c, clock.now + abs(b))
        elif op == "drop":
            t.drop(key)
        else:
            taken = t.take(key)
            out.append((taken, t.remaining, t.reset_ns, t.retry_ns))
            if taken == GRANTED:
                out.append(t.tokens)
    out.append((len(t), t.evicted))
    return out


@pytest.mark.c_extension
@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 16), ops=_lease_ops)
def test_leases_c_and_py_agree(capacity: int, ops: list[Any]) -> None:
    c = require_compiled("ratelimit")
    assert _run_leases(c.LeaseTableC, capacity, ops) == _run_leases(LeaseTablePy, capacity, ops)


# ---------------------------------------------------------------------------------------------
# The RateLimit-* headers of a decision
# ---------------------------------------------------------------------------------------------

LIMIT_PAIR = (b"ratelimit-limit", b"5")
POLICY_PAIR = (b"ratelimit-policy", b"5;w=60")


@pytest.mark.parametrize(
    ("remaining", "reset_in_ns", "reset_header"),
    [
        (3, 2 * S, b"2"),  # whole seconds stay
        (3, 2 * S + 1, b"3"),  # a part of a second rounds up
        (0, 1, b"1"),
        (4095, 0, b"0"),  # the last number made in advance, and no reset
        (4096, 5 * S - 1, b"5"),  # formatted per request
        (123_456_789_012, 1, b"1"),
    ],
)
def test_lease_headers_say_the_decision(
    lease_cls: Any, remaining: int, reset_in_ns: int, reset_header: bytes
) -> None:
    clock = FakeClock()
    table = lease_cls(capacity=8, clock=clock)
    # A lease of one token: after it is spent, the table's remaining is Redis's.
    table.grant("k", 1, clock.now + 60 * S, remaining, clock.now + reset_in_ns)
    assert table.take("k") == GRANTED and table.remaining == remaining
    out = [(b"x", b"y")]
    table.append_headers(out, LIMIT_PAIR, POLICY_PAIR)
    assert out == [
        (b"x", b"y"),
        LIMIT_PAIR,
        (b"ratelimit-remaining", b"%d" % remaining),
        (b"ratelimit-reset", reset_header),
        POLICY_PAIR,
    ]


def test_gcra_headers_match_its_attributes(gcra_cls: Any) -> None:
    clock = FakeClock()
    limiter = gcra_cls(interval_ns=12 * S, burst=5, clock=clock)
    for _ in range(3):
        assert limiter.hit("k")
    out: list[tuple[bytes, bytes]] = []
    limiter.append_headers(out, LIMIT_PAIR, POLICY_PAIR)
    seconds = -(-limiter.reset_ns // S)
    assert out[1:3] == [
        (b"ratelimit-remaining", b"%d" % limiter.remaining),
        (b"ratelimit-reset", b"%d" % seconds),
    ]
    assert limiter.remaining == 2 and seconds == 36


# ---------------------------------------------------------------------------------------------
# Memory: a table's slots are resident only once keys reach them
# ---------------------------------------------------------------------------------------------


def _private_mib() -> float:
    """This process's anonymous private memory (Linux /proc)."""
    with open("/proc/self/smaps_rollup") as fh:
        fields = dict(line.split(":", 1) for line in fh if line.endswith("kB\n"))
    return int(fields["Private_Dirty"].split()[0]) / 1024


@pytest.mark.c_extension
@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux /proc only")
def test_compiled_tables_are_not_resident_until_keys_reach_them() -> None:
    """A million-slot lease table stands for 41 MB of slots (33 MB of zeroed numbers and an
    8 MB key list): the zeroes come from calloc and the key list grows with the keys seen, so
    the pages are resident only as keys arrive (with malloc + memset and a list made at full
    size, all 41 MB were, in every worker)."""
    c = require_compiled("ratelimit")
    slots = 1_000_000
    full_mib = slots * (4 * 8 + 2 + 8) / 2**20  # four int64 arrays, two byte arrays, the keys
    # NOTE: measured in a fresh interpreter, as a worker makes its tables at start: in a long
    # process an earlier free of a large block (an Argon2id check's 19 MiB) raises glibc's
    # mmap threshold, and calloc then serves these arrays from reused heap it must zero.
    probe = (
        "import sys\n"
        f"sys.path[:0] = {sys.path!r}\n"
        "from test_ratelimit import _private_mib\n"
        f"from {c.__name__} import LeaseTableC\n"
        "before = _private_mib()\n"
        f"table = LeaseTableC(capacity={slots})\n"
        "print(_private_mib() - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    grown = float(out.stdout)
    assert grown < full_mib / 4, (grown, full_mib)
    table = c.LeaseTableC(capacity=slots)
    for i in range(1000):  # used slots read and write as before
        table.grant(f"k{i}", 1, 10**18, 1, 10**18)
    assert len(table) == 1000
    assert table.take("k0") == GRANTED and table.take("k999") == GRANTED
