"""Product search: PostgreSQL full-text search, typo correction by trigrams, keyset pages.

How a query runs (``docs/catalog.md`` has the measurements):

1. **Typo correction.** Each query word of 3+ letters that is not in the catalog's vocabulary
   (``search_words``, migration 0003) and is not an English stop word is replaced by the most
   similar known word (``pg_trgm``, similarity > 0.3, else > 0.18 in a second look):
   "wireles hedphones" becomes "wireless headphones", "bambo chiar" "bamboo chair". The page
   says so in ``corrected_query``.
2. **Full-text search** of the (corrected) query: ``websearch_to_tsquery('english', q)`` over
   ``products.search`` (name weight A, description B), ranked by ``ts_rank_cd``.
   PERF: a query that is one lexeme (one word, after stemming and stop words) reads the ranks
   stored in ``search_lexemes`` instead, in index order: the same ``ts_rank_cd`` values, but a
   page costs ``limit`` index entries instead of ranking every match (migration 0003).
3. **Trigram fallback.** When the full-text search finds nothing, products whose *name* is
   similar to the raw query (``name % q``, best ``similarity`` first). PERF: skipped when no
   word of the query is known or correctable (a name similar to the query would share a
   word with it); on a large catalog that scan is most of a no-hit search's cost.

Pages are keyset pages over ``(score, id)`` descending. The cursor carries the mode, the
effective query and the last score as ``float.hex`` (exact: the score is recomputed in SQL as
``float8`` and compared with ``=``/``<``, so a rounded decimal would skip or repeat rows), plus
a fingerprint of the request's query and filters (a cursor from another search is a 422).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import TYPE_CHECKING, Annotated, Any, Final
from uuid import UUID

import orjson
from litestar import Controller, get
from litestar.datastructures import State
from litestar.exceptions import ValidationException
from litestar.params import QueryParameter

from cygate.services.catalog.models import SearchHit, SearchPage
from cygate.services.catalog.repository import CursorError, add_filters

if TYPE_CHECKING:
    import asyncpg

    from cygate.infra.replicas import ReplicaSet

__all__ = ["SearchController", "SearchRepository"]

_COLUMNS: Final = (
    "p.id, p.sku, p.name, p.description, p.price_cents, p.currency, p.category_id, p.stock, "
    "p.updated_at"
)
_WORD = re.compile(r"[^\W_]+")
_FTS, _LEXEME, _TRGM = "f", "l", "t"
_LOOSE: Final = 0.18
"""Similarity a word gets corrected at when nothing reached pg_trgm's default 0.3."""
# One lexeme, or NULL: the tsquery's text form read back as a tsvector gives the lexeme exactly
# as the stored vectors spell it (same quoting rules).
_SHAPE: Final = """
SELECT CASE WHEN numnode(q) = 1 THEN (SELECT lexeme FROM unnest(q::text::tsvector) LIMIT 1) END
FROM websearch_to_tsquery('english', $1) AS q
"""

# Unknown words and their best known neighbour; stop words are left alone (the full-text
# parser drops them anyway, and "the" must not turn into "tent").
_CORRECT: Final = """
SELECT w, known, CASE WHEN NOT known AND numnode(plainto_tsquery('english', w)) > 0 THEN
           (SELECT s.word FROM search_words s WHERE s.word % w
            ORDER BY similarity(s.word, w) DESC, s.word LIMIT 1) END
FROM unnest($1::text[]) AS w,
     LATERAL (SELECT EXISTS (SELECT 1 FROM search_words s WHERE s.word = w) AS known) AS k
"""


