"""The router, compiled and pure: matching rules, conflicts, and C/py agreement."""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_impls import CoreImplementation, require_compiled
from cygate.core import router as selector
from cygate.core._router_py import (
    BAD_PARAM,
    FOUND,
    MAX_PARAMS,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    MatchKind,
    RouteConflict,
    RouteMatch,
    RouterPy,
)

UUID = "3f2b8c1e-9a4d-4e6f-8b1a-2c3d4e5f6a7b"


@pytest.fixture(scope="module")
def router_cls(core_impl: CoreImplementation) -> type[RouterPy]:
    """RouterC or RouterPy."""
    cls: type[RouterPy] = getattr(core_impl.module("router"), f"Router{core_impl.tag.capitalize()}")
    if core_impl.is_pure_python:
        assert cls is RouterPy
    return cls


def build(router_cls: type[RouterPy], *routes: tuple[str, str]) -> RouterPy:
    """A router whose routes' values are their own 'METHOD pattern' text."""
    router = router_cls()
    for method, pattern in routes:
        router.add(method, pattern, f"{method} {pattern}")
    return router


def found(value: Any, params: dict[str, str] | None = None) -> RouteMatch:
    return RouteMatch(FOUND, value, params, (), None)


NOT_FOUND_MATCH = RouteMatch(NOT_FOUND, None, None, (), None)


def not_allowed(*methods: str) -> RouteMatch:
    return RouteMatch(METHOD_NOT_ALLOWED, None, None, methods, None)


def bad(name: str) -> RouteMatch:
    return RouteMatch(BAD_PARAM, None, None, (), name)


# ---------------------------------------------------------------------------------------------
# API and the selector
# ---------------------------------------------------------------------------------------------


def test_constants_and_result_type() -> None:
    assert list(MatchKind) == [FOUND, NOT_FOUND, METHOD_NOT_ALLOWED, BAD_PARAM]
    assert issubclass(RouteConflict, ValueError)
    assert RouteMatch._fields == ("kind", "value", "params", "allowed", "bad_param")
    for name in (
        "FOUND",
        "NOT_FOUND",
        "METHOD_NOT_ALLOWED",
        "BAD_PARAM",
        "Router",
        "RouterPy",
        "RouteMatch",
        "MatchKind",
        "PathError",
        "RouteConflict",
        "normalize_path",
        "normalize_path_py",
    ):
        assert name in selector.__all__
        assert hasattr(selector, name)


@pytest.mark.c_extension
def test_compiled_router_is_in_use() -> None:
    """With extensions on, the selector must hand out the compiled code (fails if not built)."""
    compiled = importlib.import_module("cygate.core._router_c")
    public = vars(selector)
    assert selector.Router is compiled.RouterC
    assert public["RouterC"] is compiled.RouterC
    assert selector.normalize_path is compiled.normalize_path
    assert public["normalize_path_c"] is compiled.normalize_path
    assert {"RouterC", "normalize_path_c"} <= set(selector.__all__)


@pytest.mark.skipif(not os.environ.get("CYGATE_NO_EXTENSIONS"), reason="extensions are on")
def test_pure_router_when_extensions_are_off() -> None:
    assert selector.Router is RouterPy
    assert selector.normalize_path is selector.normalize_path_py
    assert not hasattr(selector, "RouterC")


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------


