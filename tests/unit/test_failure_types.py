"""What is retried and what is not, and the cap on dead letters from failing reactions."""

from __future__ import annotations

import errno

import psycopg
import pytest
from aiokafka import errors as kafka

from saga_kit.consumer import HandlerErrorLimit
from saga_kit.errors import TransientError, described, is_transient, is_transient_kafka_error
from saga_kit.kafka import raise_topic_errors


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (TransientError("busy"), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (OSError(errno.ECONNRESET, "reset"), True),
        (psycopg.OperationalError("server closed the connection"), True),
        (FileNotFoundError("/etc/missing"), False),  # a bug, not the weather
        (PermissionError("denied"), False),
        (OSError(errno.ENOSPC, "disk full"), False),
        (ValueError("bad"), False),
        (psycopg.errors.UniqueViolation("dup"), False),
    ],
)
def test_only_what_retrying_can_cure_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (kafka.KafkaConnectionError(), True),
        (kafka.KafkaTimeoutError(), True),
        (kafka.NotLeaderForPartitionError(), True),
        (kafka.NotEnoughReplicasError(), True),
        (kafka.MessageSizeTooLargeError(), False),  # retrying sends the same too-large record
        (kafka.InvalidTopicError(), False),
        (ValueError(), False),
    ],
)
def test_only_retriable_kafka_errors_are_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient_kafka_error(exc) is transient


def test_failing_reactions_are_capped_in_a_row_and_as_a_share() -> None:
    limit = HandlerErrorLimit(max_consecutive=3, max_ratio=0.1, window=100, min_sample=20)
    assert [limit.admit() for _ in range(3)] == [None, None, None]
    assert "3 events in a row" in (limit.admit() or "")  # the fourth in a row is refused
    limit.handled(1)  # one event went through: the run is broken
    assert limit.admit() is None

    limit.resume()  # an operator's decision: start counting afresh
    limit.handled(36)
    answers = []
    for _ in range(5):  # never two in a row, but more and more of the recent events
        answers.append(limit.admit())
        limit.handled(1)
    # 1/37, 2/39, 3/41, 4/43 are under 10%; 5/45 is over
    assert answers[:4] == [None] * 4
    assert "5 of the last 45" in (answers[4] or "")


def test_a_create_topics_answer_raises_each_topics_error_as_its_class() -> None:
    """aiokafka returns CreateTopics' per-topic error codes instead of raising them: a topic
    the ACLs refused was counted as created (``ensure_topics``)."""
    raise_topic_errors([("a", 0, None), ("b", 0)])  # created: nothing to say
    with pytest.raises(kafka.TopicAuthorizationFailedError, match="topic 'b': Authorization failed"):
        raise_topic_errors([("a", 0, None), ("b", 29, "Authorization failed."), ("c", 0, None)])
    with pytest.raises(kafka.TopicAlreadyExistsError, match="topic 'a'"):  # version 0: no message
        raise_topic_errors([("a", 36)])
    with pytest.raises(kafka.NotControllerError) as retriable:
        raise_topic_errors([("a", 41, "")])
    assert is_transient_kafka_error(retriable.value)


def test_an_error_is_described_once_with_its_type() -> None:
    assert described(ValueError("bad")) == "ValueError: bad"
    assert described(TimeoutError()) == "TimeoutError"
    refused = kafka.TopicAuthorizationFailedError("topic 'x'")
    assert described(refused) == "[Error 29] TopicAuthorizationFailedError: topic 'x'"
    assert described(kafka.KafkaConnectionError("no broker")) == "KafkaConnectionError: no broker"


def test_the_consumer_state_names_the_window_and_what_it_holds_so_far() -> None:
    """``GET /consumer`` said ``recent_window: 5`` of a window of 1,000 holding 5 events so
    far, beside ``max_ratio: 0.05`` (an operator trial read "5 % of the last 5 events")."""
    from types import SimpleNamespace

    from saga_kit.consumer import ConsumerStats
    from saga_kit.consumer_api import _state

    limit = HandlerErrorLimit()
    limit.handled(4)
    assert limit.admit() is None
    state = _state(SimpleNamespace(handler_errors=limit, stats=ConsumerStats()))  # type: ignore[arg-type]
    assert (state.handler_errors_recent, state.recent_events, state.recent_window) == (1, 5, 1000)
    assert (state.max_ratio, state.ratio_after, state.max_in_a_row) == (0.05, 100, 10)
