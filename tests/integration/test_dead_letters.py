"""An event that cannot be processed is dead-lettered with its reason; the consumer goes on."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

from events import OrderApproved, PaymentFailed, encode
from events.topics import COMMANDS
from saga_kit import headers as kafka_headers
from saga_kit.deadletters import get_letter
from tests.integration.conftest import ServiceUnderTest, add_product, event
from tests.unit.samples import order_created


async def test_garbage_is_dead_lettered_with_source_and_reason_then_processing_continues(
    inventory: ServiceUnderTest,
) -> None:
    offset = 10_000_000 + uuid.uuid4().int % 1_000_000
    assert (await inventory.deliver_bytes(b"{not json", "orders.events", offset)).value == "dead_lettered"
    row = (
        await inventory.rows(
            "SELECT reason, source_topic, source_partition, value FROM dead_letters WHERE source_offset = :o",
            o=offset,
        )
    )[0]
    assert row.source_topic == "orders.events" and row.source_partition == 0
    assert row.reason.startswith("invalid_event: not an event envelope"), row.reason
    assert bytes(row.value) == b"{not json"
    published = await inventory.rows(
        "SELECT headers FROM outbox WHERE topic = 'inventory_svc.deadletter' AND value = :v",
        v=b"{not json",
    )
    headers = dict(kafka_headers.from_blob(bytes(published[-1].headers)))
    assert headers["dlq.source_offset"] == str(offset).encode()
    assert b"not an event envelope" in (headers["dlq.reason"] or b"")

    # redelivery of the same record does not dead-letter it twice
    await inventory.deliver_bytes(b"{not json", "orders.events", offset)
    assert await inventory.scalar("SELECT COUNT(*) FROM dead_letters WHERE source_offset = :o", o=offset) == 1

    # and the next valid event is processed normally
    pid, oid = await add_product(inventory, 1), uuid.uuid4()
    ok = event(order_created({pid: 1}, customer="c"), oid)
    assert await inventory.deliver(ok) == "handled"


async def test_unknown_event_type_and_version_are_dead_lettered(
    inventory: ServiceUnderTest,
) -> None:
    wire = json.loads(
        encode(
            event(
                order_created({"p": 1}, customer="c"),
                uuid.uuid4(),
            )
        )
    )
    for mutation in ({"event_type": "OrderTeleported"}, {"schema_version": 7}):
        bad = json.dumps({**wire, **mutation}).encode()
        assert (await inventory.deliver_bytes(bad, "orders.events")).value == "dead_lettered"


async def test_an_event_for_an_unknown_order_is_dead_lettered_not_crashing(
    order: ServiceUnderTest,
) -> None:
    # a reply that holds nothing; one that holds something cancels the order it names
    # (test_compensation: an order never placed)
    stray = event(
        PaymentFailed(customer_id="c", amount=Decimal("1.00"), reason="insufficient_funds"), uuid.uuid4()
    )
    assert await order.deliver(stray) == "dead_lettered"
    reasons = [r.reason for r in await order.rows("SELECT reason FROM dead_letters ORDER BY id DESC LIMIT 1")]
    assert "unknown order" in reasons[0]


async def test_an_approval_inventory_never_reserved_for_is_dead_lettered(
    inventory: ServiceUnderTest,
) -> None:
    """Ignoring it would hide what it means (an order approved without its reservation);
    a repeated approval of a reserved order is no such thing: handled, committed once."""
    stray = event(OrderApproved(customer_id="c"), uuid.uuid4())
    assert await inventory.deliver(stray) == "dead_lettered"
    reason = await inventory.scalar("SELECT reason FROM dead_letters ORDER BY id DESC LIMIT 1")
    assert reason.startswith("unknown_order: OrderApproved for unknown order"), reason
    pid, oid = await add_product(inventory, 2), uuid.uuid4()
    assert await inventory.deliver(event(order_created({pid: 1}, customer="c"), oid)) == "handled"
    for _ in range(2):
        assert await inventory.deliver(event(OrderApproved(customer_id="c"), oid)) == "handled"
    assert [e.event_type for e in await inventory.emitted(oid)] == ["InventoryReserved", "InventoryCommitted"]


async def test_a_letters_bearer_token_is_kept_whole_but_shown_by_its_first_characters(
    order: ServiceUnderTest,
) -> None:
    """``sagactl dlq show`` printed a command's whole bearer token, valid for hours (an
    operator trial). The letter keeps it (its replay needs it); its view does not. A body
    that is not JSON showed no event type, though its header named one, and a reason in
    the JSON parser's words ("key must be a string", read as the record's key)."""
    offset = 20_000_000 + uuid.uuid4().int % 1_000_000
    token = "Bearer eyJhbGciOiJFZERTQSIsImtpZCI6ImRldiJ9.secret-part.signature"
    jwt_first = "eyJhbGciOiJFZERTQSIsImtpZCI6ImRldiJ9.secret-part.signature Bearer"
    headers = [
        ("Authorization", token.encode()),
        ("event_type", b"PlaceOrder"),
        # an attack trial: the token before its scheme, a name with a space after it, another name
        ("authorization ", jwt_first.encode()),
        ("X-Authorization", token.encode()),
    ]
    outcome = await order.deliver_bytes(b"{not json", COMMANDS, offset, headers=headers)
    assert outcome.value == "dead_lettered"
    letter_id = await order.scalar("SELECT id FROM dead_letters WHERE source_offset = :o", o=offset)
    letter = await get_letter(order.db, letter_id)
    shown = {h.key: h for h in letter.headers}
    credential = shown["Authorization"]
    assert credential.redacted and credential.value is not None
    assert credential.value.text == "Bearer eyJhbGci…" and credential.value.size == len(token)
    assert shown["authorization "].value.text == "eyJhbGci…"  # type: ignore[union-attr]
    assert shown["X-Authorization"].redacted and shown["authorization "].redacted
    assert "secret-part" not in letter.model_dump_json()
    assert not shown["event_type"].redacted and shown["event_type"].value.text == "PlaceOrder"  # type: ignore[union-attr]
    # what the record says it is, its body unreadable; and why, in words about the body
    assert letter.event_type == "PlaceOrder"
    assert letter.reason.startswith("invalid_command: not a command: its body is not JSON ("), letter.reason
    assert letter.unverified  # no token was checked: what it claims to be is a claim (an attack trial)
    kept = await order.rows("SELECT header_values FROM dead_letters WHERE id = :i", i=letter_id)
    assert token.encode() in [bytes(v) for v in kept[0].header_values]
