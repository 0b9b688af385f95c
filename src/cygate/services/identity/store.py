"""Identity data in PostgreSQL: users, refresh-token families, service clients (the audit log is
``cygate.services.audit``; ``audit`` is re-exported here for the identity service).

Functions take a connection (or the pool) so the service can put several in one transaction.
Ownership lives here: every query about "me" is keyed by the caller's own id, so another
user's data is simply not found (a 404), never refused after being read.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias
from uuid import UUID

import orjson

from cygate.ids import uuid7
from cygate.services.audit import audit
from cygate.services.catalog.repository import CursorError
from cygate.services.identity.models import User, UserPage
from cygate.services.privacy.classification import (
    CLASSIFICATION,
    erased_tables,
    erasure_assignments,
    exported_columns,
)

if TYPE_CHECKING:
    import asyncpg

Conn: TypeAlias = Any
"""An ``asyncpg.Connection`` or ``asyncpg.Pool`` (asyncpg ships no type information)."""

__all__ = [
    "Consumed",
    "EmailTaken",
    "LastAdmin",
    "LoginRow",
    "TotpRow",
    "activate_totp",
    "audit",
    "challenge_user",
    "claim_totp_step",
    "consume_challenge",
    "consume_refresh",
    "create_user",
    "erase_user",
    "export_user",
    "get_user",
    "insert_challenge",
    "insert_refresh",
    "list_users",
    "live_access_tokens",
    "login_row",
    "refresh_state",
    "remove_totp",
    "rename_user",
    "revoke_family",
    "set_password_hash",
    "set_roles",
    "start_totp",
    "totp_row",
    "upsert_admin",
    "use_recovery_code",
]

_USER_COLUMNS: Final = "id, email, name, roles, created_at"


class EmailTaken(Exception):
    """An account with this email exists (409)."""


class LastAdmin(Exception):
    """A role change that would leave no admin, or an admin's change of its own roles while
    no other admin exists (409)."""


_ADMIN_LOCK: Final = 0x6379_6761_7465_0001
"""Transaction advisory lock held while a role change counts the admins left."""


def _user(row: Any) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        name=row["name"],
        roles=list(row["roles"]),
        created_at=row["created_at"],
    )


# ---------------------------------------------------------------------------------------------
# Users
# ---------------------------------------------------------------------------------------------


async def create_user(conn: Conn, email: str, password_hash: str, name: str) -> User:
    import asyncpg

    try:
        row = await conn.fetchrow(
            f"INSERT INTO users (id, email, password_hash, name) VALUES ($1, $2, $3, $4)"
            f" RETURNING {_USER_COLUMNS}",
            uuid7(),
            email,
            password_hash,
            name,
        )
    except asyncpg.UniqueViolationError:
        raise EmailTaken(email) from None
    return _user(row)


@dataclass(frozen=True, slots=True)
class LoginRow:
    id: UUID
    password_hash: str | None
    roles: list[str]
    mfa: bool
    """A TOTP enrolment is active: the password alone gives no tokens."""


async def login_row(conn: Conn, email: str) -> LoginRow | None:
    row = await conn.fetchrow(
        """SELECT u.id, u.password_hash, u.roles,
                  EXISTS (SELECT 1 FROM mfa_totp m
                          WHERE m.user_id = u.id AND m.activated_at IS NOT NULL) AS mfa
           FROM users u WHERE lower(u.email) = $1 AND u.erased_at IS NULL""",
        email,
    )
    if row is None:
        return None
    return LoginRow(row["id"], row["password_hash"], list(row["roles"]), row["mfa"])


async def set_password_hash(conn: Conn, user_id: UUID, password_hash: str) -> None:
    await conn.execute(
        "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
        user_id,
        password_hash,
    )


async def get_user(conn: Conn, user_id: UUID) -> User | None:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1 AND erased_at IS NULL", user_id
    )
    return None if row is None else _user(row)


async def rename_user(conn: Conn, user_id: UUID, name: str) -> User | None:
    row = await conn.fetchrow(
        f"UPDATE users SET name = $2, updated_at = now() WHERE id = $1 AND erased_at IS NULL"
        f" RETURNING {_USER_COLUMNS}",
        user_id,
        name,
    )
    return None if row is None else _user(row)


def _encode_cursor(last_id: UUID) -> str:
    return base64.urlsafe_b64encode(last_id.bytes).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str) -> UUID:
    try:
        if len(cursor) != 22:
            raise ValueError("length")
        return UUID(bytes=base64.urlsafe_b64decode(cursor + "=="))
    except (ValueError, binascii.Error):
        raise CursorError("malformed cursor") from None


async def list_users(conn: Conn, *, limit: int, cursor: str | None) -> UserPage:
    """Users in id order (UUIDv7: sign-up order), keyset-paged; erased accounts left out."""
    after = _decode_cursor(cursor) if cursor is not None else None
    rows = await conn.fetch(
        f"SELECT {_USER_COLUMNS} FROM users WHERE erased_at IS NULL"
        " AND ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
        after,
        limit + 1,
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1]["id"])
    return UserPage([_user(r) for r in rows], next_cursor)


async def _another_admin(conn: asyncpg.Connection, user_id: UUID) -> None:
    """Raise :class:`LastAdmin` unless an admin other than ``user_id`` exists; in the caller's
    transaction, which then holds the admin lock until it ends.

    NOTE: the lock makes concurrent changes count the admins one after the other: two admins
    demoting each other at once each lock only the row they change, so without it both would
    still see the other as an admin and leave none. Under READ COMMITTED the count sees every
    change committed before the lock was granted.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADMIN_LOCK)
    others = await conn.fetchval(
        "SELECT count(*) FROM users WHERE 'admin' = ANY(roles) AND erased_at IS NULL AND id <> $1",
        user_id,
    )
    if not others:
        raise LastAdmin


