"""The privacy classification against the migrated schema and docs/privacy.md, the log
redaction, and the retention policies on seeded old data (dry run, then the real run)."""

from __future__ import annotations

import logging
import pathlib
import subprocess
import sys
import uuid
from typing import Any

import asyncpg
import pytest
from tests.conftest import REDIS_URL

from cygate.ids import uuid7
from cygate.infra.settings import DatabaseSettings, RedisSettings
from cygate.services.events.relay import Relay
from cygate.services.events.settings import EventsSettings
from cygate.services.events.stream import events_redis
from cygate.services.privacy.classification import CLASSES, CLASSIFICATION, markdown_table
from cygate.services.privacy.redaction import MASK, RedactionFilter, redact
from cygate.services.privacy.retention import POLICIES, run_retention
from cygate.services.privacy.settings import RetentionSettings

DOC = pathlib.Path(__file__).parents[2] / "docs" / "privacy.md"
_SUBJECT_COLUMNS = ("user_id", "actor_id")


async def _columns(db: asyncpg.Connection) -> dict[str, set[str]]:
    rows = await db.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema()"
    )
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["table_name"], set()).add(r["column_name"])
    return out


async def test_every_column_of_a_personal_data_table_is_classified(
    db: asyncpg.Connection,
) -> None:
    schema = await _columns(db)
    personal = {t for t, cols in schema.items() if cols & set(_SUBJECT_COLUMNS)} | {"users"}
    missing_tables = personal - set(CLASSIFICATION)
    assert not missing_tables, f"tables with personal data not classified: {missing_tables}"
    for table, spec in CLASSIFICATION.items():
        assert table in schema, f"classified table {table} is not in the schema"
        unclassified = schema[table] - set(spec.columns)
        assert not unclassified, f"{table}: columns not classified: {sorted(unclassified)}"
        gone = set(spec.columns) - schema[table]
        assert not gone, f"{table}: classified columns not in the schema: {sorted(gone)}"
        assert spec.subject in schema[table]
        for column in spec.columns.values():
            assert column.level in CLASSES and column.purpose


def test_the_documented_table_is_the_classification() -> None:
    text = DOC.read_text()
    start = text.index("<!-- classification:start -->") + len("<!-- classification:start -->")
    end = text.index("<!-- classification:end -->")
    assert text[start:end].strip() == markdown_table().strip(), (
        "docs/privacy.md is stale: paste markdown_table() of "
        "cygate.services.privacy.classification between the markers"
    )


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("login password=hunter2secret ok", "hunter2secret"),
        ('body {"password": "hunter2 secret", "email": "a@b.c"}', "hunter2 secret"),
        ("{'shipping_address': {'line1': '9 Hidden Rd', 'city': 'X'}} placed", "9 Hidden Rd"),
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("token eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl seen", "c2lnbmF0dXJl"),
        ("hash $argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA stored", "aGFzaA"),
        ("refresh_token=rt-123456 reused", "rt-123456"),
        ("mfa secret_sealed=b'\\x01\\x02' stored", "\\x01\\x02"),
    ],
)
def test_redaction_masks_restricted_values(line: str, secret: str) -> None:
    out = redact(line)
    assert secret not in out and MASK in out


