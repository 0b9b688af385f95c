"""Correctness checks, run once on each contender before it is put under load.

A contender that answers wrongly (status, content type, or body shape and values) fails loudly
and is not measured: a fast wrong answer is no result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from .contenders._product import PRODUCT_FIELDS
from .procs import HttpResponse

__all__ = [
    "Check",
    "CheckFailed",
    "check_fixed_product",
    "check_hello",
    "check_me",
    "check_product",
    "check_small_json",
]

Check = Callable[[HttpResponse, Mapping[str, Any]], None]
"""``check(response, expected)``: raise :class:`CheckFailed` if the response is wrong.
``expected`` holds ``product`` (the check product's JSON object), ``fixed_body`` (bytes) and
``user`` (the benchmark user's id, email, name, roles; None without one)."""

TIMESTAMP_TOLERANCE = timedelta(milliseconds=1)


class CheckFailed(AssertionError):
    pass


def _json_object(resp: HttpResponse) -> dict[str, Any]:
    if resp.status != 200:
        raise CheckFailed(f"status {resp.status}, expected 200; body: {resp.body[:300]!r}")
    if "json" not in resp.content_type:
        raise CheckFailed(f"content-type {resp.content_type!r}, expected JSON")
    try:
        doc = json.loads(resp.body)
    except ValueError as exc:
        raise CheckFailed(f"body is not JSON ({exc}): {resp.body[:300]!r}") from None
    if not isinstance(doc, dict):
        raise CheckFailed(f"body is not a JSON object: {resp.body[:300]!r}")
    return doc


def check_product(resp: HttpResponse, expected: Mapping[str, Any]) -> None:
    """The product object: exactly the API's fields, the database's values, ids as strings,
    ``updated_at`` in RFC 3339 UTC ending in ``Z``."""
    doc = _json_object(resp)
    want: Mapping[str, Any] = expected["product"]
    if set(doc) != set(PRODUCT_FIELDS):
        missing, extra = set(PRODUCT_FIELDS) - set(doc), set(doc) - set(PRODUCT_FIELDS)
        raise CheckFailed(f"fields differ: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for field in PRODUCT_FIELDS:
        if field == "updated_at":
            continue
        if doc[field] != want[field] or type(doc[field]) is not type(want[field]):
            raise CheckFailed(f"{field}: got {doc[field]!r}, expected {want[field]!r}")
    stamp = doc["updated_at"]
    if not isinstance(stamp, str) or not stamp.endswith("Z"):
        raise CheckFailed(f"updated_at {stamp!r} is not RFC 3339 UTC with a 'Z'")
    try:
        got = datetime.fromisoformat(stamp)
    except ValueError:
        raise CheckFailed(f"updated_at {stamp!r} is not RFC 3339") from None
    if abs(got - datetime.fromisoformat(want["updated_at"])) > TIMESTAMP_TOLERANCE:
        raise CheckFailed(f"updated_at: got {stamp}, expected {want['updated_at']}")


def check_fixed_product(resp: HttpResponse, expected: Mapping[str, Any]) -> None:
    """The product object, and byte for byte the bytes the harness handed the server."""
    check_product(resp, expected)
    if resp.body != expected["fixed_body"]:
        raise CheckFailed(f"body differs from the fixed bytes: {resp.body[:300]!r}")


def _same_header_names(resp: HttpResponse) -> None:
    from benchmarks.macro.contenders.granian_bare import CYGATE_HEADERS

    got = [name for name, _ in resp.headers if name not in ("date", "server")]
    want = [name.decode() for name, _ in CYGATE_HEADERS]
    if got != want:
        raise CheckFailed(
            f"headers differ from granian-same-bytes's: got {got}, expected {want} "
            "(update CYGATE_HEADERS in benchmarks/macro/contenders/granian_bare.py)"
        )


def check_full_product(resp: HttpResponse, expected: Mapping[str, Any]) -> None:
    """cygate-full's answer: the product, and the very headers granian-same-bytes sends."""
    check_product(resp, expected)
    _same_header_names(resp)


def check_same_bytes(resp: HttpResponse, expected: Mapping[str, Any]) -> None:
    """granian-same-bytes: the fixed body and cygate-full's header names."""
    check_fixed_product(resp, expected)
    _same_header_names(resp)


def check_hello(resp: HttpResponse, expected: Mapping[str, Any]) -> None:
    """``{"hello": "world"}``."""
    doc = _json_object(resp)
    if doc != {"hello": "world"}:
        raise CheckFailed(f'body {doc!r}, expected {{"hello": "world"}}')


def check_small_json(resp: HttpResponse, expected: Mapping[str, Any]) -> None:
    """The upstream's small JSON body, byte for byte (through a proxy or not)."""
    from benchmarks.nginx import SMALL_JSON

    _json_object(resp)
    if resp.body != SMALL_JSON:
        raise CheckFailed(f"body differs from the upstream's: {resp.body[:300]!r}")


def check_me(resp: HttpResponse, expected: Mapping[str, Any]) -> None:
    """``GET /api/v1/users/me``: the benchmark user's own profile, exactly the API's fields."""
    doc = _json_object(resp)
    want = expected.get("user")
    if want is None:
        raise CheckFailed("the benchmark database has no user")
    fields = {"id", "email", "name", "roles", "created_at"}
    if set(doc) != fields:
        raise CheckFailed(f"fields {sorted(doc)}, expected {sorted(fields)}")
    for field in ("id", "email", "name", "roles"):
        if doc[field] != want[field]:
            raise CheckFailed(f"{field}: got {doc[field]!r}, expected {want[field]!r}")
