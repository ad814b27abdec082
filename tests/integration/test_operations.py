"""Operating the plumbing on the real database: dead-letter replay and discard, pruning."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from events import PaymentFailed
from events.upcasting import UPCASTERS
from saga_kit import deadletters
from saga_kit.errors import TransientError
from saga_kit.pruning import prune
from saga_kit.settings import ServiceSettings
from tests.integration.conftest import ServiceUnderTest, add_product, event
from tests.unit.samples import order_created
from tests.unit.test_upcasting import order_created_v1


async def letter_at(svc: ServiceUnderTest, offset: int) -> deadletters.DeadLetter:
    letter_id = await svc.scalar(
        "SELECT id FROM dead_letters WHERE source_topic = 'orders.events' AND source_offset = :o", o=offset
    )
    return await deadletters.get_letter(svc.db, letter_id)


async def test_a_dead_letter_replays_once_its_cause_is_fixed(
    inventory: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The story: an old build cannot read v1 OrderCreated; a new build can; replay it."""
    pid = await add_product(inventory, 5)
    raw = order_created_v1(items=[{"product_id": pid, "quantity": 1}])
    offset = 900_000 + uuid.uuid4().int % 100_000
    monkeypatch.delitem(UPCASTERS, ("OrderCreated", 1))  # the old build
    outcome = await inventory.deliver_bytes(json.dumps(raw).encode(), "orders.events", offset)
    assert outcome.value == "dead_lettered"
    letter = await letter_at(inventory, offset)
    assert letter.status == "PENDING"
    assert "no upcaster from version 1" in letter.reason
    assert letter.event_type == "OrderCreated" and letter.order_id == raw["order_id"]

    with pytest.raises(deadletters.StillFailing, match="no upcaster"):
        await deadletters.replay(inventory.db, inventory.pipeline, letter.id)
    assert (await letter_at(inventory, offset)).replay_attempts == 1

    monkeypatch.undo()  # the new build is deployed
    result = await deadletters.replay(inventory.db, inventory.pipeline, letter.id)
    assert (result.status, result.outcome) == ("REPLAYED", "handled")
    assert await inventory.scalar("SELECT reserved FROM products WHERE product_id = :p", p=pid) == 1
    with pytest.raises(deadletters.NotPending):
        await deadletters.replay(inventory.db, inventory.pipeline, letter.id)
    assert await inventory.scalar("SELECT reserved FROM products WHERE product_id = :p", p=pid) == 1
    pending = await deadletters.list_letters(inventory.db, "PENDING", 1000)
    assert letter.id not in {d.id for d in pending}


async def test_a_discarded_dead_letter_is_kept_but_never_replayed(inventory: ServiceUnderTest) -> None:
    offset = 800_000 + uuid.uuid4().int % 100_000
    await inventory.deliver_bytes(b"\x00garbage", "orders.events", offset)
    letter = await letter_at(inventory, offset)
    assert letter.value is not None and letter.value.text == "\\x00garbage"  # shown escaped
    discarded = await deadletters.discard(inventory.db, letter.id)
    assert discarded.status == "DISCARDED" and discarded.resolved_at is not None
    with pytest.raises(deadletters.NotPending):
        await deadletters.replay(inventory.db, inventory.pipeline, letter.id)
    with pytest.raises(deadletters.NotPending):
        await deadletters.discard(inventory.db, letter.id)
    with pytest.raises(LookupError):
        await deadletters.get_letter(inventory.db, 10**12)


def hold_replays(
    svc: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, asyncio.Event]:
    """A replay's attempt waits for the returned ``release``; ``entered`` is set once a
    replay holds its letter."""
    entered, release = asyncio.Event(), asyncio.Event()
    attempt = svc.pipeline.attempt

    async def held(record: Any) -> Any:
        entered.set()
        await release.wait()
        return await attempt(record)

    monkeypatch.setattr(svc.pipeline, "attempt", held)
    return entered, release


