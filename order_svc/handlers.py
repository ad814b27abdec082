"""Order service reactions to participants' events (steps 4, c1, c3; c4 when a reply
comes after the order's deadline) and to commands from ``orders.commands`` (step 1 and
c4 through Kafka: ``events.commands``).

A batch at a time (``saga_kit.reactions``): ``load`` locks the batch's orders (in
order-id order) with whether each is past its deadline by the database's clock — the
sweeper's clock too; each decide function applies one event through the order's life
cycle (``order_svc.domain``); ``save`` writes what changed. Every participant event also
joins its saga's timeline (the observer, ``order_svc.timeline``)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from opentelemetry import context as otel_context

from events import (
    CommandRejected,
    InventoryReservationFailed,
    InventoryReserved,
    OrderApproved,
    OrderCancelled,
    OrderRejected,
    PaymentCompleted,
    PaymentFailed,
    commands,
)
from events.commands import CancelOrder, PlaceOrder, RefusedCommand, order_id_for
from events.envelope import Envelope, EventPayload
from events.order import PRODUCER, CancelReason
from events.topics import COMMANDS
from order_svc import admission, masterkeys, sagametrics, timeline
from order_svc.domain import CANCEL_REQUESTED, OrderStatus, transition
from order_svc.placing import order_created, request_hash
from saga_kit import audit, auth, inbox, sql, tracing
from saga_kit.consumer import Record
from saga_kit.db import Delivery, UnitOfWork
from saga_kit.errors import InvalidEvent
from saga_kit.reactions import FactMismatch, Reactions, Replies, Reply
from saga_kit.retry import RetryPolicy

log = logging.getLogger(__name__)

#: The deadline of an order placed without one (``ORDER_DEADLINE_SECONDS``; ``configure``).
_defaults = {"deadline_seconds": 30.0}
#: Admission's settings (``ADMISSION_HEADROOM``, ``ADMISSION_MIN_PENDING``), for commands.
_admission = {"headroom": 0.5, "min_pending": 100.0}
#: Verifies the bearer token a command carries (``configure``); None: authentication is
#: off (development without keys), as for the HTTP API.
_commands: dict[str, auth.TokenVerifier | None] = {"verifier": None}
#: The service's one retry policy (``RETRY_*`` settings), for the keys a command waits for.
_retry = {"policy": RetryPolicy()}


def configure(settings: Any) -> None:
    """Take the service's settings (called once at start by the service runner); in
    production, refuse to start without a fit master key for personal data, or without
    the keys that verify the callers' tokens (``saga_kit.auth.load_verifier``)."""
    _defaults["deadline_seconds"] = float(settings.deadline_seconds)
    _admission["headroom"] = float(settings.admission_headroom)
    _admission["min_pending"] = int(settings.admission_min_pending)
    _commands["verifier"] = settings.token_verifier()
    _retry["policy"] = settings.retry_policy()
    _ = settings.keystore  # every master key file read, readable and fit, or no start
    masterkeys.WAKE.set()  # the rewrap job's first run follows at once


@dataclass
class Order:
    status: OrderStatus
    customer_id: str
    #: Its deadline has passed (by the database's clock, the sweeper's too).
    overdue: bool
    reason: str | None
    total: Decimal | None
    #: The command that placed it, when it came through Kafka; its events carry it.
    command_id: uuid.UUID | None = None
    request_hash: str | None = None
    #: product → unit price inventory quoted (set by InventoryReserved)
    prices: dict[str, Decimal] = field(default_factory=dict)
    changed: bool = False
    #: placed in this batch by this command: inserted by ``save`` (with its lines, the
    #: deadline and the trace)
    placed: PlaceOrder | None = None
    deadline_at: datetime | None = None
    #: product → units ordered (loaded when the batch holds an InventoryReserved)
    items: dict[str, int] = field(default_factory=dict)
    #: The CancelOrder command that cancelled it, when one did (saved with ``changed``).
    cancel_command_id: uuid.UUID | None = None
    #: When it was placed (``created_at``; now, for an order placed in this batch).
    placed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: The saga's trace, as W3C ``traceparent`` (``trace_context``; for one placed in this
    #: batch, its placing's).
    traceparent: str | None = None
    #: An order this service never placed, recorded as cancelled (``_never_placed``):
    #: inserted by ``save``.
    never_placed: bool = False
    #: Its transitions in this batch (from, to, reason), counted and logged once the batch
    #: commits (``sagametrics``); from None: an order recorded as it was cancelled.
    moves: list[tuple[OrderStatus | None, OrderStatus, str | None]] = field(default_factory=list)

    def move(self, new: OrderStatus, reason: str | None) -> None:
        """Take the status ``new`` (``domain.transition`` allowed it) with ``reason``."""
        self.moves.append((self.status, new, reason))
        self.status, self.reason, self.changed = new, reason, True

    def check(self, event: Envelope[Any]) -> None:
        """Facts are checked, not trusted (docs/design.md §10): an event about this order
        must name its customer. Raises ``FactMismatch``."""
        named = getattr(event.payload, "customer_id", self.customer_id)
        if named != self.customer_id:
            raise FactMismatch(
                f"{event.event_type} names customer {named!r}, the order is {self.customer_id!r}'s"
            )

    def correlated(self, payload: EventPayload, command_id: uuid.UUID | None = None) -> Reply:
        """``payload`` with the ``correlation_id`` of the command it answers, if any."""
        cid = command_id or self.command_id
        return Reply(payload, () if cid is None else (("correlation_id", str(cid).encode()),))