async def set_roles(
    conn: asyncpg.Connection, user_id: UUID, roles: list[str], *, actor_id: UUID | None = None
) -> tuple[list[str], User] | None:
    """Replace the user's roles; returns (the roles before, the user after), or None.

    Raises :class:`LastAdmin` when the change takes ``admin`` from the last admin, or when
    ``actor_id`` changes its own roles and no other admin exists. Call it in a transaction.
    """
    before = await conn.fetchval(
        "SELECT roles FROM users WHERE id = $1 AND erased_at IS NULL FOR UPDATE", user_id
    )
    if before is None:
        return None
    before = list(before)
    demoted = "admin" in before and "admin" not in roles
    if before != roles and (demoted or user_id == actor_id):
        await _another_admin(conn, user_id)
    row = await conn.fetchrow(
        f"UPDATE users SET roles = $2, updated_at = now() WHERE id = $1 RETURNING {_USER_COLUMNS}",
        user_id,
        roles,
    )
    return before, _user(row)


async def upsert_admin(conn: Conn, email: str, password_hash: str) -> UUID:
    """The admin account of ``CYGATE_ADMIN_EMAIL``: created, or its password and role reset."""
    user_id: UUID = await conn.fetchval(
        """INSERT INTO users (id, email, password_hash, name, roles)
           VALUES ($1, $2, $3, 'Administrator', ARRAY['admin'])
           ON CONFLICT ((lower(email))) DO UPDATE
              SET password_hash = EXCLUDED.password_hash,
                  roles = ARRAY(SELECT DISTINCT r FROM unnest(users.roles || 'admin'::text) r
                                ORDER BY r),
                  updated_at = now()
           RETURNING id""",
        uuid7(),
        email,
        password_hash,
    )
    return user_id


# ---------------------------------------------------------------------------------------------
# Refresh-token families
# ---------------------------------------------------------------------------------------------


