"""Request and trace ids from random bytes: both implementations, and that they agree."""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cygate.core.ids as selector
from core_impls import CoreImplementation, require_compiled
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


def test_no_extensions_selects_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYGATE_NO_EXTENSIONS", "1")
    import cygate._compat

    try:
        importlib.reload(cygate._compat)
        assert importlib.reload(selector).format_ids is format_ids_py
    finally:
        monkeypatch.delenv("CYGATE_NO_EXTENSIONS")
        if not os.environ.get("CYGATE_NO_EXTENSIONS"):
            importlib.reload(cygate._compat)
            importlib.reload(selector)
