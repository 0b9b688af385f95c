"""The Redis stream of events: message layout, decoding, and the events' own Redis client.

One message per outbox row, fields ``id`` (the outbox id: every consumer's idempotency key),
``type``, ``aggregate``, ``aggregate_id``, ``created_at`` (RFC 3339) and ``payload`` (JSON).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from cygate.infra.redis import RedisHandle, redis_client

if TYPE_CHECKING:
    from cygate.infra.settings import RedisSettings
    from cygate.services.events.settings import EventsSettings

__all__ = ["BadMessage", "Event", "dead_letter_key", "decode", "events_redis", "stream_key"]


class BadMessage(ValueError):
    """A stream message that is not an event (missing field, bad JSON): never retried."""


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox event as a consumer sees it."""

    id: int
    type: str
    aggregate: str
    aggregate_id: str
    created_at: dt.datetime
    payload: dict[str, Any]
    traceparent: str | None = None
    """The W3C traceparent of the request that wrote the event (traced writes only)."""


def stream_key(redis: RedisHandle) -> str:
    return redis.key("events")


def dead_letter_key(redis: RedisHandle) -> str:
    return redis.key("events", "dead")


def _text(fields: dict[bytes, bytes], name: str) -> str:
    raw = fields.get(name.encode())
    if raw is None:
        raise BadMessage(f"no {name!r} field")
    return raw.decode()


def _optional(fields: dict[bytes, bytes], name: str) -> str | None:
    raw = fields.get(name.encode())
    return raw.decode("latin-1") if raw else None


def decode(fields: dict[bytes, bytes]) -> Event:
    """The event a stream message carries; :class:`BadMessage` when it carries none."""
    try:
        payload = orjson.loads(fields.get(b"payload", b""))
        event = Event(
            id=int(_text(fields, "id")),
            type=_text(fields, "type"),
            aggregate=_text(fields, "aggregate"),
            aggregate_id=_text(fields, "aggregate_id"),
            created_at=dt.datetime.fromisoformat(_text(fields, "created_at")),
            payload=payload,
            traceparent=_optional(fields, "traceparent"),
        )
    except (ValueError, UnicodeDecodeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise BadMessage(str(exc)) from None
    if not isinstance(event.payload, dict):
        raise BadMessage("payload is not a JSON object")
    return event


def events_redis(settings: EventsSettings, redis: RedisSettings) -> RedisHandle:
    """A client of the events' own: ``XREADGROUP ... BLOCK`` waits longer than the app's short
    ``redis_timeout`` allows, so the socket timeout covers the block plus that margin."""
    timeout = settings.block + redis.timeout + 1.0
    client = redis_client(
        redis, socket_timeout=timeout, connect_timeout=redis.timeout + 1.0, max_connections=16
    )
    return RedisHandle(client, redis.prefix, redis)
