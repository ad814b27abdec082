"""OpenTelemetry tracing: one saga is one trace, across all three services.

Spans (all made here or by the shared plumbing, wherever the work happens):

* ``POST /orders`` … — a SERVER span per HTTP request, the framework's own (a caller's
  ``traceparent`` linked, or continued with ``TRACING_TRUST_TRACEPARENT``: ``configure``),
  but for probes, scrapes, pages and the live feed
  (``saga_kit.http``; their answers carry no ``X-Trace-Id``);
* ``consume <service>`` — a CONSUMER span per consumed batch, with a link to the trace of
  each record in it;
* ``handle OrderCreated`` — a CONSUMER span per event a reaction handles, child of the
  context its record carries;
* ``receive PlaceOrder`` — a command's first span, in a trace of its own linked to the
  ``traceparent`` its record carries (continued with ``TRACING_TRUST_TRACEPARENT``:
  ``received``); its handling is a child of it;
* ``payment provider charge`` (or ``refund``) — a CLIENT span per call to the provider
  (the payment service);
* ``cancel order`` — the order service's deadline and customer cancellations continue
  the saga's trace from the context stored with the order (the HTTP request that asked
  for it is a link).

An event carries the context of the span that emitted it (the request's, or the handling
of the event that caused it) as W3C ``traceparent``: in its outbox row, then in its Kafka
headers. So one saga is one trace — the POST, then each service's handling, hop by hop —
with no span of its own for writing an event to the outbox or for the relay's batch
publish: one per event would cost more than it tells (the next service's handling of an
event is a child of the span that emitted it).

Exporter (``TRACING_EXPORTER``): ``none`` (default: spans and ids exist, so logs and
headers carry trace ids, but nothing is sent), ``otlp`` (OTLP over HTTP to
``OTEL_EXPORTER_OTLP_ENDPOINT``, default ``http://localhost:4318``) or ``file`` (one JSON
object per finished span, appended to ``TRACING_DIR/<service>.jsonl`` — for tests and for
looking at traces without a collector).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import (
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Span, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from saga_kit.headers import Header, Headers, text_map

TRACEPARENT = "traceparent"
#: reads and writes ``traceparent`` (and ``tracestate``) alone
_W3C = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("saga_kit")


class JsonLinesExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            assert ctx is not None
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "kind": span.kind.name,
                        "service": span.resource.attributes.get("service.name"),
                        "trace_id": format(ctx.trace_id, "032x"),
                        "span_id": format(ctx.span_id, "016x"),
                        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
                        "links": [format(link.context.trace_id, "032x") for link in span.links],
                        "start": span.start_time,
                        "end": span.end_time,
                        "attributes": dict(span.attributes or {}),
                        "status": span.status.status_code.name,
                    },
                    default=str,
                )
            )
        with self._lock, self.path.open("a") as out:
            out.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class _NotRead(TextMapPropagator):
    """Reads no trace context from a carrier, and writes none: the global propagator
    while callers' ``traceparent`` is not trusted (``configure``)."""

    def extract(
        self,
        carrier: Any,
        context: otel_context.Context | None = None,
        getter: Getter[Any] = default_getter,
    ) -> otel_context.Context:
        return context if context is not None else otel_context.Context()  # a trace of its own

    def inject(
        self, carrier: Any, context: otel_context.Context | None = None, setter: Setter[Any] = default_setter
    ) -> None:
        pass

    @property
    def fields(self) -> set[str]:
        return set()


_NOT_READ = _NotRead()


def configure(
    service: str, exporter: str, directory: str | None, *, trust_traceparent: bool = False
) -> TracerProvider:
    """The process's tracer provider, exporting as ``exporter`` says (module doc). The
    HTTP server's span (the framework's) continues a caller's ``traceparent`` only with
    ``trust_traceparent`` (``TRACING_TRUST_TRACEPARENT``): the global propagator, which
    the framework reads, is W3C's then, and reads nothing otherwise — the request starts
    a trace of its own, linked to the caller's (``link_caller``), as OpenTelemetry's
    instrumentations do for a public endpoint. Events always carry their trace (``_W3C``)."""
    propagate.set_global_textmap(_W3C if trust_traceparent else _NOT_READ)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter == "file":
        if not directory:
            raise ValueError("TRACING_EXPORTER=file needs TRACING_DIR")
        provider.add_span_processor(
            BatchSpanProcessor(
                JsonLinesExporter(Path(directory) / f"{service}.jsonl"), schedule_delay_millis=500
            )
        )
    elif exporter != "none":
        raise ValueError(f"unknown TRACING_EXPORTER {exporter!r}: none, otlp or file")
    trace.set_tracer_provider(provider)
    return provider