@dataclass
class Orders:
    orders: dict[uuid.UUID, Order] = field(default_factory=dict)
    #: A command's event id → who sent it (its verified token), or why no one is known.
    callers: dict[uuid.UUID, auth.Principal | auth.Unauthorized | auth.KeysUnavailable] = field(
        default_factory=dict
    )
    #: The batch's command ids already used → (the command type, the order it acted on):
    #: a command id is used once (loaded, then kept up to date as the batch applies).
    used_command_ids: dict[uuid.UUID, tuple[str, uuid.UUID]] = field(default_factory=dict)
    #: The batch's command ids a customer's ``PlaceOrder`` was sent under → that customer:
    #: the first to send one under it that was no stranger's. One that placed no order (refused
    #: by admission, to be sent again under the same id) stays hers: another customer's
    #: ``PlaceOrder`` under it, or a ``CancelOrder``, is refused (``command_id_reused``).
    #: Once, whoever learnt the id placed an order under it first, and its customer's retry
    #: was refused (an attack trial).
    reserved_ids: dict[uuid.UUID, str] = field(default_factory=dict)
    #: The audit entries of the batch's commands (``_audited``), appended by ``save`` in the
    #: batch's transaction: a command is audited as the HTTP call it stands for is.
    audit_entries: list[str] = field(default_factory=list)
    #: The event ids of the batch's commands from someone who may not act for their
    #: order (another customer, no valid token, no such order; a PlaceOrder's order is
    #: the customer's it names, placed yet or not: ``_owner``): their refusals go to the
    #: sender and the audit trail, never into that order's timeline (``observe``).
    strangers: set[uuid.UUID] = field(default_factory=set)
    #: The batch's commands (command id, type, sender, order, outcome), logged once the
    #: batch commits.
    commands_taken: list[tuple[uuid.UUID, str, str, uuid.UUID, str]] = field(default_factory=list)
    #: The sagas in flight, read in the batch's transaction when it holds a PlaceOrder: a
    #: command is admitted as ``POST /orders`` is (``order_svc.admission.judge``).
    backlog: admission.Backlog | None = None
    #: The batch's commands refused by admission (event id, why): counted once the batch
    #: commits, and their inbox claims released — the same bytes sent again later are a
    #: new try, not a redelivery to drop.
    refusals: list[tuple[uuid.UUID, admission.Refusal]] = field(default_factory=list)
    #: The batch's CancelOrders refused ``unknown_order`` (event ids): commands are keyed
    #: by their own ids, so a CancelOrder can overtake its PlaceOrder on another
    #: partition (an attack trial: a third of cancels sent right after their acknowledged
    #: PlaceOrder). Their inbox claims are released too: the same bytes sent again once
    #: the order exists cancel it.
    unknown_cancels: list[uuid.UUID] = field(default_factory=list)

    def get(self, event: Envelope[Any]) -> Order:
        """The event's order; ``InvalidEvent`` (a dead letter) if this service has none."""
        order = self.orders.get(event.order_id)
        if order is None:
            raise InvalidEvent(f"{event.event_type} for unknown order {event.order_id}", "unknown_order")
        return order


