"""POST /api/v1/payments/webhook: signatures, staleness, replays, out-of-order events, and the
simulator's own signed deliveries (duplicated and reordered) converging on the right state."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from tests.acceptance.conftest import Gateway, start_gateway, stop_gateway
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

from cygate.services.payments.signing import sign

pytestmark = pytest.mark.acceptance

SECRET = "whsec-test-" + secrets.token_hex(16)  # given to both through files/env of their own


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("webhooks") / "webhook-secret"
    path.write_text(SECRET + "\n")
    return str(path)


@pytest.fixture(scope="module")
def setup(gateway_env: dict[str, str], secret_file: str) -> Iterator[tuple[Gateway, SimProcess]]:
    """A gateway, and a simulator that sends every webhook 4 times, each after a random delay
    of up to 0.5 s (so duplicates and charges overtake each other), and answers tok_timeout
    only after 0.6 s: its webhook arrives before the synchronous answer."""
    from tests.acceptance.conftest import free_port

    port = free_port()
    hook = f"http://127.0.0.1:{port}/api/v1/payments/webhook"
    with running_simulator(
        "--webhook-url", hook, "--webhook-secret-file", secret_file,
        "--webhook-duplicates", "3", "--webhook-jitter", "0.5", "--timeout-sleep", "0.6",
    ) as sim:  # fmt: skip
        env = {**gateway_env, **payments_env(sim.url, secret_file)}
        env["CYGATE_PAYMENT_PROCESSOR_TIMEOUT"] = "2"
        env["CYGATE_PAYMENT_RECOVERY_AFTER"] = "60"
        gw = _start_on(env, port)
        try:
            yield gw, sim
        finally:
            output = stop_gateway(gw)
            assert "Traceback" not in output, output


def _start_on(env: dict[str, str], port: int) -> Gateway:
    """start_gateway, on a port chosen beforehand (the simulator must know it)."""
    import tests.acceptance.conftest as conftest

    original = conftest.free_port
    conftest.free_port = lambda: port
    try:
        return start_gateway(env)
    finally:
        conftest.free_port = original


@pytest.fixture(scope="module")
def gw(setup: tuple[Gateway, SimProcess]) -> Gateway:
    return setup[0]


@pytest.fixture(scope="module")
def simp(setup: tuple[Gateway, SimProcess]) -> SimProcess:
    return setup[1]


@pytest.fixture(scope="module")
def erin(gw: Gateway) -> Customer:
    return new_customer(gw.url)


def event(kind: str, key: str, event_id: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "id": event_id or "evt_" + secrets.token_hex(8),
            "type": f"charge.{kind}",
            "created": int(time.time()),
            "data": {"id": "ch_test", "idempotency_key": key, "status": kind},
        }
    )


def post(gw: Gateway, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if signature is not None:
        headers["cygate-signature"] = signature
    return httpx.post(gw.url + "/api/v1/payments/webhook", content=body, headers=headers)


def signed(body: bytes, at: float | None = None, secret: str = SECRET) -> str:
    return sign(secret.encode(), body, int(time.time() if at is None else at))


def is_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    return dict(r.json())


def declined_payment(gw: Gateway, dsn: str, customer: Customer) -> tuple[str, Any]:
    order_id = new_order(dsn, customer.id)
    with gw.client() as c:
        r = customer.pay(c, order_id, "tok_decline")
    assert r.status_code == 201 and r.json()["status"] == "declined", r.text
    [payment] = payments_of(dsn, order_id)
    return order_id, payment


# -- signatures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda body: None,
        lambda body: "",
        lambda body: "garbage",
        lambda body: f"t={int(time.time())}",
        lambda body: f"t={int(time.time())},v1=" + "0" * 64,
        lambda body: signed(body, secret="not-the-secret"),
        lambda body: signed(body + b" "),
        # NOTE: 10 s past the 300 s tolerance, not 1: the header's timestamp is whole seconds
        # (truncated) and the gateway reads its clock later, so "+301" could arrive as 300.
        lambda body: signed(body, at=time.time() - 310),  # stale
        lambda body: signed(body, at=time.time() + 310),  # from the future
    ],
    ids=["missing", "empty", "garbage", "no-mac", "wrong-mac", "wrong-secret", "other-body",
         "stale", "future"],
)  # fmt: skip
def test_bad_or_stale_signatures_are_401_and_change_nothing(
    gw: Gateway, test_db_dsn: str, erin: Customer, make: Any
) -> None:
    order_id, payment = declined_payment(gw, test_db_dsn, erin)
    body = event("captured", payment["processor_key"])
    is_problem(post(gw, body, make(body)), 401)
    assert order_status(test_db_dsn, order_id) == "pending"
    assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["declined"]
    # (the simulator's own "declined" deliveries may be recorded; no "captured" ever is)
    assert db(test_db_dsn, "SELECT count(*) FROM payment_events WHERE payment_id = $1 "
              "AND kind = 'charge.captured'", payment["id"])[0][0] == 0  # fmt: skip


def test_malformed_but_signed_event_is_400(gw: Gateway) -> None:
    for body in (b"{nope", b"[]", b'{"id": "evt_x"}', b'{"id": 1, "type": "x", "data": {}}'):
        is_problem(post(gw, body, signed(body)), 400)


def test_unknown_key_or_kind_is_acknowledged(gw: Gateway) -> None:
    body = event("captured", "no-such-key")
    assert post(gw, body, signed(body)).status_code == 204
    body = orjson.dumps({"id": "evt_" + secrets.token_hex(4), "type": "charge.refunded",
                         "data": {"idempotency_key": "no-such-key"}})  # fmt: skip
    assert post(gw, body, signed(body)).status_code == 204
    for kind in ([], {"a": 1}):  # not a string, not hashable: as unknown as any other kind
        body = orjson.dumps({"id": "evt_" + secrets.token_hex(4), "type": kind,
                             "data": {"idempotency_key": "no-such-key"}})  # fmt: skip
        assert post(gw, body, signed(body)).status_code == 204


# -- ordering and replays ---------------------------------------------------------------------


def test_captured_after_declined_converges_to_captured_once(
    gw: Gateway, test_db_dsn: str, erin: Customer
) -> None:
    order_id, payment = declined_payment(gw, test_db_dsn, erin)
    captured_id, late_id = "evt_" + secrets.token_hex(8), "evt_" + secrets.token_hex(8)
    body = event("captured", payment["processor_key"], captured_id)
    assert post(gw, body, signed(body)).status_code == 204
    assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["captured"]
    assert order_status(test_db_dsn, order_id) == "paid"
    # The same delivery again (a replay within the tolerance, even freshly signed): nothing.
    assert post(gw, body, signed(body)).status_code == 204
    # A late "declined" after the capture: nothing either.
    late = event("declined", payment["processor_key"], late_id)
    assert post(gw, late, signed(late)).status_code == 204
    assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["captured"]
    assert order_status(test_db_dsn, order_id) == "paid"
    events = events_of(test_db_dsn, order_id)
    assert events == ["payment.declined", "payment.captured", "order.paid"]
    rows = db(test_db_dsn, "SELECT event_id FROM payment_events WHERE event_id = ANY($1)",
              [captured_id, late_id])  # fmt: skip
    assert sorted(r[0] for r in rows) == sorted([captured_id, late_id])  # each recorded once


def test_simulator_webhooks_duplicated_and_reordered_apply_once(
    gw: Gateway, simp: SimProcess, test_db_dsn: str, erin: Customer
) -> None:
    orders = [new_order(test_db_dsn, erin.id) for _ in range(6)]
    tokens = ["tok_approve", "tok_decline"] * 3
    assert wait_until(lambda: simp.ledger()["webhooks_sent"] == 4 * len(simp.ledger()["charges"]))
    before = simp.ledger()["webhooks_sent"]  # earlier tests' deliveries are all done
    with gw.client() as c:
        answers = [erin.pay(c, o, t) for o, t in zip(orders, tokens, strict=True)]
    assert [r.status_code for r in answers] == [201] * 6
    # Every charge's webhook is delivered 4 times, in a shuffled order.
    assert wait_until(lambda: simp.ledger()["webhooks_sent"] == before + 4 * len(orders))
    for order_id, token in zip(orders, tokens, strict=True):
        want = "captured" if token == "tok_approve" else "declined"
        assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == [want]
        assert order_status(test_db_dsn, order_id) == ("paid" if want == "captured" else "pending")
        events = events_of(test_db_dsn, order_id)
        assert events.count(f"payment.{want}") == 1
        assert events.count("order.paid") == (1 if want == "captured" else 0)
        [payment] = payments_of(test_db_dsn, order_id)
        n = db(test_db_dsn, "SELECT count(*) FROM payment_events WHERE payment_id = $1",
               payment["id"])[0][0]  # fmt: skip
        assert n == 1  # four deliveries of one event id: recorded once


def test_webhook_before_the_synchronous_answer(
    gw: Gateway, simp: SimProcess, test_db_dsn: str, erin: Customer
) -> None:
    """tok_timeout here: charged at once, answered after 0.6 s (within the gateway's 2 s); the
    webhook (sent at once, up to 0.5 s late) usually lands first. Either way: one capture."""
    order_id = new_order(test_db_dsn, erin.id)
    with gw.client() as c:
        r = erin.pay(c, order_id, "tok_timeout")
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "captured"
    assert order_status(test_db_dsn, order_id) == "paid"
    assert wait_until(lambda: len(db(
        test_db_dsn, "SELECT 1 FROM payment_events e JOIN payments p ON p.id = e.payment_id "
        "WHERE p.order_id = $1", uuid.UUID(order_id))) == 1)  # fmt: skip
    events = events_of(test_db_dsn, order_id)
    assert events == ["payment.captured", "order.paid"]
    assert len(simp.charges_for(order_id)) == 1


def test_webhook_settles_a_call_whose_answer_is_lost(
    gw: Gateway, simp: SimProcess, test_db_dsn: str, erin: Customer
) -> None:
    """The answer comes after the gateway's 2 s timeout, the webhook (≤ 0.5 s) before it: the
    client gets the settled payment, not a 503."""
    simp.set_mode(None, timeout_sleep=4)
    try:
        order_id = new_order(test_db_dsn, erin.id)
        with gw.client() as c:
            r = erin.pay(c, order_id, "tok_timeout")
    finally:
        simp.set_mode(None, timeout_sleep=0.6)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "captured"
    assert order_status(test_db_dsn, order_id) == "paid"
    assert events_of(test_db_dsn, order_id) == ["payment.captured", "order.paid"]
    assert len(simp.charges_for(order_id)) == 1
