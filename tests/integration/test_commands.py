"""Commands on orders.commands: the Kafka door decides exactly like the HTTP one."""

from __future__ import annotations

import asyncio
import codecs
import itertools
import json
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException
from sqlalchemy import text

from events import OrderLine, decode
from events.commands import AUTHORIZATION, CancelOrder, PlaceOrder, encode_command, order_id_for
from events.envelope import Envelope
from events.order import CommandRejected
from events.topics import COMMANDS
from order_svc import handlers, timeline
from order_svc.api import get_command, get_saga
from order_svc.errors import IdempotencyKeyReused
from order_svc.handlers import ANOTHER_COMMANDS_ID, COMMAND_WITHOUT_A_TOKEN
from order_svc.placing import place_order
from saga_kit import auth, deadletters
from saga_kit import headers as kafka_headers
from saga_kit.auth import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    UNAUTHENTICATED,
    Principal,
    Role,
    TokenVerifier,
    write_dev_issuer,
)
from saga_kit.consumer import Outcome, Record
from saga_kit.db import SAGA_LOCK_NAMESPACE, saga_lock_key
from tests.integration.conftest import ServiceUnderTest
from tests.jsonserver import JsonServer


def place(customer: str = "kim", quantity: int = 1, command_id: uuid.UUID | None = None) -> PlaceOrder:
    return PlaceOrder(
        command_id=command_id or uuid.uuid4(),
        customer_id=customer,
        items=(OrderLine(product_id="p", quantity=quantity),),
    )


#: offsets of the records a test builds itself, apart from the fixtures' own
_batch_offsets = itertools.count(10**9)


async def send(order: ServiceUnderTest, command: PlaceOrder | CancelOrder | bytes) -> Outcome:
    value = command if isinstance(command, bytes) else encode_command(command)
    outcome: Outcome = await order.deliver_bytes(value, COMMANDS)
    return outcome


async def answers(order: ServiceUnderTest, order_id: uuid.UUID) -> list[tuple[Envelope[Any], str | None]]:
    """Events the order service queued for ``order_id``, with their correlation header."""
    rows = await order.rows(
        "SELECT value, headers FROM outbox WHERE key = :k AND topic = 'orders.events' ORDER BY id",
        k=str(order_id).encode(),
    )
    return [
        (
            decode(bytes(r.value)),
            kafka_headers.text(kafka_headers.from_blob(bytes(r.headers)), "correlation_id"),
        )
        for r in rows
    ]


async def test_a_placed_order_has_the_id_its_command_names_and_answers_with_it(
    order: ServiceUnderTest,
) -> None:
    command = place()
    assert await send(order, command) is Outcome.HANDLED
    oid = order_id_for(command.command_id)
    row = (await order.rows("SELECT status, customer_id, command_id FROM orders WHERE order_id = :o", o=oid))[
        0
    ]
    assert (row.status, row.customer_id, row.command_id) == ("PENDING", "kim", command.command_id)
    ((created, correlation),) = await answers(order, oid)
    assert created.event_type == "OrderCreated" and correlation == str(command.command_id)
    timeline = await order.rows("SELECT event_type FROM saga_events WHERE order_id = :o ORDER BY seq", o=oid)
    assert [r.event_type for r in timeline] == ["PlaceOrder", "OrderCreated"]


async def test_the_same_command_twice_places_one_order(order: ServiceUnderTest) -> None:
    command = place()
    assert await send(order, command) is Outcome.HANDLED
    assert await send(order, command) is Outcome.DUPLICATE  # the same bytes: the inbox
    respaced = json.dumps(json.loads(encode_command(command)), indent=1).encode()
    assert await send(order, respaced) is Outcome.HANDLED  # other bytes, same request: no-op
    oid = order_id_for(command.command_id)
    assert [e.event_type for e, _ in await answers(order, oid)] == ["OrderCreated"]
    assert await order.scalar("SELECT COUNT(*) FROM orders WHERE command_id = :c", c=command.command_id) == 1


async def test_a_command_id_reused_with_another_body_is_rejected(order: ServiceUnderTest) -> None:
    first = place(quantity=1)
    await send(order, first)
    await send(order, place(quantity=5, command_id=first.command_id))
    oid = order_id_for(first.command_id)
    sent = await answers(order, oid)
    assert [e.event_type for e, _ in sent] == ["OrderCreated", "CommandRejected"]
    rejected = sent[1][0].payload
    assert (rejected.reason, rejected.command_id) == ("command_id_reused", first.command_id)
    assert (
        rejected.detail
        == "this command_id placed your order with another body: send yours again under a new one"
    )
    assert await order.scalar("SELECT quantity FROM order_items WHERE order_id = :o", o=oid) == 1


async def test_a_command_that_cannot_be_accepted_is_answered_with_the_reason(order: ServiceUnderTest) -> None:
    items = [{"product_id": "p", "quantity": 1}]
    cases = [
        ("invalid_command", {"payload": {"customer_id": "kim", "items": []}}, "invalid PlaceOrder"),
        ("unknown_command", {"command_type": "TeleportOrder"}, "unknown command_type"),
        ("unsupported_version", {"schema_version": 9}, "schema_version 9"),
        # a deadline already past when the order is placed (it reserved and charged, then refunded)
        (
            "invalid_command",
            {"payload": {"customer_id": "kim", "items": items, "deadline_seconds": 5e-324}},
            "deadline_seconds",
        ),
        # JSON the parser cannot read whole, its command_id readable before: it was a dead
        # letter, and GET /commands/{id} answered "unknown" for ever
        ("invalid_command", {"payload": {"customer_id": "kim", "items": items, "n": "LONG"}}, "number"),
        ("invalid_command", {"payload": {"customer_id": "kim", "items": items, "n": "DEEP"}}, "recursion"),
        # a name given twice: refused as the HTTP door refuses it, not read as its last value
        ("invalid_command", {"payload": {"customer_id": "kim", "items": items, "n": "TWICE"}}, "twice"),
        # bytes that are not UTF-8 after a readable command_id
        ("invalid_command", {"payload": {"customer_id": "kim", "items": items, "n": "LATIN"}}, "unicode"),
        # refused as the HTTP door refuses them (an attack trial: the command placed both)
        (
            "invalid_command",
            {"payload": {"customer_id": "kim", "items": [*items, {"product_id": "p", "quantity": 3}]}},
            "product_id 'p' appears on more than one line",
        ),
        (
            "invalid_command",
            {"payload": {"customer_id": "kim", "items": items, "command_id": str(uuid.uuid4())}},
            "payload.command_id: a command's id is its envelope's only",
        ),
    ]
    for reason, change, why in cases:
        wire = json.loads(encode_command(place()))
        wire.update(change)
        text = (
            json.dumps(wire)
            .replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
            .replace('"LONG"', "9" * 5000)
            .replace('"n": "TWICE"', '"customer_id": "lee"')
        )
        data = text.encode().replace(b'"LATIN"', '"Zoë"'.encode("latin-1"))
        assert await send(order, data) is Outcome.HANDLED, why
        ((rejected, correlation),) = await answers(order, order_id_for(uuid.UUID(wire["command_id"])))
        assert rejected.event_type == "CommandRejected" and rejected.payload.reason == reason
        assert correlation == wire["command_id"] and why in rejected.payload.detail, rejected.payload.detail


async def test_bytes_that_are_no_command_at_all_are_dead_lettered(order: ServiceUnderTest) -> None:
    assert await send(order, b"not a command") is Outcome.DEAD_LETTERED
    assert await send(order, b'{"command_type": "PlaceOrder"}') is Outcome.DEAD_LETTERED  # no command_id