async def load(uow: UnitOfWork, events: Sequence[Envelope[Any]]) -> Orders:
    """The batch's orders, locked in order-id order (concurrent batches never deadlock);
    when it holds commands, the orders that used their command ids; when it holds a
    ``PlaceOrder``, the backlog admission judges it by (``admission.BACKLOG_SQL``); and for
    each order whose ``InventoryReserved`` is in the batch its ``order_items`` as product →
    units: one to four queries, one round trip. An order not found is absent from the
    state; ``Orders.get`` then refuses its event (``InvalidEvent``)."""
    state = Orders()
    queries = [
        (
            "SELECT order_id, status, customer_id, reason, total, command_id, request_hash, created_at,"
            " trace_context, deadline_at <= clock_timestamp() AS overdue"
            f" FROM orders WHERE order_id IN {sql.UUIDS} ORDER BY order_id FOR UPDATE",
            {"ids": sql.values(sorted({e.order_id for e in events}))},
        )
    ]
    command_ids = sorted(
        {e.payload.command_id for e in events if isinstance(e.payload, PlaceOrder | CancelOrder)}
    )
    if command_ids:
        queries.append(
            (
                # one index each: with OR, a sequential scan of every order
                f"SELECT order_id, command_id, cancel_command_id FROM orders WHERE command_id IN {sql.UUIDS}"
                " UNION SELECT order_id, command_id, cancel_command_id FROM orders"
                f" WHERE cancel_command_id IN {sql.UUIDS}",
                {"ids": sql.values(command_ids)},
            )
        )
        # the first PlaceOrder under each id recorded as its customer's (no stranger's),
        # found by the timeline's command-id index (its predicate said, so that it is used)
        queries.append(
            (
                "SELECT DISTINCT ON (payload->>'command_id') payload->>'command_id' AS command_id,"
                " payload->>'customer_id' AS customer_id FROM saga_events"
                f" WHERE payload ? 'command_id' AND payload->>'command_id' = ANY({sql.TEXT_ARRAY})"
                " AND event_type = %(place)s AND NOT from_stranger ORDER BY payload->>'command_id', seq",
                {"keys": sql.values(command_ids), "place": PlaceOrder.event_type},
            )
        )
    placing = any(isinstance(e.payload, PlaceOrder) for e in events)
    if placing:
        queries.append((admission.BACKLOG_SQL, {}))
    reserved = sorted({e.order_id for e in events if isinstance(e.payload, InventoryReserved)})
    if reserved:
        queries.append(
            (
                "SELECT order_id, product_id, sum(quantity) AS quantity FROM order_items"
                f" WHERE order_id IN {sql.UUIDS} GROUP BY order_id, product_id",
                {"ids": sql.values(reserved)},
            )
        )
    orders, *more = await uow.read(*queries)
    used = more.pop(0) if command_ids else ()
    if command_ids:
        state.reserved_ids = {uuid.UUID(row.command_id): row.customer_id for row in more.pop(0)}
    if placing:
        state.backlog = admission.Backlog.of(more.pop(0)[0])
    lines = more
    for row in orders:
        state.orders[row.order_id] = Order(
            OrderStatus(row.status),
            row.customer_id,
            bool(row.overdue),
            row.reason,
            row.total,
            row.command_id,
            row.request_hash,
            placed_at=row.created_at,
            traceparent=row.trace_context,
        )
    for row in used:
        if row.command_id is not None:
            state.used_command_ids[row.command_id] = ("PlaceOrder", row.order_id)
        if row.cancel_command_id is not None:
            state.used_command_ids[row.cancel_command_id] = ("CancelOrder", row.order_id)
    for row in lines[0] if lines else ():
        if (order := state.orders.get(row.order_id)) is not None:
            order.items[row.product_id] = int(row.quantity)
    for e in events:
        if isinstance(e.payload, PlaceOrder | CancelOrder | RefusedCommand):
            caller = e.payload.caller
            if not isinstance(caller, auth.Principal | auth.Unauthorized | auth.KeysUnavailable):
                raise RuntimeError(f"{e.event_type} {e.event_id} was not authenticated before load")
            state.callers[e.event_id] = caller
    return state


#: How long a batch's commands wait for the keys their tokens are checked with (seconds,
#: all of them together) before they are dead-lettered, to be replayed: longer, and one
#: command would hold the order service's consumer — saga events too — for as long as the
#: key server is away.
KEYS_PATIENCE_SECONDS = 10.0


async def authenticate(events: Sequence[Envelope[Any]]) -> None:
    """``prepare``: each command's caller, from its token (``Command.authenticated``),
    before the batch's transaction opens — the keys may come from a key server
    (``AUTH_JWKS_URL``), and a fetch must not hold the batch's locks (it did: a review
    found a slow key server holding the orders' row locks for up to PyJWT's 30 s). A
    token refused is noted as its ``Unauthorized`` (the command is answered
    ``CommandRejected``). Keys that cannot be had are asked for again for
    ``KEYS_PATIENCE_SECONDS``, then noted as ``KeysUnavailable``: the command is
    dead-lettered (``_caller``), neither taken nor refused, and the batch's other events go
    on. It was refused for good (a review), then held the whole consumer while the key
    server was away (an attack trial)."""
    verifier = _commands["verifier"]
    # the batch's patience, not each command's: waited for in turn, six commands held the
    # consumer — saga events too — for a minute (a second attack trial)
    give_up_at = time.monotonic() + KEYS_PATIENCE_SECONDS
    for e in events:
        if isinstance(e.payload, PlaceOrder | CancelOrder | RefusedCommand):
            caller: auth.Principal | auth.Unauthorized | auth.KeysUnavailable
            try:
                if verifier is None:
                    caller = auth.UNAUTHENTICATED
                else:
                    caller = await _principal(verifier, e.payload, give_up_at)
            except auth.Unauthorized as refused:
                caller = refused
            except auth.KeysUnavailable as away:
                caller = away
            e.payload.authenticated(caller)


