"""Settings of the outbox relay and the event consumers (``docs/events.md``)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from cygate.infra.settings import Section, doc

__all__ = ["EventsSettings"]


class EventsSettings(Section, frozen=True, kw_only=True):
    """The relay from the outbox to the Redis stream, and the consumers of the stream."""

    relay: Annotated[
        bool, doc("Run the outbox relay in each gateway worker (one leads, others stand by).")
    ] = True
    consumers: Annotated[
        list[Literal["cache", "order_summary", "analytics"]],
        doc("Event consumers each gateway worker runs; [] runs none (see `cygate worker`)."),
    ] = msgspec.field(default_factory=lambda: ["cache", "order_summary", "analytics"])
    relay_batch: Annotated[
        int, doc("Outbox rows the relay publishes per round trip.", ge=1, le=10_000)
    ] = 500
    poll_interval: Annotated[
        float, doc("Relay polling fallback (besides LISTEN/NOTIFY), seconds.", gt=0, le=60)
    ] = 1.0
    relay_max_backoff: Annotated[
        float, doc("Longest wait between retries while Redis or PostgreSQL fail, seconds.",
                    gt=0, le=300)
    ] = 5.0  # fmt: skip
    stream_maxlen: Annotated[
        int, doc("Approximate length bound of the event stream (XADD MAXLEN ~).", ge=100)
    ] = 100_000
    consumer_batch: Annotated[
        int, doc("Messages a consumer reads (and applies in one transaction) at once.",
                  ge=1, le=10_000)
    ] = 100  # fmt: skip
    linger: Annotated[
        float,
        doc(
            "After a batch that was not full, the relay and each consumer wait this long before "
            "the next read, so that under load batches grow (fewer round trips and commits per "
            "event) at the cost of this much added latency; 0 reads again at once, seconds.",
            ge=0,
            le=1,
        ),
    ] = 0.02
    block: Annotated[
        float, doc("How long a consumer's XREADGROUP waits for messages, seconds.", gt=0, le=60)
    ] = 1.0
    reclaim_idle: Annotated[
        float, doc("A message pending this long (its consumer died) is reclaimed, seconds.",
                    gt=0, le=86400)
    ] = 30.0  # fmt: skip
    max_deliveries: Annotated[
        int, doc("Deliveries after which a failing message goes to the dead-letter stream.",
                  ge=1, le=1000)
    ] = 5  # fmt: skip
    retention: Annotated[
        int, doc("Published outbox rows and consumer records are kept this long, seconds.",
                  ge=60)
    ] = 7 * 86400  # fmt: skip
    cleanup_interval: Annotated[
        float, doc("Seconds between two clean-ups by the leading relay.", gt=0)
    ] = 3600.0
