"""The contenders, as data. Adding one is adding one entry to :data:`CONTENDERS`.

Templates in ``command`` and ``env`` are filled with :meth:`str.format_map` from:

``{python}`` the venv's interpreter, ``{bindir}`` its scripts folder, ``{host}``, ``{port}``,
``{bench_dsn}`` the benchmark database, ``{redis_url}``, ``{redis_prefix}``, ``{ids_file}`` the
id mix (one per line), ``{connections}``, ``{duration}``, ``{warmup}``, ``{jwt_key_file}`` a PEM
Ed25519 private key the harness made for this run (it mints the ``eddsa`` tokens with it).

Every contender also gets ``BENCH_DATABASE_URL``, ``BENCH_POOL_SIZE``, ``BENCH_JWT_SECRET`` and
``BENCH_FIXED_BODY`` in its environment (see :mod:`benchmarks.macro.contenders`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .checks import Check, check_fixed_product, check_hello, check_me, check_product

__all__ = ["BASELINE", "CONTENDERS", "ME_PATH", "PRODUCT_PATH", "Contender", "by_name"]

PRODUCT_PATH = "/api/v1/products/"
ME_PATH = "/api/v1/users/me"
BASELINE = "litestar-hello"


def _argv(template: str) -> tuple[str, ...]:
    """Split a command template on whitespace (placeholders are filled in after the split, so
    a value with spaces stays one argument)."""
    return tuple(template.split())


_GRANIAN = _argv(
    "{bindir}/granian --interface asgi --loop uvloop --workers 1"
    " --host {host} --port {port} --no-access-log --log-level warning"
)


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


CONTENDERS: tuple[Contender, ...] = (
    Contender(
        name="cygate",
        summary="the gateway: GET /api/v1/products/{id}, uncached, 1 Granian worker",
        command=_argv("{python} -m cygate serve --host {host} --port {port} --workers 1"),
        env={
            "CYGATE_DATABASE_URL": "{bench_dsn}",
            "CYGATE_REDIS_URL": "{redis_url}",
            "CYGATE_REDIS_PREFIX": "{redis_prefix}",
            "CYGATE_LOG_LEVEL": "warning",
        },
        ready_path="/readyz",
        check=check_product,
    ),
    Contender(
        name="cygate-auth",
        summary="the gateway: GET /api/v1/products/{id} with a Bearer token (EdDSA at+jwt)",
        command=_argv("{python} -m cygate serve --host {host} --port {port} --workers 1"),
        env={
            "CYGATE_DATABASE_URL": "{bench_dsn}",
            "CYGATE_REDIS_URL": "{redis_url}",
            "CYGATE_REDIS_PREFIX": "{redis_prefix}",
            "CYGATE_LOG_LEVEL": "warning",
            "CYGATE_JWT_KEY_FILES": "{jwt_key_file}",
        },
        ready_path="/readyz",
        auth=True,
        token="eddsa",
        check=check_product,
    ),
    Contender(
        name="cygate-me",
        summary="the gateway: authenticated GET /api/v1/users/me (token stage, edge, 1 select)",
        command=_argv("{python} -m cygate serve --host {host} --port {port} --workers 1"),
        env={
            "CYGATE_DATABASE_URL": "{bench_dsn}",
            "CYGATE_REDIS_URL": "{redis_url}",
            "CYGATE_REDIS_PREFIX": "{redis_prefix}",
            "CYGATE_LOG_LEVEL": "warning",
            "CYGATE_JWT_KEY_FILES": "{jwt_key_file}",
        },
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
