"""Log lines: JSON (one object per line) or text, with the request's ids.

:func:`configure_logging` installs one handler on the root logger (standard error) with a
:class:`JsonFormatter` or a :class:`TextFormatter`; ``cygate serve`` (its main process and each
Granian worker), ``cygate worker`` and the other commands call it from the settings
(``log_format``, ``log_level``); :func:`granian_log_config` gives Granian's own loggers the same
formatter.

Every JSON line has ``timestamp`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``,
``message``, and when known ``request_id``, ``trace_id``, ``span_id``, ``exception`` (the
formatted traceback) and ``stack``. The ids come, in order, from the record's own attributes
(``extra={"request_id": ...}``), then from the tracing hook (:func:`set_trace_context_provider`),
then from the request the line was logged in (:func:`set_request_context`, set by the edge for
each request of its general path): its request id and its ``traceparent``'s trace id.

Hostile text (newlines, control characters, lone surrogates from undecodable bytes) stays
inside one valid JSON line: orjson escapes control characters, and text that is not valid
UTF-8 is written with its bad code points replaced.

The privacy redaction (``cygate.services.privacy.redaction``) masks each record's message when
the record is made, whichever formatter writes it; the formatters here also pass the exception
text and stack through the ``redact`` callable they are given.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Final, Literal

import orjson

__all__ = [
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "TraceContextProvider",
    "configure_logging",
    "format_timestamp",
    "granian_log_config",
    "request_context",
    "reset_request_context",
    "resolve_format",
    "set_request_context",
    "set_trace_context_provider",
    "trace_id_of",
]

LogFormat = Literal["json", "text"]

TraceContextProvider = Callable[[], "tuple[str, str] | None"]
"""Returns the current ``(trace_id, span_id)`` (lower-case hex, 32 and 16 digits), or None
when there is no current span."""

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"

_request: contextvars.ContextVar[tuple[str, bytes] | None] = contextvars.ContextVar(
    "cygate_request", default=None
)
_provider: list[TraceContextProvider | None] = [None]


def set_trace_context_provider(provider: TraceContextProvider | None) -> None:
    """Make every log line carry the current span's ids: ``provider()`` is called for each
    record formatted (JSON) and returns ``(trace_id, span_id)`` as lower-case hex, or None when
    no span is current; None as ``provider`` removes it.

    For OpenTelemetry, one call at start-up::

        from opentelemetry import trace

        def current() -> tuple[str, str] | None:
            ctx = trace.get_current_span().get_span_context()
            if not ctx.is_valid:
                return None
            return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")

        set_trace_context_provider(current)

    A provider that raises is treated as returning None (a log line is never lost to it)."""
    _provider[0] = provider


def set_request_context(request_id: str, traceparent: bytes) -> contextvars.Token[Any]:
    """The request being served in this context (the edge calls it per request): log lines
    made while it is served carry its ``request_id`` and its ``traceparent``'s trace id. Give
    the token back to :func:`reset_request_context` when the request is done. Tasks started
    while it is served inherit it (asyncio copies the context)."""
    return _request.set((request_id, traceparent))


def reset_request_context(token: contextvars.Token[Any]) -> None:
    """Undo :func:`set_request_context`."""
    _request.reset(token)


def request_context() -> tuple[str, bytes] | None:
    """``(request_id, traceparent)`` of the request served in this context, or None."""
    return _request.get()


def trace_id_of(traceparent: bytes | str) -> str:
    """The trace id (32 hex digits) of a W3C ``traceparent``, or "" when it is not one."""
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode("latin-1")
    if len(traceparent) >= 55 and traceparent[2] == "-" and traceparent[35] == "-":
        return traceparent[3:35]
    return ""


def resolve_format(fmt: str, environment: str) -> LogFormat:
    """``log_format`` as configured (``auto``, ``json``, ``text``): ``auto`` is ``json`` in
    production and ``text`` elsewhere (development, test)."""
    if fmt == "json" or (fmt == "auto" and environment == "production"):
        return "json"
    return "text"


_last_second: list[Any] = [-1, ""]


def format_timestamp(created: float) -> str:
    """``created`` (seconds since the epoch) as RFC 3339 UTC with milliseconds:
    ``2026-01-31T12:34:56.789Z``."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    cached = _last_second  # PERF: one strftime per second of log lines
    if cached[0] != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        cached[0], cached[1] = seconds, prefix  # (two threads write the same pair: harmless)
    else:
        prefix = cached[1]
    return f"{prefix}.{millis:03d}Z"


