"""The seed's traffic mix, open loop, against one gateway instance (``make bench-mix``).

locust cannot offer the shop's mix at 10,000 req/s on a small machine; the C generator
(``fixedrate.c``) can, from a request file. From the repository root::

    .venv/bin/python -m benchmarks.macro.mix                          # 10000 req/s, 30 s
    .venv/bin/python -m benchmarks.macro.mix --rate 3000 --duration 10 --keep-db
    .venv/bin/python -m benchmarks.macro.mix --find --start 1000 --step 1000 --max 12000

1. **Data**: database ``cygate_bench_mix`` on ``DATABASE_URL``'s server (reused as it is with
   ``--keep-db``), migrated and seeded with the gateway's own CLI (``--products``, 20000; 40
   categories, 50 users: loadtests' defaults); Redis keys under ``cygate-bench-mix:``.
2. **Servers** (``procs.ServerProcess``, each in its own process group, always killed):
   ``cygate serve`` on a free port (``--workers``, default the gateway's own), and, when
   payments are in the mix, the payment processor simulator with webhooks back to the gateway
   (as ``scripts/run.sh`` starts it). No per-caller or registration limit (the load comes from
   one address), and an access-token lifetime of a day, so the tokens made beforehand outlive
   any run.
3. **Preparation** through the API (not measured): a pool of customers (``--customers``)
   registered and signed in; the catalog, categories and search queries read as
   ``loadtests/mix.py`` reads them (Zipf popularity); list cursors; for each run, one fresh
   refresh token per refresh request (single-use rotation: a reused token revokes its family),
   one pending order per payment, and the ETag of each product the catalog manager patches.
4. **The request file**: the mix's weights (``loadtests/workload.py``, the locust mix's own) as
   labelled requests in a seeded random order, one group per label, enough for the warm-up and
   the run without cycling (every Idempotency-Key, refresh token and pending order used once).
5. **Run**: a warm-up, then ``--duration`` seconds at ``--rate``, the gateway's process-tree CPU
   and PostgreSQL's (the postmaster's tree) read from ``/proc`` around it, the cache's hit and
   miss counts from ``/metrics`` before and after. One table per group and overall.
   ``--find`` steps the rate instead and reports the highest sustainable one.

**Sign-in and refresh shares.** The locust mix compresses a person's think time, so its
customers sign in (Argon2id, ~24 ms of CPU) every few dozen requests: at 10,000 req/s that is
more than a core of hashing. Here a customer's visit is :data:`SESSION_S` (10 min) at one
request every :data:`PERSON_THINK_S` (10 s); it starts with a password sign-in one visit in
:data:`VISITS_PER_SIGN_IN` (10: a new device, a lapsed refresh family) and with a refresh
otherwise (the app kept its refresh token), plus one refresh per access-token lifetime inside
the visit (the gateway's default ``access_token_ttl``). That gives the two groups' shares of the
customers' requests; the other customer tasks keep their locust weights. The catalog manager is
one person at its locust pace (a reprice or restock every ``MANAGER_THINK_S``, each a GET and an
If-Match PATCH) whatever the rate; its create-and-delete task is left out (the DELETE needs the
new product's ETag), and so is the locust checkout's read-back of the order just paid (an order
read of an order paid earlier in the file stands for it).

**Expected answers** per group (:data:`GROUPS`): 200 for reads, 201 for an order (409 when out
of stock) and a payment (captured or declined), 200 or 412 (a lost If-Match race) for a PATCH.
Anything else, and connection errors, are errors: what the SLO counts (the seed's SLO from
``loadtests/slo.py``: p95 < 200 ms, p99 < 500 ms, errors < 0.1 % per group; sign_in 500/1000 ms).
A ``--find`` step is sustainable when every group holds it and the achieved rate is at least
0.99 of the offered one. Late sends (a request written more than 1 ms after it was due, its
connection still waiting for the answer before) are reported, not judged: the latency of such a
request already counts from when it was due.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlencode, urlsplit

import httpx

from cygate.settings import load_settings

from .load import FixedRateResult, LabelResult, build_fixedrate, run_fixedrate, write_request_file
from .prepare import (
    DatabaseCpu,
    PrepareError,
    create_database,
    database_exists,
    drop_database,
    flush_redis_prefix,
    local_postmaster,
    run_cli,
    settle,
    with_database,
)
from .procs import ServerProcess, free_port, http_get, tree_cpu_seconds
from .report import machine_line, machine_summary

ROOT = Path(__file__).resolve().parents[2]
# NOTE: loadtests/ is not a package (locust runs its files as top-level modules); its locust-free
# modules are imported the same way here.
if str(ROOT / "loadtests") not in sys.path:
    sys.path.insert(0, str(ROOT / "loadtests"))

import charts  # noqa: E402
import slo  # noqa: E402
import workload  # noqa: E402

__all__ = ["GROUPS", "Group", "cost_per_group", "cost_table", "main", "mix_shares"]

DB_NAME = "cygate_bench_mix"  # the Redis prefix is the name with dashes: cygate-bench-mix:
HOST = "127.0.0.1"
SESSION_S = 600.0  # a customer's visit
PERSON_THINK_S = 10.0  # a person's pace within it
VISITS_PER_SIGN_IN = 10  # visits per password sign-in (the others refresh a kept token)
ACCESS_TOKEN_TTL_RUN = 86_400  # the gateway's lifetime here: prepared tokens outlive every run
MIN_ACHIEVED = 0.99
SEED = 20_231


@dataclass(frozen=True, slots=True)
class Group:
    """One label of the request file: a kind of request, its SLO group and expected statuses."""

    name: str
    method: str
    route: str  # the route template (for slo.group_of and the table)
    expected: frozenset[int] = frozenset({200})
    cost_rate: float = 0.0  # --cost: this group alone at most this fast (0: --cost-rate)

    @property
    def slo_group(self) -> str:
        manager = " (manager)" if self.name.startswith("manager") else ""
        return slo.group_of(self.method, self.route + manager)


GROUPS: tuple[Group, ...] = (
    Group("product", "GET", "/api/v1/products/{id}"),
    Group("search", "GET", "/api/v1/search?q="),
    Group("list", "GET", "/api/v1/products"),
    Group("next_page", "GET", "/api/v1/products?cursor="),
    Group("categories", "GET", "/api/v1/categories"),
    Group("product_signed_in", "GET", "/api/v1/products/{id}"),
    Group("me", "GET", "/api/v1/users/me"),
    Group("my_orders", "GET", "/api/v1/orders"),
    Group("summary", "GET", "/api/v1/users/me/orders/summary"),
    Group("order", "POST", "/api/v1/orders", frozenset({201, 409})),
    # --cost caps where a request needs something made beforehand through the API: a pending
    # order per payment, a signed-in refresh token (an Argon2id check) per refresh
    Group("pay", "POST", "/api/v1/orders/{id}/payments", frozenset({201}), cost_rate=1000.0),
    Group("order_read", "GET", "/api/v1/orders/{id}"),
    Group("refresh", "POST", "/api/v1/auth/token", cost_rate=100.0),
    # alone at 60/s: an Argon2id check is ~24 ms of CPU, so 60/s is more than a core
    Group("sign_in", "POST", "/api/v1/auth/login", cost_rate=60.0),
    Group("manager_read", "GET", "/api/v1/products/{id}"),
    Group(  # each PATCH carries an ETag read beforehand
        "manager_patch", "PATCH", "/api/v1/products/{id}", frozenset({200, 412}), cost_rate=200.0
    ),
)
BY_NAME = {g.name: g for g in GROUPS}


# --------------------------------------------------------------------------- the mix's shares


def mix_shares(rate: float, access_token_ttl: float, names: Sequence[str]) -> dict[str, float]:
    """Each group's share of the requests at ``rate`` req/s (summing to 1 over ``names``).

    Visitors and customers take their locust weights (``workload``); customers' sign-in and
    refresh come from the visit model of the module docstring instead; the manager offers a
    fixed number of requests per second whatever ``rate``."""
    per: dict[str, float] = dict.fromkeys(BY_NAME, 0.0)
    users = workload.VISITOR_WEIGHT + workload.CUSTOMER_WEIGHT
    visitor = workload.VISITOR_WEIGHT / users
    total = sum(t.weight for t in workload.VISITOR_TASKS.values())
    for task, spec in workload.VISITOR_TASKS.items():
        per[task] += visitor * spec.weight / total * spec.requests
    customer = workload.CUSTOMER_WEIGHT / users
    tasks = {k: v for k, v in workload.CUSTOMER_TASKS.items() if k not in ("sign_in", "refresh")}
    total = sum(t.weight for t in tasks.values())
    checkout = {"search": 1.0, "order": 1.0, "pay": 1.0, "order_read": workload.READ_BACK_SHARE}
    rename = {"product": "product_signed_in"}
    for task, spec in tasks.items():
        runs = customer * spec.weight / total
        for name, n in (checkout if task == "checkout" else {rename.get(task, task): 1.0}).items():
            per[name] += runs * n
    customer_requests = sum(per[g] for g in ("product_signed_in", "me", "my_orders", "summary"))
    customer_requests += customer * tasks["search"].weight / total
    customer_requests += sum(
        customer * tasks["checkout"].weight / total * n for n in checkout.values()
    )
    visits = customer_requests / (SESSION_S / PERSON_THINK_S)
    per["sign_in"] = visits / VISITS_PER_SIGN_IN
    per["refresh"] = visits * (
        1 - 1 / VISITS_PER_SIGN_IN + math.floor(SESSION_S / access_token_ttl)
    )
    manager = {k: v for k, v in workload.MANAGER_TASKS.items() if k != "create_and_delete"}
    manager_tasks_s = (
        sum(v.weight for v in manager.values())
        / sum(v.weight for v in workload.MANAGER_TASKS.values())
        / workload.MANAGER_THINK_S
    )
    fixed = {"manager_read": manager_tasks_s / rate, "manager_patch": manager_tasks_s / rate}
    chosen = [n for n in names if n not in fixed]
    flexible = sum(per[n] for n in chosen)
    fixed_sum = sum(fixed[n] for n in names if n in fixed)
    if fixed_sum >= 1 or (flexible == 0 and fixed_sum == 0):
        raise ValueError("the chosen groups offer no requests at this rate")
    scale = (1 - fixed_sum) / flexible if flexible else 0.0
    shares = {n: (fixed[n] if n in fixed else per[n] * scale) for n in names}
    if not chosen:  # the manager alone: its requests are the whole file
        shares = {n: 1 / len(names) for n in names}
    return shares


# --------------------------------------------------------------------------- bad input


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mix: {message}\n")


def _positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
        return value

    return parse


def _groups(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown group {', '.join(unknown) or repr(text)}; known: {', '.join(BY_NAME)}"
        )
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m benchmarks.macro.mix", description=__doc__.split("\n", 1)[0])
    p.add_argument("--rate", type=_positive(float), default=10_000.0, help="offered req/s")
    p.add_argument("--duration", type=_positive(float), default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=_positive(float), default=5.0, help="seconds before it")
    p.add_argument("--connections", type=_positive(int), default=128)
    p.add_argument(
        "--workers",
        type=_positive(int),
        default=None,
        help="Granian workers (default: the gateway's own default)",
    )
    p.add_argument("--products", type=_positive(int), default=20_000)
    p.add_argument("--categories", type=_positive(int), default=40)
    p.add_argument("--customers", type=_positive(int), default=200, help="signed-in pool")
    p.add_argument(
        "--groups",
        type=_groups,
        default=list(BY_NAME),
        help=f"a subset of the mix (default all: {','.join(BY_NAME)})",
    )
    p.add_argument("--keep-db", action="store_true", help="reuse (and keep) the database")
    p.add_argument("--db", default=DB_NAME, help="the database (and, dashed, Redis prefix)")
    p.add_argument("--find", action="store_true", help="step the rate: highest sustainable")
    p.add_argument(
        "--cost",
        action="store_true",
        help="each group alone at --cost-rate: CPU per request and its share of the mix's CPU",
    )
    p.add_argument(
        "--cost-rate",
        type=_positive(float),
        default=20_000.0,
        help="offered to each group alone (default 20000: past saturation; see --cost)",
    )
    p.add_argument("--start", type=_positive(float), default=1000.0)
    p.add_argument("--step", type=_positive(float), default=1000.0)
    p.add_argument("--max", type=_positive(float), default=20_000.0)
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.find and args.max < args.start:
        p.error(f"--max {args.max:g} is below --start {args.start:g}")
    if args.find and args.cost:
        p.error("--find and --cost are two different runs: one at a time")
    return args


# --------------------------------------------------------------------------- preparation


@dataclass(slots=True)
class Shopper:
    email: str
    password: str
    token: str = ""


@dataclass(slots=True)
class World:
    """What the request file draws from (read and made through the API before any run)."""

    base: str
    catalog: workload.Catalog
    cursors: list[tuple[str, dict[str, str]]]  # (next_cursor, its filter)
    shoppers: list[Shopper]
    manager: str = ""  # the catalog manager's access token
    counter: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 62)))


def _check(resp: httpx.Response, *ok: int) -> dict[str, Any]:
    if resp.status_code not in ok:
        raise RuntimeError(
            f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text[:200]}"
        )
    return resp.json() if resp.content else {}


def _sign_in(client: httpx.Client, email: str, password: str) -> dict[str, Any]:
    resp = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    return _check(resp, 200)


def _parallel(fn: Any, items: Sequence[Any], workers: int = 8) -> list[Any]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def prepare_world(
    base: str, customers: int, admin: tuple[str, str], names: set[str], max_products: int
) -> World:
    """The catalog, cursors, the signed-in customers and the manager."""
    catalog = workload.read_catalog(base, max_products=max_products, zipf_s=1.0)
    with httpx.Client(base_url=base, timeout=30) as client:
        cursors: list[tuple[str, dict[str, str]]] = []
        for filt in [{}, *({"category": c} for c in catalog.categories)]:
            query = {"limit": str(workload.PAGE), **filt}
            for _ in range(5):  # up to five pages deep
                got = _check(client.get("/api/v1/products", params=query), 200)
                if not got.get("next_cursor"):
                    break
                cursors.append((got["next_cursor"], filt))
                query = {**query, "cursor": got["next_cursor"]}
        shoppers = [
            Shopper(f"mix-{i}@bench-mix.example.com", f"bench-mix-{i}-pw") for i in range(customers)
        ]

        def sign_up(s: Shopper) -> None:
            body = {"email": s.email, "password": s.password, "name": "Mix Customer"}
            _check(client.post("/api/v1/auth/register", json=body), 201, 409)
            s.token = _sign_in(client, s.email, s.password)["access_token"]

        _parallel(sign_up, shoppers)
        manager = ""
        if names & {"manager_read", "manager_patch"}:
            manager = _sign_in(client, *admin)["access_token"]
    if not cursors:
        raise RuntimeError("the catalog has a single page: no cursors to follow (more --products)")
    return World(base, catalog, cursors, shoppers, manager)


@dataclass(slots=True)
class RunStock:
    """The single-use things one run's file needs, made through the API."""

    refresh_tokens: list[str]
    orders: list[tuple[str, str]]  # (order id, owner's access token)
    etags: list[tuple[str, str]]  # (product id, ETag)