async def _principal(verifier: auth.TokenVerifier, command: Any, give_up_at: float) -> auth.Principal:
    """The command's caller, its keys asked for again until ``give_up_at`` (monotonic
    seconds) and once more at least."""
    left = give_up_at - time.monotonic()
    if left <= 0:  # the batch's patience is spent: once, as it is
        return await verifier.principal_of(command.authorization)
    return await _retry["policy"].until(
        lambda: verifier.principal_of(command.authorization),
        lambda exc: isinstance(exc, auth.KeysUnavailable),
        give_up_after=left,
    )


def decode_command(record: Record) -> Envelope[Any]:
    """A record of ``orders.commands`` (``events.commands.to_envelope``), with the bearer
    tokens of its ``authorization`` headers (one, unless the sender sent more). The name is
    matched in any case, as HTTP's is (a client copying ``Authorization`` from its HTTP
    calls was told its token was missing), and a value that is not UTF-8 is kept, mangled,
    so that it is refused as an invalid token rather than taken for none."""
    tokens = [
        v.decode("utf-8", "replace")
        for k, v in record.headers
        if k.lower() == commands.AUTHORIZATION and v is not None
    ]
    return commands.to_envelope(record.value, tokens, record.key)


def save(uow: UnitOfWork, state: Orders) -> None:
    placed = [(oid, o) for oid, o in state.orders.items() if o.placed is not None]
    if placed:
        uow.write(
            (
                "INSERT INTO orders (order_id, customer_id, status, reason, idempotency_key, request_hash,"
                " deadline_at, trace_context, command_id, cancel_command_id)"
                " SELECT o, c, s, r, k, h, d, t, cmd, x FROM json_to_recordset(CAST(%(rows)s AS json))"
                " AS v(o uuid, c text, s text, r text, k text, h text, d timestamptz, t text, cmd uuid,"
                " x uuid) ON CONFLICT (order_id) DO NOTHING"
            ),
            {
                "rows": sql.rows(
                    {
                        "o": oid,
                        "c": o.customer_id,
                        "s": o.status.value,
                        "r": o.reason,
                        "k": f"command:{o.command_id}",
                        "h": o.request_hash,
                        "d": o.deadline_at,
                        "t": o.traceparent,
                        "cmd": o.command_id,
                        # cancelled in the batch that placed it: its CancelOrder's id is
                        # used, as ``changed`` records it for an order placed before
                        "x": o.cancel_command_id,
                    }
                    for oid, o in placed
                )
            },
        )
        uow.write(
            (
                "INSERT INTO order_items (order_id, line_no, product_id, quantity)"
                " SELECT o, n, p, q FROM json_to_recordset(CAST(%(rows)s AS json))"
                " AS v(o uuid, n int, p text, q int) ON CONFLICT DO NOTHING"
            ),
            {
                "rows": sql.rows(
                    {"o": oid, "n": n, "p": line.product_id, "q": line.quantity}
                    for oid, o in placed
                    if o.placed is not None
                    for n, line in enumerate(o.placed.items, 1)
                )
            },
        )
    never_placed = [{"o": oid, "c": o.customer_id} for oid, o in state.orders.items() if o.never_placed]
    if never_placed:
        uow.write(
            (
                "INSERT INTO orders (order_id, customer_id, status, reason, deadline_at)"
                " SELECT o, c, 'CANCELLED', 'unknown_order', now()"
                " FROM json_to_recordset(CAST(%(rows)s AS json)) AS v(o uuid, c text)"
                " ON CONFLICT (order_id) DO NOTHING"
            ),
            {"rows": sql.rows(never_placed)},
        )
    changed = [
        {"o": oid, "s": o.status.value, "r": o.reason, "t": o.total, "c": o.cancel_command_id}
        for oid, o in state.orders.items()
        if o.changed and o.placed is None
    ]
    if changed:
        uow.write(
            (
                "UPDATE orders o SET status = v.s, reason = v.r, total = v.t, updated_at = clock_timestamp(),"
                " cancel_command_id = COALESCE(v.c, o.cancel_command_id)"
                f" FROM {sql.recordset('o uuid, s text, r text, t numeric, c uuid')}"
                " WHERE o.order_id = v.o"
            ),
            {"rows": sql.rows(changed)},
        )
    prices = [{"o": oid, "p": pid, "u": u} for oid, o in state.orders.items() for pid, u in o.prices.items()]
    if prices:
        uow.write(
            (
                "UPDATE order_items i SET unit_price = v.u"
                f" FROM {sql.recordset('o uuid, p text, u numeric')}"
                " WHERE i.order_id = v.o AND i.product_id = v.p"
            ),
            {"rows": sql.rows(prices)},
        )
    audit.append(uow, state.audit_entries)
    if state.commands_taken:
        uow.after_commit(lambda: _log_commands(state.commands_taken))
    if state.refusals or state.unknown_cancels:
        # the order service's consumer claims under its name, which is its events' producer
        inbox.release(uow, PRODUCER, [event_id for event_id, _ in state.refusals] + state.unknown_cancels)
    for _, refusal in state.refusals:
        uow.after_commit(partial(admission.count, refusal))
    moves = [sagametrics.Move(oid, *m, o.placed_at) for oid, o in state.orders.items() for m in o.moves]
    sagametrics.OUTCOMES.committed_with(uow, moves)


