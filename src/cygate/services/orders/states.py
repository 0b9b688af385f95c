"""The order state machine: the only transitions an order may take.

```
pending ──► paid ──► shipped
   │
   ├──► cancelled   (owner or admin; stock released)
   └──► expired     (unpaid after order_ttl_seconds; stock released)
```
``cancelled``, ``expired`` and ``shipped`` are terminal. Every transition happens under the
order's row lock (``SELECT ... FOR UPDATE``) and writes its outbox event in the same transaction.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "RELEASES_STOCK",
    "STATUSES",
    "TRANSITIONS",
    "IllegalTransition",
    "Status",
    "can",
    "check",
]

Status = Literal["pending", "paid", "cancelled", "shipped", "expired"]
STATUSES: Final = ("pending", "paid", "cancelled", "shipped", "expired")

TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "pending": frozenset({"paid", "cancelled", "expired"}),
    "paid": frozenset({"shipped"}),
    "cancelled": frozenset(),
    "shipped": frozenset(),
    "expired": frozenset(),
}
RELEASES_STOCK: Final = frozenset({"cancelled", "expired"})
"""Entering one of these gives the order's reserved stock back."""


class IllegalTransition(ValueError):
    """``current`` → ``target`` is not an edge of the state machine."""

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"an order that is {current} cannot become {target}")
        self.current = current
        self.target = target


def can(current: str, target: str) -> bool:
    """True when ``current`` → ``target`` is a legal transition."""
    return target in TRANSITIONS.get(current, frozenset())


def check(current: str, target: str) -> None:
    """Raise :class:`IllegalTransition` unless ``current`` → ``target`` is legal."""
    if not can(current, target):
        raise IllegalTransition(current, target)
