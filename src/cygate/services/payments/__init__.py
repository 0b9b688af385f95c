"""Payments through an external processor (``docs/payments.md``)."""
