"""The seed's traffic as a locust workload: visitors, customers and a catalog manager.

The weights and request counts are the workload's definition, in ``workload.py`` (locust-free,
so the open-loop benchmark builds the same mix from them); docs/load.md lists them. The data
is whatever ``cygate seed`` made (at any scale): each load process reads the catalog once
through the API (:func:`catalog`, up to ``LOAD_CATALOG_MAX`` products) and draws products,
categories and search queries from it with Zipf-distributed popularity (exponent
``LOAD_ZIPF_S``, default 1.0; ranks shuffled with a fixed seed, so every worker agrees on which
products are popular). Hot products stay in the gateway's caches and the tail
misses: the miss share follows from the distribution, the catalog size and the TTLs.

* :class:`Visitor` (anonymous): product reads, searches, product lists and cursor pages, the
  category tree.
* :class:`Customer` (signed in): the same reads with a token, ``/users/me``, its orders and the
  order summary, token refresh, signing in again, and checkout (search, order one in-stock hit
  under an ``Idempotency-Key``, pay it through the processor simulator; 5 % declined). Accounts
  come from a pool per load process (``LOAD_ACCOUNTS``, registered on first use); each user
  signs in itself, so refresh-token families never collide.
* :class:`CatalogManager` (one, when ``LOAD_MANAGER_EMAIL``/``LOAD_MANAGER_PASSWORD`` name an
  account with the catalog_manager or admin role; ``scripts/load.sh`` makes one for a gateway
  it starts): reprices and restocks popular products (``If-Match`` from a fresh GET; 412 when a
  race lost is expected), creates a product and deletes it again.

Users pace themselves (:func:`paced`): a task starts on average every ``LOAD_THINK_S`` seconds
(exponential gaps, so arrivals are Poisson), whatever the latency, so the users offer a known
rate (:func:`requests_per_user_second`), which the shapes (``shapes.py``) turn into user counts.
A user that falls more than a second behind drops the backlog: the achieved rate then shows the
shortfall, as the capacity finder expects.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

from gevent.lock import Semaphore
from locust import task
from locust.exception import StopUser
from shoppers import OUTCOMES, ApiUser, Reply, check_order, has_items
from workload import (
    ADDRESS,
    CATEGORY_FILTER_SHARE,
    CUSTOMER_TASKS,
    CUSTOMER_WEIGHT,
    DECLINE_SHARE,
    MANAGER_TASKS,
    PAGE,
    READ_BACK_SHARE,
    VISITOR_TASKS,
    VISITOR_WEIGHT,
    Catalog,
    TaskSpec,
    read_catalog,
    with_typo,
)
from workload import (
    MANAGER_THINK_S as MANAGER_THINK_DEFAULT_S,
)

__all__ = [
    "MIX_CLASSES",
    "CatalogManager",
    "Customer",
    "Visitor",
    "catalog",
    "paced",
    "requests_per_user_second",
]

log = logging.getLogger("cygate.loadtest.mix")

F = TypeVar("F", bound=Callable[..., None])

THINK_S = float(os.environ.get("LOAD_THINK_S", "") or 0.5)
MANAGER_THINK_S = float(os.environ.get("LOAD_MANAGER_THINK_S", "") or MANAGER_THINK_DEFAULT_S)
ZIPF_S = float(os.environ.get("LOAD_ZIPF_S", "") or 1.0)
CATALOG_MAX = int(os.environ.get("LOAD_CATALOG_MAX", "") or 20_000)
ACCOUNTS = int(os.environ.get("LOAD_ACCOUNTS", "") or 100)
MAX_BEHIND_S = 1.0  # a user this far behind its schedule drops the backlog
TOKEN_MARGIN_S = 30.0  # refresh this long before the access token expires

ROUTE_PRODUCT = "/api/v1/products/{id}"
ROUTE_PRODUCT_SIGNED_IN = "/api/v1/products/{id} (signed in)"
ROUTE_PRODUCT_MANAGER = "/api/v1/products/{id} (manager)"
ROUTE_PRODUCTS = "/api/v1/products"
ROUTE_PRODUCTS_BY_CATEGORY = "/api/v1/products?category={id}"
ROUTE_PRODUCTS_NEXT = "/api/v1/products?cursor={cursor}"
ROUTE_CATEGORIES = "/api/v1/categories"
ROUTE_SEARCH = "/api/v1/search?q={q}"
ROUTE_ME = "/api/v1/users/me"
ROUTE_ORDERS = "/api/v1/orders"
ROUTE_SUMMARY = "/api/v1/users/me/orders/summary"
ROUTE_REGISTER = "/api/v1/auth/register"
ROUTE_LOGIN = "/api/v1/auth/login"
ROUTE_REFRESH = "/api/v1/auth/token (refresh_token)"


def mixtask(spec: TaskSpec) -> Callable[[F], F]:
    """A locust task of ``spec.weight`` that makes ``spec.requests`` requests on average
    (documented, and used to turn a rate into users)."""

    def mark(fn: F) -> F:
        fn.requests = spec.requests  # type: ignore[attr-defined]
        return task(spec.weight)(fn)

    return mark


def paced(think_s: float) -> Callable[[Any], float]:
    """A ``wait_time``: the next task is due an exponential gap (mean ``think_s``) after the
    previous one was due, not after it ended, so latency does not lower the offered rate."""

    def wait(user: Any) -> float:
        now = time.monotonic()
        due = getattr(user, "_due", now) + random.expovariate(1.0 / think_s)
        if due < now - MAX_BEHIND_S:
            due = now  # fell behind: the backlog is dropped, not sent in a burst
        user._due = due
        return max(0.0, due - now)

    return wait


_catalog: Catalog | None = None
_catalog_lock = Semaphore()


def catalog(host: str) -> Catalog:
    """The catalog as the API lists it, read once per process (not counted in the stats)."""
    global _catalog
    with _catalog_lock:
        if _catalog is None:
            _catalog = read_catalog(host, max_products=CATALOG_MAX, zipf_s=ZIPF_S)
            products = _catalog.products.items
            log.info(
                "catalog: %d products, %d queries, %d categories; top 1%% of products draw %.0f%%",
                len(products),
                len(_catalog.queries.items),
                len(_catalog.categories),
                100 * _catalog.products.share_of_top(max(1, len(products) // 100)),
            )
        return _catalog


def _same_id(want: str) -> Callable[[Reply], str | None]:
    return lambda r: None if r.body.get("id") == want else "another product's id"


class _Reader(ApiUser):
    """Reads every user of the mix makes (no tasks here)."""

    abstract = True
    wait_time = paced(THINK_S)

    def on_start(self) -> None:
        self.catalog = catalog(self.host)
        self.cursor: str | None = None
        self.cursor_filter: dict[str, str] = {}

    def read_product(self, name: str) -> Reply | None:
        pid = self.catalog.products.draw()
        return self._request("GET", f"{ROUTE_PRODUCTS}/{pid}", name, check=_same_id(pid))

    def search(self) -> Reply | None:
        q = with_typo(self.catalog.queries.draw())
        query = urlencode({"q": q, "limit": str(PAGE)})
        return self._request("GET", f"/api/v1/search?{query}", ROUTE_SEARCH, check=has_items)

    def first_page(self) -> None:
        query = {"limit": str(PAGE)}
        name = ROUTE_PRODUCTS
        if self.catalog.categories and random.random() < CATEGORY_FILTER_SHARE:
            query["category"] = random.choice(self.catalog.categories)
            name = ROUTE_PRODUCTS_BY_CATEGORY
        self.cursor_filter = {k: v for k, v in query.items() if k != "limit"}
        got = self._request("GET", f"{ROUTE_PRODUCTS}?{urlencode(query)}", name, check=has_items)
        self.cursor = got.body.get("next_cursor") if got else None

    def next_page(self) -> None:
        if not self.cursor:
            self.first_page()
            return
        query = {"limit": str(PAGE), **self.cursor_filter, "cursor": self.cursor}
        got = self._request(
            "GET", f"{ROUTE_PRODUCTS}?{urlencode(query)}", ROUTE_PRODUCTS_NEXT, check=has_items
        )
        self.cursor = got.body.get("next_cursor") if got else None


class Visitor(_Reader):
    """Anonymous browsing and search."""

    weight = VISITOR_WEIGHT

    @mixtask(VISITOR_TASKS["product"])
    def product(self) -> None:
        self.read_product(ROUTE_PRODUCT)

    @mixtask(VISITOR_TASKS["search"])
    def search_catalog(self) -> None:
        self.search()

    @mixtask(VISITOR_TASKS["list"])
    def list_products(self) -> None:
        self.first_page()

    @mixtask(VISITOR_TASKS["next_page"])
    def follow_cursor(self) -> None:
        self.next_page()

    @mixtask(VISITOR_TASKS["categories"])
    def categories(self) -> None:
        self._request("GET", ROUTE_CATEGORIES, ROUTE_CATEGORIES, check=has_items)


@dataclass(slots=True)
class Account:
    email: str
    password: str
    registered: bool = False
    lock: Semaphore = field(default_factory=Semaphore)


class _AccountPool:
    """``LOAD_ACCOUNTS`` accounts of this process, handed out in turn, registered on first use.
    Made on first use in each process (locust's ``--processes`` forks after import)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.pid = 0
        self.accounts: list[Account] = []
        self.next = 0

    def take(self) -> Account:
        if self.pid != os.getpid():
            tag = secrets.token_hex(4)
            password = secrets.token_urlsafe(18)
            self.accounts = [
                Account(f"load-{tag}-{i}@load.example.com", password) for i in range(self.size)
            ]
            self.pid, self.next = os.getpid(), 0
        account = self.accounts[self.next % self.size]
        self.next += 1
        return account


ACCOUNT_POOL = _AccountPool(ACCOUNTS)


class Customer(_Reader):
    """A signed-in customer: reads, its account and orders, tokens, checkout."""

    weight = CUSTOMER_WEIGHT

    def on_start(self) -> None:
        super().on_start()
        self.account = ACCOUNT_POOL.take()
        self.user_id: str | None = None
        self.refresh_token: str | None = None
        self.expires = 0.0
        with self.account.lock:
            if not self.account.registered:
                got = self._request(
                    "POST",
                    ROUTE_REGISTER,
                    ROUTE_REGISTER,
                    body={"email": self.account.email, "password": self.account.password,
                          "name": "Load Customer"},
                    ok=(201,),
                    auth=False,
                )  # fmt: skip
                self.account.registered = got is not None
        self.sign_in()

    def _tokens(self, reply: Reply | None) -> bool:
        if reply is None:
            self.token = None
            return False
        self.token = str(reply.body["access_token"])
        self.refresh_token = reply.body.get("refresh_token")
        self.expires = time.monotonic() + float(reply.body.get("expires_in") or 300)
        return True

    def _signed_in(self) -> bool:
        if self.token and time.monotonic() < self.expires - TOKEN_MARGIN_S:
            return True
        return self.refresh() if self.refresh_token else self.sign_in()

    @mixtask(CUSTOMER_TASKS["sign_in"])
    def sign_in(self) -> bool:
        got = self._request(
            "POST",
            ROUTE_LOGIN,
            ROUTE_LOGIN,
            body={"email": self.account.email, "password": self.account.password},
            check=lambda r: None if r.body.get("access_token") else "no access_token",
            auth=False,
        )
        return self._tokens(got)

    @mixtask(CUSTOMER_TASKS["refresh"])
    def refresh(self) -> bool:
        if not self.refresh_token:
            return self.sign_in()
        got = self._request(
            "POST",
            "/api/v1/auth/token",
            ROUTE_REFRESH,
            form={"grant_type": "refresh_token", "refresh_token": self.refresh_token},
            check=lambda r: None if r.body.get("access_token") else "no access_token",
            auth=False,
        )
        return self._tokens(got)

    @mixtask(CUSTOMER_TASKS["product"])
    def product(self) -> None:
        if self._signed_in():
            self.read_product(ROUTE_PRODUCT_SIGNED_IN)

    @mixtask(CUSTOMER_TASKS["search"])
    def search_catalog(self) -> None:
        self.search()

    @mixtask(CUSTOMER_TASKS["me"])
    def me(self) -> None:
        if self._signed_in():
            got = self._request("GET", ROUTE_ME, ROUTE_ME, check=_has_id)
            if got is not None:
                self.user_id = str(got.body["id"])

    @mixtask(CUSTOMER_TASKS["my_orders"])
    def my_orders(self) -> None:
        if not self._signed_in():
            return

        def mine(reply: Reply) -> str | None:
            problem = has_items(reply)
            if problem:
                return problem
            if self.user_id and any(o.get("user_id") != self.user_id for o in reply.body["items"]):
                return "the list holds another user's order"
            return None

        self._request("GET", f"{ROUTE_ORDERS}?limit={PAGE}", ROUTE_ORDERS, check=mine)

    @mixtask(CUSTOMER_TASKS["summary"])
    def summary(self) -> None:
        if self._signed_in():
            self._request("GET", ROUTE_SUMMARY, ROUTE_SUMMARY, check=_has_count)

    @mixtask(CUSTOMER_TASKS["checkout"])
    def checkout(self) -> None:
        """Search, order one in-stock hit, pay it (sometimes read the order back)."""
        if not self._signed_in():
            return
        found = self.search()
        if found is None:
            return
        in_stock = [h for h in found.body["items"] if int(h.get("stock") or 0) > 0]
        if not in_stock:
            OUTCOMES["nothing_to_buy"] += 1
            return
        lines = [{"product_id": random.choice(in_stock)["id"], "quantity": 1}]
        body = {"items": lines, "shipping_address": ADDRESS}

        def placed(reply: Reply) -> str | None:
            if reply.status == 409:
                return None if isinstance(reply.body.get("items"), list) else "409 not stock"
            return check_order(reply.body, lines)

        got = self._request("POST", ROUTE_ORDERS, ROUTE_ORDERS, body=body,
                            key=f"load-{uuid.uuid4()}", ok=(201,), expected=(409,),
                            check=placed)  # fmt: skip
        if got is None:
            return
        if got.status == 409:
            OUTCOMES["out_of_stock"] += 1
            return
        OUTCOMES["orders_placed"] += 1
        token = "tok_decline" if random.random() < DECLINE_SHARE else "tok_approve"
        if self._pay(got.body, token) == "captured" and random.random() < READ_BACK_SHARE:
            self._read_order(got.body["id"], "paid")


def _has_id(reply: Reply) -> str | None:
    return None if reply.body.get("id") else "no id in the body"


def _has_count(reply: Reply) -> str | None:
    return None if isinstance(reply.body.get("orders_count"), int) else "no orders_count"


class CatalogManager(_Reader):
    """Catalog management: repricing, restocking, a product created and deleted again."""

    fixed_count = 1
    weight = 1
    wait_time = paced(MANAGER_THINK_S)

    def on_start(self) -> None:
        super().on_start()
        self.credentials = (
            os.environ.get("LOAD_MANAGER_EMAIL", ""),
            os.environ.get("LOAD_MANAGER_PASSWORD", ""),
        )
        if not all(self.credentials):
            log.warning("no LOAD_MANAGER_EMAIL/LOAD_MANAGER_PASSWORD: no catalog management")
            raise StopUser()
        self._sign_in()

    def _sign_in(self) -> None:
        email, password = self.credentials
        got = self._request(
            "POST",
            ROUTE_LOGIN,
            ROUTE_LOGIN,
            body={"email": email, "password": password},
            check=lambda r: None if r.body.get("access_token") else "no access_token",
            auth=False,
        )
        if got is None:
            raise StopUser()
        self.token = str(got.body["access_token"])
        self.expires = time.monotonic() + float(got.body.get("expires_in") or 300)

    def _fresh(self) -> Reply | None:
        """A popular product with its ETag (signing in again when the token is old)."""
        if time.monotonic() > self.expires - TOKEN_MARGIN_S:
            self._sign_in()
        pid = self.catalog.products.draw()
        return self._request(
            "GET", f"{ROUTE_PRODUCTS}/{pid}", ROUTE_PRODUCT_MANAGER, check=_same_id(pid)
        )

    def _patch(self, product: Reply, change: dict[str, Any]) -> None:
        self._request(
            "PATCH",
            f"{ROUTE_PRODUCTS}/{product.body['id']}",
            ROUTE_PRODUCT,
            body=change,
            headers={"If-Match": product.etag or ""},
            expected=(412,),  # changed since the GET: a lost race, not a fault
        )

    @mixtask(MANAGER_TASKS["reprice"])
    def reprice(self) -> None:
        got = self._fresh()
        if got is not None:
            price = int(got.body.get("price_cents") or 100)
            self._patch(got, {"price_cents": max(99, round(price * random.uniform(0.95, 1.05)))})

    @mixtask(MANAGER_TASKS["restock"])
    def restock(self) -> None:
        got = self._fresh()
        if got is not None:
            self._patch(got, {"stock": 500})

    @mixtask(MANAGER_TASKS["create_and_delete"])
    def create_and_delete(self) -> None:
        if not self.catalog.categories:
            return
        new = {
            "sku": f"LOAD-{secrets.token_hex(6).upper()}",
            "name": "Load Test Product",
            "price_cents": 1999,
            "category_id": random.choice(self.catalog.categories),
            "stock": 10,
        }
        got = self._request("POST", ROUTE_PRODUCTS, ROUTE_PRODUCTS, body=new, ok=(201,),
                            check=_has_id)  # fmt: skip
        if got is not None:
            self._request("DELETE", f"{ROUTE_PRODUCTS}/{got.body['id']}", ROUTE_PRODUCT,
                          headers={"If-Match": got.etag or ""}, ok=(204,))  # fmt: skip


MIX_CLASSES: tuple[type[ApiUser], ...] = (Visitor, Customer, CatalogManager)


def requests_per_iteration(cls: type[Any]) -> float:
    """Mean requests one task of ``cls`` makes (its tasks' declared counts, by weight)."""
    tasks = [t for t in cls.tasks if hasattr(t, "requests")]
    return sum(t.requests for t in tasks) / len(tasks)


def requests_per_user_second(think_s: float = THINK_S) -> float:
    """Requests per second one user of the mix offers, averaged over the weighted classes
    (the fixed single manager left out)."""
    weighted = [c for c in MIX_CLASSES if not getattr(c, "fixed_count", 0)]
    total = sum(c.weight for c in weighted)
    mean = sum(c.weight * requests_per_iteration(c) for c in weighted) / total
    return mean / think_s


def _check_positive() -> None:
    for name, value in (
        ("LOAD_THINK_S", THINK_S),
        ("LOAD_MANAGER_THINK_S", MANAGER_THINK_S),
        ("LOAD_ZIPF_S", ZIPF_S),
    ):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}={value}: must be above 0")


_check_positive()
