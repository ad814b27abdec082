"""The three kinds of failure, as types (see docs/design.md §4.4).

* ``TransientError`` — the world is briefly broken (database down, broker timeout):
  retry with backoff, never skip.
* ``InvalidEvent`` — the message can never be processed (unparseable, unknown type or
  version, fails validation): dead-letter it with the reason and keep going.
* ``DomainRejection`` — a business rule said no (out of stock, insufficient funds):
  not an error at all to the consumer; the handler answers with an event.
"""

from __future__ import annotations

import asyncio

import psycopg
from sqlalchemy import exc as sa_exc

from events.codec import InvalidEvent

__all__ = ["DomainRejection", "InvalidEvent", "TransientError", "is_kafka_error", "is_transient"]


class TransientError(Exception):
    """Raised by code that knows the failure will pass; retried by the consumer."""


class DomainRejection(Exception):
    """A business rule refused a command; HTTP answers it with 4xx, handlers with an event."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


_TRANSIENT_PG = (
    psycopg.OperationalError,  # connection refused / lost, server shutting down
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.AdminShutdown,
    psycopg.errors.CannotConnectNow,
)


def is_transient(exc: BaseException) -> bool:
    """True for failures that retrying the same work may cure."""
    if isinstance(exc, TransientError | asyncio.TimeoutError | ConnectionError | OSError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        return isinstance(exc.orig, _TRANSIENT_PG)
    if isinstance(exc, sa_exc.TimeoutError):  # connection pool exhausted
        return True
    return isinstance(exc, _TRANSIENT_PG)


def is_kafka_error(exc: BaseException) -> bool:
    """True for any error raised by the Kafka client (broker away, timeouts, metadata)."""
    from aiokafka.errors import KafkaError

    return isinstance(exc, KafkaError)
