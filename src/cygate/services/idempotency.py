"""``Idempotency-Key`` for money-moving writes (``API.md``): one outcome per key, whatever retries.

Semantics (``docs/orders.md``):

- keys are scoped to the caller (``(user_id, key)`` is the primary key) and kept
  ``idempotency_ttl_seconds`` (24 h);
- the request is fingerprinted: SHA-256 of method, path and the *canonical* body (the decoded
  body re-encoded with sorted keys, so whitespace and key order do not matter; array order does);
- the first request claims the key with one atomic ``INSERT ... ON CONFLICT``: across processes
  exactly one wins. A second request with the same key gets the stored response replayed (same
  status and body, ``Idempotent-Replayed: true``) once it is done, 409 while it is in flight, and
  422 when its fingerprint differs;
- an outcome the handler decided (2xx, or a 4xx :class:`Problem` such as 409 insufficient stock)
  is stored; an exception or a 5xx releases the key, so a retry runs again;
- NOTE: the winner records its response with :meth:`Claim.complete` *on the connection of the
  transaction that makes the change*: the order and its idempotency record commit together or not
  at all. A process that dies before the commit leaves only the claim; after
  ``idempotency_in_flight_timeout`` a retry with the same fingerprint takes it over (a new claim
  token: the late first attempt, if it still runs, can no longer record anything and rolls back).

Use, for a handler whose change is one transaction::

    outcome = await state.idempotency.run(req, work)   # work(conn) -> StoredResponse
    return outcome.response()

or, when the change is one server-side call that can take the claim itself (order placement:
claim, change and record in one transaction, no claim ever left in flight)::

    outcome = await state.idempotency.run_claiming(req, work)   # work(conn, claim)

or, for a flow of several steps (payments)::

    got = await state.idempotency.claim(req)
    if isinstance(got, StoredResponse):
        return replay_response(got)
    async with got:                 # exception: released (5xx) or recorded (4xx Problem)
        ...
        async with pool.acquire() as conn, conn.transaction():
            ...
            await got.complete(conn, response)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, Final
from uuid import UUID

import msgspec
import orjson
from litestar import Response
from litestar.params import HeaderParameter

from cygate.edge.problem import PROBLEM_CONTENT_TYPE, Problem, problem_body
from cygate.ids import uuid7
from cygate.services.idempotency_settings import IdempotencySettings

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "CLAIM_LOST_SQLSTATE",
    "MAX_KEY_LENGTH",
    "REPLAYED_HEADER",
    "Claim",
    "ClaimLost",
    "Held",
    "Idempotency",
    "IdempotencyKeyHeader",
    "IdempotencySettings",
    "IdempotentRequest",
    "Outcome",
    "StoredResponse",
    "fingerprint",
    "parse_key",
    "replay_response",
]


log = logging.getLogger("cygate.idempotency")

IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(name="idempotency-key", description="1..255 visible ASCII characters"),
]
"""The handler parameter of a write that needs the header (checked by :func:`parse_key`)."""

MAX_KEY_LENGTH: Final = 255
CLAIM_LOST_SQLSTATE: Final = "CYG01"
"""What a server-side function that records a response on a claim raises when the claim was
taken over (``cygate_place_order``, migration 0007); its caller turns it into :class:`ClaimLost`."""
REPLAYED_HEADER: Final = "idempotent-replayed"

# The atomic claim (migration 0012): INSERT ... ON CONFLICT, and when another request holds the
# key, its row, in one statement (the order's transaction calls the same function).
_CLAIM: Final = """
SELECT won, held_state, held_hash, held_status, held_headers, held_body
  FROM cygate_claim_key($1, $2, $3, $4, $5, $6, $7, $8)"""
_COMPLETE: Final = """
UPDATE idempotency_keys
   SET state = 'done', response_status = $4, response_headers = $5, response_body = $6
 WHERE user_id = $1 AND key = $2 AND claim = $3 AND state = 'in_flight'"""
_RELEASE: Final = """
DELETE FROM idempotency_keys
 WHERE user_id = $1 AND key = $2 AND claim = $3 AND state = 'in_flight'"""
_PURGE: Final = """
DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))"""


class StoredResponse(msgspec.Struct, frozen=True):
    """A response as it is stored and replayed: status, body bytes, the headers worth keeping."""

    status: int
    body: bytes
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class Outcome(msgspec.Struct, frozen=True):
    """What :meth:`Idempotency.run` returns: the response, and whether it is a replay."""

    stored: StoredResponse
    replayed: bool

    def response(self) -> Response[bytes]:
        """The Litestar response (with ``Idempotent-Replayed: true`` for a replay)."""
        if self.replayed:
            return replay_response(self.stored)
        return _as_response(self.stored, {})


class ClaimLost(Exception):
    """The claim was taken over (it had been in flight too long); this attempt must roll back."""


class Held(Exception):
    """Another request holds the key: raised by a statement that claims the key in the
    transaction of its change (``cygate_claim_key`` inside it) and did not win. :meth:`answer`
    gives what the request gets instead; nothing was written."""

    def __init__(
        self,
        state: str | None,
        request_hash: bytes | None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> None:
        super().__init__(state)
        self.state = state
        """``done``, ``in_flight``, or None: the key changed hands five times in a row."""
        self.request_hash = request_hash
        """The holder's fingerprint; None when its claim is not committed yet (in flight)."""
        self.status = status
        self.headers = headers
        self.body = body

    @classmethod
    def of(cls, row: Any) -> Held:
        """From a row with the ``held_*`` columns of ``cygate_claim_key``."""
        digest = row["held_hash"]
        body = row["held_body"]
        return cls(
            row["held_state"],
            None if digest is None else bytes(digest),
            row["held_status"],
            row["held_headers"],
            None if body is None else bytes(body),
        )

    def answer(self, req: IdempotentRequest) -> StoredResponse:
        """The stored response to replay; :class:`Problem` 422 when the key was used with
        another fingerprint, 409 (``Retry-After: 1``) while its request is in flight or the key
        is changing hands."""
        if self.state is None:
            raise Problem(
                409, "this Idempotency-Key is changing hands; retry", headers={"retry-after": "1"}
            )
        if self.request_hash is not None and self.request_hash != req.fingerprint:
            raise Problem(
                422,
                "this Idempotency-Key was used with a different request",
                extra={
                    "errors": [
                        {
                            "field": "header.idempotency-key",
                            "message": "already used with another method, path or body",
                        }
                    ]
                },
            )
        if self.state == "in_flight":
            raise Problem(
                409,
                "a request with this Idempotency-Key is still in progress",
                headers={"retry-after": "1"},
            )
        assert self.status is not None and self.body is not None
        return StoredResponse(self.status, self.body, self.headers or {})