async def test_a_discard_waits_for_a_replay_in_progress_and_then_resolves_the_letter(
    inventory: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once, a discard during a failing replay ended DISCARDED with no resolved_at (never
    pruned): the replay's outcome wrote over it."""
    offset = 700_000 + uuid.uuid4().int % 100_000
    await inventory.deliver_bytes(b"\x00garbage", "orders.events", offset)
    letter = await letter_at(inventory, offset)
    entered, release = hold_replays(inventory, monkeypatch)
    replaying = asyncio.create_task(deadletters.replay(inventory.db, inventory.pipeline, letter.id))
    await entered.wait()
    discarding = asyncio.create_task(deadletters.discard(inventory.db, letter.id))
    await asyncio.sleep(0.3)
    assert not discarding.done()  # the letter is the replay's until it ends
    release.set()
    with pytest.raises(deadletters.StillFailing):
        await replaying
    discarded = await discarding
    assert discarded.status == "DISCARDED" and discarded.resolved_at is not None
    assert discarded.replay_attempts == 1


async def test_a_letter_replayed_meanwhile_is_not_discarded_after_all(
    inventory: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = await add_product(inventory, 5)
    raw = order_created_v1(items=[{"product_id": pid, "quantity": 1}])
    offset = 600_000 + uuid.uuid4().int % 100_000
    with monkeypatch.context() as old_build:
        old_build.delitem(UPCASTERS, ("OrderCreated", 1))
        await inventory.deliver_bytes(json.dumps(raw).encode(), "orders.events", offset)
    letter = await letter_at(inventory, offset)
    entered, release = hold_replays(inventory, monkeypatch)
    replaying = asyncio.create_task(deadletters.replay(inventory.db, inventory.pipeline, letter.id))
    await entered.wait()
    discarding = asyncio.create_task(deadletters.discard(inventory.db, letter.id))
    release.set()
    assert (await replaying).status == "REPLAYED"
    with pytest.raises(deadletters.NotPending):
        await discarding
    after = await letter_at(inventory, offset)
    assert after.status == "REPLAYED" and after.resolved_at is not None


async def test_many_replays_and_discards_at_once_take_their_turns_and_the_service_goes_on(
    order: ServiceUnderTest,
) -> None:
    """An attack trial: 25 replays at once each held a pooled connection and waited for a
    second one (their attempts read the database), for ever, with every connection taken:
    order_svc stayed unready until it was killed. 30 at once, more than the pool holds
    (20), now all answer."""
    letters = []
    for _ in range(30):  # a reply for an order never placed: its replay reads the orders
        stray = event(
            PaymentFailed(customer_id="c", amount=Decimal("1.00"), reason="insufficient_funds"), uuid.uuid4()
        )
        assert await order.deliver(stray) == "dead_lettered"
        letters.append(await order.scalar("SELECT max(id) FROM dead_letters"))
    pool = order.db.engine.pool
    assert pool.size() + pool._max_overflow < 30  # type: ignore[attr-defined]
    actions = [deadletters.replay(order.db, order.pipeline, i) for i in letters[:25]]
    actions += [deadletters.discard(order.db, i) for i in letters[25:]]
    async with asyncio.timeout(60):
        results = await asyncio.gather(*actions, return_exceptions=True)
    assert all(isinstance(r, deadletters.StillFailing) for r in results[:25]), results[:25]
    assert all(isinstance(r, deadletters.DeadLetterSummary) for r in results[25:]), results[25:]
    assert not order.pipeline.stats.retrying
    stray = event(  # and the consumer goes on
        PaymentFailed(customer_id="c", amount=Decimal("1.00"), reason="insufficient_funds"), uuid.uuid4()
    )
    assert await order.deliver(stray) == "dead_lettered"


async def test_a_replay_gives_up_on_a_lasting_transient_failure(
    inventory: ServiceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's request does not wait for ever (it answers 503), and the consumer is
    not reported as retrying because of it."""
    offset = 400_000 + uuid.uuid4().int % 90_000
    await inventory.deliver_bytes(b"\x00garbage", "orders.events", offset)
    letter = await letter_at(inventory, offset)
    record = await deadletters._pending_record(inventory.db, letter.id)
    tries = 0

    async def away(*_: Any) -> None:
        nonlocal tries
        tries += 1
        raise TransientError("the database is away")

    monkeypatch.setattr(inventory.pipeline, "_apply", away)
    with pytest.raises(TransientError):
        await inventory.pipeline.attempt(record, give_up_after=0.5)
    assert tries > 1 and not inventory.pipeline.stats.retrying


def settings(**retention: Any) -> ServiceSettings:
    return ServiceSettings(database_url="postgresql://x/y", http_port=0, **retention)


async def test_pruning_keeps_the_redelivery_window_and_unsent_rows(inventory: ServiceUnderTest) -> None:
    pid = await add_product(inventory, 10)
    old, recent = event(order_created({pid: 1}), uuid.uuid4()), event(order_created({pid: 1}), uuid.uuid4())
    for e in (old, recent):
        assert await inventory.deliver(e) == "handled"
    async with inventory.db.unit_of_work() as uow:
        await uow.conn.execute(
            text("UPDATE inbox SET processed_at = now() - interval '2 hours' WHERE event_id = :e"),
            {"e": old.event_id},
        )
        # one outbox row sent long ago, one unsent just as old, one sent just now
        await uow.conn.execute(
            text(
                "UPDATE outbox SET sent_at = now() - interval '2 hours',"
                " created_at = now() - interval '2 hours' WHERE key = :k"
            ),
            {"k": str(old.order_id).encode()},
        )
        await uow.conn.execute(
            text("UPDATE outbox SET sent_at = NULL, created_at = now() - interval '2 hours' WHERE key = :k"),
            {"k": str(recent.order_id).encode()},
        )

    deleted = await prune(inventory.db, settings(inbox_retention_seconds=3600, outbox_retention_seconds=3600))
    assert deleted >= 2
    inbox_ids = {
        r.event_id
        for r in await inventory.rows("SELECT event_id FROM inbox WHERE consumer = 'inventory_svc'")
    }
    assert old.event_id not in inbox_ids and recent.event_id in inbox_ids
    assert await inventory.emitted(old.order_id) == []  # sent and old: pruned
    assert len(await inventory.emitted(recent.order_id)) == 1  # unsent: kept however old

    # inside the window a redelivery is still a duplicate ...
    assert await inventory.deliver(recent) == "duplicate"
    # ... and beyond it the handler's own state keeps a late duplicate harmless
    assert await inventory.deliver(old) == "handled"
    assert await inventory.scalar("SELECT reserved FROM products WHERE product_id = :p", p=pid) == 2
    # put the unsent row back the way the relay would leave it
    async with inventory.db.unit_of_work() as uow:
        await uow.conn.execute(
            text("UPDATE outbox SET sent_at = now() WHERE key = :k"), {"k": str(recent.order_id).encode()}
        )
