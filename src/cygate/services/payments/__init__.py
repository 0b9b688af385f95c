"""Payments through an external processor (issue 7, part 4; ``docs/payments.md``)."""