def prepare_run(world: World, counts: dict[str, int], rng: random.Random) -> RunStock:
    with httpx.Client(base_url=world.base, timeout=30) as client:

        def refresh_token(i: int) -> str:
            s = world.shoppers[i % len(world.shoppers)]
            return str(_sign_in(client, s.email, s.password)["refresh_token"])

        def pending_order(i: int) -> tuple[str, str]:
            s = world.shoppers[i % len(world.shoppers)]
            auth = {"authorization": f"Bearer {s.token}"}
            pick = random.Random(SEED + i)
            for _ in range(50):  # a product in stock (uniform: the Zipf head is left alone)
                product = pick.choice(world.catalog.products.items)
                body = {
                    "items": [{"product_id": product, "quantity": 1}],
                    "shipping_address": workload.ADDRESS,
                }
                resp = client.post(
                    "/api/v1/orders",
                    json=body,
                    headers={**auth, "idempotency-key": uuid.uuid4().hex},
                )
                if resp.status_code == 201:
                    return str(resp.json()["id"]), s.token
                _check(resp, 409)
            raise RuntimeError("no product in stock for the payments' pending orders")

        refresh = _parallel(refresh_token, range(counts.get("refresh", 0)))
        # NOTE: order reads read the payments' orders; without payments, a few orders of their own
        wanted = counts.get("pay", 0) or min(counts.get("order_read", 0), 100)
        orders = _parallel(pending_order, range(wanted))
        etags: list[tuple[str, str]] = []
        seen: set[str] = set()
        auth = {"authorization": f"Bearer {world.manager}"}
        for _ in range(counts.get("manager_patch", 0)):
            pid = world.catalog.products.draw(rng)
            while pid in seen and len(seen) < len(world.catalog.products.items):
                pid = world.catalog.products.draw(rng)
            seen.add(pid)
            resp = client.get(f"/api/v1/products/{pid}", headers=auth)
            _check(resp, 200)
            etags.append((pid, resp.headers.get("etag", "")))
    return RunStock(refresh, orders, etags)


