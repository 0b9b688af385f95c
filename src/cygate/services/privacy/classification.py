"""The classification of every column of the tables that hold personal data: the one place the
export, the erasure, the analytics consumer and the log redaction read (``docs/privacy.md``
shows it as a table, generated from here).

Classes, lowest first:

- ``public``: may be shown to anyone (product ids in an order line).
- ``internal``: bookkeeping without meaning outside cygate (ids, timestamps, states).
- ``confidential``: about a person, shown to that person and to staff who need it (e-mail,
  name, order totals).
- ``restricted``: secrets and the most sensitive personal data (password hashes, MFA secrets,
  token hashes, addresses, phone numbers, IP addresses, stored responses): never written to
  logs or traces (:mod:`cygate.services.privacy.redaction`).

Each column also says whether the GDPR export (Art. 15/20) includes it and what erasure
(Art. 17) does to it; each table says whether erasure deletes its rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "CLASSES",
    "CLASSIFICATION",
    "Column",
    "Level",
    "Table",
    "erased_tables",
    "erasure_assignments",
    "exported_columns",
    "markdown_table",
    "restricted_names",
]

Level = Literal["public", "internal", "confidential", "restricted"]
CLASSES: Final[tuple[Level, ...]] = ("public", "internal", "confidential", "restricted")


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its class, why it is kept, and how the GDPR rights treat it."""

    level: Level
    purpose: str
    exported: bool = False
    """Part of the user's export (secrets are not: a hash is of no use to its subject)."""
    erase: str | None = None
    """The SQL value erasure sets (``NULL``, ``''``); None: kept (or its row is deleted)."""


@dataclass(frozen=True, slots=True)
class Table:
    """A table's columns, and whether erasure deletes the user's rows of it."""

    columns: dict[str, Column]
    erasure_deletes: bool = False
    subject: str = "user_id"
    """The column naming the person the row is about."""


def _c(level: Level, purpose: str, *, exported: bool = False, erase: str | None = None) -> Column:
    return Column(level, purpose, exported, erase)


_ID = "row identity"
_TIME = "bookkeeping time"

