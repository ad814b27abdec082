"""A client library's repeated lines are held back (saga_kit.logs.Repeats): with the
broker gone, aiokafka logged 274 lines a second from a three-service stack."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import pytest

from saga_kit import logs
from saga_kit.logs import Repeats


def _record(
    name: str, msg: str, args: tuple[object, ...], at: float, level: int = logging.ERROR
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    record.created = at
    return record


def test_one_line_of_a_kind_per_window_then_how_many_were_held_back() -> None:
    repeats = Repeats(window=10.0)
    kind = "Unable connect to node with id %s: %s"
    passed = [
        repeats.filter(_record("aiokafka.conn", kind, (node, "refused"), at))
        for at, node in [(0.0, 1), (0.1, 2), (5.0, 1), (9.9, 3)]
    ]
    assert passed == [True, False, False, False]  # another node is the same kind of line
    later = _record("aiokafka.conn", kind, (1, "refused"), 10.0)
    assert repeats.filter(later)
    assert (
        later.getMessage() == "Unable connect to node with id 1: refused (3 more like it held back in 10 s)"
    )


def test_other_kinds_and_the_services_own_lines_are_never_held_back() -> None:
    repeats = Repeats(window=10.0)
    assert repeats.filter(_record("aiokafka.client", "Unable to update metadata from %s", (111,), 0.0))
    assert repeats.filter(_record("aiokafka.conn", "Unable connect to node with id %s", (1,), 0.1))
    warning = _record("aiokafka.conn", "Unable connect to node with id %s", (1,), 0.2, logging.WARNING)
    assert repeats.filter(warning)  # another level is another kind
    for at in range(5):  # a saga's transitions share a template: every one is logged
        assert repeats.filter(_record("order_svc.sagametrics", "order %s: %s", ("o", "APPROVED"), at / 10))
    assert repeats.filter(_record("aiokafkaesque", "x", (), 0.0)) and repeats.filter(
        _record("aiokafkaesque", "x", (), 0.1)
    )  # a logger merely named alike


def test_an_exception_that_ends_a_thread_is_one_json_line_not_a_bare_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """faust's consumer thread stopping with the broker away printed Python's "Exception in
    thread Thread-1:" traceback among the JSON lines (CI, the broker outage test)."""
    before = threading.excepthook, logging.getLogger().handlers[:], logging.getLogger().level
    try:
        logs.configure("order_svc")

        def fail() -> None:
            raise ValueError("a thread's own failure")

        async def cancelled() -> None:
            raise asyncio.CancelledError

        for name, target in [("failing", fail), ("stopping", lambda: asyncio.run(cancelled()))]:
            thread = threading.Thread(target=target, name=name)
            thread.start()
            thread.join()
    finally:
        threading.excepthook = before[0]
        logging.getLogger().handlers[:] = before[1]
        logging.getLogger().setLevel(before[2])
    err = capsys.readouterr().err
    assert "Exception in thread" not in err
    lines = [json.loads(line) for line in err.splitlines()]
    assert [(line["level"], line["msg"]) for line in lines] == [
        ("error", "thread failing ended by an exception it did not handle"),
        ("warning", "thread stopping: cancelled while it stopped (the Kafka client's pending fetch)"),
    ]
    assert "ValueError: a thread's own failure" in lines[0]["exc"]


def test_a_callers_malformed_trace_headers_are_not_a_warning_per_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An attack trial: each request with a malformed ``tracestate`` or an overlong
    ``traceparent`` was a WARNING line of OpenTelemetry's, as many as were sent; a second,
    each request the HTTP parser refused, one of uvicorn's."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    before = logging.getLogger().handlers[:], logging.getLogger().level
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        logs.configure("order_svc")
        for _ in range(50):
            TraceContextTextMapPropagator().extract({"traceparent": parent, "tracestate": "bad key=v"})
            TraceContextTextMapPropagator().extract({"traceparent": parent + "-" + "a" * 600})
        for _ in range(40):  # what uvicorn says of each request its parser refuses
            logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
    finally:
        logging.getLogger().handlers[:] = before[0]
        logging.getLogger().setLevel(before[1])
    lines = [json.loads(line)["msg"] for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 3, lines
    assert lines[2] == "Invalid HTTP request received."
    assert lines[0].startswith("Member doesn't match the w3c identifiers format") and "exceeded" in lines[1]
