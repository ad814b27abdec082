"""Value types shared by events and HTTP APIs, and the limits that keep every derived
amount inside its column.

Inputs are strict, because anything that reaches PostgreSQL must be storable and anything
a client sends must mean one thing:

* **Money** is an ASCII decimal *string* with at most two places: ``"12.50"``, ``"0"``,
  ``"7.5"``. Not a JSON number (binary floats are not money), no exponent, no sign (so no
  negative zero), no leading zeros, no digits of other scripts (Python's ``Decimal``
  would read ``"١٢"`` as 12), no ``NaN``.
* **Quantities** are JSON integers: ``true`` and ``"1"`` are refused.
* **Text** that is stored (a product's name) holds no NUL, no other control character but
  tab and newline, and no lone surrogate: PostgreSQL cannot store the first, and the
  last cannot be encoded as UTF-8.

Limits, chosen so that no amount the saga derives can overflow and no compensation can
ever be refused (see ``docs/design.md``, "Amounts and limits"):

* a unit price is at most ``MAX_UNIT_PRICE`` (100,000.00);
* an order has at most ``MAX_ORDER_LINES`` (100) lines of at most ``MAX_LINE_QUANTITY``
  (10,000) units, so a product's summed quantity is at most 1,000,000 and an order's total
  is at most ``MAX_ORDER_TOTAL`` = 100,000.00 * 1,000,000 = 10^11, inside ``Money``
  (below 10^12) and inside every ``NUMERIC(14, 2)`` column that holds a total;
* a balance set by an operator is any ``Money`` (below 10^12), but the balance *column* is
  ``NUMERIC(1000, 2)`` (998 integer digits): a refund adds back what a charge took, and a
  customer's refunds are owed however high an operator has set the balance since. Stock buckets are
  ``BIGINT`` (a restock adds at most 10^6 units to at most 10^9 set by an operator plus
  units once taken from that same stock).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, PlainSerializer, WithJsonSchema

MONEY_PATTERN = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$"
_MONEY_TEXT = re.compile(MONEY_PATTERN)
#: Largest value of ``Money``: 12 integer digits, 2 places (``NUMERIC(14, 2)``).
MAX_MONEY = Decimal("999999999999.99")

MAX_UNIT_PRICE = Decimal("100000.00")
MAX_LINE_QUANTITY = 10_000
MAX_ORDER_LINES = 100
MAX_ORDER_TOTAL = MAX_UNIT_PRICE * MAX_LINE_QUANTITY * MAX_ORDER_LINES
#: Units an operator may set as a product's available stock.
MAX_STOCK = 1_000_000_000

_MONEY_ERROR = 'money must be a string of ASCII digits with at most two decimal places, e.g. "12.50"'
_MONEY_TOO_BIG = f"money may have at most 12 digits before the point: at most {MAX_MONEY}"
_DIGITS = re.compile(r"^[0-9]+(\.[0-9]{1,2})?$")


def _strict_money(value: Any) -> Decimal:
    """Accept a ``Decimal`` (from our own code or the database) or canonical text."""
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str) and _MONEY_TEXT.fullmatch(value):
        amount = Decimal(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value) and len(value.partition(".")[0]) > 12:
        raise ValueError(_MONEY_TOO_BIG)  # the form is right, the amount too big
    else:
        raise ValueError(_MONEY_ERROR)
    if not amount.is_finite() or amount.is_signed():
        raise ValueError(_MONEY_ERROR)
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise ValueError(_MONEY_ERROR)
    return amount


def _as_text(value: Decimal) -> str:
    return format(value, "f")


_MONEY_JSON: dict[str, Any] = {
    "type": "string",
    "pattern": MONEY_PATTERN,
    "description": "an exact amount: ASCII digits, at most two decimal places",
    "examples": ["12.50"],
}

#: Money is exact: a Decimal with at most two places, written as a string on the wire.
Money = Annotated[
    Decimal,
    BeforeValidator(_strict_money),
    Field(max_digits=14, decimal_places=2, ge=0),
    PlainSerializer(_as_text, return_type=str, when_used="json"),
    WithJsonSchema(_MONEY_JSON),
]

#: A unit price in the catalogue.
UnitPrice = Annotated[Money, Field(le=MAX_UNIT_PRICE)]

#: A balance as shown (never as input): any number of digits, two places.
Balance = Annotated[
    Decimal,
    PlainSerializer(_as_text, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]+(\.[0-9]{1,2})?$"}),
]

#: Event times are UTC instants between these years: every value then fits PostgreSQL's
#: ``timestamptz`` and reads back as a Python ``datetime`` in any time zone (a year-9999
#: instant shifted by a zone offset would not).
EARLIEST_YEAR, LATEST_YEAR = 1970, 9000


def _within_range(moment: datetime) -> datetime:
    try:
        year = moment.astimezone(UTC).year
    except OverflowError:
        year = 0
    if not EARLIEST_YEAR <= year < LATEST_YEAR:
        raise ValueError(f"must be an instant between the years {EARLIEST_YEAR} and {LATEST_YEAR} (UTC)")
    return moment


#: A timezone-aware instant of the saga's lifetime (see ``EARLIEST_YEAR``).
Instant = Annotated[AwareDatetime, AfterValidator(_within_range)]


def _not_only_dots(value: str) -> str:
    if not value.strip("."):
        raise ValueError(
            "an id may not be only dots: '.' and '..' are path segments that URLs resolve away"
            " (RFC 3986 §5.2.4), so no route could name them"
        )
    return value


#: Identifiers chosen by users (customers, products): 1-64 letters, digits and ``._:-``,
#: not only dots. They appear in URL paths (``/products/{id}``, the provider's accounts).
ExternalId = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$"), AfterValidator(_not_only_dots)
]

#: The shortest deadline an order may ask for, in seconds. A saga on an idle system takes
#: 0.1-0.2 s (``make bench``), so a deadline of that order is a timeout all but certain,
#: after it reserved stock and charged the card, then compensated both (a deadline of
#: 5e-324 s was taken, and did just that; so did 0.1 s).
MIN_DEADLINE_SECONDS = 1.0
#: The longest, in seconds: a day.
MAX_DEADLINE_SECONDS = 86_400
#: How long a saga may stay PENDING before it is cancelled with reason ``timeout``: a JSON
#: number of seconds (not a string, not NaN or infinite), from 1 to 86,400.
DeadlineSeconds = Annotated[
    float,
    Field(strict=True, ge=MIN_DEADLINE_SECONDS, le=MAX_DEADLINE_SECONDS, allow_inf_nan=False),
]

#: A machine-readable reason code, e.g. ``insufficient_funds``.
ReasonCode = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]

#: A JSON integer, never a bool or a string of digits.
StrictInt = Annotated[int, Field(strict=True)]


def _unsafe(ch: str) -> bool:
    """A character stored text must not hold: C0 and C1 controls but tab and newline, DEL,
    lone surrogates (PostgreSQL cannot store them, UTF-8 cannot encode them), and the
    bidirectional embedding, override and isolate controls that make text read otherwise
    than it is written ("Trojan Source", CVE-2021-42574; Unicode TR #9)."""
    code = ord(ch)
    return (
        (code < 0x20 and ch not in "\t\n")
        or 0x7F <= code <= 0x9F
        or 0xD800 <= code <= 0xDFFF
        or 0x202A <= code <= 0x202E
        or 0x2066 <= code <= 0x2069
    )


def storable(text: str) -> str:
    """Refuse text PostgreSQL cannot store or UTF-8 cannot encode, control characters and
    bidirectional overrides (``_unsafe``)."""
    for ch in text:
        if _unsafe(ch):
            raise ValueError(f"text must not contain the {_kind(ch)} U+{ord(ch):04X}")
    return text


def _kind(ch: str) -> str:
    """What an unsafe character is, in words (a bidirectional override was called a
    control or surrogate character: a trial)."""
    code = ord(ch)
    if 0xD800 <= code <= 0xDFFF:
        return "lone surrogate"
    if 0x202A <= code <= 0x202E or 0x2066 <= code <= 0x2069:
        return "bidirectional control character"
    return "control character"


#: Free text that is stored: no NUL, no control characters, no lone surrogates, no
#: bidirectional overrides.
SafeText = Annotated[str, AfterValidator(storable)]

#: Unicode categories that show nothing by themselves: format characters (zero-width
#: space, byte-order mark, direction marks) and combining marks.
_INVISIBLE = frozenset({"Cf", "Mn", "Me"})


def not_blank(text: str) -> str:
    """Refuse text with nothing to read: only white space, format characters (U+200B,
    U+FEFF …) or combining marks (a name, an address must show something)."""
    if not any(not ch.isspace() and unicodedata.category(ch) not in _INVISIBLE for ch in text):
        raise ValueError("text must not be blank (only white space or invisible characters)")
    return text


def printable(text: str, limit: int = 2000) -> str:
    """``text`` made safe to store and show: control characters, NUL, lone surrogates and
    bidirectional overrides escaped (``\\x00``, ``\\ud800``, ``\\u202e``), cut to ``limit``
    characters. For text that comes from outside and is only reported (exception messages,
    dead-letter reasons)."""
    out = []
    for ch in text[: limit + 1]:
        if _unsafe(ch):
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    result = "".join(out)
    return result if len(result) <= limit else result[: limit - 1] + "…"


class NameGivenTwice(ValueError):
    """A JSON object that gives one name twice (``once_each``)."""


def once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads`` that raises ``NameGivenTwice`` for an object
    giving a name twice: RFC 8259 §4 leaves its meaning to the parser (Python's and
    pydantic's take the last), and a body read one way by one reader and another way by
    the next says two things."""
    seen: dict[str, Any] = {}
    for name, value in pairs:
        if name in seen:
            raise NameGivenTwice(
                f"the name {printable(name, 100)!r} appears twice in one object: say each thing once"
            )
        seen[name] = value
    return seen


def error_words(error: Mapping[str, Any]) -> str:
    """What one of pydantic's ``errors()`` says, a validator's refusal in its own words:
    pydantic puts ``"Value error, "`` before a ``ValueError``'s message (type
    ``value_error``), which every door here showed (an HTTP 422, a dead letter's reason,
    a bad setting) as if it were part of the reason."""
    msg = str(error.get("msg", "invalid"))
    return msg.removeprefix("Value error, ") if error.get("type") == "value_error" else msg
