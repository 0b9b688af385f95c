"""``cygate``: serve | migrate | seed | check-config | create-client | worker |
processor-sim | payments-recover (also ``python -m cygate``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from cygate.settings import ENV_PREFIX, Settings, SettingsError, load_settings

__all__ = ["main"]


def _fail(message: str, code: int = 2) -> int:
    print(f"cygate: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cygate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway on Granian (uvloop)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--migrate", action="store_true", help="apply migrations before serving")

    sub.add_parser("migrate", help="create the database if needed and apply migrations")

    seed = sub.add_parser("seed", help="load demo data (COPY)")
    seed.add_argument("--users", type=int, default=20)
    seed.add_argument("--products", type=int, default=1000)
    seed.add_argument("--categories", type=int, default=20)
    seed.add_argument("--random-seed", type=int, default=None, help="reproducible data")
    group = seed.add_mutually_exclusive_group()
    group.add_argument("--reset", action="store_true", help="remove catalog + seeded users first")
    group.add_argument("--if-empty", action="store_true", help="do nothing when products exist")

    sub.add_parser("check-config", help="validate the settings and print them (secrets masked)")

    client = sub.add_parser(
        "create-client", help="register a service client (client_credentials); prints its secret"
    )
    client.add_argument("--client-id", required=True)
    client.add_argument("--roles", default="", help="comma-separated roles")

    worker = sub.add_parser("worker", help="run the outbox relay and event consumers (no HTTP)")
    worker.add_argument("--no-relay", action="store_true", help="consumers only")
    worker.add_argument(
        "--consumers", default=None, help="comma-separated (cache,order_summary,analytics); "
        "default: events_consumers; empty: none"
    )  # fmt: skip
    # The payment processor simulator has its own options (``--help`` lists them)
    sub.add_parser("processor-sim", help="run the payment processor simulator", add_help=False)
    recover = sub.add_parser(
        "payments-recover", help="settle payments stuck 'initiated' with the processor now"
    )
    recover.add_argument(
        "--older-than", type=float, default=None, help="seconds (default: setting)"
    )
    retention = sub.add_parser(
        "retention", help="delete or anonymise records past their retention (retention_*)"
    )
    retention.add_argument(
        "--dry-run", action="store_true", help="report counts per policy, change nothing"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["processor-sim"]:
        from cygate.simulator.processor import main as simulator

        return simulator(argv[1:])
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.command == "serve":
        overrides = {"host": args.host, "port": args.port, "workers": args.workers}
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        return _fail(str(exc))
    _configure_logging(settings)
    from cygate.infra import tracing

    try:
        if tracing.enabled(os.environ):
            tracing.check(os.environ)  # the OTEL_* environment, before any worker starts
    except tracing.TracingConfigError as exc:
        return _fail(str(exc))
    for name in ("users", "products", "categories"):
        if getattr(args, name, 0) < 0:
            return _fail(f"--{name} must not be negative")
    command = args.command.replace("-", "_")
    handler = globals()[f"_cmd_{command}"]
    import asyncpg

    try:
        result: int = handler(settings, args)
    except KeyboardInterrupt:
        return 130
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _fail(f"{args.command} failed: {type(exc).__name__}: {exc}", 1)
    return result


def _configure_logging(settings: Settings) -> None:
    """This process's log lines, as the settings say (``log_format``, ``log_level``), with
    the privacy redaction (docs/observability.md, docs/privacy.md)."""
    from cygate.infra.logs import configure_logging, resolve_format
    from cygate.services.privacy.redaction import install_redaction, redact

    fmt = resolve_format(settings.logs.format, settings.server.environment)
    configure_logging(settings.server.log_level, fmt, redact=redact)
    install_redaction()


def _check_routes(settings: Settings) -> str | None:
    """Why the route table cannot be built, or None: the route file (upstreams) and settings
    that name routes or route classes (rate limits). Builds the app once, without I/O."""
    if settings.routes.file:
        from cygate.upstream.config import RouteFileError, load_route_file

        try:
            load_route_file(settings.routes.file)
        except RouteFileError as exc:
            return f"invalid route file: {exc}"
    from cygate.app import create_app

    try:
        create_app(settings)
    except ValueError as exc:
        return str(exc)
    return None


def _check_tls(settings: Settings) -> str | None:
    """Why the gateway cannot serve TLS with the configured certificate and key, or None:
    both files are read and paired once here, so a bad file is one line, not a failure in
    each worker."""
    server = settings.server
    if not server.tls_cert_file:
        return None
    import ssl

    for name, path in (
        ("tls_cert_file", server.tls_cert_file),
        ("tls_key_file", server.tls_key_file),
    ):
        if not os.path.isfile(path):
            return f"invalid setting {name}: no file at {path}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(server.tls_cert_file, server.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        return (
            f"invalid setting tls_cert_file/tls_key_file: cannot load {server.tls_cert_file} "
            f"with {server.tls_key_file} ({type(exc).__name__}: {exc})"
        )
    return None


def _check_database_tls(settings: Settings) -> str | None:
    """When the DSN asks for TLS (``sslmode``): why PostgreSQL's certificate is refused, or
    None. One connection, once, before the workers: a certificate that fails verification is a
    configuration error (one line, status 2); an unreachable server is not decided here (the
    workers start degraded, as without TLS)."""
    url = settings.database.url
    if "sslmode=" not in url:
        return None
    import ssl

    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=settings.database.acquire_timeout)
        await conn.close()

    try:
        asyncio.run(probe())
    except ssl.SSLError as exc:
        return f"PostgreSQL TLS failed (database_url): {exc}"
    except Exception:  # unreachable, refused, timed out: the workers' start decides
        return None
    return None


def _check_redis_tls(settings: Settings) -> str | None:
    """With a ``rediss://`` URL: why Redis's certificate is refused, or None. One PING, once,
    before the workers; an unreachable Redis is not decided here (the gateway runs without
    it, degraded, as without TLS)."""
    if not settings.redis.url.startswith("rediss://") or settings.redis.cluster:
        return None  # a cluster's nodes are checked by _check_cluster
    import ssl

    import redis

    from cygate.infra.redis import tls_options

    timeout = max(settings.redis.timeout, 1.0)
    client = redis.Redis.from_url(
        settings.redis.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        **tls_options(settings.redis),
    )
    try:
        client.ping()
    except redis.ConnectionError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return f"Redis TLS failed (redis_url): {exc}"
    except (redis.RedisError, OSError):
        pass  # not reachable, not ours to decide here
    finally:
        client.close()
    return None


def _cmd_check_config(settings: Settings, args: argparse.Namespace) -> int:
    error = _check_tls(settings) or _check_routes(settings)
    if error:
        return _fail(error)
    print(msgspec.json.format(msgspec.json.encode(settings.redacted()), indent=2).decode())
    return 0


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from cygate.infra.db import MigrationError

    try:
        applied = asyncio.run(_migrate(settings))
    except MigrationError as exc:
        return _fail(f"migration failed: {exc}", 1)
    except OSError as exc:
        return _fail(f"cannot reach PostgreSQL: {exc}", 1)
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("database is up to date")
    return 0


async def _migrate(settings: Settings) -> list[str]:
    import asyncpg

    from cygate.infra.db import apply_migrations, ensure_database

    if await ensure_database(settings.database.url):
        print("created database")
    conn = await asyncpg.connect(settings.database.url, timeout=10)
    try:
        return [f"{m.version:04d}_{m.name}" for m in await apply_migrations(conn)]
    finally:
        await conn.close()


def _cmd_seed(settings: Settings, args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_seed(settings, args))
    except OSError as exc:
        return _fail(f"cannot reach PostgreSQL: {exc}", 1)


async def _seed(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from cygate.infra import seed as seeding

    conn = await asyncpg.connect(settings.database.url, timeout=10)
    try:
        if args.reset:
            await seeding.reset(conn)
        elif not await seeding.catalog_is_empty(conn):
            if args.if_empty:
                print("catalog already has products; nothing seeded (use --reset to replace)")
                return 0
            return _fail("catalog already has products; use --reset to replace or --if-empty", 1)
        report = await seeding.seed(
            conn,
            categories=args.categories,
            products=args.products,
            users=args.users,
            rng_seed=args.random_seed,
        )
    except asyncpg.UndefinedTableError:
        return _fail("the schema is missing: run `cygate migrate` first", 1)
    finally:
        await conn.close()
    print(
        f"seeded {report.categories} categories, {report.products} products, "
        f"{report.users} customers in {report.seconds:.1f}s"
    )
    if report.password:
        first, last = report.emails[0], report.emails[-1]
        span = first if first == last else f"{first} … {last}"
        print(f"seeded customers: {span}; password for all: {report.password}")
    return 0


def _cmd_create_client(settings: Settings, args: argparse.Namespace) -> int:
    from cygate.services.identity.models import ROLES
    from cygate.services.identity.service import client_secret_hash
    from cygate.services.identity.tokens import new_opaque

    roles = sorted({r.strip() for r in args.roles.split(",") if r.strip()})
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        return _fail(f"unknown role(s) {', '.join(unknown)}; known: {', '.join(ROLES)}")
    if not re.fullmatch(r"[A-Za-z0-9._~-]{1,128}", args.client_id):
        return _fail("--client-id: 1 to 128 of A-Z a-z 0-9 . _ ~ -")
    secret, _ = new_opaque()
    return asyncio.run(_create_client(settings, args.client_id, client_secret_hash(secret), roles,
                                      secret))  # fmt: skip


async def _create_client(
    settings: Settings, client_id: str, secret_hash: str, roles: list[str], secret: str
) -> int:
    import asyncpg

    from cygate.services.identity.store import create_service_client

    conn = await asyncpg.connect(settings.database.url, timeout=10)
    try:
        await create_service_client(conn, client_id, secret_hash, roles)
    except asyncpg.UniqueViolationError:
        return _fail(f"a client {client_id!r} exists already", 1)
    finally:
        await conn.close()
    print(f"client_id={client_id}")
    print(f"client_secret={secret}")
    print("(the secret is shown once; only its hash is stored)", file=sys.stderr)
    return 0


def _cmd_payments_recover(settings: Settings, args: argparse.Namespace) -> int:
    from cygate.infra.db import close_pool, create_pool
    from cygate.services.payments.service import Payments

    async def run() -> int:
        pool = await create_pool(settings.database)
        # The one-off run needs no sweeper of its own.
        payments = Payments(
            msgspec.structs.replace(settings.payments, recovery_interval=0.0),
            environment=settings.server.environment,
        )
        await payments.start(pool)
        try:
            report = await payments.recover(args.older_than)
        finally:
            await payments.stop()
            await close_pool(pool)
        print(
            f"checked {report.checked}, settled {report.outcomes}, "
            f"processor unreachable for {report.unreachable}"
        )
        return 0

    return asyncio.run(run())


def _cmd_retention(settings: Settings, args: argparse.Namespace) -> int:
    from cygate.infra.db import close_pool, create_pool
    from cygate.services.privacy.retention import run_retention

    async def run() -> dict[str, int]:
        pool = await create_pool(settings.database)
        try:
            async with pool.acquire() as conn:
                return await run_retention(conn, settings.retention, dry_run=args.dry_run)
        finally:
            await close_pool(pool)

    counts = asyncio.run(run())
    verb = "would change" if args.dry_run else "changed"
    for policy, count in counts.items():
        print(f"{policy}: {verb} {count}")
    return 0


def _cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    from cygate.infra.logs import granian_log_config, resolve_format

    # One line and status 2, not a traceback in each worker
    error = _check_tls(settings) or _check_routes(settings)
    if error:
        return _fail(error)
    error = _check_database_tls(settings) or _check_redis_tls(settings) or _check_cluster(settings)
    if error:
        return _fail(error)
    if args.migrate and _cmd_migrate(settings, args) != 0:
        return 1
    from cygate.services.identity.keys import KeyConfigError, keyring_from_settings
    from cygate.services.identity.mfa import mfa_key_from_settings

    try:
        # Once here, before the workers start: a bad key file is one clear line, and the
        # development keys (if needed) are generated by one process.
        keyring_from_settings(settings.identity, settings.server.environment)
        mfa_key_from_settings(settings.identity, settings.server.environment)
    except KeyConfigError as exc:
        return _fail(str(exc))
    # Workers are separate processes that rebuild the settings from the environment, so the
    # command-line overrides and the metrics folder travel through it.
    os.environ[f"{ENV_PREFIX}HOST"] = settings.server.host
    os.environ[f"{ENV_PREFIX}PORT"] = str(settings.server.port)
    os.environ[f"{ENV_PREFIX}WORKERS"] = str(settings.server.workers)
    metrics_dir = settings.metrics.dir or tempfile.mkdtemp(prefix="cygate-metrics-")
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):  # counters start at zero for each server run
        if name.startswith("worker-"):
            os.unlink(os.path.join(metrics_dir, name))
    os.environ[f"{ENV_PREFIX}METRICS_DIR"] = metrics_dir
    # NOTE: Granian's own SIGHUP respawns the workers, and a worker that found a bad route file
    # at start-up would not come back. cygate's SIGHUP instead bumps a stamp file that every
    # worker watches: each reloads its table in place and keeps the old one if the file is bad.
    stamp = os.path.join(metrics_dir, "routes-reload.stamp")
    with open(stamp, "w") as fh:
        fh.write("0\n")
    os.environ[f"{ENV_PREFIX}_ROUTES_STAMP"] = stamp
    # The drain mark: present from the first SIGTERM/SIGINT while the shutdown delay runs;
    # the workers' /readyz answers 503 while it exists.
    mark = os.path.join(metrics_dir, "draining")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(mark)
    os.environ[f"{ENV_PREFIX}_DRAIN_MARK"] = mark

    tls: dict[str, Any] = {}
    if settings.server.tls_cert_file:
        # NOTE: Granian's workers read the files when they spawn; a changed pair is served by
        # respawning them (see _watch_tls_files; cygate's SIGHUP reloads routes, not workers).
        tls = {
            "ssl_cert": pathlib.Path(settings.server.tls_cert_file),
            "ssl_key": pathlib.Path(settings.server.tls_key_file),
            "ssl_protocol_min": SSLProtocols(f"tls{settings.server.tls_min_version}"),
        }
    server = Granian(
        "cygate.app:create_app",
        factory=True,
        address=settings.server.host,
        port=settings.server.port,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        workers=settings.server.workers,
        backlog=settings.server.backlog,
        log_level=LogLevels(settings.server.log_level),
        log_access=settings.server.access_log,
        # Granian's own lines (start-up, workers, its access log) in the same format
        log_dictconfig=granian_log_config(
            resolve_format(settings.logs.format, settings.server.environment)
        ),
        workers_kill_timeout=int(settings.server.shutdown_timeout),
        # NOTE: Granian replaces a dead worker at once and counts it in the logs ("Unexpected
        # exit from worker-N", "Respawning worker-N"); a worker that dies again within 5.5 s of
        # its respawn is a crash loop: Granian logs it and exits (status 1) instead of spinning.
        respawn_failed_workers=settings.server.respawn_failed_workers,
        # NOTE: HTTP/1.1 only: with Granian's default ``auto`` mode the server first waits to
        # tell HTTP/1 from HTTP/2 (h2c), untimed, so a connection that never sends a byte was
        # held open for good. In HTTP/1 mode hyper's header read timeout runs from the moment
        # a connection opens and again from each response (the idle timeout).
        # With TLS, tls_http2 opts into auto mode: ALPN picks h2 or http/1.1 in the handshake.
        http=HTTPModes.auto if settings.server.tls_http2 else HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=int(settings.http.header_timeout * 1000)),
        **tls,
    )
    server.on_startup(lambda: _forward_sighup(stamp))
    if settings.server.shutdown_delay:
        server.on_startup(
            lambda: _delay_shutdown(
                server.signal_handler_interrupt, mark, settings.server.shutdown_delay
            )
        )
    if tls and settings.server.tls_reload_interval:
        # (this main process logs its reload lines as main() configured it, as the workers)
        stop = threading.Event()
        watcher = threading.Thread(
            target=_watch_tls_files,
            args=(
                server.signal_handler_reload,
                settings.server.tls_cert_file,
                settings.server.tls_key_file,
                settings.server.tls_reload_interval,
                stop,
            ),
            name="cygate-tls-reload",
            daemon=True,
        )
        server.on_startup(watcher.start)
        server.on_shutdown(stop.set)
    _freeze_before_fork()
    server.serve()
    return 0


def _freeze_before_fork() -> None:
    """Keep what this process imported and built shared with the workers Granian forks."""
    import gc

    # PERF: the workers are forked from this process, which has imported the whole app (the
    # checks above build it once), so they start sharing those pages. A collection in a worker
    # writes to the header of every object it examines, and so copies each page it visits:
    # ~15 MiB per worker. Frozen objects are never examined again (the gc docs' recipe for
    # pre-fork servers); the app built by the checks is garbage and goes first.
    gc.collect()
    gc.freeze()


def _tls_files_stamp(cert: str, key: str) -> tuple[tuple[int, int, int], ...] | None:
    """Modification time, size and inode of the certificate and key files; None if one is
    missing (a file being replaced)."""
    try:
        return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in map(os.stat, (cert, key)))
    except OSError:
        return None


def _watch_tls_files(
    respawn: Callable[[], object], cert: str, key: str, interval: float, stop: threading.Event
) -> None:
    """In Granian's main process: every ``interval`` seconds, compare the certificate and key
    files with what the workers loaded. A changed pair that loads is served by Granian's
    graceful respawn (``respawn``: each new worker reads the files and starts accepting before
    the old one stops and drains its in-flight requests); a pair that does not load (a bad or
    half-written file) is logged once and ignored, the workers keep the old certificate, and
    the next change is tried again."""
    import logging
    import ssl

    log = logging.getLogger("cygate.tls")
    seen = _tls_files_stamp(cert, key)
    while not stop.wait(interval):
        stamp = _tls_files_stamp(cert, key)
        if stamp is None or stamp == seen:
            continue
        seen = stamp
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS certificate change ignored, the previous one keeps serving: %s", exc)
            continue
        log.info("TLS certificate changed: respawning the workers gracefully")
        respawn()


def _forward_sighup(stamp: str) -> None:
    """In Granian's main process (after it installed its handlers): SIGHUP bumps the stamp."""
    import signal
    import time

    def bump(signum: int, frame: object) -> None:
        with open(stamp, "w") as fh:
            fh.write(f"{time.time_ns()}\n")

    signal.signal(signal.SIGHUP, bump)


