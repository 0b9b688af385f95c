"""Keyset cursors: round trips for every sort, and refusal of anything we did not issue."""

from __future__ import annotations

import base64
import contextlib
from datetime import UTC, datetime
from uuid import uuid4

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cygate.services.catalog.repository import SORTS, CursorError, decode_cursor, encode_cursor


@pytest.mark.parametrize(
    ("sort", "value"),
    [
        ("newest", datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)),
        ("oldest", datetime(2026, 1, 2, tzinfo=UTC)),
        ("price", 0),
        ("-price", 10**12),
        ("name", "Wireless Walnut Lamp"),
        ("-name", ""),
    ],
)
def test_round_trip(sort: str, value: object) -> None:
    last = uuid4()
    assert decode_cursor(encode_cursor(sort, value, last), sort) == (value, last)


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "A" * 600,
        _b64([1, 2, 3]),
        _b64({"sort": "price"}),
        _b64(["price", "12", str(uuid4())]),
        _b64(["price", True, str(uuid4())]),
        _b64(["price", 5, "not-a-uuid"]),
        _b64(["newest", "2026-01-01T00:00:00", str(uuid4())]),  # naive
        _b64(["newest", "yesterday", str(uuid4())]),
        _b64(["name", 5, str(uuid4())]),
    ],
)
def test_malformed_refused(cursor: str) -> None:
    sort = "price"
    if "newest" in base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4) or b"").decode(
        "latin-1"
    ):
        sort = "newest"
    with pytest.raises(CursorError):
        decode_cursor(cursor, sort)


def test_cursor_of_another_sort_refused() -> None:
    with pytest.raises(CursorError, match="another sort"):
        decode_cursor(encode_cursor("price", 5, uuid4()), "name")


@given(st.text(max_size=200), st.sampled_from(sorted(SORTS)))
def test_never_raises_anything_else(cursor: str, sort: str) -> None:
    with contextlib.suppress(CursorError):
        decode_cursor(cursor, sort)
