"""``sagastack.chaos.unconsumed`` with the broker's clients stubbed: a topic whose
partitions the broker's metadata does not list is not "consumed to the end"."""

from __future__ import annotations

from typing import Any

import pytest

from sagastack import chaos


class _Ends:
    """A consumer whose ListOffsets answers ``listed``, and a fetch's high watermark ``fetched``
    (by default the same)."""

    listed, fetched = 3, None

    def __init__(self, **_: Any) -> None:
        self.sought: dict[Any, int] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def end_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(partitions, self.listed)

    def assign(self, partitions: list[Any]) -> None:
        pass

    def seek(self, tp: Any, offset: int) -> None:
        self.sought[tp] = offset

    async def getmany(self, *partitions: Any, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        return {}

    def highwater(self, tp: Any) -> int | None:
        return (self.fetched or self.listed) if tp in self.sought else None


class _Admin:
    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        # the broker's metadata, without the topic "unknown"
        return [{"topic": "known", "partitions": [{"partition": 0}], "error_code": 0}]

    async def list_consumer_group_offsets(self, group: str, partitions: list[Any]) -> dict[Any, Any]:
        class _At:
            offset = 3

        return dict.fromkeys(partitions, _At())


async def test_a_topic_without_known_partitions_is_named_not_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its partitions were simply left out: with none known, a group that consumed nothing
    of it passed as consumed to the end."""
    monkeypatch.setattr(chaos, "AIOKafkaConsumer", _Ends)
    monkeypatch.setattr(chaos, "AIOKafkaAdminClient", _Admin)
    assert await chaos.unconsumed("b:1", {}, {"inventory_svc": ["known", "unknown"]}, wait=0) == [
        "inventory_svc reads unknown, whose partitions the broker's metadata does not list: nothing checked"
    ]


async def test_an_empty_partition_never_committed_is_consumed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A partition nothing was ever written to (the commands topic of a run that sends one
    command) has no committed offset: -1 is not short of its end, 0."""

    class Empty(_Ends):
        listed = 0

    class Uncommitted(_Admin):
        async def list_consumer_group_offsets(self, group: str, partitions: list[Any]) -> dict[Any, Any]:
            return {}

    monkeypatch.setattr(chaos, "AIOKafkaConsumer", Empty)
    monkeypatch.setattr(chaos, "AIOKafkaAdminClient", Uncommitted)
    assert await chaos.unconsumed("b:1", {}, {"order_svc": ["known"]}, wait=0) == []


async def test_a_committed_offset_past_the_end_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log truncated under the group (an unclean leader election) leaves its committed
    offset past the end on Apache Kafka: the records between are gone, not consumed."""

    class Truncated(_Ends):
        listed = 2

    monkeypatch.setattr(chaos, "AIOKafkaConsumer", Truncated)
    monkeypatch.setattr(chaos, "AIOKafkaAdminClient", _Admin)
    assert await chaos.unconsumed("b:1", {}, {"payment_svc": ["known"]}, wait=0) == [
        "payment_svc's committed offset on known/0 is past its end: committed offset 3, end offset 2"
        " (the log lost records)"
    ]


async def test_the_end_is_a_fetchs_high_watermark_when_listoffsets_falls_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded Tansu answers ListOffsets with its last batch's first offset + 1: a
    committed offset there looked past the end, and one short of the end by the rest of
    the batch looked at it. A fetch from just below the answer gives the end."""

    class Tansu(_Ends):
        listed, fetched = 2, 5

    made: list[_Ends] = []
    monkeypatch.setattr(chaos, "AIOKafkaConsumer", lambda **kw: made.append(Tansu()) or made[-1])
    monkeypatch.setattr(chaos, "AIOKafkaAdminClient", _Admin)
    assert await chaos.unconsumed("b:1", {}, {"payment_svc": ["known"]}, wait=0) == [
        "payment_svc has not consumed known/0 to its end: committed offset 3, end offset 5"
    ]
    assert list(made[0].sought.values()) == [1]  # from the answer's offset - 1
