"""The SLO gate per endpoint group: p95, p99 and the error ratio of each group of endpoints.

Every request name (the route template locust groups by) belongs to one group
(:func:`group_of`): browse, search, account, sign_in, auth, orders, payments, catalog_admin,
other. Each group must hold its limits. Defaults: the seed's p95 < 200 ms and < 0.1 % errors,
and p99 < 500 ms; sign_in, which hashes passwords, p95 < 500 ms and p99 < 1 s. ``--slo`` (env
``LOAD_SLO``) changes them per group, e.g. ``sign_in.p95=800,orders.p99=1000,search.errors=0.01``
(``off`` drops a limit). A run passes when every group with requests holds its limits, at least
one request was made and the locustfile raised nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # locust patches the standard library when imported: only where it runs
    from locust.stats import RequestStats, StatsEntry

__all__ = [
    "GROUPS",
    "Limits",
    "group_of",
    "group_stats",
    "judge",
    "parse_overrides",
    "summarize",
]

GROUPS = (
    "browse",
    "search",
    "account",
    "sign_in",
    "auth",
    "orders",
    "payments",
    "catalog_admin",
    "other",
)
_WRITE = ("POST", "PATCH", "PUT", "DELETE")


def group_of(method: str, name: str) -> str:
    """The endpoint group of a request (method, locust name)."""
    method = method.upper()
    if name.startswith(("/api/v1/auth/login", "/api/v1/auth/register")):
        return "sign_in"
    if name.startswith("/api/v1/auth/"):
        return "auth"
    if "/payments" in name:
        return "payments"
    if name.startswith("/api/v1/orders") and method in _WRITE:
        return "orders"
    if name.startswith(("/api/v1/products", "/api/v1/categories")):
        if method in _WRITE or name.endswith("(manager)"):
            return "catalog_admin"
        return "browse"
    if name.startswith("/api/v1/search"):
        return "search"
    if name.startswith(("/api/v1/users/", "/api/v1/orders")):
        return "account"
    if name.startswith("/healthz"):
        return "browse"
    return "other"


@dataclass(frozen=True, slots=True)
class Limits:
    """A group's limits; None: not checked."""

    p95: float | None = 200.0  # ms
    p99: float | None = 500.0  # ms
    errors: float | None = 0.001  # failed / total


SIGN_IN_LATENCY = (500.0, 1000.0)
"""sign_in's p95 and p99 defaults (ms): each sign-in and registration hashes a password with
Argon2id, deliberately slow (tens of milliseconds of CPU), so it gets its own limits."""


def parse_overrides(text: str, defaults: Limits) -> dict[str, Limits]:
    """``group.limit=value,...`` (limit: p95, p99, errors; value: a number or ``off``) into
    the limits of every group; ValueError with a one-line message on a bad item. The sign_in
    group's latency limits are :data:`SIGN_IN_LATENCY` unless overridden."""
    limits = dict.fromkeys(GROUPS, defaults)
    limits["sign_in"] = replace(defaults, p95=SIGN_IN_LATENCY[0], p99=SIGN_IN_LATENCY[1])
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        group, dot, limit = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"LOAD_SLO item {item!r}: expected group.limit=value")
        if group not in GROUPS:
            raise ValueError(f"LOAD_SLO item {item!r}: unknown group; known: {', '.join(GROUPS)}")
        if limit not in ("p95", "p99", "errors"):
            raise ValueError(f"LOAD_SLO item {item!r}: limit must be p95, p99 or errors")
        number: float | None = None
        if value.strip().lower() != "off":
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"LOAD_SLO item {item!r}: not a number or off") from None
            if not math.isfinite(number) or number < 0:
                raise ValueError(f"LOAD_SLO item {item!r}: must be 0 or more")
        limits[group] = replace(limits[group], **{limit: number})
    return limits


def group_stats(stats: RequestStats, entries: Iterable[StatsEntry]) -> dict[str, StatsEntry]:
    """The entries merged per group (only groups that have requests)."""
    from locust.stats import StatsEntry

    merged: dict[str, StatsEntry] = {}
    for entry in entries:
        group = group_of(entry.method or "", entry.name)
        if group not in merged:
            merged[group] = StatsEntry(stats, group, "")
        merged[group].extend(entry)
    return {g: merged[g] for g in GROUPS if g in merged and merged[g].num_requests}


def summarize(entry: StatsEntry) -> dict[str, Any]:
    """The figures of one entry (an endpoint, a group or the total)."""
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


def judge(groups: Mapping[str, dict[str, Any]], limits: Mapping[str, Limits]) -> list[str]:
    """The broken limits (empty: the SLO holds), one message per breach, from the
    :func:`summarize`\\ d groups."""
    problems: list[str] = []
    for group, figures in groups.items():
        limit = limits.get(group, Limits())
        for key, bound, unit in (("p95_ms", limit.p95, "ms"), ("p99_ms", limit.p99, "ms")):
            value = figures.get(key)
            if bound is not None and value is not None and value > bound:
                problems.append(f"{group}: {key[:3]} {value:.0f} {unit} > {bound:g} {unit}")
        if limit.errors is not None and figures["fail_ratio"] > limit.errors:
            problems.append(f"{group}: errors {figures['fail_ratio']:.4f} > {limit.errors:g}")
    return problems


def limits_report(limits: Mapping[str, Limits]) -> dict[str, dict[str, float | None]]:
    return {g: asdict(limit) for g, limit in limits.items()}
