"""Structured logs: one JSON object per line.

Every line carries ``service``; inside a saga's work it also carries ``order_id`` and
``event_type`` (bound by the consumer, the API and the deadline sweeper with ``bind``)
and the current ``trace_id``/``span_id``, so a log line leads to its trace and back.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import stamina.instrumentation

from saga_kit import tracing

_EXTRA_KEYS = ("order_id", "event_type", "event_id")
_bound: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "saga_log_fields", default=None
)


@contextmanager
def bind(**fields: object) -> Iterator[None]:
    """Add ``fields`` to every log line written inside the block (this task only)."""
    token = _bound.set({**(_bound.get() or {}), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _bound.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
            **(_bound.get() or {}),
        }
        for key in _EXTRA_KEYS:
            if key in record.__dict__:
                line[key] = str(record.__dict__[key])
        ids = tracing.current_ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


#: The client libraries whose repeated lines are held back (``Repeats``). OpenTelemetry
#: warns of every malformed ``tracestate`` or overlong ``traceparent`` a caller sends (an
#: attack trial: one WARNING per request, as many as it sent); the header is ignored. So
#: does uvicorn of every request its parser refuses ("Invalid HTTP request received.": 40
#: requests with a NUL in a header were 40 lines, a second attack trial); each is answered.
CLIENT_LIBRARIES = ("aiokafka", "kafka", "faust", "mode", "opentelemetry", "uvicorn")


class Repeats(logging.Filter):
    """Lets through one line of each kind — logger, level and message *before* its
    arguments ("Unable connect to node with id %s: %s") — per ``window`` seconds from the
    loggers under ``prefixes``; the next one let through says how many were held back.

    With its broker gone, aiokafka logs every failed reconnect and metadata refresh: an
    operator trial counted 274 lines a second (19,000 in the first minute) from a stack of
    three services, burying everything else. The service's own lines are never held back:
    its retry loops log each failure once, saying what they retry."""

    def __init__(self, prefixes: tuple[str, ...] = CLIENT_LIBRARIES, window: float = 10.0) -> None:
        super().__init__()
        self.names = frozenset(prefixes)
        self.dotted = tuple(p + "." for p in prefixes)
        self.window = window
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in self.names and not record.name.startswith(self.dotted):
            return True
        kind = (record.name, record.levelno, str(record.msg))
        last = self._last.get(kind)
        if last is not None and record.created - last[0] < self.window:
            self._last[kind] = (last[0], last[1] + 1)
            return False
        if len(self._last) > 1000:  # kinds are few; never let the table grow without bound
            self._last.clear()
        self._last[kind] = (record.created, 0)
        if last is not None and last[1]:
            record.msg = f"{record.msg} ({last[1]} more like it held back in {self.window:.0f} s)"
        return True


def log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook`` for a service: a thread ended by an exception it did not
    handle is one log line (JSON, with its traceback in ``exc``), not Python's bare
    "Exception in thread …" traceback on stderr among the JSON lines.

    One case is expected and only a warning: faust's consumer thread stopping while the
    broker is away, whose aiokafka fetcher (0.14) re-raises the ``CancelledError`` of a
    fetch it cancelled in its retry pause (``Fetcher.close``). The thread was stopping
    anyway; the service exits as it would have."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log = logging.getLogger(__name__)
    if args.exc_type is asyncio.CancelledError:
        log.warning("thread %s: cancelled while it stopped (the Kafka client's pending fetch)", name)
        return
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None
    log.error("thread %s ended by an exception it did not handle", name, exc_info=exc_info)


def configure(service: str, level: str = "INFO") -> None:
    """Logging for a service's process: one JSON line per record on stderr at ``level``
    (``JsonFormatter``), client libraries' repeats held back (``Repeats``), and an
    exception that ends a thread logged the same way (``log_thread_exception``)."""
    threading.excepthook = log_thread_exception
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(Repeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # every retry loop logs its own failures, saying what it retries (saga_kit.retry);
    # stamina's own line ("stamina.retry_scheduled") says nothing an operator can read
    stamina.instrumentation.set_on_retry_hooks([])
    # httpx logs every request at INFO (the payment provider's calls: /metrics counts them)
    for noisy in ("faust", "mode", "aiokafka", "uvicorn.access", "kafka", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
