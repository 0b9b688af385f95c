"""The payment processor simulator (``cygate processor-sim`` / ``python -m cygate.simulator``).

One asyncio process, HTTP/1.1 keep-alive over httptools, everything in memory. The API:

* ``POST /v1/charges`` ``{amount_cents, currency, payment_method_token, reference}`` with an
  ``Idempotency-Key`` header: 201 ``{id, status: captured|declined, ...}``. The same key returns
  the same charge (200, ``Idempotent-Replayed: true``), never a second one; while the first call
  with a key is still running, later ones wait for its result. The same key with a different body
  is 422. What happens is chosen by the token (or ``--mode`` / ``POST /v1/_mode`` for all):
  ``tok_approve`` captured, ``tok_decline`` declined, ``tok_timeout`` captured at once but
  answered only after ``--timeout-sleep`` seconds (the worst case for the caller: charged, yet it
  never heard), ``tok_fail`` 500 ``{"charged": false}`` (nothing recorded), ``tok_flaky`` fails
  like ``tok_fail`` with probability ``--flaky-rate`` else approves. Other tokens: ``--default``.
* ``GET /v1/charges/{key}`` and ``GET /v1/charges?idempotency_key=`` (reconciliation): the charge
  or 404 ``{"error": "not_found"}`` (then the key was never charged).
* ``GET /v1/ledger``: every charge and counters (tests count charges here);
  ``POST /v1/ledger/reset`` empties it; ``POST /v1/_mode {"mode", "timeout_sleep"}`` changes
  the behaviour of a running simulator; ``GET /healthz``.
* Webhooks (``--webhook-url``): after each charge, ``{id, type: charge.captured|charge.declined,
  created, data}`` signed as ``Cygate-Signature: t=<ts>,v1=<hmac>`` (see
  ``cygate.services.payments.signing``), after ``--webhook-delay`` s plus up to
  ``--webhook-jitter`` s (deliveries overtake each other: reordering), ``--webhook-duplicates``
  extra copies with the same event id, retried with back-off until a 2xx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httptools
import orjson

from cygate.infra.retry import Backoff
from cygate.services.payments.http import CallFailed, JsonClient
from cygate.services.payments.signing import load_secret, sign

__all__ = ["BEHAVIOURS", "Simulator", "SimulatorConfig", "main"]

BEHAVIOURS = ("approve", "decline", "timeout", "fail", "flaky")
_TOKENS = {f"tok_{name}": name for name in BEHAVIOURS}
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MAX_KEY = 255
_SECRET_FILE = ".cygate/payment-webhook-secret"  # the gateway's default payment_webhook_secret_file


@dataclass
class SimulatorConfig:
    """How the simulator behaves (every field is a command-line option)."""

    host: str = "127.0.0.1"
    port: int = 8090
    mode: str | None = None
    """Behaviour for every token (overrides the token); None: chosen by the token."""
    default: str = "approve"
    """Behaviour of tokens that name none."""
    timeout_sleep: float = 30.0
    """How long ``tok_timeout`` keeps the caller waiting, seconds."""
    flaky_rate: float = 0.5
    """Probability that ``tok_flaky`` fails."""
    latency: float = 0.0
    """Added to every charge, seconds (a slow processor for load tests)."""
    webhook_url: str = ""
    webhook_secret: bytes = b""
    webhook_delay: float = 0.0
    webhook_jitter: float = 0.0
    webhook_duplicates: int = 0
    webhook_attempts: int = 8
    seed: int | None = None


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass
class _Counters:
    requests: int = 0
    failures: int = 0
    replays: int = 0
    webhooks_sent: int = 0
    webhooks_failed: int = 0
    by_key: dict[str, int] = field(default_factory=dict)


class _Parser:
    """httptools callbacks for one connection; completed requests queue in ``done``."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[_Request] = []
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = urlsplit(self._url.decode("latin-1"))
        self.done.append(
            _Request(
                self.parser.get_method().decode("latin-1"),
                url.path,
                parse_qs(url.query),
                self._headers,
                b"".join(self._body),
                self.parser.should_keep_alive(),
            )
        )


_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Content",
    500: "Internal Server Error",
}