def test_the_filter_redacts_arguments_of_a_record(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("cygate.test.privacy")
    handler_filter = RedactionFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        with caplog.at_level(logging.DEBUG, logger="cygate.test.privacy"):
            log.debug("user %s body %s", "u1", {"password": "pw-very-secret", "name": "N"})
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert "pw-very-secret" not in caplog.text and "'name': 'N'" in caplog.text


# --- retention --------------------------------------------------------------------------------

_OLD = "now() - interval '1000 days'"


async def _seed(db: asyncpg.Connection) -> dict[str, Any]:
    """One user with rows of each kind: old ones (past every retention) and fresh ones."""
    user = uuid7()
    await db.execute(
        "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'x')",
        user,
        f"ret-{uuid.uuid4().hex[:10]}@example.com",
    )
    marker = uuid.uuid4().hex
    for age in (_OLD, "now() + interval '1 hour'"):
        await db.execute(
            f"INSERT INTO audit_log (at, actor_id, action, target) VALUES ({age}, $1, 'test', $2)",
            user,
            marker,
        )
        await db.execute(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, issued_at,"
            f" expires_at, family_expires_at) VALUES ($1, $2, $1, $3, {age}, {age}, {age})",
            uuid7(),
            user,
            uuid.uuid4().bytes,
        )
        await db.execute(
            "INSERT INTO idempotency_keys (user_id, key, method, path, request_hash, created_at,"
            f" expires_at) VALUES ($1, $2, 'POST', '/x', '\\x00', {age}, {age})",
            user,
            uuid.uuid4().hex,
        )
        await db.execute(
            f"INSERT INTO mfa_challenges (token_hash, user_id, expires_at) VALUES ($1, $2, {age})",
            uuid.uuid4().bytes,
            user,
        )
        for status in ("shipped", "pending"):
            await db.execute(
                "INSERT INTO orders (id, user_id, status, total_cents, currency,"
                f" shipping_address, created_at, updated_at)"
                f" VALUES ($1, $2, $3, 100, 'EUR', '{{\"line1\": \"1 Old Rd\"}}', {age}, {age})",
                uuid7(),
                user,
                status,
            )
    return {"user": user, "marker": marker}


async def _state(db: asyncpg.Connection, user: uuid.UUID, marker: str) -> dict[str, int]:
    one = db.fetchval
    return {
        "audit_log": await one("SELECT count(*) FROM audit_log WHERE target = $1", marker),
        "refresh_tokens": await one("SELECT count(*) FROM refresh_tokens WHERE user_id = $1", user),
        "idempotency_keys": await one(
            "SELECT count(*) FROM idempotency_keys WHERE user_id = $1", user
        ),
        "mfa_challenges": await one("SELECT count(*) FROM mfa_challenges WHERE user_id = $1", user),
        "order_addresses": await one(
            "SELECT count(*) FROM orders WHERE user_id = $1 AND shipping_address IS NOT NULL", user
        ),
    }


async def test_retention_dry_run_counts_and_the_run_changes_exactly_those(
    db: asyncpg.Connection,
) -> None:
    seeded = await _seed(db)
    settings = RetentionSettings()
    before = await _state(db, seeded["user"], seeded["marker"])
    assert before == {
        "audit_log": 2,
        "refresh_tokens": 2,
        "idempotency_keys": 2,
        "mfa_challenges": 2,
        "order_addresses": 4,
    }
    dry = await run_retention(db, settings, dry_run=True)
    assert list(dry) == [p.name for p in POLICIES]
    assert await _state(db, seeded["user"], seeded["marker"]) == before
    # other tests' rows may be due too; this test's old rows are among those counted
    assert all(n >= 1 for n in dry.values()), dry
    done = await run_retention(db, settings, dry_run=False)
    after = await _state(db, seeded["user"], seeded["marker"])
    # the old row of each kind went; the fresh ones and the open (pending) order stayed
    assert after == {k: v - 1 for k, v in before.items()}
    assert done == dry
    kept = await db.fetch(
        "SELECT status FROM orders WHERE user_id = $1 AND shipping_address IS NULL",
        seeded["user"],
    )
    assert [r["status"] for r in kept] == ["shipped"]


def test_the_cli_dry_run_reports_each_policy(gateway_env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cygate", "retention", "--dry-run"],
        env={**gateway_env, "CYGATE_RETENTION_AUDIT_DAYS": "3650"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [p.name for p in POLICIES]
    assert all(" would change " in line for line in lines)


async def test_the_relay_applies_retention_at_its_clean_up_when_told(
    db: asyncpg.Connection, test_db_dsn: str, redis_prefix: str
) -> None:
    seeded = await _seed(db)
    before = await _state(db, seeded["user"], seeded["marker"])
    events = EventsSettings()
    handle = events_redis(events, RedisSettings(url=REDIS_URL, prefix=redis_prefix))
    try:
        off = Relay(events, handle, database=DatabaseSettings(url=test_db_dsn),
                    retention=RetentionSettings())  # fmt: skip
        await off.cleanup(db)
        assert await _state(db, seeded["user"], seeded["marker"]) == before
        on = Relay(events, handle, database=DatabaseSettings(url=test_db_dsn),
                   retention=RetentionSettings(in_relay=True))  # fmt: skip
        await on.cleanup(db)
    finally:
        await handle.close()
    assert await _state(db, seeded["user"], seeded["marker"]) == {
        k: v - 1 for k, v in before.items()
    }
