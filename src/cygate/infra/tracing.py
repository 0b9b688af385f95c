"""Traces: OpenTelemetry, on when an OTLP endpoint is configured.

Enabled by the standard environment: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT`` (OTLP over HTTP/protobuf; the SDK's exporter appends
``/v1/traces`` to the second), ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG`` (the SDK's names: ``always_on``, ``always_off``, ``traceidratio``,
``parentbased_always_on`` (the default), ``parentbased_always_off``,
``parentbased_traceidratio``), ``OTEL_SDK_DISABLED=true`` turns it off. Spans leave through
the SDK's ``BatchSpanProcessor``: a thread exports them, never the event loop.

Off (no endpoint) :func:`configure` returns None and nothing of ``opentelemetry`` is imported:
the callers hold ``None`` and make no span object (the edge, the database pool, Redis, the proxy,
the payment processor client, the outbox relay and consumers). On, each asks :func:`current`
for the one :class:`Tracing` of the process and uses its small interface:

    span = tracing.start("redis GET", kind="client", attributes={...})   # child of current
    tracing.traceparent()          # the current span's W3C traceparent, for an outgoing request
    tracing.link("00-...-01")      # a link to another trace's span (outbox events)

NOTE: the SDK, left to itself, takes an unknown ``OTEL_TRACES_SAMPLER`` (or an argument that is
not a number) as "sample everything" after a warning; a gateway sampling 100 % by accident is
an outage, so :func:`configure` refuses both with :class:`TracingConfigError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link, Span

    from cygate.core.reqmetrics import Tally

__all__ = [
    "SAMPLERS",
    "Incoming",
    "TraceLogFilter",
    "Tracing",
    "TracingConfigError",
    "configure",
    "current",
    "current_ids",
    "enabled",
    "install_log_filter",
    "shutdown",
]

log = logging.getLogger("cygate.tracing")

SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
"""The values of ``OTEL_TRACES_SAMPLER`` cygate accepts (the SDK's built-in samplers)."""

_NUMBERS = (
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_BSP_SCHEDULE_DELAY",
)
"""Numbers cygate passes to the SDK itself (checked: a positive number)."""


_current: Tracing | None = None
_pid = 0


class TracingConfigError(ValueError):
    """The ``OTEL_*`` environment asks for something cygate will not guess at."""


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """An OTLP endpoint is set (and the SDK is not disabled)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def check(environ: Mapping[str, str] = os.environ) -> tuple[str, float]:
    """The sampler's name and ratio (1.0 for those without one) the environment asks for;
    :class:`TracingConfigError` for a name the SDK does not know, a ratio that is not a
    number from 0 to 1, or a timeout or batch delay that is not a positive number (imports
    nothing)."""
    raw_name = environ.get("OTEL_TRACES_SAMPLER", "")
    name = raw_name.strip().lower() or "parentbased_always_on"
    if name not in SAMPLERS:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER={raw_name!r} is not one of {', '.join(sorted(SAMPLERS))}"
        )
    for number in _NUMBERS:
        _number(environ, number)
    if not name.endswith("traceidratio"):
        return name, 1.0
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1.0"
    try:
        rate = float(raw)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:  # (NaN too)
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER_ARG={raw!r} must be a ratio from 0 to 1 for {name}"
        )
    return name, rate


def _sampler_from(environ: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.trace import sampling

    name, rate = check(environ)
    if not name.endswith("traceidratio"):
        return {
            "always_on": sampling.ALWAYS_ON,
            "always_off": sampling.ALWAYS_OFF,
            "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
            "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        }[name]
    ratio = sampling.TraceIdRatioBased(rate)
    return ratio if name == "traceidratio" else sampling.ParentBased(ratio)


def configure(
    environ: Mapping[str, str] = os.environ, *, dropped: Tally | None = None
) -> Tracing | None:
    """The process's :class:`Tracing` when the environment enables it (see the module's doc),
    else None (and nothing of OpenTelemetry imported). Called once per worker process (the
    export thread must start in the process that uses it); again, it returns the one it made.
    ``dropped`` counts spans whose export failed (``cygate_trace_spans_dropped_total``)."""
    global _current, _pid
    if _current is not None:
        if _pid == os.getpid():
            return _current
        # Inherited through a fork (``cygate serve`` builds the app once to check it before
        # Granian forks the workers): this process gets its own provider, thread and counter.
        inherited, _current = _current, None
        inherited.provider.shutdown()
    if not enabled(environ):
        return None
    sampler = _sampler_from(environ)

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        sampler=sampler,
        resource=Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or "cygate"}),
        id_generator=_next_trace_id_generator(),
    )
    # NOTE: what ``environ`` says is passed on explicitly (the SDK's classes read
    # ``os.environ`` for what they are not given: the same mapping when the app calls this).
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if not endpoint:
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].strip().rstrip("/") + "/v1/traces"
    timeout = _number(environ, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or _number(
        environ, "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=timeout)
    delay = _number(environ, "OTEL_BSP_SCHEDULE_DELAY")
    processor = BatchSpanProcessor(
        _counting_exporter(exporter, dropped),
        schedule_delay_millis=delay,
    )
    provider.add_span_processor(processor)
    name, rate = check(environ)
    _current, _pid = Tracing(provider, sampler, name, rate), os.getpid()
    return _current


def _number(environ: Mapping[str, str], name: str) -> float | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise TracingConfigError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise TracingConfigError(f"{name}={raw!r} must be above 0")
    return value


def current() -> Tracing | None:
    """The process's :class:`Tracing` (None: tracing is off)."""
    return _current