CLASSIFICATION: Final[dict[str, Table]] = {
    "users": Table(
        {
            "id": _c("internal", "account identity", exported=True),
            "email": _c("confidential", "sign-in and contact", exported=True, erase="NULL"),
            "password_hash": _c("restricted", "password check", erase="NULL"),
            "name": _c("confidential", "how the account is addressed", exported=True, erase="''"),
            "roles": _c(
                "internal", "authorisation", exported=True, erase="ARRAY['customer']::text[]"
            ),
            "created_at": _c("internal", _TIME, exported=True),
            "updated_at": _c("internal", _TIME, exported=True, erase="now()"),
            "erased_at": _c("internal", "erasure tombstone", erase="now()"),
        },
        subject="id",
    ),
    "profiles": Table(
        {
            "user_id": _c("internal", _ID),
            "phone": _c("restricted", "delivery contact", exported=True),
            "default_address": _c("restricted", "delivery", exported=True),
            "marketing_opt_in": _c("confidential", "marketing preference", exported=True),
            "updated_at": _c("internal", _TIME, exported=True),
        },
        erasure_deletes=True,
    ),
    "consents": Table(
        {
            "id": _c("internal", _ID),
            "user_id": _c("internal", _ID),
            "purpose": _c("confidential", "consent record", exported=True),
            "granted": _c("confidential", "consent record", exported=True),
            "source": _c("internal", "consent record", exported=True),
            "at": _c("internal", "consent record", exported=True),
        },
        erasure_deletes=True,
    ),
    "refresh_tokens": Table(
        {
            "id": _c("internal", _ID),
            "user_id": _c("internal", _ID),
            "family_id": _c("internal", "sign-in", exported=True),
            "parent_id": _c("internal", "token rotation"),
            "token_hash": _c("restricted", "token check"),
            "issued_at": _c("internal", "sign-in", exported=True),
            "expires_at": _c("internal", "sign-in"),
            "family_expires_at": _c("internal", "sign-in", exported=True),
            "used_at": _c("internal", "token rotation"),
            "revoked_at": _c("internal", "sign-in", exported=True),
            "access_jti": _c("restricted", "access token revocation"),
            "access_expires_at": _c("internal", "access token revocation"),
            "amr": _c("internal", "authentication methods"),
        },
        erasure_deletes=True,
    ),
    "mfa_totp": Table(
        {
            "user_id": _c("internal", _ID),
            "secret_sealed": _c("restricted", "second factor"),
            "key_id": _c("internal", "second factor"),
            "activated_at": _c("internal", "second factor", exported=True),
            "last_step": _c("internal", "code replay guard"),
            "created_at": _c("internal", _TIME),
        },
        erasure_deletes=True,
    ),
    "mfa_recovery_codes": Table(
        {
            "user_id": _c("internal", _ID),
            "code_hash": _c("restricted", "second factor recovery"),
            "used_at": _c("internal", "second factor recovery"),
        },
        erasure_deletes=True,
    ),
    "mfa_challenges": Table(
        {
            "token_hash": _c("restricted", "second sign-in step"),
            "user_id": _c("internal", _ID),
            "expires_at": _c("internal", "second sign-in step"),
            "used_at": _c("internal", "second sign-in step"),
        },
        erasure_deletes=True,
    ),
    "idempotency_keys": Table(
        {
            "user_id": _c("internal", _ID),
            "key": _c("internal", "request deduplication"),
            "method": _c("internal", "request deduplication"),
            "path": _c("internal", "request deduplication"),
            "request_hash": _c("internal", "request deduplication"),
            "state": _c("internal", "request deduplication"),
            "claim": _c("internal", "request deduplication"),
            "response_status": _c("internal", "request deduplication"),
            "response_headers": _c("internal", "request deduplication"),
            "response_body": _c("restricted", "replayed response"),
            "created_at": _c("internal", _TIME),
            "expires_at": _c("internal", "retention"),
        },
        erasure_deletes=True,
    ),
    "orders": Table(
        {
            "id": _c("internal", "order identity", exported=True),
            "user_id": _c("internal", "order owner", erase="NULL"),
            "status": _c("internal", "order state", exported=True),
            "total_cents": _c("confidential", "bookkeeping", exported=True),
            "currency": _c("confidential", "bookkeeping", exported=True),
            "shipping_address": _c("restricted", "delivery", exported=True, erase="NULL"),
            "version": _c("internal", "concurrency control"),
            "expires_at": _c("internal", "payment deadline"),
            "created_at": _c("internal", _TIME, exported=True),
            "updated_at": _c("internal", _TIME, exported=True, erase="now()"),
        },
    ),
    "order_summaries": Table(
        {
            "user_id": _c("internal", _ID),
            "orders_count": _c("confidential", "order summary"),
            "open_orders": _c("confidential", "order summary"),
            "paid_orders": _c("confidential", "order summary"),
            "shipped_orders": _c("confidential", "order summary"),
            "cancelled_orders": _c("confidential", "order summary"),
            "expired_orders": _c("confidential", "order summary"),
            "total_spent_cents": _c("confidential", "order summary"),
            "last_order_at": _c("confidential", "order summary"),
            "updated_at": _c("internal", _TIME),
        },
        erasure_deletes=True,
    ),
    "audit_log": Table(
        {
            "id": _c("internal", _ID),
            "at": _c("internal", "security record", exported=True),
            "actor_id": _c("internal", "security record"),
            "action": _c("internal", "security record", exported=True),
            "target": _c("internal", "security record"),
            "client_ip": _c("restricted", "security record", exported=True, erase="NULL"),
            "request_id": _c("internal", "request tracing"),
            "details": _c("internal", "security record", exported=True),
        },
        subject="actor_id",
    ),
}
"""Table -> its columns' classification. A test checks that every column of these tables in
the migrated schema is here, and that every table with a user_id or actor_id column is."""


def exported_columns(table: str) -> list[str]:
    """The columns of ``table`` the GDPR export includes, in classification order."""
    return [name for name, col in CLASSIFICATION[table].columns.items() if col.exported]


def erasure_assignments(table: str) -> str:
    """The ``SET`` list erasure applies to the user's rows of ``table`` (``a = NULL, ...``)."""
    return ", ".join(
        f"{name} = {col.erase}"
        for name, col in CLASSIFICATION[table].columns.items()
        if col.erase is not None
    )


def erased_tables() -> list[str]:
    """Tables whose rows about the user erasure deletes."""
    return [name for name, table in CLASSIFICATION.items() if table.erasure_deletes]


def restricted_names() -> frozenset[str]:
    """Names of the restricted columns (the log redaction treats a key of this name as a
    secret)."""
    return frozenset(
        name
        for table in CLASSIFICATION.values()
        for name, col in table.columns.items()
        if col.level == "restricted"
    )


def markdown_table() -> str:
    """The classification as the Markdown table of ``docs/privacy.md``."""
    lines = [
        "| table | column | class | purpose | exported | on erasure |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for table_name, table in CLASSIFICATION.items():
        for name, col in table.columns.items():
            if table.erasure_deletes:
                erasure = "row deleted"
            elif col.erase is not None:
                erasure = f"set to `{col.erase}`"
            else:
                erasure = "kept"
            lines.append(
                f"| {table_name} | {name} | {col.level} | {col.purpose} | "
                f"{'yes' if col.exported else 'no'} | {erasure} |"
            )
    return "\n".join(lines) + "\n"