async def insert_refresh(
    conn: Conn,
    *,
    user_id: UUID,
    token_hash: bytes,
    access_jti: str,
    access_expires_at: int,
    ttl: int,
    family_ttl: int | None = None,
    family_id: UUID | None = None,
    parent_id: UUID | None = None,
    family_expires_at: Any = None,
    amr: list[str] | None = None,
) -> None:
    """A new refresh token: the first of a family (``family_ttl``), or the child of a rotated
    one (same ``family_id`` and ``family_expires_at``: rotation never extends the family).
    ``amr``: how the session's user authenticated (default ``["pwd"]``), kept for refresh."""
    await conn.execute(
        """INSERT INTO refresh_tokens
               (id, user_id, family_id, parent_id, token_hash, expires_at, family_expires_at,
                access_jti, access_expires_at, amr)
           SELECT $1, $2, $3, $4, $5, LEAST(now() + make_interval(secs => $6), f.exp), f.exp,
                  $8, to_timestamp($9), $11
           FROM (SELECT COALESCE($7::timestamptz, now() + make_interval(secs => $10)) AS exp) f""",
        uuid7(),
        user_id,
        family_id or uuid7(),
        parent_id,
        token_hash,
        float(ttl),
        family_expires_at,
        access_jti,
        float(access_expires_at),
        float(family_ttl or ttl),
        amr or ["pwd"],
    )


@dataclass(frozen=True, slots=True)
class Consumed:
    id: UUID
    user_id: UUID
    family_id: UUID
    family_expires_at: Any
    roles: list[str]
    amr: list[str]


async def consume_refresh(conn: Conn, token_hash: bytes) -> Consumed | None:
    """Mark a live refresh token used, atomically: of any number of concurrent callers with the
    same token, exactly one gets the row (the others wait on its row lock, then find it used)."""
    row = await conn.fetchrow(
        """WITH consumed AS (
               UPDATE refresh_tokens SET used_at = now()
               WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL
                 AND expires_at > now()
               RETURNING id, user_id, family_id, family_expires_at, amr)
           SELECT c.id, c.user_id, c.family_id, c.family_expires_at, c.amr, u.roles
           FROM consumed c JOIN users u ON u.id = c.user_id AND u.erased_at IS NULL""",
        token_hash,
    )
    if row is None:
        return None
    return Consumed(
        row["id"],
        row["user_id"],
        row["family_id"],
        row["family_expires_at"],
        list(row["roles"]),
        list(row["amr"]),
    )


async def refresh_state(conn: Conn, token_hash: bytes) -> Any:
    """Why a token could not be consumed: its row (family, user, used, revoked), or None."""
    return await conn.fetchrow(
        "SELECT family_id, user_id, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1",
        token_hash,
    )


async def revoke_family(conn: Conn, family_id: UUID) -> list[tuple[str, float]]:
    """Revoke every token of a family; returns the access tokens issued with them still alive."""
    rows = await conn.fetch(
        """UPDATE refresh_tokens SET revoked_at = now()
           WHERE family_id = $1 AND revoked_at IS NULL
           RETURNING access_jti, extract(epoch FROM access_expires_at)::float8 AS exp""",
        family_id,
    )
    return [(r["access_jti"], r["exp"]) for r in rows if r["access_jti"] and r["exp"]]


async def live_access_tokens(conn: Conn, user_id: UUID) -> list[tuple[str, float]]:
    """The user's access tokens that have not expired yet (issued by login or refresh)."""
    rows = await conn.fetch(
        """SELECT access_jti, extract(epoch FROM access_expires_at)::float8 AS exp
           FROM refresh_tokens WHERE user_id = $1 AND access_expires_at > now()""",
        user_id,
    )
    return [(r["access_jti"], r["exp"]) for r in rows if r["access_jti"]]


# ---------------------------------------------------------------------------------------------
# GDPR: export and erasure
# ---------------------------------------------------------------------------------------------


