"""The route table file: its schema, and everything checked before a table may go live.

The file is TOML (``.toml``) or JSON (anything else): ``[upstreams.NAME]`` tables and
``[[routes]]`` entries (see ``docs/upstreams.md`` for a full example). :func:`load_route_file`
reads, decodes and validates it and resolves every target's host name, so the result can be
swapped in without any further failure. Every problem raises :class:`RouteFileError` with one
line naming the place (``routes[2].path: ...``), which the reloader logs.
"""

from __future__ import annotations

import ipaddress
import json
import pathlib
import re
import socket
import ssl
import tomllib
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "LOCAL",
    "BreakerConfig",
    "BulkheadConfig",
    "HeaderRules",
    "HealthCheckConfig",
    "OutlierConfig",
    "ResolvedTarget",
    "RetryConfig",
    "RouteConfig",
    "RouteFile",
    "RouteFileError",
    "Timeouts",
    "UpstreamConfig",
    "UpstreamTls",
    "ValidRouteFile",
    "address_refused",
    "load_route_file",
    "tls_context",
    "validate_route_file",
]

_T = TypeVar("_T")

LOCAL = "local"
"""The upstream name of the gateway's own (Litestar) handlers."""

_Seconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=100)]
_Positive = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
_Status = Annotated[int, msgspec.Meta(ge=100, le=599)]
_Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "*"}
)
# Headers the proxy owns: a header rule may not set or remove them.
_OWNED = frozenset(
    {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
        "te", "trailer", "proxy-connection", "x-forwarded-for", "x-forwarded-proto",
        "x-forwarded-host", "forwarded", "x-request-id", "traceparent",
    }
)  # fmt: skip

# Cloud instance-metadata addresses outside the link-local ranges.
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)


class RouteFileError(ValueError):
    """The route file cannot be used. ``str(err)`` is one line naming the place."""


class Timeouts(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Seconds. ``connect``: TCP connect; ``read``: longest silence from the upstream while a
    response is awaited or streamed; ``total``: the whole exchange, body streaming included."""

    connect: _Seconds | None = None
    read: _Seconds | None = None
    total: _Seconds | None = None


class BreakerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Circuit breaker: opens after ``failure_threshold`` consecutive failures (a connect
    error, a timeout, a reset, or a status in ``failure_statuses``), answers 503 for
    ``open_seconds``, then lets ``half_open_requests`` probes through."""

    failure_threshold: _Positive = 5
    open_seconds: _Seconds = 10.0
    half_open_requests: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    failure_statuses: list[_Status] = msgspec.field(default_factory=lambda: [502, 503, 504])


class BulkheadConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """At most ``max_concurrent`` requests in flight per worker, ``max_queue`` more waiting at
    most ``queue_timeout`` seconds; the rest are shed with 503."""

    max_concurrent: _Positive = 256
    max_queue: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 256
    queue_timeout: _Seconds = 1.0


class RetryConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Retries of idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE, TRACE, or any with an
    ``Idempotency-Key``), only while no response has gone to the client, and within a budget."""

    attempts: _Count = 1
    """Retries after the first try (0: none)."""
    on_status: list[_Status] = msgspec.field(default_factory=lambda: [502, 503, 504])
    budget_ratio: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.2
    budget_min_per_second: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 3.0
    buffer_bytes: Annotated[int, msgspec.Meta(ge=0, le=16 * 1024 * 1024)] = 64 * 1024
    """A request body up to this size (with a Content-Length) is read first so it can be
    replayed; a larger or streamed body is never retried."""


class OutlierConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Passive health: a target with ``consecutive_failures`` failures in a row is ejected for
    ``ejection_seconds`` x (times ejected, at most 10); never more than
    ``max_ejection_percent`` of the targets at once."""

    consecutive_failures: _Positive = 5
    ejection_seconds: _Seconds = 10.0
    max_ejection_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50


class HealthCheckConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Active checks: ``GET path`` every ``interval`` seconds; 2xx/3xx is healthy.
    ``unhealthy_threshold`` failures in a row take a target out, ``healthy_threshold``
    successes bring it back."""

    path: Annotated[str, msgspec.Meta(pattern=r"^/[\x21-\x7e]*$")] = "/healthz"
    interval: _Seconds = 5.0
    timeout: _Seconds = 1.0
    healthy_threshold: _Positive = 2
    unhealthy_threshold: _Positive = 2


class TargetConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str
    weight: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1


class IdentityHeaders(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Headers the upstream trusts to say who called, set from the verified principal and never
    taken from the client (a client's copy is always removed)."""

    subject: str = "x-cygate-sub"
    roles: str = "x-cygate-roles"
    client_id: str = "x-cygate-client-id"
    issuer: str = "x-cygate-issuer"


