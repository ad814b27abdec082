"""Commands: what a client asks the order service to do, through Kafka (``orders.commands``).

A command is the Kafka door to what ``POST /orders`` and ``POST /orders/{id}/cancel`` do:
the order service decides both the same way (one place decides, two doors). On the wire,
JSON in UTF-8, keyed by ``command_id``::

    {"command_id": "6f0b…", "command_type": "PlaceOrder", "schema_version": 1,
     "payload": {"customer_id": "alice", "items": [{"product_id": "widget", "quantity": 2}],
                 "deadline_seconds": 60}}

* ``command_id`` (a UUID the client chooses) is the **idempotency key**: the same command
  twice places one order; the same id with another body is refused. The order a
  ``PlaceOrder`` places has the id ``order_id_for(command_id)``, so the client knows it
  before any answer.
* The answer comes on ``orders.events``: the saga's events carry the header
  ``correlation_id`` = ``command_id``; a refused command produces ``CommandRejected`` with
  the reason (invalid body, unknown type or version, id reused with another body, not
  cancellable, unknown order). Only bytes that are not a command at all (not JSON, no
  ``command_id``) are dead-lettered. JSON that cannot be read whole — a number past the
  parser's range, nesting past its depth, bytes broken off — is refused like any invalid
  command when its ``command_id`` comes before the part that cannot be read
  (``readable_members``): ``GET /commands/{id}`` answers ``rejected``, where it answered
  ``unknown`` for ever.

* Who sends it: the record's ``authorization`` header, ``Bearer <JWT>`` — the token the
  HTTP API takes, verified and authorized exactly like the HTTP call (a customer places
  and cancels its own orders, the operator any); a command without a valid one, or for
  another customer, is refused with ``CommandRejected`` (``missing_token``,
  ``invalid_token``, ``forbidden``; another customer's order is an ``unknown_order``).

For the consumer pipeline a command becomes an ``Envelope`` (``to_envelope``): its
``event_id`` is derived from the command id, the exact bytes *and* the ``authorization``
headers, so a redelivered message is a duplicate for the inbox while a different body
under the same id reaches the order service, which refuses it — and so does the same
command sent again with another token: one refused for its token (expired, missing) is
applied when resent with a good one, where it used to be taken for a duplicate of the
refused delivery and dropped.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic_core import from_json

from events.codec import InvalidEvent, summary
from events.envelope import Envelope, EventPayload
from events.order import OrderLine, one_line_per_product
from events.values import (
    MAX_ORDER_LINES,
    DeadlineSeconds,
    ExternalId,
    NameGivenTwice,
    SafeText,
    once_each,
    printable,
)

#: The record header that carries the sender's bearer token, ``Bearer <JWT>``: the same
#: token, checked by the same rules, as the ``Authorization`` of an HTTP call.
AUTHORIZATION = "authorization"
#: Who sends commands: any client (the envelope's ``producer``).
CLIENT = "client"
#: Namespace of the order ids derived from command ids (a fixed, random UUID).
ORDERS_FROM_COMMANDS = uuid.UUID("1b6f7d2e-5d0a-4c59-9a4e-2b1c8a7f3e10")
_DELIVERIES = uuid.UUID("9d3c8f14-0e2b-4f57-8c61-7a5e2d9b4c03")


class Command(EventPayload):
    """Base of every command's payload; ``event_type`` is the command's type.

    ``authorization`` holds the values of the record's ``authorization`` headers
    (``Bearer <JWT>``, the same token as the HTTP API's; one, unless the sender sent
    more), set by ``to_envelope``: never part of the payload's JSON, never dumped, never
    shown."""

    producer: ClassVar[str] = CLIENT
    _authorization: tuple[str, ...] = PrivateAttr(default=())
    _caller: object = PrivateAttr(default=None)

    @property
    def authorization(self) -> tuple[str, ...]:
        return self._authorization

    @property
    def caller(self) -> object:
        """Who sent it, as the order service found from its token before the batch's
        transaction opened (``order_svc.handlers.authenticate``: a
        ``saga_kit.auth.Principal``, or the ``Unauthorized`` refusal); None until then."""
        return self._caller

    def authenticated(self, caller: object) -> None:
        """Note who sent it (``caller``)."""
        self._caller = caller


class PlaceOrder(Command):
    """Place an order (``POST /orders``'s body)."""

    event_type: ClassVar[str] = "PlaceOrder"

    command_id: uuid.UUID
    customer_id: ExternalId
    items: Annotated[
        tuple[OrderLine, ...],
        Field(min_length=1, max_length=MAX_ORDER_LINES),
        AfterValidator(one_line_per_product),
    ]
    #: How long the saga may stay PENDING; the service's default when absent.
    deadline_seconds: DeadlineSeconds | None = None


class CancelOrder(Command):
    """Cancel a PENDING or APPROVED order (``POST /orders/{id}/cancel``)."""

    event_type: ClassVar[str] = "CancelOrder"

    command_id: uuid.UUID
    order_id: uuid.UUID


class RefusedCommand(Command):
    """Internal, never on the wire: a command the codec could read the id of but not
    accept; the order service answers it with ``CommandRejected``."""

    event_type: ClassVar[str] = "RefusedCommand"

    command_id: uuid.UUID
    command_type: Annotated[SafeText, Field(max_length=100)]
    reason: Literal["invalid_command", "unknown_command", "unsupported_version"]
    detail: Annotated[SafeText, Field(max_length=1000)]


COMMAND_TYPES: dict[str, type[Command]] = {c.event_type: c for c in (PlaceOrder, CancelOrder)}


class _Wire(BaseModel):
    """The command envelope on the wire, with the payload still a mapping."""

    model_config = ConfigDict(extra="forbid")

    command_id: uuid.UUID
    command_type: Annotated[str, Field(max_length=100)]
    schema_version: Annotated[int, Field(strict=True, ge=1)]
    payload: dict[str, Any]


def order_id_for(command_id: uuid.UUID) -> uuid.UUID:
    """The id of the order a ``PlaceOrder`` with this ``command_id`` places."""
    return uuid.uuid5(ORDERS_FROM_COMMANDS, str(command_id))


def peek_command(data: bytes | None, of: uuid.UUID | None = None) -> tuple[str | None, uuid.UUID | None]:
    """Best-effort ``(command_type, order_id)`` of a command's bytes, for listings (a dead
    letter's): the type when it is one there is, the order a ``PlaceOrder`` places or a
    ``CancelOrder`` names; each None when it cannot be told. With ``of``, the order is told
    only of the command with that id (bytes that merely mention it are another's: their
    order is not its). Total, as ``events.codec.peek``: any input returns instead of
    raising (a dead-lettered command listed as ``?`` with no order, though it could be
    read: an attack trial)."""
    try:
        raw = from_json(data) if data else None
    except ValueError:
        return None, None
    if not isinstance(raw, dict):
        return None, None
    command_type = raw.get("command_type")
    if not isinstance(command_type, str) or command_type not in COMMAND_TYPES:
        return None, None
    payload = raw.get("payload")
    named = payload.get("order_id") if isinstance(payload, dict) and command_type == "CancelOrder" else None
    cid = _uuid(raw.get("command_id"))
    if of is not None and cid != of:
        return command_type, None
    order_id = _uuid(named) if command_type == "CancelOrder" else (None if cid is None else order_id_for(cid))
    return command_type, order_id


def to_envelope(
    data: bytes | None, authorization: Sequence[str] = (), key: bytes | None = None
) -> Envelope[Command]:
    """Decode a record of ``orders.commands`` (``authorization``: the values of its headers
    of that name, kept on the command for the order service to verify; ``key``: the
    record's key, by convention its command id). Raises ``InvalidEvent`` (a dead
    letter) only for bytes that are not a command at all; a command that cannot be
    accepted becomes a ``RefusedCommand`` with the reason, and keeps its tokens too: its
    refusal is audited under its sender, as an HTTP call refused for its body is."""
    envelope = _read(data, authorization, key)
    envelope.payload._authorization = tuple(authorization)
    return envelope


def _read(data: bytes | None, authorization: Sequence[str], key: bytes | None) -> Envelope[Command]:
    """``to_envelope``'s command, before its tokens are set on it."""
    if data is None:
        raise InvalidEvent("empty message (tombstone)", "invalid_command")
    # one leading UTF-8 byte order mark is not the command's: RFC 8259 §8.1 lets a reader
    # ignore it, and the HTTP door does (saga_kit.http.check_json_body; an attack trial
    # found a command refused for it that POST /orders placed)
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        raw = from_json(data)
    except ValueError as exc:
        # the parser's words are about the JSON ("key must be a string" is an object's
        # member name, not the record's key: an operator trial read it so)
        unreadable = f"its body is not JSON ({printable(str(exc), 200)})"
        raw = readable_members(data)
        detail = f"the command cannot be read whole: {unreadable}"
        misencoded = _misencoded(data)
        if misencoded is not None:  # refused under its command_id, saying why
            raw, detail = misencoded
            unreadable = detail
            cid = _uuid(raw.get("command_id"))
        else:
            cid = _followed_id(data, key)
        if cid is None:
            raise InvalidEvent(f"not a command: {unreadable}", "invalid_command") from None
        return _refused(_delivery(cid, data, authorization), cid, _shown(raw), "invalid_command", detail)
    shown_type = _shown(raw)
    try:  # as the HTTP door (saga_kit.http.check_json_body) refuses it
        json.loads(data, object_pairs_hook=once_each)
    except NameGivenTwice as exc:
        chosen = _followed_id(data, key)
        if chosen is not None:  # else no command_id is a UUID: not a command (below)
            return _refused(
                _delivery(chosen, data, authorization), chosen, shown_type, "invalid_command", str(exc)
            )
    except (ValueError, RecursionError):
        pass  # read whole above; only the names given twice are this reader's question
    cid = _uuid(raw.get("command_id")) if isinstance(raw, dict) else None
    if cid is None:
        given = raw.get("command_id") if isinstance(raw, dict) else None
        if given is None:
            raise InvalidEvent("not a command: no command_id (a UUID)", "invalid_command")
        raise InvalidEvent(
            f"not a command: its command_id {printable(repr(given), 80)} is not a UUID", "invalid_command"
        )
    delivery = _delivery(cid, data, authorization)
    try:
        wire = _Wire.model_validate(raw)
    except ValidationError as exc:
        return _refused(
            delivery, cid, shown_type, "invalid_command", f"not a command envelope: {summary(exc)}"
        )
    cls = COMMAND_TYPES.get(wire.command_type)
    if cls is None:
        return _refused(delivery, cid, shown_type, "unknown_command", f"unknown command_type {shown_type!r}")
    if wire.schema_version != cls.schema_version:
        return _refused(
            delivery,
            cid,
            shown_type,
            "unsupported_version",
            f"schema_version {wire.schema_version} of {cls.event_type}"
            f" (this build reads {cls.schema_version})",
        )
    if "command_id" in wire.payload:  # one id, one place: it was overwritten in silence
        return _refused(
            delivery,
            cid,
            shown_type,
            "invalid_command",
            f"invalid {cls.event_type}: payload.command_id: a command's id is its envelope's only",
        )
    try:
        payload = cls.model_validate({**wire.payload, "command_id": str(cid)})
    except ValidationError as exc:
        return _refused(
            delivery, cid, shown_type, "invalid_command", f"invalid {cls.event_type}: {summary(exc)}"
        )
    target = payload.order_id if isinstance(payload, CancelOrder) else order_id_for(cid)
    return _envelope(delivery, target, payload)


#: Byte order marks a client's JSON library may write, and what they say of the bytes
#: (a UTF-8 one is ignored once: ``_read``; a second is refused). UTF-32's before
#: UTF-16's: little-endian, one starts with the other (a UTF-32 command was called UTF-16,
#: then could not be read as it and was a dead letter: an attack trial).
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig", "starts with a UTF-8 byte order mark"),
    (codecs.BOM_UTF32_LE, "utf-32", "is UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "is UTF-32"),
    (codecs.BOM_UTF16_LE, "utf-16", "is UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "is UTF-16"),
)


def _misencoded(data: bytes) -> tuple[dict[str, Any], str] | None:
    """For a command written with a byte order mark left after ``_read`` ignored one of
    UTF-8 (UTF-16 text, or a second mark): its readable members and what to do. A
    command is UTF-8 JSON (RFC 8259 §8.1); once such a command was a dead letter its
    sender could not follow (``GET /commands/{id}`` said ``unknown`` for ever)."""
    for bom, codec, said in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                return None
            return readable_members(text.lstrip("\ufeff").encode()), (
                f"the command {said}: send UTF-8 JSON without a byte order mark (RFC 8259 §8.1)"
            )
    return None


def readable_members(data: bytes) -> dict[str, Any]:
    """The members of a JSON object that can be read, in order, up to the first that
    cannot (read by the standard library's decoder, one member at a time: a number past
    ``sys.get_int_max_str_digits()`` or nesting past the recursion limit stops it there);
    ``{}`` when ``data`` does not start a JSON object. Bytes that are not UTF-8 end the
    text there: the members before them are read. A name given twice keeps its first value."""
    members: dict[str, Any] = {}
    for name, value in _members(data):
        members.setdefault(name, value)
    return members


def _members(data: bytes) -> Iterator[tuple[str, Any]]:
    """``readable_members``' (name, value) pairs, each as given (a name given twice, twice)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = data[: exc.start].decode("utf-8")
    decoder = json.JSONDecoder()
    at = _space(text, 0)
    if not text.startswith("{", at):
        return
    at += 1
    while True:
        try:
            name, at = decoder.raw_decode(text, _space(text, at))
            at = _space(text, at)
            if not isinstance(name, str) or not text.startswith(":", at):
                return
            value, at = decoder.raw_decode(text, _space(text, at + 1))
        except (ValueError, RecursionError):
            return
        yield name, value
        at = _space(text, at)
        if not text.startswith(",", at):
            return
        at += 1


def _followed_id(data: bytes, key: bytes | None) -> uuid.UUID | None:
    """The command id a refusal of ``data`` is answered under, the one its sender follows:
    of the ``command_id`` members readable at its top level that are UUIDs, the one the
    record's ``key`` names (by convention a command is keyed by its id), else the first;
    None if there is none. A command that gives the name twice was refused under the last
    (the one a JSON reader keeps) while its client asked after the first it keyed by; then
    one keyed by the last, or the middle of three, or cut short, was answered under the
    first; and one whose last was not a UUID was a dead letter (attack trials)."""
    ids = [cid for name, value in _members(data) if name == "command_id" and (cid := _uuid(value))]
    keyed = _uuid(key.decode("utf-8", "replace")) if key else None
    return keyed if keyed is not None and keyed in ids else next(iter(ids), None)


def _space(text: str, at: int) -> int:
    """The position of the first character at or after ``at`` that is not JSON whitespace."""
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _shown(raw: Any) -> str:
    """The ``command_type`` of a command's JSON, as a refusal shows it ("?" if none): its
    control characters escaped (``printable``), its backslashes doubled first, so that an
    escape is never the text of one (an ESC and the text ``\\x1b`` were one type in the
    refusal, and the command's own was lost with it: an attack trial)."""
    command_type = raw.get("command_type") if isinstance(raw, dict) else None
    return printable(command_type.replace("\\", "\\\\"), 100) if isinstance(command_type, str) else "?"


def _delivery(cid: uuid.UUID, data: bytes, authorization: Sequence[str]) -> uuid.UUID:
    """The ``event_id`` of one delivery: the command id, the exact bytes and the tokens."""
    digest = hashlib.sha256(data)
    for token in authorization:  # another token makes another delivery (module doc)
        digest.update(b"\0" + token.encode("utf-8", "surrogatepass"))
    return uuid.uuid5(_DELIVERIES, f"{cid}/{digest.hexdigest()}")


def _refused(
    delivery: uuid.UUID, cid: uuid.UUID, command_type: str, reason: Any, detail: str
) -> Envelope[Command]:
    payload = RefusedCommand(
        command_id=cid, command_type=command_type, reason=reason, detail=printable(detail, 1000)
    )
    return _envelope(delivery, order_id_for(cid), payload)


def _envelope(delivery: uuid.UUID, order_id: uuid.UUID, payload: Command) -> Envelope[Command]:
    envelope_type: Any = Envelope[type(payload)]  # type: ignore[misc]
    envelope: Envelope[Command] = envelope_type(
        event_id=delivery,
        event_type=payload.event_type,
        schema_version=payload.schema_version,
        occurred_at=datetime.now(UTC),
        order_id=order_id,
        causation_id=None,
        producer=CLIENT,
        payload=payload,
    )
    return envelope


def encode_command(command: PlaceOrder | CancelOrder) -> bytes:
    """The wire bytes of ``command`` (what ``sagactl place --via kafka`` sends)."""
    return json.dumps(
        {
            "command_id": str(command.command_id),
            "command_type": command.event_type,
            "schema_version": command.schema_version,
            "payload": command.model_dump(mode="json", exclude={"command_id"}, exclude_none=True),
        },
        separators=(",", ":"),
    ).encode()
