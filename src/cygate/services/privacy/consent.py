"""Consent records: each decision of a user about a purpose is a new row of ``consents`` (the
history); the newest row of a (user, purpose) is the current answer, and a purpose the user
never decided on has its default.

The purposes are a fixed list (:data:`PURPOSES`); the analytics consumer reads
:func:`decisions` and :func:`granted_when` to leave out the events of users who had refused
analytics when the event happened.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

import msgspec

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "PURPOSES",
    "ConsentIn",
    "ConsentOut",
    "Consents",
    "Purpose",
    "consents_of",
    "decisions",
    "granted_when",
    "record_consent",
]


@dataclass(frozen=True, slots=True)
class Purpose:
    """A purpose of processing that a user may agree to or refuse."""

    description: str
    default: bool
    """The answer until the user decides."""


PURPOSES: Final[dict[str, Purpose]] = {
    "analytics": Purpose(
        "Counting the user's orders and payments in the daily analytics totals (counts and sums"
        " per day and event type, without any identifier).",
        default=True,
    ),
    "marketing": Purpose("Marketing messages by e-mail.", default=False),
}
"""The purposes, by name (the ``{purpose}`` of ``/api/v1/users/me/consents/{purpose}``)."""


class ConsentIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of ``PUT /api/v1/users/me/consents/{purpose}``."""

    granted: bool


class ConsentOut(msgspec.Struct, kw_only=True):
    """One purpose's answer; ``at`` and ``source`` are null while it is the default."""

    purpose: str
    granted: bool
    source: str | None
    at: dt.datetime | None


class Consents(msgspec.Struct, kw_only=True):
    """The current answer for every purpose, and every decision so far (oldest first)."""

    consents: list[ConsentOut]
    history: list[ConsentOut]


async def record_consent(
    conn: asyncpg.Connection, user_id: UUID, purpose: str, granted: bool, source: str
) -> ConsentOut | None:
    """Record a decision (a new history row); None when the user is not a live account."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """INSERT INTO consents (user_id, purpose, granted, source)
               SELECT id, $2, $3, $4 FROM users WHERE id = $1 AND erased_at IS NULL
               RETURNING purpose, granted, source, at""",
            user_id,
            purpose,
            granted,
            source,
        )
        if row is None:
            return None
        if purpose == "marketing":  # the profile's flag follows the marketing consent
            await conn.execute(
                "UPDATE profiles SET marketing_opt_in = $2, updated_at = now() WHERE user_id = $1",
                user_id,
                granted,
            )
    return ConsentOut(**dict(row))


async def consents_of(conn: Any, user_id: UUID) -> Consents | None:
    """The user's answers and history; None when the user is not a live account."""
    live = await conn.fetchval("SELECT 1 FROM users WHERE id = $1 AND erased_at IS NULL", user_id)
    if live is None:
        return None
    rows = await conn.fetch(
        "SELECT purpose, granted, source, at FROM consents WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    history = [ConsentOut(**dict(r)) for r in rows]
    current = {
        name: ConsentOut(purpose=name, granted=p.default, source=None, at=None)
        for name, p in PURPOSES.items()
    }
    for record in history:
        current[record.purpose] = record
    return Consents(consents=list(current.values()), history=history)


async def decisions(
    conn: Any, user_ids: list[UUID], purpose: str
) -> dict[UUID, list[tuple[dt.datetime, bool]]]:
    """The decision history about ``purpose`` of each of ``user_ids`` that has one, oldest
    first: (time, granted) pairs, for :func:`granted_when` to ask about a moment."""
    rows = await conn.fetch(
        """SELECT user_id, at, granted FROM consents
           WHERE user_id = ANY($1::uuid[]) AND purpose = $2 ORDER BY user_id, id""",
        user_ids,
        purpose,
    )
    out: dict[UUID, list[tuple[dt.datetime, bool]]] = {}
    for r in rows:
        out.setdefault(r["user_id"], []).append((r["at"], r["granted"]))
    return out


def granted_when(
    history: list[tuple[dt.datetime, bool]] | None, purpose: str, when: dt.datetime
) -> bool:
    """Whether the consent to ``purpose`` held at ``when``, given its history (oldest first)."""
    answer = PURPOSES[purpose].default
    for at, granted in history or ():
        if at > when:
            break
        answer = granted
    return answer