def test_static(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/"), ("GET", "/api/v1/products"), ("POST", "/api/v1/x"))
    assert router.match("GET", "/") == found("GET /")
    assert router.match("GET", "/api/v1/products") == found("GET /api/v1/products")
    assert router.match("GET", "/api/v1/product") == NOT_FOUND_MATCH
    assert router.match("GET", "/api/v1/productss") == NOT_FOUND_MATCH
    assert router.match("GET", "/api/v1/products/1") == NOT_FOUND_MATCH
    assert router.match("GET", "/api/v1") == NOT_FOUND_MATCH
    assert router.match("GET", "/API/v1/products") == NOT_FOUND_MATCH  # case-sensitive


def test_shared_results_and_fresh_params(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/a"), ("GET", "/b/{x}"))
    assert router.match("GET", "/a").params is None
    first = router.match("GET", "/b/1")
    assert first.params == {"x": "1"}
    assert first.params is not None
    first.params["x"] = "mutated"
    assert router.match("GET", "/b/1").params == {"x": "1"}
    assert isinstance(first, RouteMatch)
    assert isinstance(first, tuple)
    kind, value, params, allowed, bad_param = router.match("GET", "/b/2")
    assert (kind, value, params, allowed, bad_param) == (FOUND, "GET /b/{x}", {"x": "2"}, (), None)


def test_not_a_path(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/{p:path}"))
    assert router.match("GET", "") == NOT_FOUND_MATCH
    assert router.match("GET", "a/b") == NOT_FOUND_MATCH


def test_str_param(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/users/{name}"), ("GET", "/users/{name}/posts/{post}"))
    assert router.match("GET", "/users/ann") == found("GET /users/{name}", {"name": "ann"})
    assert router.match("GET", "/users/a b%c") == found("GET /users/{name}", {"name": "a b%c"})
    assert router.match("GET", "/users/ann/posts/7") == found(
        "GET /users/{name}/posts/{post}", {"name": "ann", "post": "7"}
    )
    assert router.match("GET", "/users") == NOT_FOUND_MATCH
    assert router.match("GET", "/users/ann/posts") == NOT_FOUND_MATCH
    assert router.match("GET", "/users//posts/7") == NOT_FOUND_MATCH  # never an empty segment


@pytest.mark.parametrize(
    "segment", ["0", "7", "-7", "123456789012345678", "-123456789012345678", "007"]
)
def test_int_param_accepts(router_cls: type[RouterPy], segment: str) -> None:
    router = build(router_cls, ("GET", "/n/{id:int}"))
    assert router.match("GET", f"/n/{segment}") == found("GET /n/{id:int}", {"id": segment})


@pytest.mark.parametrize(
    "segment",
    [
        "x",
        "-",
        "+7",
        "1.5",
        "1e3",
        "1234567890123456789",
        "--1",
        "1-",
        " 1",
        "\u0663",  # Arabic-Indic digit three: a digit, but not ASCII
        "\uff11",  # fullwidth digit one
    ],
)
def test_int_param_rejects(router_cls: type[RouterPy], segment: str) -> None:
    router = build(router_cls, ("GET", "/n/{id:int}"))
    assert router.match("GET", f"/n/{segment}") == bad("id")


@pytest.mark.parametrize("segment", [UUID, UUID.upper(), "3F2b8C1e-9a4D-4e6f-8B1a-2c3d4e5f6A7b"])
def test_uuid_param_accepts(router_cls: type[RouterPy], segment: str) -> None:
    router = build(router_cls, ("GET", "/o/{id:uuid}"))
    assert router.match("GET", f"/o/{segment}") == found("GET /o/{id:uuid}", {"id": segment})


@pytest.mark.parametrize(
    "segment",
    [
        UUID.replace("-", ""),
        "{" + UUID + "}",
        UUID[:-1],
        UUID + "0",
        UUID[:-1] + "g",
        UUID.replace("-", "_"),
        UUID[:8] + "x" + UUID[9:],  # a hyphen moved out of place
        "3f2b8c1e9-a4d-4e6f-8b1a-2c3d4e5f6a7b",
        UUID[:-1] + "é",
        "x",
    ],
)
def test_uuid_param_rejects(router_cls: type[RouterPy], segment: str) -> None:
    router = build(router_cls, ("GET", "/o/{id:uuid}"))
    assert router.match("GET", f"/o/{segment}") == bad("id")


def test_path_wildcard(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/static/{rest:path}"), ("GET", "/{all:path}"))
    value = "GET /static/{rest:path}"
    assert router.match("GET", "/static") == found(value, {"rest": ""})
    assert router.match("GET", "/static/a") == found(value, {"rest": "a"})
    assert router.match("GET", "/static/a/b/c.css") == found(value, {"rest": "a/b/c.css"})
    assert router.match("GET", "/") == found("GET /{all:path}", {"all": ""})
    assert router.match("GET", "/x/y") == found("GET /{all:path}", {"all": "x/y"})
    assert router.match("GET", "/staticx") == found("GET /{all:path}", {"all": "staticx"})


def test_wildcard_with_params_before(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/b/{bucket}/{id:int}/{key:path}"))
    assert router.match("GET", "/b/pics/5/2024/cat.png") == found(
        "GET /b/{bucket}/{id:int}/{key:path}", {"bucket": "pics", "id": "5", "key": "2024/cat.png"}
    )
    assert router.match("GET", "/b/pics/x/2024") == bad("id")


def test_precedence_static_param_wildcard(router_cls: type[RouterPy]) -> None:
    router = build(
        router_cls,
        ("GET", "/f/{rest:path}"),
        ("GET", "/f/{id:int}"),
        ("GET", "/f/latest"),
        ("GET", "/g/{name}"),
        ("GET", "/g/{rest:path}"),
        ("GET", "/g/me"),
    )
    assert router.match("GET", "/f/latest") == found("GET /f/latest")
    assert router.match("GET", "/f/12") == found("GET /f/{id:int}", {"id": "12"})
    # the int check fails but the wildcard matches fully: no BAD_PARAM
    assert router.match("GET", "/f/x") == found("GET /f/{rest:path}", {"rest": "x"})
    assert router.match("GET", "/f/12/x") == found("GET /f/{rest:path}", {"rest": "12/x"})
    assert router.match("GET", "/g/me") == found("GET /g/me")
    assert router.match("GET", "/g/you") == found("GET /g/{name}", {"name": "you"})
    assert router.match("GET", "/g/you/x") == found("GET /g/{rest:path}", {"rest": "you/x"})
    assert router.match("GET", "/g") == found("GET /g/{rest:path}", {"rest": ""})


def test_route_ending_here_beats_empty_wildcard(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/docs"), ("GET", "/docs/{page:path}"))
    assert router.match("GET", "/docs") == found("GET /docs")
    assert router.match("GET", "/docs/a") == found("GET /docs/{page:path}", {"page": "a"})


def test_backtracking(router_cls: type[RouterPy]) -> None:
    router = build(
        router_cls,
        ("GET", "/a/b/c"),
        ("GET", "/a/{x}/d"),
        ("GET", "/a/{x}/{y:int}/e"),
        ("GET", "/a/{rest:path}"),
    )
    assert router.match("GET", "/a/b/c") == found("GET /a/b/c")
    # static 'b' dead-ends below: the parameter branch is tried
    assert router.match("GET", "/a/b/d") == found("GET /a/{x}/d", {"x": "b"})
    assert router.match("GET", "/a/b/1/e") == found("GET /a/{x}/{y:int}/e", {"x": "b", "y": "1"})
    # both dead-end: the wildcard
    assert router.match("GET", "/a/b/c/d") == found("GET /a/{rest:path}", {"rest": "b/c/d"})
    assert router.match("GET", "/a/b/z/e") == found("GET /a/{rest:path}", {"rest": "b/z/e"})


def test_backtracking_drops_params_of_dead_branches(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/{a}/{b}/x"), ("GET", "/{a}/{b}/{c}/y"), ("GET", "/k/z"))
    assert router.match("GET", "/k/z") == found("GET /k/z")
    assert router.match("GET", "/1/2/3/y") == found(
        "GET /{a}/{b}/{c}/y", {"a": "1", "b": "2", "c": "3"}
    )


def test_method_aware_backtracking(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/users/me"), ("DELETE", "/users/{id}"))
    assert router.match("GET", "/users/me") == found("GET /users/me")
    assert router.match("DELETE", "/users/me") == found("DELETE /users/{id}", {"id": "me"})
    assert router.match("DELETE", "/users/7") == found("DELETE /users/{id}", {"id": "7"})
    assert router.match("GET", "/users/7") == not_allowed("DELETE")
    # the Allow header lists every method the path takes, across routes
    assert router.match("PUT", "/users/me") == not_allowed("DELETE", "GET", "HEAD")


def test_method_not_allowed(router_cls: type[RouterPy]) -> None:
    router = build(
        router_cls, ("POST", "/items"), ("GET", "/items"), ("PATCH", "/items"), ("PURGE", "/c")
    )
    assert router.match("DELETE", "/items") == not_allowed("GET", "HEAD", "PATCH", "POST")
    assert router.match("PURGE", "/items") == not_allowed("GET", "HEAD", "PATCH", "POST")
    assert router.match("GET", "/c") == not_allowed("PURGE")
    assert router.match("PURGE", "/c") == found("PURGE /c")
    assert router.match("get", "/items") == not_allowed("GET", "HEAD", "PATCH", "POST")


def test_method_not_allowed_union_over_many_routes(router_cls: type[RouterPy]) -> None:
    # 16 routes fit /a/b/c/d, each with its own method: more than the C search remembers.
    router = router_cls()
    methods = []
    for shape in range(16):
        parts = [f"{{p{i}}}" if shape >> i & 1 else "abcd"[i] for i in range(4)]
        method = f"M{shape:02d}"
        methods.append(method)
        router.add(method, "/" + "/".join(parts), shape)
    assert router.match("GET", "/a/b/c/d") == not_allowed(*methods)
    assert router.match("M05", "/a/b/c/d") == found(5, {"p0": "a", "p2": "c"})
    # and 8 of them, which the C search unites by itself
    assert router.match("GET", "/a/b/c/x") == not_allowed(*methods[8:])
    assert router.match("GET", "/x/b/c/d") == not_allowed(*methods[1::2])
    assert router.match("GET", "/x/y/c/d") == not_allowed(*methods[3::4])


def test_head_falls_back_to_get(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/a"), ("GET", "/b"), ("HEAD", "/b"), ("POST", "/c"))
    assert router.match("HEAD", "/a") == found("GET /a")
    assert router.match("HEAD", "/b") == found("HEAD /b")
    assert router.match("HEAD", "/c") == not_allowed("POST")
    assert router.match("POST", "/a") == not_allowed("GET", "HEAD")


def test_any_method(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("*", "/proxy/{p:path}"), ("GET", "/mixed"), ("*", "/mixed"))
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE", "X-Y"):
        assert router.match(method, "/proxy/a/b") == found("* /proxy/{p:path}", {"p": "a/b"})
    assert router.match("GET", "/mixed") == found("GET /mixed")
    assert router.match("HEAD", "/mixed") == found("GET /mixed")  # own method, then GET, then *
    assert router.match("POST", "/mixed") == found("* /mixed")
    assert router.match("PURGE", "/mixed") == found("* /mixed")


def test_higher_precedence_any_route_wins(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("*", "/a/b"), ("GET", "/a/{x}"))
    assert router.match("GET", "/a/b") == found("* /a/b")
    assert router.match("GET", "/a/c") == found("GET /a/{x}", {"x": "c"})


def test_bad_param(router_cls: type[RouterPy]) -> None:
    router = build(
        router_cls,
        ("GET", "/orders/{id:int}/items"),
        ("GET", "/m/{a:int}/{b:uuid}"),
        ("GET", "/s/{x:int}"),
        ("GET", "/s/{x:int}/{y}"),
    )
    assert router.match("GET", "/orders/abc/items") == bad("id")
    assert router.match("POST", "/orders/abc/items") == bad("id")
    assert router.match("GET", "/orders/abc/other") == NOT_FOUND_MATCH  # not the shape
    assert router.match("GET", "/orders/abc") == NOT_FOUND_MATCH
    assert router.match("GET", "/m/x/y") == bad("a")  # the first one that failed
    assert router.match("GET", "/m/1/y") == bad("b")
    assert router.match("GET", "/m/1/" + UUID) == found(
        "GET /m/{a:int}/{b:uuid}", {"a": "1", "b": UUID}
    )
    assert router.match("GET", "/s/q/r") == bad("x")


def test_bad_param_in_precedence_order(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/p/{a:int}/z"), ("GET", "/p/q/{b:uuid}"))
    assert router.match("GET", "/p/q/z") == bad("b")  # the static branch comes first


def test_method_not_allowed_beats_bad_param(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/items/{id:int}"), ("POST", "/items/new"))
    assert router.match("GET", "/items/new") == not_allowed("POST")
    assert router.match("GET", "/items/old") == bad("id")


def test_found_beats_bad_param(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/v/{id:int}"), ("GET", "/{a}/{b}"))
    assert router.match("GET", "/v/x") == found("GET /{a}/{b}", {"a": "v", "b": "x"})


def test_hosts(router_cls: type[RouterPy]) -> None:
    router = router_cls()
    router.add("GET", "/x", "api x", host="API.Example.com")
    router.add("GET", "/x", "default x")
    router.add("GET", "/y", "default y")
    router.add("POST", "/z", "api z", host="api.example.com")
    router.add("GET", "/z", "default z")
    router.add("GET", "/w", "admin w", host="admin.example.com")
    assert router.match("GET", "/x", "api.example.com") == found("api x")
    assert router.match("GET", "/x", "other.example.com") == found("default x")
    assert router.match("GET", "/x") == found("default x")
    assert router.match("GET", "/y", "api.example.com") == found("default y")
    # the host table has the path but not the method: the host-less table is tried too
    assert router.match("GET", "/z", "api.example.com") == found("default z")
    assert router.match("POST", "/z", "api.example.com") == found("api z")
    assert router.match("DELETE", "/z", "api.example.com") == not_allowed("GET", "HEAD", "POST")
    assert router.match("POST", "/z") == not_allowed("GET", "HEAD")
    assert router.match("GET", "/w", "admin.example.com") == found("admin w")
    assert router.match("GET", "/w", "api.example.com") == NOT_FOUND_MATCH
    assert router.match("GET", "/w") == NOT_FOUND_MATCH


def test_wide_strings(router_cls: type[RouterPy]) -> None:
    # 1-, 2- and 4-byte str kinds in routes and in paths (the C matcher reads all three).
    router = build(
        router_cls,
        ("GET", "/café/{id:int}"),
        ("GET", "/ŝ/{u:uuid}"),
        ("GET", "/😀/{name}"),
        ("GET", "/a/b"),
        ("GET", "/a/{x}/{rest:path}"),
    )
    assert router.match("GET", "/café/5") == found("GET /café/{id:int}", {"id": "5"})
    assert router.match("GET", "/café/٣") == bad("id")
    assert router.match("GET", "/ŝ/" + UUID) == found("GET /ŝ/{u:uuid}", {"u": UUID})
    assert router.match("GET", "/ŝ/" + UUID[:-1] + "ŝ") == bad("u")
    assert router.match("GET", "/😀/ŝ") == found("GET /😀/{name}", {"name": "ŝ"})
    assert router.match("GET", "/a/ŝ/😀/é") == found(
        "GET /a/{x}/{rest:path}", {"x": "ŝ", "rest": "😀/é"}
    )
    assert router.match("GET", "/a/b/😀") == found(
        "GET /a/{x}/{rest:path}", {"x": "b", "rest": "😀"}
    )
    assert router.match("GET", "/😀/b") == found("GET /😀/{name}", {"name": "b"})
    assert router.match("GET", "/ŝ") == NOT_FOUND_MATCH


def test_many_static_children(router_cls: type[RouterPy]) -> None:
    names = [f"r{i}" for i in range(300)] + ["", "a" * 40, "ü", "ŝŝ"]
    router = router_cls()
    for name in names[:300]:
        router.add("GET", f"/{name}", name)
    for name in names[:300]:
        assert router.match("GET", f"/{name}") == found(name)
    assert router.match("GET", "/r300") == NOT_FOUND_MATCH
    assert router.match("GET", "/r") == NOT_FOUND_MATCH


def test_add_after_match(router_cls: type[RouterPy]) -> None:
    router = build(router_cls, ("GET", "/a"))
    assert router.match("GET", "/b") == NOT_FOUND_MATCH
    router.add("GET", "/b", "b")
    router.add("GET", "/b", "b", host="h")
    assert router.match("GET", "/b") == found("b")
    assert router.match("GET", "/b", "h") == found("b")


def test_routes_listing(router_cls: type[RouterPy]) -> None:
    router = router_cls()
    router.add("GET", "/b/", 1)
    router.add("*", "//a/./{x:int}", 2, host="Example.COM")
    router.add("POST", "/b", 3)
    assert router.routes() == [
        (None, "GET", "/b", 1),
        ("example.com", "*", "/a/{x:int}", 2),
        (None, "POST", "/b", 3),
    ]
    router.routes().clear()
    assert len(router.routes()) == 3


def test_max_params(router_cls: type[RouterPy]) -> None:
    router = router_cls()
    pattern = "/" + "/".join(f"{{p{i}}}" for i in range(MAX_PARAMS))
    router.add("GET", pattern, "many")
    path = "/" + "/".join(str(i) for i in range(MAX_PARAMS))
    assert router.match("GET", path) == found("many", {f"p{i}": str(i) for i in range(MAX_PARAMS)})
    with pytest.raises(RouteConflict, match="parameters"):
        router.add("GET", pattern + "/{one_more}", "too many")


# ---------------------------------------------------------------------------------------------
# add: syntax and conflicts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "api",
        "",
        "/a\x00",
        "/%zz",
        "/\udc80",
        "/{id:float}",
        "/{id:}",
        "/{}",
        "/{:int}",
        "/{1x}",
        "/{a-b}",
        "/{id",
        "/id}",
        "/{{id}}",
        "/x{id}",
        "/{id}x",
        "/{a}{b}",
        "/{rest:path}/x",
        "/{a}/{a}",
        "/{a}/{a:int}",
    ],
)
def test_bad_pattern(router_cls: type[RouterPy], pattern: str) -> None:
    router = router_cls()
    with pytest.raises(RouteConflict):
        router.add("GET", pattern, None)
    assert router.routes() == []


@pytest.mark.parametrize("method", ["get", "", "GE T", "**", "GET*", "é"])
def test_bad_method(router_cls: type[RouterPy], method: str) -> None:
    with pytest.raises(ValueError, match="method"):
        router_cls().add(method, "/", None)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("GET", "/a/b"), ("GET", "/a/b")),
        (("GET", "/a/b"), ("GET", "/a/b/")),
        (("GET", "/a/b"), ("GET", "//a/./b")),
        (("*", "/a"), ("*", "/a")),
        (("GET", "/x/{id}"), ("GET", "/x/{id}")),
        (("GET", "/f/{p:path}"), ("GET", "/f/{p:path}")),
        (("GET", "/x/{id:int}"), ("GET", "/x/{name}")),  # different names and types
        (("GET", "/x/{id:int}"), ("POST", "/x/{id}")),  # different types
        (("GET", "/x/{id}"), ("POST", "/x/{key}/y")),  # different names
        (("GET", "/x/{id:uuid}/a"), ("GET", "/x/{id:int}/b")),
        (("GET", "/f/{p:path}"), ("POST", "/f/{q:path}")),
    ],
)
def test_conflicts(
    router_cls: type[RouterPy], first: tuple[str, str], second: tuple[str, str]
) -> None:
    router = build(router_cls, first)
    with pytest.raises(RouteConflict):
        router.add(*second, value="second")
    assert router.routes() == [(None, first[0], router.routes()[0][2], f"{first[0]} {first[1]}")]
    assert len(router.routes()) == 1


def test_no_conflict(router_cls: type[RouterPy]) -> None:
    router = build(
        router_cls,
        ("GET", "/a"),
        ("POST", "/a"),
        ("*", "/a"),
        ("GET", "/x/{id:int}"),
        ("POST", "/x/{id:int}/y"),
        ("GET", "/x/{rest:path}"),  # a wildcard may sit beside the parameter
        ("GET", "/x/static"),
    )
    router.add("GET", "/a", "other host", host="h")
    router.add("GET", "/x/{name}", "other host", host="h")
    assert len(router.routes()) == 9


# ---------------------------------------------------------------------------------------------
# Properties: an independent brute-force model, and C == py
# ---------------------------------------------------------------------------------------------

_TYPE_RE = {
    "str": re.compile(r"[^/]+"),
    "int": re.compile(r"-?[0-9]{1,18}"),
    "uuid": re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"),
}


def _fit(pattern: str, segments: list[str]) -> tuple[list[int], dict[str, str], str | None] | None:
    """How ``pattern`` fits a path: (precedence key, params, first failed typed param) or None."""
    parts = [] if pattern == "/" else pattern[1:].split("/")
    key: list[int] = []
    params: dict[str, str] = {}
    failed: str | None = None
    for i, part in enumerate(parts):
        name, _, type_name = part[1:-1].partition(":") if part.startswith("{") else ("", "", "")
        if type_name == "path":
            params[name] = "/".join(segments[i:])
            return [*key, 2], params, failed
        if i >= len(segments):
            return None
        segment = segments[i]
        if not name:
            if segment != part:
                return None
            key.append(0)
        elif _TYPE_RE[type_name or "str"].fullmatch(segment):
            key.append(1)
            params[name] = segment
        elif type_name in ("int", "uuid"):
            key.append(1)
            failed = failed or name
        else:
            return None
    return (key, params, failed) if len(parts) == len(segments) else None


def model_match(
    routes: list[tuple[str | None, str, str, Any]], method: str, path: str, host: str | None
) -> RouteMatch:
    """What the router must answer, by trying every route (the rules of the module docs)."""
    if not path.startswith("/"):
        return NOT_FOUND_MATCH
    segments = [] if path == "/" else path[1:].split("/")
    leaves: dict[tuple[int, str], dict[str, tuple[Any, dict[str, str]]]] = {}
    keys: dict[tuple[int, str], list[int]] = {}
    bad_fits: list[tuple[int, list[int], str]] = []
    for route_host, route_method, pattern, value in routes:
        if route_host is not None and route_host != host:
            continue
        tree = 1 if route_host is None else 0  # the host's table first
        fit = _fit(pattern, segments)
        if fit is None:
            continue
        key, params, failed = fit
        if failed is not None:
            bad_fits.append((tree, key, failed))
            continue
        leaves.setdefault((tree, pattern), {})[route_method] = (value, params)
        keys[(tree, pattern)] = key
    ordered = sorted(leaves, key=lambda leaf: (leaf[0], keys[leaf]))
    for leaf in ordered:
        by_method = leaves[leaf]
        hit = by_method.get(method)
        if hit is None and method == "HEAD":
            hit = by_method.get("GET")
        hit = hit or by_method.get("*")
        if hit is not None:
            return RouteMatch(FOUND, hit[0], hit[1] or None, (), None)
    if ordered:
        allowed = {m for leaf in ordered for m in leaves[leaf]}
        if "GET" in allowed:
            allowed.add("HEAD")
        return RouteMatch(METHOD_NOT_ALLOWED, None, None, tuple(sorted(allowed)), None)
    if bad_fits:
        return bad(min(bad_fits, key=lambda b: (b[0], b[1]))[2])
    return NOT_FOUND_MATCH


_STATIC = ["a", "b", "ü", "ŝ", "1"]
_PARAM_TYPES = ["", ":int", ":uuid"]
_METHODS = ["GET", "HEAD", "POST", "PURGE", "*"]
_HOSTS = [None, None, "h.example"]


@st.composite
def route_tables(draw: st.DrawFn) -> list[tuple[str, str, str | None]]:
    """(method, pattern, host) lists over a small vocabulary, so that routes collide."""
    table = []
    for _ in range(draw(st.integers(1, 14))):
        parts = []
        for depth in range(draw(st.integers(0, 4))):
            if draw(st.integers(0, 2)) == 0:
                parts.append(f"{{p{depth}{draw(st.sampled_from(_PARAM_TYPES))}}}")
            else:
                parts.append(draw(st.sampled_from(_STATIC)))
        if draw(st.integers(0, 4)) == 0:
            parts.append(f"{{w{draw(st.integers(0, 1))}:path}}")
        pattern = "/" + "/".join(parts)
        table.append((draw(st.sampled_from(_METHODS)), pattern, draw(st.sampled_from(_HOSTS))))
    return table


_SEGMENT_VALUES = ["a", "b", "ü", "ŝ", "😀", "1", "-12", "x", "", UUID, UUID.upper(), UUID[1:]]


@st.composite
def paths_for(draw: st.DrawFn, table: list[tuple[str, str, str | None]]) -> str:
    """A path shaped like one of the table's patterns (or not at all), with good/bad values."""
    if not table or draw(st.integers(0, 4)) == 0:
        segments = draw(st.lists(st.sampled_from(_SEGMENT_VALUES), max_size=5))
        return "/" + "/".join(segments) if segments != [""] else "/"
    pattern = draw(st.sampled_from(table))[1]
    segments = []
    for part in [] if pattern == "/" else pattern[1:].split("/"):
        if part.endswith(":path}"):
            segments += draw(st.lists(st.sampled_from(_SEGMENT_VALUES), max_size=3))
        elif part.startswith("{") or draw(st.integers(0, 9)) == 0:
            segments.append(draw(st.sampled_from(_SEGMENT_VALUES)))
        else:
            segments.append(part)
    return "/" + "/".join(segments)


def _load(router: RouterPy, table: list[tuple[str, str, str | None]]) -> list[bool]:
    accepted = []
    for index, (method, pattern, host) in enumerate(table):
        try:
            router.add(method, pattern, index, host=host)
        except RouteConflict:
            accepted.append(False)
        else:
            accepted.append(True)
    return accepted


@settings(max_examples=400, deadline=None)
@given(data=st.data(), table=route_tables())
def test_router_follows_the_model(
    router_cls: type[RouterPy], data: st.DataObject, table: list[tuple[str, str, str | None]]
) -> None:
    router = router_cls()
    _load(router, table)
    routes = router.routes()
    for _ in range(10):
        path = data.draw(paths_for(table))
        method = data.draw(st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PURGE"]))
        host = data.draw(st.sampled_from(["h.example", "other", None]))
        assert router.match(method, path, host) == model_match(routes, method, path, host), (
            method,
            path,
            host,
        )


@pytest.mark.c_extension
@settings(max_examples=400, deadline=None)
@given(data=st.data(), table=route_tables())
def test_c_and_py_agree(data: st.DataObject, table: list[tuple[str, str, str | None]]) -> None:
    router_c = require_compiled("router").RouterC()
    router_py: RouterPy = RouterPy()
    assert _load(router_c, table) == _load(router_py, table)
    assert router_c.routes() == router_py.routes()
    for _ in range(10):
        path = data.draw(paths_for(table) | st.sampled_from(["", "x", "//", "/a/", "/a//b"]))
        method = data.draw(st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PURGE", "*", "é"]))
        host = data.draw(st.sampled_from(["h.example", "other", None]))
        assert router_c.match(method, path, host) == router_py.match(method, path, host)
