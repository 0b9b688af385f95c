"""Migration 0003's search tables against the live ranking they stand in for, and the search
repository's cursor (real PostgreSQL; the test database of the session)."""

from __future__ import annotations

import math
import random
import uuid

import asyncpg
import pytest

from cygate.ids import uuid7
from cygate.services.catalog import search as search_mod
from cygate.services.catalog.repository import CursorError

pytestmark = pytest.mark.integration


async def _category(db: asyncpg.Connection) -> uuid.UUID:
    cid = uuid7()
    await db.execute(
        "INSERT INTO categories (id, name, slug) VALUES ($1, 'Index tests', $2)",
        cid,
        f"index-{cid.hex[:12]}",
    )
    return cid


async def _mismatches(db: asyncpg.Connection, ids: list[uuid.UUID]) -> int:
    """(lexeme, product) pairs where the stored rank differs from ts_rank_cd computed now, or
    is missing, or is left over."""
    value: int = await db.fetchval(
        """WITH live AS (
               SELECT u.lexeme, p.id, ts_rank_cd(p.search, quote_literal(u.lexeme)::tsquery) AS r
               FROM products p, unnest(p.search) u WHERE p.id = ANY($1::uuid[])),
           stored AS (SELECT lexeme, product_id AS id, rank AS r FROM search_lexemes
                      WHERE product_id = ANY($1::uuid[]))
           SELECT count(*) FROM (
               (SELECT * FROM live EXCEPT ALL SELECT * FROM stored)
               UNION ALL
               (SELECT * FROM stored EXCEPT ALL SELECT * FROM live)) d""",
        ids,
    )
    return value


async def test_stored_ranks_follow_every_write(db: asyncpg.Connection) -> None:
    cat = await _category(db)
    rows = [
        (uuid7(), f"IDX-{i}-{uuid.uuid4().hex[:6]}", name, desc, 100, cat, 5)
        for i, (name, desc) in enumerate(
            [
                ("Glimmerstone Lantern", "a lantern of glimmerstone, bright"),
                ("Lantern Lantern Lantern", "lantern"),
                ("Quiet Fan", "the quietest fan you will find: quiet, quiet"),
            ]
        )
    ]
    ids = [r[0] for r in rows]
    try:
        # COPY, as the seed does: the statement trigger covers it
        await db.copy_records_to_table(
            "products",
            records=rows,
            columns=["id", "sku", "name", "description", "price_cents", "category_id", "stock"],
        )
        assert (
            await db.fetchval(
                "SELECT count(*) FROM search_lexemes WHERE product_id = ANY($1::uuid[])", ids
            )
            > 0
        )
        assert await _mismatches(db, ids) == 0
        words = {r[0] for r in await db.fetch("SELECT word FROM search_words")}
        assert {"glimmerstone", "lantern", "quietest"} <= words

        await db.execute("UPDATE products SET name = 'Glowing Lantern' WHERE id = $1", ids[0])
        assert await _mismatches(db, ids) == 0
        assert await db.fetchval("SELECT 1 FROM search_words WHERE word = 'glowing'")

        # a stock change (orders) does not rewrite anything
        before = await db.fetch(
            "SELECT ctid FROM search_lexemes WHERE product_id = $1 ORDER BY ctid", ids[1]
        )
        await db.execute("UPDATE products SET stock = stock - 1 WHERE id = $1", ids[1])
        after = await db.fetch(
            "SELECT ctid FROM search_lexemes WHERE product_id = $1 ORDER BY ctid", ids[1]
        )
        assert before == after

        await db.execute("DELETE FROM products WHERE id = $1", ids[2])
        assert not await db.fetchval("SELECT 1 FROM search_lexemes WHERE product_id = $1", ids[2])
        assert await _mismatches(db, ids) == 0
    finally:
        await db.execute("DELETE FROM products WHERE id = ANY($1::uuid[])", ids)
        await db.execute("DELETE FROM categories WHERE id = $1", cat)


async def test_one_lexeme_ranks_match_the_live_ranking(db: asyncpg.Connection) -> None:
    """The stored rank is what ``ts_rank_cd`` gives the websearch query of that one word."""
    cat = await _category(db)
    pid = uuid7()
    try:
        await db.execute(
            "INSERT INTO products (id, sku, name, description, price_cents, category_id, stock)"
            " VALUES ($1, $2, 'Running Runners Run', 'ran running', 1, $3, 1)",
            pid,
            f"IDX-{pid.hex[:10]}",
            cat,
        )
        live = await db.fetchval(
            "SELECT ts_rank_cd(search, websearch_to_tsquery('english', 'running')) FROM products"
            " WHERE id = $1",
            pid,
        )
        stored = await db.fetchval(
            "SELECT rank FROM search_lexemes WHERE product_id = $1 AND lexeme = "
            "(SELECT lexeme FROM unnest(websearch_to_tsquery('english', 'running')::text"
            "::tsvector))",
            pid,
        )
        assert stored == live
    finally:
        await db.execute("DELETE FROM products WHERE id = $1", pid)
        await db.execute("DELETE FROM categories WHERE id = $1", cat)


def test_cursor_scores_round_trip_exactly() -> None:
    rng = random.Random(7)
    fp = search_mod._fingerprint("q", (None, None, None))
    values = [0.0, 1e-45, 0.1, 1 / 3, 0.985714316368103, math.nextafter(0.8, 1.0)]
    values += [rng.random() * 10 ** rng.randint(-30, 5) for _ in range(500)]
    for value in values:
        last = uuid7()
        cursor = search_mod._encode_cursor("f", fp, "q", None, value, last)
        assert search_mod._decode_cursor(cursor, fp) == ("f", "q", None, value, last)


@pytest.mark.parametrize(
    "cursor",
    ["", "=", "a" * 2000, "WyJmIl0", "bnVsbA", "W10"],  # WyJmIl0 = ["f"], bnVsbA = null, W10 = []
)
def test_malformed_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(CursorError):
        search_mod._decode_cursor(cursor, "0" * 16)
