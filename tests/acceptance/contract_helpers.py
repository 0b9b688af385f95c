"""The published document against what a running gateway did: the statuses it answered (its
``/metrics``, by route) that the document does not list for that operation."""

from __future__ import annotations

import re
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

METHODS = ("get", "head", "post", "put", "patch", "delete", "options")
DOCS_ROUTES = "/schema"
"""The routes that serve the document itself and its UI: not described by it."""


def documented(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """``(METHOD, path) -> operation`` of an OpenAPI document."""
    return {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def route_path(pattern: str) -> str:
    """``/api/v1/orders/{order_id:uuid}`` -> ``/api/v1/orders/{order_id}``."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", pattern)


def answered(metrics: str) -> set[tuple[str, str, int]]:
    """``(METHOD, path, status)`` of every answer of a local route the gateway counted."""
    seen: set[tuple[str, str, int]] = set()
    for family in text_string_to_metric_families(metrics):
        if family.name != "cygate_http_requests":
            continue
        for sample in family.samples:
            route = sample.labels["route"]
            if route.startswith("<") or sample.value == 0:
                continue  # unmatched paths and OPTIONS are the edge's, not an operation's
            _, _, pattern = route.partition(" ")
            if pattern.startswith(DOCS_ROUTES):
                continue
            seen.add((sample.labels["method"], route_path(pattern), int(sample.labels["status"])))
    return seen


def undocumented_answers(url: str) -> tuple[set[tuple[str, str, int]], list[Any]]:
    """What the gateway at ``url`` answered, and those answers its document does not list
    (for a route the document does not describe at all, every answer: its routes are the
    route file's upstream routes, which the metrics label by their own names)."""
    with httpx.Client(base_url=url, timeout=10) as c:
        doc = c.get("/schema/openapi.json").json()
        metrics = c.get("/metrics").text
    ops = documented(doc)
    seen = answered(metrics)
    missing = sorted(
        (m, p, s)
        for m, p, s in seen
        if (m, p) in ops and str(s) not in ops[(m, p)].get("responses", {})
    )
    return seen, missing