def shutdown() -> None:
    """Export what is queued (bounded by the SDK's timeout) and stop the export thread."""
    global _current
    tracing, _current = _current, None
    if tracing is not None:
        tracing.provider.shutdown()


def _next_trace_id_generator() -> Any:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class NextTraceId(RandomIdGenerator):
        """Random ids, except the trace id of a root span the edge already decided on: the
        sampling decision made before the fused hit path (:meth:`Tracing.incoming`) and the
        span's own must see the same trace id, or a ratio sampler would sample p² of roots."""

        next_trace_id = 0

        def generate_trace_id(self) -> int:
            trace_id, self.next_trace_id = self.next_trace_id, 0
            return trace_id or random.getrandbits(128) or 1

    return NextTraceId()


def _counting_exporter(exporter: Any, dropped: Tally | None) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Counting(SpanExporter):
        """The OTLP exporter, counting the spans of every batch it could not deliver."""

        def export(self, spans: Sequence[Any]) -> Any:
            try:
                result = exporter.export(spans)
            except Exception:
                log.exception("trace export failed")
                result = SpanExportResult.FAILURE
            if result is not SpanExportResult.SUCCESS and dropped is not None:
                dropped.value += len(spans)  # (the export thread; read by the snapshot)
            return result

        def shutdown(self) -> None:
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(exporter.force_flush(timeout_millis))

    return Counting()


class Incoming:
    """A request's sampling decision, made from its ``traceparent`` before anything else."""

    __slots__ = ("sampled", "trace_id", "traceparent", "tracestate")

    def __init__(
        self, traceparent: bytes, tracestate: bytes | None, trace_id: int, sampled: bool
    ) -> None:
        self.traceparent = traceparent
        """The client's (empty: the request starts a trace)."""
        self.tracestate = tracestate
        self.trace_id = trace_id
        """The request's trace id: the client's, or the one a new trace takes."""
        self.sampled = sampled


_TRACE_ID_LIMIT = (1 << 64) - 1