class Simulator:
    """The in-memory processor: its ledger, its HTTP server and its webhook sender."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.charges: dict[str, dict[str, Any]] = {}
        self._bodies: dict[str, bytes] = {}
        self._running: dict[str, asyncio.Future[tuple[int, dict[str, Any]]]] = {}
        self.counters = _Counters()
        self._rng = random.Random(config.seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._webhooks = JsonClient(config.webhook_url) if config.webhook_url else None
        self._server: asyncio.Server | None = None

    # -- HTTP server --------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the bound port (``port=0`` picks a free one)."""
        self._server = await asyncio.start_server(
            self._connection, self.config.host, self.config.port, backlog=1024
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._webhooks is not None:
            self._webhooks.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = _Parser()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                parser.parser.feed_data(data)
                while parser.done:
                    request = parser.done.pop(0)
                    status, body, headers = await self._route(request)
                    writer.write(_response(status, body, headers, request.keep_alive))
                    await writer.drain()
                    if not request.keep_alive:
                        return
        except (httptools.HttpParserError, ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _route(self, req: _Request) -> tuple[int, Any, dict[str, str]]:
        path, method = req.path, req.method
        if path == "/v1/charges":
            if method == "POST":
                return await self._charge(req)
            if method == "GET":
                key = (req.query.get("idempotency_key") or [""])[0]
                return self._lookup(key)
            return 405, {"error": "method_not_allowed"}, {}
        if path.startswith("/v1/charges/") and method == "GET":
            return self._lookup(path.removeprefix("/v1/charges/"))
        if path == "/v1/ledger" and method == "GET":
            return 200, self.ledger(), {}
        if path == "/v1/ledger/reset" and method == "POST":
            self.charges.clear()
            self._bodies.clear()
            self.counters = _Counters()
            return 204, None, {}
        if path == "/v1/_mode" and method == "POST":
            return self._set_mode(req.body)
        if path == "/healthz":
            return 200, {"status": "ok"}, {}
        return 404, {"error": "not_found"}, {}

    # -- the processor ------------------------------------------------------------------------

    def ledger(self) -> dict[str, Any]:
        """Every charge and the counters (``GET /v1/ledger``)."""
        charges = list(self.charges.values())
        c = self.counters
        return {
            "charges": charges,
            "captured": sum(1 for ch in charges if ch["status"] == "captured"),
            "declined": sum(1 for ch in charges if ch["status"] == "declined"),
            "captured_amount_cents": sum(
                ch["amount_cents"] for ch in charges if ch["status"] == "captured"
            ),
            "requests": c.requests,
            "failures": c.failures,
            "replays": c.replays,
            "webhooks_sent": c.webhooks_sent,
            "webhooks_failed": c.webhooks_failed,
        }

    def _lookup(self, key: str) -> tuple[int, Any, dict[str, str]]:
        charge = self.charges.get(key)
        if charge is None:
            return 404, {"error": "not_found", "idempotency_key": key}, {}
        return 200, charge, {}

    def _set_mode(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        try:
            doc = orjson.loads(body)
            mode = doc.get("mode")
            sleep = doc.get("timeout_sleep", self.config.timeout_sleep)
        except (orjson.JSONDecodeError, AttributeError):
            return 400, {"error": "bad_json"}, {}
        if mode is not None and mode not in BEHAVIOURS:
            return 422, {"error": "unknown_mode"}, {}
        if not isinstance(sleep, int | float) or not 0 <= sleep <= 3600:
            return 422, {"error": "bad_timeout_sleep"}, {}
        self.config.mode = mode
        self.config.timeout_sleep = float(sleep)
        return 200, {"mode": mode, "timeout_sleep": self.config.timeout_sleep}, {}

    async def _charge(self, req: _Request) -> tuple[int, Any, dict[str, str]]:
        self.counters.requests += 1
        key = req.headers.get("idempotency-key", "")
        if not key or len(key) > _MAX_KEY:
            return 400, {"error": "idempotency_key_required"}, {}
        try:
            doc = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            return 400, {"error": "bad_json"}, {}
        problem = _check_charge(doc)
        if problem:
            return 422, {"error": "invalid_request", "detail": problem}, {}
        replay = {"idempotent-replayed": "true"}
        if key in self.charges:
            if self._bodies[key] != req.body:
                return 422, {"error": "idempotency_key_reused"}, {}
            self.counters.replays += 1
            return 200, self.charges[key], replay
        running = self._running.get(key)
        if running is not None:  # NOTE: a concurrent retry waits for the first call's answer
            status, answer = await asyncio.shield(running)
            self.counters.replays += 1
            return (200 if status == 201 else status), answer, replay
        future: asyncio.Future[tuple[int, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._running[key] = future
        try:
            status, answer = await self._decide(key, doc, req.body)
            future.set_result((status, answer))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            del self._running[key]
        return status, answer, {}

    async def _decide(self, key: str, doc: dict[str, Any], raw: bytes) -> tuple[int, Any]:
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        token = doc["payment_method_token"]
        behaviour = self.config.mode or _TOKENS.get(token, self.config.default)
        if behaviour == "flaky":
            behaviour = "fail" if self._rng.random() < self.config.flaky_rate else "approve"
        if behaviour == "fail":
            self.counters.failures += 1
            return 500, {"error": "processor_error", "charged": False}
        status = "declined" if behaviour == "decline" else "captured"
        charge = {
            "id": "ch_" + secrets.token_hex(12),
            "idempotency_key": key,
            "status": status,
            "amount_cents": doc["amount_cents"],
            "currency": doc["currency"],
            "reference": doc["reference"],
            "decline_code": "card_declined" if status == "declined" else None,
            "created": time.time(),
        }
        # NOTE: recorded before any delay: tok_timeout has charged when the caller gives up.
        self.charges[key] = charge
        self._bodies[key] = raw
        self._webhook(charge)
        if behaviour == "timeout":
            await asyncio.sleep(self.config.timeout_sleep)
        return 201, charge

    # -- webhooks -----------------------------------------------------------------------------

    def _webhook(self, charge: dict[str, Any]) -> None:
        if self._webhooks is None:
            return
        event = {
            "id": "evt_" + secrets.token_hex(12),
            "type": f"charge.{charge['status']}",
            "created": int(time.time()),
            "data": charge,
        }
        body = orjson.dumps(event)
        for _ in range(1 + self.config.webhook_duplicates):
            delay = self.config.webhook_delay + self._rng.random() * self.config.webhook_jitter
            task = asyncio.create_task(self._deliver(body, delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, body: bytes, delay: float) -> None:
        assert self._webhooks is not None
        await asyncio.sleep(delay)
        backoff = Backoff(0.2, 5.0)
        for _ in range(self.config.webhook_attempts):
            headers = {"cygate-signature": sign(self.config.webhook_secret, body, int(time.time()))}
            try:
                answer = await self._webhooks.request(
                    "POST", "", body=body, headers={**headers, "content-type": "application/json"},
                    timeout=5.0,
                )  # fmt: skip
                if 200 <= answer.status < 300:
                    self.counters.webhooks_sent += 1
                    return
            except CallFailed:
                pass
            await backoff.sleep()
        self.counters.webhooks_failed += 1


def _check_charge(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return "body must be an object"
    amount = doc.get("amount_cents")
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= 10**12:
        return "amount_cents must be a positive integer"
    if not isinstance(doc.get("currency"), str) or not _CURRENCY.match(doc["currency"]):
        return "currency must be an ISO 4217 code"
    for name in ("payment_method_token", "reference"):
        value = doc.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= 255:
            return f"{name} must be a non-empty string"
    return None


def _response(status: int, body: Any, headers: dict[str, str], keep_alive: bool) -> bytes:
    payload = b"" if body is None else orjson.dumps(body)
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    if body is not None:
        head.append("content-type: application/json")
    head.append(f"content-length: {len(payload)}")
    head.extend(f"{k}: {v}" for k, v in headers.items())
    if not keep_alive:
        head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cygate processor-sim", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090, help="0: a free port (printed)")
    p.add_argument("--mode", choices=BEHAVIOURS, default=None, help="one behaviour for all tokens")
    p.add_argument("--default", choices=BEHAVIOURS, default="approve", help="for unknown tokens")
    p.add_argument("--timeout-sleep", type=float, default=30.0)
    p.add_argument("--flaky-rate", type=float, default=0.5)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every charge")
    p.add_argument("--webhook-url", default="", help="where to POST signed webhooks")
    p.add_argument(
        "--webhook-secret-file",
        default=os.environ.get("CYGATE_PAYMENT_WEBHOOK_SECRET_FILE", _SECRET_FILE),
        help="secret shared with the gateway (CYGATE_PAYMENT_WEBHOOK_SECRET wins when set)",
    )
    p.add_argument("--webhook-delay", type=float, default=0.0)
    p.add_argument("--webhook-jitter", type=float, default=0.0)
    p.add_argument("--webhook-duplicates", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM; prints ``processor-sim listening on <url>``."""
    args = _parser().parse_args(argv)
    secret = b""
    if args.webhook_url:
        secret = load_secret(
            os.environ.get("CYGATE_PAYMENT_WEBHOOK_SECRET", ""), args.webhook_secret_file
        )
    config = SimulatorConfig(
        host=args.host, port=args.port, mode=args.mode, default=args.default,
        timeout_sleep=args.timeout_sleep, flaky_rate=args.flaky_rate, latency=args.latency,
        webhook_url=args.webhook_url, webhook_secret=secret, webhook_delay=args.webhook_delay,
        webhook_jitter=args.webhook_jitter, webhook_duplicates=args.webhook_duplicates,
        seed=args.seed,
    )  # fmt: skip
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def run() -> None:
        sim = Simulator(config)
        port = await sim.start()
        print(f"processor-sim listening on http://{config.host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await sim.close()

    asyncio.run(run())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
