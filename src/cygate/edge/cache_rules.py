"""Cache rules, and the routes that use them: key function, tags, headers, input checks.

A rule (:class:`cygate.edge.settings.CacheRule`) is named in a route's ``opt={"cache": "<rule>"}``;
:class:`CacheRoute` is what the cache keeps per cached route. :func:`check_inputs` refuses a
rule whose key leaves out something the handler reads, and :func:`load_secret` finds the key
secret (the setting, or a file generated at first start in development and test).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import string
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cygate.core.cachekey import CacheKey
from cygate.edge.auth import provide_principal
from cygate.edge.cache_entry import rule_headers
from cygate.edge.settings import CacheRule

if TYPE_CHECKING:
    from cygate.edge.settings import CacheSettings

__all__ = ["DEFAULT_RULES", "CacheRoute", "cache_rules", "check_inputs", "load_secret"]

DEFAULT_RULES: dict[str, CacheRule] = {
    # The seed's gateway tier: 5 minutes, invalidated by the catalog's writes (by tag).
    "product": CacheRule(ttl=300, max_age=60, tags=["product:{product_id}"]),
    "product-list": CacheRule(
        ttl=300,
        max_age=60,
        query=["category", "min_price_cents", "max_price_cents", "sort", "limit", "cursor"],
        tags=["products"],
    ),
    "categories": CacheRule(ttl=300, max_age=60, tags=["categories"]),
    # Search (issue 7): short, since every catalog write purges it; popular queries repeat.
    "search": CacheRule(
        ttl=30,
        max_age=10,
        stale_while_revalidate=10,
        query=["q", "limit", "cursor", "category", "min_price_cents", "max_price_cents"],
        tags=["search"],
    ),
    # Per caller: keyed by the principal, never served to another caller. ``max-age=0`` and
    # no stale-while-revalidate: a browser revalidates every time (a cheap 304 by ETag), so a
    # change is seen at once. Identity's writes (name, roles, erasure) invalidate
    # ``user:{caller}``. A 404 (a token whose subject has no account) is not remembered.
    "me": CacheRule(
        ttl=60,
        max_age=0,
        stale_while_revalidate=0,
        scope="private",
        tags=["user:{caller}"],
        not_found_ttl=0,
    ),
}
"""Built-in rules; ``cache_rules`` in the settings adds rules or replaces these by name."""


def cache_rules(settings: CacheSettings) -> dict[str, CacheRule]:
    """The rules in force: the built-in ones, with the settings' added or replacing them."""
    return {**DEFAULT_RULES, **settings.rules}


_UUID_HEX = frozenset("0123456789abcdefABCDEF-")
CALLER = "caller"
"""The tag placeholder filled with the caller's subject (private rules only)."""


