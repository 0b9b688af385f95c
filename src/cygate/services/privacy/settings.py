"""Settings of the retention policies (:mod:`cygate.services.privacy.retention`), kept apart
from them so that loading the settings imports no database driver."""

from __future__ import annotations

from typing import Annotated

from cygate.infra.settings import Section, doc

__all__ = ["RetentionSettings"]

_YEARS_10 = 3650


class RetentionSettings(Section, frozen=True, kw_only=True):
    """How long each kind of record is kept before ``cygate retention`` removes it, days."""

    audit_days: Annotated[
        int, doc("Audit log entries older than this are deleted, days.", ge=1, le=_YEARS_10)
    ] = 365
    refresh_token_days: Annotated[
        int,
        doc(
            "Refresh tokens whose sign-in (token family) ended this long ago are deleted, days.",
            ge=0,
            le=_YEARS_10,
        ),
    ] = 30
    idempotency_days: Annotated[
        int,
        doc("Idempotency records expired this long ago are deleted, days.", ge=0, le=_YEARS_10),
    ] = 0
    mfa_challenge_days: Annotated[
        int,
        doc(
            "MFA sign-in challenges used or expired this long ago are deleted, days.",
            ge=0,
            le=_YEARS_10,
        ),
    ] = 1
    in_relay: Annotated[
        bool,
        doc(
            "The leading outbox relay also applies the retention policies at each of its "
            "clean-ups (every events_cleanup_interval); false: only `cygate retention` does."
        ),
    ] = False
    order_address_days: Annotated[
        int,
        doc(
            "Orders shipped, cancelled or expired and unchanged this long lose their shipping "
            "address, days.",
            ge=1,
            le=_YEARS_10,
        ),
    ] = 730
