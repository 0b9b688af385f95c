"""A small HTTP/1.1 client for the proxy: keep-alive connections over asyncio + httptools.

Chosen by measurement over httpx and aiohttp (see ``docs/upstreams.md``): the proxy needs one
request at a time per connection, the head written in one ``write``, the response head handed
over as soon as it is parsed and the body streamed with back-pressure, and nothing else. A
:class:`Connection` is an :class:`asyncio.Protocol`; the parser runs inside ``data_received``, so
a small response (head and body in one segment) is complete before the waiting coroutine wakes.

Timeouts: the *read* timeout (longest silence from the upstream while a response is awaited or
streamed) and the request's total *deadline* share one timer per connection, re-armed lazily:
``data_received`` only stores the time, and a timer that fires early re-arms itself for what is
left, so a busy keep-alive connection arms a timer about once per read timeout, not once per
request. PERF: no ``asyncio.timeout`` on the hot path (each costs three ``getpid`` system calls
through ``get_running_loop`` and a timer). Reading paused by back-pressure never counts as
silence. Connect timeouts are the caller's (``asyncio.timeout`` around :meth:`TargetPool.connect`,
a slow path).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
import time
from collections.abc import Set as AbstractSet
from typing import Any, cast

import httptools

from cygate.core import httpresp

# PERF: a whole small response parsed in one call by the compiled core (less time than
# httptools' callbacks per response). Only when compiled: the pure twin is slower than httptools
# (it is the compiled parser's reference, tested against it and against httptools).
_parse_whole = getattr(httpresp, "parse_response_c", None)

__all__ = [
    "ConnectError",
    "Connection",
    "ConnectionLost",
    "ProtocolError",
    "ReadTimeout",
    "TargetPool",
    "TlsError",
    "TotalTimeout",
    "UpstreamError",
]

# Stop reading from the upstream when this much body is waiting for the downstream client, and
# start again below the low mark: the proxy's memory per request stays bounded whatever the size.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The exchange with an upstream target failed. ``received`` tells whether any byte of a
    response had arrived (a request that got nothing back may be replayed on a fresh connection
    when it is idempotent)."""

    kind = "error"

    def __init__(self, message: str, *, received: bool = False) -> None:
        super().__init__(message)
        self.received = received


class ConnectError(UpstreamError):
    """The TCP connection could not be made (refused, unreachable, timed out, refused by policy)."""

    kind = "connect"


class TlsError(ConnectError):
    """The TLS handshake with an ``https://`` target failed (its certificate not trusted or not
    for the name, a protocol the two sides do not share). Never retried over plain HTTP."""

    kind = "tls"


class ReadTimeout(UpstreamError):
    """The upstream said nothing for longer than the read timeout."""

    kind = "timeout"


class TotalTimeout(UpstreamError):
    """The route's total deadline passed while waiting on the upstream."""

    kind = "timeout"


class ConnectionLost(UpstreamError):
    """The upstream closed or reset the connection before the response was complete."""

    kind = "reset"