async def export_user(conn: asyncpg.Connection, user_id: UUID) -> dict[str, Any] | None:
    """Everything held about the user (GDPR Art. 15/20), as JSON-ready data."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        user = await conn.fetchrow(
            f"SELECT {_exported('users')} FROM users WHERE id = $1 AND erased_at IS NULL",
            user_id,
        )
        if user is None:
            return None
        profile = await conn.fetchrow(
            f"SELECT {_exported('profiles')} FROM profiles WHERE user_id = $1", user_id
        )
        orders = await conn.fetch(
            f"""SELECT {_exported("orders", "o.")},
                      COALESCE((SELECT json_agg(json_build_object(
                                   'product_id', i.product_id, 'quantity', i.quantity,
                                   'unit_price_cents', i.unit_price_cents))
                                FROM order_items i WHERE i.order_id = o.id), '[]') AS items,
                      COALESCE((SELECT json_agg(json_build_object(
                                   'id', p.id, 'status', p.status, 'amount_cents', p.amount_cents,
                                   'currency', p.currency, 'created_at', p.created_at))
                                FROM payments p WHERE p.order_id = o.id), '[]') AS payments
               FROM orders o WHERE o.user_id = $1 ORDER BY o.created_at""",
            user_id,
        )
        sessions = await conn.fetch(
            """SELECT family_id, min(issued_at) AS started_at, max(issued_at) AS last_used_at,
                      max(family_expires_at) AS expires_at, max(revoked_at) AS revoked_at
               FROM refresh_tokens WHERE user_id = $1 GROUP BY family_id ORDER BY 2""",
            user_id,
        )
        mfa = await conn.fetchrow(
            """SELECT m.activated_at,
                      (SELECT count(*) FROM mfa_recovery_codes r
                       WHERE r.user_id = m.user_id AND r.used_at IS NULL) AS recovery_codes_left
               FROM mfa_totp m WHERE m.user_id = $1 AND m.activated_at IS NOT NULL""",
            user_id,
        )
        audit_columns = _exported("audit_log").replace("client_ip", "host(client_ip) AS client_ip")
        events = await conn.fetch(
            f"SELECT {audit_columns} FROM audit_log WHERE actor_id = $1 ORDER BY at, id",
            user_id,
        )
        consents = await conn.fetch(
            f"SELECT {_exported('consents')} FROM consents WHERE user_id = $1 ORDER BY id",
            user_id,
        )
    return {
        "user": dict(user),
        "profile": dict(profile) if profile is not None else None,
        "orders": [
            {**dict(o), "items": orjson.loads(o["items"]), "payments": orjson.loads(o["payments"])}
            for o in orders
        ],
        "sessions": [dict(s) for s in sessions],
        "mfa": {"totp": dict(mfa) if mfa is not None else None},
        "security_events": [dict(e) for e in events],
        "consents": [dict(c) for c in consents],
    }


def _exported(table: str, prefix: str = "") -> str:
    """The select list of ``table``'s exported columns (the privacy classification)."""
    return ", ".join(prefix + name for name in exported_columns(table))


