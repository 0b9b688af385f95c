"""Load for cygate's REST API (locust, ``FastHttpUser``).

User classes, picked by name (``locust -f loadtests/locustfile.py Visitor Customer``) or with
``LOAD_SCENARIO`` through ``loadtests/tool.py``:

* ``mix`` (the default): the seed's traffic, ``Visitor``, ``Customer`` and ``CatalogManager``
  (``mix.py``; weights and think times in docs/load.md), driven by a load shape in offered
  requests per second (``LOAD_SHAPE``: steady, step, spike, soak; ``shapes.py``);
* ``browse`` (``CatalogBrowser``, here), ``shop`` (``Shopper``, ``shoppers.py``) and ``mixed``
  (both, 3 to 1): closed-loop users (``--users``), no shape.

``CatalogBrowser`` loads the category tree, lists products (sometimes filtered by a category
taken from the tree), follows ``next_cursor`` a few pages deep, opens products it saw in those
lists, and now and then hits ``/healthz``. Requests are named by route template so the
statistics group per endpoint, not per URL.

SLO gate (``slo.py``): when locust quits, the master (or the standalone runner) merges the
endpoints into groups (browse, search, account, sign_in, auth, orders, payments,
catalog_admin) and sets the exit code: 1 when a group breaks its p95, p99 or error-ratio limit
(``--slo-p95-ms``, ``--slo-p99-ms``, ``--slo-error-ratio``, per group ``--slo``) or no request
was made; 2 when the locustfile raised. This replaces locust's default (exit 1 on any single
failed request). ``--slo-report`` writes the figures per endpoint and group and the verdict as
JSON.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any
from urllib.parse import urlencode

import slo
from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner
from mix import CatalogManager, Customer, Visitor, requests_per_user_second
from shapes import ParamError, load_params, select_shape
from shoppers import OUTCOMES, Shopper  # locust puts this file's folder on sys.path

__all__ = ["CatalogBrowser", "CatalogManager", "Customer", "Shopper", "Visitor"]

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

# The load shape named by LOAD_SHAPE (shapes.py), as the only shape class here so that locust
# runs it; none without LOAD_SHAPE (then --users/--run-time drive the run).
_SHAPE_INFO: dict[str, Any] | None = None
if os.environ.get("LOAD_SHAPE"):
    try:
        _params = load_params()
    except ParamError as exc:
        sys.exit(f"locustfile: {exc}")
    _per_user = requests_per_user_second()
    LoadShape = select_shape(_params, _per_user)
    _SHAPE_INFO = {**asdict(_params), "requests_per_user_second": round(_per_user, 3)}


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    defaults = slo.Limits()
    parser.add_argument(
        "--slo-p95-ms",
        type=float,
        env_var="LOAD_SLO_P95_MS",
        default=defaults.p95,
        help=f"SLO gate: each endpoint group's p95 in ms (default {defaults.p95:g}; 0 = off)",
    )
    parser.add_argument(
        "--slo-p99-ms",
        type=float,
        env_var="LOAD_SLO_P99_MS",
        default=defaults.p99,
        help=f"SLO gate: each endpoint group's p99 in ms (default {defaults.p99:g}; 0 = off)",
    )
    parser.add_argument(
        "--slo-error-ratio",
        type=float,
        env_var="LOAD_SLO_ERROR_RATIO",
        default=defaults.errors,
        help=f"SLO gate: each group's failed/total requests (default {defaults.errors:g})",
    )
    parser.add_argument(
        "--slo",
        env_var="LOAD_SLO",
        default="",
        help="SLO gate per group, e.g. auth.p95=400,orders.p99=off (groups: "
        + ", ".join(slo.GROUPS)
        + ")",
    )
    parser.add_argument(
        "--slo-report",
        default="",
        help="write the final totals, the groups and the SLO verdict to this JSON file",
    )


def _limits(options: Any) -> dict[str, slo.Limits]:
    def off_if_zero(value: float) -> float | None:
        return float(value) if value and value > 0 else None

    defaults = slo.Limits(
        p95=off_if_zero(options.slo_p95_ms),
        p99=off_if_zero(options.slo_p99_ms),
        errors=float(options.slo_error_ratio) if options.slo_error_ratio >= 0 else None,
    )
    return slo.parse_overrides(options.slo, defaults)


@events.quitting.add_listener
def _slo_gate(environment: Environment, **_kwargs: Any) -> None:
    """Set the process exit code from the final totals (on the master/standalone runner).

    locust's own ``--exit-code-on-error`` fails a run on any single failed request; a load test
    against a real server wants limits per endpoint group, so the documented hook is used
    instead: a ``quitting`` listener that sets ``environment.process_exit_code``.
    """
    options = environment.parsed_options
    runner = environment.runner
    if runner is None or options is None or not hasattr(options, "slo_p95_ms"):
        return
    if isinstance(runner, WorkerRunner):
        return  # the master judges the merged statistics
    try:
        limits = _limits(options)
    except ValueError as exc:
        log.error("SLO gate: %s", exc)
        environment.process_exit_code = 2
        return
    stats = environment.stats
    entries = sorted(stats.entries.values(), key=lambda e: (e.name, e.method or ""))
    groups = {g: slo.summarize(e) for g, e in slo.group_stats(stats, entries).items()}
    total = stats.total
    problems: list[str] = []
    code = 0
    if runner.exceptions:
        problems.append(f"the locustfile raised {len(runner.exceptions)} exception(s)")
        code = 2
    if total.num_requests == 0:
        problems.append("no request was made")
    problems.extend(slo.judge(groups, limits))
    if problems and not code:
        code = 1
    environment.process_exit_code = code
    if OUTCOMES:
        log.info("outcomes: %s", ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items())))
    if problems:
        log.error("SLO gate: FAILED: %s", "; ".join(problems))
    else:
        log.info("SLO gate: passed (%d requests, %d groups)", total.num_requests, len(groups))
    if options.slo_report:
        report = {
            "passed": not problems,
            "problems": problems,
            "exit_code": code,
            "limits": slo.limits_report(limits),
            "host": environment.host,
            "shape": _SHAPE_INFO,
            "total": slo.summarize(total),
            "groups": groups,
            "outcomes": dict(sorted(OUTCOMES.items())),  # business outcomes (standalone runs)
            "endpoints": [{**slo.summarize(e), "group": slo.group_of(e.method or "", e.name)}
                          for e in entries],
        }  # fmt: skip
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
