"""c4: the order service cancels a saga — on a customer's request or when its deadline
passes — and tells the participants, who compensate whatever they did (c5, c6).

There is no coordinator: the deadline is a column of the order's own row, and a sweeper
in every order-service instance cancels overdue PENDING orders. Rows are claimed with
``FOR UPDATE SKIP LOCKED``, so several instances never cancel the same order twice and
never wait on each other; a handler holding an order's row lock simply wins the race and
the sweeper sees the new status next time.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy import text

from events import OrderCancelled
from events.order import CancelReason
from events.values import printable
from order_svc.domain import CANCEL_REQUESTED, DEADLINE_PASSED, OrderStatus, transition
from order_svc.errors import OrderNotCancellable
from order_svc.sagametrics import OUTCOMES, Move
from saga_kit import audit, logs, tracing
from saga_kit.audit import CallAudit
from saga_kit.db import Database, UnitOfWork

log = logging.getLogger(__name__)


class OrderNotFound(LookupError):
    pass


async def _cancel(uow: UnitOfWork, row: Any, reason: CancelReason) -> None:
    """CANCELLED + OrderCancelled in ``uow`` for the order ``row`` (its ``order_id``,
    ``status``, ``customer_id``, ``created_at``, ``trace_context`` and ``command_id``),
    whose row lock the caller holds and whose transition it checked
    (``domain.transition``); in the saga's own trace (the caller's span is a link)."""
    with tracing.in_saga(
        "cancel order", row.trace_context, {"saga.order_id": str(row.order_id), "saga.cancel_reason": reason}
    ):
        await uow.conn.execute(
            text(
                "UPDATE orders SET status = 'CANCELLED', reason = :r, updated_at = clock_timestamp()"
                " WHERE order_id = :o"
            ),
            {"r": reason, "o": row.order_id},
        )
        uow.emit(
            OrderCancelled(customer_id=row.customer_id, reason=reason),
            order_id=row.order_id,
            causation_id=None,
            # an order placed through Kafka: its events answer the command that placed it
            headers=() if row.command_id is None else (("correlation_id", str(row.command_id).encode()),),
        )
    move = Move(row.order_id, OrderStatus(row.status), OrderStatus.CANCELLED, reason, row.created_at)
    OUTCOMES.committed_with(uow, [move])


async def cancel_order(
    db: Database, order_id: uuid.UUID, customer_id: str | None = None, call: CallAudit | None = None
) -> OrderStatus:
    """The customer cancels (with ``customer_id``: their own orders only; another
    customer's order is ``OrderNotFound``, ids do not leak), or an operator does (None:
    any order; the reason is ``cancelled_by_operator``): PENDING or APPROVED → CANCELLED;
    anything else is ``OrderNotCancellable`` (a 409). ``call``: the request's audit entry,
    appended in the cancellation's transaction, ahead of the compensation it causes."""
    async with db.unit_of_work() as uow:
        row = (
            await uow.conn.execute(
                text(
                    "SELECT order_id, status, customer_id, created_at, trace_context, command_id FROM orders"
                    " WHERE order_id = :o FOR UPDATE"
                ),
                {"o": order_id},
            )
        ).first()
        if row is None or (customer_id is not None and row.customer_id != customer_id):
            raise OrderNotFound(order_id)
        if transition(OrderStatus(row.status), CANCEL_REQUESTED) is None:
            raise OrderNotCancellable(row.status)
        reason: CancelReason = "cancelled_by_customer" if customer_id is not None else "cancelled_by_operator"
        if call is not None:
            audit.append(uow, [call.entry(f"/orders/{order_id}", "202")])
        await _cancel(uow, row, reason)
    return OrderStatus.CANCELLED


#: Overdue orders this process found it cannot cancel (``cancel_overdue``) → when (a
#: monotonic clock's seconds): skipped by later sweeps for ``UNCANCELLABLE_RETRY_SECONDS``,
#: then tried again — a row an operator mended is cancelled then, one still invalid is
#: said again. At most ``_UNCANCELLABLE_MAX``.
_uncancellable: dict[uuid.UUID, float] = {}
_UNCANCELLABLE_MAX = 10_000
UNCANCELLABLE_RETRY_SECONDS = 600.0


async def cancel_overdue(db: Database, batch: int = 200) -> int:
    """Cancel up to ``batch`` PENDING orders whose deadline has passed; return how many.

    A row whose cancellation cannot be told (its ``customer_id`` is no valid id, e.g. a
    row written by hand or kept from an older build's rules) is logged as an error, once,
    and left PENDING for an operator; the sweep goes on with the others. It used to fail
    the whole sweep, every time: one such row kept every overdue order PENDING. Such a
    row is tried again (and said again) every ``UNCANCELLABLE_RETRY_SECONDS`` (10 min),
    so a mended row is cancelled without a restart."""
    now = time.monotonic()
    for order_id, since in list(_uncancellable.items()):
        if now - since >= UNCANCELLABLE_RETRY_SECONDS:
            del _uncancellable[order_id]
    cancelled = 0
    # invalid rows met in this sweep: skipped by its next read, whether or not the
    # process-wide memory had room for them (past it they filled every batch again)
    invalid: set[uuid.UUID] = set()
    async with db.unit_of_work() as uow:
        while True:
            rows = (
                await uow.conn.execute(
                    text(
                        "SELECT order_id, status, customer_id, created_at, trace_context, command_id"
                        " FROM orders"
                        # now(), not clock_timestamp(): a volatile function cannot bound an index
                        # scan, and every PENDING order was read to find the overdue ones
                        " WHERE status = 'PENDING' AND deadline_at <= now()"
                        " AND NOT (order_id = ANY(:skip))"
                        " ORDER BY deadline_at LIMIT :n FOR UPDATE SKIP LOCKED"
                    ),
                    {"n": batch, "skip": [*_uncancellable, *invalid]},
                )
            ).all()
            found_invalid = False
            for row in rows:
                if transition(OrderStatus(row.status), DEADLINE_PASSED) is None:
                    continue
                try:
                    OrderCancelled(customer_id=row.customer_id, reason="timeout")
                except ValidationError as exc:
                    found_invalid = True
                    invalid.add(row.order_id)
                    if row.order_id in _uncancellable:
                        continue
                    if len(_uncancellable) < _UNCANCELLABLE_MAX:
                        _uncancellable[row.order_id] = now
                    log.error(
                        "order %s is overdue and cannot be cancelled: its row is invalid (%s);"
                        " it stays PENDING until an operator mends it",
                        row.order_id,
                        printable(str(exc).replace("\n", " "), 300),
                    )
                    continue
                with logs.bind(order_id=row.order_id):
                    await _cancel(uow, row, "timeout")
                cancelled += 1
            # another read only when invalid rows took places in a full batch
            if not found_invalid or len(rows) < batch or cancelled >= batch:
                break
    if cancelled:
        log.info("cancelled %d overdue orders", cancelled)
    return cancelled
