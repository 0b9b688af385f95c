"""POST /api/v1/orders/{id}/payments against real gateway processes and the real simulator.

Orders are made directly in SQL (payments need only the order row). The simulator's ledger is
the ground truth for money: every test checks what was charged there, not only what the
gateway answered.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
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
    post_payment,
    running_simulator,
    wait_until,
)

pytestmark = pytest.mark.acceptance

APPROVE = {"payment_method_token": "tok_approve"}  # a valid body, for the bad-request tests


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("payments") / "webhook-secret")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    # tok_timeout answers long after the gateway's 1 s timeout (but has charged at once).
    with running_simulator("--timeout-sleep", "5") as s:
        yield s


@pytest.fixture(scope="module")
def gw(gateway_env: dict[str, str], sim: SimProcess, secret_file: str) -> Iterator[Gateway]:
    gateway = start_gateway(gateway_env, extra_env=payments_env(sim.url, secret_file))
    try:
        yield gateway
    finally:
        output = stop_gateway(gateway)
        assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def alice(gw: Gateway) -> Customer:
    return new_customer(gw.url)


@pytest.fixture(scope="module")
def bob(gw: Gateway) -> Customer:
    return new_customer(gw.url)


def is_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body


# -- the happy path and declines ------------------------------------------------------------


def test_pay_captures_and_marks_the_order_paid(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, alice: Customer
) -> None:
    order_id = new_order(test_db_dsn, alice.id, total_cents=12_345)
    with gw.client() as c:
        r = alice.pay(c, order_id)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "captured"
    assert body["order_id"] == order_id
    assert body["amount_cents"] == 12_345
    assert uuid.UUID(body["id"])
    assert order_status(test_db_dsn, order_id) == "paid"
    [payment] = payments_of(test_db_dsn, order_id)
    assert (payment["status"], payment["attempt"]) == ("captured", 1)
    assert events_of(test_db_dsn, order_id) == ["payment.captured", "order.paid"]
    [charge] = sim.charges_for(order_id)
    assert charge["status"] == "captured"
    assert charge["amount_cents"] == 12_345  # the order's total, never the client's number
    assert charge["idempotency_key"] == payment["processor_key"]


def test_paid_order_cannot_be_paid_again(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, alice: Customer
) -> None:
    order_id = new_order(test_db_dsn, alice.id)
    with gw.client() as c:
        assert alice.pay(c, order_id).status_code == 201
        is_problem(alice.pay(c, order_id), 409)  # a new key: a new request, refused
    assert len(sim.charges_for(order_id)) == 1


def test_decline_leaves_the_order_pending_then_a_new_attempt_pays(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, alice: Customer
) -> None:
    order_id = new_order(test_db_dsn, alice.id)
    with gw.client() as c:
        r = alice.pay(c, order_id, "tok_decline")
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "declined"
        assert order_status(test_db_dsn, order_id) == "pending"
        r2 = alice.pay(c, order_id, "tok_approve")
    assert r2.status_code == 201, r2.text
    assert r2.json()["status"] == "captured"
    assert [(p["attempt"], p["status"]) for p in payments_of(test_db_dsn, order_id)] == [
        (1, "declined"),
        (2, "captured"),
    ]
    assert order_status(test_db_dsn, order_id) == "paid"
    charges = sim.charges_for(order_id)
    assert sorted(ch["status"] for ch in charges) == ["captured", "declined"]
    assert len({ch["idempotency_key"] for ch in charges}) == 2  # one key per attempt
    assert events_of(test_db_dsn, order_id) == [
        "payment.declined",
        "payment.captured",
        "order.paid",
    ]


def test_cancelled_order_is_409_and_nothing_is_charged(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, alice: Customer
) -> None:
    order_id = new_order(test_db_dsn, alice.id, status="cancelled")
    with gw.client() as c:
        is_problem(alice.pay(c, order_id), 409)
    assert sim.charges_for(order_id) == []
    assert payments_of(test_db_dsn, order_id) == []


def test_an_order_of_free_products_is_409_and_nothing_is_charged(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, alice: Customer
) -> None:
    # Products may cost 0; the processor charges positive amounts only (it would refuse the
    # call, and the gateway answered 503 for what no retry can fix).
    order_id = new_order(test_db_dsn, alice.id, total_cents=0)
    with gw.client() as c:
        body = is_problem(alice.pay(c, order_id), 409)
    assert "nothing to charge" in body["detail"]
    assert sim.charges_for(order_id) == []
    assert payments_of(test_db_dsn, order_id) == []
    assert order_status(test_db_dsn, order_id) == "pending"


# -- the processor misbehaves -----------------------------------------------------------------


def test_timeout_is_503_with_retry_after_and_the_order_unchanged(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, alice: Customer
) -> None:
    order_id = new_order(test_db_dsn, alice.id)
    with gw.client() as c:
        r = alice.pay(c, order_id, "tok_timeout")
        is_problem(r, 503)
        assert int(r.headers["retry-after"]) >= 1
        assert order_status(test_db_dsn, order_id) == "pending"
        [payment] = payments_of(test_db_dsn, order_id)
        assert payment["status"] == "initiated"  # charged or not: only the processor knows
        # A retry while the first call may still be in flight is refused (never a 2nd charge).
        r2 = alice.pay(c, order_id, "tok_approve")
        is_problem(r2, 409)
        assert "retry-after" in r2.headers
    # The simulator did charge (tok_timeout): the sweep finds it and pays the order.
    assert wait_until(lambda: order_status(test_db_dsn, order_id) == "paid")
    [payment] = payments_of(test_db_dsn, order_id)
    assert payment["status"] == "captured"
    assert len(sim.charges_for(order_id)) == 1
    assert events_of(test_db_dsn, order_id).count("order.paid") == 1


def test_processor_failure_that_did_not_charge_is_503_and_retryable(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, alice: Customer
) -> None:
    order_id = new_order(test_db_dsn, alice.id)
    with gw.client() as c:
        r = alice.pay(c, order_id, "tok_fail")
        is_problem(r, 503)
        assert "retry-after" in r.headers
        assert order_status(test_db_dsn, order_id) == "pending"
        assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["failed"]
        r2 = alice.pay(c, order_id, "tok_approve")  # the processor said: nothing charged
    assert r2.status_code == 201, r2.text
    assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["failed", "captured"]
    assert [ch["status"] for ch in sim.charges_for(order_id)] == ["captured"]


# -- authorisation and input ------------------------------------------------------------------


def test_another_users_order_is_404(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, alice: Customer, bob: Customer
) -> None:
    order_id = new_order(test_db_dsn, alice.id)
    with gw.client() as c:
        r = bob.pay(c, order_id)
        missing = bob.pay(c, str(uuid.uuid4()))
    body = is_problem(r, 404)
    assert is_problem(missing, 404)["detail"] == body["detail"]  # indistinguishable
    assert order_status(test_db_dsn, order_id) == "pending"
    assert payments_of(test_db_dsn, order_id) == []
    assert sim.charges_for(order_id) == []


def test_no_token_is_401(gw: Gateway, test_db_dsn: str, alice: Customer) -> None:
    order_id = new_order(test_db_dsn, alice.id)
    with gw.client() as c:
        r = post_payment(c, order_id, {"idempotency-key": "k"}, json=APPROVE)
    is_problem(r, 401)


@pytest.mark.parametrize(
    "extra",
    [{"amount_cents": 1}, {"status": "captured"}, {"order_id": str(uuid.uuid4())}],
    ids=["amount_cents", "status", "order_id"],
)
def test_mass_assignment_is_422(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, alice: Customer, extra: dict[str, Any]
) -> None:
    order_id = new_order(test_db_dsn, alice.id)
    with gw.client() as c:
        r = alice.pay(c, order_id, **extra)
    body = is_problem(r, 422)
    [name] = extra
    assert any(name in e["field"] for e in body["errors"]), body
    assert payments_of(test_db_dsn, order_id) == []
    assert sim.charges_for(order_id) == []


def test_missing_idempotency_key_is_400(gw: Gateway, test_db_dsn: str, alice: Customer) -> None:
    order_id = new_order(test_db_dsn, alice.id)
    with gw.client() as c:
        r = post_payment(c, order_id, alice.headers, json=APPROVE)
    is_problem(r, 400)
    assert payments_of(test_db_dsn, order_id) == []


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "two words"])
def test_bad_idempotency_keys_are_400(
    gw: Gateway, test_db_dsn: str, alice: Customer, key: str
) -> None:
    order_id = new_order(test_db_dsn, alice.id)
    with gw.client() as c:
        headers = {**alice.headers, "idempotency-key": key.encode()}
        r = post_payment(c, order_id, headers, json=APPROVE)
    is_problem(r, 400)
    assert payments_of(test_db_dsn, order_id) == []


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{}", 422),
        (b'{"payment_method_token": ""}', 422),
        (b'{"payment_method_token": 42}', 422),
        (b'{"payment_method_token": null}', 422),
        (b'{"payment_method_token": "' + b"x" * 300 + b'"}', 422),
        (b'["tok_approve"]', 422),
        (b"{nope", 400),
        (b"", 422),  # no body at all: the required body is missing (a validation error)
    ],
    ids=["missing", "empty", "number", "null", "too-long", "array", "bad-json", "no-body"],
)
def test_bad_bodies_are_4xx(
    gw: Gateway, test_db_dsn: str, alice: Customer, content: bytes, status: int
) -> None:
    order_id = new_order(test_db_dsn, alice.id)
    with gw.client() as c:
        headers = {**alice.headers, "idempotency-key": secrets.token_hex(8),
                   "content-type": "application/json"}  # fmt: skip
        r = post_payment(c, order_id, headers, content=content)
    is_problem(r, status)
    assert payments_of(test_db_dsn, order_id) == []


def test_bad_order_id_is_not_a_500(gw: Gateway, alice: Customer) -> None:
    with gw.client() as c:
        r = alice.pay(c, "not-a-uuid")
    assert r.status_code in (404, 422), r.text
    assert r.headers["content-type"].startswith("application/problem+json")


# -- the circuit breaker (a gateway of its own: one worker, so one breaker) -------------------


def test_breaker_opens_after_repeated_failures_and_closes_again(
    gateway_env: dict[str, str], test_db_dsn: str, secret_file: str
) -> None:
    with running_simulator() as sim:
        gateway = start_gateway(
            gateway_env, workers=1, extra_env=payments_env(sim.url, secret_file)
        )
        try:
            carol = new_customer(gateway.url)
            with gateway.client() as c:
                paid = new_order(test_db_dsn, carol.id)
                first = carol.pay(c, paid, "tok_approve", key="paid-before-the-outage")
                assert first.status_code == 201, first.text
                for _ in range(3):  # CYGATE_PAYMENT_BREAKER_FAILURES=3
                    is_problem(carol.pay(c, new_order(test_db_dsn, carol.id), "tok_fail"), 503)
                calls = sim.ledger()["requests"]
                assert calls == 4
                # Open: refused without calling the processor, and without writing anything.
                order_id = new_order(test_db_dsn, carol.id)
                r = carol.pay(c, order_id, "tok_approve")
                is_problem(r, 503)
                assert 1 <= int(r.headers["retry-after"]) <= 2
                assert sim.ledger()["requests"] == calls
                assert payments_of(test_db_dsn, order_id) == []
                # A key whose answer is stored still replays it while the circuit is open.
                again = carol.pay(c, paid, "tok_approve", key="paid-before-the-outage")
                assert again.status_code == 201 and again.content == first.content
                assert again.headers.get("idempotent-replayed") == "true"
                # After open_seconds one probe goes through; its success closes the circuit.
                assert wait_until(
                    lambda: carol.pay(c, order_id, "tok_approve").status_code == 201,
                    timeout=10, interval=0.5,
                )  # fmt: skip
                r = carol.pay(c, new_order(test_db_dsn, carol.id), "tok_approve")
                assert r.status_code == 201, r.text
            assert sim.ledger()["captured"] == 3
        finally:
            output = stop_gateway(gateway)
            assert "Traceback" not in output, output


def test_unreachable_processor_is_503_and_nothing_is_charged(
    gateway_env: dict[str, str], test_db_dsn: str, secret_file: str
) -> None:
    with running_simulator() as sim:
        url = sim.url
    # The simulator is gone: its port refuses connections.
    gateway = start_gateway(gateway_env, workers=1, extra_env=payments_env(url, secret_file))
    try:
        dave = new_customer(gateway.url)
        order_id = new_order(test_db_dsn, dave.id)
        with gateway.client() as c:
            r = dave.pay(c, order_id)
        is_problem(r, 503)
        assert "retry-after" in r.headers
        assert order_status(test_db_dsn, order_id) == "pending"
        # The request never left: the attempt is failed, so a retry may charge safely.
        assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["failed"]
    finally:
        stop_gateway(gateway)


# -- idempotency ------------------------------------------------------------------------------


def test_replay_with_the_same_key_never_charges_twice(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, alice: Customer
) -> None:
    order_id = new_order(test_db_dsn, alice.id)
    key = secrets.token_hex(16)
    with gw.client() as c:
        first = alice.pay(c, order_id, key=key)
        again = alice.pay(c, order_id, key=key)
        other_body = alice.pay(c, order_id, "tok_decline", key=key)
    assert first.status_code == 201, first.text
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    is_problem(other_body, 422)
    assert len(sim.charges_for(order_id)) == 1


def test_fifty_concurrent_requests_with_one_key_across_two_gateways_charge_at_most_once(
    gw: Gateway, gateway_env: dict[str, str], sim: SimProcess, test_db_dsn: str,
    secret_file: str, alice: Customer,
) -> None:  # fmt: skip
    second = start_gateway(gateway_env, extra_env=payments_env(sim.url, secret_file))
    try:
        order_id = new_order(test_db_dsn, alice.id)
        key = secrets.token_hex(16)
        urls = [gw.url, second.url]

        def one(i: int) -> httpx.Response:
            with httpx.Client(base_url=urls[i % 2], timeout=15) as c:
                return alice.pay(c, order_id, key=key)

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(one, range(50)))
        statuses = sorted(r.status_code for r in answers)
        assert set(statuses) <= {201, 409}, statuses
        assert 201 in statuses
        created = {r.json()["id"] for r in answers if r.status_code == 201}
        assert len(created) == 1  # every 201 is the same payment (replays)
        charges = sim.charges_for(order_id)
        assert len(charges) == 1
        assert [p["status"] for p in payments_of(test_db_dsn, order_id)] == ["captured"]
        assert events_of(test_db_dsn, order_id).count("order.paid") == 1
    finally:
        stop_gateway(second)


def test_simulator_replays_by_key(sim: SimProcess) -> None:
    """The processor side of "a retry never charges twice": same key, same charge."""
    key = secrets.token_hex(8)
    body = {"amount_cents": 500, "currency": "EUR", "payment_method_token": "tok_approve",
            "reference": "ref-" + key}  # fmt: skip
    with httpx.Client(base_url=sim.url, timeout=5) as c:
        a = c.post("/v1/charges", json=body, headers={"idempotency-key": key})
        b = c.post("/v1/charges", json=body, headers={"idempotency-key": key})
        changed = c.post("/v1/charges", json={**body, "amount_cents": 501},
                         headers={"idempotency-key": key})  # fmt: skip
        none = c.post("/v1/charges", json=body)
        looked = c.get(f"/v1/charges/{key}")
        missing = c.get("/v1/charges", params={"idempotency_key": "nope-" + key})
    assert (a.status_code, b.status_code) == (201, 200)
    assert a.json() == b.json() == looked.json()
    assert b.headers["idempotent-replayed"] == "true"
    assert changed.status_code == 422
    assert none.status_code == 400
    assert missing.status_code == 404
    assert len(sim.charges_for("ref-" + key)) == 1


# -- end to end with the orders API -----------------------------------------------------------


def _product(dsn: str, stock: int, price: int) -> str:
    """A seeded product from the far end of the id range (the orders tests take the other)."""
    taken = db(dsn, "SELECT id FROM products ORDER BY id DESC LIMIT 1 OFFSET $1", _PRODUCTS.pop())
    pid = taken[0][0]
    db(dsn, "UPDATE products SET stock = $2, price_cents = $3, currency = 'EUR' WHERE id = $1",
       pid, stock, price)  # fmt: skip
    return str(pid)


_PRODUCTS = [0, 1, 2, 3]


def _stock(dsn: str, pid: str) -> int:
    return int(db(dsn, "SELECT stock FROM products WHERE id = $1", uuid.UUID(pid))[0][0])


def _place(c: httpx.Client, who: Customer, pid: str, quantity: int) -> dict[str, Any]:
    r = c.post(
        "/api/v1/orders",
        json={"items": [{"product_id": pid, "quantity": quantity}],
              "shipping_address": {"name": "Pay Er", "line1": "1 Main St", "city": "Oslo",
                                   "country": "NO"}},
        headers={**who.headers, "idempotency-key": secrets.token_hex(8)},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_order_placed_paid_then_cancel_is_409(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, seeded: object, alice: Customer
) -> None:
    pid = _product(test_db_dsn, stock=5, price=1_000)
    with gw.client() as c:
        order = _place(c, alice, pid, 2)
        r = alice.pay(c, order["id"])
        assert r.status_code == 201, r.text
        assert r.json()["amount_cents"] == order["total_cents"] == 2_000
        got = c.get(f"/api/v1/orders/{order['id']}", headers=alice.headers)
        assert got.json()["status"] == "paid"
        cancel = c.post(f"/api/v1/orders/{order['id']}/cancel", headers=alice.headers)
    is_problem(cancel, 409)
    assert _stock(test_db_dsn, pid) == 3
    [charge] = sim.charges_for(order["id"])
    assert charge["amount_cents"] == 2_000


def test_declined_order_keeps_its_stock_until_cancelled(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, seeded: object, alice: Customer
) -> None:
    pid = _product(test_db_dsn, stock=5, price=700)
    with gw.client() as c:
        order = _place(c, alice, pid, 4)
        r = alice.pay(c, order["id"], "tok_decline")
        assert r.json()["status"] == "declined"
        assert _stock(test_db_dsn, pid) == 1  # a decline releases nothing
        cancel = c.post(f"/api/v1/orders/{order['id']}/cancel", headers=alice.headers)
        assert cancel.status_code == 200, cancel.text
        assert _stock(test_db_dsn, pid) == 5  # the cancel does
        is_problem(alice.pay(c, order["id"]), 409)  # a cancelled order cannot be paid
    assert [ch["status"] for ch in sim.charges_for(order["id"])] == ["declined"]


def test_cancel_while_a_payment_is_in_flight_is_409_and_keeps_the_stock(
    gw: Gateway, sim: SimProcess, test_db_dsn: str, seeded: object, alice: Customer
) -> None:
    """The processor timed out: it may have charged. Cancelling now would release stock that
    the charge pays for, so the cancel waits (409 + Retry-After) until the attempt settles."""
    pid = _product(test_db_dsn, stock=5, price=1_000)
    with gw.client() as c:
        order = _place(c, alice, pid, 2)
        is_problem(alice.pay(c, order["id"], "tok_timeout"), 503)
        cancel = c.post(f"/api/v1/orders/{order['id']}/cancel", headers=alice.headers)
        body = is_problem(cancel, 409)
        assert "in progress" in body["detail"]
        assert int(cancel.headers["retry-after"]) >= 1
        assert _stock(test_db_dsn, pid) == 3
        # The simulator did charge: recovery pays the order, and the cancel then says paid.
        assert wait_until(lambda: order_status(test_db_dsn, order["id"]) == "paid")
        cancel = c.post(f"/api/v1/orders/{order['id']}/cancel", headers=alice.headers)
        assert "paid" in is_problem(cancel, 409)["detail"]
    assert _stock(test_db_dsn, pid) == 3
    assert len(sim.charges_for(order["id"])) == 1
