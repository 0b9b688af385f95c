"""Router micro-benchmarks: cygate's compiled router vs its pure twin vs werkzeug (vs Litestar).

One realistic table (~300 routes: a versioned REST API with uuid/int ids, nested resources,
a few wildcards, two extra hosts) is loaded into every contender; one round matches a fixed mix
of 50 requests (static, one parameter, deep, other hosts, 404s), so a match takes time / 50.

Every contender is checked first: each request of the mix must resolve to the same route (or to
none). The scaled cases load N generated routes (10 to 10,000: the route file of
``benchmarks.macro.curve_routes``, which draws the whole curve in one run) to show that a match
does not grow with the table. Host routing, which werkzeug's host matching and Litestar lack
in this form, is given to all of them the same way: one table per host, tried before the
host-less one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from benchmarks.macro.curve_routes import match_mix, route_patterns
from cygate.core import router as routing
from cygate.core._router_py import FOUND, RouterPy

Matcher = Callable[[str, str, "str | None"], "str | None"]  # -> the route's value, or None

GROUP = "router: match (≈300 routes, 50-request mix)"
SCALED_GROUP = "router: match, N generated routes (60-request mix)"
SCALED = (10, 1000, 10_000)
NORMALIZE_GROUP = "router: normalize_path (12-path mix)"

# ---------------------------------------------------------------------------------------------
# The route table: (host, method, pattern); each route's value is "host method pattern".
# ---------------------------------------------------------------------------------------------

_RESOURCES = {  # resource -> id type, nested sub-resources
    "products": ("uuid", ("reviews", "images", "variants", "prices")),
    "categories": ("int", ("products",)),
    "brands": ("int", ()),
    "orders": ("uuid", ("items", "payments", "shipments")),
    "customers": ("uuid", ("addresses", "orders", "wishlists")),
    "carts": ("uuid", ("items",)),
    "coupons": ("int", ()),
    "warehouses": ("int", ("stock",)),
    "suppliers": ("int", ("contracts",)),
    "invoices": ("uuid", ()),
    "returns": ("uuid", ("items",)),
    "gift-cards": ("uuid", ()),
}


def route_table() -> list[tuple[str | None, str, str]]:
    """About 300 routes, in the order an application would declare them."""
    routes: list[tuple[str | None, str, str]] = []

    def add(methods: str, pattern: str, host: str | None = None) -> None:
        routes.extend((host, method, pattern) for method in methods.split())

    for static in ("/health", "/ready", "/metrics", "/openapi.json"):
        add("GET", static)
    for version in ("v1", "v2"):
        api = f"/api/{version}"
        add("GET", f"{api}/search")
        add("GET PATCH", f"{api}/users/me")
        add("POST", f"{api}/auth/token")
        add("POST", f"{api}/auth/refresh")
        add("GET", f"{api}/products/featured")
        for resource, (id_type, nested) in _RESOURCES.items():
            item = f"{api}/{resource}/{{id:{id_type}}}"
            add("GET POST", f"{api}/{resource}")
            add("GET PUT PATCH DELETE", item)
            for sub in nested:
                add("GET POST", f"{item}/{sub}")
                add("GET DELETE", f"{item}/{sub}/{{sub_id:int}}")
    add("GET PUT", "/api/v1/files/{bucket}/{key:path}")
    add("GET", "/static/{path:path}")
    add("GET", "/docs/{page:path}")
    add("*", "/legacy/{rest:path}")
    admin = "admin.example.com"
    add("GET", "/", admin)
    add("GET", "/dashboard", admin)
    add("GET POST", "/users", admin)
    add("GET PUT DELETE", "/users/{id:uuid}", admin)
    add("GET", "/audit/{year:int}/{month:int}", admin)
    add("GET", "/audit/{year:int}/{month:int}/{day:int}", admin)
    add("GET", "/assets/{path:path}", admin)
    partners = "partners.example.com"
    add("GET", "/feed", partners)
    add("GET", "/feed/{sku}", partners)
    add("GET POST", "/orders", partners)
    add("GET", "/orders/{id:uuid}", partners)
    return routes


ROUTES = route_table()
assert 250 <= len(ROUTES) <= 350, len(ROUTES)


def route_value(host: str | None, method: str, pattern: str) -> str:
    return f"{host or ''} {method} {pattern}"


U1 = "3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b"
U2 = "A0B1C2D3-E4F5-4A6B-8C7D-9E0F1A2B3C4D"

# (method, path, host, expected route as (host, method, pattern), or None: 404 or 405)
_MIX: list[tuple[str, str, str | None, tuple[str | None, str, str] | None]] = [
    # static (10)
    ("GET", "/health", None, (None, "GET", "/health")),
    ("GET", "/metrics", None, (None, "GET", "/metrics")),
    ("GET", "/api/v1/products", None, (None, "GET", "/api/v1/products")),
    ("POST", "/api/v1/orders", None, (None, "POST", "/api/v1/orders")),
    ("GET", "/api/v2/categories", None, (None, "GET", "/api/v2/categories")),
    ("GET", "/api/v1/users/me", None, (None, "GET", "/api/v1/users/me")),
    ("GET", "/api/v1/products/featured", None, (None, "GET", "/api/v1/products/featured")),
    ("GET", "/api/v2/search", None, (None, "GET", "/api/v2/search")),
    ("POST", "/api/v1/auth/token", None, (None, "POST", "/api/v1/auth/token")),
    ("GET", "/api/v2/gift-cards", None, (None, "GET", "/api/v2/gift-cards")),
    # one parameter (14)
    ("GET", f"/api/v1/products/{U1}", None, (None, "GET", "/api/v1/products/{id:uuid}")),
    ("GET", f"/api/v2/products/{U2}", None, (None, "GET", "/api/v2/products/{id:uuid}")),
    ("PUT", f"/api/v1/products/{U1}", None, (None, "PUT", "/api/v1/products/{id:uuid}")),
    ("DELETE", f"/api/v1/orders/{U2}", None, (None, "DELETE", "/api/v1/orders/{id:uuid}")),
    ("PATCH", f"/api/v2/customers/{U1}", None, (None, "PATCH", "/api/v2/customers/{id:uuid}")),
    ("GET", "/api/v1/categories/42", None, (None, "GET", "/api/v1/categories/{id:int}")),
    ("GET", "/api/v2/brands/7", None, (None, "GET", "/api/v2/brands/{id:int}")),
    ("GET", f"/api/v1/carts/{U2}", None, (None, "GET", "/api/v1/carts/{id:uuid}")),
    ("GET", "/api/v1/warehouses/3", None, (None, "GET", "/api/v1/warehouses/{id:int}")),
    ("GET", f"/api/v2/invoices/{U1}", None, (None, "GET", "/api/v2/invoices/{id:uuid}")),
    ("GET", "/api/v1/coupons/1001", None, (None, "GET", "/api/v1/coupons/{id:int}")),
    ("GET", f"/api/v2/returns/{U1}", None, (None, "GET", "/api/v2/returns/{id:uuid}")),
    ("GET", "/api/v1/suppliers/12", None, (None, "GET", "/api/v1/suppliers/{id:int}")),
    ("GET", f"/api/v1/gift-cards/{U2}", None, (None, "GET", "/api/v1/gift-cards/{id:uuid}")),
    # deep: nested resources and wildcards (13)
    (
        "GET",
        f"/api/v1/products/{U1}/reviews",
        None,
        (None, "GET", "/api/v1/products/{id:uuid}/reviews"),
    ),
    (
        "GET",
        f"/api/v1/products/{U1}/reviews/17",
        None,
        (None, "GET", "/api/v1/products/{id:uuid}/reviews/{sub_id:int}"),
    ),
    ("POST", f"/api/v2/orders/{U2}/items", None, (None, "POST", "/api/v2/orders/{id:uuid}/items")),
    (
        "GET",
        f"/api/v1/orders/{U1}/items/3",
        None,
        (None, "GET", "/api/v1/orders/{id:uuid}/items/{sub_id:int}"),
    ),
    (
        "DELETE",
        f"/api/v1/carts/{U1}/items/9",
        None,
        (None, "DELETE", "/api/v1/carts/{id:uuid}/items/{sub_id:int}"),
    ),
    (
        "GET",
        f"/api/v2/customers/{U2}/addresses/2",
        None,
        (None, "GET", "/api/v2/customers/{id:uuid}/addresses/{sub_id:int}"),
    ),
    (
        "GET",
        "/api/v1/categories/42/products",
        None,
        (None, "GET", "/api/v1/categories/{id:int}/products"),
    ),
    (
        "GET",
        "/api/v2/warehouses/5/stock/88",
        None,
        (None, "GET", "/api/v2/warehouses/{id:int}/stock/{sub_id:int}"),
    ),
    (
        "GET",
        f"/api/v1/products/{U2}/variants",
        None,
        (None, "GET", "/api/v1/products/{id:uuid}/variants"),
    ),
    (
        "GET",
        "/api/v1/files/pics/2024/05/cat.png",
        None,
        (None, "GET", "/api/v1/files/{bucket}/{key:path}"),
    ),
    ("GET", "/static/css/app.min.css", None, (None, "GET", "/static/{path:path}")),
    ("GET", "/docs/guide/routing", None, (None, "GET", "/docs/{page:path}")),
    ("POST", "/legacy/cgi-bin/order.pl", None, (None, "*", "/legacy/{rest:path}")),
    # other hosts (5)
    ("GET", "/dashboard", "admin.example.com", ("admin.example.com", "GET", "/dashboard")),
    ("GET", f"/users/{U1}", "admin.example.com", ("admin.example.com", "GET", "/users/{id:uuid}")),
    (
        "GET",
        "/audit/2024/5/17",
        "admin.example.com",
        ("admin.example.com", "GET", "/audit/{year:int}/{month:int}/{day:int}"),
    ),
    (
        "GET",
        "/feed/SKU-123",
        "partners.example.com",
        ("partners.example.com", "GET", "/feed/{sku}"),
    ),
    ("GET", "/health", "partners.example.com", (None, "GET", "/health")),  # host-less fallback
    # not found (8)
    ("GET", "/api/v3/products", None, None),
    ("GET", "/api/v1/nothing", None, None),
    ("GET", "/wp-admin/login.php", None, None),
    ("GET", "/favicon.ico", None, None),
    ("GET", f"/api/v1/products/{U1}/nothing", None, None),
    ("GET", "/api/v1/products/not-a-uuid", None, None),  # typed parameter fails
    ("GET", f"/api/v1/orders/{U1}/items/3/extra", None, None),
    ("POST", "/health", None, None),  # 405
]
MIX = [(method, path, host) for method, path, host, _ in _MIX]
EXPECTED = [None if route is None else route_value(*route) for *_, route in _MIX]
assert len(MIX) == 50

_RAW_PATHS = [  # (raw path, canonical path)
    (b"/health", "/health"),
    (b"/api/v1/products", "/api/v1/products"),
    (b"/api/v1/products/" + U1.encode(), "/api/v1/products/" + U1),
    (b"/api/v1/orders/" + U1.encode() + b"/items/3", f"/api/v1/orders/{U1}/items/3"),
    (b"/api/v2/customers/" + U2.encode() + b"/addresses/2", f"/api/v2/customers/{U2}/addresses/2"),
    (b"/static/css/app.min.css", "/static/css/app.min.css"),
    (b"/api/v1/search", "/api/v1/search"),
    (b"/caf\xc3\xa9/men\xc3\xbc", "/café/menü"),
    # non-canonical spellings
    (b"/api/v1/products/", "/api/v1/products"),
    (b"//api/./v1/../v1/products", "/api/v1/products"),
    (b"/api%2Fv1/files/pics/a%20b.png", "/api/v1/files/pics/a b.png"),
    (b"/docs/%2e%2e/static/x.css", "/static/x.css"),
]
RAW_PATHS = [raw for raw, _ in _RAW_PATHS]
CANONICAL_PATHS = [canonical for _, canonical in _RAW_PATHS]


# ---------------------------------------------------------------------------------------------
# Contenders: each builds its own table from ROUTES and matches (method, path, host) -> value.
# ---------------------------------------------------------------------------------------------


def cygate_router(router_cls: type[RouterPy]) -> RouterPy:
    router = router_cls()
    for host, method, pattern in ROUTES:
        router.add(method, pattern, route_value(host, method, pattern), host=host)
    return router


def cygate_matcher(router: RouterPy) -> Matcher:
    def resolve(method: str, path: str, host: str | None) -> str | None:
        result = router.match(method, path, host)
        return result.value if result.kind is FOUND else None

    return resolve


def _by_host() -> dict[str | None, list[tuple[str, str, str]]]:
    tables: dict[str | None, list[tuple[str, str, str]]] = {}
    for host, method, pattern in ROUTES:
        tables.setdefault(host, []).append((method, pattern, route_value(host, method, pattern)))
    return tables


def _werkzeug_pattern(pattern: str) -> str:
    import re

    def rule(m: re.Match[str]) -> str:
        name, _, kind = m.group(1).partition(":")
        return f"<{kind}:{name}>" if kind else f"<{name}>"

    return re.sub(r"\{([^}]*)\}", rule, pattern)


def werkzeug_matcher() -> Matcher:
    from werkzeug.exceptions import HTTPException
    from werkzeug.routing import Map, Rule

    adapters = {}
    for host, table in _by_host().items():
        rules = [
            Rule(_werkzeug_pattern(p), methods=None if m == "*" else [m], endpoint=value)
            for m, p, value in table
        ]
        adapters[host] = Map(rules, strict_slashes=False, merge_slashes=False).bind(
            host or "example.com"
        )
    default = adapters.pop(None)

    def resolve(method: str, path: str, host: str | None) -> str | None:
        adapter = adapters.get(host) if host is not None else None
        if adapter is not None:
            try:
                return adapter.match(path, method)[0]  # type: ignore[no-any-return]
            except HTTPException:
                pass
        try:
            return default.match(path, method)[0]  # type: ignore[no-any-return]
        except HTTPException:
            return None

    return resolve


_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def litestar_matcher() -> Matcher:
    """Litestar's own trie, through its (private) un-cached ``ASGIRouter._handle_routing``."""
    from litestar import Litestar, route
    from litestar.exceptions import HTTPException

    routers = {}
    for host, table in _by_host().items():
        handlers = []
        for method, pattern, value in table:

            async def handler() -> None:
                return None

            litestar_pattern = pattern.replace("}", ":str}").replace(":uuid:str}", ":uuid}")
            litestar_pattern = litestar_pattern.replace(":int:str}", ":int}")
            litestar_pattern = litestar_pattern.replace(":path:str}", ":path}")
            methods = _ALL_METHODS if method == "*" else [method]
            handlers.append(
                route(litestar_pattern, http_method=cast(Any, methods), name=value)(handler)
            )
        app = Litestar(route_handlers=handlers, openapi_config=None)
        routers[host] = cast(Callable[[str, str], Any], app.asgi_router._handle_routing)
    default = routers.pop(None)

    def resolve(method: str, path: str, host: str | None) -> str | None:
        handle = routers.get(host) if host is not None else None
        if handle is not None:
            try:
                return cast(str, handle(path, method)[1].name)
            except HTTPException:
                pass
        try:
            return cast(str, default(path, method)[1].name)
        except HTTPException:
            return None

    return resolve


