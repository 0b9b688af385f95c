"""Load for cygate's REST API (locust, ``FastHttpUser``): catalog browsers and shoppers.

Two user classes; pick them by name (``locust -f loadtests/locustfile.py CatalogBrowser``), or with
``LOAD_SCENARIO`` through ``loadtests/run.sh``: ``browse`` (default, ``CatalogBrowser``), ``shop``
(``Shopper``) or ``mixed`` (both, 3 browsers to 1 shopper by their ``weight``). Without a class
name locust runs both.

``CatalogBrowser`` (here) loads the category tree, lists products (sometimes filtered by a
category taken from the tree), follows ``next_cursor`` a few pages deep, opens products it saw
in those lists, and now and then hits ``/healthz``. ``Shopper`` (``shoppers.py``) registers,
searches, orders, pays or cancels and reads its orders back: see that module. Requests are named
by route template so the statistics group per endpoint, not per URL.

Run it through ``loadtests/run.sh`` (headless, CSV + HTML reports, SLO gate), or directly::

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 CatalogBrowser

SLO gate: when locust quits, the process exit code is 1 if the failure ratio of all requests
exceeds ``--max-fail-ratio`` (env ``LOAD_MAX_FAIL_RATIO``, default 0.01), if no request was made
at all, or if ``--max-p95-ms`` (env ``LOAD_MAX_P95_MS``, default 0 = off) is set and the
aggregated 95th percentile is above it; 2 if the locustfile itself raised. This replaces
locust's default (exit 1 on any single failure, ``--exit-code-on-error``).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.stats import StatsEntry
from shoppers import OUTCOMES, Shopper  # locust puts this file's folder on sys.path

__all__ = ["CatalogBrowser", "Shopper"]

log = logging.getLogger("cygate.loadtest")

PAGE_SIZE = 20
MAX_PAGES = 5  # how deep a shopper follows next_cursor before starting over
SEEN_IDS = 500  # product ids remembered per user
CATEGORY_FILTER_SHARE = 0.4  # share of first pages filtered by a category

ROUTE_CATEGORIES = "/api/v1/categories"
ROUTE_PRODUCTS = "/api/v1/products"
ROUTE_PRODUCTS_BY_CATEGORY = "/api/v1/products?category={id}"
ROUTE_PRODUCTS_NEXT = "/api/v1/products?cursor={cursor}"
ROUTE_PRODUCT = "/api/v1/products/{id}"
ROUTE_HEALTHZ = "/healthz"


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--max-fail-ratio",
        type=float,
        env_var="LOAD_MAX_FAIL_RATIO",
        default=0.01,
        help="SLO gate: exit 1 when failed/total requests is above this (default 0.01)",
    )
    parser.add_argument(
        "--max-p95-ms",
        type=float,
        env_var="LOAD_MAX_P95_MS",
        default=0.0,
        help="SLO gate: exit 1 when the aggregated p95 response time is above this (0 = off)",
    )
    parser.add_argument(
        "--slo-report",
        default="",
        help="write the final totals and the SLO verdict to this JSON file",
    )


def _entry(entry: StatsEntry) -> dict[str, Any]:
    has = entry.num_requests > 0
    return {
        "method": entry.method or "",
        "name": entry.name,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "fail_ratio": round(entry.fail_ratio, 6),
        "rps": round(entry.total_rps, 2),
        "avg_ms": round(entry.avg_response_time, 2),
        "p50_ms": entry.get_response_time_percentile(0.50) if has else None,
        "p95_ms": entry.get_response_time_percentile(0.95) if has else None,
        "p99_ms": entry.get_response_time_percentile(0.99) if has else None,
        "max_ms": entry.max_response_time if has else None,
    }


@events.quitting.add_listener
def _slo_gate(environment: Environment, **_kwargs: Any) -> None:
    """Set the process exit code from the final totals (on the master/standalone runner).

    locust's own ``--exit-code-on-error`` fails a run on any single failed request; a load test
    against a real server wants a ratio, so the documented hook is used instead: a ``quitting``
    listener that sets ``environment.process_exit_code``.
    """
    options = environment.parsed_options
    if environment.runner is None or options is None or not hasattr(options, "max_fail_ratio"):
        return
    total = environment.stats.total
    max_ratio = float(options.max_fail_ratio)
    max_p95 = float(options.max_p95_ms)
    problems: list[str] = []
    code = 0
    if environment.runner.exceptions:
        problems.append(f"the locustfile raised {len(environment.runner.exceptions)} exception(s)")
        code = 2
    if total.num_requests == 0:
        problems.append("no request was made")
    elif total.fail_ratio > max_ratio:
        problems.append(f"failure ratio {total.fail_ratio:.4f} > {max_ratio}")
    if max_p95 > 0 and total.num_requests:
        p95 = total.get_response_time_percentile(0.95)
        if p95 > max_p95:
            problems.append(f"p95 {p95:.0f} ms > {max_p95:.0f} ms")
    if problems and not code:
        code = 1
    environment.process_exit_code = code
    if OUTCOMES:
        log.info("shopper outcomes: %s", ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items())))
    if problems:
        log.error("SLO gate: FAILED: %s", "; ".join(problems))
    else:
        log.info(
            "SLO gate: passed (%d requests, failure ratio %.4f <= %s)",
            total.num_requests,
            total.fail_ratio,
            max_ratio,
        )
    if options.slo_report:
        report = {
            "passed": not problems,
            "problems": problems,
            "exit_code": code,
            "max_fail_ratio": max_ratio,
            "max_p95_ms": max_p95 or None,
            "host": environment.host,
            "total": _entry(total),
            "outcomes": dict(sorted(OUTCOMES.items())),  # Shopper's business outcomes
            "endpoints": [
                _entry(e) for e in sorted(environment.stats.entries.values(), key=lambda e: e.name)
            ],
        }
        with open(options.slo_report, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)


def _category_ids(tree: list[dict[str, Any]]) -> list[str]:
    """Every category id in the tree, children included."""
    ids: list[str] = []
    stack = list(tree)
    while stack:
        node = stack.pop()
        if node.get("id"):
            ids.append(str(node["id"]))
        stack.extend(node.get("children") or [])
    return ids


def _check_items(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        return "no items list in the body"
    return None


def _check_page(body: Any) -> str | None:
    """A product page: ``{"items": [{"id": ...}, ...], "next_cursor": str | null}``."""
    problem = _check_items(body)
    if problem:
        return problem
    if not all(isinstance(p, dict) and p.get("id") for p in body["items"]):
        return "an item has no id"
    cursor = body.get("next_cursor", ...)
    if cursor is not None and not isinstance(cursor, str):
        return f"next_cursor is {cursor!r}, neither a string nor null"
    return None


class CatalogBrowser(FastHttpUser):
    """A shopper browsing the catalog, never writing anything."""

    weight = 3  # with Shopper's 1 in a mixed run
    host = os.environ.get("CYGATE_URL", "http://127.0.0.1:8000")
    wait_time = between(0.01, 0.1)
    network_timeout = 10.0
    connection_timeout = 5.0
    default_headers = {"Accept": "application/json", "User-Agent": "cygate-loadtest"}

    def on_start(self) -> None:
        self.category_ids: list[str] = []
        self.product_ids: deque[str] = deque(maxlen=SEEN_IDS)
        self.page_filter: dict[str, str] = {}  # the filter the current cursor belongs to
        self.next_cursor: str | None = None
        self.pages_followed = 0
        self.categories()

    # -- helpers ---------------------------------------------------------------------------

    def _get_json(
        self, path: str, name: str, check: Callable[[Any], str | None] | None = None
    ) -> Any | None:
        """GET; a failure on a non-2xx status, a body that is not JSON, or a failed ``check``
        (which returns an error message or None). The decoded body, or None on failure."""
        with self.client.get(path, name=name, catch_response=True) as resp:
            status = resp.status_code or 0  # 0: no HTTP answer (connection error, timeout)
            if not 200 <= status < 300:
                # Short messages (no URL, no ids) so the failures table groups them.
                error = getattr(resp, "error", None)
                if status == 0 and error is not None:
                    resp.failure(f"no response: {type(error).__name__}: {error}")
                else:
                    resp.failure(f"HTTP {status}")
                return None
            try:
                body = resp.json()
            except ValueError as exc:
                resp.failure(f"body is not JSON: {exc}")
                return None
            problem = check(body) if check else None
            if problem:
                resp.failure(problem)
                return None
            resp.success()
            return body

    def _list_products(self, query: dict[str, str], name: str) -> None:
        body = self._get_json(f"{ROUTE_PRODUCTS}?{urlencode(query)}", name, _check_page)
        if body is None:
            self.next_cursor = None
            return
        self.product_ids.extend(str(p["id"]) for p in body["items"])
        self.next_cursor = body["next_cursor"]

    # -- tasks -----------------------------------------------------------------------------

    @task(1)
    def healthz(self) -> None:
        self._get_json(ROUTE_HEALTHZ, ROUTE_HEALTHZ)

    @task(2)
    def categories(self) -> None:
        body = self._get_json(ROUTE_CATEGORIES, ROUTE_CATEGORIES, _check_items)
        if body is not None:
            self.category_ids = _category_ids(body["items"])

    @task(5)
    def first_page(self) -> None:
        query = {"limit": str(PAGE_SIZE)}
        name = ROUTE_PRODUCTS
        if self.category_ids and random.random() < CATEGORY_FILTER_SHARE:
            query["category"] = random.choice(self.category_ids)
            name = ROUTE_PRODUCTS_BY_CATEGORY
        self.page_filter = {k: v for k, v in query.items() if k != "limit"}
        self.pages_followed = 0
        self._list_products(query, name)

    @task(4)
    def next_page(self) -> None:
        if not self.next_cursor or self.pages_followed >= MAX_PAGES:
            self.first_page()
            return
        query = {"limit": str(PAGE_SIZE), **self.page_filter, "cursor": self.next_cursor}
        self.pages_followed += 1
        self._list_products(query, ROUTE_PRODUCTS_NEXT)

    @task(8)
    def product(self) -> None:
        if not self.product_ids:
            self.first_page()
            return
        product_id = random.choice(self.product_ids)

        def same_id(body: Any) -> str | None:
            got = body.get("id") if isinstance(body, dict) else None
            return None if str(got) == product_id else f"asked for {product_id}, got id {got!r}"

        self._get_json(f"{ROUTE_PRODUCTS}/{product_id}", ROUTE_PRODUCT, same_id)
