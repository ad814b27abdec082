"""Set-based statements: many rows in one parameter.

A batch's statements carry all their rows in one JSON document, unpacked by PostgreSQL
(``json_to_recordset``, ``json_array_elements_text``). Measured on this project's
machine, psycopg adapts a Python list to an SQL array in pure Python, element by element
(about 7-10 µs each), while ``json.dumps`` is C: a batch of 50 events costs a fraction of
the CPU, for the same single round trip. Values are written as JSON text (UUIDs, decimals
and datetimes as strings, which PostgreSQL casts back exactly); bytes are base64.

Use in SQL::

    ... FROM json_to_recordset(CAST(%(rows)s AS json)) AS v(order_id uuid, quantity int)
    ... WHERE order_id IN (SELECT CAST(x AS uuid) FROM json_array_elements_text(CAST(%(ids)s AS json)) x)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any


def _default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return str(value)  # UUID, Decimal: their text is their exact value


def rows(records: Iterable[Mapping[str, Any]]) -> str:
    """One JSON array of objects, for ``json_to_recordset``."""
    return json.dumps(list(records), default=_default, separators=(",", ":"))


def values(items: Iterable[Any]) -> str:
    """One JSON array of scalars, for ``json_array_elements_text``."""
    return json.dumps(list(items), default=_default, separators=(",", ":"))


#: ``WHERE column IN {UUIDS}`` with ``%(ids)s`` a ``values(...)`` of UUIDs, in a statement
#: with the driver's placeholders (``UnitOfWork.read`` and ``write``)
UUIDS = "(SELECT CAST(x AS uuid) FROM json_array_elements_text(CAST(%(ids)s AS json)) x)"
#: the same for text keys, ``%(keys)s``
TEXTS = "(SELECT x FROM json_array_elements_text(CAST(%(keys)s AS json)) x)"