def _no_redaction(text: str) -> str:
    return text


def _ids(record: logging.LogRecord) -> tuple[str, str, str]:
    """(request_id, trace_id, span_id) of a record; "" for those unknown."""
    request_id = getattr(record, "request_id", "") or ""
    trace_id = getattr(record, "trace_id", "") or ""
    span_id = getattr(record, "span_id", "") or ""
    current = _request.get()
    if not request_id and current is not None:
        request_id = current[0]
    if not trace_id:
        provider = _provider[0]
        if provider is not None:
            try:
                ids = provider()
            except Exception:
                ids = None
            if ids:
                trace_id, span_id = ids[0], span_id or ids[1]
        if not trace_id and current is not None:
            trace_id = trace_id_of(current[1])
    return str(request_id), str(trace_id), str(span_id)


class _Redacting(logging.Formatter):
    """A formatter whose exception text and stack go through ``redact`` (and so the text
    cached on the record, which later formatters reuse, is the redacted one)."""

    def __init__(self, fmt: str | None = None, redact: Callable[[str], str] | None = None) -> None:
        super().__init__(fmt)
        self.redact = redact or _no_redaction
        """Applied to the exception text and stack (the message is redacted when made)."""

    def formatException(self, ei: Any) -> str:  # (logging's name)
        return self.redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # (logging's name)
        return self.redact(super().formatStack(stack_info))


class JsonFormatter(_Redacting):
    """One JSON object per record, on one line (see the module docstring for its fields)."""

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        super().__init__(None, redact)

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception as exc:  # a malformed call: say so rather than lose the line
            message = f"{record.msg!r} (unformattable arguments: {exc})"
        line: dict[str, Any] = {
            "timestamp": format_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        request_id, trace_id, span_id = _ids(record)
        if request_id:
            line["request_id"] = request_id
        if trace_id:
            line["trace_id"] = trace_id
        if span_id:
            line["span_id"] = span_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return dump_line(line).decode()


_LINE_BREAKS: Final = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)


def dump_line(line: dict[str, Any]) -> bytes:
    """``line`` as one line of JSON (no newline): control characters escaped, and the other
    characters some readers take for a line break (NEL, U+2028, U+2029); text that is not
    valid UTF-8 (lone surrogates) with its bad code points replaced."""
    try:
        data = orjson.dumps(line)
    except TypeError:
        # NOTE: orjson refuses str with surrogates (bytes decoded with surrogateescape) and
        # types it does not know; both become text it can write.
        data = orjson.dumps({k: _clean(v) for k, v in line.items()})
    for raw, escaped in _LINE_BREAKS:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return _clean(str(value))


class TextFormatter(_Redacting):
    """``<time> <level> <logger> <message>`` (as cygate always logged), the exception text and
    stack passed through ``redact``."""

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        super().__init__(TEXT_FORMAT, redact)


def make_formatter(fmt: LogFormat, redact: Callable[[str], str] | None = None) -> logging.Formatter:
    """The formatter of ``fmt``."""
    return JsonFormatter(redact) if fmt == "json" else TextFormatter(redact)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """cygate's own root handler (told apart from handlers others installed)."""


def configure_logging(
    level: str, fmt: LogFormat, *, redact: Callable[[str], str] | None = None
) -> None:
    """Log to standard error in ``fmt`` at ``level`` (``debug``, ``info``, ...): one handler on
    the root logger, replaced when called again. As ``logging.basicConfig``, nothing is
    installed when someone else configured the root logger already (a test harness, an
    application embedding cygate)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if len(ours) != len(root.handlers):
        return
    for handler in ours:
        root.removeHandler(handler)
    handler = _Handler(sys.stderr)
    handler.setFormatter(make_formatter(fmt, redact))
    root.addHandler(handler)
    root.setLevel(level.upper())


def granian_log_config(fmt: LogFormat) -> dict[str, Any] | None:
    """Granian's ``log_dictconfig`` for ``fmt``: its own lines (start-up, workers, its access
    log) as JSON too; None (Granian's defaults) for text."""
    if fmt != "json":
        return None
    formatter = {"()": f"{__name__}.JsonFormatter"}
    return {"formatters": {"generic": formatter, "access": formatter}}
