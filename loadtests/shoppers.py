"""Commerce load for cygate's REST API: shoppers who register, search, order and pay (locust).

Each simulated shopper registers a fresh account (a random email under ``load.example.com``, a
random password) and logs in once (again shortly before its access token expires), then repeats:

* **checkout** (most often): search for a word or two of the seed's vocabulary (sometimes with a
  typo), open a product from the hits, order it (with up to two more in-stock hits) under a fresh
  ``Idempotency-Key``; ~5 % of placed orders are sent again with the same key and body and must
  come back ``Idempotent-Replayed: true`` with the same order id. Then pay it (``tok_approve``,
  ~10 % ``tok_decline``; after a decline either a second attempt with ``tok_approve`` or a
  cancel), or ~10 % of the time cancel it unpaid, and read the order back (``paid`` after a
  capture, ``cancelled`` after a cancel);
* **my orders**: ``GET /api/v1/orders``: only the shopper's own orders, as many as it placed;
* **summary**: ``GET /api/v1/users/me/orders/summary``: the read model lags the orders but never
  counts more than the shopper placed.

A failed check is a locust failure (so the SLO gate sees it). Expected refusals are successes:
409 insufficient stock on ``POST /api/v1/orders`` (~3 % of checkouts ask for one more than the
shown stock on purpose, so the path is exercised); the journey then ends. Any 5xx, a 503 from
payments (processor unreachable, circuit open), a 401 or a wrong body is a failure.

Requests are named by route template; the replay is ``/api/v1/orders (replay)`` so its latency
is apart from first placements. Business outcomes (orders placed, out of stock, captured,
declined, cancelled, replays checked) are counted in :data:`OUTCOMES`, logged at the end and
written to the SLO report (standalone runs: a distributed run counts per worker).

Select it with ``LOAD_SCENARIO=shop`` (or ``mixed``) for ``loadtests/run.sh`` / ``make load``, or
by class name: ``locust -f loadtests/locustfile.py Shopper``. Payments need the gateway to reach
a processor: ``scripts/load.sh`` starts the simulator with it (``scripts/run.sh``).
"""

from __future__ import annotations

import os
import random
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from locust import FastHttpUser, between, events, task

__all__ = ["OUTCOMES", "ApiUser", "Reply", "Shopper", "check_order", "has_items", "status_is"]

OUTCOMES: Counter[str] = Counter()
"""Business outcomes of this process's shoppers (reset at each test start)."""

REPLAY_SHARE = 0.05  # placed orders sent again with the same key and body
CANCEL_SHARE = 0.10  # orders cancelled instead of paid
DECLINE_SHARE = 0.10  # payments made with tok_decline
RETRY_AFTER_DECLINE = 0.5  # declined orders paid again (tok_approve); the rest are cancelled
OVERSELL_SHARE = 0.03  # checkouts asking for one more than the shown stock (expected 409)
TYPO_SHARE = 0.10  # searches with a letter dropped (typo correction)
TOKEN_MARGIN = 60.0  # log in again this many seconds before the access token expires
LIST_LIMIT = 20

# Words of the seed's product names (src/cygate/infra/seed.py): searches that find something.
SEARCH_WORDS = (
    "keyboard", "backpack", "kettle", "headphones", "lamp", "chair", "notebook", "bottle",
    "jacket", "speaker", "watch", "blender", "tent", "monitor", "sneakers", "drill", "camera",
    "mug", "desk", "router", "steel", "bamboo", "leather", "ceramic", "carbon", "cotton",
    "walnut", "glass", "titanium", "wool", "copper", "linen", "wireless", "rugged", "vintage",
    "portable", "ergonomic", "foldable",
)  # fmt: skip
ADDRESS = {"name": "Load Shopper", "line1": "1 Test Street", "city": "Testville", "country": "NL"}

