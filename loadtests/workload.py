"""The mix's definition without locust: who does what how often, and the data it draws from.

``mix.py`` (the locust workload) and ``benchmarks/macro/mix.py`` (the same mix as an open-loop
request file for the C generator) both take their weights from here, so the two cannot drift
apart. docs/load.md lists the table. No locust here (it patches the standard library when
imported), so anything can import it.

Weights are per user class (locust picks a class by its weight) and per task within a class;
each task makes a documented number of requests on average (``TaskSpec.requests``), which is how
a rate becomes users.
"""

from __future__ import annotations

import json
import random
import urllib.request
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlencode

from popularity import Zipf, queries_from_names

__all__ = [
    "ADDRESS",
    "CATEGORY_FILTER_SHARE",
    "CUSTOMER_TASKS",
    "CUSTOMER_WEIGHT",
    "DECLINE_SHARE",
    "MANAGER_TASKS",
    "MANAGER_THINK_S",
    "PAGE",
    "READ_BACK_SHARE",
    "TYPO_SHARE",
    "VISITOR_TASKS",
    "VISITOR_WEIGHT",
    "ZIPF_SEED",
    "Catalog",
    "TaskSpec",
    "read_catalog",
    "with_typo",
]


class TaskSpec(NamedTuple):
    weight: int
    requests: float  # made by one run of the task, on average


VISITOR_WEIGHT = 70
VISITOR_TASKS = {
    "product": TaskSpec(40, 1),
    "search": TaskSpec(15, 1),
    "list": TaskSpec(10, 1),
    "next_page": TaskSpec(5, 1),
    "categories": TaskSpec(3, 1),
}
CUSTOMER_WEIGHT = 29
CUSTOMER_TASKS = {
    "product": TaskSpec(20, 1),
    "me": TaskSpec(10, 1),
    "my_orders": TaskSpec(6, 1),
    "search": TaskSpec(5, 1),
    "summary": TaskSpec(3, 1),
    "checkout": TaskSpec(3, 3.2),  # search, order, pay, READ_BACK_SHARE read the order back
    "refresh": TaskSpec(2, 1),
    "sign_in": TaskSpec(1, 1),
}
MANAGER_THINK_S = 2.0  # the one catalog manager's default pace (LOAD_MANAGER_THINK_S)
MANAGER_TASKS = {
    "reprice": TaskSpec(6, 2),  # GET a popular product, PATCH its price with If-Match
    "restock": TaskSpec(3, 2),  # the same, stock
    "create_and_delete": TaskSpec(1, 2),
}

PAGE = 20  # items per list, search and order page
CATEGORY_FILTER_SHARE = 0.4  # first pages filtered by a category
TYPO_SHARE = 0.05  # searches with a letter dropped
DECLINE_SHARE = 0.05  # payments with tok_decline
READ_BACK_SHARE = 0.2  # paid orders read back
ZIPF_SEED = 20_231  # the popularity order every load process shares
ADDRESS = {"name": "Load Customer", "line1": "1 Test Street", "city": "Testville", "country": "NL"}


def with_typo(query: str, rng: random.Random | None = None) -> str:
    """``query``, with one inner letter dropped ``TYPO_SHARE`` of the time (long words only)."""
    r = rng or random
    if r.random() >= TYPO_SHARE or len(query) < 5:
        return query
    cut = r.randrange(1, len(query) - 1)
    return query[:cut] + query[cut + 1 :]


@dataclass(frozen=True, slots=True)
class Catalog:
    """What the load draws from: product ids, search queries and category ids."""

    products: Zipf[str]
    queries: Zipf[str]
    categories: tuple[str, ...]


def _get(url: str) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def read_catalog(base: str, *, max_products: int, zipf_s: float) -> Catalog:
    """The catalog as the API lists it (up to ``max_products`` products, their names' search
    queries, every category), ranked Zipf with exponent ``zipf_s`` and :data:`ZIPF_SEED`."""
    base = base.rstrip("/")
    tree = _get(f"{base}/api/v1/categories").get("items") or []
    categories: list[str] = []
    stack = list(tree)
    while stack:
        node = stack.pop()
        categories.append(str(node["id"]))
        stack.extend(node.get("children") or [])
    ids: list[str] = []
    names: list[str] = []
    query = {"limit": "100"}
    while len(ids) < max_products:
        page = _get(f"{base}/api/v1/products?{urlencode(query)}")
        for p in page.get("items") or []:
            ids.append(str(p["id"]))
            names.append(str(p.get("name") or ""))
        if not page.get("next_cursor"):
            break
        query = {"limit": "100", "cursor": page["next_cursor"]}
    if not ids:
        raise RuntimeError(f"{base}: the catalog is empty (run `cygate seed` first)")
    words = queries_from_names([n for n in names if n])
    return Catalog(
        Zipf(ids, zipf_s, ZIPF_SEED),
        Zipf(words or ["product"], zipf_s, ZIPF_SEED),
        tuple(sorted(categories)),
    )
