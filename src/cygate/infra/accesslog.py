"""The access log: one line per sampled request, written by a thread, never by the event loop.

The edge hands each sampled request's :data:`AccessRecord` (a plain tuple, made without
formatting anything) to :meth:`AccessLog.record`, which appends it to a bounded queue; a
daemon thread wakes every ``interval`` seconds (or sooner when a batch is ready), formats the
queued records (JSON or text, as the other log lines) and writes them to standard error in
writes of at most ``PIPE_BUF`` bytes (whole lines: several workers share the stream, and a
pipe keeps writes that small in one piece). When the queue is full (the stream is slow, or
blocked), a record is dropped and counted (``cygate_access_log_dropped_total``): the event
loop never waits for the log.

Fields: ``timestamp``, ``level`` (``INFO``), ``logger`` (``cygate.access``), ``message``
(``GET <route> 200``), ``method``, ``route`` (the route's name: bounded, as in the metrics),
``path`` (without the query string, which can carry secrets), ``status``, ``duration_ms``,
``bytes`` (response body bytes), ``cache`` (the ``X-Cache`` result), ``ratelimit``
(``allowed``, ``limited``, or none), ``upstream`` (proxied requests), ``client`` (the client's
address), ``request_id``, ``trace_id``, ``user_agent``. ``path`` and ``user_agent`` go through
the privacy redaction (``redact``).
"""

from __future__ import annotations

import collections
import logging
import os
import random
import select
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from cygate.infra.logs import LogFormat, dump_line, format_timestamp, trace_id_of

__all__ = ["AccessLog", "AccessRecord", "effective_sample"]

log = logging.getLogger("cygate.access")

AccessRecord = tuple[Any, ...]
"""``(wall_time, method, route, path, status, duration_seconds, bytes_out, cache, ratelimit,
upstream, peer, request_id, traceparent, headers)``: ``wall_time`` is ``time.time()`` at the
end of the request; ``request_id`` str or ASCII bytes, ``traceparent`` bytes; ``peer`` the
socket peer's address and ``headers`` the request's ASGI headers (the thread finds the
``User-Agent`` and, with trusted proxies, the client's address in them). Strings are "" when
not known."""

_PIPE_BUF: Final = getattr(select, "PIPE_BUF", 4096)


def effective_sample(sample: float, level: str) -> float:
    """The share of requests logged: ``sample``, or 0 when the log level hides INFO lines
    (``warning``, ``error``): access lines are INFO lines."""
    return sample if level.lower() in ("debug", "info") else 0.0


def _stderr_write(data: bytes) -> None:
    fd = sys.stderr.fileno()
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class AccessLog:
    """See the module docstring. One per worker; :meth:`start` in the worker (its thread),
    :meth:`stop` at shutdown (writes what is queued)."""

    def __init__(
        self,
        *,
        sample: float,
        fmt: LogFormat,
        capacity: int = 10_000,
        write: Callable[[bytes], None] | None = None,
        redact: Callable[[str], str] | None = None,
        client_of: Callable[[str, Sequence[tuple[bytes, bytes]]], str] | None = None,
        dropped: Any = None,
        written: Any = None,
        interval: float = 0.2,
    ) -> None:
        if not 0.0 < sample <= 1.0:
            raise ValueError(f"an access log samples a share in (0, 1], not {sample!r}")
        self.sample = sample
        """Share of requests logged (``sampled``)."""
        self.fmt = fmt
        self.capacity = capacity
        """Records held at most; more are dropped (``dropped``)."""
        self.queue: collections.deque[AccessRecord] = collections.deque()
        """PERF: compiled callers append to it themselves when ``len(queue) < capacity``,
        else add 1 to ``dropped.value`` (what :meth:`record` does)."""
        self.dropped = dropped if dropped is not None else _Count()
        """Records dropped because the queue was full: a metrics ``Counter``
        (``cygate_access_log_dropped_total``) or a plain count."""
        self.written = written if written is not None else _Count()
        """Lines written."""
        self._write = write or _stderr_write
        self._redact = redact
        self._client_of = client_of
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._random = random.random

    def sampled(self) -> bool:
        """Is this request logged? (Drawn per request; always at sample 1.)"""
        return self.sample >= 1.0 or self._random() < self.sample

    def record(self, record: AccessRecord) -> None:
        """Queue one request's record, or drop and count it when the queue is full."""
        queue = self.queue
        if len(queue) < self.capacity:
            queue.append(record)
            if len(queue) >= 256:
                self._wake.set()  # (a batch is ready: no need to wait for the timer)
        else:
            self.dropped.value += 1

    def start(self) -> None:
        """Start the writing thread (in the process that serves: a Granian worker)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="cygate-access-log", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued and stop the thread (at most ``timeout`` seconds)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join(timeout)
        else:
            self.flush()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # a closed stream, a bug: the log must not kill the worker
                log.exception("access log lines not written")
                time.sleep(self._interval)
        self.flush()

    def flush(self) -> None:
        """Format and write every queued record (in the writing thread, or at stop)."""
        queue = self.queue
        chunk: list[bytes] = []
        size = 0
        while queue:
            try:
                record = queue.popleft()
            except IndexError:  # (emptied by a concurrent flush at stop)
                break
            line = self.format(record) + b"\n"
            if chunk and size + len(line) > _PIPE_BUF:
                self._emit(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._emit(chunk)

    def _emit(self, lines: list[bytes]) -> None:
        self._write(b"".join(lines))
        self.written.value += len(lines)

    def format(self, record: AccessRecord) -> bytes:
        """One record as a line (without the newline)."""
        (wall, method, route, path, status, duration, nbytes, cache, ratelimit, upstream, peer,
         request_id, traceparent, headers) = record  # fmt: skip
        user_agent = ""
        for name, value in headers:
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
                break
        client = self._client_of(peer, headers) if self._client_of is not None else peer
        if isinstance(request_id, bytes):
            request_id = request_id.decode("latin-1")
        redact = self._redact
        if redact is not None:
            path = redact(path)
            user_agent = redact(user_agent)
        line = {
            "timestamp": format_timestamp(wall),
            "level": "INFO",
            "logger": "cygate.access",
            "message": f"{method} {route} {status}",
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "duration_ms": round(duration * 1000.0, 3),
            "bytes": nbytes,
            "cache": cache,
            "ratelimit": ratelimit,
            "upstream": upstream,
            "client": client,
            "request_id": request_id,
            "trace_id": trace_id_of(traceparent),
            "user_agent": user_agent,
        }
        if self.fmt == "json":
            return dump_line(line)
        return _text_line(line)


def _text_line(line: dict[str, Any]) -> bytes:
    """``<time> INFO cygate.access GET <route> 200 path=... status=...``: values with spaces,
    quotes or control characters as JSON strings (one line whatever they hold)."""
    head = f"{line['timestamp']} INFO cygate.access {line['message']}"
    parts = [head]
    for name in ("path", "duration_ms", "bytes", "cache", "ratelimit", "upstream", "client",
                 "request_id", "trace_id", "user_agent"):  # fmt: skip
        value = line[name]
        if value == "":
            continue
        text = str(value)
        if not text.isprintable() or " " in text or '"' in text or "=" in text:
            text = dump_line({"": text})[4:-1].decode()  # the JSON string alone
        parts.append(f"{name}={text}")
    return " ".join(parts).encode("utf-8", "replace")


class _Count:
    """A plain count with a ``value`` (when no metrics counter is given)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0
