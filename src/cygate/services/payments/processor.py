"""The gateway's side of the payment processor: charge and look up, under a deadline and a
circuit breaker, with every answer sorted into what it means for the money.

The processor's protocol is the simulator's (``cygate.simulator.processor``): ``POST
/v1/charges`` with an ``Idempotency-Key``, ``GET /v1/charges/{key}`` for reconciliation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from cygate.infra.metrics import Metrics
from cygate.services.payments.http import CallFailed, CallTimeout, JsonClient
from cygate.upstream.resilience import CircuitBreaker

__all__ = ["Charge", "CircuitOpen", "ProcessorClient", "ProcessorUnavailable"]

_NAME = "payment-processor"

Verdict = Literal["captured", "declined", "not_charged", "unknown"]


@dataclass(frozen=True, slots=True)
class Charge:
    """What the processor said about one idempotency key.

    ``verdict``: ``captured`` / ``declined`` (its word), ``not_charged`` (it said so, or the
    request never left: a new attempt is safe), ``unknown`` (it may or may not have charged:
    only a later look-up can tell).
    """

    verdict: Verdict
    ref: str | None = None
    reason: str = ""


class ProcessorUnavailable(Exception):
    """The processor cannot be asked now (circuit open); ``retry_after`` in seconds."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class CircuitOpen(ProcessorUnavailable):
    """The breaker is open: no call was made."""


class ProcessorClient:
    """Calls to one processor base URL. One breaker per worker process (like the upstreams')."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        breaker: CircuitBreaker,
        metrics: Metrics | None = None,
    ) -> None:
        self.timeout = timeout
        self.breaker = breaker
        self._http = JsonClient(base_url, name="processor")
        self._metrics = metrics

    def admit(self) -> None:
        """Take the breaker's permission for one charge, or raise :class:`CircuitOpen`.

        An admitted caller must end with :meth:`charge` or :meth:`release`.
        """
        if not self.breaker.allow():
            raise CircuitOpen("payment processor circuit is open", self.breaker.retry_after())

    def release(self) -> None:
        """An admitted charge was not attempted after all (the order was not payable)."""
        self.breaker.release()

    async def charge(
        self, key: str, *, amount_cents: int, currency: str, token: str, reference: str
    ) -> Charge:
        """One charge (already admitted). Never raises for the processor's failures: they come
        back as a verdict, and count against the breaker."""
        started = time.perf_counter()
        body = {
            "amount_cents": amount_cents,
            "currency": currency,
            "payment_method_token": token,
            "reference": reference,
        }
        try:
            answer = await self._http.request(
                "POST", "/v1/charges", json=body, headers={"idempotency-key": key},
                timeout=self.timeout,
            )  # fmt: skip
        except CallTimeout as exc:
            verdict: Verdict = "unknown" if exc.sent else "not_charged"
            return self._done(started, Charge(verdict, reason="timeout"), "timeout")
        except CallFailed as exc:
            verdict = "unknown" if exc.sent else "not_charged"
            label = "reset_error" if exc.sent else "connect_error"
            return self._done(started, Charge(verdict, reason=str(exc)), label)
        doc = answer.body if isinstance(answer.body, dict) else {}
        if answer.status in (200, 201) and doc.get("status") in ("captured", "declined"):
            return self._done(started, Charge(doc["status"], ref=doc.get("id")), "ok")
        if answer.status >= 500:
            verdict = "not_charged" if doc.get("charged") is False else "unknown"
            charge = Charge(verdict, reason=f"HTTP {answer.status}")
            return self._done(started, charge, str(answer.status))
        # NOTE: any other answer (a 4xx) is our mistake, not the processor's outage: it does not
        # open the circuit, and the money state is unknown until a look-up says otherwise.
        return self._done(started, Charge("unknown", reason=f"HTTP {answer.status}"), "ok")

    async def lookup(self, key: str) -> Charge:
        """Reconciliation: what the processor has under ``key``; ``not_charged`` when it has
        nothing. Raises :class:`CallFailed` when it cannot be asked (not counted by the breaker:
        the sweep must not keep customers out)."""
        answer = await self._http.request("GET", f"/v1/charges/{key}", timeout=self.timeout)
        doc = answer.body if isinstance(answer.body, dict) else {}
        if answer.status == 200 and doc.get("status") in ("captured", "declined"):
            return Charge(doc["status"], ref=doc.get("id"))
        if answer.status == 404:
            return Charge("not_charged", reason="no record")
        raise CallFailed(f"look-up answered HTTP {answer.status}", sent=True)

    def _done(self, started: float, charge: Charge, outcome: str) -> Charge:
        """Record the call: ``outcome`` is ``ok`` (the processor answered for itself) or what
        failed (``timeout``, ``connect_error``, ``reset_error``, a 5xx status)."""
        self.breaker.record(outcome == "ok")
        if self._metrics is not None:
            self._metrics.upstream_request(
                _NAME, "POST /v1/charges", outcome, time.perf_counter() - started
            )
        return charge

    def close(self) -> None:
        self._http.close()
