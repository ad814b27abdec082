"""Set-based statements: many rows in one parameter.

A batch's statements carry all their rows in one JSON document, unpacked by PostgreSQL
(``json_to_recordset``, ``json_array_elements_text``). Measured on this project's
machine, psycopg adapts a Python list to an SQL array in pure Python, element by element
(about 7-10 µs each), while ``json.dumps`` is C: a batch of 50 events costs a fraction of
the CPU, for the same single round trip. Values are written as JSON text (UUIDs, decimals
and datetimes as strings, which PostgreSQL casts back exactly); bytes are base64.

A statement that *finds* rows of a table by a batch's keys must let the planner see a
batch as small. PostgreSQL estimates any ``json_*`` set-returning function at 100 rows,
and against a table of a few thousand rows it then plans a sequential scan and a hash
join, every batch, whatever the batch's size: measured under ``make bench`` with
``pg_stat_statements``, the payment service's ``load`` read all of ``payments`` (3.6 ms a
call at 5,000 rows, most of its database time) to find none. The same keys through an
array (``unnest(ARRAY(…))``, which the planner estimates at 10 elements when it cannot
see the array) are found by the primary key's index. ``UUIDS``, ``TEXTS`` and
``recordset`` do that; an ``INSERT … SELECT`` from ``json_to_recordset`` joins nothing and
needs none of it. ``tests/integration/test_set_based_plans.py`` fails if a plan falls
back to the sequential scan.

Use in SQL::

    INSERT INTO t (order_id, quantity)
    SELECT o, q FROM json_to_recordset(CAST(%(rows)s AS json)) AS v(o uuid, q int)
    ... WHERE order_id IN {UUIDS}                      -- %(ids)s: values(order_ids)
    UPDATE t SET quantity = v.q FROM {recordset("o uuid, q int")} WHERE t.order_id = v.o
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
#: with the driver's placeholders (``UnitOfWork.read`` and ``write``); found by index
#: (module doc)
UUIDS = (
    "(SELECT unnest(ARRAY(SELECT CAST(x AS uuid) FROM json_array_elements_text(CAST(%(ids)s AS json)) x)))"
)
#: ``expression = ANY({TEXT_ARRAY})`` with ``%(keys)s`` a ``values(...)`` of text: for keys
#: found through an *expression* index (``payload->>'command_id'``), which ``IN {TEXTS}``
#: reached by a hash join over a sequential scan of the whole table (the order service's
#: command batch load; ``tests/integration/test_set_based_plans.py``); ``= ANY`` of an
#: array is an index condition
TEXT_ARRAY = "ARRAY(SELECT x FROM json_array_elements_text(CAST(%(keys)s AS json)) x)"
#: the same as ``UUIDS`` for text keys, ``%(keys)s``
TEXTS = f"(SELECT unnest({TEXT_ARRAY}))"


def recordset(columns: str) -> str:
    """A FROM item ``v`` of the rows of ``%(rows)s`` (a ``rows(...)`` document), typed
    by ``columns`` (e.g. ``"o uuid, s text"``: the names are the documents' keys), for a
    statement that joins them to a table (``UPDATE t … FROM {recordset(…)} WHERE t.key =
    v.o``): the table's rows are then found by index (module doc)."""
    return (
        f"unnest(ARRAY(SELECT v FROM json_to_recordset(CAST(%(rows)s AS json)) AS v({columns})))"
        f" AS v({columns})"
    )