def check(resolve: Matcher) -> None:
    """Correctness before timing: every request of the mix resolves to its route (or none)."""
    got = [resolve(method, path, host) for method, path, host in MIX]
    wrong = [
        (req, exp, res) for req, exp, res in zip(MIX, EXPECTED, got, strict=True) if exp != res
    ]
    assert not wrong, wrong


def timed(resolve: Matcher) -> Callable[[], None]:
    def run() -> None:
        for method, path, host in MIX:
            resolve(method, path, host)

    return run


def timed_cygate(router: RouterPy) -> Callable[[], None]:
    """The loop calls ``router.match`` itself, as the gateway does (no wrapper around it)."""
    match = router.match

    def run() -> None:
        for method, path, host in MIX:
            match(method, path, host)

    return run


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


def test_router_c(micro: Any) -> None:
    """cygate RouterC.match (compiled) on the 50-request mix, ≈300 routes."""
    router_c = getattr(routing, "RouterC", None)
    if router_c is None:
        pytest.skip("compiled router not available")
    router = cygate_router(router_c)
    check(cygate_matcher(router))
    micro(timed_cygate(router), group=GROUP, ops=len(MIX))


def test_router_py(micro: Any) -> None:
    """cygate RouterPy.match (pure-Python twin) on the 50-request mix, ≈300 routes."""
    router = cygate_router(RouterPy)
    check(cygate_matcher(router))
    micro(timed_cygate(router), group=GROUP, ops=len(MIX))