def _fingerprint(q: str, filters: tuple[Any, ...]) -> str:
    raw = orjson.dumps([q, *(None if f is None else str(f) for f in filters)])
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def _encode_cursor(
    mode: str, fp: str, text: str, corrected: str | None, score: float, last_id: UUID
) -> str:
    raw = orjson.dumps([mode, fp, text, corrected, score.hex(), str(last_id)])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str, fp: str) -> tuple[str, str, str | None, float, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
        if not (isinstance(data, list) and len(data) == 6):
            raise ValueError("shape")
        mode, c_fp, text, corrected, score_hex, last_id = data
        if mode not in (_FTS, _LEXEME, _TRGM) or not isinstance(text, str) or len(text) > 400:
            raise ValueError("mode")
        if corrected is not None and (not isinstance(corrected, str) or len(corrected) > 400):
            raise ValueError("corrected")
        if c_fp != fp:
            raise CursorError("the cursor belongs to another search (q or filters differ)")
        score = float.fromhex(score_hex)
        if score != score or score in (float("inf"), float("-inf")):  # NaN, infinities
            raise ValueError("score")
        return mode, text, corrected, score, UUID(last_id)
    except CursorError:
        raise
    except (ValueError, TypeError, OverflowError, binascii.Error, orjson.JSONDecodeError):
        raise CursorError("malformed cursor") from None


class SearchRepository:
    """Runs searches on the app's pool (attached at start-up)."""

    __slots__ = ("pool", "replicas")

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None
        self.replicas: ReplicaSet | None = None
        """Read replicas, when configured: a search given ``replica=True`` may run on one."""

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:  # pragma: no cover - only before start-up completes
            raise RuntimeError("database pool not open")
        return self.pool

    async def search(
        self,
        q: str,
        *,
        limit: int,
        cursor: str | None,
        category: UUID | None = None,
        min_price: int | None = None,
        max_price: int | None = None,
        replica: bool = False,
    ) -> SearchPage:
        """One page of results; every statement of it on one pool (a replica's when
        ``replica`` allows it and :meth:`ReplicaSet.read` finds one that keeps up)."""
        filters = (category, min_price, max_price)
        primary = self._pool()
        if not replica or self.replicas is None:
            return await self._search(primary, q, limit, cursor, filters)
        return await self.replicas.read(
            lambda pool: self._search(pool, q, limit, cursor, filters),
            lambda: self._search(primary, q, limit, cursor, filters),
        )

    async def _search(
        self,
        pool: asyncpg.Pool,
        q: str,
        limit: int,
        cursor: str | None,
        filters: tuple[UUID | None, int | None, int | None],
    ) -> SearchPage:
        fp = _fingerprint(q, filters)
        if cursor is not None:
            mode, text, corrected, score, last_id = _decode_cursor(cursor, fp)
            return await self._page(
                pool, mode, text, filters, limit, (score, last_id), fp, corrected
            )
        text, corrected, hopeless = await self._corrected(pool, q)
        lexeme = await pool.fetchval(_SHAPE, text)
        if lexeme is not None:
            page = await self._page(pool, _LEXEME, lexeme, filters, limit, None, fp, corrected)
        else:
            page = await self._page(pool, _FTS, text, filters, limit, None, fp, corrected)
        if not page.items and not hopeless:
            page = await self._page(pool, _TRGM, q, filters, limit, None, fp, None)
        return page

    async def _corrected(self, pool: asyncpg.Pool, q: str) -> tuple[str, str | None, bool]:
        """The query with unknown words replaced by their nearest known word, and whether it
        is hopeless: no word of it is known or correctable (then even the trigram fallback is
        skipped: a name like the query would share a word with it)."""
        words = sorted({w for w in _WORD.findall(q.lower()) if 3 <= len(w) <= 64})
        if not words:
            return q, None, False
        rows = await pool.fetch(_CORRECT, words)
        known = any(r[1] for r in rows)
        fixes = {r[0]: r[2] for r in rows if r[2] is not None}
        left = [r[0] for r in rows if not r[1] and r[2] is None]
        if left:
            # NOTE: a second, looser look for words nothing resembled at 0.3: trigrams punish
            # swapped letters ("chiar" and "chair" share 2 of 10: 0.2). Rare, so the extra
            # round trips of a transaction (the threshold is a setting, local to it) are fine.
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL pg_trgm.similarity_threshold = {_LOOSE}")
                more = await conn.fetch(_CORRECT, left)
            fixes.update((r[0], r[2]) for r in more if r[2] is not None)
        if not fixes:
            return q, None, not known
        text = _WORD.sub(lambda m: fixes.get(m.group(0).lower(), m.group(0)), q)
        return text, text, False

    async def _page(
        self,
        pool: asyncpg.Pool,
        mode: str,
        text: str,
        filters: tuple[UUID | None, int | None, int | None],
        limit: int,
        after: tuple[float, UUID] | None,
        fp: str,
        corrected: str | None,
    ) -> SearchPage:
        table, order_id = "products p", "p.id"
        if mode == _LEXEME:
            # NOTE: rank compared as real (its column type) so the index serves the keyset.
            table = "search_lexemes l JOIN products p ON p.id = l.product_id"
            score, order_id = "l.rank", "l.product_id"
            where = ["l.lexeme = $1"]
        elif mode == _FTS:
            score = "ts_rank_cd(p.search, websearch_to_tsquery('english', $1))::float8"
            where = ["p.search @@ websearch_to_tsquery('english', $1)"]
        else:
            score = "similarity(p.name, $1)::float8"
            where = ["p.name % $1"]
        args: list[Any] = [text]
        add_filters(where, args, *filters, table="p.")
        if after is not None:
            args += list(after)
            kind = "real" if mode == _LEXEME else "float8"
            where.append(f"({score}, {order_id}) < (${len(args) - 1}::{kind}, ${len(args)}::uuid)")
        args.append(limit + 1)
        sql = (
            f"SELECT {_COLUMNS}, {score}::float8 AS score FROM {table} WHERE "
            + " AND ".join(where)
            + f" ORDER BY {score} DESC, {order_id} DESC LIMIT ${len(args)}"
        )
        rows = await pool.fetch(sql, *args)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            next_cursor = _encode_cursor(mode, fp, text, corrected, last["score"], last["id"])
        items = [SearchHit(*(r[i] for i in range(10))) for r in rows]
        return SearchPage(items, next_cursor, corrected)


class SearchController(Controller):
    path = "/api/v1"
    tags = ["catalog"]

    @get("/search", summary="Full-text product search, best match first", opt={"cache": "search"})
    async def search(
        self,
        state: State,
        q: Annotated[
            str, QueryParameter(min_length=1, max_length=200, description="What to look for")
        ],
        limit: Annotated[int, QueryParameter(ge=1, le=100, description="Page size")] = 20,
        cursor: Annotated[
            str | None,
            QueryParameter(max_length=1024, description="next_cursor of the previous page"),
        ] = None,
        category: Annotated[
            UUID | None, QueryParameter(description="Category id (its subtree too)")
        ] = None,
        min_price_cents: Annotated[int | None, QueryParameter(ge=0, le=10**12)] = None,
        max_price_cents: Annotated[int | None, QueryParameter(ge=0, le=10**12)] = None,
    ) -> SearchPage:
        problems = []
        if not q.strip():
            problems.append({"key": "q", "message": "must contain more than spaces"})
        # (NUL in any query parameter: the edge's 422, cygate.edge.body.query_nul_errors)
        if (
            min_price_cents is not None
            and max_price_cents is not None
            and min_price_cents > max_price_cents
        ):
            problems.append(
                {"key": "min_price_cents", "message": "must not exceed max_price_cents"}
            )
        if problems:
            raise ValidationException(
                "invalid search", extra=[{**p, "source": "query"} for p in problems]
            )
        repo: SearchRepository = state.search
        return await repo.search(
            q,
            limit=limit,
            cursor=cursor,
            category=category,
            min_price=min_price_cents,
            max_price=max_price_cents,
            replica=True,
        )