class ProtocolError(UpstreamError):
    """The upstream's bytes are not valid HTTP/1.1."""

    kind = "protocol"


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a target. One exchange at a time.

    Use: :meth:`begin` (arms the state for a response), ``write`` the request head and body
    (:meth:`drain` between large pieces), :meth:`read_head`, then :meth:`read_body` until it
    reports the end. :attr:`reusable` says whether it may go back to the pool.
    """

    __slots__ = (
        "_active",
        "_body",
        "_buffered",
        "_closed",
        "_complete",
        "_deadline",
        "_drain",
        "_error",
        "_fresh",
        "_head",
        "_head_only",
        "_headers",
        "_last_rx",
        "_loop",
        "_mid",
        "_parser",
        "_paused",
        "_read_timeout",
        "_received",
        "_skip",
        "_timer",
        "_timer_at",
        "_waiter",
        "connection",
        "keep_alive",
        "last_used",
        "pool",
        "status",
        "transport",
    )

    def __init__(self, pool: TargetPool | None = None) -> None:
        self.pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._closed = False
        self._error: UpstreamError | None = None
        self._drain: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._active = False
        self._deadline = 0.0
        self._read_timeout = 0.0
        self._last_rx = 0.0
        self.last_used = 0.0
        self._mid = False  # httptools has bytes of a message it has not finished
        self._body: collections.deque[bytes] = collections.deque()
        self._reset()
        self._fresh = False  # until begin(): bytes nobody asked for go to httptools

    def _reset(self) -> None:
        self.status = 0
        self.keep_alive = False
        self.connection: bytes | None = None
        """The response's ``Connection`` header (the headers it names are hop-by-hop too)."""
        self._headers: list[tuple[bytes, bytes]] = []
        if self._body:
            self._body.clear()
        self._buffered = 0
        self._head = False
        self._complete = False
        self._received = False
        self._head_only = False
        self._skip: AbstractSet[bytes] | None = None
        self._paused = False
        self._fresh = not self._mid

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # NOTE: uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # uvloop and asyncio both set it already; cheap insurance for other loops.
            with contextlib.suppress(OSError, AttributeError, TypeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self._active:
            self._last_rx = self._loop.time()
        if self._fresh:
            # The first bytes of an exchange, httptools at a message boundary: a small response
            # is usually all here; the compiled parser takes it whole (None: httptools reads it).
            self._fresh = False
            if _parse_whole is not None:
                parsed = _parse_whole(data, self._head_only, self._skip)
                if parsed is not None:
                    self.status, self._headers, self.keep_alive, self.connection, body = parsed
                    if body:
                        self._body.append(body)
                        self._buffered = len(body)
                    self._head = True
                    self._complete = True
                    self._wake()
                    return
        self._mid = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("upstream switched protocols", received=True))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"invalid HTTP from upstream: {exc}", received=True))

    def eof_received(self) -> bool | None:
        if self._head and not self._complete and not self.keep_alive:
            # A body delimited by the connection's close (no length, not chunked) ends here.
            with contextlib.suppress(httptools.HttpParserError):
                self._parser.feed_data(b"")
            if not self._complete:
                self._complete = True
                self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._complete and (self._waiter is not None or self._head):
            self._fail(
                ConnectionLost(
                    "upstream closed the connection before the response was complete",
                    received=self._received,
                )
            )
        elif self._error is None:
            self._error = ConnectionLost("connection closed", received=self._received)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(self._error or ConnectionLost("connection closed"))
            self._drain = None
        if self.pool is not None:
            self.pool.forget(self)

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"connection":
            # Several Connection headers are one comma-separated list.
            self.connection = value if self.connection is None else self.connection + b"," + value
        if self._skip is None or name not in self._skip:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx (103 Early Hints, a stray 100 Continue): not the answer; the parser goes on
            # to the final response in the same stream.
            self._headers = []
            self.connection = None
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        self._head = True
        if self._head_only:
            # NOTE: a response to HEAD has no body whatever its Content-Length says; httptools
            # cannot be told, so the exchange ends here and the parser starts afresh.
            self._complete = True
            self._parser = httptools.HttpResponseParser(self)
            self._mid = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._mid = False
        if self.status == 0:  # the end of a 1xx
            return
        self._complete = True
        self._wake()

    # -- internals ----------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._error)
        if self.transport is not None and not self._closed:
            self.transport.abort()

    def _arm_timer(self, when: float) -> None:
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._check_timeout)

    def _check_timeout(self) -> None:
        self._timer = None
        if not self._active or self._complete or self._closed:
            return  # no exchange waiting: the next one arms again
        now = self._loop.time()
        if now >= self._deadline:
            self._fail(TotalTimeout("the route's total timeout passed", received=self._received))
            return
        if self._paused:  # the downstream is slow, not the upstream
            self._last_rx = now
        idle_until = self._last_rx + self._read_timeout
        if now >= idle_until:
            self._fail(
                ReadTimeout(
                    f"upstream sent nothing for {self._read_timeout:g} s", received=self._received
                )
            )
        else:
            self._arm_timer(min(idle_until, self._deadline))

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    # -- the exchange -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The transport is gone or going (never reuse it)."""
        return self._closed or self.transport is None or self.transport.is_closing()

    @property
    def reusable(self) -> bool:
        """The last exchange ended cleanly and both sides keep the connection open."""
        return self._complete and self.keep_alive and self._error is None and not self.closed

    def begin(self, *, head_only: bool = False, skip: AbstractSet[bytes] | None = None) -> None:
        """Prepare for one request/response exchange. ``head_only``: the request is a HEAD
        (no body follows the response head). ``skip``: response header names (lower-case) to
        leave out of :meth:`read_head`'s list (hop-by-hop ones, say)."""
        self._reset()
        self._head_only = head_only
        self._skip = skip

    def write(self, data: bytes) -> None:
        """Queue bytes to the upstream (the head, a body piece)."""
        if self._error is not None:
            raise self._error
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the kernel's send buffer is full (request-body back-pressure)."""
        if self._error is not None:
            raise self._error
        if self._drain is not None:
            await asyncio.shield(self._drain)

    def arm(self, read_timeout: float, deadline: float) -> None:
        """Watch this exchange: fail it after ``read_timeout`` seconds of upstream silence or
        at ``deadline`` (loop time), whichever comes first."""
        now = self._loop.time()
        self._active = True
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._last_rx = now
        due = min(now + read_timeout, deadline)
        timer = self._timer
        if timer is None:
            self._arm_timer(due)
        elif self._timer_at > due:  # armed for later than this exchange allows
            timer.cancel()
            self._arm_timer(due)

    async def read_head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Wait for the response head; returns ``(status, headers)`` (names lower-case)."""
        while not self._head:
            await self._wait()
        return self.status, self._headers

    @property
    def answered(self) -> bool:
        """The response head has arrived (possibly before the request body was all sent)."""
        return self._head

    @property
    def has_body_ready(self) -> bool:
        """The whole body is already here (typical for small responses)."""
        return self._complete

    def take_body(self) -> bytes:
        """The whole body when :attr:`has_body_ready` (no await needed)."""
        body = self._body
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._error is not None and not self._complete:
            raise self._error
        return data

    async def read_body(self) -> tuple[bytes, bool]:
        """The next body bytes (every piece queued so far, joined) and whether more follow."""
        while not self._body and not self._complete:
            await self._wait()
        body = self._body
        if len(body) == 1:
            data = body.popleft()
        elif body:
            data = b"".join(body)
            body.clear()
        else:
            data = b""
        self._buffered = 0
        if self._paused and self.transport is not None and not self._closed:
            self._paused = False
            self.transport.resume_reading()
        # NOTE: an error after the body was complete (the upstream closed the connection
        # right after answering) is no error of this exchange; _wait raises the others.
        return data, not self._complete

    def finish(self) -> None:
        """The exchange is over (PERF: a pending timer stays; it finds nothing to watch)."""
        self._active = False

    def close(self) -> None:
        """Drop the connection (never reused)."""
        self._active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None and not self._closed:
            self.transport.abort()
            self._closed = True


class TargetPool:
    """Keep-alive connections to one target ``host:port`` (already resolved and checked).

    Idle connections are reused last-in first-out (the warmest socket first); those idle longer
    than ``idle_timeout`` or above ``max_idle`` are closed.
    """

    __slots__ = (
        "_idle",
        "_live",
        "address",
        "closed",
        "idle_timeout",
        "max_idle",
        "port",
        "server_name",
        "ssl",
    )

    def __init__(
        self,
        address: str,
        port: int,
        *,
        max_idle: int = 64,
        idle_timeout: float = 30.0,
        context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.address = address
        """The IP address connected to (checked against the address policy once, here)."""
        self.port = port
        self.ssl = context
        """The client context of an ``https://`` target (None: plain HTTP)."""
        self.server_name = server_name
        """The name sent by SNI and verified against the certificate (with :attr:`ssl`)."""
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: list[Connection] = []
        self._live: set[Connection] = set()
        self.closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def open(self) -> int:
        return len(self._live)

    def take_idle(self) -> Connection | None:
        """A pooled connection, or None (the caller then connects)."""
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            # PERF: Connection.closed, inline
            if conn._closed or transport is None or transport.is_closing():
                continue
            if now - conn.last_used > self.idle_timeout:
                conn.close()
                continue
            return conn
        return None

    async def connect(self) -> Connection:
        """A new connection (the caller bounds the wait with its connect timeout)."""
        if self.closed:
            raise ConnectError("upstream pool is closed")
        loop = asyncio.get_running_loop()
        try:
            if self.ssl is None:
                _, conn = await loop.create_connection(
                    lambda: Connection(self), self.address, self.port
                )
            else:
                _, conn = await loop.create_connection(
                    lambda: Connection(self),
                    self.address,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.server_name,
                )
        except ssl.SSLCertVerificationError as exc:
            raise TlsError(
                f"TLS to {self.address}:{self.port} ({self.server_name}): certificate not "
                f"verified: {exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:
            raise TlsError(
                f"TLS to {self.address}:{self.port} ({self.server_name}): handshake failed: "
                f"{exc.reason or exc}"
            ) from None
        except OSError as exc:
            raise ConnectError(
                f"cannot connect to {self.address}:{self.port}: {exc.strerror or exc}"
            ) from None
        self._live.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        """Return a connection after an exchange: pooled when reusable, else closed."""
        conn._active = False  # PERF: Connection.finish and .reusable, inline
        transport = conn.transport
        if (
            self.closed
            or not conn._complete
            or not conn.keep_alive
            or conn._error is not None
            or conn._closed
            or transport is None
            or transport.is_closing()
            or len(self._idle) >= self.max_idle
        ):
            conn.close()
            return
        conn.last_used = time.monotonic()
        self._idle.append(conn)

    def forget(self, conn: Connection) -> None:
        self._live.discard(conn)

    def sweep(self) -> None:
        """Close connections idle past the timeout (called now and then by the upstream)."""
        now = time.monotonic()
        keep = []
        for conn in self._idle:
            if conn.closed:
                continue
            if now - conn.last_used > self.idle_timeout:
                conn.close()
            else:
                keep.append(conn)
        self._idle = keep

    def close(self) -> None:
        """Close idle connections now; busy ones close when released."""
        self.closed = True
        for conn in self._idle:
            conn.close()
        self._idle = []

    def stats(self) -> dict[str, Any]:
        return {"open": self.open, "idle": self.idle}
