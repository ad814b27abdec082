"""The headers a dead letter's copy adds (``saga_kit.consumer._copy_for_topic``) are the
set the relay keeps of a copy the broker refuses for its size
(``saga_kit.headers.DEAD_LETTER_HEADERS``): a header added in one place and not named in
the other would be dropped from the reduced copy without a word."""

from __future__ import annotations

from saga_kit.consumer import DLQ_COPY_LIMIT, Record, _copy_for_topic
from saga_kit.headers import DEAD_LETTER_HEADERS


def _added(record: Record) -> list[str]:
    copy = _copy_for_topic(record, "invalid_event: x", "inventory_svc")
    return [k for k, _ in copy["headers"] if k.startswith("dlq.")]


def test_every_header_a_copy_adds_is_one_the_relay_keeps() -> None:
    credentials = Record("orders.events", 0, 1, b"k", b"x" * (DLQ_COPY_LIMIT + 1), (("authorization", b"t"),))
    too_many = Record("orders.events", 0, 2, b"k", b"x", (("", None),) * 100_000)
    added = {name for record in (credentials, too_many) for name in _added(record)}
    assert added == set(DEAD_LETTER_HEADERS)
