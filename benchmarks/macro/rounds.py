"""Repeated rounds of one macro run (``--rounds N``): each round runs every contender once, in
the same order, and the ratios the issues' goals are stated in are taken within a round.

Why: the machine is shared and noisy. Req/s moves +-15-20 % between runs minutes apart, and a
ratio of two contenders measured back to back moves less, but one pair of runs still cannot
tell 0.68x from 0.72x. With N rounds, each ratio is measured N times under N states of the
machine; the report gives the median and the range, and the table shows, per contender, the
round whose req/s is its median (one real run, so its columns agree with each other).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from statistics import median
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Result

__all__ = ["Paired", "Rounds", "paired"]


@dataclass(frozen=True, slots=True)
class Paired:
    """One quantity measured in several rounds (a ratio, a difference)."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return median(self.values)

    def text(self, fmt: str, suffix: str = "") -> str:
        """``0.71x`` for one round; ``0.71x (0.66x to 0.74x, 5 rounds)`` for more."""
        mid = format(self.median, fmt) + suffix
        if len(self.values) < 2:
            return mid
        low, high = min(self.values), max(self.values)
        span = f"{format(low, fmt)}{suffix} to {format(high, fmt)}{suffix}"
        return f"{mid} ({span}, {len(self.values)} rounds)"


def paired(
    rounds: Sequence[dict[str, Result]],
    a: str,
    b: str,
    measure: Callable[[Result, Result], float],
) -> Paired | None:
    """``measure(result of a, result of b)`` in every round where both finished (None: in
    none). Rounds where one failed are left out rather than paired across rounds."""
    values = tuple(measure(r[a], r[b]) for r in rounds if a in r and b in r)
    values = tuple(v for v in values if v == v)  # NaN (nothing to divide by): no measurement
    return Paired(values) if values else None


class Rounds:
    """The results of every round, by contender name."""

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: list[dict[str, Result]] = []

    def start(self) -> None:
        """Begin the next round."""
        self.runs.append({})

    def add(self, result: Result) -> None:
        self.runs[-1][result.name] = result

    def __len__(self) -> int:
        return len(self.runs)

    def representatives(self, order: Sequence[str]) -> list[Result]:
        """Per contender (in ``order``), the round whose req/s is its median (the lower of the
        two middle rounds when their number is even), with every round's req/s attached."""
        chosen = []
        for name in order:
            runs = [r[name] for r in self.runs if name in r]
            if not runs:
                continue
            ranked = sorted(runs, key=lambda r: r.rps)
            middle = ranked[(len(ranked) - 1) // 2]
            chosen.append(replace(middle, rounds_rps=[r.rps for r in runs]))
        return chosen

    def each(self, name: str, measure: Callable[[Result], float]) -> Paired | None:
        """``measure(result)`` of one contender in every round it finished (None: in none)."""
        return paired(self.runs, name, name, lambda r, _: measure(r))

    def ratio(self, a: str, b: str) -> Paired | None:
        """req/s of ``a`` over req/s of ``b``, round by round."""
        return paired(self.runs, a, b, lambda x, y: x.rps / y.rps if y.rps else _NAN)


_NAN = float("nan")
