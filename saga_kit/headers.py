"""Kafka record headers, whatever they carry.

A header is a ``(key, value)`` pair: the key a string (any Unicode, NUL included), the
value any bytes *or None* — Kafka allows null header values. Nothing here assumes the
value is text. A dead letter keeps them as two aligned ``BYTEA[]`` columns (``header_keys``
UTF-8 encoded, ``header_values``): a TEXT or JSONB column can hold neither NUL nor bytes
that are not UTF-8, and a dead letter must keep exactly what arrived. An outbox row keeps
them as one ``BYTEA`` (``to_blob``: JSON of ``[key, base64 value or null]`` pairs), which is
as exact and much cheaper to write a batch of.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from typing import Any

Header = tuple[str, bytes | None]
Headers = Sequence[Header]

#: Words that make a header's value a credential (a command's bearer token, valid for
#: hours), in its name in any case, spaces around it ignored. A dead letter's row keeps it
#: whole, for its replay, but shows only its scheme, if it has a known one, and its first
#: characters — ``sagactl dlq show`` printed an operator's whole token (an operator trial),
#: then the whole of one sent as ``<token> Bearer`` or under ``x-authorization`` (an attack
#: trial); the dead letter's copy on Kafka leaves it out (``saga_kit.consumer``).
CREDENTIAL_WORDS = ("authorization", "token", "secret", "password", "cookie", "api-key", "apikey")

#: The headers a dead letter's copy on its topic carries after the record's own
#: (``saga_kit.consumer``): why it is there, where it came from, what it leaves out.
DEAD_LETTER_HEADERS = (
    "dlq.reason",
    "dlq.source_topic",
    "dlq.source_partition",
    "dlq.source_offset",
    "dlq.service",
    "dlq.credentials_omitted",
    "dlq.headers_omitted",
    "dlq.value_omitted",
)


def is_credential(header: str) -> bool:
    """Does a header of this name carry a credential (``CREDENTIAL_WORDS``)?"""
    name = header.strip().lower()
    return any(word in name for word in CREDENTIAL_WORDS)


def to_columns(headers: Headers) -> tuple[list[bytes], list[bytes | None]]:
    """``(header_keys, header_values)`` for the two BYTEA[] columns."""
    return [k.encode("utf-8", "surrogatepass") for k, _ in headers], [v for _, v in headers]


def from_columns(keys: Iterable[Any] | None, values: Iterable[Any] | None) -> list[Header]:
    """The headers stored by ``to_columns``, exactly."""
    return [
        (bytes(k).decode("utf-8", "surrogatepass"), None if v is None else bytes(v))
        for k, v in zip(keys or (), values or (), strict=True)
    ]


def to_blob(headers: Headers) -> bytes:
    """``headers`` as one value: JSON ``[[key, base64(value) | null], …]`` (see module doc)."""
    return json.dumps(
        [[k, None if v is None else base64.b64encode(v).decode()] for k, v in headers],
        separators=(",", ":"),
    ).encode()


def from_blob(blob: bytes | None) -> list[Header]:
    """The headers ``to_blob`` stored, exactly."""
    if not blob:
        return []
    return [(k, None if v is None else base64.b64decode(v)) for k, v in json.loads(blob)]


def text(headers: Headers, key: str) -> str | None:
    """The value of the last header named ``key`` as text, or None when it is absent, null
    or not UTF-8."""
    for k, v in reversed(headers):
        if k == key:
            if v is None:
                return None
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


def text_map(headers: Headers) -> dict[str, str]:
    """The headers that are text, as a mapping (a trace-context carrier); null and
    non-UTF-8 values are left out, a later header wins over an earlier one."""
    out: dict[str, str] = {}
    for k, v in headers:
        if v is None:
            continue
        try:
            out[k] = v.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return out