class Tracing:
    """The process's tracer over the SDK's provider; what the rest of cygate calls."""

    __slots__ = (
        "_bound",
        "_ids",
        "_parent_based",
        "_propagator",
        "_root",
        "_trace",
        "provider",
        "sampler",
        "tracer",
    )

    def __init__(self, provider: TracerProvider, sampler: Any, name: str, rate: float) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.sampler = sampler
        self.tracer = provider.get_tracer("cygate")
        self._trace = trace
        self._ids: Any = provider.id_generator
        self._propagator = TraceContextTextMapPropagator()
        # PERF: the decision of the SDK's built-in samplers, computed here without a Context
        # (the SDK's own path builds one per call): a ratio sampler keeps a trace when the low
        # 64 bits of its id fall under the bound; a parent-based one follows a remote parent's
        # sampled flag. The span's own sampling (the SDK's) then agrees, on the same ids.
        self._parent_based = name.startswith("parentbased_")
        root = name.removeprefix("parentbased_")
        self._root = {"always_on": 1, "always_off": 0}.get(root, -1)  # -1: by ratio
        self._bound = TraceIdRatioBased(rate).bound

    # -- requests --------------------------------------------------------------------------

    def incoming(self, traceparent: bytes, tracestate: bytes | None = None) -> Incoming:
        """The decision for a request with this ``traceparent`` (one the edge keeps:
        ``cygate.core.ids.valid_traceparent``; empty: none) and ``tracestate``: the decision
        the request's span will get from the SDK's sampler."""
        if len(traceparent) == 55:
            trace_id = int(traceparent[3:35], 16)
            if self._parent_based:
                sampled = bool(int(traceparent[53:55], 16) & 1)
                return Incoming(traceparent, tracestate, trace_id, sampled)
        else:
            traceparent = b""
            trace_id = random.getrandbits(128) or 1
        root = self._root
        if root >= 0:
            return Incoming(traceparent, tracestate, trace_id, bool(root))
        return Incoming(
            traceparent, tracestate, trace_id, (trace_id & _TRACE_ID_LIMIT) < self._bound
        )

    def server_span(self, incoming: Incoming, name: str, attributes: dict[str, Any]) -> Span:
        """The request's span (kind server), child of the client's span when it sent one."""
        parent = None
        tp = incoming.traceparent
        if tp:
            trace = self._trace
            state = None
            if incoming.tracestate:
                state = _trace_state(incoming.tracestate)
            context = trace.SpanContext(
                trace_id=incoming.trace_id,
                span_id=int(tp[36:52], 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(int(tp[53:55], 16) & 1),
                trace_state=state,
            )
            parent = trace.set_span_in_context(trace.NonRecordingSpan(context))
        else:
            self._ids.next_trace_id = incoming.trace_id  # taken by the start_span just below
        return self.tracer.start_span(
            name,
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes=attributes,
        )

    # -- spans -----------------------------------------------------------------------------

    def start(
        self,
        name: str,
        *,
        kind: str = "internal",
        attributes: dict[str, Any] | None = None,
        links: Sequence[Link] = (),
        start_time: int | None = None,
        root: bool = False,
    ) -> Span:
        """A span, child of the current one (``root``: of none), started now (or at
        ``start_time``, ns since the epoch); end it with ``span.end()``."""
        trace = self._trace
        context = None
        if root:
            from opentelemetry.context import Context

            context = Context()
        return self.tracer.start_span(
            name,
            context=context,
            kind=trace.SpanKind[kind.upper()],
            attributes=attributes,
            links=links,
            start_time=start_time,
        )

    def use(self, span: Span) -> object:
        """Make ``span`` the current one (in this task's context); returns the token for
        :meth:`release`."""
        from opentelemetry import context

        return context.attach(self._trace.set_span_in_context(span))

    def release(self, token: object) -> None:
        from opentelemetry import context

        context.detach(token)  # type: ignore[arg-type]  # the token use() returned

    @contextlib.contextmanager
    def running(self, span: Span) -> Iterator[Span]:
        """``span`` current for the block (:meth:`use`), marked failed by an exception that
        leaves it (:meth:`fail`), released and ended after it."""
        token = self.use(span)
        try:
            yield span
        except BaseException as exc:
            self.fail(span, exc)
            raise
        finally:
            self.release(token)
            span.end()

    def fail(self, span: Span, exc: BaseException) -> None:
        """Mark ``span`` failed by ``exc``."""
        span.record_exception(exc)
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, type(exc).__name__))

    def tracer_active(self) -> bool:
        """The current span records (a sampled request or task is running): worth a child."""
        return bool(self._trace.get_current_span().is_recording())

    def error_status(self, description: str) -> Any:
        """An error ``Status`` for ``span.set_status``."""
        return self._trace.Status(self._trace.StatusCode.ERROR, description)

    # -- propagation -----------------------------------------------------------------------

    def traceparent(self, span: Span | None = None) -> str:
        """The W3C ``traceparent`` of ``span`` (default: the current span); empty when there
        is none."""
        context = (span or self._trace.get_current_span()).get_span_context()
        if not context.is_valid:
            return ""
        # NOTE: the sampled flag alone (W3C Trace Context level 1: other bits are sent as 0).
        sampled = int(context.trace_flags) & 1
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{sampled:02x}"

    def tracestate(self, span: Span | None = None) -> str:
        """The ``tracestate`` of ``span`` (default: the current span), empty when none."""
        context = (span or self._trace.get_current_span()).get_span_context()
        return context.trace_state.to_header() if context.is_valid else ""

    def link(self, traceparent: str | None) -> Link | None:
        """A link to the span a ``traceparent`` names (None: missing or malformed)."""
        if not traceparent:
            return None
        parent = self._propagator.extract({"traceparent": traceparent})
        context = self._trace.get_current_span(parent).get_span_context()
        if not context.is_valid:
            return None
        return self._trace.Link(context)

    # -- asyncpg ---------------------------------------------------------------------------

    def query_logger(self, record: Any) -> None:
        """An asyncpg query logger (``Connection.add_query_logger``): one span per query, from
        its start to its end (asyncpg calls the logger after the query, in the caller's
        context, so the span is the current span's child)."""
        import time

        # NOTE: asyncpg runs the logger soon after the query (``call_soon``, in the caller's
        # context): the request's span may have ended by then, so sampled, not recording.
        parent = self._trace.get_current_span().get_span_context()
        if not parent.is_valid or not parent.trace_flags.sampled:
            return  # a query outside any sampled request: no root span of its own
        end = time.time_ns()
        query: str = record.query
        span = self.tracer.start_span(
            _statement_name(query),
            kind=self._trace.SpanKind.CLIENT,
            attributes={"db.system.name": "postgresql", "db.query.text": query[:2000]},
            start_time=end - int(record.elapsed * 1e9),
        )
        if record.exception is not None:
            self.fail(span, record.exception)
        span.end(end)


