"""Settings of ``Idempotency-Key`` handling (:mod:`cygate.services.idempotency`), kept apart
from it so that loading the settings imports no web framework."""

from __future__ import annotations

from typing import Annotated

from cygate.infra.settings import Section, doc

__all__ = ["IdempotencySettings"]


class IdempotencySettings(Section, frozen=True, kw_only=True):
    """How long keys are kept, and when a claim in flight may be taken over."""

    ttl_seconds: Annotated[
        int,
        doc(
            "How long an Idempotency-Key and its response are kept, seconds.", ge=60, le=30 * 86400
        ),
    ] = 86400
    in_flight_timeout: Annotated[
        float,
        doc(
            "A claim in flight longer than this (its process died) may be taken over "
            "by a retry, seconds.",
            ge=1,
            le=86400,
        ),
    ] = 60.0