class UpstreamTls(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How the proxy verifies the ``https://`` targets of an upstream (and proves itself to
    them). The certificate is always verified, with the host name: ``ca_file`` (PEM) is the
    trust store, else the system's CAs. ``server_name`` is the name sent by SNI and checked
    against the certificate instead of the target's host (a target given by address, a pinned
    name). ``cert_file`` + ``key_file``: the client certificate for mutual TLS."""

    ca_file: str | None = None
    server_name: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"


class UpstreamConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A named pool of targets and how to treat it."""

    targets: list[str | TargetConfig]
    balance: Literal["round_robin", "least_outstanding", "consistent_hash"] = "round_robin"
    hash_key: str = "client_ip"
    """For ``consistent_hash``: ``client_ip``, ``path``, ``header:NAME`` or ``param:NAME``."""
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    bulkhead: BulkheadConfig = msgspec.field(default_factory=BulkheadConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    outlier: OutlierConfig = msgspec.field(default_factory=OutlierConfig)
    health_check: HealthCheckConfig | None = None
    allow_link_local: bool = False
    """Let targets resolve to link-local or cloud-metadata addresses (refused by default)."""
    max_idle_per_target: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 64
    idle_timeout: _Seconds = 30.0
    identity_headers: IdentityHeaders = msgspec.field(default_factory=IdentityHeaders)
    strip_request_headers: list[str] = msgspec.field(default_factory=list)
    """More client headers never passed on (besides hop-by-hop and identity headers)."""
    tls: UpstreamTls | None = None
    """Verification settings of the ``https://`` targets (default: the system's CAs)."""


class HeaderRules(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    set: dict[str, str] = msgspec.field(default_factory=dict)
    remove: list[str] = msgspec.field(default_factory=list)


class RouteConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One route: host + methods + path pattern → an upstream (or ``local``) with its policy."""

    path: str
    upstream: str
    methods: list[str] = msgspec.field(default_factory=lambda: ["*"])
    host: str | None = None
    name: str | None = None
    strip_prefix: str = ""
    add_prefix: str = ""
    preserve_host: bool = False
    """Send the client's ``Host`` upstream (default: the target's host)."""
    auth: bool = False
    roles: list[str] = msgspec.field(default_factory=list)
    rate_limit: str | None = None
    cache: str | None = None
    max_body_bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    retries: _Count | None = None
    """Overrides the upstream's ``retry.attempts``."""
    request_headers: HeaderRules = msgspec.field(default_factory=HeaderRules)
    response_headers: HeaderRules = msgspec.field(default_factory=HeaderRules)


class RouteFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    upstreams: dict[_Name, UpstreamConfig] = msgspec.field(default_factory=dict)
    routes: list[RouteConfig] = msgspec.field(default_factory=list)


class ResolvedTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A target URL after validation: where to connect (an address already checked)."""

    url: str
    host: str
    port: int
    address: str
    weight: int
    host_header: bytes
    base_path: str
    server_name: str | None = None
    """``https://`` targets: the name sent by SNI and verified; None: plain HTTP."""


class ValidRouteFile(msgspec.Struct, kw_only=True):
    """A route file that passed every check, with its targets resolved."""

    source: str
    config: RouteFile
    targets: dict[str, list[ResolvedTarget]]
    digest: str


def address_refused(address: str) -> str | None:
    """Why the proxy must not connect to ``address`` unless allowed, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified or ip.is_multicast:
        return "not a unicast address"
    return None


def load_route_file(path: str | pathlib.Path) -> ValidRouteFile:
    """Read, decode, validate and resolve the route file (blocking: DNS look-ups)."""
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RouteFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = (
            tomllib.loads(raw.decode("utf-8"))
            if path.suffix.lower() == ".toml"
            else json.loads(raw)
        )
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise RouteFileError(f"{path}: not valid {_kind(path)}: {exc}") from None
    import hashlib

    return validate_route_file(data, source=str(path), digest=hashlib.sha256(raw).hexdigest())


def _kind(path: pathlib.Path) -> str:
    return "TOML" if path.suffix.lower() == ".toml" else "JSON"


def validate_route_file(
    data: object, *, source: str = "<data>", digest: str = ""
) -> ValidRouteFile:
    """Check decoded data against the schema and the rules; resolve targets."""
    # NOTE: each upstream is converted on its own first, so an error names it
    # (msgspec says ``upstreams[...]`` for a dict key).
    if isinstance(data, dict) and isinstance(data.get("upstreams"), dict):
        for name, value in data["upstreams"].items():
            _convert(value, UpstreamConfig, f"upstreams.{name}")
    cfg = _convert(data, RouteFile, "")
    targets = {name: _check_upstream(name, up) for name, up in cfg.upstreams.items()}
    if LOCAL in cfg.upstreams:
        raise RouteFileError(
            f"upstreams.{LOCAL}: the name is reserved for the gateway's own routes"
        )
    names: set[str] = set()
    for i, route in enumerate(cfg.routes):
        _check_route(f"routes[{i}]", route, cfg.upstreams)
        name = route_name(route)
        if name in names:
            raise RouteFileError(f"routes[{i}]: a second route named {name!r}")
        names.add(name)
    return ValidRouteFile(source=source, config=cfg, targets=targets, digest=digest)


def _convert(data: object, kind: type[_T], prefix: str) -> _T:
    try:
        return msgspec.convert(data, kind, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        detail, _, where = message.rpartition(" - at `$")
        if where:
            place = prefix + where.rstrip("`")
            raise RouteFileError(f"{place.lstrip('.')}: {detail}") from None
        raise RouteFileError(f"{prefix or 'route file'}: {message}") from None


def route_name(route: RouteConfig) -> str:
    """The route's metric label: its ``name``, else ``METHODS [host]pattern``."""
    if route.name:
        return route.name
    host = route.host or ""
    return f"{','.join(route.methods)} {host}{route.path}"


def _check_header(where: str, name: str, *, owned_ok: bool = False) -> None:
    if not _TOKEN.match(name):
        raise RouteFileError(f"{where}: {name!r} is not a valid header name")
    if not owned_ok and name.lower() in _OWNED:
        raise RouteFileError(f"{where}: header {name!r} is managed by the proxy")


def _check_rules(where: str, rules: HeaderRules) -> None:
    for name, value in rules.set.items():
        _check_header(f"{where}.set", name)
        if _BAD_VALUE.search(value):
            raise RouteFileError(f"{where}.set.{name}: control characters in the value")
    for name in rules.remove:
        _check_header(f"{where}.remove", name)


def _check_upstream(name: str, up: UpstreamConfig) -> list[ResolvedTarget]:
    where = f"upstreams.{name}"
    if not up.targets:
        raise RouteFileError(f"{where}.targets: at least one target is needed")
    key = up.hash_key
    if not (key in ("client_ip", "path") or re.match(r"^(header|param):[A-Za-z0-9_\-]+$", key)):
        raise RouteFileError(
            f"{where}.hash_key: {key!r}; use client_ip, path, header:NAME or param:NAME"
        )
    for field in ("subject", "roles", "client_id", "issuer"):
        _check_header(f"{where}.identity_headers.{field}", getattr(up.identity_headers, field))
    for header in up.strip_request_headers:
        _check_header(f"{where}.strip_request_headers", header, owned_ok=True)
    t = up.timeouts
    if t.read and t.total and t.read > t.total:
        raise RouteFileError(f"{where}.timeouts: read ({t.read:g}) exceeds total ({t.total:g})")
    seen: set[str] = set()
    resolved = []
    for i, item in enumerate(up.targets):
        target = item if isinstance(item, TargetConfig) else TargetConfig(url=item)
        here = f"{where}.targets[{i}]"
        r = _resolve(here, target, allow_link_local=up.allow_link_local, tls=up.tls)
        if r.url in seen:
            raise RouteFileError(f"{here}: {r.url} is listed twice")
        seen.add(r.url)
        resolved.append(r)
    if any(r.server_name is not None for r in resolved):
        try:
            tls_context(up.tls)
        except RouteFileError as exc:
            raise RouteFileError(f"{where}.tls: {exc}") from None
    elif up.tls is not None:
        # NOTE: TLS settings on plain-HTTP targets are a mistake to report, never a silent
        # downgrade.
        raise RouteFileError(f"{where}.tls: set, but no target is https://")
    return resolved


def tls_context(tls: UpstreamTls | None) -> ssl.SSLContext:
    """The client context for an upstream's ``https://`` targets: certificate and host name
    always verified. Raises :class:`RouteFileError` (one line) when a file cannot be used."""
    tls = tls or UpstreamTls()
    if bool(tls.cert_file) != bool(tls.key_file):
        raise RouteFileError("cert_file and key_file go together")
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise RouteFileError(f"cannot load ca_file {tls.ca_file}: {_ssl_reason(exc)}") from None
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    # HTTP/1.1 is all the proxy speaks; ALPN says so to servers that offer more.
    ctx.set_alpn_protocols(["http/1.1"])
    if tls.cert_file and tls.key_file:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise RouteFileError(
                f"cannot load cert_file {tls.cert_file} with key_file {tls.key_file}: "
                f"{_ssl_reason(exc)}"
            ) from None
    return ctx


def _ssl_reason(exc: OSError | ssl.SSLError) -> str:
    return str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)