async def erase_user(conn: asyncpg.Connection, user_id: UUID) -> list[tuple[str, float]] | None:
    """Erase the user's personal data in the caller's transaction; returns the access tokens to
    revoke, or None when there is no such (live) user.

    The row stays as a tombstone without PII (its id keeps audit entries meaningful and can
    never be reused); the rows of the tables the privacy classification marks (profile, consents,
    tokens, MFA, idempotency records, order summary) go; orders stay for the books, without the
    columns it marks (shipping address, the link to the person). Raises
    :class:`LastAdmin` for the last admin (erasure takes its role too).
    """
    roles = await conn.fetchval(
        "SELECT roles FROM users WHERE id = $1 AND erased_at IS NULL FOR UPDATE", user_id
    )
    if roles is None:
        return None
    if "admin" in roles:
        await _another_admin(conn, user_id)
    # NOTE: what erasure clears and deletes is the privacy classification's (one place).
    erased = await conn.fetchval(
        f"UPDATE users SET {erasure_assignments('users')}"
        " WHERE id = $1 AND erased_at IS NULL RETURNING id",
        user_id,
    )
    if erased is None:
        return None
    for table in erased_tables():
        if table != "refresh_tokens":  # below: their access tokens are revoked
            subject = CLASSIFICATION[table].subject
            await conn.execute(f"DELETE FROM {table} WHERE {subject} = $1", user_id)
    orders = await conn.fetchval(
        f"""WITH o AS (UPDATE orders SET {erasure_assignments("orders")}
                      WHERE user_id = $1 RETURNING 1)
           SELECT count(*) FROM o""",
        user_id,
    )
    await conn.execute(
        f"UPDATE audit_log SET {erasure_assignments('audit_log')} WHERE actor_id = $1", user_id
    )
    rows = await conn.fetch(
        """DELETE FROM refresh_tokens WHERE user_id = $1
           RETURNING access_jti, extract(epoch FROM access_expires_at)::float8 AS exp""",
        user_id,
    )
    await audit(
        conn,
        "erasure",
        actor_id=user_id,
        target=str(user_id),
        details={"orders_anonymised": int(orders)},
    )
    return [(r["access_jti"], r["exp"]) for r in rows if r["access_jti"] and r["exp"]]


# ---------------------------------------------------------------------------------------------
# Service clients
# ---------------------------------------------------------------------------------------------


async def service_client(conn: Conn, client_id: str) -> Any:
    return await conn.fetchrow(
        "SELECT client_id, secret_hash, roles FROM service_clients"
        " WHERE client_id = $1 AND disabled_at IS NULL",
        client_id,
    )


async def create_service_client(
    conn: Conn, client_id: str, secret_hash: str, roles: list[str]
) -> None:
    await conn.execute(
        "INSERT INTO service_clients (client_id, secret_hash, roles) VALUES ($1, $2, $3)",
        client_id,
        secret_hash,
        roles,
    )


# ---------------------------------------------------------------------------------------------
# Multi-factor sign-in
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TotpRow:
    secret_sealed: bytes
    key_id: str
    active: bool
    last_step: int | None


async def totp_row(conn: Conn, user_id: UUID) -> TotpRow | None:
    """The user's TOTP enrolment (pending or active), or None."""
    row = await conn.fetchrow(
        """SELECT m.secret_sealed, m.key_id, m.activated_at IS NOT NULL AS active, m.last_step
           FROM mfa_totp m JOIN users u ON u.id = m.user_id AND u.erased_at IS NULL
           WHERE m.user_id = $1""",
        user_id,
    )
    if row is None:
        return None
    return TotpRow(bytes(row["secret_sealed"]), row["key_id"], row["active"], row["last_step"])


async def start_totp(conn: Conn, user_id: UUID, secret_sealed: bytes, key_id: str) -> bool:
    """A new pending enrolment, replacing a pending one; False (nothing changed) when the user
    already has an active one."""
    row = await conn.fetchval(
        """INSERT INTO mfa_totp (user_id, secret_sealed, key_id) VALUES ($1, $2, $3)
           ON CONFLICT (user_id) DO UPDATE
              SET secret_sealed = EXCLUDED.secret_sealed, key_id = EXCLUDED.key_id,
                  last_step = NULL, created_at = now()
              WHERE mfa_totp.activated_at IS NULL
           RETURNING 1""",
        user_id,
        secret_sealed,
        key_id,
    )
    return row is not None


async def activate_totp(
    conn: asyncpg.Connection,
    user_id: UUID,
    secret_sealed: bytes,
    step: int,
    recovery_hashes: list[bytes],
) -> bool:
    """Activate the pending enrolment whose sealed secret is ``secret_sealed`` (the one whose
    code was checked), record ``step`` as used, and replace the recovery codes; False when that
    enrolment is no longer pending (activated or replaced meanwhile). Call it in a transaction."""
    done = await conn.fetchval(
        """UPDATE mfa_totp SET activated_at = now(), last_step = $3
           WHERE user_id = $1 AND activated_at IS NULL AND secret_sealed = $2 RETURNING 1""",
        user_id,
        secret_sealed,
        step,
    )
    if done is None:
        return False
    await conn.execute("DELETE FROM mfa_recovery_codes WHERE user_id = $1", user_id)
    await conn.executemany(
        "INSERT INTO mfa_recovery_codes (user_id, code_hash) VALUES ($1, $2)",
        [(user_id, h) for h in recovery_hashes],
    )
    return True


