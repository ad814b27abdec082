"""``saga_kit.labels``: an ``event_type`` label is a type there is or one of three fixed
values, whatever a record's header says."""

from __future__ import annotations

import pytest

from saga_kit.labels import event_type_label


@pytest.mark.parametrize(
    ("header", "label"),
    [
        ("OrderCreated", "OrderCreated"),
        ("PlaceOrder", "PlaceOrder"),
        ("<invalid>", "<invalid>"),
        (None, "<raw>"),
        ("EvilX", "<unknown>"),
        ("ordercreated", "<unknown>"),
        ("x" * 10_000, "<unknown>"),
        ("", "<unknown>"),
    ],
)
def test_a_header_becomes_a_known_type_or_a_fixed_value(header: str | None, label: str) -> None:
    assert event_type_label(header) == label
