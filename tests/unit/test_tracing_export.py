"""The exporter is configurable: OTLP over HTTP really sends spans to the configured
endpoint (a local receiver here), ``file`` writes JSON lines, ``none`` sends nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from saga_kit import tracing


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_otlp_exporter_sends_spans_to_the_configured_endpoint(
    collector: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
    Receiver.received.clear()
    provider = tracing.configure("test_svc", "otlp", None)
    provider.get_tracer("t").start_span("handle OrderCreated").end()
    assert provider.force_flush(10_000)
    provider.shutdown()
    paths = [path for path, _ in Receiver.received]
    assert paths == ["/v1/traces"]
    body = Receiver.received[0][1]
    assert b"handle OrderCreated" in body and b"test_svc" in body  # span name, service.name


def test_file_exporter_writes_one_json_line_per_span(tmp_path: Path) -> None:
    provider = tracing.configure("file_svc", "file", str(tmp_path))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("parent"):
        tracer.start_span("child").end()
    assert provider.force_flush(10_000)
    provider.shutdown()
    spans = [json.loads(line) for line in (tmp_path / "file_svc.jsonl").read_text().splitlines()]
    by_name = {s["name"]: s for s in spans}
    assert by_name["child"]["parent_id"] == by_name["parent"]["span_id"]
    assert {s["service"] for s in spans} == {"file_svc"}


def test_unknown_exporter_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown TRACING_EXPORTER"):
        tracing.configure("x", "zipkin", None)
    with pytest.raises(ValueError, match="needs TRACING_DIR"):
        tracing.configure("x", "file", None)


def test_a_stored_traceparent_continues_its_trace(tmp_path: Path) -> None:
    """``current_traceparent`` is the current span's W3C header (what a row keeps, what the
    provider call carries) and ``from_traceparent`` continues that trace from it."""
    provider = tracing.configure("tp_svc", "file", str(tmp_path))
    assert tracing.current_traceparent() is None  # outside any span
    with tracing.span("first") as first:
        stored = tracing.current_traceparent()
        ids = first.get_span_context()
    assert stored == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{ids.trace_flags:02x}"
    with tracing.span("later", parent=tracing.from_traceparent(stored)):
        later = tracing.current_ids()
    assert later is not None
    assert later[0] == f"{ids.trace_id:032x}"
    assert tracing.from_traceparent(None) is None
    provider.shutdown()


@pytest.mark.parametrize("trust", [False, True])
def test_a_callers_traceparent_starts_the_trace_only_when_trusted(trust: bool, tmp_path: Path) -> None:
    """The HTTP framework reads the caller's context through the global propagator: W3C's
    with ``TRACING_TRUST_TRACEPARENT``, else one that reads none and gives an empty context
    (a root: an empty composite gave None, and every request was a 500)."""
    from opentelemetry import propagate, trace

    provider = tracing.configure("trust_svc", "file", str(tmp_path), trust_traceparent=trust)
    try:
        foreign = "4bf92f3577b34da6a3ce929d0e0e4736"
        context = propagate.extract({"traceparent": f"00-{foreign}-00f067aa0ba902b7-01"})
        assert context is not None
        found = trace.get_current_span(context).get_span_context()
        assert found.is_valid is trust
        assert (format(found.trace_id, "032x") == foreign) is trust
    finally:
        provider.shutdown()
        propagate.set_global_textmap(tracing._NOT_READ)  # the default, for the tests after


@pytest.mark.parametrize("trust", [False, True])
def test_a_commands_traceparent_is_continued_only_when_trusted(trust: bool, tmp_path: Path) -> None:
    """A record from outside the services (a command) is handled in a trace of its own whose
    first span links to the one its ``traceparent`` names (an attack trial filed a saga under
    another customer's trace so), unless ``TRACING_TRUST_TRACEPARENT``; ``extract`` (events
    between the services) always continues it."""
    from opentelemetry import propagate, trace
    from opentelemetry.sdk.trace import ReadableSpan

    provider = tracing.configure("command_svc", "file", str(tmp_path), trust_traceparent=trust)
    try:
        foreign = "4bf92f3577b34da6a3ce929d0e0e4736"
        headers = [("traceparent", f"00-{foreign}-00f067aa0ba902b7-01".encode())]
        assert tracing.trace_id_of(tracing.extract(headers)) == foreign
        context = tracing.received(headers, "receive PlaceOrder", {"messaging.system": "kafka"})
        assert (tracing.trace_id_of(context) == foreign) is trust
        assert tracing.trace_id_of(context) is not None  # handled in a trace, either way
        if not trust:  # the global provider is the first test's: the span is read, not exported
            receive = trace.get_current_span(context)
            assert isinstance(receive, ReadableSpan)
            assert (receive.name, receive.parent) == ("receive PlaceOrder", None)
            assert [format(link.context.trace_id, "032x") for link in receive.links] == [foreign]
    finally:
        provider.shutdown()
        propagate.set_global_textmap(tracing._NOT_READ)  # the default, for the tests after
