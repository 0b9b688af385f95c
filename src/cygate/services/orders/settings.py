"""Settings of orders: how long an unpaid order holds its stock, and the expiry sweeper."""

from __future__ import annotations

from typing import Annotated

from cygate.infra.settings import Section, doc

__all__ = ["OrdersSettings"]


class OrdersSettings(Section, frozen=True, kw_only=True):
    """Unpaid orders expire; each worker sweeps them."""

    ttl_seconds: Annotated[
        int,
        doc(
            "An unpaid order expires (its stock released) after this long, seconds.",
            ge=1,
            le=30 * 86400,
        ),
    ] = 900
    expiry_interval: Annotated[
        float,
        doc(
            "Seconds between two expiry sweeps of one worker; 0 turns the sweeper off.",
            ge=0,
            le=3600,
        ),
    ] = 5.0
    expiry_batch: Annotated[int, doc("Orders expired per sweep transaction.", ge=1, le=10_000)] = (
        100
    )