def _trace_state(header: bytes) -> Any:
    """The client's ``tracestate`` (None when malformed: W3C says to drop it then)."""
    from opentelemetry.trace.span import TraceState

    value = header.decode("latin-1")
    if not _TRACESTATE_RE.fullmatch(value):
        return None  # (the SDK would log a warning for each such request)
    return TraceState.from_header([value])


# W3C Trace Context 3.3.1: list-members ``key=value`` separated by commas (optional spaces);
# keys lower-case (with a tenant@vendor form), values printable ASCII but ``,`` and ``=``.
_MEMBER = r"[a-z0-9][a-z0-9_\-*/@]{0,255}=[\x21-\x2b\x2d-\x3c\x3e-\x7e]{0,255}"
_TRACESTATE_RE = re.compile(rf"[ \t]*{_MEMBER}[ \t]*(?:,[ \t]*(?:{_MEMBER})?[ \t]*){{0,31}}")


def _statement_name(query: str) -> str:
    """``SELECT``, ``INSERT``, ... (the first word: a bounded span name, never the text)."""
    word = query.lstrip(" \n\t(").split(None, 1)
    return f"db {word[0].upper()}" if word else "db"


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the current span (lower-case hex, 32 and 16 digits), or None
    when there is none or tracing is off: the shape of a log formatter's trace context
    provider."""
    tracing = _current
    if tracing is None:
        return None
    context = tracing._trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


class TraceLogFilter(logging.Filter):
    """Sets ``trace_id`` and ``span_id`` on every log record from the current span (empty
    strings when there is none, or tracing is off), for a formatter that prints them."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_ids()
        record.trace_id, record.span_id = ids if ids is not None else ("", "")
        return True


def install_log_filter(handler: logging.Handler | None = None) -> TraceLogFilter:
    """Add a :class:`TraceLogFilter` to ``handler`` (default: every handler of the root
    logger), once; returns it."""
    handlers = [handler] if handler is not None else logging.getLogger().handlers
    the_filter = TraceLogFilter()
    for h in handlers:
        if not any(isinstance(f, TraceLogFilter) for f in h.filters):
            h.addFilter(the_filter)
    return the_filter
