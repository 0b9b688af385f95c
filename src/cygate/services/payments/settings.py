"""Settings of payments: the processor, its circuit breaker, webhooks and recovery
(``docs/payments.md``)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from cygate.infra.settings import Section, doc

__all__ = ["FAULTS", "PaymentsSettings"]

FAULTS = frozenset({"payment:after_commit", "payment:after_charge"})
"""The crash points ``fault`` may name (test environment only)."""


class PaymentsSettings(Section, frozen=True, kw_only=True):
    """The payment processor and the gateway's side of it."""

    processor_url: Annotated[
        str, doc("Base URL of the payment processor (the simulator in development).",
                  pattern=r"^http://[^/?#]+/?$")
    ] = "http://127.0.0.1:8090"  # fmt: skip
    processor_timeout: Annotated[
        float, doc("Most one processor call may take (connect and answer), seconds.", gt=0, le=60)
    ] = 5.0
    breaker_failures: Annotated[
        int, doc("Consecutive processor failures that open the circuit (per worker).", ge=1)
    ] = 5
    breaker_open_seconds: Annotated[
        float, doc("How long an open circuit answers 503 before one probe, seconds.", gt=0)
    ] = 10.0
    webhook_secret: Annotated[
        str,
        doc(
            "Shared HMAC secret of processor webhooks; empty: development/test read or create "
            "the file, production refuses every webhook.",
        ),
    ] = ""
    webhook_secret_file: Annotated[
        str, doc("Where development/test keep a generated webhook secret (never commit it).")
    ] = ".cygate/payment-webhook-secret"
    webhook_tolerance: Annotated[
        int, doc("Webhooks whose timestamp is further off than this are refused, seconds.",
                  ge=1, le=3600)
    ] = 300  # fmt: skip
    recovery_interval: Annotated[
        float, doc("Seconds between sweeps for payments stuck `initiated`; 0: no sweeper.",
                    ge=0, le=3600)
    ] = 30.0  # fmt: skip
    recovery_after: Annotated[
        float, doc("A payment still `initiated` after this many seconds is reconciled.",
                    gt=0, le=86400)
    ] = 60.0  # fmt: skip
    fault: Annotated[
        str, doc("Test only: crash point, e.g. payment:after_commit (SIGKILLs the gateway).")
    ] = ""

    def __post_init__(self) -> None:
        # NOTE: a payment younger than the processor timeout may still have its call in flight;
        # reconciling it then could call "not found" a charge that is about to happen.
        if self.recovery_after <= 2 * self.processor_timeout:
            raise msgspec.ValidationError(
                "payment_recovery_after must exceed twice payment_processor_timeout"
                " - at `$.payments.recovery_after`"
            )