async def claim_totp_step(conn: Conn, user_id: UUID, step: int) -> bool:
    """Record ``step`` as the last one used by an active enrolment, if it is later than the one
    recorded; False otherwise (the code was used already, or an earlier one).

    NOTE: one conditional UPDATE: of concurrent callers with the same step, the first takes the
    row lock and the others, re-checking the condition after it commits, find the step used.
    """
    row = await conn.fetchval(
        """UPDATE mfa_totp SET last_step = $2
           WHERE user_id = $1 AND activated_at IS NOT NULL
             AND (last_step IS NULL OR last_step < $2)
           RETURNING 1""",
        user_id,
        step,
    )
    return row is not None


async def use_recovery_code(conn: Conn, user_id: UUID, code_hash: bytes) -> bool:
    """Spend one unused recovery code of a user whose MFA is active; False when there is none
    with this hash (wrong, or used already). Atomic like :func:`claim_totp_step`."""
    row = await conn.fetchval(
        """UPDATE mfa_recovery_codes r SET used_at = now()
           WHERE r.user_id = $1 AND r.code_hash = $2 AND r.used_at IS NULL
             AND EXISTS (SELECT 1 FROM mfa_totp m
                         WHERE m.user_id = $1 AND m.activated_at IS NOT NULL)
           RETURNING 1""",
        user_id,
        code_hash,
    )
    return row is not None


async def remove_totp(conn: Conn, user_id: UUID) -> None:
    """MFA off: the enrolment and the recovery codes go."""
    await conn.execute("DELETE FROM mfa_recovery_codes WHERE user_id = $1", user_id)
    await conn.execute("DELETE FROM mfa_totp WHERE user_id = $1", user_id)


async def insert_challenge(conn: Conn, user_id: UUID, token_hash: bytes, ttl: int) -> None:
    """A new mfa_token (its hash) for ``user_id``; the user's spent and expired ones go."""
    await conn.execute(
        "DELETE FROM mfa_challenges WHERE user_id = $1 AND (used_at IS NOT NULL"
        " OR expires_at < now())",
        user_id,
    )
    await conn.execute(
        "INSERT INTO mfa_challenges (token_hash, user_id, expires_at)"
        " VALUES ($1, $2, now() + make_interval(secs => $3))",
        token_hash,
        user_id,
        float(ttl),
    )


async def challenge_user(conn: Conn, token_hash: bytes) -> UUID | None:
    """The user of a live (unused, unexpired) mfa_token, or None."""
    user_id: UUID | None = await conn.fetchval(
        """SELECT c.user_id FROM mfa_challenges c
           JOIN users u ON u.id = c.user_id AND u.erased_at IS NULL
           WHERE c.token_hash = $1 AND c.used_at IS NULL AND c.expires_at > now()""",
        token_hash,
    )
    return user_id


async def consume_challenge(conn: Conn, token_hash: bytes) -> tuple[UUID, list[str]] | None:
    """Spend a live mfa_token: its user and their roles, or None. In the caller's transaction:
    a concurrent caller with the same token waits for it, and finds the token spent if it
    commits (or live again if it rolls back)."""
    row = await conn.fetchrow(
        """WITH c AS (
               UPDATE mfa_challenges SET used_at = now()
               WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
               RETURNING user_id)
           SELECT u.id, u.roles FROM c JOIN users u ON u.id = c.user_id AND u.erased_at IS NULL""",
        token_hash,
    )
    return None if row is None else (row["id"], list(row["roles"]))
