"""What the edge knows about one request, handed to every stage.

Stages (token check, rate limit, ...) are callables ``stage(ctx)`` run in order after the route
is resolved and before the request is dispatched. A stage either returns ``None`` (it decided
without waiting: PERF, no coroutine is created) or an awaitable the edge awaits. To refuse the
request it raises :class:`cygate.edge.problem.Problem`; to add response headers (``RateLimit-*``)
it appends to ``ctx.response_headers``, which go on every response, refusals included.

The route's :class:`RoutePolicy` (what the edge must do for a matched route before the app sees
the request) lives here too: a context carries its policy, and a policy's fast handler takes a
context, so the two types are defined together.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec

__all__ = ["EdgeContext", "FastHandler", "Principal", "RoutePolicy", "Stage", "TrustedProxies"]


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling, as the token stage established it."""

    sub: str
    """Subject: a user id, or a service client id."""
    roles: frozenset[str] = frozenset()
    issuer: str = ""
    jti: str = ""
    expires_at: int = 0
    """``exp`` of the token, seconds since the epoch."""
    client_id: str | None = None
    """Set for ``client_credentials`` tokens (service clients)."""
    claims: tuple[tuple[str, Any], ...] = ()
    """The token's custom claims (``category_ids``, ...), sorted by name, each a string,
    number or boolean, or a tuple of those: the principal's attributes for the policy stage
    (``cygate.edge.policy``). Registered and cygate's own claims are not among them."""

    @classmethod
    def from_claims(cls, claims: dict[str, Any], issuer: str, roles: frozenset[str]) -> Principal:
        """The principal of verified token claims; ``roles`` already checked by the caller
        (each issuer has its own roles claim and allow-list)."""
        client_id = claims.get("client_id")
        return cls(
            sub=claims["sub"],
            roles=roles,
            issuer=issuer,
            jti=claims["jti"],
            expires_at=claims["exp"],
            client_id=client_id if isinstance(client_id, str) else None,
            claims=custom_claims(claims),
        )


_REGISTERED = frozenset(
    {
        "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "roles", "amr", "scope",
        "typ", "azp", "auth_time", "acr", "sid", "cnf",
    }
)  # fmt: skip
_SCALARS = (str, int, float, bool)


