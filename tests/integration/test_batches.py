"""The batch pipeline keeps every guarantee of one-event-at-a-time processing: batches
that mix sagas, duplicates inside a batch, a poison event in the middle, the last unit
raced for inside one batch and by two concurrent batches, and acks only after commit."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from psycopg import pq
from sqlalchemy import text

from events import OrderApproved, OrderCreated, OrderLine
from events.envelope import Envelope
from order_svc.errors import IdempotencyKeyReused
from order_svc.placing import Placed, Placement, place_orders
from saga_kit import audit, auditchain
from saga_kit.consumer import ConsumerPipeline, HandlerErrorLimit, Outcome, Record, Subscription
from saga_kit.db import UnitOfWork
from saga_kit.faust_app import consume_batches
from saga_kit.reactions import Reactions, Replies
from saga_kit.retry import RetryPolicy
from tests.integration.conftest import ServiceUnderTest, add_product, commit_states, event, record_of
from tests.unit.samples import order_created

_offsets = itertools.count(90_000_000 + uuid.uuid4().int % 1_000_000)


async def stock(inventory: ServiceUnderTest, pid: str) -> tuple[int, int, int]:
    row = (
        await inventory.rows("SELECT available, reserved, sold FROM products WHERE product_id = :p", p=pid)
    )[0]
    return row.available, row.reserved, row.sold


async def test_a_batch_mixing_sagas_and_steps_applies_each_in_order(inventory: ServiceUnderTest) -> None:
    pid = await add_product(inventory, 10)
    first, second = uuid.uuid4(), uuid.uuid4()
    created = event(order_created({pid: 2}), first)
    batch = [
        created,
        event(order_created({pid: 3}), second),
        event(OrderApproved(customer_id="c1"), first, created),  # the same saga's next step
    ]
    outcomes = await inventory.pipeline.process_batch([record_of(e) for e in batch])
    assert outcomes == [Outcome.HANDLED] * 3
    assert await stock(inventory, pid) == (5, 3, 2)
    assert [e.event_type for e in await inventory.emitted(first)] == [
        "InventoryReserved",
        "InventoryCommitted",
    ]
    assert [e.event_type for e in await inventory.emitted(second)] == ["InventoryReserved"]


async def test_the_same_event_twice_in_one_batch_is_applied_once(inventory: ServiceUnderTest) -> None:
    pid, oid = await add_product(inventory, 5), uuid.uuid4()
    created = record_of(event(order_created({pid: 2}), oid))
    again = Record(
        created.topic, created.partition, next(_offsets), created.key, created.value, created.headers
    )
    assert await inventory.pipeline.process_batch([created, again]) == [Outcome.HANDLED, Outcome.DUPLICATE]
    assert await stock(inventory, pid) == (3, 2, 0)
    # and in the next batch it is a duplicate by the inbox
    assert await inventory.pipeline.process_batch([created]) == [Outcome.DUPLICATE]


async def test_the_last_unit_goes_to_one_order_of_the_batch(inventory: ServiceUnderTest) -> None:
    pid = await add_product(inventory, 1)
    orders = [uuid.uuid4() for _ in range(3)]
    await inventory.pipeline.process_batch([record_of(event(order_created({pid: 1}), o)) for o in orders])
    replies = [(await inventory.emitted(o))[0].event_type for o in orders]
    assert replies == ["InventoryReserved", "InventoryReservationFailed", "InventoryReservationFailed"]
    assert await stock(inventory, pid) == (0, 1, 0)


async def test_two_concurrent_batches_never_oversell_nor_deadlock(inventory: ServiceUnderTest) -> None:
    """Two instances' batches race for the last units of two products, locking them in
    opposite request orders; rows are locked in product order, so neither waits on the
    other in a cycle, and no more is reserved than there is."""
    p1, p2 = sorted([await add_product(inventory, 3), await add_product(inventory, 3)])
    other = ConsumerPipeline(
        inventory.spec.name, inventory.db, inventory.spec.subscription, retry=RetryPolicy(0.01, 0.2, 0.01)
    )

    def batch(items: dict[str, int]) -> list[Record]:
        return [record_of(event(order_created(items), uuid.uuid4())) for _ in range(4)]

    results = await asyncio.wait_for(
        asyncio.gather(
            inventory.pipeline.process_batch(batch({p1: 1, p2: 1})),
            other.process_batch(batch({p2: 1, p1: 1})),
        ),
        timeout=30,
    )
    assert all(o is Outcome.HANDLED for outcomes in results for o in outcomes)
    for pid in (p1, p2):
        available, reserved, sold = await stock(inventory, pid)
        assert (available, reserved, sold) == (0, 3, 0)


# -- a poison event in the middle -----------------------------------------------------------


@dataclass
class _Seen:
    applied: list[str] = field(default_factory=list)


def _poisonous(marker: str) -> Reactions[_Seen]:
    """Reactions that raise on one customer, as a bug meeting one event would."""

    async def load(uow: UnitOfWork, events: Sequence[Envelope[Any]]) -> _Seen:
        return _Seen()

    def save(uow: UnitOfWork, seen: _Seen) -> None:
        for customer in seen.applied:
            uow.write("SELECT %(c)s", {"c": customer})

    reactions: Reactions[_Seen] = Reactions(load, save)

    @reactions.on(OrderCreated)
    def on_created(seen: _Seen, event: Envelope[OrderCreated]) -> Replies:
        if event.payload.customer_id == marker:
            raise RuntimeError("a bug met this event")
        seen.applied.append(event.payload.customer_id)
        return []

    return reactions


async def test_a_poison_event_in_the_middle_is_isolated_and_the_rest_commit(
    inventory: ServiceUnderTest,
) -> None:
    marker = f"poison-{uuid.uuid4().hex[:6]}"
    pipeline = ConsumerPipeline(
        "batch_probe",
        inventory.db,
        Subscription(("orders.events",), _poisonous(marker)),
        retry=RetryPolicy(0.01, 0.2, 0.01),
    )
    customers = ["a", "b", marker, "c", "d"]
    batch = [record_of(event(order_created({"p": 1}, customer=c), uuid.uuid4())) for c in customers]
    outcomes = await pipeline.process_batch(batch)
    assert outcomes == [
        Outcome.HANDLED,
        Outcome.HANDLED,
        Outcome.DEAD_LETTERED,
        Outcome.HANDLED,
        Outcome.HANDLED,
    ]
    reason = await inventory.scalar(
        "SELECT reason FROM dead_letters WHERE source_offset = :o", o=batch[2].offset
    )
    assert reason.startswith("handler_error: RuntimeError: a bug met this event")
    claimed = await inventory.scalar(
        "SELECT COUNT(*) FROM inbox WHERE consumer = 'batch_probe' AND event_id = ANY(:e)",
        e=[uuid.UUID(json.loads(r.value or b"")["event_id"]) for r in batch],
    )
    assert claimed == 4  # every event but the poison one


# -- COMMIT in the round trip of the batch's writes ------------------------------------------

_PROBE = (
    "CREATE TABLE IF NOT EXISTS commit_probe"
    " (customer text CONSTRAINT commit_probe_once UNIQUE DEFERRABLE INITIALLY DEFERRED)"
)


def _recording() -> Reactions[_Seen]:
    """Reactions that insert each event's customer into ``commit_probe``, whose unique
    constraint is checked only at ``COMMIT``."""

    async def load(uow: UnitOfWork, events: Sequence[Envelope[Any]]) -> _Seen:
        return _Seen()

    def save(uow: UnitOfWork, seen: _Seen) -> None:
        for customer in seen.applied:
            uow.write("INSERT INTO commit_probe VALUES (%(c)s)", {"c": customer})

    reactions: Reactions[_Seen] = Reactions(load, save)

    @reactions.on(OrderCreated)
    def on_created(seen: _Seen, event: Envelope[OrderCreated]) -> Replies:
        seen.applied.append(event.payload.customer_id)
        return []

    return reactions


async def _probe_pipeline(inventory: ServiceUnderTest) -> ConsumerPipeline:
    async with inventory.db.engine.begin() as conn:
        await conn.execute(text(_PROBE))
    return ConsumerPipeline(
        "commit_probe",
        inventory.db,
        Subscription(("orders.events",), _recording()),
        retry=RetryPolicy(0.01, 0.2, 0.01),
    )


async def test_a_batch_commits_in_the_round_trip_of_its_writes(inventory: ServiceUnderTest) -> None:
    pipeline = await _probe_pipeline(inventory)
    customers = [f"rt-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    batch = [record_of(event(order_created({"p": 1}, customer=c), uuid.uuid4())) for c in customers]
    with commit_states() as found:
        assert await pipeline.process_batch(batch) == [Outcome.HANDLED] * 3
    assert found == [pq.TransactionStatus.IDLE]  # committed already: the connection's commit sends nothing
    stored = await inventory.scalar("SELECT COUNT(*) FROM commit_probe WHERE customer = ANY(:c)", c=customers)
    assert stored == 3


async def test_a_failure_at_commit_dead_letters_the_event_that_caused_it(inventory: ServiceUnderTest) -> None:
    """The batch's writes all succeed; ``COMMIT`` refuses them (a deferred constraint),
    in the round trip that carried them. Splitting the batch finds the one event whose
    write broke it; the others commit."""
    pipeline = await _probe_pipeline(inventory)
    customers = [f"dc-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    async with inventory.db.engine.begin() as conn:  # the third customer is there already
        await conn.execute(text("INSERT INTO commit_probe VALUES (:c)"), {"c": customers[2]})
    batch = [record_of(event(order_created({"p": 1}, customer=c), uuid.uuid4())) for c in customers]
    # (a COMMIT outside the reactions' round trip failed the whole batch, again and again)
    outcomes = await asyncio.wait_for(pipeline.process_batch(batch), timeout=30)
    assert outcomes == [Outcome.HANDLED] * 2 + [Outcome.DEAD_LETTERED] + [Outcome.HANDLED] * 2
    reason = await inventory.scalar(
        "SELECT reason FROM dead_letters WHERE source_offset = :o", o=batch[2].offset
    )
    assert "UniqueViolation" in reason or "IntegrityError" in reason, reason
    stored = await inventory.scalar("SELECT COUNT(*) FROM commit_probe WHERE customer = ANY(:c)", c=customers)
    assert stored == 5  # the four handled, and the one that was there


# -- acks -------------------------------------------------------------------------------------


@dataclass
class _Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass
class _Event:
    message: _Message


class _Stream:
    """What the agent needs of a faust stream: batches, and acks it records."""

    def __init__(self, batches: list[list[_Event]]) -> None:
        self.batches = batches
        self.acked: list[int] = []

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[_Event]]:
        for batch in self.batches:
            yield batch

    async def ack(self, event: _Event) -> bool:
        self.acked.append(event.message.offset)
        return True


class _Failing(ConsumerPipeline):
    async def process_batch(self, records: Sequence[Record]) -> list[Outcome]:
        if any(r.offset == 2 for r in records):
            raise RuntimeError("the batch's processing raised")
        return await super().process_batch(records)


async def test_a_batch_is_acked_only_after_processing_returned_and_never_if_it_raised(
    inventory: ServiceUnderTest,
) -> None:
    pipeline = _Failing(inventory.spec.name, inventory.db, inventory.spec.subscription)

    def ev(offset: int) -> _Event:
        return _Event(_Message("orders.events", 7, offset, None, b"not an event", []))

    stream = _Stream([[ev(0), ev(1)], [ev(2), ev(3)], [ev(4)]])
    with pytest.raises(RuntimeError, match="processing raised"):
        await consume_batches(stream, pipeline, 10, 0.005)
    assert stream.acked == [0, 1]  # the first batch; none of the failed one, nothing after it


# -- HTTP group commit ------------------------------------------------------------------------


async def test_commands_share_one_transaction_and_keys_hold_inside_it(order: ServiceUnderTest) -> None:
    key = f"key-{uuid.uuid4().hex[:8]}"

    def command(customer: str, idempotency_key: str | None, quantity: int = 1) -> Placement:
        lines = (OrderLine(product_id="p", quantity=quantity),)
        return Placement(customer, lines, idempotency_key, timedelta(minutes=5))

    results = await place_orders(
        order.db,
        [command("a", key), command("b", None), command("a", key), command("a", key, 2), command("z", key)],
    )
    first, second, same, clash, theirs = results
    assert isinstance(first, Placed) and isinstance(second, Placed) and isinstance(theirs, Placed)
    assert not (first.replayed or second.replayed or theirs.replayed)
    # the same key and body in the same batch: the same order, replayed
    assert same == first._replace(replayed=True)
    assert isinstance(clash, IdempotencyKeyReused)  # the same key, another body: 409
    assert len({first.order_id, second.order_id, theirs.order_id}) == 3  # another customer's key
    # and later, in another batch, the key still answers with that order
    (again,) = await place_orders(order.db, [command("a", key)])
    assert again == first._replace(replayed=True)


async def test_each_placed_order_has_its_audit_entry_in_the_chain_from_the_same_transaction(
    order: ServiceUnderTest,
) -> None:
    key = f"key-{uuid.uuid4().hex[:8]}"
    caller = audit.CallAudit("kim", "customer", "POST /orders", "trace-1")

    def command(
        customer: str, idempotency_key: str | None, who: audit.CallAudit | None, quantity: int = 1
    ) -> Placement:
        lines = (OrderLine(product_id="p", quantity=quantity),)
        return Placement(customer, lines, idempotency_key, timedelta(minutes=5), audit=who)

    async def chain() -> list[auditchain.Link]:
        async with order.db.engine.connect() as conn:
            rows = await conn.execute(text("SELECT seq, entry, prev_hash, hash FROM audit_log ORDER BY seq"))
            return [auditchain.Link(r.seq, r.entry, bytes(r.prev_hash), bytes(r.hash)) for r in rows]

    before = len(await chain())
    results = await place_orders(
        order.db,
        [
            command("kim", key, caller),
            command("b", None, None),
            command("kim", key, caller),
            command("kim", key, caller, quantity=2),
        ],
    )
    first, _, same, clash = results
    assert isinstance(first, Placed) and same == first._replace(replayed=True)
    assert isinstance(clash, IdempotencyKeyReused)
    links = await chain()
    written = [json.loads(link.entry) for link in links[before:]]
    # one entry per audited command answered 202 (the replay too), none for the 409 (the
    # middleware writes that one) nor for the unaudited command
    assert [(e["actor"], e["action"], e["resource"], e["outcome"], e["request_id"]) for e in written] == [
        ("kim", "POST /orders", f"/orders/{first[0]}", "202", "trace-1")
    ] * 2
    assert auditchain.verify(links) == []  # chained in SQL with the rest of the chain


async def test_a_bad_deploy_stops_the_stream_instead_of_dead_lettering_it(
    inventory: ServiceUnderTest,
) -> None:
    """A reaction failing on every valid event (a bug) dead-letters the first few, then the
    consumer holds the batch (not acked, readiness names why) until an operator resumes."""
    pipeline = ConsumerPipeline(
        "bad_deploy",
        inventory.db,
        Subscription(("orders.events",), _poisonous("everyone")),
        retry=RetryPolicy(0.01, 0.05, 0.0),
        handler_errors=HandlerErrorLimit(max_consecutive=2, max_ratio=1.0),
    )
    batch = [record_of(event(order_created({"p": 1}, customer="everyone"), uuid.uuid4())) for _ in range(4)]
    task = asyncio.create_task(pipeline.process_batch(batch))
    for _ in range(300):
        if pipeline.stats.stuck:
            break
        await asyncio.sleep(0.01)
    (why,) = pipeline.stats.stuck.values()
    assert "HandlerErrorLimitReached" in why and "in a row" in why and "a bug met this event" in why
    assert not task.done()  # held: the caller has not acked anything
    stored = await inventory.scalar(
        "SELECT COUNT(*) FROM dead_letters WHERE source_offset = ANY(:o)", o=[r.offset for r in batch]
    )
    assert stored == 2  # only as many as the limit allows
    pipeline.handler_errors.resume()  # an operator decided these may go to the dead letters
    pipeline.handler_errors.max_consecutive = 10
    assert await asyncio.wait_for(task, 10) == [Outcome.DEAD_LETTERED] * 4
    assert pipeline.stats.stuck == {}
