"""Outbox and events (docs/events.md): the relay from the outbox to a Redis
stream, consumer groups with reclaim and a dead-letter stream, and three consumers (cache
invalidation, the per-user order summary, analytics counters)."""

from __future__ import annotations

__all__: list[str] = []
