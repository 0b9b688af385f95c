"""The contenders, as data. Adding one is adding one entry to :data:`CONTENDERS`.

Templates in ``command`` and ``env`` are filled with :meth:`str.format_map` from:

``{python}`` the venv's interpreter, ``{bindir}`` its scripts folder, ``{host}``, ``{port}``,
``{upstream_port}`` (the contender's ``upstream`` helper server), ``{workdir}`` (a temp folder),
``{bench_dsn}`` the benchmark database, ``{redis_url}``, ``{redis_prefix}``, ``{ids_file}`` the
id mix (one per line), ``{connections}``, ``{duration}``, ``{warmup}``, ``{jwt_key_file}`` a PEM
Ed25519 private key the harness made for this run (it mints the ``eddsa`` tokens with it).

Every contender also gets ``BENCH_DATABASE_URL``, ``BENCH_POOL_SIZE``, ``BENCH_JWT_SECRET`` and
``BENCH_FIXED_BODY`` in its environment (see :mod:`benchmarks.macro.contenders`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .checks import (
    Check,
    check_fixed_product,
    check_full_product,
    check_hello,
    check_me,
    check_product,
    check_same_bytes,
    check_small_json,
)

__all__ = [
    "BASELINE",
    "CONTENDERS",
    "ME_PATH",
    "PRODUCT_PATH",
    "PROXY_BASELINE",
    "Contender",
    "by_name",
]

PRODUCT_PATH = "/api/v1/products/"
ME_PATH = "/api/v1/users/me"
BASELINE = "litestar-hello"
PROXY_BASELINE = "upstream-direct"
"""The upstream of the proxy contenders, measured alone: their added latency is against it."""


def _argv(template: str) -> tuple[str, ...]:
    """Split a command template on whitespace (placeholders are filled in after the split, so
    a value with spaces stays one argument)."""
    return tuple(template.split())


_GRANIAN = _argv(
    "{bindir}/granian --interface asgi --loop uvloop --workers 1"
    " --host {host} --port {port} --no-access-log --log-level warning"
)
_GRANIAN_RSGI = tuple("rsgi" if part == "asgi" else part for part in _GRANIAN)


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    summary: str
    """One line: what this contender measures."""
    command: tuple[str, ...]
    """argv template of the server (or, for ``self-timed``, of the program that times itself)."""
    check: Check
    """Run once on the answer for the check product (or ``/``) before any load."""
    target: Literal["products", "root", "me"] = "products"
    """What wrk requests: ``products`` cycles ``GET /api/v1/products/{id}`` over the id mix;
    ``root`` is ``GET /``; ``me`` is ``GET /api/v1/users/me`` (the benchmark user's profile)."""
    ready_path: str = "/healthz"
    """Polled until it answers 200 before the check."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment (templates allowed)."""
    auth: bool = False
    """Send ``Authorization: Bearer <token minted by the harness>``."""
    token: Literal["hs256", "eddsa"] = "hs256"
    """With ``auth``: ``hs256`` is a PyJWT HS256 token over ``BENCH_JWT_SECRET`` (stock
    Litestar's JWTAuth); ``eddsa`` is an RFC 9068 access token (``typ: at+jwt``, iss/aud
    ``cygate``, ``sub`` the benchmark user) signed with ``{jwt_key_file}``."""
    kind: Literal["http", "self-timed"] = "http"
    """``http``: a server driven by wrk. ``self-timed``: a program that runs the workload itself
    and reports its own numbers (called with ``--check ID`` first)."""
    ready_timeout: float = 60.0
    path: str = "/"
    """The path wrk requests (and the check reads) when ``target`` is ``root``."""
    upstream: tuple[str, ...] = ()
    """argv template of a helper server started first on ``{upstream_port}`` (its CPU is not
    counted as the contender's): the upstream a proxy contender forwards to."""
    otlp: bool = False
    """Start an OTLP/HTTP trace sink first (``benchmarks/otlp_sink.py``, a process of its own
    whose CPU is not counted) on ``{otlp_port}``: the collector of a traced contender."""


BENCH_ISSUER = "https://bench.cygate.test"
"""``iss`` of the tokens the harness signs, and the gateways' ``jwt_issuer``."""

_CYGATE_ENV = {
    "CYGATE_DATABASE_URL": "{bench_dsn}",
    "CYGATE_REDIS_URL": "{redis_url}",
    "CYGATE_REDIS_PREFIX": "{redis_prefix}",
    "CYGATE_LOG_LEVEL": "warning",
    # The key the harness signs its RFC 9068 tokens with (auth=True, token="eddsa").
    "CYGATE_JWT_KEY_FILES": "{jwt_key_file}",
    "CYGATE_JWT_ISSUER": BENCH_ISSUER,
    # NOTE: wrk drives tens of thousands of requests a second from one address: the built-in
    # default limit (100/s per caller) would refuse nearly all of them. Off here, explicitly;
    # the rate-limited contenders name their limit by route.
    "CYGATE_RATE_LIMIT_DEFAULT_CLASS": "",
}
# Every cygate contender: one Granian worker.
_CYGATE_SERVE = _argv("{python} -m cygate serve --host {host} --port {port} --workers 1")
# The uncached read: every request reaches PostgreSQL (the cache is on by default).
_UNCACHED = {**_CYGATE_ENV, "CYGATE_CACHE_ENABLED": "false"}
_CACHED = {**_CYGATE_ENV, "CYGATE_CACHE_KEY_SECRET": "macro-benchmark-cache-secret"}


def _rate_limited(limit: dict[str, Any], *, cached: bool = False) -> dict[str, str]:
    """cygate's environment with ``limit`` on the product read, applied by configuration.

    The limit is far above what one worker serves (nothing is refused), so the run measures
    the bookkeeping, like litestar-stock's RateLimitMiddleware. Braces are doubled: env values
    are ``str.format_map`` templates.
    """

    def template(value: object) -> str:
        return json.dumps(value).replace("{", "{{").replace("}", "}}")

    return {
        **(_CACHED if cached else _UNCACHED),
        "CYGATE_RATE_LIMITS": template({"bench": limit}),
        "CYGATE_RATE_LIMIT_ROUTES": template({"GET /api/v1/products/{product_id:uuid}": "bench"}),
    }


_SAME_BYTES = Contender(
    # The floor of cygate-full (issue 5: "a bare Granian ASGI app returning the same bytes"):
    # cygate-full's request (token included) and its answer byte for byte in length: the
    # product's JSON with the same 15 headers.
    name="granian-same-bytes",
    summary="granian-bare sending cygate-full's headers too, to cygate-full's request",
    command=(*_GRANIAN, "benchmarks.macro.contenders.granian_bare:app"),
    env={"BENCH_BARE_HEADERS": "cygate"},
    ready_path="/",
    check=check_same_bytes,
    auth=True,
    token="eddsa",
)


CONTENDERS: tuple[Contender, ...] = (
    Contender(
        name="cygate",
        summary="the gateway: GET /api/v1/products/{id}, uncached, 1 Granian worker",
        command=_CYGATE_SERVE,
        env=_UNCACHED,
        ready_path="/readyz",
        check=check_product,
    ),
    Contender(
        name="cygate-ratelimit",
        summary="cygate, authenticated product read under a global per-caller limit (batched)",
        command=_CYGATE_SERVE,
        env=_rate_limited({"rate": 1_000_000, "period": 1, "mode": "batched", "lease": 100}),
        ready_path="/readyz",
        check=check_product,
        # Authenticated, so the limit is keyed by the token's subject (litestar-stock's job,
        # without its response cache: cygate-full adds the cache).
        auth=True,
        token="eddsa",
    ),
    Contender(
        name="cygate-ratelimit-exact",
        summary="cygate, product read under a global per-caller limit (exact: a Redis call each)",
        command=_CYGATE_SERVE,
        env=_rate_limited({"rate": 1_000_000, "period": 1, "mode": "exact"}),
        ready_path="/readyz",
        check=check_product,
    ),
    Contender(
        name="cygate-ratelimit-local",
        summary="cygate, product read under a per-process per-caller limit (local GCRA)",
        command=_CYGATE_SERVE,
        env=_rate_limited({"rate": 1_000_000_000, "period": 1, "mode": "local"}),
        ready_path="/readyz",
        check=check_product,
    ),
    Contender(
        name="cygate-cached",
        summary="the gateway: GET /api/v1/products/{id} from the edge's L1 (hits after warm-up)",
        command=_CYGATE_SERVE,
        env=_CACHED,
        ready_path="/readyz",
        check=check_product,
    ),
    Contender(
        # The miss path beside the hit (cygate-cached) and the uncached read (cygate): the
        # product rule's entries live 1 ms and have no stale windows, so with the id mix
        # cycled (a cycle of 1,000 ids takes far longer than 1 ms at any rate one worker
        # serves; 64 connections ask for 64 different ids at a time) every
        # request finds its key cold in L1 and in L2: the lookup script, the fast handler's
        # database read, the entry, L1, and the batched L2 store.
        name="cygate-miss",
        summary="the gateway: the product read with the cache on, every request a cold miss",
        command=_CYGATE_SERVE,
        env={
            **_CACHED,
            # NOTE: a Redis prefix of its own: an entry carries the TTL it was stored with, so
            # cygate-cached's 300 s entries in the shared L2 would all be hits here.
            "CYGATE_REDIS_PREFIX": "{redis_prefix}miss:",
            "CYGATE_CACHE_RULES": json.dumps(
                {
                    "product": {
                        "ttl": 0.001,
                        "stale_while_revalidate": 0,
                        "stale_if_error": 0,
                        "tags": ["product:{product_id}"],
                    }
                }
            )
            .replace("{", "{{")
            .replace("}", "}}"),
        },
        ready_path="/readyz",
        check=check_product,
    ),
    Contender(
        # The job of litestar-stock, done by the edge: token verified (cached after the first
        # request), a global per-caller limit (batched, the default lease: burst // 10), the
        # response from L1.
        name="cygate-full",
        summary="the gateway: cached, authenticated (EdDSA at+jwt), rate-limited product read",
        command=_CYGATE_SERVE,
        env=_rate_limited({"rate": 1_000_000, "period": 1, "mode": "batched"}, cached=True),
        ready_path="/readyz",
        check=check_full_product,
        auth=True,
        token="eddsa",
    ),
    *(
        Contender(
            # cygate-full with tracing on (docs/observability.md): every request a new trace
            # (wrk sends no traceparent), kept at this ratio; spans to a local sink.
            name=f"cygate-full-traced-{label}",
            summary=f"cygate-full with tracing on, {label} % of requests sampled (OTLP/HTTP)",
            command=_CYGATE_SERVE,
            env={
                **_rate_limited({"rate": 1_000_000, "period": 1, "mode": "batched"}, cached=True),
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://{host}:{otlp_port}/v1/traces",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": ratio,
            },
            ready_path="/readyz",
            check=check_full_product,
            auth=True,
            token="eddsa",
            otlp=True,
        )
        for label, ratio in (("1", "0.01"), ("100", "1.0"))
    ),
    Contender(
        # cygate-full with a strict lease: a Redis reservation every ~75-100 requests, and a
        # dry lease makes the requests of the moment wait for it (64 connections, 1 key).
        name="cygate-full-lease100",
        summary="cygate-full with a lease of 100 tokens (limit + 100 per process at most)",
        command=_CYGATE_SERVE,
        env=_rate_limited(
            {"rate": 1_000_000, "period": 1, "mode": "batched", "lease": 100}, cached=True
        ),
        ready_path="/readyz",
        check=check_full_product,
        auth=True,
        token="eddsa",
    ),
    Contender(
        name="cygate-auth",
        summary="the gateway: GET /api/v1/products/{id} with a Bearer token (EdDSA at+jwt)",
        command=_CYGATE_SERVE,
        env=_UNCACHED,
        ready_path="/readyz",
        auth=True,
        token="eddsa",
        check=check_product,
    ),
    Contender(
        name="cygate-me",
        summary="the gateway: authenticated GET /api/v1/users/me (token stage, edge, 1 select)",
        command=_CYGATE_SERVE,
        env=_UNCACHED,
        ready_path="/readyz",
        target="me",
        auth=True,
        token="eddsa",
        check=check_me,
    ),
    Contender(
        # The per-caller cache (rule ``me``): the token stage, then the caller's own L1 entry.
        name="cygate-me-cached",
        summary="the gateway: authenticated GET /api/v1/users/me from the caller's L1 entry",
        command=_CYGATE_SERVE,
        env=_CACHED,
        ready_path="/readyz",
        target="me",
        auth=True,
        token="eddsa",
        check=check_me,
    ),
    Contender(
        name="granian-bare",
        summary="raw ASGI app on Granian returning one product's JSON bytes: the Python floor",
        command=(*_GRANIAN, "benchmarks.macro.contenders.granian_bare:app"),
        ready_path="/",
        check=check_fixed_product,
    ),
    _SAME_BYTES,
    replace(
        # Not a floor the issue names: how far Granian's own interface goes with the same
        # work. NOTE: not an option for cygate: RSGI hands the app only the percent-decoded
        # path (lossy UTF-8), so the edge's path rules (%2F, bad escapes or UTF-8: 400) and its
        # one spelling per resource could not hold (docs/caching.md).
        _SAME_BYTES,
        name="granian-rsgi-same-bytes",
        summary="granian-same-bytes through RSGI (Granian's native interface) instead of ASGI",
        command=(*_GRANIAN_RSGI, "benchmarks.macro.contenders.granian_bare:rsgi"),
    ),
    Contender(
        name=BASELINE,
        summary="Litestar hello-world on Granian: the baseline of the ratios",
        command=(*_GRANIAN, "benchmarks.macro.contenders.litestar_hello:app"),
        target="root",
        ready_path="/",
        check=check_hello,
    ),
    Contender(
        name="litestar-stock",
        summary="stock Litestar: JWTAuth + RateLimitMiddleware + response cache + asyncpg",
        command=(*_GRANIAN, "benchmarks.macro.contenders.litestar_stock:app"),
        auth=True,
        check=check_product,
    ),
    Contender(
        name="fastapi-uvicorn",
        summary="FastAPI on uvicorn (uvloop, httptools if installed) + asyncpg; no cache, no auth",
        command=_argv(
            "{python} -m uvicorn benchmarks.macro.contenders.fastapi_uvicorn:app"
            " --host {host} --port {port} --workers 1 --loop uvloop --http auto"
            " --no-access-log --log-level warning"
        ),
        check=check_product,
    ),
    Contender(
        name="asyncpg-loop",
        summary="no HTTP: the product query from N tasks on one asyncpg pool, the uncached floor",
        command=_argv(
            "{python} -m benchmarks.macro.contenders.asyncpg_loop --ids-file {ids_file}"
            " --concurrency {connections} --warmup {warmup} --duration {duration}"
        ),
        kind="self-timed",
        check=check_product,
    ),
)


_SMALL_UPSTREAM = _argv("{python} -m benchmarks.nginx json --host {host} --port {upstream_port}")

PROXY_CONTENDERS: tuple[Contender, ...] = (
    Contender(
        name=PROXY_BASELINE,
        summary="nginx returning a small JSON body: the upstream of the proxies, hit directly",
        command=_argv("{python} -m benchmarks.nginx json --host {host} --port {port}"),
        target="root",
        path="/json",
        ready_path="/json",
        check=check_small_json,
    ),
    Contender(
        name="nginx-proxy",
        summary="nginx proxy_pass (keep-alive upstream) in front of it: the native floor",
        command=_argv(
            "{python} -m benchmarks.nginx proxy --host {host} --port {port}"
            " --upstream-port {upstream_port}"
        ),
        upstream=_SMALL_UPSTREAM,
        target="root",
        path="/json",
        ready_path="/json",
        check=check_small_json,
    ),
    Contender(
        name="python-proxy",
        summary="plain ASGI proxy on Granian with cygate's HTTP client: no routing, no policy",
        command=(*_GRANIAN, "benchmarks.macro.contenders.python_proxy:app"),
        env={"BENCH_UPSTREAM_PORT": "{upstream_port}"},
        upstream=_SMALL_UPSTREAM,
        target="root",
        path="/json",
        ready_path="/json",
        check=check_small_json,
    ),
    Contender(
        name="cygate-proxy",
        summary="the gateway proxying /json per its route file, 1 Granian worker",
        command=_argv(
            "{python} -m benchmarks.macro.contenders.cygate_proxy --host {host} --port {port}"
            " --upstream-port {upstream_port} --workdir {workdir}"
        ),
        env={
            "CYGATE_DATABASE_URL": "{bench_dsn}",
            "CYGATE_REDIS_URL": "{redis_url}",
            "CYGATE_REDIS_PREFIX": "{redis_prefix}",
            "CYGATE_LOG_LEVEL": "warning",
            "CYGATE_RATE_LIMIT_DEFAULT_CLASS": "",  # as _CYGATE_ENV: wrk is one caller
        },
        upstream=_SMALL_UPSTREAM,
        target="root",
        path="/json",
        ready_path="/json",
        check=check_small_json,
    ),
)
CONTENDERS = CONTENDERS + PROXY_CONTENDERS


def by_name(names: list[str] | None = None) -> list[Contender]:
    """The contenders named (in the registry's order), or all; unknown names raise KeyError."""
    if not names:
        return list(CONTENDERS)
    known = {c.name for c in CONTENDERS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(
            f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return [c for c in CONTENDERS if c.name in names]
