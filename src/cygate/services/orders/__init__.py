"""Orders (issue 7): placing with Idempotency-Key and atomic stock, reading, cancelling, shipping,
the state machine and the expiry sweeper. See ``docs/orders.md``.

For the payments service: :func:`mark_paid` (pending → paid with ``order.paid``, inside the
payment's own transaction) and :func:`lock_order`.
"""

from __future__ import annotations

from cygate.services.orders.store import lock_order, mark_paid

__all__ = ["lock_order", "mark_paid"]
