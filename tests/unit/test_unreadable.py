"""A record aiokafka cannot read (a header's name that is not UTF-8) is a stand-in the
pipeline dead-letters, not a consumer that crashes (``saga_kit.unreadable``): read here
through aiokafka's own record reader and fetcher classes, so that an upgrade that changes
what ``install`` relies on fails this test."""

from __future__ import annotations

from typing import Any

from aiokafka.consumer import fetcher
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

import saga_kit.faust_app  # noqa: F401 (installs the stand-ins, as a service does)
from saga_kit import headers as kafka_headers
from saga_kit.unreadable import UNREADABLE, ReadablePartitionRecords
from tests.wire import NotUtf8Name


def _batch(base: int, names: list[str]) -> bytes:
    """One record batch from offset ``base``: a record for each header name in ``names``."""
    builder = _DefaultRecordBatchBuilderPy(2, 0, 0, -1, -1, -1, 1 << 20)
    for i, name in enumerate(names):
        builder.append(i, 1_700_000_000_000, b"k", b"v%d" % i, [(name, b"x")])
    batch = builder.build()
    batch[0:8] = base.to_bytes(8, "big")  # the base offset, as the broker sets it
    return bytes(batch)


def _read(data: bytes, fetch_offset: int) -> list[Any]:
    records = fetcher.PartitionRecords(
        TopicPartition("orders.events", 3), MemoryRecords(data), [], fetch_offset, None, None, False, 0
    )
    return [*records]


def test_a_header_name_that_is_not_utf8_is_a_stand_in_and_what_follows_is_fetched_again() -> None:
    assert fetcher.PartitionRecords is ReadablePartitionRecords  # installed, and used by the fetcher
    data = _batch(40, ["ok", NotUtf8Name(b"x\xffy"), "after"])
    read = _read(data, 40)
    assert [r.offset for r in read] == [40, 41]
    assert read[0].value == b"v0" and read[0].headers == (("ok", b"x"),)
    stand_in = read[1]
    assert (stand_in.topic, stand_in.partition, stand_in.key, stand_in.value) == (
        "orders.events",
        3,
        None,
        None,
    )
    reason = kafka_headers.text(stand_in.headers, UNREADABLE)
    assert reason is not None and reason.startswith("unreadable_record: ") and "offset 41" in reason, reason
    # the next fetch, from the offset after it: the reader cannot get past 41 to the record
    # after it in its batch, a stand-in at its own offset in turn
    (after,) = _read(data, 42)
    assert (after.offset, after.value) == (42, None) and "offset 42" in kafka_headers.text(
        after.headers, UNREADABLE
    )
    # a batch after it is read as ever
    assert [(r.offset, r.value) for r in _read(_batch(43, ["ok"]), 43)] == [(43, b"v0")]


def test_a_lone_surrogate_in_a_header_name_is_a_stand_in_too() -> None:
    """The first poison of the attack trial: a name written with surrogatepass."""
    read = _read(_batch(0, [NotUtf8Name("x\ud800y".encode("utf-8", "surrogatepass"))]), 0)
    assert [r.offset for r in read] == [0] and kafka_headers.text(read[0].headers, UNREADABLE)


def test_no_header_name_read_from_the_wire_can_pass_for_the_stand_ins() -> None:
    """A name aiokafka read is strict UTF-8: it never holds the lone surrogate ``UNREADABLE``
    does, so no record can make itself one (its name would be the stand-in's, escaped)."""
    sent = UNREADABLE.encode("utf-8", "surrogatepass")
    (read,) = _read(_batch(0, [NotUtf8Name(sent)]), 0)
    assert read.value is None and "unreadable_record" in (kafka_headers.text(read.headers, UNREADABLE) or "")


def test_a_stand_ins_copy_on_the_dead_letter_topic_leaves_its_header_out() -> None:
    """Its name is no text a producer can send (a lone surrogate): the outbox relay crashed
    on the copy; ``dlq.reason`` says what it said."""
    from saga_kit.consumer import Record, _copy_for_topic

    stand_in = Record(
        "orders.events", 3, 41, None, None, ((UNREADABLE, b"unreadable_record: why"), ("a", b"b"))
    )
    copy = _copy_for_topic(stand_in, "unreadable_record: why", "inventory_svc")
    assert [k for k, _ in copy["headers"]][:2] == ["a", "dlq.reason"]
    for name, _ in copy["headers"]:
        name.encode("utf-8")  # every name can be sent: a lone surrogate raises here
