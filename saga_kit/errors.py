"""The three kinds of failure, as types (see docs/design.md §4.4).

* ``TransientError`` — the world is briefly broken (database down, broker timeout):
  retry with backoff, never skip.
* ``InvalidEvent`` — the message can never be processed (unparseable, unknown type or
  version, fails validation): dead-letter it with the reason and keep going.
* ``DomainRejection`` — a business rule said no (out of stock, insufficient funds):
  not an error at all to the consumer; the handler answers with an event.

And one that stops a service before it starts: ``ConfigurationError`` (missing or unfit
keys or secrets, e.g. under ``SAGA_ENV=production``); ``saga_kit.service.main`` says
which and exits 2.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

from events.codec import InvalidEvent

__all__ = [
    "ConfigurationError",
    "DomainRejection",
    "InvalidEvent",
    "TransientError",
    "described",
    "is_transient",
    "is_transient_kafka_error",
    "setting_file",
]


def described(exc: BaseException) -> str:
    """``exc`` as one says it: ``Type: message``; the type alone when there is no message
    (a client's own timeout: not "TimeoutError: "), the message alone when it names its
    type already (aiokafka's: not "KafkaError: KafkaError: …", nor "TopicAuthorizationFailedError:
    [Error 29] TopicAuthorizationFailedError: …")."""
    named, message = type(exc).__name__, str(exc)
    if not message:
        return named
    return message if named in message.partition(":")[0] else f"{named}: {message}"


class ConfigurationError(Exception):
    """The service's settings are missing something, or unfit for where it runs; the
    message names the variables. Raised before the service connects to anything."""


@contextmanager
def setting_file(
    variable: str,
    path: str | os.PathLike[str],
    error: type[ConfigurationError] = ConfigurationError,
    also: tuple[type[Exception], ...] = (),
) -> Iterator[None]:
    """Read the file the setting ``variable`` names inside this block: what reading or
    parsing it raises (``OSError``, ``ValueError`` — JSON, PEM or key bytes that are not
    what they should be —, ``KeyError``, ``TypeError``, and ``also``) becomes ``error``
    naming the variable, the file and why, and the service does not start (an operator
    trial: a missing key file stopped a service on a traceback naming neither)."""
    caught: tuple[type[Exception], ...] = (OSError, ValueError, KeyError, TypeError, *also)
    try:
        yield
    except caught as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else described(exc)
        raise error(f"{variable}={os.fspath(path)} cannot be used: {why}") from None


class TransientError(Exception):
    """Raised by code that knows the failure will pass; retried by the consumer."""


class DomainRejection(Exception):
    """A business rule refused a command; HTTP answers it with 4xx, handlers with an event."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


@functools.cache
def _transient_pg() -> tuple[type[Exception], ...]:
    # the database driver is imported when a failure is first classified, not with this
    # module: sagactl imports it (saga_kit.auth) and starts ~0.5 s sooner without it
    import psycopg

    return (
        psycopg.OperationalError,  # connection refused / lost, server shutting down
        psycopg.errors.SerializationFailure,
        psycopg.errors.DeadlockDetected,
        psycopg.errors.LockNotAvailable,
        psycopg.errors.AdminShutdown,
        psycopg.errors.CannotConnectNow,
    )


#: OS errors of a network that is briefly away; a missing file or a permission is a bug.
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EAGAIN,
    }
)


def is_transient(exc: BaseException) -> bool:
    """True for failures that retrying the same work may cure: the database or the
    network briefly away, a lock conflict, a timeout. Everything else — a missing file, a
    bug, bad data — is not, however it is raised."""
    if isinstance(exc, TransientError | asyncio.TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OSError) and type(exc) is OSError:  # a socket error without a subclass
        return exc.errno in _NETWORK_ERRNOS
    from sqlalchemy import exc as sa_exc  # as the driver above

    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        return isinstance(exc.orig, _transient_pg())
    if isinstance(exc, sa_exc.TimeoutError):  # connection pool exhausted
        return True
    return isinstance(exc, _transient_pg())


def is_kafka_authorization_error(exc: BaseException) -> bool:
    """True for the broker's ACLs refusing this client's user a topic, a consumer group or
    the cluster (``saga_kit.kafka_acls`` says what each user needs). Not transient, but an
    operator may add the grant while the service runs, so work that waits for it (the
    outbox relay) may retry it."""
    from aiokafka import errors as kafka

    return isinstance(
        exc,
        kafka.TopicAuthorizationFailedError
        | kafka.GroupAuthorizationFailedError
        | kafka.ClusterAuthorizationFailedError,
    )


def is_transient_kafka_error(exc: BaseException) -> bool:
    """True for Kafka client errors that retrying may cure: the ones the client marks
    retriable, and timeouts and unavailable brokers. A record too large, a topic that
    cannot exist, a refused authentication are not."""
    from aiokafka import errors as kafka

    if not isinstance(exc, kafka.KafkaError):
        return False
    return bool(exc.retriable) or isinstance(
        exc,
        kafka.KafkaTimeoutError
        | kafka.KafkaUnavailableError
        | kafka.BrokerNotAvailableError
        | kafka.RequestTimedOutError
        | kafka.UnknownError,  # what the embedded broker answers while it starts
    )
