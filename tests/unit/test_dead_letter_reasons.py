"""Every dead letter's reason is ``code: detail``, the code one of a fixed set
(``saga_kit.deadletters.REASON_CODES``) that the README's table explains: an operator
filters and alerts on it. Before, a record refused for its shape said "not an event
envelope: …", one a bug met "handler error: …", and one about an unknown order began with
the event's type (an attack trial)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from events.codec import InvalidEvent, decode
from events.commands import to_envelope
from saga_kit.deadletters import REASON_CODES
from saga_kit.reactions import FactMismatch
from saga_kit.signing import BadSignature
from saga_kit.unreadable import UNREADABLE, stand_in

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_codes() -> list[str]:
    text = README.read_text()
    table = text[text.index("Every dead letter's reason is `code: detail`") :]
    table = table[table.index("| code |") :].split("\n\n", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE)


def test_the_readme_explains_every_code_and_no_other() -> None:
    assert readme_codes() == list(REASON_CODES)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    assert isinstance(reason, str), exc
    return reason


@pytest.mark.parametrize(
    ("refuse", "code"),
    [
        (lambda: decode(b"{not json"), "invalid_event"),
        (lambda: decode(None), "invalid_event"),
        (lambda: to_envelope(b"not a command"), "invalid_command"),
        (lambda: to_envelope(None), "invalid_command"),
    ],
    ids=["event-not-json", "event-tombstone", "command-not-json", "command-tombstone"],
)
def test_a_record_refused_for_what_it_is_says_its_code(refuse: Callable[[], object], code: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        refuse()
    assert _reason(refused.value).startswith(f"{code}: "), refused.value


def test_the_other_refusals_built_here_say_their_codes() -> None:
    assert _reason(FactMismatch("charged 0.01")) == "fact_mismatch: charged 0.01"
    assert _reason(InvalidEvent("x for unknown order 1", "unknown_order")).startswith("unknown_order: ")
    assert _reason(BadSignature("the record is not signed")).startswith("bad_signature: ")
    error = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    (header,) = stand_in("t", 0, 7, error).headers
    assert header[0] == UNREADABLE and header[1].decode().startswith("unreadable_record: ")
    for code in REASON_CODES:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)+", code), code
