"""Records as any Kafka client may write them, beyond what aiokafka's own producer lets a
caller say: a header's name in bytes that are not UTF-8."""

from __future__ import annotations

from typing import Any

import pytest


class NotUtf8Name(str):
    """A header name written as ``raw``, bytes that are not UTF-8: aiokafka's Python batch
    builder encodes a name with ``str.encode``, and Kafka takes any bytes there."""

    raw: bytes

    def __new__(cls, raw: bytes) -> NotUtf8Name:
        made = super().__new__(cls, raw.decode("latin-1"))
        made.raw = raw
        return made

    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return self.raw


def python_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make aiokafka's producer build its batches in Python (its C builder reads a name's
    text, not ``encode``), for ``NotUtf8Name`` to be written as its bytes."""
    from aiokafka.producer import message_accumulator, producer
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    for module in (message_accumulator, producer):  # a batch, and its estimated size
        monkeypatch.setattr(module, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)
