"""Request and trace ids from random bytes: both implementations, and that they agree."""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cygate.core.ids as selector
from core_impls import CoreImplementation, require_compiled
from cygate.core._ids_py import IdMinter as IdMinterPy
from cygate.core._ids_py import format_ids as format_ids_py

_TRACEPARENT = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-01")


@pytest.fixture(scope="module")
def format_ids(core_impl: CoreImplementation) -> Any:
    return core_impl.module("ids").format_ids


def test_layout_of_one_chunk(format_ids: Any) -> None:
    raw = bytes(range(1, 37))
    [(rid, rid_bytes, traceparent)] = format_ids(raw)
    assert rid == raw[:12].hex() and rid_bytes == rid.encode()
    assert traceparent == f"00-{raw[12:28].hex()}-{raw[28:36].hex()}-01".encode()


def test_many_chunks_in_order_and_a_partial_one_ignored(format_ids: Any) -> None:
    raw = os.urandom(36 * 300 + 20)
    ids = format_ids(raw)
    assert len(ids) == 300
    for n, (rid, rid_bytes, traceparent) in enumerate(ids):
        assert re.fullmatch(r"[0-9a-f]{24}", rid) and rid_bytes == rid.encode()
        assert _TRACEPARENT.fullmatch(traceparent)
        assert rid == raw[36 * n : 36 * n + 12].hex()
    assert format_ids(b"") == [] and format_ids(bytes(35)) == []


def test_all_zero_trace_or_span_ids_are_never_made(format_ids: Any) -> None:
    good = bytes(range(1, 37))
    zero_trace = bytes(range(1, 13)) + bytes(16) + bytes(range(1, 9))
    zero_span = bytes(range(1, 29)) + bytes(8)
    ids = format_ids(good + zero_trace + good + zero_span)
    assert len(ids) == 2 and ids[0] == ids[1]


@pytest.mark.c_extension
@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=36 * 8 + 35))
def test_c_and_py_agree(raw: bytes) -> None:
    c = require_compiled("ids")
    assert c.format_ids(raw) == format_ids_py(raw)


@pytest.mark.c_extension
def test_compiled_module_is_in_use() -> None:
    c = require_compiled("ids")
    assert selector.format_ids is c.format_ids
    assert selector.IdMinter is c.IdMinter


def test_no_extensions_selects_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYGATE_NO_EXTENSIONS", "1")
    import cygate._compat

    try:
        importlib.reload(cygate._compat)
        assert importlib.reload(selector).format_ids is format_ids_py
        assert selector.IdMinter is IdMinterPy
    finally:
        monkeypatch.delenv("CYGATE_NO_EXTENSIONS")
        if not os.environ.get("CYGATE_NO_EXTENSIONS"):
            importlib.reload(cygate._compat)
            importlib.reload(selector)


@pytest.fixture(scope="module")
def minter_class(core_impl: CoreImplementation) -> Any:
    return core_impl.module("ids").IdMinter


def test_a_minter_takes_new_well_formed_ids(minter_class: Any) -> None:
    minter = minter_class()
    taken = [minter.take() for _ in range(600)]  # (more than one batch of the twin's)
    for rid, rid_bytes, traceparent in taken:
        assert re.fullmatch(r"[0-9a-f]{24}", rid) and rid_bytes == rid.encode()
        assert _TRACEPARENT.fullmatch(traceparent)
        assert traceparent[3:35].strip(b"0") and traceparent[36:52].strip(b"0")
    assert len({rid for rid, _, _ in taken}) == len({tp for _, _, tp in taken}) == 600


def test_minters_seeded_alike_make_one_sequence(minter_class: Any) -> None:
    seeds: list[int] = []

    def seed(n: int) -> bytes:
        seeds.append(n)
        return bytes(range(n))

    one, other = minter_class(seed), minter_class(seed)
    assert seeds == []  # seeded at the first id
    assert [one.take() for _ in range(300)] == [other.take() for _ in range(300)]
    assert seeds == [32, 32]
    assert minter_class(lambda n: bytes(n)).take() != one.take()  # (all-zero seed: usable)


def test_a_forked_child_seeds_its_minter_anew(minter_class: Any) -> None:
    minter = minter_class()
    minter.take()  # the parent's generator and batch, which the child inherits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, orjson.dumps([minter.take()[0] for _ in range(3)]))
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as f:
        child = orjson.loads(f.read())
    parent = {minter.take()[0] for _ in range(300)}
    assert len(child) == 3 and not parent.intersection(child)
