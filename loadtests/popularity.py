"""Popularity for the load: Zipf-distributed draws, and search queries made from the catalog.

No locust here (it patches the standard library when imported), so the tests import it as it is.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from typing import Generic, TypeVar

__all__ = ["Zipf", "queries_from_names"]

T = TypeVar("T")


class Zipf(Generic[T]):
    """Items drawn with probability proportional to ``1 / rank**s``; the ranks are a shuffle
    of the sorted items with a fixed seed (the same on every load process)."""

    def __init__(self, items: Sequence[T], s: float = 1.0, seed: int = 0) -> None:
        if not items:
            raise ValueError("Zipf needs at least one item")
        ranked = sorted(items)  # type: ignore[type-var]
        random.Random(seed).shuffle(ranked)
        self.items: list[T] = ranked
        total = 0.0
        self.cum: list[float] = []
        for rank in range(1, len(ranked) + 1):
            total += rank**-s
            self.cum.append(total)

    def draw(self, rng: random.Random | None = None) -> T:
        x = (rng or random).random() * self.cum[-1]
        return self.items[min(bisect.bisect_right(self.cum, x), len(self.items) - 1)]

    def share_of_top(self, n: int) -> float:
        """The probability that a draw is one of the ``n`` most popular items."""
        return self.cum[min(n, len(self.cum)) - 1] / self.cum[-1]


def queries_from_names(names: Sequence[str]) -> list[str]:
    """Search queries from product names: each word, and each word with the last one (the
    noun): ``Compact Steel Kettle`` gives kettle, compact, steel, compact kettle, steel kettle."""
    found: set[str] = set()
    for name in names:
        words = name.lower().split()
        found.update(words)
        found.update(f"{w} {words[-1]}" for w in words[:-1])
    return sorted(found)
