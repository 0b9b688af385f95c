"""Cross-origin resource sharing (CORS), answered in the edge.

Off unless ``cors_origins`` lists origins (``https://app.example.com``; ``null`` for the opaque
origin of sandboxed documents and ``file:`` pages, refused unless listed; ``*`` for any origin,
only without credentials). For a request whose ``Origin`` is allowed:

- **a preflight** (``OPTIONS`` with ``Access-Control-Request-Method``) naming a method of the
  route is answered here with 204, ``Access-Control-Allow-Methods`` (the path's methods, from
  the router) and ``Access-Control-Allow-Headers`` (derived from the routes' policies: see
  :func:`request_headers`), ``Access-Control-Max-Age``, the origin and, when configured,
  ``Access-Control-Allow-Credentials``. Those lists are built once per route (the set of route
  names of the path) and kept. A preflight for a method the path does not have, or from an
  origin not allowed, gets the plain ``OPTIONS`` answer (200 with ``Allow``) and no
  ``Access-Control-*`` header: the browser then refuses the request;
- **every other answer** (Litestar's, a fast handler's, a cache hit, a problem+json error)
  carries ``Access-Control-Allow-Origin`` with that origin (``*`` when ``*`` is configured
  without credentials), ``Access-Control-Expose-Headers`` (:data:`EXPOSED`) and, when
  configured, ``Access-Control-Allow-Credentials: true``.

Refused origins get no ``Access-Control-*`` header at all. Every answer carries
``Vary: Origin`` while CORS is on (the answer depends on the origin even when the request had
none: a shared cache must not hand one origin's answer to another).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from cygate.edge.context import RoutePolicy

__all__ = ["EXPOSED", "VARY_ORIGIN", "Cors", "request_headers"]

EXPOSED: Final = (
    b"ETag, X-Request-ID, X-Cache, Age, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, "
    b"RateLimit-Policy, Retry-After, Idempotent-Replayed, Location, traceparent"
)
"""The response headers a cross-origin script may read (beyond the CORS-safelisted ones)."""

VARY_ORIGIN: Final = (b"vary", b"Origin")
_PREFLIGHT_VARY: Final = (b"vary", b"Origin, Access-Control-Request-Method")
_WRITES: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NORMALISED: Final = frozenset({b"DELETE", b"GET", b"HEAD", b"OPTIONS", b"POST", b"PUT"})
_PREFLIGHTS_MAX = 1024


def request_headers(method: str, policy: RoutePolicy) -> set[str]:
    """The request headers a browser may send to one route, from its policy: the ids the edge
    keeps (``X-Request-ID``, ``traceparent``); ``Authorization`` where a token is required;
    ``Content-Type`` and ``Idempotency-Key`` on writes, ``If-Match`` on PUT, PATCH and DELETE;
    ``If-None-Match`` and ``Cache-Control`` on cached reads."""
    names = {"x-request-id", "traceparent"}
    if policy.auth or policy.roles:
        names.add("authorization")
    if method in _WRITES:
        names.update(("content-type", "idempotency-key"))
        if method != "POST":
            names.add("if-match")
    if policy.cache is not None:
        names.update(("if-none-match", "cache-control"))
    return names


class Cors:
    """The edge's CORS answers for the configured origins (see the module docstring)."""

    __slots__ = ("_any", "_origins", "_preflights", "_tail", "credentials", "max_age")

    def __init__(self, origins: Sequence[str], *, allow_credentials: bool, max_age: int) -> None:
        if "*" in origins and allow_credentials:
            raise ValueError("cors_origins '*' cannot go with cors_allow_credentials")
        self._any = "*" in origins
        self._origins = frozenset(o.encode("ascii") for o in origins if o != "*")
        self.credentials = allow_credentials
        self.max_age = max_age
        tail = [(b"access-control-expose-headers", EXPOSED), VARY_ORIGIN]
        if allow_credentials:
            tail.insert(0, (b"access-control-allow-credentials", b"true"))
        self._tail = tuple(tail)
        self._preflights: dict[tuple[str, ...], tuple[frozenset[bytes], bytes, bytes]] = {}

    def allow_origin(self, origin: bytes | None) -> bytes | None:
        """The ``Access-Control-Allow-Origin`` value for this ``Origin``, or None: refused
        (no header, or an origin not listed; ``null`` only when listed)."""
        if origin is None:
            return None
        if origin in self._origins:
            return origin
        if self._any and origin != b"null":
            return b"*"
        return None

    def response_headers(self, origin: bytes | None) -> tuple[tuple[bytes, bytes], ...]:
        """What an answer (not a preflight) to a request with this ``Origin`` gets."""
        allowed = self.allow_origin(origin)
        if allowed is None:
            return (VARY_ORIGIN,)
        return ((b"access-control-allow-origin", allowed), *self._tail)

    def preflight(
        self,
        origin: bytes | None,
        method: bytes,
        routes: Iterable[tuple[str, RoutePolicy]],
    ) -> list[tuple[bytes, bytes]] | None:
        """The headers of a 204 answering a preflight for ``method`` on a path whose routes are
        ``routes`` (method, policy), or None: refused (see the module docstring)."""
        allowed = self.allow_origin(origin)
        if allowed is None:
            return None
        routes = sorted(routes, key=lambda r: r[0])
        key = tuple(policy.name for _, policy in routes)
        found = self._preflights.get(key)
        if found is None:
            methods = {m for m, _ in routes}
            if "GET" in methods:
                methods.add("HEAD")
            headers: set[str] = set()
            for m, policy in routes:
                headers |= request_headers(m, policy)
            found = (
                frozenset(m.encode() for m in methods),
                ", ".join(sorted(methods)).encode(),
                ", ".join(sorted(headers)).encode(),
            )
            if len(self._preflights) >= _PREFLIGHTS_MAX:
                self._preflights.clear()
            self._preflights[key] = found
        methods_set, methods_value, headers_value = found
        upper = method.upper()
        if upper in _NORMALISED:
            method = upper  # the Fetch standard normalises these six, and only these
        if method not in methods_set:
            return None
        out = [
            (b"access-control-allow-origin", allowed),
            (b"access-control-allow-methods", methods_value),
            (b"access-control-allow-headers", headers_value),
            (b"access-control-max-age", b"%d" % self.max_age),
        ]
        if self.credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        out.append(_PREFLIGHT_VARY)
        return out
