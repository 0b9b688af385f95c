"""Demo data: a category tree, products with stock, and customers, loaded with COPY.

Customers share one password, generated per run and printed once: credentials are never fixed
in code. Seeded customers' emails end in ``@seed.example.com`` so ``--reset`` can remove them
without touching accounts that people registered.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from argon2 import PasswordHasher

from cygate.ids import uuid7

if TYPE_CHECKING:
    import asyncpg

__all__ = ["SEED_EMAIL_DOMAIN", "SeedReport", "seed"]

SEED_EMAIL_DOMAIN = "seed.example.com"

_ADJECTIVES = (
    "Compact", "Rugged", "Wireless", "Ergonomic", "Vintage", "Smart", "Portable", "Premium",
    "Classic", "Organic", "Handmade", "Durable", "Silent", "Modular", "Foldable", "Heated",
)  # fmt: skip
_MATERIALS = (
    "Steel", "Bamboo", "Leather", "Ceramic", "Carbon", "Cotton", "Walnut", "Glass", "Titanium",
    "Wool", "Copper", "Linen",
)  # fmt: skip
_NOUNS = (
    "Keyboard", "Backpack", "Kettle", "Headphones", "Lamp", "Chair", "Notebook", "Bottle",
    "Jacket", "Speaker", "Watch", "Blender", "Tent", "Monitor", "Sneakers", "Drill", "Camera",
    "Mug", "Desk", "Router",
)  # fmt: skip
_DEPARTMENTS = (
    "Electronics", "Home", "Kitchen", "Outdoor", "Fashion", "Office", "Sports", "Tools",
    "Garden", "Toys", "Books", "Music", "Health", "Beauty", "Automotive", "Pets",
)  # fmt: skip
_PHRASES = (
    "built to last", "designed for everyday use", "with a two-year warranty",
    "loved by professionals", "easy to clean", "energy efficient", "lightweight and strong",
    "made from recycled materials", "ships in recyclable packaging", "tested in extreme weather",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SeedReport:
    categories: int
    products: int
    users: int
    password: str | None
    emails: tuple[str, ...]
    seconds: float


async def catalog_is_empty(conn: asyncpg.Connection) -> bool:
    return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM products)")


async def reset(conn: asyncpg.Connection) -> None:
    """Remove the catalog and the seeded customers (never other accounts)."""
    async with conn.transaction():
        await conn.execute("TRUNCATE order_items, payments, payment_events, orders CASCADE")
        await conn.execute("TRUNCATE products, categories CASCADE")
        await conn.execute("DELETE FROM users WHERE email LIKE $1", f"%@{SEED_EMAIL_DOMAIN}")


async def seed(
    conn: asyncpg.Connection,
    *,
    categories: int,
    products: int,
    users: int,
    rng_seed: int | None = None,
) -> SeedReport:
    """Insert the demo data in one transaction (all or nothing)."""
    started = time.perf_counter()
    rng = random.Random(rng_seed)
    now = datetime.now(UTC)
    password = None
    emails: list[str] = []
    async with conn.transaction():
        cat_rows = _categories(rng, categories, now)
        if cat_rows:
            await conn.copy_records_to_table(
                "categories",
                records=cat_rows,
                columns=["id", "parent_id", "name", "slug", "created_at", "updated_at"],
            )
        cat_ids = [r[0] for r in cat_rows]
        if products and cat_ids:
            await conn.copy_records_to_table(
                "products",
                records=_products(rng, products, cat_ids, now),
                columns=[
                    "id", "sku", "name", "description", "price_cents", "currency",
                    "category_id", "stock", "created_at", "updated_at",
                ],
            )  # fmt: skip
        if users:
            password = secrets.token_urlsafe(12)
            # PERF: one Argon2id hash shared by every seeded customer; hashing each would
            # take tens of milliseconds per account.
            hashed = PasswordHasher().hash(password)
            tag = secrets.token_hex(3)
            emails = [f"customer{i}-{tag}@{SEED_EMAIL_DOMAIN}" for i in range(1, users + 1)]
            await conn.copy_records_to_table(
                "users",
                records=[
                    (uuid7(), email, hashed, f"Customer {i}", ["customer"], now, now)
                    for i, email in enumerate(emails, 1)
                ],
                columns=[
                    "id", "email", "password_hash", "name", "roles", "created_at", "updated_at",
                ],
            )  # fmt: skip
    return SeedReport(
        len(cat_rows),
        products if cat_ids else 0,
        users,
        password,
        tuple(emails),
        time.perf_counter() - started,
    )


def _categories(rng: random.Random, count: int, now: datetime) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    roots: list[object] = []
    suffix = secrets.token_hex(2)
    for i in range(count):
        dept = _DEPARTMENTS[i % len(_DEPARTMENTS)]
        cid = uuid7()
        # A two-level tree: roughly one root in five, the rest under a random root.
        if not roots or i % 5 == 0:
            parent = None
            name = dept if i < len(_DEPARTMENTS) else f"{dept} {i}"
            roots.append(cid)
        else:
            parent = rng.choice(roots)
            name = f"{rng.choice(_ADJECTIVES)} {dept}"
        slug = f"{name.lower().replace(' ', '-')}-{suffix}-{i}"
        rows.append((cid, parent, name, slug, now, now))
    return rows


def _products(
    rng: random.Random, count: int, cat_ids: list[object], now: datetime
) -> list[tuple[object, ...]]:
    batch = secrets.token_hex(3).upper()
    out: list[tuple[object, ...]] = []
    for i in range(count):
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_MATERIALS)} {rng.choice(_NOUNS)}"
        first, second = rng.sample(_PHRASES, 2)
        desc = f"A {name.lower()}, {first} and {second}."
        out.append(
            (
                uuid7(), f"SKU-{batch}-{i:07d}", name, desc, rng.randrange(99, 250_000),
                "EUR", rng.choice(cat_ids), rng.randrange(0, 500), now, now,
            )
        )  # fmt: skip
    return out