ROUTE_REGISTER = "/api/v1/auth/register"
ROUTE_LOGIN = "/api/v1/auth/login"
ROUTE_SEARCH = "/api/v1/search?q={q}"
ROUTE_PRODUCT = "/api/v1/products/{id}"
ROUTE_ORDERS = "/api/v1/orders"
ROUTE_ORDERS_REPLAY = "/api/v1/orders (replay)"
ROUTE_ORDER = "/api/v1/orders/{id}"
ROUTE_PAYMENTS = "/api/v1/orders/{id}/payments"
ROUTE_CANCEL = "/api/v1/orders/{id}/cancel"
ROUTE_SUMMARY = "/api/v1/users/me/orders/summary"


@events.test_start.add_listener
def _reset_outcomes(**_kwargs: Any) -> None:
    OUTCOMES.clear()


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer with an accepted status."""

    status: int
    body: dict[str, Any]  # {} when the body was not a JSON object
    replayed: bool  # Idempotent-Replayed: true
    etag: str | None = None  # the ETag header, when there is one


Check = Callable[[Reply], str | None]


def _search_query() -> str:
    words = random.sample(SEARCH_WORDS, random.choice((1, 1, 2)))
    if random.random() < TYPO_SHARE:
        word = words[0]
        cut = random.randrange(1, len(word))
        words[0] = word[:cut] + word[cut + 1 :]
    return " ".join(words)


class ApiUser(FastHttpUser):
    """Plumbing shared by the users that sign in and order (no tasks of its own): checked
    requests (:meth:`_request`), paying, cancelling and reading an order back."""

    abstract = True
    host = os.environ.get("CYGATE_URL", "http://127.0.0.1:8000")
    network_timeout = 10.0
    connection_timeout = 5.0
    default_headers = {"Accept": "application/json", "User-Agent": "cygate-loadtest"}
    token: str | None = None  # the access token sent as Bearer when auth=True

    def _request(
        self,
        method: str,
        path: str,
        name: str,
        *,
        body: Any = None,
        key: str | None = None,
        ok: tuple[int, ...] = (200,),
        expected: tuple[int, ...] = (),
        check: Check | None = None,
        auth: bool = True,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply | None:
        """One request. Success: a status in ``ok`` (or ``expected``: a refusal the scenario
        provokes) with a JSON body that passes ``check`` (which returns an error message or
        None). Anything else is marked failed and gives None. ``form``: a form-encoded body
        instead of ``body``'s JSON; ``headers``: more request headers."""
        headers = dict(headers or {})
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if key is not None:
            headers["Idempotency-Key"] = key
        data = None
        if form is not None:
            data = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        with self.client.request(
            method, path, name=name, json=body, data=data, headers=headers, catch_response=True
        ) as resp:
            status = resp.status_code or 0  # 0: no HTTP answer (connection error, timeout)
            if status not in ok and status not in expected:
                # Short messages (no URL, no ids) so the failures table groups them.
                error = getattr(resp, "error", None)
                if status == 0 and error is not None:
                    resp.failure(f"no response: {type(error).__name__}: {error}")
                else:
                    resp.failure(f"HTTP {status}")
                return None
            try:
                doc = resp.json() if resp.content else None
            except ValueError as exc:
                resp.failure(f"body is not JSON: {exc}")
                return None
            got = resp.headers or {}
            replayed = got.get("Idempotent-Replayed", "") == "true"
            reply = Reply(status, doc if isinstance(doc, dict) else {}, replayed, got.get("ETag"))
            problem = check(reply) if check else None
            if problem:
                resp.failure(problem)
                return None
            resp.success()
            return reply

    def _pay(self, order: dict[str, Any], token: str) -> str | None:
        """One payment attempt under a fresh key: its status, or None on a failure."""
        want = "declined" if token == "tok_decline" else "captured"

        def settled(reply: Reply) -> str | None:
            doc = reply.body
            if doc.get("status") != want:
                return f"{token}: status {doc.get('status')!r}"
            if (
                doc.get("order_id") != order["id"]
                or doc.get("amount_cents") != order["total_cents"]
            ):
                return "another order id or amount than the order's"
            return None

        got = self._request(
            "POST",
            f"/api/v1/orders/{order['id']}/payments",
            ROUTE_PAYMENTS,
            body={"payment_method_token": token},
            key=f"load-{uuid.uuid4()}",
            ok=(201,),
            check=settled,
        )
        if got is None:
            return None
        OUTCOMES[want] += 1
        return want

    def _cancel(self, order: dict[str, Any]) -> None:
        if self._request(
            "POST",
            f"/api/v1/orders/{order['id']}/cancel",
            ROUTE_CANCEL,
            check=lambda r: status_is(r, "cancelled"),
        ):
            OUTCOMES["cancelled"] += 1

    def _read_order(self, order_id: str, status: str) -> None:
        self._request(
            "GET", f"/api/v1/orders/{order_id}", ROUTE_ORDER, check=lambda r: status_is(r, status)
        )


