"""A tiny JSON-over-HTTP/1.1 client on the proxy's keep-alive connections.

Used by the gateway to call the payment processor and by the processor simulator to deliver
webhooks. It reuses :class:`cygate.upstream.client.TargetPool` (no new dependency; ``httpx`` is a
development-only package) and adds what a JSON call needs: one deadline for connect and answer,
and one retry on a pooled connection that the peer had already closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import orjson

from cygate.infra import tracing
from cygate.upstream.client import Connection, TargetPool, UpstreamError

__all__ = ["CallFailed", "CallTimeout", "JsonClient", "JsonResponse"]


class CallFailed(Exception):
    """No usable answer: the peer could not be reached, or the exchange broke.

    ``sent`` says whether the request may have reached the peer (it then may have acted on it).
    """

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class CallTimeout(CallFailed):
    """The deadline passed before a whole answer arrived."""


class JsonResponse:
    """Status, lower-cased headers and the decoded JSON body (``None`` when not JSON)."""

    __slots__ = ("body", "headers", "raw", "status")

    def __init__(self, status: int, headers: dict[str, str], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw
        self.body: Any = None
        if raw:
            with contextlib.suppress(orjson.JSONDecodeError):
                self.body = orjson.loads(raw)


class JsonClient:
    """Keep-alive JSON calls to one ``http://host:port`` base URL."""

    def __init__(self, base_url: str, *, max_idle: int = 32, name: str = "") -> None:
        self.name = name or "http"
        """Names the client span of each call (``POST processor``), tracing on."""
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http://host[:port] URL, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self._host_header = parts.netloc.encode("latin-1")
        self._prefix = parts.path.rstrip("/")
        self._pool = TargetPool(self.host, self.port, max_idle=max_idle)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float,  # noqa: ASYNC109  # one deadline for connect and answer, pool-aware
    ) -> JsonResponse:
        """One exchange, finished within ``timeout`` seconds or :class:`CallTimeout`.

        NOTE: a request that fails on a *reused* connection before any byte came back is sent
        once more on a fresh one (the peer closed an idle socket). Callers only use this for
        requests that are safe to repeat: GETs, and POSTs that carry an idempotency key.

        Tracing on, the call is a client span of the current one, and the peer is sent its
        ``traceparent`` (and ``tracestate``).
        """
        traced = tracing.current()
        if traced is None or not traced.tracer_active():
            return await self._request(method, path, json, body, headers, timeout)
        span = traced.start(
            f"{method} {self.name}",
            kind="client",
            attributes={
                "http.request.method": method,
                "server.address": self.host,
                "server.port": self.port,
                "url.path": self._prefix + path.split("?", 1)[0],
            },
        )
        with traced.running(span):
            headers = {**(headers or {}), "traceparent": traced.traceparent(span)}
            state = traced.tracestate(span)
            if state:
                headers["tracestate"] = state
            answer = await self._request(method, path, json, body, headers, timeout)
            span.set_attribute("http.response.status_code", answer.status)
            if answer.status >= 500:
                span.set_status(traced.error_status(f"HTTP {answer.status}"))
        return answer

    async def _request(
        self,
        method: str,
        path: str,
        json: Any,
        body: bytes | None,
        headers: dict[str, str] | None,
        timeout: float,  # noqa: ASYNC109
    ) -> JsonResponse:
        if json is not None:
            body = orjson.dumps(json)
        payload = body or b""
        head = [f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode("latin-1")]
        head.append(b"host: " + self._host_header + b"\r\n")
        if json is not None:
            head.append(b"content-type: application/json\r\n")
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"content-length: %d\r\n\r\n" % len(payload))
        data = b"".join(head) + payload
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for attempt in (0, 1):
            conn = self._pool.take_idle() if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                try:
                    async with asyncio.timeout_at(deadline):
                        conn = await self._pool.connect()
                except TimeoutError:
                    raise CallTimeout("connect timed out", sent=False) from None
                except UpstreamError as exc:
                    raise CallFailed(str(exc), sent=False) from None
            try:
                return await self._exchange(conn, data, deadline)
            except UpstreamError as exc:
                conn.close()
                if reused and not exc.received and exc.kind != "timeout":
                    continue
                if exc.kind == "timeout":
                    raise CallTimeout(str(exc), sent=True) from None
                raise CallFailed(str(exc), sent=True) from None
            except BaseException:
                conn.close()  # cancelled: the connection is mid-exchange, never reuse it
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, conn: Connection, data: bytes, deadline: float) -> JsonResponse:
        conn.begin()
        conn.arm(max(0.001, deadline - asyncio.get_running_loop().time()), deadline)
        conn.write(data)
        status, raw_headers = await conn.read_head()
        chunks = []
        more = True
        while more:
            chunk, more = await conn.read_body()
            chunks.append(chunk)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
        self._pool.release(conn)
        return JsonResponse(status, headers, b"".join(chunks))

    def close(self) -> None:
        """Close idle connections; later calls fail."""
        self._pool.close()