def test_router_werkzeug(micro: Any) -> None:
    """werkzeug Map/MapAdapter.match on the 50-request mix, ≈300 routes (one Map per host)."""
    pytest.importorskip("werkzeug")
    resolve = werkzeug_matcher()
    check(resolve)
    micro(timed(resolve), group=GROUP, ops=len(MIX))


def test_router_litestar(micro: Any) -> None:
    """Litestar's route trie (ASGIRouter._handle_routing, un-cached) on the 50-request mix."""
    pytest.importorskip("litestar")
    resolve = litestar_matcher()
    check(resolve)
    micro(timed(resolve), group=GROUP, ops=len(MIX))


def test_router_loop_baseline(micro: Any) -> None:
    """The bare loop over the 50-request mix (what every case above pays on top of matching)."""

    def run() -> None:
        for _method, _path, _host in MIX:
            pass

    micro(run, group=GROUP, ops=len(MIX))


def _scaled(router_cls: type[RouterPy], n: int) -> Callable[[], None]:
    router = router_cls()
    for pattern in route_patterns(n):
        router.add("GET", pattern, pattern)
    mix = match_mix(n)
    for method, path, expected in mix:
        result = router.match(method, path, None)
        assert (result.value if result.kind is FOUND else None) == expected, (method, path)
    match = router.match
    requests = [(method, path) for method, path, _ in mix]

    def run() -> None:
        for method, path in requests:
            match(method, path, None)

    return run


