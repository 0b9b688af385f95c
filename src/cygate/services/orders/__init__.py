"""Orders: placing with Idempotency-Key and atomic stock, reading, cancelling, shipping, the
state machine and the expiry sweeper. See ``docs/orders.md``.

For the payments service: :func:`mark_paid` (pending → paid with ``order.paid``, inside the
payment's own transaction) and :func:`lock_order`. They are imported on first use, so that
reading the orders' settings (``cygate.services.orders.settings``) loads no web framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cygate.services.orders.store import lock_order, mark_paid

__all__ = ["lock_order", "mark_paid"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cygate.services.orders import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