# -- carriers: Kafka/outbox headers are (str, bytes | None) pairs (saga_kit.headers) -------


def inject(headers: Headers, context: otel_context.Context | None = None) -> list[Header]:
    """``headers`` with the W3C trace context of ``context`` (default: the current one),
    replacing any earlier one. Events carry ``traceparent`` (and ``tracestate``) only,
    never baggage: the W3C propagator itself, not the global composite one."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=context)
    kept = [(k, v) for k, v in headers if k not in carrier]
    return kept + [(k, v.encode()) for k, v in carrier.items()]


def extract(headers: Headers | Mapping[str, str]) -> otel_context.Context:
    """The W3C trace context carried by ``headers``; headers that are null or not text
    are ignored, and a malformed ``traceparent`` starts a new trace."""
    if isinstance(headers, Mapping):
        return _W3C.extract(headers)
    return _W3C.extract(text_map(headers))


def from_traceparent(traceparent: str | None) -> otel_context.Context | None:
    """The trace context of a W3C ``traceparent`` kept in a row (None without one)."""
    return _W3C.extract({TRACEPARENT: traceparent}) if traceparent else None


def link_caller(headers: Mapping[str, str]) -> None:
    """Link the current span (an HTTP request's) to the trace a caller's ``traceparent``
    names, where the request did not continue it (``configure``): the caller's trace is
    found from the request's, not the other way round."""
    if propagate.get_global_textmap() is _W3C or TRACEPARENT not in headers:
        return
    caller = span_context(_W3C.extract({TRACEPARENT: headers[TRACEPARENT]}))
    if caller is not None:
        trace.get_current_span().add_link(caller, {"saga.link": "the caller's traceparent"})


def received(headers: Headers, name: str, attributes: Mapping[str, Any]) -> otel_context.Context:
    """The context to handle a record from outside the services in (a command on
    ``orders.commands``, which anyone with a producer may write): with
    ``TRACING_TRUST_TRACEPARENT`` the one its ``traceparent`` carries (``extract``), as an
    HTTP request's; else a new trace, whose first span — ``name``, a CONSUMER span with
    ``attributes``, ended at once — links to the trace the record names, as the HTTP door
    does (``link_caller``). An attack trial named another customer's trace in a
    ``PlaceOrder``'s headers: its saga and its audit entry were filed under it. Events
    between the services always continue theirs: they come from the services' own
    producers (signed, where signatures are on)."""
    carried = extract(headers)
    if propagate.get_global_textmap() is _W3C:
        return carried
    caller = span_context(carried)
    links = [Link(caller, {"saga.link": "the record's traceparent"})] if caller is not None else []
    with _tracer.start_as_current_span(
        name, context=otel_context.Context(), kind=SpanKind.CONSUMER, links=links, attributes=dict(attributes)
    ):
        return otel_context.get_current()


def span_context(context: otel_context.Context) -> SpanContext | None:
    """The remote span context of ``context`` (what ``extract`` found), if a valid one."""
    ctx = trace.get_current_span(context).get_span_context()
    return ctx if ctx.is_valid else None


def trace_id_of(context: otel_context.Context) -> str | None:
    """The trace id of ``context`` (what ``extract`` found), as hex, if a valid one."""
    ctx = span_context(context)
    return format(ctx.trace_id, "032x") if ctx is not None else None


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (None outside any span), from the W3C
    propagator itself rather than the global one: the global one also writes baggage,
    which cost the payment service 4% of its CPU per provider call for a header this
    function throws away (measured with py-spy under ``make bench``)."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get(TRACEPARENT)


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span, as hex, or None outside any span."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
    links: Sequence[Link] = (),
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A span, current inside the block; ``parent`` overrides the current context."""
    with _tracer.start_as_current_span(
        name, context=parent, kind=kind, links=list(links), attributes=dict(attributes or {})
    ) as s:
        yield s


@contextmanager
def in_saga(name: str, traceparent: str | None, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A span in the saga's own trace (``traceparent``, as kept with its order) linked to the
    current span (the request or command that caused it): a cancellation's, whoever asked
    for it. Without a ``traceparent``, a child of the current span."""
    with span(
        name, parent=from_traceparent(traceparent), links=link_to_current(), attributes=attributes
    ) as s:
        yield s


def link_to_current() -> list[Link]:
    ctx = trace.get_current_span().get_span_context()
    return [Link(ctx)] if ctx.is_valid else []
