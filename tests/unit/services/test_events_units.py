"""Pure parts of the events service: message decoding, cache tags, settings."""

from __future__ import annotations

import pytest

from cygate.services.events.handlers import tags_for
from cygate.services.events.stream import BadMessage, decode
from cygate.settings import SettingsError, load_settings

GOOD = {
    b"id": b"42",
    b"type": b"product.updated",
    b"aggregate": b"product",
    b"aggregate_id": b"p1",
    b"created_at": b"2026-11-25T10:00:00.123456+00:00",
    b"payload": b'{"product_id": "p1", "category_id": "c1"}',
}


def test_decode_a_message() -> None:
    event = decode(GOOD)
    assert (event.id, event.type, event.aggregate_id) == (42, "product.updated", "p1")
    assert event.payload == {"product_id": "p1", "category_id": "c1"}
    assert event.created_at.utcoffset() is not None


@pytest.mark.parametrize(
    "change",
    [
        {b"id": None},
        {b"id": b"forty-two"},
        {b"type": None},
        {b"created_at": b"yesterday"},
        {b"payload": b"{nope"},
        {b"payload": b"[1, 2]"},
        {b"payload": None},
        {b"aggregate_id": b"\xff\xfe"},
    ],
)
def test_decode_refuses_what_is_not_an_event(change: dict[bytes, bytes | None]) -> None:
    fields = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(BadMessage):
        decode(fields)


def _event(etype: str, payload: bytes) -> dict[bytes, bytes]:
    return {**GOOD, b"type": etype.encode(), b"payload": payload}


def test_cache_tags_per_event_type() -> None:
    assert tags_for(decode(_event("product.deleted", b'{"product_id": "p9"}'))) == [
        "product:p9",
        "products",
    ]
    assert tags_for(decode(_event("category.updated", b'{"category_id": "c"}'))) == [
        "categories",
        "products",
    ]
    items = b'{"items": [{"product_id": "b", "quantity": 1}, {"product_id": "a", "quantity": 2},'
    items += b' {"product_id": "a", "quantity": 1}]}'
    for etype in ("order.created", "order.cancelled", "order.expired"):
        assert tags_for(decode(_event(etype, items))) == ["product:a", "product:b"]
    assert tags_for(decode(_event("order.paid", b'{"order_id": "o"}'))) == []


def test_events_settings_from_the_environment() -> None:
    s = load_settings(env={"CYGATE_EVENTS_CONSUMERS": "analytics, order_summary"})
    assert s.events.consumers == ["analytics", "order_summary"]
    assert load_settings(env={"CYGATE_EVENTS_CONSUMERS": ""}).events.consumers == []
    with pytest.raises(SettingsError, match="events_consumers"):
        load_settings(env={"CYGATE_EVENTS_CONSUMERS": "cache,billing"})
    with pytest.raises(SettingsError, match="events_stream_maxlen"):
        load_settings(env={"CYGATE_EVENTS_STREAM_MAXLEN": "10"})
    with pytest.raises(SettingsError, match="events_reclaim_idle"):
        load_settings(env={"CYGATE_EVENTS_RECLAIM_IDLE": "0"})


def test_worker_refuses_an_unknown_consumer(capsys: pytest.CaptureFixture[str]) -> None:
    from cygate.cli import main

    assert main(["worker", "--consumers", "cache,billing"]) == 2
    assert "unknown consumer(s) billing" in capsys.readouterr().err


class _RecordingCache:
    """Stands in for ResponseCache.invalidate_tags: records each purge."""

    def __init__(self) -> None:
        self.purges: list[list[str]] = []

    async def invalidate_tags(self, tags: list[str]) -> tuple[int, int]:
        self.purges.append(list(tags))
        return 0, 0


async def test_the_cache_consumer_purges_a_batch_at_once() -> None:
    from typing import Any

    from cygate.services.events.handlers import CacheHandler

    cache = _RecordingCache()
    handler = CacheHandler(cache)  # type: ignore[arg-type]
    batch = [
        decode(_event("order.created", b'{"items": [{"product_id": "a", "quantity": 1}]}')),
        decode(_event("product.updated", b'{"product_id": "b"}')),
        decode(_event("order.cancelled", b'{"items": [{"product_id": "a", "quantity": 1}]}')),
        decode(_event("order.paid", b'{"order_id": "o"}')),
    ]
    await handler.apply_many(batch)
    assert cache.purges == [["product:a", "product:b", "products"]]
    await handler.apply_many([batch[-1]])  # nothing to purge: no call at all
    assert len(cache.purges) == 1
    one: Any = batch[1]
    await handler.apply(None, one)
    assert cache.purges[-1] == ["product:b", "products"]