@pytest.mark.parametrize("n", SCALED)
def test_router_c_scaled(micro: Any, n: int) -> None:
    """cygate RouterC.match (compiled) with N generated routes, 60-request mix."""
    router_c = getattr(routing, "RouterC", None)
    if router_c is None:
        pytest.skip("compiled router not available")
    run = _scaled(router_c, n)
    micro(run, group=SCALED_GROUP, ops=len(match_mix(n)))


@pytest.mark.parametrize("n", SCALED)
def test_router_py_scaled(micro: Any, n: int) -> None:
    """cygate RouterPy.match (pure twin) with N generated routes, 60-request mix."""
    run = _scaled(RouterPy, n)
    micro(run, group=SCALED_GROUP, ops=len(match_mix(n)))


def test_normalize_c(micro: Any) -> None:
    """cygate normalize_path (compiled) on 12 raw paths, 4 of them non-canonical."""
    normalize = getattr(routing, "normalize_path_c", None)
    if normalize is None:
        pytest.skip("compiled router not available")
    assert [normalize(raw) for raw in RAW_PATHS] == CANONICAL_PATHS
    micro(lambda: [normalize(raw) for raw in RAW_PATHS], group=NORMALIZE_GROUP, ops=len(RAW_PATHS))


def test_normalize_py(micro: Any) -> None:
    """cygate normalize_path (pure twin) on 12 raw paths, 4 of them non-canonical."""
    normalize = routing.normalize_path_py
    assert [normalize(raw) for raw in RAW_PATHS] == CANONICAL_PATHS
    micro(lambda: [normalize(raw) for raw in RAW_PATHS], group=NORMALIZE_GROUP, ops=len(RAW_PATHS))
