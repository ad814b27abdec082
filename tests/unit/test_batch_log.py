"""A consumer batch's log line says where its records came from: every partition, not
the first record's alone (a batch of 14 from orders.commands also held an
InventoryReserved of inventory.events, and its line named orders.commands only)."""

from __future__ import annotations

from saga_kit.consumer import Record, _sources


def record(topic: str, partition: int, offset: int) -> Record:
    return Record(topic=topic, partition=partition, offset=offset, key=None, value=b"", headers=[])


def test_each_partition_with_its_first_offset() -> None:
    batch = [
        record("orders.commands", 5, 3),
        record("inventory.events", 2, 17),
        record("orders.commands", 5, 4),
    ]
    assert _sources(batch) == "orders.commands[5]@3, inventory.events[2]@17"


def test_many_partitions_are_counted_past_the_first_four() -> None:
    batch = [record("payment.events", p, 0) for p in range(7)]
    assert _sources(batch) == (
        "payment.events[0]@0, payment.events[1]@0, payment.events[2]@0, payment.events[3]@0"
        " and 3 more partitions"
    )