def _log_commands(taken: Sequence[tuple[uuid.UUID, str, str, uuid.UUID, str]]) -> None:
    """One INFO line per command taken, with its id: a command is found in the logs."""
    for command_id, command_type, actor, order_id, outcome in taken:
        log.info(
            "command %s (%s by %s) on order %s: %s",
            command_id,
            command_type,
            actor,
            order_id,
            outcome,
            extra={"order_id": order_id},
        )


def observe(uow: UnitOfWork, deliveries: Sequence[Delivery], state: Orders | None) -> None:
    """Every participant event and command joins its saga's timeline, a customer's command
    with who sent it (her token's subject); a command from a stranger (``Orders.strangers``) is
    recorded as one, and left out of the timeline shown (``order_svc.timeline``)."""
    if state is None:
        timeline.record(uow, deliveries)
        return
    # a customer's only: a customer whose id is an operator's subject read that operator's
    # commands, with other customers' orders' status (an attack trial)
    senders = {
        e: c.subject for e, c in state.callers.items() if isinstance(c, auth.Principal) and not c.operator
    }
    timeline.record(uow, deliveries, state.strangers, senders)


def command_id_lock(event: Envelope[Any]) -> tuple[uuid.UUID, ...]:
    """A command's lock besides its order's: the one of the order its id would place
    (``order_id_for``), so that commands under one id are judged in turn whatever orders
    they name — a command id is used once. Without it, two ``CancelOrder`` under one id
    naming two orders, in two instances' batches at once, both found the id free. A
    ``PlaceOrder`` names that order already."""
    if isinstance(event.payload, CancelOrder | RefusedCommand):
        return (order_id_for(event.payload.command_id),)
    return ()


reactions: Reactions[Orders] = Reactions(
    load, save, observe=observe, prepare=authenticate, also_locks=command_id_lock
)


def _move(order: Order, event: Envelope[Any], reason: str | None) -> Reply | None:
    """Apply the status transition ``event`` causes, if any; return the event that
    announces it. A reply after the deadline cancels the order as the sweeper would
    (``domain``: a deadline is a promise)."""
    new = transition(order.status, event.event_type, overdue=order.overdue)
    if new is None:
        return None
    if new is OrderStatus.CANCELLED:
        order.move(new, "timeout")
        return order.correlated(OrderCancelled(customer_id=order.customer_id, reason="timeout"))
    order.move(new, reason)
    if new is OrderStatus.APPROVED:
        return order.correlated(OrderApproved(customer_id=order.customer_id))
    return order.correlated(OrderRejected(customer_id=order.customer_id, reason=reason or "rejected"))


@reactions.on(InventoryReserved)
def on_inventory_reserved(state: Orders, event: Envelope[InventoryReserved]) -> Replies:
    """Record the prices inventory quoted, so the order shows its total early — once the
    reservation is checked against the order: its customer, every product and quantity
    ordered, and the amount charged if payment answered first (that its total is the sum of
    its lines is checked on decoding)."""
    order = state.orders.get(event.order_id)
    if order is None:
        return _never_placed(state, event)
    if order.reason == "unknown_order":
        return []  # recorded from an answer (_never_placed): its lines were never known here
    order.check(event)
    reserved = event.payload
    quantities = {line.product_id: line.quantity for line in reserved.lines}
    if quantities != order.items:
        raise FactMismatch(f"InventoryReserved holds {quantities}, the order is for {order.items}")
    if order.total is not None and order.total != reserved.total:
        raise FactMismatch(f"InventoryReserved's total {reserved.total}, but {order.total} was charged")
    order.total, order.changed = reserved.total, True
    order.prices.update({line.product_id: line.unit_price for line in event.payload.lines})
    return []