async def test_a_dead_lettered_command_is_found_by_its_key_and_once_discarded(
    order: ServiceUnderTest,
) -> None:
    """``GET /commands/{id}`` looked for a pending dead letter with the id in its bytes:
    one that is no command at all, keyed by its id as sagactl keys a command, and one an
    operator discarded, were "not taken yet, or never sent" for ever (a trial)."""
    command_id = uuid.uuid4()
    outcome = await order.deliver_bytes(b"not json", COMMANDS, key=str(command_id).upper().encode())
    assert outcome is Outcome.DEAD_LETTERED
    held = await get_command(command_id, order.db, UNAUTHENTICATED)
    assert (held.outcome, held.reason) == ("dead_lettered", "dead_letter"), held
    assert held.detail is not None and "neither taken nor refused" in held.detail
    letter_id = int(held.detail.split()[2])
    # not a command at all: replayed, it is dead-lettered again (it was offered the replay)
    assert held.detail.endswith(
        f"(replayed, it would be dead-lettered again: sagactl dlq discard order {letter_id})"
    )
    await deadletters.discard(order.db, letter_id)
    gone = await get_command(command_id, order.db, UNAUTHENTICATED)
    assert gone.outcome == "dead_lettered" and gone.detail is not None, gone
    assert gone.detail.startswith(f"dead letter {letter_id} of order_svc, discarded, neither taken"), gone
    assert "sagactl dlq replay" not in gone.detail


async def test_a_commands_own_dead_letter_beats_one_that_mentions_its_id(order: ServiceUnderTest) -> None:
    """A later record that merely mentioned a command's id, once discarded, was shown
    instead of the command's own held letter, with the order that record named (a trial):
    the letter keyed by the id comes first, then a held one, then the newest."""
    command_id, other = uuid.uuid4(), uuid.uuid4()
    own = await order.deliver_bytes(b"not json", COMMANDS, key=str(command_id).encode())
    junk = {"command_type": "CancelOrder", "payload": {"order_id": str(other)}, "about": str(command_id)}
    mention = await order.deliver_bytes(json.dumps(junk).encode(), COMMANDS, key=b"junk")
    assert (own, mention) == (Outcome.DEAD_LETTERED, Outcome.DEAD_LETTERED)
    (own_id,), (junk_id,) = [
        [r.id for r in await order.rows("SELECT id FROM dead_letters WHERE key = :k", k=k)]
        for k in (str(command_id).encode(), b"junk")
    ]
    await deadletters.discard(order.db, junk_id)
    view = await get_command(command_id, order.db, UNAUTHENTICATED)
    assert view.detail is not None and view.detail.startswith(
        f"dead letter {own_id} of order_svc, neither"
    ), view
    assert view.order_id == order_id_for(command_id), view
    await deadletters.discard(order.db, own_id)
    view = await get_command(command_id, order.db, UNAUTHENTICATED)  # both discarded: still its own
    assert view.detail is not None and view.detail.startswith(f"dead letter {own_id} of order_svc, discarded")
    # a command known only by a mention is not the order the mentioning record names
    mentioned = uuid.uuid4()
    junk["about"] = str(mentioned)
    await order.deliver_bytes(json.dumps(junk).encode(), COMMANDS, key=b"junk")
    view = await get_command(mentioned, order.db, UNAUTHENTICATED)
    assert view.outcome == "dead_lettered" and view.order_id == order_id_for(mentioned), view


async def test_cancel_by_command_follows_the_same_rule_as_the_api(order: ServiceUnderTest) -> None:
    placed = place()
    await send(order, placed)
    oid = order_id_for(placed.command_id)
    cancel = CancelOrder(command_id=uuid.uuid4(), order_id=oid)
    assert await send(order, cancel) is Outcome.HANDLED
    row = (await order.rows("SELECT status, reason FROM orders WHERE order_id = :o", o=oid))[0]
    assert (row.status, row.reason) == ("CANCELLED", "cancelled_by_operator")  # no token checks here
    again = CancelOrder(command_id=uuid.uuid4(), order_id=oid)
    await send(order, again)
    sent = await answers(order, oid)
    assert [(e.event_type, c) for e, c in sent] == [
        ("OrderCreated", str(placed.command_id)),
        ("OrderCancelled", str(cancel.command_id)),
        ("CommandRejected", str(again.command_id)),
    ]
    assert sent[2][0].payload.reason == "order_not_cancellable"
    # under another order's command id too: it told whether that id was in use (its id was
    # checked first: command_id_reused; an attack trial)
    elsewhere = place()
    await send(order, elsewhere)
    await send(order, CancelOrder(command_id=elsewhere.command_id, order_id=oid))
    assert (await answers(order, oid))[-1][0].payload.reason == "order_not_cancellable"
    nowhere = CancelOrder(command_id=uuid.uuid4(), order_id=uuid.uuid4())
    await send(order, nowhere)
    ((unknown, _),) = await answers(order, nowhere.order_id)
    assert unknown.payload.reason == "unknown_order"


async def test_a_cancel_that_overtook_its_place_order_cancels_when_sent_again(
    order: ServiceUnderTest,
) -> None:
    """Commands are keyed by their own ids, so a CancelOrder can be read before the
    PlaceOrder it follows (another partition): refused ``unknown_order``. The same bytes
    sent again were a duplicate, and the order went on to be charged (an attack trial:
    34 of 100 cancels sent right after their acknowledged PlaceOrder); now its claim is
    released, and sent again once the order exists, it cancels it."""
    placed = place()
    oid = order_id_for(placed.command_id)
    cancel_id = uuid.uuid4()
    cancel = encode_command(CancelOrder(command_id=cancel_id, order_id=oid))
    assert await send(order, cancel) is Outcome.HANDLED
    ((refused, _),) = await answers(order, oid)
    assert refused.payload.reason == "unknown_order" and "send this command again" in refused.payload.detail
    await send(order, placed)
    assert await send(order, cancel) is Outcome.HANDLED  # not a duplicate: its claim was released
    row = (await order.rows("SELECT status, reason FROM orders WHERE order_id = :o", o=oid))[0]
    assert (row.status, row.reason) == ("CANCELLED", "cancelled_by_operator")
    view = await get_command(cancel_id, order.db, UNAUTHENTICATED)
    assert (view.outcome, view.order_id) == ("cancelled", oid), view  # not the refusal before
    assert await send(order, cancel) is Outcome.DUPLICATE  # it cancelled: now it is one
    # recorded as a stranger's when refused (no such order then), it is the order's now: it
    # stayed hidden from its owner, her timeline showing an OrderCancelled of no cause (an
    # attack trial)
    owners = await get_command(cancel_id, order.db, Principal(placed.customer_id, frozenset({Role.CUSTOMER})))
    # and its own refusal before is no copy's: it was told "send this command again", and did
    assert (owners.outcome, owners.status, owners.reason) == ("cancelled", "CANCELLED", None), owners
    assert (await get_command(cancel_id, order.db, UNAUTHENTICATED)).reason is None
    async with order.db.engine.connect() as conn:
        shown = [e["event_type"] for e in await timeline.load(conn, oid)]
    assert shown[:4] == ["PlaceOrder", "OrderCreated", "CancelOrder", "OrderCancelled"], shown


