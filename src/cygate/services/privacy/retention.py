"""Retention policies: records past their retention are deleted or anonymised by
``cygate retention`` (``--dry-run`` counts them and changes nothing).

Each policy is a condition on one table and what is done to the rows that meet it; all
policies run in one transaction, so a run applies all of them or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncpg

    from cygate.services.privacy.settings import RetentionSettings

__all__ = ["POLICIES", "Policy", "run_retention"]


@dataclass(frozen=True, slots=True)
class Policy:
    """Rows of ``table`` matching ``where`` (``$1``: the setting, days) are deleted, or, with
    ``update``, changed by that ``SET`` list."""

    name: str
    table: str
    where: str
    setting: str
    update: str | None = None


POLICIES: Final[tuple[Policy, ...]] = (
    Policy(
        "audit_log",
        "audit_log",
        "at < now() - make_interval(days => $1)",
        "audit_days",
    ),
    Policy(
        "refresh_tokens",
        "refresh_tokens",
        "family_expires_at < now() - make_interval(days => $1)",
        "refresh_token_days",
    ),
    Policy(
        "idempotency_keys",
        "idempotency_keys",
        "expires_at < now() - make_interval(days => $1)",
        "idempotency_days",
    ),
    Policy(
        "mfa_challenges",
        "mfa_challenges",
        "COALESCE(used_at, expires_at) < now() - make_interval(days => $1)",
        "mfa_challenge_days",
    ),
    Policy(
        "order_addresses",
        "orders",
        "shipping_address IS NOT NULL AND status IN ('shipped', 'cancelled', 'expired')"
        " AND updated_at < now() - make_interval(days => $1)",
        "order_address_days",
        update="shipping_address = NULL",
    ),
)
"""The policies, in the order they run."""


async def run_retention(
    conn: asyncpg.Connection, settings: RetentionSettings, *, dry_run: bool
) -> dict[str, int]:
    """Apply every policy (or, ``dry_run``, only count); policy name -> rows affected."""
    counts: dict[str, int] = {}
    async with conn.transaction():
        for policy in POLICIES:
            days = getattr(settings, policy.setting)
            if dry_run:
                sql = f"SELECT count(*) FROM {policy.table} WHERE {policy.where}"
            elif policy.update is not None:
                sql = (
                    f"WITH c AS (UPDATE {policy.table} SET {policy.update} WHERE {policy.where}"
                    " RETURNING 1) SELECT count(*) FROM c"
                )
            else:
                sql = (
                    f"WITH c AS (DELETE FROM {policy.table} WHERE {policy.where} RETURNING 1)"
                    " SELECT count(*) FROM c"
                )
            counts[policy.name] = int(await conn.fetchval(sql, days))
    return counts