@reactions.on(InventoryReservationFailed)
def on_reservation_failed(state: Orders, event: Envelope[InventoryReservationFailed]) -> Replies:
    order = state.get(event)
    order.check(event)
    announced = _move(order, event, event.payload.reason)
    return [announced] if announced else []


@reactions.on(PaymentCompleted)
def on_payment_completed(state: Orders, event: Envelope[PaymentCompleted]) -> Replies:
    """Approve the order — once the charge is checked: its customer, and an amount that is
    the order's total (when inventory's quote arrived first)."""
    order = state.orders.get(event.order_id)
    if order is None:
        return _never_placed(state, event)
    order.check(event)
    if order.total is not None and event.payload.amount != order.total:
        raise FactMismatch(
            f"PaymentCompleted charged {event.payload.amount}, the order's total is {order.total}"
        )
    announced = _move(order, event, None)
    if announced is not None and order.status is OrderStatus.APPROVED:
        order.total = event.payload.amount
    return [announced] if announced else []


def _never_placed(state: Orders, event: Envelope[InventoryReserved] | Envelope[PaymentCompleted]) -> Replies:
    """A participant holds something (stock reserved, money charged) for an order this
    service never placed: its row is not here, and an order's row commits with its
    ``OrderCreated``. So an ``OrderCreated`` this service did not write reached the
    participants — signed with its key by someone who should not have it, or the orders
    table was restored from a backup that lost the order. Nothing may stay held for it:
    the order is recorded as CANCELLED (``unknown_order``, its customer the reply's) and
    cancelled, and the participants compensate as for any cancellation. Later replies
    about it find it cancelled, as for any cancelled order. A reply that holds nothing (a
    failure) is still refused as an event for an unknown order."""
    reason: CancelReason = "unknown_order"
    customer = event.payload.customer_id
    order = state.orders[event.order_id] = Order(
        OrderStatus.CANCELLED, customer, overdue=False, reason=reason, total=None, never_placed=True
    )
    order.moves.append((None, OrderStatus.CANCELLED, reason))  # counted like any transition
    log.warning(
        "%s for order %s, which this service never placed: recorded as CANCELLED (%s) and cancelled,"
        " so that the participants give back what they hold for it",
        event.event_type,
        event.order_id,
        reason,
    )
    return [OrderCancelled(customer_id=customer, reason=reason)]


@reactions.on(PaymentFailed)
def on_payment_failed(state: Orders, event: Envelope[PaymentFailed]) -> Replies:
    order = state.get(event)
    order.check(event)
    announced = _move(order, event, event.payload.reason)
    return [announced] if announced else []


# -- commands (orders.commands): the Kafka door to what the HTTP API does ------------------


def _audited(
    state: Orders, event: Envelope[Any], replies: Replies, command_type: str | None = None
) -> Replies:
    """``replies``, once the command ``event`` is noted for the log (INFO, with its command
    id, after the commit: ``_log_commands``) and for the audit trail (``saga_kit.audit``)
    as the HTTP call it stands for would be: who (its token's subject and roles;
    ``anonymous`` without a valid token), what (``PlaceOrder via orders.commands``), on
    which order, and how it ended: ``accepted``, ``done before`` (the same command again) or
    ``refused: <reason>``. A refused ``CancelOrder`` is entered under the order it named,
    as the HTTP call's 404 is under its path. ``command_type``: what it was meant to be,
    for one refused as it was read (default: its event type)."""
    caller = state.callers.get(event.event_id)
    principal = caller if isinstance(caller, auth.Principal) else None  # else refused for its token
    kind = command_type or event.event_type
    call = audit.caller_audit(principal, f"{kind} via {COMMANDS}")
    refusals = [r.payload for r in replies if isinstance(r, Reply) and isinstance(r.payload, CommandRejected)]
    outcome = f"refused: {refusals[0].reason}" if refusals else "accepted" if replies else "done before"
    owner = _owner(state, event)
    if (
        principal is None
        or owner is None
        or not principal.may_act_for(owner)
        or _for_another(event, owner, principal)
    ):
        state.strangers.add(event.event_id)
    state.audit_entries.append(call.entry(f"/orders/{event.order_id}", outcome))
    state.commands_taken.append((event.payload.command_id, kind, call.actor, event.order_id, outcome))
    return replies


#: What to do about a command refused as a reused command id: the id is taken for good,
#: so sending it again under the same one can only be refused again.
_UNDER_A_NEW_ID = "send yours again under a new one"
#: Why a command under another's command id is refused: no more than that. The kind of
#: command holding it ("placed another order", "used by a CancelOrder") was named, and
#: its sender reads its refusal (an attack trial).
ANOTHER_COMMANDS_ID = f"this command_id is another command's: {_UNDER_A_NEW_ID}"