# --------------------------------------------------------------------------- the request file


def _raw(method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def render(
    name: str, world: World, stock: RunStock, rng: random.Random, used: dict[str, int]
) -> bytes:
    """One request of group ``name``; ``used`` counts the single-use things taken so far."""
    cat = world.catalog
    shopper = world.shoppers[rng.randrange(len(world.shoppers))]
    bearer = {"Authorization": f"Bearer {shopper.token}"}
    as_json = {"Content-Type": "application/json"}
    n = used[name] = used.get(name, 0) + 1
    if name in ("product", "product_signed_in", "manager_read"):
        headers = {
            "product": {},
            "product_signed_in": bearer,
            "manager_read": {"Authorization": f"Bearer {world.manager}"},
        }[name]
        return _raw("GET", f"/api/v1/products/{cat.products.draw(rng)}", headers)
    if name == "search":
        q = workload.with_typo(cat.queries.draw(rng), rng)
        return _raw("GET", "/api/v1/search?" + urlencode({"q": q, "limit": workload.PAGE}), {})
    if name == "list":
        query = {"limit": str(workload.PAGE)}
        if cat.categories and rng.random() < workload.CATEGORY_FILTER_SHARE:
            query["category"] = rng.choice(cat.categories)
        return _raw("GET", "/api/v1/products?" + urlencode(query), {})
    if name == "next_page":
        cursor, filt = world.cursors[rng.randrange(len(world.cursors))]
        query = {"limit": str(workload.PAGE), **filt, "cursor": cursor}
        return _raw("GET", "/api/v1/products?" + urlencode(query), {})
    if name == "categories":
        return _raw("GET", "/api/v1/categories", {})
    if name == "me":
        return _raw("GET", "/api/v1/users/me", bearer)
    if name == "my_orders":
        return _raw("GET", f"/api/v1/orders?limit={workload.PAGE}", bearer)
    if name == "summary":
        return _raw("GET", "/api/v1/users/me/orders/summary", bearer)
    if name == "order":
        body = {
            "items": [{"product_id": cat.products.draw(rng), "quantity": 1}],
            "shipping_address": workload.ADDRESS,
        }
        key = {"Idempotency-Key": f"mix-{next(world.counter)}-{secrets.token_hex(6)}"}
        return _raw("POST", "/api/v1/orders", {**bearer, **as_json, **key}, _json(body))
    if name in ("pay", "order_read"):
        order, token = stock.orders[(n - 1) % len(stock.orders)]
        auth = {"Authorization": f"Bearer {token}"}
        if name == "order_read":
            return _raw("GET", f"/api/v1/orders/{order}", auth)
        card = "tok_decline" if rng.random() < workload.DECLINE_SHARE else "tok_approve"
        key = {"Idempotency-Key": f"mix-pay-{next(world.counter)}-{secrets.token_hex(6)}"}
        return _raw(
            "POST",
            f"/api/v1/orders/{order}/payments",
            {**auth, **as_json, **key},
            _json({"payment_method_token": card}),
        )
    if name == "refresh":
        form = urlencode(
            {"grant_type": "refresh_token", "refresh_token": stock.refresh_tokens[n - 1]}
        )
        return _raw(
            "POST",
            "/api/v1/auth/token",
            {"Content-Type": "application/x-www-form-urlencoded"},
            form.encode(),
        )
    if name == "sign_in":
        return _raw(
            "POST",
            "/api/v1/auth/login",
            as_json,
            _json({"email": shopper.email, "password": shopper.password}),
        )
    if name == "manager_patch":
        pid, etag = stock.etags[n - 1]
        price = 99 + rng.randrange(100_000)
        change = {"price_cents": price} if rng.random() < 2 / 3 else {"stock": 500}
        headers = {"Authorization": f"Bearer {world.manager}", "If-Match": etag, **as_json}
        return _raw("PATCH", f"/api/v1/products/{pid}", headers, _json(change))
    raise ValueError(f"unknown group {name!r}")


def build_files(
    world: World,
    rate: float,
    shares: dict[str, float],
    seconds: Sequence[float],
    connections: int,
    workdir: Path,
    tag: str,
) -> list[Path]:
    """One request file per period of ``seconds`` (warm-up, run), enough requests for each
    without cycling; the single-use things made for all of them first."""
    rng = random.Random(SEED)
    names = list(shares)
    sizes = [math.ceil(rate * s) + connections for s in seconds]
    sequence = rng.choices(range(len(names)), weights=[shares[n] for n in names], k=sum(sizes))
    counts = {n: 0 for n in names}
    for i in sequence:
        counts[names[i]] += 1
    stock = prepare_run(world, counts, rng)
    used: dict[str, int] = {}
    paths: list[Path] = []
    start = 0
    for period, size in enumerate(sizes):
        part = sequence[start : start + size]
        start += size
        path = workdir / f"{tag}-{period}.requests"
        write_request_file(
            path, names, ((i, render(names[i], world, stock, rng, used)) for i in part)
        )
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- one run

_CACHE_LINE = re.compile(r'^cygate_cache_requests_total\{result="([^"]+)"\}\s+(\S+)', re.M)


def cache_counts(port: int) -> dict[str, float]:
    """The gateway's cache results so far (``/metrics``; empty when it cannot be read)."""
    try:
        resp = http_get(HOST, port, "/metrics", timeout=5)
    except OSError:
        return {}
    text = resp.body.decode(errors="replace") if resp.status == 200 else ""
    return {k: float(v) for k, v in _CACHE_LINE.findall(text)}


def _group_row(g: Group, r: LabelResult, offered: float, duration: float) -> dict[str, Any]:
    unexpected = sum(
        v for k, v in r.statuses.items() if not k.isdigit() or int(k) not in g.expected
    )
    errors = unexpected + r.errors
    return {
        "group": g.name,
        "slo_group": g.slo_group,
        "offered_rps": offered,
        "achieved_rps": r.requests / duration,
        "requests": r.requests,
        "p50_ms": r.p50_ms,
        "p95_ms": r.p95_ms,
        "p99_ms": r.p99_ms,
        "p999_ms": r.p999_ms,
        "max_ms": r.max_ms,
        "errors": errors,
        "fail_ratio": errors / max(1, r.requests + r.errors),
        "statuses": r.statuses,
        "classes": r.classes,
        "late": r.late,
    }


def measure(
    binary: str,
    world: World,
    shares: dict[str, float],
    args: argparse.Namespace,
    rate: float,
    port: int,
    gateway: ServerProcess,
    pg_pid: int | None,
    workdir: Path,
    tag: str,
    db_cpu: DatabaseCpu | None = None,
) -> dict[str, Any]:
    """Warm-up and measured run at ``rate``; per group and overall figures, and the verdict.
    ``db_cpu``: also PostgreSQL's CPU on the benchmark's own database (its backends only)."""
    warm_file, run_file = build_files(
        world, rate, shares, (args.warmup, args.duration), args.connections, workdir, tag
    )
    url = f"http://{HOST}:{port}/"
    run_fixedrate(
        binary,
        url,
        connections=args.connections,
        rate=rate,
        duration=args.warmup,
        warmup=0,
        request_file=warm_file,
    )
    cache0, cpu0 = cache_counts(port), tree_cpu_seconds(gateway.pid)
    pg0 = tree_cpu_seconds(pg_pid) if pg_pid else math.nan
    if db_cpu is not None:
        asyncio.run(db_cpu.start())
    result: FixedRateResult = run_fixedrate(
        binary,
        url,
        connections=args.connections,
        rate=rate,
        duration=args.duration,
        warmup=0,
        request_file=run_file,
    )
    cpu = tree_cpu_seconds(gateway.pid) - cpu0
    pg = (tree_cpu_seconds(pg_pid) if pg_pid else math.nan) - pg0
    pg_db = asyncio.run(db_cpu.stop()) if db_cpu is not None else math.nan
    time.sleep(1.5)  # NOTE: workers publish their metric snapshots periodically
    cache1 = cache_counts(port)
    for path in (warm_file, run_file):
        path.unlink()
    rows = [
        _group_row(BY_NAME[r.label], r, shares[r.label] * rate, args.duration)
        for r in result.labels
    ]
    requests = sum(r["requests"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    late = sum(r["late"] for r in rows)
    cache = {k: cache1.get(k, 0) - cache0.get(k, 0) for k in cache1}
    cached = sum(cache.values())
    overall = {
        "group": "overall",
        "offered_rps": rate,
        "achieved_rps": result.achieved_rps,
        "requests": requests,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "p999_ms": result.p999_ms,
        "errors": errors,
        "fail_ratio": errors / max(1, requests),
        "late": late,
        "server_cpu_us_per_req": cpu / max(1, requests) * 1e6,
        "postgres_cpu_us_per_req": pg / max(1, requests) * 1e6,
        "postgres_db_cpu_us_per_req": pg_db / max(1, requests) * 1e6,
        "client_cpu_s": result.client_cpu_s,
        "cache": {k: v / cached for k, v in sorted(cache.items()) if v} if cached else {},
    }
    limits = slo.parse_overrides("", slo.Limits())
    problems = slo.judge(
        {r["group"]: r for r in rows}, {r["group"]: limits[r["slo_group"]] for r in rows}
    )
    if result.achieved_rps < MIN_ACHIEVED * rate:
        problems.append(f"achieved {result.achieved_rps:.0f} req/s < {MIN_ACHIEVED} x {rate:g}")
    return {
        "rate": rate,
        "groups": rows,
        "overall": overall,
        "problems": problems,
        "sustainable": not problems,
    }


def cost_per_group(
    binary: str,
    world: World,
    mix: dict[str, float],
    args: argparse.Namespace,
    port: int,
    gateway: ServerProcess,
    pg_pid: int | None,
    workdir: Path,
    db_cpu: DatabaseCpu | None = None,
) -> list[dict[str, Any]]:
    """Each group of the mix alone (warm-up, then measured) at ``--cost-rate`` or its own
    ``cost_rate``: server and PostgreSQL CPU per request, and what that group adds to one
    request of the mix (its share times its CPU): where the mix's CPU goes.

    NOTE: offered past what the gateway serves (the default 20,000 req/s), each group runs at
    its own capacity and its CPU per request is the marginal cost that capacity is made of. At
    a low rate every request wakes the server on its own, and the CPU per request is several
    times higher (a product hit: ~360 µs at 1,000 req/s alone, against ~30 at saturation),
    which says little about where the mix's capacity goes. The groups whose requests need
    something made through the API beforehand (a pending order, a refresh token), and
    sign-in, run at the capped rate of their :class:`Group`, which saturates them as well.

    NOTE: an idle gateway is not free (the outbox relay and consumers poll, metric snapshots
    are written): at a few hundred requests per second that background would be charged to
    the requests, so it is measured first, with no load, and taken out of each group's CPU.

    NOTE: PostgreSQL's whole tree counts every database of a shared server (other work on it
    included); with ``db_cpu`` the backends of the benchmark's own database are also read
    (``postgres_db_cpu_us_per_req``: WAL writer and checkpointer not included)."""
    idle_s = args.warmup + args.duration
    cpu0, pg0 = tree_cpu_seconds(gateway.pid), tree_cpu_seconds(pg_pid) if pg_pid else 0.0
    if db_cpu is not None:
        asyncio.run(db_cpu.start())
    time.sleep(idle_s)
    idle_cpu = (tree_cpu_seconds(gateway.pid) - cpu0) / idle_s
    idle_pg = ((tree_cpu_seconds(pg_pid) - pg0) / idle_s) if pg_pid else 0.0
    idle_db = asyncio.run(db_cpu.stop()) / idle_s if db_cpu is not None else math.nan
    print(
        f"  idle: server {1e3 * idle_cpu:.1f} ms and PostgreSQL {1e3 * idle_pg:.1f} ms "
        f"({1e3 * idle_db:.1f} ms on this database) of CPU per second (taken out below)",
        flush=True,
    )
    rows = []
    for name, share in mix.items():
        g = BY_NAME[name]
        rate = min(args.cost_rate, g.cost_rate or args.cost_rate)
        print(f"  {name} alone at {rate:g} req/s ...", flush=True)
        run = measure(
            binary, world, {name: 1.0}, args, rate, port, gateway, pg_pid, workdir, name, db_cpu
        )
        o = run["overall"]
        print(
            f"    {o['server_cpu_us_per_req']:.0f} µs server and "
            f"{o['postgres_cpu_us_per_req']:.0f} µs PostgreSQL CPU "
            f"({o['postgres_db_cpu_us_per_req']:.0f} µs on this database) per request "
            f"(idle included), p50 {o['p50_ms']:.1f} ms, {o['errors']} errors",
            flush=True,
        )
        n = max(1, o["requests"])
        db_us = o["postgres_db_cpu_us_per_req"] - idle_db * args.duration / n * 1e6
        rows.append(
            {
                "group": name,
                "share": share,
                "rate": rate,
                "errors": o["errors"],
                "p50_ms": o["p50_ms"],
                "server_cpu_us_per_req": max(
                    0.0, o["server_cpu_us_per_req"] - idle_cpu * args.duration / n * 1e6
                ),
                "postgres_cpu_us_per_req": max(
                    0.0, o["postgres_cpu_us_per_req"] - idle_pg * args.duration / n * 1e6
                ),
                "postgres_db_cpu_us_per_req": db_us if math.isnan(db_us) else max(0.0, db_us),
                "cache": o["cache"],
            }
        )
    total = sum(r["share"] * r["server_cpu_us_per_req"] for r in rows)
    for r in rows:
        r["server_cpu_share"] = r["share"] * r["server_cpu_us_per_req"] / total if total else 0
    return rows


def cost_table(rows: list[dict[str, Any]], workers: int) -> str:
    """Where the mix's CPU goes, the costliest first, and the rate that CPU allows."""
    lines = [
        "| group | share of requests | alone at req/s | server CPU µs/req | PostgreSQL CPU µs/req "
        "| share of the mix's server CPU | cache |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sorted(rows, key=lambda r: -r["server_cpu_share"]):
        cache = ", ".join(f"{k} {100 * v:.0f} %" for k, v in r["cache"].items()) or "-"
        lines.append(
            f"| {r['group']} | {100 * r['share']:.2f} % | {r['rate']:g} "
            f"| {r['server_cpu_us_per_req']:.0f} | {r['postgres_cpu_us_per_req']:.0f} "
            f"| {100 * r['server_cpu_share']:.1f} % | {cache} |"
        )
    mix_us = sum(r["share"] * r["server_cpu_us_per_req"] for r in rows)
    pg_us = sum(r["share"] * r["postgres_cpu_us_per_req"] for r in rows)
    lines.append(
        f"\nthe mix: {mix_us:.0f} µs of server CPU and {pg_us:.0f} µs of PostgreSQL CPU per "
        f"request; {workers} worker(s) at full use of a core each would serve at most "
        f"{workers * 1e6 / mix_us:,.0f} req/s"
        if mix_us
        else ""
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- output


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def table(run: dict[str, Any]) -> str:
    lines = [
        "| group | offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | errors | statuses |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in [*run["groups"], run["overall"]]:
        statuses = " ".join(f"{k}:{v}" for k, v in r.get("statuses", {}).items())
        lines.append(
            f"| {r['group']} | {r['offered_rps']:.1f} | {r['achieved_rps']:.1f} | "
            f"{_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {_ms(r['p999_ms'])} | "
            f"{r['errors']} ({100 * r['fail_ratio']:.2f} %) | {statuses} |"
        )
    o = run["overall"]
    cache = ", ".join(f"{k} {100 * v:.1f} %" for k, v in o["cache"].items()) or "-"
    lines += [
        "",
        f"server CPU {o['server_cpu_us_per_req']:.0f} µs/req, PostgreSQL CPU "
        f"{o['postgres_cpu_us_per_req']:.0f} µs/req (whole server), late sends {o['late']}, "
        f"generator CPU {o['client_cpu_s']:.1f} s; cache results: {cache}",
        "SLO " + ("holds" if run["sustainable"] else "broken: " + "; ".join(run["problems"])),
    ]
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"mix: {message}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------- main


def _prefix(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/").replace("_", "-") + ":"


def _gateway_env(
    dsn: str, redis_url: str, secret_file: Path, admin: tuple[str, str], processor: str | None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYGATE_")}
    if os.environ.get("CYGATE_NO_EXTENSIONS"):
        env["CYGATE_NO_EXTENSIONS"] = "1"
    env.update(
        CYGATE_DATABASE_URL=dsn,
        CYGATE_REDIS_URL=redis_url,
        CYGATE_REDIS_PREFIX=_prefix(dsn),
        CYGATE_LOG_LEVEL="warning",
        CYGATE_ENVIRONMENT="development",
        # NOTE: all load comes from one address: no per-caller default limit, no registration
        # or token limit (explicitly), as scripts/load.sh does for locust.
        CYGATE_RATE_LIMIT_DEFAULT_CLASS="",
        CYGATE_RATE_LIMIT_ROUTES=json.dumps(
            {"POST /api/v1/auth/register": "", "POST /api/v1/auth/token": ""}
        ),
        CYGATE_ACCESS_TOKEN_TTL=str(ACCESS_TOKEN_TTL_RUN),
        CYGATE_ADMIN_EMAIL=admin[0],
        CYGATE_ADMIN_PASSWORD=admin[1],
        CYGATE_PAYMENT_WEBHOOK_SECRET_FILE=str(secret_file),
    )
    if processor:
        env["CYGATE_PAYMENT_PROCESSOR_URL"] = processor
    return env


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    admin_dsn = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    ttl = load_settings({}).identity.access_token_ttl  # the deployed default, for the shares
    rates = [args.rate]
    if args.find:
        rates = [
            args.start + i * args.step for i in range(int((args.max - args.start) // args.step) + 1)
        ]
    try:
        for r in rates:
            mix_shares(r, ttl, args.groups)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        exists = database_exists(admin_dsn, args.db)
    except PrepareError as exc:
        return _fail(str(exc))
    machine = machine_summary()
    print(
        f"mix benchmark: {machine_line(machine)}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in machine['load_avg_at_start'])}",
        flush=True,
    )
    dsn = with_database(admin_dsn, args.db)
    admin = ("mix-manager@bench-mix.example.com", secrets.token_urlsafe(18))
    with tempfile.TemporaryDirectory(prefix="cygate-mix-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        secret_file = workdir / "webhook-secret"
        secret_file.write_text(secrets.token_hex(32))
        port = free_port()
        processor = None
        if "pay" in args.groups:
            sim_port = free_port()
            processor = f"http://{HOST}:{sim_port}"
        env = _gateway_env(dsn, redis_url, secret_file, admin, processor)
        if not (args.keep_db and exists):
            print(f"  creating database {args.db}", flush=True)
            create_database(admin_dsn, args.db)
            run_cli(sys.executable, ["migrate"], env, ROOT)
            seed = [
                "seed",
                "--products",
                str(args.products),
                "--categories",
                str(args.categories),
                "--users",
                "50",
                "--random-seed",
                str(SEED),
            ]
            run_cli(sys.executable, seed, env, ROOT)
            asyncio.run(settle(dsn))
        else:
            print(f"  reusing database {args.db} (--keep-db)", flush=True)
        if not args.keep_db:
            stack.callback(drop_database, admin_dsn, args.db)
        flush_redis_prefix(redis_url, _prefix(dsn))
        if processor:
            sim = stack.enter_context(
                ServerProcess(
                    [
                        sys.executable,
                        "-m",
                        "cygate.simulator",
                        "--port",
                        str(sim_port),
                        "--webhook-url",
                        f"http://{HOST}:{port}/api/v1/payments/webhook",
                        "--webhook-delay",
                        "0.5",
                        "--webhook-secret-file",
                        str(secret_file),
                    ],
                    env=env,
                    cwd=ROOT,
                    log_path=workdir / "processor-sim.log",
                )
            )
            sim.wait_ready(HOST, sim_port, "/healthz", timeout=30)
        serve = [sys.executable, "-m", "cygate", "serve", "--host", HOST, "--port", str(port)]
        if args.workers:
            serve += ["--workers", str(args.workers)]
        workers = (
            load_settings({k: v for k, v in env.items() if k.startswith("CYGATE_")}).server.workers
            if not args.workers
            else args.workers
        )
        gateway = stack.enter_context(
            ServerProcess(serve, env=env, cwd=ROOT, log_path=workdir / "gateway.log")
        )
        gateway.wait_ready(HOST, port, "/readyz", timeout=60)
        pg_pid = local_postmaster(dsn)
        print(
            f"  gateway on :{port}, {workers} worker(s) "
            f"({'--workers' if args.workers else 'the gateway default'}); preparing ...",
            flush=True,
        )
        world = prepare_world(
            f"http://{HOST}:{port}", args.customers, admin, set(args.groups), args.products
        )
        binary = build_fixedrate(workdir)
        shares = mix_shares(rates[0], ttl, args.groups)
        print("  shares: " + ", ".join(f"{n} {100 * s:.3f} %" for n, s in shares.items()))
        print(
            f"  (sign-in and refresh from a {SESSION_S:.0f} s visit at one request per "
            f"{PERSON_THINK_S:.0f} s, a password sign-in every {VISITS_PER_SIGN_IN} visits, "
            f"access tokens of {ttl} s)",
            flush=True,
        )
        if args.cost:
            costs = cost_per_group(
                binary, world, shares, args, port, gateway, pg_pid, workdir, DatabaseCpu(dsn)
            )
            print("\n" + cost_table(costs, workers), flush=True)
            if not gateway.alive():
                return _fail(f"the gateway exited; log tail:\n{gateway.log_tail()}")
            args.results_dir.mkdir(parents=True, exist_ok=True)
            (args.results_dir / "mix-cost-latest.json").write_text(
                json.dumps(
                    {
                        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "machine": machine,
                        "workers": workers,
                        "compiled": not os.environ.get("CYGATE_NO_EXTENSIONS"),
                        "groups": costs,
                    },
                    indent=2,
                )
                + "\n"
            )
            print(f"results: {args.results_dir / 'mix-cost-latest.json'}")
            return 0
        runs: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        for step, rate in enumerate(rates):
            shares = mix_shares(rate, ttl, args.groups)
            for attempt in (1, 2):
                print(
                    f"\n{rate:g} req/s for {args.duration:g} s (after {args.warmup:g} s) ...",
                    flush=True,
                )
                run = measure(
                    binary,
                    world,
                    shares,
                    args,
                    rate,
                    port,
                    gateway,
                    pg_pid,
                    workdir,
                    f"s{step}a{attempt}",
                )
                run["attempt"] = attempt
                run["load_avg"] = list(os.getloadavg())
                runs.append(run)
                print(table(run), flush=True)
                if run["sustainable"] or not args.find:
                    break
                print("  not sustainable: once more before it counts", flush=True)
            if not run["sustainable"]:
                break
            best = run
        if not gateway.alive():
            return _fail(f"the gateway exited; log tail:\n{gateway.log_tail()}")
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "mode": "find" if args.find else "run",
        "workers": workers,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "products": args.products,
        "compiled": not os.environ.get("CYGATE_NO_EXTENSIONS"),
        "shares": shares,
        "runs": runs,
        "highest_sustainable": best["rate"] if best and args.find else None,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / "mix-latest.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    if args.find:
        steps = [
            {
                "offered": r["rate"],
                "achieved": r["overall"]["achieved_rps"],
                "p50_ms": r["overall"]["p50_ms"],
                "p95_ms": max(g["p95_ms"] for g in r["groups"]),
                "p99_ms": r["overall"]["p99_ms"],
            }
            for r in runs
        ]
        charts.capacity_chart(
            steps,
            args.results_dir / "mix-latest.png",
            f"the mix, open loop, {workers} worker(s): {machine_line(machine)}",
        )
        print("\n| offered req/s | achieved req/s | p99 ms | worst group p95 ms | verdict |")
        print("| ---: | ---: | ---: | ---: | --- |")
        for r, s in zip(runs, steps, strict=True):
            verdict = "sustainable" if r["sustainable"] else "; ".join(r["problems"])
            print(
                f"| {s['offered']:g} | {s['achieved']:.0f} | {_ms(s['p99_ms'])} | "
                f"{_ms(s['p95_ms'])} | {verdict} |"
            )
        print(
            f"\nhighest sustainable rate: {best['rate']:g} req/s"
            if best
            else "\nhighest sustainable rate: none"
        )
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0 if best is not None or not args.find else 1


if __name__ == "__main__":
    raise SystemExit(main())