def _delay_shutdown(interrupt: Callable[[], object], mark: str, delay: float) -> None:
    """In Granian's main process (after it installed its handlers): the first SIGTERM or SIGINT
    creates the drain mark and starts Granian's shutdown ``delay`` seconds later; a second
    signal starts it at once.

    NOTE: a load balancer keeps sending requests to an instance until its health check fails
    (HAProxy: ``inter`` times ``fall``). Stopping to accept at the signal leaves a window where
    requests are sent to a closing instance; the balancer retries some of them, not all (a
    request on a reused connection that the server closes as it stops is lost to a client that
    cannot retry it). With the delay, /readyz fails first, the balancer takes the instance out,
    and only then does the drain begin, with nothing new arriving. Kubernetes does the same with
    a preStop pause, as its endpoints are removed apart from the probe."""
    import logging
    import signal

    log = logging.getLogger("cygate.serve")
    timer: threading.Timer | None = None

    def on_signal(signum: int, frame: object) -> None:
        nonlocal timer
        if timer is not None:  # a second signal: stop waiting
            timer.cancel()
            interrupt()
            return
        with open(mark, "w") as fh:
            fh.write(f"{signum}\n")
        name = signal.Signals(signum).name
        log.info("%s: /readyz answers 503; the drain starts in %.1f s", name, delay)
        timer = threading.Timer(delay, interrupt)
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from cygate.services.events.handlers import HANDLERS

    consumers: list[str] = list(settings.events.consumers)
    if args.consumers is not None:
        consumers = [c.strip() for c in args.consumers.split(",") if c.strip()]
    unknown = [c for c in consumers if c not in HANDLERS]
    if unknown:
        return _fail(f"unknown consumer(s) {', '.join(unknown)}; known: {', '.join(HANDLERS)}")
    error = _check_cluster(settings)
    if error:
        return _fail(error)
    import uvloop

    return uvloop.run(_worker(settings, not args.no_relay, consumers))