def _for_another(event: Envelope[Any], owner: str, sender: auth.Principal) -> bool:
    """Whether ``event`` is a ``PlaceOrder`` for another customer than ``owner``, whose
    order its command id names: refused (``command_id_reused``), and no part of her saga,
    though its sender (an operator) may act for her — shown, it told her of another
    customer's order (an attack trial, of command ids a client derived from its keys). A
    command that could not be read (``RefusedCommand``) names no customer to compare; its
    order is the one its id would place, so under an existing order it reused the id that
    placed it: hers only when she sent it (an operator's, with another customer's details
    in its refusal, was shown in her timeline: a trial)."""
    if isinstance(event.payload, RefusedCommand):
        return sender.subject != owner
    return isinstance(event.payload, PlaceOrder) and event.payload.customer_id != owner


def _owner(state: Orders, event: Envelope[Any]) -> str | None:
    """The customer whose order the command ``event`` is about: its order's, or for a
    ``PlaceOrder`` whose order does not exist (yet: refused by admission, placed when
    sent again) the customer its id is reserved for (``Orders.reserved_ids``), else the one it
    is placed for; None when there is no such order."""
    order = state.orders.get(event.order_id)
    if order is not None:
        return order.customer_id
    if isinstance(event.payload, PlaceOrder):
        return state.reserved_ids.get(event.payload.command_id, event.payload.customer_id)
    return None


@reactions.on(PlaceOrder)
def on_place_order(state: Orders, event: Envelope[PlaceOrder]) -> Replies:
    """Step 1 from Kafka: the same decision as ``POST /orders`` (``order_svc.placing``). The
    order's id derives from the command id, so the same command twice finds its order:
    the same body again does nothing, another body is refused. Audited (``_audited``)."""
    return _audited(state, event, _place(state, event))


def _place(state: Orders, event: Envelope[PlaceOrder]) -> Replies:
    command = event.payload
    caller = _caller(state, event)
    if isinstance(caller, Reply):
        return [caller]
    if not caller.may_act_for(command.customer_id):
        detail = "a customer may place orders for itself only"
        return [_rejected(command.command_id, "PlaceOrder", "forbidden", detail)]
    if state.used_command_ids.get(command.command_id, ("PlaceOrder",))[0] != "PlaceOrder":
        return [_rejected(command.command_id, "PlaceOrder", "command_id_reused", ANOTHER_COMMANDS_ID)]
    requested = request_hash(command.customer_id, command.items, command.deadline_seconds)
    existing = state.orders.get(event.order_id)
    if existing is not None:
        if existing.request_hash == requested:
            return []  # placed before: nothing to do again
        detail = ANOTHER_COMMANDS_ID
        if existing.customer_id == command.customer_id:  # hers: the same id, another body
            detail = f"this command_id placed your order with another body: {_UNDER_A_NEW_ID}"
        return [_rejected(command.command_id, "PlaceOrder", "command_id_reused", detail)]
    if state.reserved_ids.setdefault(command.command_id, command.customer_id) != command.customer_id:
        return [_rejected(command.command_id, "PlaceOrder", "command_id_reused", ANOTHER_COMMANDS_ID)]
    seconds = command.deadline_seconds or _defaults["deadline_seconds"]
    refusal = admission.judge(
        state.backlog or admission.Backlog(0, 0.0, 0.0),
        seconds,
        headroom=_admission["headroom"],
        min_pending=int(_admission["min_pending"]),
    )
    if refusal is not None:  # as POST /orders answers 503: an order that cannot finish in time
        state.refusals.append((event.event_id, refusal))
        reason = "broker_unavailable" if refusal.broker else "overloaded"
        detail = f"{refusal.detail} (after {refusal.retry_after} s, under the same command_id)"
        return [_rejected(command.command_id, "PlaceOrder", reason, detail)]
    deadline_at = datetime.now(UTC) + timedelta(seconds=seconds)
    order = Order(
        OrderStatus.PENDING,
        command.customer_id,
        overdue=False,
        reason=None,
        total=None,
        command_id=command.command_id,
        request_hash=requested,
        placed=command,
        traceparent=tracing.current_traceparent(),
        deadline_at=deadline_at,
    )
    state.orders[event.order_id] = order
    state.used_command_ids[command.command_id] = ("PlaceOrder", event.order_id)
    return [order.correlated(order_created(command.customer_id, command.items, deadline_at))]


@reactions.on(CancelOrder)
def on_cancel_order(state: Orders, event: Envelope[CancelOrder]) -> Replies:
    """c4 from Kafka: the same rule as ``POST /orders/{id}/cancel``. Audited (``_audited``)."""
    return _audited(state, event, _cancel(state, event))