class Shopper(ApiUser):
    """A customer who searches, orders, pays (or cancels) and looks at its orders."""

    weight = 1  # with CatalogBrowser's 3: a quarter of the users of a mixed run
    wait_time = between(0.01, 0.1)

    def on_start(self) -> None:
        self.email = f"shopper-{secrets.token_hex(8)}@load.example.com"
        self.password = secrets.token_urlsafe(18)
        self.user_id: str | None = None
        self.token_expires = 0.0
        self.placed = 0  # orders answered 201 (first placements)
        self.unsure = 0  # placements without a usable answer: they may exist
        self._session()

    def _session(self) -> bool:
        """Registered and holding a fresh access token (register/log in when needed)."""
        if self.user_id is None:
            got = self._request(
                "POST",
                ROUTE_REGISTER,
                ROUTE_REGISTER,
                body={"email": self.email, "password": self.password, "name": "Load Shopper"},
                ok=(201,),
                check=lambda r: None if r.body.get("id") else "no id in the new user",
                auth=False,
            )
            if got is None:
                return False
            self.user_id = str(got.body["id"])
        if self.token and time.monotonic() < self.token_expires - TOKEN_MARGIN:
            return True
        got = self._request(
            "POST",
            ROUTE_LOGIN,
            ROUTE_LOGIN,
            body={"email": self.email, "password": self.password},
            check=lambda r: None if r.body.get("access_token") else "no access_token",
            auth=False,
        )
        if got is None:
            self.token = None
            return False
        self.token = str(got.body["access_token"])
        self.token_expires = time.monotonic() + float(got.body.get("expires_in") or 300)
        return True

    # -- tasks -----------------------------------------------------------------------------

    @task(10)
    def checkout(self) -> None:
        """Search, open a product, order, then pay or cancel, and read the order back."""
        if not self._session():
            return
        query = urlencode({"q": _search_query(), "limit": "20"})
        found = self._request(
            "GET", f"/api/v1/search?{query}", ROUTE_SEARCH, check=has_items, auth=False
        )
        if found is None:
            return
        in_stock = [h for h in found.body["items"] if int(h.get("stock") or 0) > 0]
        if not in_stock:
            OUTCOMES["nothing_to_buy"] += 1
            return
        chosen = random.choice(in_stock)
        product = self._request(
            "GET",
            f"/api/v1/products/{chosen['id']}",
            ROUTE_PRODUCT,
            check=lambda r: None if r.body.get("id") == chosen["id"] else "another product's id",
        )
        if product is None:
            return
        stock = int(product.body.get("stock") or 0)
        if random.random() < OVERSELL_SHARE and stock < 1000:
            lines = [{"product_id": chosen["id"], "quantity": stock + 1}]
        else:
            others = [h for h in in_stock if h["id"] != chosen["id"]]
            extra = random.sample(others, min(len(others), random.choice((0, 0, 1, 2))))
            lines = [{"product_id": h["id"], "quantity": 1} for h in (chosen, *extra)]
        order = self._place(lines)
        if order is None:
            return
        if random.random() < CANCEL_SHARE:
            self._cancel(order)
            return
        token = "tok_decline" if random.random() < DECLINE_SHARE else "tok_approve"
        status = self._pay(order, token)
        if status == "declined":
            if random.random() >= RETRY_AFTER_DECLINE:
                self._cancel(order)
                return
            status = self._pay(order, "tok_approve")
        if status == "captured":
            self._read_order(order["id"], "paid")

    @task(2)
    def my_orders(self) -> None:
        """My orders, newest first: every one mine, none missing, none extra."""
        if not self._session():
            return
        low, high = min(self.placed, LIST_LIMIT), min(self.placed + self.unsure, LIST_LIMIT)

        def mine(reply: Reply) -> str | None:
            problem = has_items(reply)
            if problem:
                return problem
            items = reply.body["items"]
            if any(o.get("user_id") != self.user_id for o in items):
                return "the list holds another user's order"
            if not low <= len(items) <= high:
                return "the list misses placed orders or has extra ones"
            return None

        self._request("GET", f"/api/v1/orders?limit={LIST_LIMIT}", ROUTE_ORDERS, check=mine)

    @task(1)
    def summary(self) -> None:
        """The read model: it may lag, but never counts more orders than were placed."""
        if not self._session():
            return
        most = self.placed + self.unsure

        def bounded(reply: Reply) -> str | None:
            count = reply.body.get("orders_count")
            if not isinstance(count, int):
                return "no orders_count in the body"
            return None if count <= most else "the summary counts more orders than were placed"

        self._request("GET", ROUTE_SUMMARY, ROUTE_SUMMARY, check=bounded)

    # -- steps -----------------------------------------------------------------------------

    def _place(self, lines: list[dict[str, Any]]) -> dict[str, Any] | None:
        """``POST /api/v1/orders`` under a fresh key; sometimes the same again (a replay)."""
        body = {"items": lines, "shipping_address": ADDRESS}
        key = f"load-{uuid.uuid4()}"

        def placed(reply: Reply) -> str | None:
            if reply.status == 409:  # expected, unless it is not about stock (key in flight)
                if isinstance(reply.body.get("items"), list):
                    return None
                return "409 without the insufficient-stock items"
            return check_order(reply.body, lines)

        got = self._request("POST", ROUTE_ORDERS, ROUTE_ORDERS, body=body, key=key,
                            ok=(201,), expected=(409,), check=placed)  # fmt: skip
        if got is None:
            self.unsure += 1  # it may exist: no usable answer
            return None
        if got.status == 409:
            OUTCOMES["out_of_stock"] += 1
            return None
        order: dict[str, Any] = got.body
        self.placed += 1
        OUTCOMES["orders_placed"] += 1
        if random.random() < REPLAY_SHARE:

            def same(reply: Reply) -> str | None:
                if not reply.replayed:
                    return "no Idempotent-Replayed: true"
                return None if reply.body.get("id") == order["id"] else "another order id"

            if self._request("POST", ROUTE_ORDERS, ROUTE_ORDERS_REPLAY, body=body, key=key,
                             ok=(201,), check=same):  # fmt: skip
                OUTCOMES["replays_ok"] += 1
        return order


def has_items(reply: Reply) -> str | None:
    items = reply.body.get("items")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return "no items list in the body"
    return None


def status_is(reply: Reply, status: str) -> str | None:
    got = reply.body.get("status")
    return None if got == status else f"the order is {got!r}, not {status!r}"


def check_order(doc: dict[str, Any], lines: list[dict[str, Any]]) -> str | None:
    """A new order: pending, the lines asked for, a total that adds up."""
    if not doc.get("id") or doc.get("status") != "pending":
        return f"a new order with id {doc.get('id')!r}, status {doc.get('status')!r}"
    items = doc.get("items")
    if not isinstance(items, list) or len(items) != len(lines):
        return "the order does not have the lines asked for"
    try:
        total = sum(int(i["unit_price_cents"]) * int(i["quantity"]) for i in items)
    except (KeyError, TypeError, ValueError):
        return "an order line without unit_price_cents or quantity"
    if total != doc.get("total_cents"):
        return "total_cents is not the sum of the lines"
    return None
