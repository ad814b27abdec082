"""Broker plumbing: explicit topic creation, the relay's producer, a readiness probe.

The relay's producer is ``acks="all"``. Against Tansu (the embedded dev broker)
idempotent producers and transactions fail, so idempotence is off unless asked for
(``KAFKA_IDEMPOTENT_PRODUCER``, which ``System`` sets when it runs Apache Kafka); either
way duplicates are absorbed by the inbox. Every client here connects as ``security``
says (``saga_kit.kafka_security``: TLS, SASL/SCRAM).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAlreadyExistsError,
    UnknownProducerId,
)

from saga_kit.kafka_security import KafkaSecurity

log = logging.getLogger(__name__)


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    partitions: int,
    replication: int,
    security: KafkaSecurity | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    The broker answers CreateTopics with an error code per topic rather than failing the
    request (Kafka's protocol, ``CreateTopicsResponse.topics[].error_code``), and aiokafka
    hands that answer back as it is: a topic another service created first (code 36) is
    taken as there; any other code is raised as its ``aiokafka.errors`` class, so a topic
    the ACLs refuse (``TopicAuthorizationFailedError``) or the broker cannot make now (a
    retriable error) is never counted as created."""
    async with _admin(bootstrap, security) as admin:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        created = []
        for topic in missing:
            try:
                answer = await admin.create_topics([NewTopic(topic, partitions, replication)])
                raise_topic_errors(answer.topic_errors)
                created.append(topic)
            except TopicAlreadyExistsError:  # another service won the race
                pass
        return created


def raise_topic_errors(topic_errors: Iterable[tuple[Any, ...]]) -> None:
    """Raise the first error in a CreateTopics answer's ``topic_errors``: tuples of
    ``(topic, error_code)`` (version 0) or ``(topic, error_code, error_message)`` (1 on),
    as ``aiokafka.errors.for_code(error_code)`` with the topic and the broker's message."""
    for topic, code, *message in topic_errors:
        if code:
            said = f": {message[0]}" if message and message[0] else ""
            raise kafka_errors.for_code(code)(f"topic {topic!r}{said}")


class ConnectionErrors(logging.Handler):
    """The errors aiokafka's clients meet connecting, taken from its log while in a
    ``with`` block: aiokafka logs each (``Unable connect to "host:port": <error>``, the
    error among the record's arguments) and raises only ``KafkaConnectionError("Unable to
    bootstrap …")``, whatever the cause. Collects; prints nothing (the log goes on as
    configured)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []

    def __enter__(self) -> ConnectionErrors:
        logging.getLogger("aiokafka").addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger("aiokafka").removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        self.errors.extend(arg for arg in args if isinstance(arg, BaseException))

    def refusal(self, security: KafkaSecurity) -> str | None:
        """Why the broker and this client would not talk, if it was no network trouble —
        the broker refused the SASL user or its password, or the client did not trust the
        broker's certificate — in a sentence naming the settings to check; None otherwise."""
        for error in self.errors:
            if isinstance(error, kafka_errors.SaslAuthenticationFailed):
                return (
                    f"authentication failed: the broker refused Kafka user {security.sasl_username!r}"
                    f" with this password ({security.sasl_mechanism}); check KAFKA_SASL_USERNAME and"
                    " KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE)"
                )
            if isinstance(error, ssl.SSLCertVerificationError):
                return (
                    f"the broker's certificate is not trusted ({error.verify_message or error}):"
                    " KAFKA_SSL_CAFILE must name the CA that signed it"
                )
        return None


async def find_group_coordinator(bootstrap: str, group: str, *, security: KafkaSecurity | None = None) -> int:
    """The id of the broker that coordinates consumer group ``group``; raises
    ``GroupCoordinatorNotAvailableError`` (retriable) while there is none yet.

    Apache Kafka elects a group's coordinator when its offsets topic first exists, a few
    seconds after a new cluster starts; a consumer that joins before that logs aiokafka's
    "Group Coordinator Request failed" at ERROR on every try. The service waits for it
    here, at INFO, before its consumers start."""
    async with _admin(bootstrap, security) as admin:
        return int(await admin.find_coordinator(group))


async def cluster_id(bootstrap: str, security: KafkaSecurity | None = None) -> str | None:
    """The id of the broker cluster at ``bootstrap`` (Kafka's metadata, version 2 on); None
    if it names none. Apache Kafka keeps it for the life of the cluster's storage; the
    supervisor gives each embedded Tansu a new one, as each starts with an empty log."""
    async with _admin(bootstrap, security) as admin:
        described = await admin.describe_cluster()
    found = described.get("cluster_id")
    return str(found) if found else None


@contextlib.asynccontextmanager
async def _admin(bootstrap: str, security: KafkaSecurity | None) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client connected to ``bootstrap`` as ``security`` says, closed after."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=10_000,
        **(security or KafkaSecurity()).client_kwargs(),
    )
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


def create_producer(
    bootstrap: str, client_id: str, *, idempotent: bool = False, security: KafkaSecurity | None = None
) -> AIOKafkaProducer:
    """The relay's producer: ``acks="all"``; with ``idempotent`` the broker drops the
    duplicates of the producer's own retries (needs a broker that supports it: Apache Kafka,
    not Tansu)."""
    return AIOKafkaProducer(
        **(security or KafkaSecurity()).client_kwargs(),
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=idempotent,
        linger_ms=1,
        request_timeout_ms=15_000,
        compression_type=None,
    )


#: Errors after which an idempotent producer's state on the broker (its id, epoch and
#: sequence numbers) no longer matches the client's. aiokafka does not reset its producer
#: id as the Java client does, so every later send to that partition fails the same way:
#: retrying with the same producer never succeeds.
_PRODUCER_STATE_ERRORS = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
)


def is_producer_state_lost(exc: BaseException) -> bool:
    """True if ``exc`` means the producer must be replaced, not retried (see above)."""
    return isinstance(exc, _PRODUCER_STATE_ERRORS)


async def broker_ping(producer: AIOKafkaProducer) -> None:
    """Raise unless the broker answers a metadata request (the caller bounds the wait)."""
    ok = await producer.client.fetch_all_metadata()
    if ok is None or not ok.brokers():
        raise ConnectionError("broker returned no metadata")
