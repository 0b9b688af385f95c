"""The one JSON rule (``cygate.edge.body``): strict types, no NUL, bounded nesting."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar.exceptions import ValidationException

from cygate.edge.body import decode_json, json_media, query_nul_errors
from cygate.edge.problem import Problem


class Item(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    quantity: int


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"name": "a\u0000", "quantity": 1}',
        rb'{"name": "\\\u0000", "quantity": 1}',  # a backslash, then NUL
        rb'{"name\u0000": "a", "quantity": 1}',  # in a key
        rb'["\u0000"]',
    ],
)
def test_nul_anywhere_is_refused(raw: bytes) -> None:
    with pytest.raises(ValidationException) as caught:
        decode_json(raw, Item)
    assert "NUL" in str(caught.value.extra)


@pytest.mark.parametrize(
    "raw", [rb'{"name": "\\u0000", "quantity": 1}', rb'{"name": "\\\\u0000", "quantity": 1}']
)
def test_an_escaped_backslash_before_u0000_is_text(raw: bytes) -> None:
    assert decode_json(raw, Item).name.endswith("u0000")


@pytest.mark.parametrize("kind", [Any, Item, dict[str, Any]])
@pytest.mark.parametrize("raw", [b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000])
def test_deep_nesting_is_a_4xx_never_a_recursion_error(kind: Any, raw: bytes) -> None:
    with pytest.raises((Problem, ValidationException)) as caught:
        decode_json(raw, kind)
    if isinstance(caught.value, Problem):
        assert caught.value.status == 400


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"name": "a", "quantity": "2"}', "quantity"),
        (b'{"name": "a", "quantity": 2.0}', "quantity"),
        (b'{"name": 1, "quantity": 2}', "name"),
        (b'{"name": "a", "quantity": 2, "roles": []}', "roles"),
        (b'{"quantity": 2}', "name"),
    ],
)
def test_strict_types(raw: bytes, key: str) -> None:
    with pytest.raises(ValidationException) as caught:
        decode_json(raw, Item)
    assert caught.value.extra[0]["key"] == key  # type: ignore[index]


def test_malformed_json_is_400() -> None:
    with pytest.raises(Problem) as caught:
        decode_json(b'{"name": ', Item)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"application/json", True),
        (b"Application/JSON; charset=utf-8", True),
        (b"application/merge-patch+json", True),
        (b"application/problem+json", True),
        (b"text/plain", False),
        (b"text/json", False),
        (b"application/jsonx", False),
        (b"application/x-www-form-urlencoded", False),
        (b"", False),
    ],
)
def test_json_media(value: bytes, ok: bool) -> None:
    assert json_media(value) is ok


def test_query_nul_errors_name_the_parameters() -> None:
    assert query_nul_errors(b"q=lamp&limit=2") == []
    assert query_nul_errors(b"q=a%00&cursor=%00x&limit=2") == [
        {"field": "query.q", "message": "must not contain NUL"},
        {"field": "query.cursor", "message": "must not contain NUL"},
    ]
    assert query_nul_errors(b"na%00me=1") == [
        {"field": "query.name", "message": "must not contain NUL"}
    ]