async def test_a_cancel_s_command_id_is_used_once(order: ServiceUnderTest) -> None:
    """A CancelOrder's id reused for another order cancelled that one too, and a PlaceOrder
    under it placed an order: the same id with another body is refused, as a PlaceOrder's is."""
    first, second = place(), place()
    await send(order, first)
    await send(order, second)
    a, b = order_id_for(first.command_id), order_id_for(second.command_id)
    cid = uuid.uuid4()
    assert await send(order, CancelOrder(command_id=cid, order_id=a)) is Outcome.HANDLED
    assert await send(order, CancelOrder(command_id=cid, order_id=b)) is Outcome.HANDLED
    assert await order.scalar("SELECT status FROM orders WHERE order_id = :o", o=b) == "PENDING"
    (*_, (refused, correlation)) = await answers(order, b)
    assert (refused.event_type, refused.payload.reason, correlation) == (
        "CommandRejected",
        "command_id_reused",
        str(cid),
    )
    await send(order, place(command_id=cid))
    (*_, (placed_under_it, _)) = await answers(order, order_id_for(cid))
    assert (placed_under_it.event_type, placed_under_it.payload.reason) == (
        "CommandRejected",
        "command_id_reused",
    )
    assert await order.scalar("SELECT count(*) FROM orders WHERE order_id = :o", o=order_id_for(cid)) == 0
    # a PlaceOrder's id cannot cancel its own order either
    await send(order, CancelOrder(command_id=second.command_id, order_id=b))
    assert await order.scalar("SELECT status FROM orders WHERE order_id = :o", o=b) == "PENDING"


async def test_a_cancel_in_the_batch_that_placed_its_order_keeps_its_command_id(
    order: ServiceUnderTest,
) -> None:
    """A CancelOrder taken in the batch whose PlaceOrder placed the order: the order's
    insert did not carry the cancel's id, so the same cancel sent again was refused as
    ``order_not_cancellable`` (not "done before"), and the id could place an order."""
    placed = place()
    oid = order_id_for(placed.command_id)
    cancel = CancelOrder(command_id=uuid.uuid4(), order_id=oid)
    batch = [
        Record(COMMANDS, 0, next(_batch_offsets), str(c.command_id).encode(), encode_command(c))
        for c in (placed, cancel)
    ]
    assert await order.pipeline.process_batch(batch) == [Outcome.HANDLED, Outcome.HANDLED]
    assert (
        await order.scalar("SELECT cancel_command_id FROM orders WHERE order_id = :o", o=oid)
        == cancel.command_id
    )
    respaced = json.dumps(json.loads(encode_command(cancel)), indent=1).encode()
    assert await send(order, respaced) is Outcome.HANDLED  # the same cancel again: done before
    await send(order, place(command_id=cancel.command_id))  # its id reused: refused
    assert [e.event_type for e, _ in await answers(order, oid)] == ["OrderCreated", "OrderCancelled"]
    ((refused, _),) = await answers(order, order_id_for(cancel.command_id))
    assert (refused.event_type, refused.payload.reason) == ("CommandRejected", "command_id_reused")


async def test_a_client_key_named_like_a_command_takes_nothing_from_the_command(
    order: ServiceUnderTest,
) -> None:
    """An HTTP Idempotency-Key is stored in the customer's own namespace: a key spelled
    ``command:<id>`` once made the command of that id fail on a unique violation (dead-
    lettered as a handler error; a dozen of them stopped the consumer)."""
    command = place(customer="kim")
    forged_key = f"command:{command.command_id}"
    await place_order(order.db, "kim", command.items, forged_key, timedelta(minutes=1))
    assert await send(order, command) is Outcome.HANDLED
    oid = order_id_for(command.command_id)
    assert (
        await order.scalar("SELECT command_id FROM orders WHERE order_id = :o", o=oid) == command.command_id
    )
    assert [e.event_type for e, _ in await answers(order, oid)] == ["OrderCreated"]


async def test_an_idempotency_key_is_the_customers_own(order: ServiceUnderTest) -> None:
    """The same key from two customers places two orders (neither learns of the other's
    with a 409); from the same customer with the same request, one."""
    lines = (OrderLine(product_id="p", quantity=1),)
    key = f"k-{uuid.uuid4()}"
    first = (await place_order(order.db, "ann", lines, key, timedelta(minutes=1))).order_id
    again = (await place_order(order.db, "ann", lines, key, timedelta(minutes=1))).order_id
    other = (await place_order(order.db, "bo", lines, key, timedelta(minutes=1))).order_id
    assert first == again and other != first
    owners = await order.rows("SELECT customer_id FROM orders WHERE order_id IN (:a, :b)", a=first, b=other)
    assert sorted(r.customer_id for r in owners) == ["ann", "bo"]
    with pytest.raises(IdempotencyKeyReused):
        await place_order(
            order.db, "ann", (OrderLine(product_id="p", quantity=2),), key, timedelta(minutes=1)
        )


@pytest.mark.parametrize("keyed_by", ["first", "second", "another", "none"])
async def test_a_command_id_given_twice_is_answered_under_the_one_its_record_is_keyed_by(
    order: ServiceUnderTest, keyed_by: str
) -> None:
    """The client keys the record by the first; the last was the one refused, and a client
    asking after the first was told "unknown" for ever. Then an attack trial keyed its
    record by the last (the id a JSON reader keeps), and was told "unknown" for ever: the
    refusal is under the record's key when it is one of the ids given, else the first."""
    first, second = uuid.uuid4(), uuid.uuid4()
    wire = json.loads(encode_command(place(command_id=first)))
    text = json.dumps(wire).replace(
        f'"command_id": "{first}"', f'"command_id": "{first}", "command_id": "{second}"'
    )
    keys = {
        "first": str(first).encode(),
        "second": str(second).encode(),
        "another": str(uuid.uuid4()).encode(),
    }
    key = keys.get(keyed_by, b"")  # b"": no key (the test's deliver_bytes keys a record by its value)
    assert await order.deliver_bytes(text.encode(), COMMANDS, key=key) is Outcome.HANDLED
    under, other = (second, first) if keyed_by == "second" else (first, second)
    ((rejected, correlation),) = await answers(order, order_id_for(under))
    assert rejected.event_type == "CommandRejected" and rejected.payload.command_id == under
    assert correlation == str(under) and "'command_id' appears twice" in rejected.payload.detail
    assert await answers(order, order_id_for(other)) == []


@pytest.mark.parametrize(
    ("shape", "keyed_by", "under"),
    [
        ("three", "second", "second"),  # the middle of three, named by the key
        ("three", "none", "first"),
        ("cut short", "second", "second"),  # not JSON whole: its readable members
        ("cut short", "none", "first"),
        ("last not a UUID", "none", "first"),  # was a dead letter: not a command
    ],
)
async def test_a_command_id_given_twice_is_answered_under_the_one_followed_whatever_the_rest(
    order: ServiceUnderTest, shape: str, keyed_by: str, under: str
) -> None:
    """Attack trials: the middle of three ids named by the key, a body cut short, and a
    last id that is not a UUID were answered under the first, the first, and not at all
    (a dead letter, though a UUID command_id could be read)."""
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    text = json.dumps(json.loads(encode_command(place(command_id=first))))
    ids = {
        "three": f'"command_id": "{first}", "command_id": "{second}", "command_id": "{third}"',
        "cut short": f'"command_id": "{first}", "command_id": "{second}"',
        "last not a UUID": f'"command_id": "{first}", "command_id": "not-a-uuid"',
    }[shape]
    text = text.replace(f'"command_id": "{first}"', ids)
    if shape == "cut short":
        text = text[:-1]
    key = str(second).encode() if keyed_by == "second" else b""
    assert await order.deliver_bytes(text.encode(), COMMANDS, key=key) is Outcome.HANDLED
    expected = {"first": first, "second": second}[under]
    ((rejected, _),) = await answers(order, order_id_for(expected))
    assert rejected.event_type == "CommandRejected" and rejected.payload.command_id == expected
    assert rejected.payload.reason == "invalid_command", rejected.payload
    for other in {first, second, third} - {expected}:
        assert await answers(order, order_id_for(other)) == []


