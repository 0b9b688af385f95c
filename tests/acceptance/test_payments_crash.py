"""Crash safety: the gateway is SIGKILLed at the two dangerous points of a payment, restarted,
and the recovery sweep must leave every order paid-and-charged-once or pending-and-uncharged.

``CYGATE_FAULT`` (honoured only with ``CYGATE_ENVIRONMENT=test``) makes the worker kill the whole
gateway (its process group) with SIGKILL:

* ``payment:after_commit``: the ``initiated`` attempt is committed, the processor never called;
* ``payment:after_charge``: the processor has charged, the payment row was never updated.

The simulator's ledger is the ground truth for money.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
from tests.acceptance.conftest import start_gateway, stop_gateway
from tests.payment_helpers import (
    Customer,
    SimProcess,
    db,
    events_of,
    new_customer,
    new_order,
    order_status,
    payments_env,
    payments_of,
    running_simulator,
    wait_until,
)

pytestmark = pytest.mark.acceptance

ORDERS: list[str] = []  # every order this module paid through a crashing gateway


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with running_simulator() as s:
        yield s


@pytest.fixture(scope="module")
def env(
    gateway_env: dict[str, str], sim: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    secret = str(tmp_path_factory.mktemp("crash") / "webhook-secret")
    return {
        **gateway_env,
        **payments_env(sim.url, secret),
        # A claim left in flight by the dead process may be taken over by a retry after 2 s.
        "CYGATE_IDEMPOTENCY_IN_FLIGHT_TIMEOUT": "2",
    }


def crash_during_payment(
    env: dict[str, str], fault: str, dsn: str, token: str = "tok_approve"
) -> tuple[Customer, str, str]:
    """Start a gateway with ``fault``, pay one order with ``token``, watch the gateway die;
    returns the customer, the order id and the Idempotency-Key used."""
    gw = start_gateway(env, workers=1, extra_env={"CYGATE_FAULT": fault})
    try:
        customer = new_customer(gw.url)
        order_id = new_order(dsn, customer.id, total_cents=7_700)
        ORDERS.append(order_id)
        key = secrets.token_hex(16)
        with gw.client() as c, pytest.raises(httpx.TransportError):
            customer.pay(c, order_id, token=token, key=key)
        assert gw.proc.wait(timeout=15) == -signal.SIGKILL  # the whole gateway died
    finally:
        stop_gateway(gw)
    return customer, order_id, key


def test_crash_after_commit_before_the_processor_is_called(
    env: dict[str, str], sim: SimProcess, test_db_dsn: str
) -> None:
    customer, order_id, key = crash_during_payment(env, "payment:after_commit", test_db_dsn)
    assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["initiated"]
    assert sim.charges_for(order_id) == []  # never called

    gw = start_gateway(env, workers=2)
    try:
        # The sweep asks the processor, which has no record: the attempt failed, nothing lost.
        assert wait_until(lambda: payments_of(test_db_dsn, order_id)[0]["status"] != "initiated")
        assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["failed"]
        assert order_status(test_db_dsn, order_id) == "pending"  # retryable
        assert sim.charges_for(order_id) == []
        # The client retries with the same key (its claim is taken over) and pays once.
        with gw.client() as c:
            assert wait_until(
                lambda: customer.pay(c, order_id, key=key).status_code != 409, timeout=15
            )
            r = customer.pay(c, order_id, key=key)
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "captured"
    finally:
        output = stop_gateway(gw)
        assert "Traceback" not in output, output
    assert order_status(test_db_dsn, order_id) == "paid"
    assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["failed", "captured"]
    assert [c["status"] for c in sim.charges_for(order_id)] == ["captured"]  # exactly one
    events = events_of(test_db_dsn, order_id)
    assert events.count("order.paid") == 1
    assert events.count("payment.captured") == 1
    assert events.count("payment.failed") == 1


def test_crash_after_the_charge_before_the_payment_row_is_updated(
    env: dict[str, str], sim: SimProcess, test_db_dsn: str
) -> None:
    customer, order_id, key = crash_during_payment(env, "payment:after_charge", test_db_dsn)
    assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["initiated"]
    assert [c["status"] for c in sim.charges_for(order_id)] == ["captured"]  # money moved
    assert order_status(test_db_dsn, order_id) == "pending"

    gw = start_gateway(env, workers=2)
    try:
        # The sweep finds the charge under the attempt's key: captured, and the order paid.
        assert wait_until(lambda: order_status(test_db_dsn, order_id) == "paid")
        assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["captured"]
        # Retries cannot charge again: the same key (once the dead claim may be taken over)
        # gets its attempt's answer, the 201 it never received; a new key finds the order paid.
        with gw.client() as c:
            answers: list[httpx.Response] = []

            def settled() -> bool:
                answers.append(customer.pay(c, order_id, key=key))
                return "in progress" not in answers[-1].text

            assert wait_until(settled, timeout=15)
            fresh = customer.pay(c, order_id, key=secrets.token_hex(16))
        assert answers[-1].status_code == 201, answers[-1].text
        assert answers[-1].json()["status"] == "captured"
        assert answers[-1].json()["attempt"] == 1
        assert fresh.status_code == 409, fresh.text
        assert "order is paid" in fresh.json()["detail"]
    finally:
        output = stop_gateway(gw)
        assert "Traceback" not in output, output
    assert [c["status"] for c in sim.charges_for(order_id)] == ["captured"]  # not duplicated
    events = events_of(test_db_dsn, order_id)
    assert events.count("order.paid") == 1
    assert events.count("payment.captured") == 1


def test_retry_of_a_declined_attempt_lost_in_a_crash_calls_the_processor_once(
    env: dict[str, str], sim: SimProcess, test_db_dsn: str
) -> None:
    """The processor declined, the gateway died before it wrote that down: the client's retry
    under the same Idempotency-Key gets that decline (attempt 1), not a second processor call.
    A retry under a new key is a new attempt (another card, say), as before."""
    customer, order_id, key = crash_during_payment(
        env, "payment:after_charge", test_db_dsn, token="tok_decline"
    )
    assert [c["status"] for c in sim.charges_for(order_id)] == ["declined"]
    assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["initiated"]

    gw = start_gateway(env, workers=2)
    try:
        with gw.client() as c:
            answers: list[httpx.Response] = []

            def settled() -> bool:
                answers.append(customer.pay(c, order_id, token="tok_decline", key=key))
                return answers[-1].status_code != 409

            assert wait_until(settled, timeout=15), answers[-1].text
            again = customer.pay(c, order_id, token="tok_decline", key=key)
            r = answers[-1]
            assert r.status_code == 201, r.text
            assert r.json()["status"] == "declined" and r.json()["attempt"] == 1, r.text
            assert again.status_code == 201 and again.json() == r.json(), again.text
            assert again.headers["idempotent-replayed"] == "true"
            # the same key never reached the processor again
            assert [ch["status"] for ch in sim.charges_for(order_id)] == ["declined"]
            fresh = customer.pay(c, order_id, key=secrets.token_hex(16))
        assert fresh.status_code == 201, fresh.text
        assert fresh.json()["status"] == "captured" and fresh.json()["attempt"] == 2
    finally:
        output = stop_gateway(gw)
        assert "Traceback" not in output, output
    assert [c["status"] for c in sim.charges_for(order_id)] == ["declined", "captured"]
    assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["declined", "captured"]
    assert order_status(test_db_dsn, order_id) == "paid"


def test_recovery_by_hand_with_the_cli(
    env: dict[str, str], sim: SimProcess, test_db_dsn: str
) -> None:
    """``cygate payments-recover``: the same reconciliation, run once from the command line
    (here after an ``after_charge`` crash, with no gateway running to sweep)."""
    _, order_id, _ = crash_during_payment(env, "payment:after_charge", test_db_dsn)
    assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["initiated"]
    run = subprocess.run(
        [sys.executable, "-m", "cygate", "payments-recover", "--older-than", "0"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "'captured': 1" in run.stdout, run.stdout
    assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["captured"]
    assert order_status(test_db_dsn, order_id) == "paid"
    assert events_of(test_db_dsn, order_id) == ["payment.captured", "order.paid"]
    assert len(sim.charges_for(order_id)) == 1


def test_after_recovery_every_order_is_terminal_or_retryable(
    sim: SimProcess, test_db_dsn: str
) -> None:
    """Every order of this module: paid with exactly one captured charge and one
    ``order.paid``, or pending with no captured charge; no payment left ``initiated``."""
    assert ORDERS
    captured: dict[str, int] = {}
    for charge in sim.ledger()["charges"]:
        if charge["status"] == "captured":
            captured[charge["reference"]] = captured.get(charge["reference"], 0) + 1
    for order_id in ORDERS:
        [row] = db(
            test_db_dsn,
            "SELECT o.status, "
            " (SELECT count(*) FROM outbox WHERE aggregate_id = o.id::text "
            "   AND event_type = 'order.paid') AS paid_events, "
            " (SELECT count(*) FROM payments p WHERE p.order_id = o.id "
            "   AND p.status = 'initiated') AS open "
            "FROM orders o WHERE o.id = $1",
            uuid.UUID(order_id),
        )
        assert row["open"] == 0, order_id
        if row["status"] == "paid":
            assert captured.get(order_id) == 1, order_id
            assert row["paid_events"] == 1, order_id
        else:
            assert row["status"] == "pending", order_id
            assert order_id not in captured, order_id
            assert row["paid_events"] == 0, order_id


def test_after_recovery_every_event_reaches_every_consumer_once(
    env: dict[str, str], test_db_dsn: str
) -> None:
    """The outbox events of the crashed payments (``order.paid``, ``payment.*``) are delivered
    to the consumers once in effect: each is recorded once per consumer, and the order-summary
    read model counts each paid order once. A fresh gateway runs the relay and consumers."""
    assert ORDERS
    events = db(
        test_db_dsn,
        "SELECT id, event_type, payload->>'user_id' AS user_id FROM outbox"
        " WHERE payload->>'order_id' = ANY($1::text[])",
        ORDERS,
    )
    assert any(e["event_type"] == "order.paid" for e in events)
    wanted = {("analytics", e["id"]) for e in events} | {
        ("order_summary", e["id"]) for e in events if e["event_type"].startswith("order.")
    }

    def applied() -> set[tuple[str, int]]:
        rows = db(
            test_db_dsn,
            "SELECT consumer, event_id FROM processed_events WHERE event_id = ANY($1::bigint[])",
            [e["id"] for e in events],
        )
        return {(r["consumer"], r["event_id"]) for r in rows}

    # NOTE: a killed gateway's consumers may have read some of these messages: they stay
    # pending for it until this gateway reclaims them, after the idle time set here.
    gw = start_gateway(env, workers=1, extra_env={"CYGATE_EVENTS_RECLAIM_IDLE": "1"})
    try:
        assert wait_until(lambda: wanted <= applied(), timeout=30)
    finally:
        stop_gateway(gw)
    paid_per_user: dict[str, int] = {}
    for e in events:
        if e["event_type"] == "order.paid":
            paid_per_user[e["user_id"]] = paid_per_user.get(e["user_id"], 0) + 1
    for user_id, paid in paid_per_user.items():
        [row] = db(
            test_db_dsn,
            "SELECT paid_orders FROM order_summaries WHERE user_id = $1",
            uuid.UUID(user_id),
        )
        assert row["paid_orders"] == paid, user_id
