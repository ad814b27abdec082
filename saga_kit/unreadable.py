"""A record the Kafka client cannot read is a dead letter, not a consumer that crashes.

aiokafka decodes each header's name as UTF-8, strictly, while it reads a fetched batch
(``DefaultRecordBatch``, in C and in Python alike); a name that is not UTF-8 raised
``UnicodeDecodeError`` out of the fetch, before any of this project's code saw the record,
and the consumer thread crashed. On every start it fetched the same record again: one
record, written by anyone who may write to a topic, kept all three services down for good
(an attack trial; Kafka itself allows any bytes there).

``install`` replaces aiokafka's ``PartitionRecords`` (the iterator over one partition's
fetched records) with ``ReadablePartitionRecords``: when reading a record raises
``UnicodeDecodeError``, it yields in its place a stand-in (``stand_in``) at that offset,
with no key and no value and one header, ``UNREADABLE``, whose value says why, and ends
the partition's records there; the fetcher fetches again from the next offset. The
consumer pipeline dead-letters the stand-in with that reason (``saga_kit.consumer``):
acked only once it is stored, as any record, and the record's own bytes stay in the topic
at its offset, for as long as the topic keeps them.

The reader reads a batch from its start, and cannot get past the record it cannot read:
a record after it in its batch is a stand-in too, each at its own offset, one fetch each.
A batch is one producer's (Kafka keeps the batches a producer sends): only records the
same writer sent can follow an unreadable one in its batch.

``UNREADABLE`` holds a lone surrogate, which no header name aiokafka reads can hold (it
decodes strict UTF-8), so a record from the wire can never pass for a stand-in. aiokafka
offers no setting or hook for this; ``tests/unit/test_unreadable.py`` fails if an upgrade
changes what ``install`` relies on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from aiokafka.consumer import fetcher
from aiokafka.structs import ConsumerRecord

from events.codec import ReasonCode, coded_reason
from events.values import printable

#: The one header of a stand-in: its value says why the record could not be read.
UNREADABLE = "\udc00unreadable"

#: How a stand-in's dead letter's reason begins (``DeadLetterSummary.unread``).
REASON: ReasonCode = "unreadable_record"


def held_headers(headers: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """``headers`` as the record held them: a stand-in's ``UNREADABLE`` marker is the
    pipeline's, left out wherever a record's headers are shown or copied (its name is no
    text a producer can send: the relay crashed on it, and a dead letter listed it)."""
    return [(k, v) for k, v in headers if k != UNREADABLE]


def stand_in(topic: str, partition: int, offset: int, error: UnicodeDecodeError) -> ConsumerRecord[Any, Any]:
    """What the pipeline gets in place of the record at ``offset`` that could not be read."""
    why = coded_reason(
        REASON,
        "the Kafka client cannot read this record: a header's name in it, or in a record"
        f" before it in its batch, is not UTF-8 ({printable(str(error), 200)}); its bytes stay"
        f" in {topic} partition {partition} at offset {offset}, for as long as the topic keeps them",
    )
    headers = ((UNREADABLE, why.encode()),)
    return ConsumerRecord(topic, partition, offset, -1, 0, None, None, None, -1, -1, headers)


class ReadablePartitionRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    """aiokafka's records of one fetched partition, a stand-in in place of one it cannot read."""

    def _unpack_records(self) -> Iterator[ConsumerRecord[Any, Any]]:
        records = super()._unpack_records()
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except UnicodeDecodeError as error:
                # the record at next_fetch_offset: those before it were yielded (its batch's
                # records after it are fetched again, from the offset after it)
                offset: int = self.next_fetch_offset  # type: ignore[has-type]
                self.next_fetch_offset = offset + 1
                yield stand_in(self._tp.topic, self._tp.partition, offset, error)
                return
            yield record


def install() -> None:
    """Make aiokafka's fetcher build ``ReadablePartitionRecords`` (module doc). Idempotent."""
    fetcher.PartitionRecords = ReadablePartitionRecords
