"""Bounded values for the ``event_type`` label of the metrics (``saga_kit.metrics``).

A label value is a time series of its own in every scrape, kept for the life of the
process. Records come from anyone who can write to a topic, and their ``event_type``
header says whatever the writer wants: taken as it is, it would let a writer add a
series per name it invents, without end. So a header becomes a label only if it names
an event or command type this code knows; anything else is ``<unknown>``.
"""

from __future__ import annotations

from events.commands import COMMAND_TYPES, RefusedCommand
from events.registry import EVENT_TYPES

#: A record that could not be read as an event.
INVALID = "<invalid>"
#: A record whose ``event_type`` header names a type that does not exist.
UNKNOWN = "<unknown>"
#: A record published without an ``event_type`` header (a dead letter's copy of one).
RAW = "<raw>"

_KNOWN_TYPES = frozenset(EVENT_TYPES) | frozenset(COMMAND_TYPES)
_OWN = frozenset({INVALID, UNKNOWN, RAW})


def event_type_label(event_type: str | None) -> str:
    """``event_type`` as a label value: an event or command type there is, one of this
    module's own three, or ``<unknown>`` — a bounded set, whatever records carry. None
    (no header) is ``<raw>``."""
    if event_type is None:
        return RAW
    return event_type if event_type in _KNOWN_TYPES or event_type in _OWN else UNKNOWN


def record_label(event_type: str | None, payload: object | None) -> str:
    """The ``event_type`` label of a consumed record: its type's (``event_type_label``);
    a command refused before it could be taken (``RefusedCommand``) is counted under the
    command type it says it is, if there is one, else ``<invalid>`` — an invalid
    ``PlaceOrder`` was counted ``<unknown>``, the label of an invented header (an attack
    trial)."""
    if isinstance(payload, RefusedCommand):
        return payload.command_type if payload.command_type in COMMAND_TYPES else INVALID
    return event_type_label(event_type)
