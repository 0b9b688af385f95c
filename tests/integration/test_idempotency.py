"""Idempotency-Key claims on a real PostgreSQL: one winner, replay, conflicts, release, takeover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from tests.store_helpers import app_pool

from cygate.edge.problem import Problem
from cygate.ids import uuid7
from cygate.services.idempotency import (
    Claim,
    Idempotency,
    IdempotentRequest,
    StoredResponse,
    fingerprint,
    parse_key,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(test_db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with app_pool(test_db_dsn, max_size=60) as pool:  # room for 50 claims at once
        yield pool


@pytest.fixture
async def idem(pool: asyncpg.Pool) -> Idempotency:
    store = Idempotency(ttl=3600, in_flight_timeout=30)
    store.pool = pool
    return store


@pytest.fixture
async def user(pool: asyncpg.Pool) -> object:
    uid = uuid7()
    await pool.execute(
        "INSERT INTO users (id, email, name) VALUES ($1, $2, 'idem')", uid, f"{uid}@example.test"
    )
    return uid


def req(user: object, key: str = "k-1", body: object = None, path: str = "/x") -> IdempotentRequest:
    return IdempotentRequest.of(
        user_id=user,  # type: ignore[arg-type]
        key=key,
        method="POST",
        path=path,
        body=body if body is not None else {"a": 1},
    )


async def _marker_count(pool: asyncpg.Pool, key: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = $1", key))


def _work(key: str, status: int = 201) -> object:
    """A change (an audit row stands in for an order) and its response."""

    async def work(conn: asyncpg.Connection) -> StoredResponse:
        await conn.execute("INSERT INTO audit_log (action) VALUES ($1)", key)
        return StoredResponse(status, b'{"made":true}', {"content-type": "application/json"})

    return work


def test_parse_key_refuses_missing_empty_long_and_odd_keys() -> None:
    assert parse_key(" abc-123 ") == "abc-123"
    assert parse_key("x" * 255) == "x" * 255
    for bad in (None, "", "   ", "x" * 256, "has space", "tab\there", "é"):
        with pytest.raises(Problem) as err:
            parse_key(bad)
        assert err.value.status == 400


def test_fingerprint_is_canonical_json_and_covers_method_and_path() -> None:
    a = fingerprint("POST", "/o", {"b": [1, 2], "a": {"y": 1, "x": 2}})
    assert a == fingerprint("POST", "/o", {"a": {"x": 2, "y": 1}, "b": [1, 2]})
    assert a != fingerprint("POST", "/o", {"a": {"x": 2, "y": 1}, "b": [2, 1]})
    assert a != fingerprint("PUT", "/o", {"a": {"x": 2, "y": 1}, "b": [1, 2]})
    assert a != fingerprint("POST", "/p", {"a": {"x": 2, "y": 1}, "b": [1, 2]})


async def test_same_key_same_body_runs_once_then_replays(
    idem: Idempotency, pool: asyncpg.Pool, user: object
) -> None:
    marker = f"m-{uuid7()}"
    first = await idem.run(req(user), _work(marker))  # type: ignore[arg-type]
    again = await idem.run(req(user), _work(marker))  # type: ignore[arg-type]
    assert not first.replayed and again.replayed
    assert again.stored == first.stored
    assert again.response().headers["idempotent-replayed"] == "true"
    assert await _marker_count(pool, marker) == 1


async def test_same_key_other_body_or_path_is_422(idem: Idempotency, user: object) -> None:
    await idem.run(req(user, "k-2"), _work("w"))  # type: ignore[arg-type]
    for other in (req(user, "k-2", body={"a": 2}), req(user, "k-2", path="/y")):
        with pytest.raises(Problem) as err:
            await idem.run(other, _work("w"))  # type: ignore[arg-type]
        assert err.value.status == 422


async def test_keys_are_scoped_to_the_user(
    idem: Idempotency, pool: asyncpg.Pool, user: object
) -> None:
    other = uuid7()
    await pool.execute("INSERT INTO users (id, email) VALUES ($1, $2)", other, f"{other}@e.test")
    marker = f"m-{uuid7()}"
    a = await idem.run(req(user, "shared"), _work(marker))  # type: ignore[arg-type]
    b = await idem.run(req(other, "shared", body={"z": 1}), _work(marker))  # type: ignore[arg-type]
    assert not a.replayed and not b.replayed
    assert await _marker_count(pool, marker) == 2


async def test_in_flight_is_409_with_retry_after(idem: Idempotency, user: object) -> None:
    started, go = asyncio.Event(), asyncio.Event()

    async def slow(conn: asyncpg.Connection) -> StoredResponse:
        started.set()
        await go.wait()
        return StoredResponse(201, b"{}", {})

    first = asyncio.create_task(idem.run(req(user, "k-3"), slow))
    await started.wait()
    with pytest.raises(Problem) as err:
        await idem.run(req(user, "k-3"), slow)
    assert err.value.status == 409 and err.value.headers["retry-after"] == "1"
    go.set()
    assert (await first).stored.status == 201


async def test_failure_releases_the_key_and_rolls_back(
    idem: Idempotency, pool: asyncpg.Pool, user: object
) -> None:
    marker = f"m-{uuid7()}"

    async def boom(conn: asyncpg.Connection) -> StoredResponse:
        await conn.execute("INSERT INTO audit_log (action) VALUES ($1)", marker)
        raise RuntimeError("processor fell over")

    with pytest.raises(RuntimeError):
        await idem.run(req(user, "k-4"), boom)
    assert await _marker_count(pool, marker) == 0  # the change rolled back
    row = await pool.fetchrow("SELECT 1 FROM idempotency_keys WHERE key = 'k-4'")
    assert row is None  # released
    retry = await idem.run(req(user, "k-4"), _work(marker))  # type: ignore[arg-type]
    assert retry.stored.status == 201 and not retry.replayed
    assert await _marker_count(pool, marker) == 1


async def test_5xx_problem_releases_4xx_problem_is_recorded(
    idem: Idempotency, user: object
) -> None:
    async def unavailable(conn: asyncpg.Connection) -> StoredResponse:
        raise Problem(503, "later")

    async def refused(conn: asyncpg.Connection) -> StoredResponse:
        raise Problem(409, "insufficient stock", extra={"items": []})

    with pytest.raises(Problem):
        await idem.run(req(user, "k-5"), unavailable)
    with pytest.raises(Problem) as err:
        await idem.run(req(user, "k-5"), refused)  # the key was free again: this one runs
    assert err.value.status == 409
    replay = await idem.run(req(user, "k-5"), _work("never"))  # type: ignore[arg-type]
    assert replay.replayed and replay.stored.status == 409
    assert b"insufficient stock" in replay.stored.body
    assert replay.stored.headers["content-type"] == "application/problem+json"


async def test_response_is_recorded_in_the_change_transaction(
    idem: Idempotency, pool: asyncpg.Pool, user: object
) -> None:
    """A failure after complete() (still inside the transaction) leaves neither the change nor
    a done record: both commit together or not at all."""
    marker = f"m-{uuid7()}"
    got = await idem.claim(req(user, "k-6"))
    assert isinstance(got, Claim)
    with pytest.raises(RuntimeError):
        async with got, pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO audit_log (action) VALUES ($1)", marker)
            await got.complete(conn, StoredResponse(201, b"{}", {}))
            raise RuntimeError("crash before commit")
    assert await _marker_count(pool, marker) == 0
    # complete() was rolled back with the change, and the key released: a retry runs.
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'k-6'") == 0
    retry = await idem.run(req(user, "k-6"), _work(marker))  # type: ignore[arg-type]
    assert retry.stored.status == 201 and not retry.replayed
    assert await _marker_count(pool, marker) == 1


async def test_a_stale_claim_is_taken_over_and_the_late_attempt_cannot_record(
    idem: Idempotency, pool: asyncpg.Pool, user: object
) -> None:
    stale = await idem.claim(req(user, "k-7"))
    assert isinstance(stale, Claim)
    with pytest.raises(Problem):  # fresh: in flight
        await idem.claim(req(user, "k-7"))
    await pool.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '1 hour' WHERE key = 'k-7'"
    )
    with pytest.raises(Problem) as err:  # stale, but another body: still not its key
        await idem.claim(req(user, "k-7", body={"other": True}))
    assert err.value.status == 422
    marker = f"m-{uuid7()}"
    taken = await idem.run(req(user, "k-7"), _work(marker))  # type: ignore[arg-type]
    assert taken.stored.status == 201 and not taken.replayed
    from cygate.services.idempotency import ClaimLost

    with pytest.raises(ClaimLost):
        async with pool.acquire() as conn, conn.transaction():
            await stale.complete(conn, StoredResponse(500, b"late", {}))
    again = await idem.run(req(user, "k-7"), _work(marker))  # type: ignore[arg-type]
    assert again.replayed and again.stored.body == b'{"made":true}'


async def test_expired_keys_are_reusable_and_purged(
    idem: Idempotency, pool: asyncpg.Pool, user: object
) -> None:
    await idem.run(req(user, "k-8"), _work("x"))  # type: ignore[arg-type]
    await pool.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'k-8'"
    )
    fresh = await idem.run(req(user, "k-8", body={"new": 1}), _work("y"))  # type: ignore[arg-type]
    assert not fresh.replayed
    await pool.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'k-8'"
    )
    assert await idem.purge_expired() >= 1
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'k-8'") == 0


async def test_concurrent_claims_have_exactly_one_winner(
    idem: Idempotency, pool: asyncpg.Pool, user: object
) -> None:
    marker = f"m-{uuid7()}"

    async def one() -> str:
        try:
            out = await idem.run(req(user, "k-9"), _work(marker))  # type: ignore[arg-type]
        except Problem as exc:
            return str(exc.status)
        return "replay" if out.replayed else "won"

    results = await asyncio.gather(*(one() for _ in range(50)))
    assert results.count("won") == 1, results
    assert set(results) <= {"won", "replay", "409"}
    assert await _marker_count(pool, marker) == 1