def _resolve(
    where: str, target: TargetConfig, *, allow_link_local: bool, tls: UpstreamTls | None
) -> ResolvedTarget:
    try:
        parts = urlsplit(target.url)
        scheme = parts.scheme
        default = 443 if scheme == "https" else 80
        port = parts.port or default
    except ValueError as exc:
        raise RouteFileError(f"{where}: bad URL {target.url!r}: {exc}") from None
    if scheme not in ("http", "https"):
        raise RouteFileError(
            f"{where}: only http:// and https:// targets are supported, got {target.url!r}"
        )
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
        raise RouteFileError(f"{where}: {target.url!r} must be {scheme}://host[:port][/base-path]")
    host = parts.hostname
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise RouteFileError(f"{where}: cannot resolve {host!r}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise RouteFileError(f"{where}: {host!r} resolves to no address")
    if not allow_link_local:
        for address in addresses:
            why = address_refused(address)
            if why is not None:
                raise RouteFileError(
                    f"{where}: {host!r} resolves to {address}, {why}; refused "
                    "(set allow_link_local = true on the upstream to allow it)"
                )
    default_port = parts.port is None or parts.port == default
    netloc = f"[{host}]" if ":" in host else host
    host_header = netloc if default_port else f"{netloc}:{port}"
    base = parts.path.rstrip("/")
    url = f"{scheme}://{host_header}{base}"
    server_name = None
    if scheme == "https":
        server_name = (tls.server_name if tls is not None else None) or host
    return ResolvedTarget(
        url=url,
        host=host,
        port=port,
        address=addresses[0],
        weight=target.weight,
        host_header=host_header.encode("ascii", "replace"),
        base_path=base,
        server_name=server_name,
    )


def _check_route(where: str, route: RouteConfig, upstreams: dict[str, UpstreamConfig]) -> None:
    if route.upstream != LOCAL and route.upstream not in upstreams:
        raise RouteFileError(f"{where}.upstream: no upstream named {route.upstream!r}")
    if not route.path.startswith("/"):
        raise RouteFileError(f"{where}.path: {route.path!r} must start with '/'")
    if not route.methods:
        raise RouteFileError(f"{where}.methods: at least one method (or '*')")
    for method in route.methods:
        if method not in _METHODS:
            raise RouteFileError(f"{where}.methods: {method!r} is not a method")
    if route.host is not None and not re.match(r"^[a-z0-9.\-]+$", route.host):
        raise RouteFileError(f"{where}.host: {route.host!r}; a lower-case host name, no port")
    for prefix, label in ((route.strip_prefix, "strip_prefix"), (route.add_prefix, "add_prefix")):
        if prefix and (not prefix.startswith("/") or prefix.endswith("/") or "{" in prefix):
            raise RouteFileError(f"{where}.{label}: {prefix!r}; like /api (no trailing slash)")
    if route.strip_prefix and not route.path.startswith(route.strip_prefix):
        raise RouteFileError(
            f"{where}.strip_prefix: {route.strip_prefix!r} is not a prefix of {route.path!r}"
        )
    t = route.timeouts
    if t.read and t.total and t.read > t.total:
        raise RouteFileError(f"{where}.timeouts: read ({t.read:g}) exceeds total ({t.total:g})")
    _check_rules(f"{where}.request_headers", route.request_headers)
    _check_rules(f"{where}.response_headers", route.response_headers)
    if route.upstream == LOCAL:
        proxy_only = (
            route.strip_prefix
            or route.add_prefix
            or route.preserve_host
            or route.retries is not None
            or route.request_headers.set
            or route.request_headers.remove
            or route.response_headers.set
            or route.response_headers.remove
            or t.connect
            or t.read
            or t.total
        )
        if proxy_only:
            raise RouteFileError(
                f"{where}: proxy settings (prefixes, headers, timeouts, retries) on a local route"
            )
        if "*" in route.methods:
            raise RouteFileError(f"{where}.methods: a local route names its methods")