def load_secret(settings: CacheSettings) -> bytes:
    """The cache-key secret: the setting, else (development, test) the key file, created with
    a random secret at first start. Every worker and instance that shares L2 must use the
    same secret, so it is never generated per process."""
    if settings.key_secret:
        return settings.key_secret.encode("utf-8")
    path = pathlib.Path(settings.key_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(secrets.token_urlsafe(32) + "\n")
        tmp.chmod(0o600)
        # NOTE: link() fails if another worker won the race; then its secret is the one.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"the cache key file {path} is empty")
    return secret.encode("utf-8")


class CacheRoute:
    """One cached route: its rule, its key function, its tag templates, its headers."""

    __slots__ = (
        "extra",
        "honours_no_cache",
        "name",
        "private",
        "rule",
        "spec",
        "tag_templates",
        "types",
    )

    def __init__(self, name: str, rule: CacheRule, secret: bytes) -> None:
        self.name = name
        self.rule = rule
        self.private = rule.scope == "private"
        self.honours_no_cache = rule.honours_client_no_cache
        """A request's no-cache/no-store reloads or bypasses (limited per caller)."""
        self.spec = CacheKey(
            secret, name, query=rule.query, headers=rule.headers, private=self.private
        )
        self.types = _param_types(name)
        self.extra = rule_headers(rule)
        if CALLER in self.types:
            raise ValueError(f"{name}: a path parameter may not be named {CALLER!r}")
        for template in rule.tags:
            for _, field, _, _ in string.Formatter().parse(template):
                if field == CALLER and not self.private:
                    # NOTE: a public entry is shared by every caller: tagging it by one is a
                    # sign that its body depends on the caller.
                    raise ValueError(
                        f"cache rule tag {template!r} on {name}: {{caller}} needs a private rule"
                    )
                if field is not None and field != CALLER and field not in self.types:
                    raise ValueError(
                        f"cache rule tag {template!r} on {name}: no path parameter {field!r}"
                    )
        self.tag_templates = tuple(rule.tags)

    def tags(self, params: Mapping[str, str] | None, caller: str = "") -> tuple[str, ...]:
        """The tags of one request: templates filled from its path parameters, normalised so
        that one resource has one tag however its id was spelled (uuid case, int zeros), and
        ``{caller}`` with the caller's subject (``user:{caller}``)."""
        if not self.tag_templates:
            return ()
        values: dict[str, str] = {CALLER: caller}
        for name, kind in self.types.items():
            raw = (params or {}).get(name, "")
            if kind == "uuid" and set(raw) <= _UUID_HEX:
                raw = raw.lower()
            elif kind == "int":
                with contextlib.suppress(ValueError):
                    raw = str(int(raw))
            values[name] = raw
        return tuple(t.format_map(values) for t in self.tag_templates)


# Handler parameters that are not request input, and ones that expose all of it.
_NOT_INPUT = frozenset({"state"})
_RAW_INPUT = frozenset(
    {"request", "scope", "headers", "cookies", "query", "socket", "body", "data"}
)


def check_inputs(route_name: str, rule: CacheRule, handler: Any) -> None:
    """Refuse a rule whose key leaves out a request input the Litestar handler reads.

    NOTE: this is what makes the allow-lists safe: a query parameter or header the handler
    declares but the rule does not list would let one request's answer be served for
    another's. The caller (the ``principal`` dependency, :func:`cygate.edge.auth.
    provide_principal`) is part of a private rule's key, so a private rule allows it; a public
    rule whose handler reads it is refused (its entry would be one caller's answer served to
    all). Any other dependency is refused: what it reads from the request is not known here."""
    path_params = set(_param_types(route_name))
    queries, headers = set(rule.query), {h.lower() for h in rule.headers}
    dependencies = _dependencies(handler)
    for name, param in handler.parsed_fn_signature.parameters.items():
        if name in _NOT_INPUT or name in path_params:
            continue
        if name in _RAW_INPUT:
            raise ValueError(f"{route_name} reads the raw request ({name!r}); it cannot be cached")
        if name in dependencies:
            if getattr(dependencies[name], "dependency", None) is not provide_principal:
                raise ValueError(
                    f"{route_name} has a dependency {name!r} the cache cannot check; "
                    "it cannot be cached"
                )
            if rule.scope != "private":
                raise ValueError(
                    f"{route_name} reads the caller ({name!r}): its cache rule must be private"
                )
            continue
        kwarg = getattr(param, "kwarg_definition", None)
        # Parameter(header="x") and HeaderParameter(name="x") both say where and what.
        kind = getattr(getattr(kwarg, "param_type", None), "value", None) or "query"
        alias = (getattr(kwarg, kind, None) or getattr(kwarg, "name", None) or name).lower()
        if kind == "cookie":
            raise ValueError(f"{route_name} reads a cookie ({alias!r}); it cannot be cached")
        if kind == "header" and alias not in headers:
            raise ValueError(f"cache rule for {route_name} must vary on header {alias!r}")
        if kind == "query" and alias not in {q.lower() for q in queries}:
            raise ValueError(f"cache rule for {route_name} must list query parameter {alias!r}")


def _dependencies(handler: Any) -> dict[str, Any]:
    """The handler's dependencies by name (its own and its owners': app, router, controller)."""
    try:
        return dict(handler.resolve_dependencies())
    except Exception:
        return dict(getattr(handler, "dependencies", None) or {})


def _param_types(route_name: str) -> dict[str, str]:
    """``{product_id: "uuid"}`` from ``GET /api/v1/products/{product_id:uuid}``."""
    out = {}
    for segment in route_name.split(" ", 1)[-1].split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            name, _, kind = segment[1:-1].partition(":")
            out[name] = kind or "str"
    return out