async def test_every_command_is_audited_as_the_call_it_stands_for(
    order: ServiceUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    """An order placed or cancelled through orders.commands left no audit entry, where the
    same over HTTP leaves one (who, what, on which order, how it ended): in the batch's
    transaction, one per command taken, a refusal included; a command sent again is a
    duplicate, taken once. Each is logged with its command id, which no line named."""
    caplog.set_level(logging.INFO, logger="order_svc.handlers")
    placed = place()
    oid = order_id_for(placed.command_id)
    cancel = CancelOrder(command_id=uuid.uuid4(), order_id=oid)
    assert await send(order, placed) is Outcome.HANDLED
    assert await send(order, placed) is Outcome.DUPLICATE
    for command in (cancel, CancelOrder(command_id=uuid.uuid4(), order_id=oid)):
        assert await send(order, command) is Outcome.HANDLED
    rows = await order.rows(
        "SELECT entry FROM audit_log WHERE CAST(entry AS jsonb)->>'resource' = :r"
        " AND CAST(entry AS jsonb)->>'action' LIKE '%%commands' ORDER BY seq",
        r=f"/orders/{oid}",
    )
    entries = [json.loads(r.entry) for r in rows]
    assert [(e["actor"], e["role"], e["action"], e["outcome"]) for e in entries] == [
        ("anonymous", "none", "PlaceOrder via orders.commands", "accepted"),
        ("anonymous", "none", "CancelOrder via orders.commands", "accepted"),
        ("anonymous", "none", "CancelOrder via orders.commands", "refused: order_not_cancellable"),
    ]
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("command ")]
    assert logged[0] == f"command {placed.command_id} (PlaceOrder by anonymous) on order {oid}: accepted"
    assert logged[1] == f"command {cancel.command_id} (CancelOrder by anonymous) on order {oid}: accepted"
    assert logged[2].endswith(f"(CancelOrder by anonymous) on order {oid}: refused: order_not_cancellable")
    assert len(logged) == 3