def _check_cluster(settings: Settings) -> str | None:
    """With ``redis_cluster``: one line when no node of ``redis_url`` answers or the one that
    does is a plain Redis (the workers could not use it), else None."""
    from cygate.infra.redis import check_cluster

    return check_cluster(settings.redis)


async def _worker(settings: Settings, relay: bool, consumers: list[str]) -> int:
    """The events machinery of a gateway worker, without HTTP, until SIGTERM or SIGINT."""
    import signal

    from cygate.edge.cache import ResponseCache

    # (logging: configured by main(), with the redaction)
    from cygate.infra import tracing
    from cygate.infra.db import close_pool, create_pool
    from cygate.infra.logs import set_trace_context_provider
    from cygate.infra.metrics import Metrics
    from cygate.infra.redis import create_redis
    from cygate.services.events.service import EventsService

    # The relay's and the consumers' spans, as in a gateway worker (the OTEL_* environment).
    traced = tracing.configure()
    if traced is not None:
        set_trace_context_provider(tracing.current_ids)  # trace_id / span_id in JSON lines
    pool = await create_pool(settings.database, lazy=True)
    redis = create_redis(settings.redis)
    cache = None
    if "cache" in consumers and settings.cache.enabled:
        # only to broadcast invalidations
        cache = ResponseCache(settings.cache, Metrics(None), redis=settings.redis)
        cache.attach(redis)
    events = EventsService(
        settings.events,
        pool,
        cache,
        database=settings.database,
        redis=settings.redis,
        relay=relay,
        consumers=consumers,
        retention=settings.retention,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await events.start()
    print(f"cygate worker: relay={'on' if relay else 'off'} consumers={','.join(consumers)}",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        await stop.wait()
    finally:
        await events.stop()
        await redis.close()
        await close_pool(pool)
        if traced is not None:
            await asyncio.to_thread(tracing.shutdown)
    return 0