def custom_claims(claims: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The custom claims of a token (see ``Principal.claims``); others are left out: objects,
    and lists holding anything but scalars."""
    out: list[tuple[str, Any]] = []
    for name, value in claims.items():
        if name in _REGISTERED:
            continue
        if isinstance(value, _SCALARS):
            out.append((name, value))
        elif isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value):
            out.append((name, tuple(value)))
    out.sort()
    return tuple(out)


class TrustedProxies:
    """Peers whose ``X-Forwarded-For`` is believed (addresses or CIDR networks)."""

    __slots__ = ("_exact", "_networks")

    def __init__(self, entries: Iterable[str] = ()) -> None:
        nets = [ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip()]
        self._exact = frozenset(str(n.network_address) for n in nets if n.num_addresses == 1)
        self._networks = tuple(n for n in nets if n.num_addresses > 1)

    def __bool__(self) -> bool:
        return bool(self._exact or self._networks)

    def __contains__(self, address: str) -> bool:
        if address in self._exact:
            return True
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def client_ip(self, peer: str, forwarded_for: bytes | None) -> str:
        """The client's address: the socket peer, unless the peer is trusted; then the nearest
        address in ``X-Forwarded-For`` that is not itself a trusted proxy (right to left), so a
        client can never choose its own address by sending the header."""
        if not forwarded_for or peer not in self:
            return peer
        hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            try:
                address = str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a malformed chain: believe nothing in it
            if address not in self:
                return address
        return peer


class _Scan:
    """The type of :data:`_SCAN`."""


_SCAN = _Scan()
"""``EdgeContext(authorization=...)`` not given: find the header in ``scope``."""


class EdgeContext:
    """Per-request state of the edge. ``__slots__``: one is made for every request."""

    __slots__ = (
        "_client_ip",
        "authorization",
        "direct_headers",
        "headers",
        "host",
        "method",
        "params",
        "path",
        "peer",
        "policy",
        "principal",
        "query",
        "request_id",
        "response_headers",
        "scope",
        "status",
        "traceparent",
        "trusted",
    )

    def __init__(
        self,
        scope: Any,
        method: str,
        path: str,
        host: str,
        request_id: str,
        traceparent: bytes,
        policy: RoutePolicy,
        params: dict[str, str] | None,
        trusted: TrustedProxies | None = None,
        authorization: bytes | _Scan | None = _SCAN,
    ) -> None:
        self.scope = scope
        self.method = method
        self.path = path
        """The normalised path: one spelling per resource."""
        self.host = host
        """Lower-cased ``Host`` without the port; empty when absent."""
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        """Request headers as ASGI gives them (names lower-cased)."""
        self.query: bytes = scope.get("query_string", b"")
        client = scope.get("client")
        self.peer: str = client[0] if client else ""
        """The socket peer's address (not X-Forwarded-For: see the rate-limit stage)."""
        self.request_id = request_id
        self.traceparent = traceparent
        self.policy = policy
        self.params = params
        self.principal: Principal | None = None
        """Set by the token stage: who is calling (None: anonymous)."""
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.trusted = trusted
        self._client_ip: str | None = None
        self.authorization: bytes | None = (
            self.header(b"authorization") if isinstance(authorization, _Scan) else authorization
        )
        """The first ``Authorization`` header (PERF: the edge found it in its one pass over
        the headers; other callers leave it to be looked up here)."""
        self.direct_headers: tuple[tuple[bytes, bytes], ...] | None = None
        """Set by the edge when a dispatcher sends to the server directly (see ``Edge``)."""
        self.status = 0
        """The response status, once the response started (0 before): set by whoever sends
        its head (the edge, its wrapper, a direct dispatcher)."""

    @property
    def client_ip(self) -> str:
        """The client's address (see :meth:`TrustedProxies.client_ip`), computed once."""
        if self._client_ip is None:
            if self.trusted:
                forwarded = self.header(b"x-forwarded-for")
                self._client_ip = self.trusted.client_ip(self.peer, forwarded)
            else:
                self._client_ip = self.peer
        return self._client_ip

    def header(self, name: bytes) -> bytes | None:
        """The first value of request header ``name`` (lower-case bytes), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


Stage = Callable[[EdgeContext], Awaitable[None] | None]

FastHandler = Callable[[EdgeContext], Awaitable[bytes]]
"""A handler the edge calls itself, without entering Litestar: it reads the request from the
context (``ctx.params``, ``ctx.principal``) and returns a JSON body for a 200, or raises
:class:`cygate.edge.problem.Problem`. Headers it appends to ``ctx.response_headers`` are sent
as its response's own (``Cache-Control``): on a cached route the cache judges them like a Litestar
handler's."""


class RoutePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """One route's rules, attached to the request scope as ``scope["cygate.policy"]``."""

    name: str
    """The route template (``GET /api/v1/products/{id}``): metric label and log field."""
    auth: bool = False
    """A valid access token is required (identity issue)."""
    roles: frozenset[str] = frozenset()
    """Any one of these roles is required; empty means any authenticated caller."""
    rate_limit: str | None = None
    """Name of the rate-limit class that applies (rate-limiting issue)."""
    cache: str | None = None
    """Name of the cache rule that applies (caching issue)."""
    target: str = "local"
    """``local`` (the Litestar app) or the name of an upstream (routing issue)."""
    body: str = "json"
    """What a write's body must be: ``json`` (the edge answers another media type with 415) or
    ``form`` (the handler parses its own form body: the OAuth endpoints, RFC 6749)."""
    max_body_bytes: int | None = None
    """Per-route body limit; ``None`` uses the global setting."""
    policy: str | None = None
    """The Cedar action of this route (handler ``opt={"policy": "<action>"}``): the policy
    stage (``cygate.edge.policy``) asks the policies; None: no attribute-based policy."""
    policy_resource: str | None = None
    """The Cedar resource type, and the name of the loader of its attributes (handler
    ``opt={"policy_resource": "Product"}``); None: ``Route``, attributes the path parameters."""
    fast: FastHandler | None = None
    """PERF: serve this route in the edge (no framework routing, DI or response objects).
    The Litestar handler for the route stays: it documents it in OpenAPI and serves it when
    fast paths are switched off (``CYGATE_EDGE_FAST_PATHS=false``)."""