async def test_a_command_refused_as_it_is_read_is_audited_under_its_sender(
    order: ServiceUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command of a type there is not, or one that cannot be read, was audited as
    ``anonymous`` even when it came with a valid token: its tokens were not kept past the
    codec. An invalid token still reads ``anonymous``."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_file=str(issuer.jwks_file))
    monkeypatch.setitem(handlers._commands, "verifier", verifier)
    sent: dict[str, uuid.UUID] = {}
    for sender, token in (("kim", issuer.mint("kim", [Role.CUSTOMER])), ("nobody", "not-a-jwt")):
        command_id = uuid.uuid4()
        wire = {
            "command_id": str(command_id),
            "command_type": "ShipOrder",
            "schema_version": 1,
            "payload": {},
        }
        headers = [(AUTHORIZATION, f"Bearer {token}".encode())]
        await order.deliver_bytes(json.dumps(wire).encode(), COMMANDS, headers=headers)
        sent[sender] = command_id
    found = {}
    for sender, command_id in sent.items():
        rows = await order.rows(
            "SELECT entry FROM audit_log WHERE CAST(entry AS jsonb)->>'resource' = :r",
            r=f"/orders/{order_id_for(command_id)}",
        )
        ((entry,),) = [[json.loads(r.entry)] for r in rows]
        found[sender] = (entry["actor"], entry["role"], entry["action"], entry["outcome"])
    assert found == {  # "RefusedCommand via …", a name the sender never wrote (an attack trial)
        "kim": ("kim", "customer", "unknown command via orders.commands", "refused: unknown_command"),
        "nobody": ("anonymous", "none", "unknown command via orders.commands", "refused: unknown_command"),
    }


@pytest.mark.parametrize(
    ("encode", "said"),
    [
        (lambda text: b"\xef\xbb\xbf" * 2 + text.encode(), "starts with a UTF-8 byte order mark"),
        (lambda text: text.encode("utf-16"), "is UTF-16"),
        (lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"), "is UTF-16"),
        (lambda text: text.encode("utf-32"), "is UTF-32"),  # was called UTF-16 and dead-lettered
        (lambda text: codecs.BOM_UTF32_BE + text.encode("utf-32-be"), "is UTF-32"),
    ],
)
async def test_a_command_with_a_byte_order_mark_is_refused_under_its_id(
    order: ServiceUnderTest, encode: Any, said: str
) -> None:
    """It was a dead letter ("expected value at line 1 column 1"), and GET /commands/{id}
    answered "unknown" (not processed yet) for ever. One UTF-8 mark is ignored (below);
    a second is refused."""
    command = place()
    assert await send(order, encode(encode_command(command).decode())) is Outcome.HANDLED
    ((rejected, _),) = await answers(order, order_id_for(command.command_id))
    assert rejected.payload.reason == "invalid_command" and said in rejected.payload.detail
    ((entry,),) = await order.rows(
        "SELECT entry FROM audit_log WHERE CAST(entry AS jsonb)->>'resource' = :r",
        r=f"/orders/{order_id_for(command.command_id)}",
    )
    assert json.loads(entry)["action"] == "PlaceOrder via orders.commands"  # what it was meant to be


async def test_a_command_after_one_utf8_byte_order_mark_is_taken_as_the_http_door_takes_it(
    order: ServiceUnderTest,
) -> None:
    """RFC 8259 §8.1 lets a reader ignore the mark; POST /orders does, and the same
    bytes on orders.commands were refused (an attack trial)."""
    command = place()
    assert await send(order, codecs.BOM_UTF8 + encode_command(command)) is Outcome.HANDLED
    ((placed, _),) = await answers(order, order_id_for(command.command_id))
    assert placed.event_type == "OrderCreated", placed


async def test_a_strangers_command_stays_out_of_the_victims_timeline(
    order: ServiceUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone who could write to orders.commands could write into another customer's
    saga timeline: a CancelOrder naming her order, refused as "no order" (it is not
    theirs), was shown in her timeline with its refusal. Now a command from someone who
    may not act for the order — another customer, no token, a token no one trusts, an
    order that does not exist — is answered and audited, and kept out of the timeline;
    the owner's own commands, refused or not, are in it."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_file=str(issuer.jwks_file))
    monkeypatch.setitem(handlers._commands, "verifier", verifier)
    untrusted = write_dev_issuer(tmp_path / "untrusted")

    async def by(token: str | None, command: PlaceOrder | CancelOrder) -> None:
        headers = [] if token is None else [(AUTHORIZATION, f"Bearer {token}".encode())]
        await order.deliver_bytes(encode_command(command), COMMANDS, headers=headers)

    kim, mx = issuer.mint("kim", [Role.CUSTOMER]), issuer.mint("max", [Role.CUSTOMER])
    placed = place("kim")
    await by(kim, placed)
    oid = order_id_for(placed.command_id)
    strangers = {
        "unknown_order": (mx, CancelOrder(command_id=uuid.uuid4(), order_id=oid)),
        "missing_token": (None, CancelOrder(command_id=uuid.uuid4(), order_id=oid)),
        "invalid_token": (
            untrusted.mint("kim", [Role.CUSTOMER]),
            CancelOrder(command_id=uuid.uuid4(), order_id=oid),
        ),
    }
    for token, command in strangers.values():
        await by(token, command)
    # an operator's order for another customer, under the id that placed hers: refused
    # as a reused id, and none of her business
    elsewhere = place("max", command_id=placed.command_id)
    ops = issuer.mint("ops", [Role.OPERATOR])
    await by(ops, elsewhere)
    # and one that cannot be read (an extra field): it names no customer, so it is hers
    # only when she sent it (an operator's was shown to her, max's items in its refusal)
    unreadable = json.loads(encode_command(elsewhere))
    unreadable["payload"]["gift"] = "for max"
    await order.deliver_bytes(
        json.dumps(unreadable).encode(), COMMANDS, headers=[(AUTHORIZATION, f"Bearer {ops}".encode())]
    )
    cancel, again = (
        CancelOrder(command_id=uuid.uuid4(), order_id=oid),
        CancelOrder(command_id=uuid.uuid4(), order_id=oid),
    )
    await by(kim, cancel)
    await by(kim, again)  # too late: her own refusal is hers to see
    hers = json.loads(encode_command(placed))
    hers["payload"]["gift"] = "for kim"
    await order.deliver_bytes(
        json.dumps(hers).encode(), COMMANDS, headers=[(AUTHORIZATION, f"Bearer {kim}".encode())]
    )

    async with order.db.engine.connect() as conn:
        shown = await timeline.load(conn, oid)
    assert [(e["event_type"], e["payload"].get("command_id")) for e in shown] == [
        ("PlaceOrder", str(placed.command_id)),
        ("OrderCreated", None),
        ("CancelOrder", str(cancel.command_id)),
        ("OrderCancelled", None),
        ("CancelOrder", str(again.command_id)),
        ("CommandRejected", str(again.command_id)),
        ("RefusedCommand", str(placed.command_id)),
        ("CommandRejected", str(placed.command_id)),
    ]
    for reason, (_, command) in strangers.items():
        view = await get_command(command.command_id, order.db, UNAUTHENTICATED)
        assert (view.outcome, view.order_id, view.reason) == ("rejected", oid, reason)
    missing = await get_command(strangers["missing_token"][1].command_id, order.db, UNAUTHENTICATED)
    assert missing.detail == COMMAND_WITHOUT_A_TOKEN  # a command's words, not an endpoint's
    kept = await order.rows(
        "SELECT event_type FROM saga_events WHERE order_id = :o AND from_stranger ORDER BY seq", o=oid
    )
    # for the feed
    assert [r.event_type for r in kept] == ["CancelOrder", "CommandRejected"] * 3 + [
        "PlaceOrder",
        "CommandRejected",
        "RefusedCommand",
        "CommandRejected",
    ]
    reused = await get_command(
        placed.command_id, order.db, UNAUTHENTICATED
    )  # hers, applied; her copy refused last
    assert (reused.outcome, reused.reason) == ("placed", "invalid_command")
    # she reads her own commands as her timeline shows them, not a stranger's copy under
    # their ids (max's, refused last); max reads none of them, and of his own PlaceOrder
    # under her id only its refusal: nothing of her order (he read 404 for ever: a trial)
    await by(mx, place("max", command_id=placed.command_id))
    latest = await get_command(placed.command_id, order.db, UNAUTHENTICATED)
    assert (latest.outcome, latest.reason) == ("placed", "command_id_reused")  # the operator sees all
    as_kim, as_max = (
        Principal("kim", frozenset({Role.CUSTOMER})),
        Principal("max", frozenset({Role.CUSTOMER})),
    )
    seen = [await get_command(c.command_id, order.db, as_kim) for c in (placed, cancel, again)]
    assert [(v.outcome, v.reason) for v in seen] == [
        ("placed", "invalid_command"),
        ("cancelled", None),
        ("rejected", "order_not_cancellable"),
    ]
    his_copy = await get_command(placed.command_id, order.db, as_max)
    assert (his_copy.outcome, his_copy.status, his_copy.reason) == ("rejected", None, "command_id_reused")
    # his own cancel of her order is his to read: "no order", as over HTTP
    his_cancel = await get_command(strangers["unknown_order"][1].command_id, order.db, as_max)
    assert (his_cancel.outcome, his_cancel.status, his_cancel.reason) == ("rejected", None, "unknown_order")
    for cid, principal in [
        (again.command_id, as_max),
        (strangers["missing_token"][1].command_id, as_kim),  # not hers: no one may act
        (uuid.uuid4(), as_kim),  # not processed yet, or never sent
    ]:
        with pytest.raises(HTTPException) as refused:
            await get_command(cid, order.db, principal)
        assert refused.value.status_code == 404
    # max cancels his own order under her command's id: he reads his refusal, not her
    # order, its status and reason (an attack trial did), and she is not told of it
    his = place("max")
    await by(mx, his)
    await by(mx, CancelOrder(command_id=placed.command_id, order_id=order_id_for(his.command_id)))
    view = await get_command(placed.command_id, order.db, as_max)
    assert (view.outcome, view.order_id, view.status, view.reason) == (
        "rejected",
        order_id_for(his.command_id),
        None,
        "command_id_reused",
    ), view
    assert (await get_command(placed.command_id, order.db, as_kim)).reason == "invalid_command"


async def test_a_customer_reads_every_command_her_token_sent(
    order: ServiceUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer's own command that could not be read (quantity 0) or that named another
    customer (``forbidden``) names no order of hers: it was recorded as a stranger's, and
    ``GET /commands/{id}`` was a 404 for ever to the one who sent it — sagactl said "not
    taken yet, ask again" (an attack trial). The timeline keeps who sent each command (its
    token's subject); she reads what became of hers, the one it named does not."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_file=str(issuer.jwks_file))
    monkeypatch.setitem(handlers._commands, "verifier", verifier)
    kim = issuer.mint("kim", [Role.CUSTOMER])
    unreadable = json.loads(encode_command(place("kim")))
    unreadable["payload"]["items"][0]["quantity"] = 0
    for_max = place("max")
    for body in (json.dumps(unreadable).encode(), encode_command(for_max)):
        await order.deliver_bytes(body, COMMANDS, headers=[(AUTHORIZATION, f"Bearer {kim}".encode())])
    as_kim, as_max = (Principal(c, frozenset({Role.CUSTOMER})) for c in ("kim", "max"))
    mended = await get_command(uuid.UUID(unreadable["command_id"]), order.db, as_kim)
    assert (mended.outcome, mended.reason) == ("rejected", "invalid_command"), mended
    assert mended.detail is not None and "quantity" in mended.detail
    # sent again, mended, under the same id: placed, and its refusal before is no copy's (it
    # read "placed; a copy refused: invalid_command", as if a copy had come since: a trial)
    unreadable["payload"]["items"][0]["quantity"] = 1
    await order.deliver_bytes(
        json.dumps(unreadable).encode(), COMMANDS, headers=[(AUTHORIZATION, f"Bearer {kim}".encode())]
    )
    for reader in (as_kim, UNAUTHENTICATED):
        placed = await get_command(uuid.UUID(unreadable["command_id"]), order.db, reader)
        assert (placed.outcome, placed.reason) == ("placed", None), placed
    forbidden = await get_command(for_max.command_id, order.db, as_kim)
    assert (forbidden.outcome, forbidden.reason) == ("rejected", "forbidden"), forbidden
    for cid in (uuid.UUID(unreadable["command_id"]), for_max.command_id):
        with pytest.raises(HTTPException) as refused:
            await get_command(cid, order.db, as_max)
        assert refused.value.status_code == 404
    senders = await order.rows(
        "SELECT event_type, sender FROM saga_events WHERE payload->>'command_id' = :c ORDER BY seq",
        c=str(for_max.command_id),
    )
    assert [(r.event_type, r.sender) for r in senders] == [("PlaceOrder", "kim"), ("CommandRejected", None)]
    # max places the same command, his own token's: his order. Her refusal before it was not
    # mended by it, it was hers: the operator still reads it there (it was hidden once his
    # was placed: an attack trial's note); he reads his order, she her refusal
    maxt = issuer.mint("max", [Role.CUSTOMER])
    await order.deliver_bytes(
        encode_command(for_max), COMMANDS, headers=[(AUTHORIZATION, f"Bearer {maxt}".encode())]
    )
    views = [await get_command(for_max.command_id, order.db, p) for p in (UNAUTHENTICATED, as_max, as_kim)]
    assert [(v.outcome, v.reason) for v in views] == [
        ("placed", "forbidden"),
        ("placed", None),
        ("rejected", "forbidden"),
    ], views
    # an operator's command is no customer's by its sender: a customer whose id is the
    # operator's subject read the operator's commands, with others' orders' status (an
    # attack trial)
    ops = issuer.mint("ops", [Role.OPERATOR])
    maxs = place("max")
    await order.deliver_bytes(
        encode_command(maxs), COMMANDS, headers=[(AUTHORIZATION, f"Bearer {ops}".encode())]
    )
    with pytest.raises(HTTPException) as hidden:
        await get_command(maxs.command_id, order.db, Principal("ops", frozenset({Role.CUSTOMER})))
    assert hidden.value.status_code == 404
    assert (await get_command(maxs.command_id, order.db, as_max)).outcome == "placed"  # his order
    # her own unreadable command under the id of his order reads as it was refused: "taken:
    # send yours again under a new one" told her which ids had placed orders (an attack trial)
    probe = json.loads(encode_command(place("kim", command_id=maxs.command_id)))
    probe["payload"]["items"][0]["quantity"] = 0
    await order.deliver_bytes(
        json.dumps(probe).encode(), COMMANDS, headers=[(AUTHORIZATION, f"Bearer {kim}".encode())]
    )
    probed = await get_command(maxs.command_id, order.db, as_kim)
    assert (probed.outcome, probed.status, probed.reason) == ("rejected", None, "invalid_command"), probed


async def test_the_operators_refusal_before_a_customers_applied_command_stays_named(
    order: ServiceUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's CancelOrder of an order not placed yet is refused ``unknown_order``;
    its customer then places it and sends the same CancelOrder under the same id, which is
    applied. The operator's refusal was not mended by hers: the operator reads it beside
    her cancellation (an operator's commands keep no sender, and it was hidden as if its
    own sender's: an attack trial). One refused for its token, sent again with a good one,
    was mended by it."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_file=str(issuer.jwks_file))
    monkeypatch.setitem(handlers._commands, "verifier", verifier)
    ops, kim = issuer.mint("ops", [Role.OPERATOR]), issuer.mint("kim", [Role.CUSTOMER])

    async def by(token: str | None, command: PlaceOrder | CancelOrder) -> None:
        headers = [] if token is None else [(AUTHORIZATION, f"Bearer {token}".encode())]
        await order.deliver_bytes(encode_command(command), COMMANDS, headers=headers)

    placing = place("kim")
    cancel = CancelOrder(command_id=uuid.uuid4(), order_id=order_id_for(placing.command_id))
    await by(ops, cancel)
    assert (await get_command(cancel.command_id, order.db, UNAUTHENTICATED)).reason == "unknown_order"
    await by(kim, placing)
    await by(kim, cancel)
    view = await get_command(cancel.command_id, order.db, UNAUTHENTICATED)
    assert (view.outcome, view.order_reason, view.reason) == (
        "cancelled",
        "cancelled_by_customer",
        "unknown_order",
    ), view
    # another's, not "a copy" (a trial)
    assert view.detail is not None and view.detail.startswith("another CancelOrder sent under this id"), view
    hers = await get_command(cancel.command_id, order.db, Principal("kim", frozenset({Role.CUSTOMER})))
    assert (hers.outcome, hers.reason) == ("cancelled", None), hers  # the operator's is not hers
    # without a token, then with hers: mended, not named
    again = place("kim")
    await by(None, again)
    await by(kim, again)
    mended = await get_command(again.command_id, order.db, UNAUTHENTICATED)
    assert (mended.outcome, mended.reason) == ("placed", None), mended


async def test_a_refusal_of_another_command_type_under_an_applied_id_is_named_as_such(
    order: ServiceUnderTest,
) -> None:
    """A PlaceOrder placed under the id of a CancelOrder refused before was reported as if
    a copy of itself had been refused (it read "a copy sent under this id was refused: no order …")."""
    cid = uuid.uuid4()
    await send(order, CancelOrder(command_id=cid, order_id=uuid.uuid4()))
    await send(order, place(command_id=cid))
    view = await get_command(cid, order.db, UNAUTHENTICATED)
    assert (view.outcome, view.order_id, view.reason) == ("placed", order_id_for(cid), "unknown_order")
    assert view.detail is not None
    assert view.detail.startswith("a CancelOrder sent under this id was refused: no order "), view.detail


# -- tokens checked against a key server (AUTH_JWKS_URL) --------------------------------------


async def test_commands_under_one_id_are_judged_in_turn_whatever_orders_they_name(
    order: ServiceUnderTest,
) -> None:
    """A command id is used once, checked in each batch's transaction under the locks of
    the orders its commands name: two CancelOrders under one id naming two orders, in two
    order-service instances' batches at once, each found the id free (an attack trial's
    note). A command also takes the lock of the order its id would place. Here another
    batch holds that lock: a CancelOrder under the id, naming an order of its own, waits
    for it."""
    first = place()
    await send(order, first)
    cid = uuid.uuid4()
    key = saga_lock_key(order_id_for(cid))
    async with order.db.engine.connect() as other_batch:
        await other_batch.execute(
            text("SELECT pg_advisory_xact_lock(:ns, :k)"), {"ns": SAGA_LOCK_NAMESPACE, "k": key}
        )
        cancelled = asyncio.create_task(
            send(order, CancelOrder(command_id=cid, order_id=order_id_for(first.command_id)))
        )
        waiting = 0
        for _ in range(200):  # until it waits for the lock (it took none and finished, before)
            waiting = await order.scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :ns AND NOT granted",
                ns=SAGA_LOCK_NAMESPACE,
            )
            if waiting or cancelled.done():
                break
            await asyncio.sleep(0.05)
        assert (waiting, cancelled.done()) == (1, False)
        await other_batch.rollback()
    assert await cancelled is Outcome.HANDLED
    assert (
        await order.scalar("SELECT status FROM orders WHERE order_id = :o", o=order_id_for(first.command_id))
        == "CANCELLED"
    )


async def test_a_slow_key_server_is_waited_for_with_no_transaction_open(
    order: ServiceUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands' tokens were checked inside the batch's transaction, with the sagas'
    locks and the orders' rows held while the keys were fetched (for up to PyJWT's 30 s):
    every other event of those orders waited behind a slow key server (a review). They
    are checked before the transaction opens."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    command = place()
    headers = [(AUTHORIZATION, f"Bearer {issuer.mint('kim', [Role.CUSTOMER])}".encode())]
    with JsonServer(issuer.jwks_file.read_bytes(), delay=3.0) as server:  # under the 5 s fetch limit
        verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_url=server.url)
        monkeypatch.setitem(handlers._commands, "verifier", verifier)
        delivered = asyncio.create_task(
            order.deliver_bytes(encode_command(command), COMMANDS, headers=headers)
        )
        assert await asyncio.to_thread(server.asked.wait, 10)
        await asyncio.sleep(0.2)  # the fetch is under way, for another 2.8 s
        open_transactions = await order.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%'"
        )
        saga_locks = await order.scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :ns",
            ns=SAGA_LOCK_NAMESPACE,
        )
        assert not delivered.done()  # read while the keys were still being fetched
        assert (open_transactions, saga_locks) == (0, 0)
        assert await delivered is Outcome.HANDLED
    status = await order.scalar(
        "SELECT status FROM orders WHERE order_id = :o", o=order_id_for(command.command_id)
    )
    assert status == "PENDING"


async def test_a_command_whose_keys_cannot_be_had_is_dead_lettered_never_refused_and_replayed(
    order: ServiceUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key server that blinked turned a valid command into ``CommandRejected
    (invalid_token)``, committed and acked: lost (a review); then, retried as a transient
    failure, one such command held the order service's whole consumer — saga events too —
    for as long as the key server was away (an attack trial). It waits a short while, then
    is a dead letter: neither taken nor refused, the batch's other events applied, and it
    is placed once replayed after the key server is back."""
    monkeypatch.setattr(handlers, "KEYS_PATIENCE_SECONDS", 0.5)
    monkeypatch.setattr(auth, "JWKS_RETRY_SECONDS", 0.0)
    issuer = write_dev_issuer(tmp_path / "issuer")
    command = place()
    record_headers = [(AUTHORIZATION, f"Bearer {issuer.mint('kim', [Role.CUSTOMER])}".encode())]
    oid = order_id_for(command.command_id)
    with JsonServer(issuer.jwks_file.read_bytes(), down=True) as server:
        verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_url=server.url)
        monkeypatch.setitem(handlers._commands, "verifier", verifier)
        offset = 30_000_000 + uuid.uuid4().int % 1_000_000
        outcome = await order.deliver_bytes(encode_command(command), COMMANDS, offset, headers=record_headers)
        assert outcome is Outcome.DEAD_LETTERED
        assert await answers(order, oid) == []  # nothing answered, nothing placed
        assert await order.scalar("SELECT count(*) FROM orders WHERE order_id = :o", o=oid) == 0
        letter_id, reason = (
            await order.rows("SELECT id, reason FROM dead_letters WHERE source_offset = :o", o=offset)
        )[0]
        assert reason.startswith(
            "keys_unavailable: its token could not be checked (the key server answered 503)"
        )
        # its sender and the operator are told where it is (it said "unknown", and the
        # letter was listed as "?" with no order: an attack trial)
        view = await get_command(command.command_id, order.db, UNAUTHENTICATED)
        assert (view.outcome, view.order_id, view.reason) == ("dead_lettered", oid, "dead_letter")
        assert view.detail is not None and view.detail.endswith(f"(sagactl dlq replay order {letter_id})")
        (listed,) = [d for d in await deadletters.list_letters(order.db, None, 1000) if d.id == letter_id]
        assert (listed.event_type, listed.order_id) == ("PlaceOrder", str(oid))
        server.down = False
        replayed = await deadletters.replay(order.db, order.pipeline, letter_id)
        assert replayed.status == "REPLAYED"
    ((created, _),) = await answers(order, oid)
    assert created.event_type == "OrderCreated"
    assert (await get_command(command.command_id, order.db, UNAUTHENTICATED)).outcome == "placed"


async def test_a_dead_lettered_command_is_named_in_its_orders_explanation(
    order: ServiceUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saga's explanation names the events about it that were dead-lettered. A
    command's body is no event's, so ``events.codec.peek`` found no type in it, and a
    CancelOrder held for its token's keys was "an event" there (``event_type`` null),
    while the dead letters' own list names it ``CancelOrder``."""
    monkeypatch.setattr(handlers, "KEYS_PATIENCE_SECONDS", 0.5)
    monkeypatch.setattr(auth, "JWKS_RETRY_SECONDS", 0.0)
    issuer = write_dev_issuer(tmp_path / "issuer")
    placed = await place_order(
        order.db, "kim", [OrderLine(product_id="p", quantity=1)], None, timedelta(hours=1)
    )
    cancel = CancelOrder(command_id=uuid.uuid4(), order_id=placed.order_id)
    record_headers = [(AUTHORIZATION, f"Bearer {issuer.mint('kim', [Role.CUSTOMER])}".encode())]
    with JsonServer(issuer.jwks_file.read_bytes(), down=True) as server:
        monkeypatch.setitem(
            handlers._commands, "verifier", TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_url=server.url)
        )
        outcome = await order.deliver_bytes(encode_command(cancel), COMMANDS, headers=record_headers)
    assert outcome is Outcome.DEAD_LETTERED
    saga = await get_saga(placed.order_id, order.db, auth.UNAUTHENTICATED)
    assert [r.event_type for r in saga.explanation.refused] == ["CancelOrder"]
    assert "CancelOrder (keys_unavailable" in saga.explanation.verdict


async def _refusing_every_order(order: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Admission set to refuse any PlaceOrder for the backlog: a saga in flight, and any
    wait too long (the broker has taken every event: its gate does not decide)."""
    await order.relay_caught_up()
    await send(order, place())  # a saga in flight, some milliseconds old by now
    await asyncio.sleep(0.05)
    monkeypatch.setitem(handlers._admission, "min_pending", 0)
    monkeypatch.setitem(handlers._admission, "headroom", 1e-6)


def _admitting_every_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Admission set back to let every order in (fewer sagas in flight than it counts)."""
    monkeypatch.setitem(handlers._admission, "headroom", 0.5)
    monkeypatch.setitem(handlers._admission, "min_pending", 100)


async def test_a_place_order_that_could_not_finish_in_time_is_refused_as_post_orders_is(
    order: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission decides a PlaceOrder as it decides ``POST /orders`` (``admission.judge``,
    on the backlog read in the batch's transaction): 1,200 commands of 5 s deadlines were
    all placed, and 858 ran into their deadline (an attack trial). The refusal says when
    to try again, and the same bytes sent again later are a new try, not a redelivery."""
    await _refusing_every_order(order, monkeypatch)
    refused = place()
    data = encode_command(refused)
    oid = order_id_for(refused.command_id)
    assert await send(order, data) is Outcome.HANDLED
    ((rejected, correlation),) = await answers(order, oid)
    assert rejected.event_type == "CommandRejected" and correlation == str(refused.command_id)
    assert rejected.payload.reason == "overloaded", rejected.payload
    assert "under the same command_id" in rejected.payload.detail
    assert await order.scalar("SELECT COUNT(*) FROM orders WHERE order_id = :o", o=oid) == 0
    # its customer reads why, though no order exists (a customer's wait once learnt nothing)
    view = await get_command(
        refused.command_id, order.db, Principal(refused.customer_id, frozenset({Role.CUSTOMER}))
    )
    assert (view.outcome, view.reason) == ("rejected", "overloaded"), view

    _admitting_every_order(monkeypatch)
    assert await send(order, data) is Outcome.HANDLED  # not a duplicate: its claim was released
    assert [e.event_type for e, _ in await answers(order, oid)] == ["CommandRejected", "OrderCreated"]
    assert await send(order, data) is Outcome.DUPLICATE  # placed: now it is one


async def test_a_place_order_placed_when_sent_again_after_a_refusal_is_in_its_order_s_timeline(
    order: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PlaceOrder refused by admission names no order yet, and was recorded as a
    stranger's (``from_stranger``); sent again, the same bytes are the same event, so the
    order it then placed showed an OrderCreated that no command had caused: the
    customer's own PlaceOrder and its refusal were left out of the timeline. A PlaceOrder
    is its customer's, whether or not its order exists yet."""
    await _refusing_every_order(order, monkeypatch)
    command = place()
    data, oid = encode_command(command), order_id_for(command.command_id)
    await send(order, data)
    _admitting_every_order(monkeypatch)
    await send(order, data)
    async with order.db.engine.connect() as conn:
        shown = await timeline.load(conn, oid)
    assert [e["event_type"] for e in shown] == ["PlaceOrder", "CommandRejected", "OrderCreated"]


async def test_the_id_of_a_refused_place_order_stays_its_customers(
    order: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PlaceOrder refused by admission leaves its id to be sent again. Another customer
    who learnt the id placed an order under it first (an attack trial): shown her
    PlaceOrder and its refusal, until that was mended, and her retry was refused as a
    reused id. The id is hers now: his PlaceOrder under it, and a CancelOrder of his own
    order under it, are refused (``command_id_reused``) and none of her business, and her
    retry places her order."""
    await _refusing_every_order(order, monkeypatch)
    hers = place("ada")
    oid = order_id_for(hers.command_id)
    await send(order, hers)
    ada, ben, cy = (Principal(c, frozenset({Role.CUSTOMER})) for c in ("ada", "ben", "cy"))
    as_ada = await get_command(hers.command_id, order.db, ada)
    assert (as_ada.outcome, as_ada.reason) == ("rejected", "overloaded"), as_ada
    _admitting_every_order(monkeypatch)
    await send(order, place("ben", quantity=2, command_id=hers.command_id))
    his_own = place("ben")
    await send(order, his_own)
    await send(order, CancelOrder(command_id=hers.command_id, order_id=order_id_for(his_own.command_id)))
    assert await order.scalar("SELECT count(*) FROM orders WHERE order_id = :o", o=oid) == 0
    assert (
        await order.scalar(
            "SELECT status FROM orders WHERE order_id = :o", o=order_id_for(his_own.command_id)
        )
        == "PENDING"
    )
    as_ben = await get_command(hers.command_id, order.db, ben)
    assert (as_ben.outcome, as_ben.status, as_ben.reason, as_ben.detail) == (
        "rejected",
        None,
        "command_id_reused",
        ANOTHER_COMMANDS_ID,
    ), as_ben
    as_ada = await get_command(hers.command_id, order.db, ada)
    assert (as_ada.outcome, as_ada.reason) == ("rejected", "overloaded"), as_ada  # nothing of his
    await send(order, hers)  # sent again, as her refusal said
    as_ada = await get_command(hers.command_id, order.db, ada)
    # (its own refusal before is no copy's: she was told to send it again, and did)
    assert (as_ada.outcome, as_ada.status, as_ada.reason) == ("placed", "PENDING", None), as_ada
    async with order.db.engine.connect() as conn:
        shown = await timeline.load(conn, oid)
    assert [(e["event_type"], e["payload"].get("customer_id")) for e in shown] == [
        ("PlaceOrder", "ada"),
        ("CommandRejected", None),
        ("OrderCreated", "ada"),
    ]
    refusals = [e.payload for e, _ in await answers(order, oid) if isinstance(e.payload, CommandRejected)]
    assert [r.reason for r in refusals] == ["overloaded", "command_id_reused"]
    assert refusals[1].detail == "this command_id is another command's: send yours again under a new one"
    # one who never sent under the id before reads his refusal too: it is a stranger's to
    # her order, but let in before it was refused (he read 404 for ever: a trial)
    await send(order, place("cy", command_id=hers.command_id))
    as_cy = await get_command(hers.command_id, order.db, cy)
    assert (as_cy.outcome, as_cy.order_id, as_cy.status, as_cy.reason) == (
        "rejected",
        oid,
        None,
        "command_id_reused",
    ), as_cy
    assert as_cy.detail == ANOTHER_COMMANDS_ID
    assert (await get_command(hers.command_id, order.db, ada)).reason is None  # theirs: none of hers


async def test_a_refusal_no_retry_changes_is_read_as_it_was_under_a_taken_id(order: ServiceUnderTest) -> None:
    """A cancel of a customer's settled order is ``order_not_cancellable`` whatever its
    command id; read back under an id another's order holds, it was "command_id_reused:
    … send yours again under a new one" — wrong advice, and it told her whether the id
    was in use, which the handler's order of checks keeps from her (an attack trial)."""
    theirs, mine = place("kim"), place("max")
    for command in (theirs, mine):
        await send(order, command)
    settled = order_id_for(mine.command_id)
    await send(order, CancelOrder(command_id=uuid.uuid4(), order_id=settled))
    await send(order, CancelOrder(command_id=theirs.command_id, order_id=settled))
    view = await get_command(theirs.command_id, order.db, Principal("max", frozenset({Role.CUSTOMER})))
    assert (view.outcome, view.order_id, view.status, view.reason) == (
        "rejected",
        settled,
        None,
        "order_not_cancellable",
    ), view


async def test_a_refused_command_is_counted_under_the_command_it_says_it_is(order: ServiceUnderTest) -> None:
    """An invalid PlaceOrder was counted ``<unknown>`` in ``saga_events_consumed_total``,
    the label of a header naming no type (an attack trial): it is a PlaceOrder, handled
    (answered ``CommandRejected``); a command of a type there is not is ``<invalid>``."""
    stats = order.pipeline.stats
    before = dict(stats.outcomes)
    invalid = json.loads(encode_command(place()))
    invalid["payload"]["items"] = []
    unknown = json.loads(encode_command(place())) | {"command_type": f"Evil{uuid.uuid4().hex}"}
    for wire in (invalid, unknown):
        assert await send(order, json.dumps(wire).encode()) is Outcome.HANDLED
    grown = {k: n - before.get(k, 0) for k, n in stats.outcomes.items() if n != before.get(k, 0)}
    assert grown == {("PlaceOrder", "handled"): 1, ("<invalid>", "handled"): 1}, grown


async def test_the_commands_of_a_batch_wait_for_the_keys_together_not_in_turn(
    order: ServiceUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command waited its ``KEYS_PATIENCE_SECONDS`` in turn: six commands of one batch
    held the consumer — saga events too — for a minute (a second attack trial). The batch
    waits once: the first command asks for the keys again until the patience is spent,
    the others once each (twice, if a few milliseconds were left); all are dead letters."""
    monkeypatch.setattr(handlers, "KEYS_PATIENCE_SECONDS", 0.5)
    monkeypatch.setattr(auth, "JWKS_RETRY_SECONDS", 0.0)
    issuer = write_dev_issuer(tmp_path / "issuer")
    customers = ["kim", "lee", "max", "ned"]
    tokens = {c: f"Bearer {issuer.mint(c, [Role.CUSTOMER])}" for c in customers}
    asked: Counter[str] = Counter()
    with JsonServer(issuer.jwks_file.read_bytes(), down=True) as server:
        verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_url=server.url)
        checked = verifier.principal_of

        async def counted(authorization: Sequence[str]) -> auth.Principal:
            asked[authorization[0]] += 1
            return await checked(authorization)

        monkeypatch.setattr(verifier, "principal_of", counted)
        monkeypatch.setitem(handlers._commands, "verifier", verifier)
        batch = [
            Record(
                COMMANDS,
                0,
                next(_batch_offsets),
                None,
                encode_command(place(c)),
                ((AUTHORIZATION, t.encode()),),
            )
            for c, t in tokens.items()
        ]
        outcomes = await order.pipeline.process_batch(batch)
    assert outcomes == [Outcome.DEAD_LETTERED] * len(customers)
    first, *rest = (asked[tokens[c]] for c in customers)
    assert first > 2, asked  # asked again while there was patience left
    assert all(n <= 2 for n in rest), asked