def _cancel(state: Orders, event: Envelope[CancelOrder]) -> Replies:
    command = event.payload
    caller = _caller(state, event)
    if isinstance(caller, Reply):
        return [caller]
    order = state.orders.get(event.order_id)
    if order is None or not caller.may_act_for(order.customer_id):
        # another customer's order is as unknown as over HTTP (404 there); maybe not yet
        # placed: its PlaceOrder may be behind on another partition (``unknown_cancels``)
        state.unknown_cancels.append(event.event_id)
        detail = (
            f"no order {event.order_id} (if its PlaceOrder was sent just before, it may not have"
            " been read yet: send this command again, or key it as its PlaceOrder)"
        )
        return [_rejected(command.command_id, "CancelOrder", "unknown_order", detail)]
    used = state.used_command_ids.get(command.command_id)
    if used == ("CancelOrder", event.order_id):
        return []  # this command cancelled it already: nothing to do again
    # an order that cannot be cancelled says so whatever the command's id: its id checked
    # first, a customer's own settled order told whether another's id was in use (an
    # attack trial: command_id_reused there, order_not_cancellable under a fresh id)
    if transition(order.status, CANCEL_REQUESTED) is None:
        detail = f"the order is {order.status}: only a PENDING or APPROVED order can be cancelled"
        return [_rejected(command.command_id, "CancelOrder", "order_not_cancellable", detail)]
    # an id in use (a PlaceOrder's refused, to be sent again under it, included)
    if used is not None or command.command_id in state.reserved_ids:
        detail = ANOTHER_COMMANDS_ID
        if used == ("PlaceOrder", event.order_id):
            detail = f"this command_id placed this order: {_UNDER_A_NEW_ID}"
        return [_rejected(command.command_id, "CancelOrder", "command_id_reused", detail)]
    reason: CancelReason = "cancelled_by_operator" if caller.operator else "cancelled_by_customer"
    order.move(OrderStatus.CANCELLED, reason)
    order.cancel_command_id = command.command_id
    state.used_command_ids[command.command_id] = ("CancelOrder", event.order_id)
    cancelled = OrderCancelled(customer_id=order.customer_id, reason=reason)
    # in the saga's own trace, as over HTTP (``cancelling._cancel``): the command's is a link
    attributes = {"saga.order_id": str(event.order_id), "saga.cancel_reason": reason}
    with tracing.in_saga("cancel order", order.traceparent, attributes):
        return [replace(order.correlated(cancelled, command.command_id), trace=otel_context.get_current())]


def _caller(state: Orders, event: Envelope[PlaceOrder] | Envelope[CancelOrder]) -> auth.Principal | Reply:
    """Who sent the command (its token, verified by ``authenticate``), or the ``CommandRejected``
    to answer when no valid token came with it."""
    caller = state.callers[event.event_id]
    if isinstance(caller, auth.KeysUnavailable):
        raise InvalidEvent(
            f"its token could not be checked ({caller}); it was neither taken nor refused:"
            " replay it, or send it again, once the keys can be had",
            "keys_unavailable",
        )
    if isinstance(caller, auth.Unauthorized):
        detail = COMMAND_WITHOUT_A_TOKEN if caller.reason == "missing_token" else caller.detail
        return _rejected(event.payload.command_id, event.event_type, caller.reason, detail)
    return caller


#: Why a command without a token is refused, in a command's words: the HTTP door's
#: ("this endpoint needs an Authorization: Bearer token") named an endpoint and a header
#: a record does not have (an attack trial).
COMMAND_WITHOUT_A_TOKEN = (
    "a command needs a bearer token: its record's authorization header, 'Bearer <token>'"
    " (sagactl place --via kafka sends that of --token or SAGA_TOKEN)"
)


@reactions.on(RefusedCommand)
def on_refused_command(state: Orders, event: Envelope[RefusedCommand]) -> Replies:
    """A command refused as it was decoded (``decode_command``): answered, and audited
    (``_audited``) under its sender when it came with a valid token."""
    refused = event.payload
    # audited as the command it was meant to be (it was "RefusedCommand via …", a name of
    # ours the sender never wrote: an attack trial), or as an unknown one
    meant = refused.command_type if refused.command_type in commands.COMMAND_TYPES else "unknown command"
    return _audited(
        state,
        event,
        [_rejected(refused.command_id, refused.command_type, refused.reason, refused.detail)],
        meant,
    )


def _rejected(command_id: uuid.UUID, command_type: str, reason: str, detail: str) -> Reply:
    rejected = CommandRejected(command_id=command_id, command_type=command_type, reason=reason, detail=detail)
    return Reply(rejected, (("correlation_id", str(command_id).encode()),))