def _as_response(stored: StoredResponse, extra: dict[str, str]) -> Response[bytes]:
    headers = {k: v for k, v in stored.headers.items() if k != "content-type"}
    return Response(
        stored.body,
        status_code=stored.status,
        media_type=stored.headers.get("content-type", "application/json"),
        headers={**headers, **extra},
    )


def replay_response(stored: StoredResponse) -> Response[bytes]:
    """A stored response sent again, marked ``Idempotent-Replayed: true``."""
    return _as_response(stored, {REPLAYED_HEADER: "true", "cache-control": "private, no-store"})


def parse_key(raw: str | None) -> str:
    """The ``Idempotency-Key`` header value, checked: 400 when missing, empty, longer than 255
    characters, or not visible ASCII (it is echoed in logs and compared byte for byte)."""
    if raw is None:
        raise Problem(400, "this request needs an Idempotency-Key header")
    key = raw.strip()
    if not key:
        raise Problem(400, "the Idempotency-Key header is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise Problem(400, f"the Idempotency-Key header is longer than {MAX_KEY_LENGTH} characters")
    if not all("!" <= ch <= "~" for ch in key):
        raise Problem(400, "the Idempotency-Key header must be visible ASCII characters")
    return key


def fingerprint(method: str, path: str, body: Any) -> bytes:
    """SHA-256 of method, path and the canonical JSON of the decoded body."""
    canonical = orjson.dumps(msgspec.to_builtins(body), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(b"%s\0%s\0%s" % (method.encode(), path.encode(), canonical)).digest()


class IdempotentRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One request under a key: who, which key, its fingerprint, and how to name it in a problem
    document (``path`` is the ``instance``, ``request_id`` the request's id)."""

    user_id: UUID
    key: str
    method: str
    path: str
    fingerprint: bytes
    request_id: str = ""

    @classmethod
    def of(
        cls,
        *,
        user_id: UUID,
        key: str,
        method: str,
        path: str,
        body: Any,
        request_id: str = "",
    ) -> IdempotentRequest:
        """Build one, fingerprinting ``body`` (a msgspec Struct or plain data)."""
        return cls(
            user_id=user_id,
            key=key,
            method=method,
            path=path,
            fingerprint=fingerprint(method, path, body),
            request_id=request_id,
        )

    def problem(self, exc: Problem) -> StoredResponse:
        """A 4xx problem as it is stored (the bytes the exception handler sends too)."""
        body = problem_body(
            exc.status, exc.detail, instance=self.path, request_id=self.request_id, extra=exc.extra
        )
        return StoredResponse(
            exc.status, body, {**exc.headers, "content-type": PROBLEM_CONTENT_TYPE}
        )


class Claim:
    """This attempt holds the key. Record the outcome once (:meth:`complete` inside the change's
    transaction, or :meth:`record`), or :meth:`release` it; as an async context manager an
    exception releases it (or records a 4xx :class:`Problem`)."""

    __slots__ = ("_owner", "completed", "conn", "finished", "request", "token")

    def __init__(self, owner: Idempotency, request: IdempotentRequest, token: UUID) -> None:
        self._owner = owner
        self.request = request
        self.token = token
        self.conn: asyncpg.Connection | None = None
        """Set by :meth:`Idempotency.run` to the connection it holds, so a release never waits
        for a second pooled connection."""
        self.completed = False
        """complete() ran: the outcome commits with the caller's transaction (or rolls back)."""
        self.finished = False
        """The outcome is committed, or the claim released: nothing left to do."""

    def take(self) -> tuple[UUID, str, str, str, bytes, UUID, float, float]:
        """The parameters of ``cygate_claim_key`` (migration 0012) for this claim: user, key,
        method, path, fingerprint, token, TTL, in-flight timeout. For a statement that takes the
        claim in the transaction of its change (:meth:`Idempotency.run_claiming`)."""
        req = self.request
        return (
            req.user_id,
            req.key,
            req.method,
            req.path,
            req.fingerprint,
            self.token,
            self._owner.ttl,
            self._owner.in_flight_timeout,
        )

    async def complete(self, conn: asyncpg.Connection, response: StoredResponse) -> None:
        """Record ``response`` as the key's outcome in the caller's open transaction.

        Raises :class:`ClaimLost` when the claim was taken over; the caller's transaction must
        then roll back (raising out of ``conn.transaction()`` does that).
        """
        if not conn.is_in_transaction():
            raise RuntimeError("Claim.complete belongs in the transaction of the change")
        await self._store(conn, response)
        self.completed = True

    async def record(self, response: StoredResponse) -> None:
        """Record ``response`` on its own (an outcome with no change to commit with it)."""
        if self.conn is not None:
            await self._store(self.conn, response)
        else:
            async with self._owner.pool_().acquire() as conn:
                await self._store(conn, response)
        self.finished = True

    async def _store(self, conn: asyncpg.Connection, response: StoredResponse) -> None:
        req = self.request
        status = await conn.execute(
            _COMPLETE,
            req.user_id,
            req.key,
            self.token,
            response.status,
            response.headers,
            response.body,
        )
        if status != "UPDATE 1":
            raise ClaimLost(f"the claim of key {req.key!r} was taken over")

    async def release(self) -> None:
        """Forget the claim so a retry runs again. Never raises: when the database cannot be
        told, the claim frees itself after ``idempotency_in_flight_timeout``."""
        self.finished = True
        req = self.request
        try:
            if self.conn is not None:
                await self.conn.execute(_RELEASE, req.user_id, req.key, self.token)
            else:
                async with self._owner.pool_().acquire() as conn:
                    await conn.execute(_RELEASE, req.user_id, req.key, self.token)
        except Exception as exc:
            log.warning("could not release idempotency key (it frees itself later): %r", exc)

    async def __aenter__(self) -> Claim:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.finished or (exc is None and self.completed):
            return
        # NOTE: after an exception the transaction that ran complete() may have rolled back;
        # release() deletes only a claim still in flight, so it is right either way.
        if isinstance(exc, Problem) and exc.status < 500:
            try:
                await asyncio.shield(self.record(self.request.problem(exc)))
                return
            except ClaimLost:
                return
            except Exception as err:  # the refusal still goes out; a retry may run again
                log.warning("could not record a refusal under its idempotency key: %r", err)
        if exc is None:
            log.warning("idempotent handler ended without an outcome; key released")
        # NOTE: shielded: a cancelled request must still release its key.
        await asyncio.shield(self.release())


class Idempotency:
    """Claims keys in ``idempotency_keys``; the pool is attached when the app starts."""

    __slots__ = ("in_flight_timeout", "pool", "ttl")

    def __init__(self, *, ttl: float = 86400.0, in_flight_timeout: float = 60.0) -> None:
        self.pool: asyncpg.Pool | None = None
        self.ttl = ttl
        self.in_flight_timeout = in_flight_timeout

    @classmethod
    def from_settings(cls, settings: IdempotencySettings) -> Idempotency:
        return cls(ttl=float(settings.ttl_seconds), in_flight_timeout=settings.in_flight_timeout)

    def pool_(self) -> asyncpg.Pool:
        if self.pool is None:  # pragma: no cover - only before start-up completes
            raise RuntimeError("database pool not open")
        return self.pool

    async def claim(
        self, req: IdempotentRequest, conn: asyncpg.Connection | None = None
    ) -> Claim | StoredResponse:
        """Claim the key for ``req``: a :class:`Claim` when this request runs, the stored
        response when an earlier one finished; :class:`Problem` 409 (in flight, with
        ``Retry-After``) or 422 (another request used this key). ``conn``: a connection the
        caller holds (outside a transaction), else one from the pool."""
        if conn is None:
            async with self.pool_().acquire() as held:
                return await self.claim(req, held)
        if conn.is_in_transaction():
            raise RuntimeError("a claim must commit on its own: call it outside a transaction")
        token = uuid7()
        # NOTE: autocommit: the claim is visible to every other process at once (409).
        # PERF: measured against committing it with synchronous_commit=off (BEGIN, SET
        # LOCAL, INSERT, COMMIT): the extra round trips cost more CPU than the fsync
        # they save on this machine.
        row = await conn.fetchrow(
            _CLAIM,
            req.user_id,
            req.key,
            req.method,
            req.path,
            req.fingerprint,
            token,
            self.ttl,
            self.in_flight_timeout,
        )
        assert row is not None
        if row["won"]:
            return Claim(self, req, token)
        return Held.of(row).answer(req)

    async def run(
        self,
        req: IdempotentRequest,
        work: Callable[[asyncpg.Connection], Awaitable[StoredResponse]],
    ) -> Outcome:
        """Run ``work(conn)`` once per key, in one transaction that also records its response.

        ``work`` raises :class:`Problem` for a refusal: a 4xx is recorded (and re-raised), a 5xx
        or any other exception releases the key (and propagates).
        """

        async def then_complete(conn: asyncpg.Connection, claim: Claim) -> StoredResponse:
            response = await work(conn)
            await claim.complete(conn, response)
            return response

        return await self._run(req, then_complete)

    async def run_claiming(
        self,
        req: IdempotentRequest,
        work: Callable[[asyncpg.Connection, Claim], Awaitable[StoredResponse]],
    ) -> Outcome:
        """:meth:`run` for a ``work(conn, claim)`` whose first statement takes the claim itself
        (``cygate_claim_key`` with :meth:`Claim.take`, raising :class:`Held` when another
        request holds the key) and records its response on it, in the statement that makes
        the change: claim, change and record are one transaction.

        A 4xx :class:`Problem` ``work`` raises after its claim is recorded in that transaction
        (and re-raised); any other exception rolls back the transaction, claim included, so a
        retry runs again at once. The statement must not wait on a claim another transaction
        has not committed (``cygate_claim_place_order`` tries an advisory lock of the key).
        """
        refusal: Problem | None = None
        # PERF: one pooled connection, one transaction: BEGIN, the statement, COMMIT.
        async with self.pool_().acquire() as conn:
            claim = Claim(self, req, uuid7())
            claim.conn = conn
            try:
                # NOTE: BEGIN and COMMIT of our own: a process that dies before the COMMIT
                # never commits the change (nor the claim), whatever PostgreSQL was doing.
                async with conn.transaction():
                    try:
                        response = await work(conn, claim)
                    except Problem as exc:
                        if exc.status >= 500:
                            raise
                        await claim.complete(conn, req.problem(exc))
                        refusal = exc
            except Held as held:
                return Outcome(held.answer(req), replayed=True)
        if refusal is not None:
            raise refusal
        return Outcome(response, replayed=False)

    async def _run(
        self,
        req: IdempotentRequest,
        work: Callable[[asyncpg.Connection, Claim], Awaitable[StoredResponse]],
    ) -> Outcome:
        # PERF: one pooled connection for the claim and the transaction.
        async with self.pool_().acquire() as conn:
            got = await self.claim(req, conn)
            if isinstance(got, StoredResponse):
                return Outcome(got, replayed=True)
            got.conn = conn
            async with got:
                try:
                    # NOTE: BEGIN and COMMIT of our own: a process that dies before the COMMIT
                    # never commits the change, whatever PostgreSQL was doing for it.
                    async with conn.transaction():
                        response = await work(conn, got)
                except ClaimLost:
                    got.finished = True  # not ours to record or release any more
                    raise Problem(
                        409,
                        "this request took too long and a retry took it over",
                        headers={"retry-after": "1"},
                    ) from None
        return Outcome(response, replayed=False)

    async def purge_expired(self, limit: int = 1000) -> int:
        """Delete up to ``limit`` expired keys; returns how many."""
        status = await self.pool_().execute(_PURGE, limit)
        return int(status.split()[-1])
