"""The payment worker: takes payments that are due a provider call to the provider, and
records what it answered. Intent first, call second, result third — three steps, never
one transaction held open across the network:

1. **claim** (a transaction): the due rows (PENDING charges, REFUND_PENDING refunds whose
   ``next_attempt_at`` has come), locked with ``FOR UPDATE SKIP LOCKED`` so instances
   share them, get ``attempts + 1`` and a lease (``next_attempt_at`` moved past the
   calls: ``PaymentWorker.lease``), and the transaction commits — before any call.
   A crash after the claim leaves the row due again when the lease ends. A new charge or
   refund is claimed the same way by the consumer transaction that made it due, and handed
   to the worker once that commits (``HandOff``): no claim of its own on the hot path.
2. **call** (no transaction): ``POST /v1/charges`` or ``/v1/refunds`` with the order's
   idempotency key (``charge:{order_id}``, ``refund:{order_id}``), through the timeout and
   the circuit breaker (``payment_svc.provider``). Whatever happened before — a lost
   response, a crash between call and result, a second instance — the same key makes the
   provider answer the same charge: exactly one charge per order.
3. **record** (a transaction): the row is locked again and moved by the answer, with the
   event that says so in the same transaction (the outbox). An answer is recorded once,
   and only while its claim is the payment's latest (``attempts``, ``answered_attempt``):
   a record retried after its COMMIT landed, or a call that outlived its lease and was
   claimed again, changes nothing.

   ===================  ==============================================================
   answer               PENDING charge → / REFUND_PENDING refund →
   ===================  ==============================================================
   charged              CHARGED + PaymentCompleted; if cancelled meanwhile,
                        REFUND_PENDING + PaymentCompleted (the refund follows)
   declined (402)       DECLINED + PaymentFailed with the provider's decline code
   refunded             REFUNDED + PaymentRefunded (also when the charge was refunded
                        under another key: 409 ``charge_already_refunded``)
   unavailable          stays; due again after the retry policy's backoff (or when the
                        open breaker lets a probe through); the first time the charge
                        waits, and the first time a refund does, PaymentPending.
                        If the provider did nothing (503, 429, no connection, the
                        breaker open), ``nothing_done_calls + 1``; then, if cancelled
                        meanwhile and every call so far did nothing: VOIDED +
                        PaymentVoided
   refused (other 4xx,  stays; due again after the longest backoff; logged as an error.
   or any other status) Any 4xx but 409 was refused before anything was done: counted
                        as "nothing done" above (``nothing_done_calls + 1``; VOIDED if
                        cancelled meanwhile and every call so far did nothing); a 409,
                        a 202 or a 3xx may have charged
   ===================  ==============================================================

A charge waits as long as the provider does not answer — until the order's deadline
cancels the saga (the order service's sweeper). If every call claimed so far was
answered "nothing done" (an outage, or requests the provider refused;
``attempts = nothing_done_calls``), the cancellation
voids it: the customer sees no charge. If a call may have charged — in flight, lost in a
crash, a timeout, a lost answer, a 5xx but 503 — the cancellation finishes the charge
with the same key and refunds it, so a late charge is never kept. A refund waits for
ever: it is owed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from opentelemetry.trace import SpanKind

from events import PaymentCompleted, PaymentFailed, PaymentPending, PaymentRefunded, PaymentVoided
from events.values import printable
from payment_svc.provider import (
    Charged,
    ChargeResult,
    Declined,
    PaymentProvider,
    Refunded,
    RefundResult,
    Refused,
    Unavailable,
    cannot_have_charged,
    charge_key,
    refund_key,
)
from saga_kit import sql, tracing
from saga_kit.db import Database
from saga_kit.errors import is_transient
from saga_kit.fault_injection import crash_at
from saga_kit.retry import RetryPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Due:
    """A claimed payment: the call to make."""

    order_id: uuid.UUID
    customer_id: str
    amount: Decimal
    #: PENDING: a charge; REFUND_PENDING: a refund
    status: str
    attempts: int
    #: the saga's W3C traceparent (kept with the payment): the call is a span of its trace
    traceparent: str | None = None


#: The lease's margin, in s, over a round's calls: for the records, claims and 50 ms
#: lingers between its waves of calls. A payment handed off is taken at the latest this
#: long before its calls could outlast its lease (taken up to the lease less the calls, a
#: round's overheads ran past it, and the worker's own claim could take the row again
#: while its call waited in the line, to call it twice: a review).
LEASE_MARGIN_SECONDS = 1.0


class HandOff:
    """Payments claimed in the consumer transaction that made them due (a new charge, a
    refund), handed to this process's worker once it commits: the worker calls the provider
    at once, with no claim transaction of its own — one transaction fewer on every charge's
    path (in idle sagas' traces, the intent's handler to the call's start went from 8.3 to
    6.3 ms at p50).

    The consumer's transaction claims as ``claim`` does — ``attempts + 1`` and the worker's
    lease — so the claim's guarantees hold unchanged: a crash before the call (the process
    dies, the hand-off with it) leaves the row due again when the lease ends, and no other
    instance takes it meanwhile. A payment is handed off only while the worker will call
    at once: after the worker opened the hand-off (``open``), while its breaker is closed
    (``ready``) and fewer than ``limit`` payments wait here; otherwise it is left due, for
    ``claim``. A payment is taken only while its lease still outlasts the calls of all the
    worker may hold (``calling``: ``limit`` payments, its ``concurrency`` at a time); one
    that waited longer is passed over, not called, and its claim released (``take``,
    ``passed_over``). Half the lease, as before, let a round's calls outlive it: another
    instance then claimed the row again and called once more under the same key (a
    review)."""

    def __init__(self) -> None:
        self._lease: float | None = None
        #: how long before its lease ends a payment must be taken: the worker's calls
        self._calling = 0.0
        self._limit = 0
        self._ready: Callable[[], bool] = lambda: False
        #: (monotonic time after which it is not called, the claimed payment)
        self._due: deque[tuple[float, Due]] = deque()
        #: payments ``take`` passed over (they waited too long): never called
        self._passed_over: list[Due] = []
        #: payments a round took (from here or the table) whose call has not begun: they
        #: wait for one of the round's ``concurrency`` slots (``queue``, ``begin``)
        self._queued: dict[tuple[uuid.UUID, int], Due] = {}
        #: set by ``give``: a round with a call slot free takes them at once
        self.given = asyncio.Event()
        #: payments wait in the table behind which none is handed off (``spill``): a charge
        #: handed off past them was called first (a re-check trial: the 29th order of a
        #: burst charged 9th); the worker's claim that finds less than it asked clears it
        self.backlog = False

    def open(self, lease: float, limit: int, ready: Callable[[], bool], calling: float = 0.0) -> None:
        """Start taking payments: ``lease`` s, at most ``limit`` waiting, while ``ready()``;
        ``calling``: the longest, in s, the worker takes to call all it may hold, from
        the moment it takes one (less than ``lease``). No ``backlog`` yet: the worker's
        first look claims the table."""
        self._lease, self._limit, self._ready, self._calling = lease, limit, ready, calling
        self.backlog = False

    def close(self) -> None:
        """Stop taking payments and forget those waiting (their leases end: ``claim``)."""
        self._lease, self._limit = None, 0
        self.clear()

    def clear(self) -> None:
        """Forget the payments waiting: their rows come due again when their leases end (a
        worker that will not call them takes them to release their claims: ``drain``)."""
        self._due.clear()
        self._passed_over.clear()
        self._queued.clear()

    def drain(self) -> list[Due]:
        """Every payment handed off and not called — those waiting, and those ``take``
        passed over — to release their claims (``release``); none is left here."""
        out = [*self._passed_over, *(due for _, due in self._due)]
        self.clear()
        return out

    def queue(self, taken: Iterable[Due]) -> None:
        """The payments a round took (``take`` queues its own; the round, those it claimed
        from the table), before it calls them: until each one's call begins (``begin``)
        ``withdraw`` may still take it back."""
        self._queued.update(((d.order_id, d.attempts), d) for d in taken)

    def begin(self, due: Due) -> bool:
        """Called by the round as ``due``'s call is about to begin: False if it was taken
        back meanwhile (``withdraw``), and must not be called."""
        return self._queued.pop((due.order_id, due.attempts), None) is not None

    def withdraw(self, order_id: uuid.UUID, attempts: int) -> bool:
        """Take back the payment of ``order_id`` claimed with ``attempts`` if its call has
        not begun: waiting here, passed over, or taken by a round and waiting for a call
        slot (``queue``). True if it was; the worker will never call it. Synchronous, as
        ``take`` and ``begin`` are: on one event loop, the worker either began the call
        before this, or never will (the cancellation's void: its caller undoes the claim
        in the transaction it decides in). A round took up to ``batch`` payments and called
        ``concurrency`` at a time: those waiting for a slot were charged after their
        cancellation, then refunded (a re-check trial: 8 of 24)."""
        if self._queued.pop((order_id, attempts), None) is not None:
            return True
        for i, (_, due) in enumerate(self._due):
            if due.order_id == order_id and due.attempts == attempts:
                del self._due[i]
                return True
        for i, due in enumerate(self._passed_over):
            if due.order_id == order_id and due.attempts == attempts:
                del self._passed_over[i]
                return True
        return False

    def passed_over(self) -> list[Due]:
        """The payments ``take`` passed over since the last time asked (never called)."""
        out, self._passed_over = self._passed_over, []
        return out

    def room(self) -> tuple[int, float]:
        """(how many payments may be handed off now, the lease in s to claim them with);
        (0, 0.0) while the worker is not open or not ready, or a ``backlog`` waits in the
        table."""
        if self._lease is None or not self._ready() or self.backlog:
            return 0, 0.0
        return max(0, self._limit - len(self._due)), self._lease

    def spill(self) -> None:
        """A payment due was left in the table (no room here): it is a ``backlog``."""
        self.backlog = True

    def give(self, claimed: Iterable[Due], claimed_at: float) -> None:
        """Called once the transaction that claimed ``claimed`` committed; ``claimed_at``:
        ``time.monotonic()`` before its claim ran, where the lease starts (dated from the
        commit, which may come late, a call could outlive its lease: a review)."""
        if self._lease is None:
            return  # closed meanwhile: their leases end
        stale_at = claimed_at + self._lease - self._calling - LEASE_MARGIN_SECONDS
        self._due.extend((stale_at, d) for d in claimed)
        self.given.set()

    def take(self, n: int) -> list[Due]:
        """Up to ``n`` payments handed off, oldest first, none that waited too long (those
        are passed over: ``passed_over``, and so is every one at the front that did, ``n``
        0 too). Those taken are queued for their calls at once
        (``queue``): until each call begins, ``withdraw`` still finds it. Queued only after
        the round's next transactions, they were in neither place meanwhile, and a
        cancellation then charged and refunded them (an attack trial: 7 orders, 5-27 ms)."""
        now, out = time.monotonic(), list[Due]()
        while self._due and (len(out) < n or self._due[0][0] <= now):
            stale_at, due = self._due.popleft()
            if now < stale_at:
                out.append(due)
            else:
                self._passed_over.append(due)
        self.queue(out)
        return out

    def __len__(self) -> int:
        return len(self._due)


#: The payments waiting on the provider (charges PENDING, refunds REFUND_PENDING): the
#: predicate of the ``payments_due`` index, which a statement must repeat to be planned
#: on it (the claim below, the service's /metrics).
WAITING = "status IN ('PENDING', 'REFUND_PENDING')"


async def claim(db: Database, limit: int, lease_seconds: float, *, unannounced: bool = False) -> list[Due]:
    """Step 1: up to ``limit`` due payments, oldest due first, each with one more attempt
    and leased for ``lease_seconds``; committed before this returns. ``unannounced``: only
    those not yet said to wait (``waiting_since`` null: no PaymentPending for the current
    call, the charge's or the refund's)."""
    announced = " AND waiting_since IS NULL" if unannounced else ""
    async with db.unit_of_work() as uow:
        (rows,) = await uow.read(
            (
                "UPDATE payments p SET attempts = p.attempts + 1,"
                " next_attempt_at = clock_timestamp() + make_interval(secs => %(lease)s)"
                " FROM (SELECT order_id FROM payments"
                f"       WHERE {WAITING}"
                "       AND next_attempt_at <= now()"  # stable: bounds the payments_due index scan
                f"{announced}"
                "       ORDER BY next_attempt_at LIMIT %(n)s FOR UPDATE SKIP LOCKED) due"
                " WHERE p.order_id = due.order_id"
                " RETURNING p.order_id, p.customer_id, p.amount, p.status, p.attempts, p.traceparent",
                {"n": limit, "lease": lease_seconds},
            )
        )
        return [Due(r.order_id, r.customer_id, r.amount, r.status, r.attempts, r.traceparent) for r in rows]


async def release(db: Database, claimed: Sequence[Due], lease_seconds: float) -> int:
    """Undo the claims of payments handed off or claimed and never called (the breaker
    opened before the worker took them, the service stopped first, they waited too long):
    ``attempts - 1``, each only while its claim is still the row's latest and unanswered,
    due at once and from when it was claimed (its lease, ``lease_seconds``, taken off the
    time it was leased until), so it keeps its place in the line: due from now, it went
    behind every payment that came due since, and the first orders of a burst were
    charged last (a re-check trial). A claim counts as a call that may have charged (a cancellation then
    refunds instead of voiding, the saga waits out the lease, silent): one the worker
    knows it never made must not count (a re-check trial: orders placed as the breaker
    opened were charged and refunded after their cancellation, not voided).

    A charge cancelled meanwhile that the provider, its claim undone, cannot have made
    (``cannot_have_charged``) is voided here, as the cancellation would have voided it
    (VOIDED + PaymentVoided): its cancellation had found it claimed and left it to the
    call, which now never comes; released only, the next claim charged it and the
    refund followed (a trial: 6 of 6 orders cancelled before a stop). Returns how many
    it voided."""
    if not claimed:
        return 0
    async with db.unit_of_work() as uow:
        (released,) = await uow.read(
            (
                "UPDATE payments p SET attempts = p.attempts - 1, next_attempt_at = LEAST("
                " clock_timestamp(), p.next_attempt_at - make_interval(secs => %(lease)s))"
                f" FROM {sql.recordset('o uuid, n int, s text')}"
                " WHERE p.order_id = v.o AND p.attempts = v.n AND p.status = v.s"
                " AND p.answered_attempt < v.n"
                " RETURNING p.order_id, p.customer_id, p.status, p.reason, p.cancel_requested,"
                " p.attempts, p.nothing_done_calls, p.refund_cause, p.traceparent",
                {
                    "rows": sql.rows({"o": d.order_id, "n": d.attempts, "s": d.status} for d in claimed),
                    "lease": lease_seconds,
                },
            )
        )
        voided = [
            r
            for r in released
            if r.status == "PENDING"
            and r.cancel_requested
            and cannot_have_charged(r.attempts, r.nothing_done_calls)
        ]
        for r in voided:
            uow.emit(
                PaymentVoided(customer_id=r.customer_id, reason=r.reason),
                order_id=r.order_id,
                causation_id=r.refund_cause,
                trace=tracing.from_traceparent(r.traceparent),
            )
        if voided:
            uow.write(
                (
                    "UPDATE payments SET status = 'VOIDED', waiting_since = NULL,"
                    f" updated_at = clock_timestamp() WHERE order_id IN {sql.UUIDS}"
                ),
                {"ids": sql.values(r.order_id for r in voided)},
            )
    return len(voided)


async def call(provider: PaymentProvider, due: Due) -> ChargeResult | RefundResult:
    """Step 2: the provider call for ``due``, with the order's idempotency key — a CLIENT
    span ``payment provider charge`` (or ``refund``) of the saga's trace, whose context the
    request carries on (``traceparent``), with the attempt and what came of it.

    A call that raises (a bug, an error the HTTP client was not known to raise) is
    answered ``Unavailable`` with ``nothing_done`` false and logged with its traceback: the
    request may have reached the provider, so the charge is in doubt and asked again under
    the same key; the other calls of the round are recorded all the same."""
    operation = "charge" if due.status == "PENDING" else "refund"
    with tracing.span(
        f"payment provider {operation}",
        kind=SpanKind.CLIENT,
        parent=tracing.from_traceparent(due.traceparent),
        attributes={"saga.order_id": str(due.order_id), "payment.attempt": due.attempts},
    ) as span:
        answer: ChargeResult | RefundResult
        try:
            if operation == "charge":
                answer = await provider.charge(
                    charge_key(due.order_id), due.customer_id, due.amount, str(due.order_id)
                )
            else:
                answer = await provider.refund(refund_key(due.order_id), charge_key(due.order_id))
        except Exception as exc:
            log.exception("payment %s: the %s call raised; in doubt, asked again", due.order_id, operation)
            answer = Unavailable(
                printable(f"the {operation} call raised {type(exc).__name__}: {exc}", 1000),
                nothing_done=False,
            )
        span.set_attribute("payment.outcome", type(answer).__name__.lower())
        return answer


async def record(
    db: Database,
    provider: PaymentProvider,
    retry: RetryPolicy,
    answers: list[tuple[Due, ChargeResult | RefundResult]],
) -> int:
    """Step 3: the answers that came together (``PaymentWorker.round`` records them as they
    come) in one transaction, each row locked again (a
    cancellation may have changed it while the call was out). Returns how many payments
    it left due at once: refunds owed for charges that landed after their cancellation."""
    refunds = 0
    async with db.unit_of_work() as uow:
        (locked,) = await uow.read(
            (
                "SELECT order_id, customer_id, amount, status, reason, cancel_requested, attempts,"
                " answered_attempt, nothing_done_calls, waiting_since, charge_cause, refund_cause,"
                " traceparent FROM payments"
                f" WHERE order_id IN {sql.UUIDS} ORDER BY order_id FOR UPDATE",
                {"ids": sql.values(due.order_id for due, _ in answers)},
            )
        )
        rows = {r.order_id: r for r in locked}
        updates: list[dict[str, Any]] = []
        for due, answer in answers:
            row = rows.get(due.order_id)
            if (
                row is None
                or row.status != due.status  # decided meanwhile (e.g. voided)
                or row.attempts != due.attempts  # claimed again since (a lease outlived)
                or row.answered_attempt >= due.attempts  # recorded already (a retried record)
            ):
                continue  # a stale answer: the claim that is the row's latest answers for it
            trace = tracing.from_traceparent(row.traceparent)

            def emit(
                payload: Any,
                cause: uuid.UUID | None,
                order_id: uuid.UUID = due.order_id,
                trace: Any = trace,
            ) -> None:
                uow.emit(payload, order_id=order_id, causation_id=cause, trace=trace)

            update: dict[str, Any] = {"o": due.order_id, "n": due.attempts}
            match answer:
                case Charged(charge_id=charge_id):
                    emit(PaymentCompleted(customer_id=row.customer_id, amount=row.amount), row.charge_cause)
                    status = "REFUND_PENDING" if row.cancel_requested else "CHARGED"
                    refunds += status == "REFUND_PENDING"
                    update |= {"s": status, "c": charge_id, "d": 0.0}
                case Declined(reason=reason):
                    emit(
                        PaymentFailed(customer_id=row.customer_id, amount=row.amount, reason=reason),
                        row.charge_cause,
                    )
                    update |= {"s": "DECLINED", "r": reason}
                case Refunded(refund_id=refund_id):
                    emit(PaymentRefunded(customer_id=row.customer_id, amount=row.amount), row.refund_cause)
                    update |= {"s": "REFUNDED", "f": refund_id}
                case Unavailable(nothing_done=True) | Refused(nothing_done=True) if (
                    due.status == "PENDING"
                    and row.cancel_requested
                    and cannot_have_charged(row.attempts, row.nothing_done_calls + 1)
                ):
                    # cancelled while this call was out, and every call, this one counted,
                    # did nothing: nothing to finish, nothing to refund
                    emit(PaymentVoided(customer_id=row.customer_id, reason=row.reason), row.refund_cause)
                    update |= {"s": "VOIDED", "z": 1}
                case Unavailable(reason=reason, nothing_done=nothing_done):
                    wait = max(retry.delay(due.attempts), provider.retry_after())
                    update |= _waiting(row, due, reason, wait, nothing_done, emit)
                case Refused(status=code, reason=reason, nothing_done=nothing_done):
                    log.error(
                        "payment provider refused the %s of order %s (%d %s): retrying in %.0f s",
                        "charge" if due.status == "PENDING" else "refund",
                        due.order_id,
                        code,
                        reason,
                        retry.maximum,
                    )
                    refusal = f"refused: {code} {reason}"
                    update |= _waiting(row, due, refusal, retry.maximum, nothing_done, emit)
            updates.append(
                {"s": None, "r": None, "c": None, "f": None, "e": None, "d": None, "w": False, "z": 0}
                | update
            )
        if updates:
            # one statement for the answers recorded together, sent with their outbox rows
            # in one round trip
            uow.write(
                (
                    "UPDATE payments p SET status = COALESCE(v.s, p.status),"
                    " reason = COALESCE(v.r, p.reason), answered_attempt = v.n,"
                    " nothing_done_calls = p.nothing_done_calls + v.z,"
                    " charge_id = COALESCE(v.c, p.charge_id), refund_id = COALESCE(v.f, p.refund_id),"
                    " last_error = v.e,"
                    # the current call's wait: kept while it waits, ended by an answer
                    # that settles it (a refund's wait is its own, announced again)
                    " waiting_since = CASE WHEN v.w THEN COALESCE(p.waiting_since, clock_timestamp()) END,"
                    " next_attempt_at = CASE WHEN v.d IS NULL THEN p.next_attempt_at"
                    "   ELSE clock_timestamp() + make_interval(secs => v.d) END,"
                    " updated_at = clock_timestamp() FROM "
                    + sql.recordset(
                        "o uuid, n int, s text, r text, c text, f text, e text, d float8, w bool, z int"
                    )
                    + " WHERE p.order_id = v.o"
                ),
                {"rows": sql.rows(updates)},
            )
    return refunds


def _waiting(
    row: Any, due: Due, reason: str, wait: float, nothing_done: bool, emit: Callable[[Any, Any], None]
) -> dict[str, Any]:
    """The update of a call that settled nothing: due again in ``wait`` s, counted as
    "nothing done" or not. The first time the charge waits, and the first time a refund
    does, PaymentPending says why (a refund's reason starts with ``refund:``): a refund
    waiting through an outage was otherwise silent in the saga's timeline (a trial)."""
    if row.waiting_since is None:
        refund = due.status == "REFUND_PENDING"
        emit(
            PaymentPending(
                customer_id=row.customer_id,
                amount=row.amount,
                since=datetime.now(UTC),
                reason=printable(f"refund: {reason}" if refund else reason, 500),
            ),
            row.refund_cause if refund else row.charge_cause,
        )
    return {"e": reason, "d": wait, "w": True, "z": int(nothing_done)}


#: How long, in s, an answer waits for the answers of the other calls out to be recorded
#: with it in one transaction (a group commit's window, as PostgreSQL's ``commit_delay``
#: or a producer's ``linger.ms``): calls begun together answer within a few ms of each
#: other, and a call answered alone is recorded at once. With 5 ms, under a burst the
#: record transactions were smaller and more: the payment service's CPU per saga rose by
#: ~0.4 ms (``make bench``, alternating pairs); with 50 ms it is within the noise of the
#: rounds before, and a slow provider's answer still waits at most 50 ms.
RECORD_LINGER_SECONDS = 0.05


class PaymentWorker:
    """Claim, call, record, with at most ``concurrency`` calls out at once. A round holds
    at most ``batch`` payments taken and not answered, and keeps its call slots full: as a
    call's answer comes, the answers come since are recorded together in one transaction
    (group commit: ``RECORD_LINGER_SECONDS``) and the freed slots take what is due next,
    so a charge handed off while calls are out begins as soon as a slot is free, whatever
    the slowest call out. A round ends when no call is out and nothing more is due that it
    may take now. It called a batch and waited for the batch's last answer before
    recording any or taking more: behind a provider answering in 1.5 s a charge handed off
    during a round waited for the round first, and its saga took ~3 s (a trial).

    While the breaker is open a round calls nobody: it says which payments that came due
    wait (``_announce``); half-open, it claims one payment, the breaker's probe, and goes on
    only if the probe closed it.

    With ``handoff`` a round takes what the consumer handed off claimed (``HandOff``),
    and claims from the table when nothing was handed off, when its last claim took all
    it asked for (more may be due), or when that claim is ``claim_every`` s old; a claim of
    the table that is due has half the round's room: retries coming due and refunds owed
    are not starved by a steady stream of new charges, nor the charges handed off by a
    backlog in the table."""

    def __init__(
        self,
        db: Database,
        provider: PaymentProvider,
        retry: RetryPolicy,
        *,
        batch: int,
        concurrency: int,
        fault: str | None = None,
        handoff: HandOff | None = None,
        claim_every: float = 0.0,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.db, self.provider, self.retry = db, provider, retry
        self.batch, self.concurrency = batch, concurrency
        #: fault injection (tests): ``payment.crash_after_claim`` dies between the claim and
        #: the call, ``payment.crash_after_call`` between the provider's answer and its record
        self.fault = fault
        #: a claim's lease: long enough for the calls of all a round holds — ``batch``
        #: payments taken and not answered, at most ``concurrency`` at a time, each within
        #: the timeout — the time a payment handed off may wait to be taken (the timeout)
        #: and a margin, so a live call is not claimed again (if it is, its answer is
        #: stale: ``record``)
        calling = provider.timeout * math.ceil(batch / concurrency)
        self.lease = calling + provider.timeout + LEASE_MARGIN_SECONDS
        self.handoff, self.claim_every = handoff, claim_every
        #: called when a round left a payment due at once (the next round follows now)
        self.wake = wake
        self._claimed_at = -math.inf
        #: the last claim from the table took all it asked for: more may be due
        self._table_full = False
        #: whether the table had the odd one of the room it last shared with the hand-off
        self._odd_to_table = False
        #: set by ``finish``: no call not yet begun is made
        self.stopping = False
        if handoff is not None:
            handoff.open(self.lease, batch, lambda: provider.state == "closed", calling)

    async def round(self) -> int:
        """Calls until none is out and nothing is left it may take now (the table's claim
        not yet due again: the next round, woken or at the poll interval, takes it);
        returns how many calls it made and recorded (after ``finish``, the calls already
        out; the rest it released)."""
        if self.handoff is not None and self.provider.state != "closed":
            await self._release(self.handoff.drain())  # not to be called now: due again
        if self.provider.state == "open":
            return await self._announce()
        out: set[asyncio.Task[tuple[Due, ChargeResult | RefundResult | None]]] = set()
        #: taken or claimed, each waiting for a call slot (``HandOff.queue``: ``withdraw``
        #: still finds it)
        waiting: deque[Due] = deque()
        made, first = 0, True
        try:
            while True:
                started = await self._start(out, waiting, first)
                if first and not started and self.provider.state == "half_open" and not self.stopping:
                    await self.provider.probe()  # nothing to probe with: the breaker must still close
                first = False
                if not out:  # stopping, or the breaker opened: the rest is not called now
                    unbegun = [d for d in waiting if self._begin(d)]
                    waiting.clear()
                    await self._release(unbegun)
                    return made
                await self._wait(out, waiting)
                if any(t.done() for t in out) and not all(t.done() for t in out):
                    await asyncio.wait(out, timeout=RECORD_LINGER_SECONDS)  # the group commit's window
                done = {t for t in out if t.done()}
                out -= done
                results = [t.result() for t in done]
                answers = [(d, a) for d, a in results if a is not None]
                if answers:
                    crash_at(self.fault, "payment.crash_after_call")
                    await self._record(answers)
                    made += len(answers)
                await self._release([d for d, a in results if a is None])
        finally:
            for task in out:  # a failure or a cancel: their payments wait out their leases
                task.cancel()
            for d in waiting:
                self._begin(d)  # never to be called: nothing for ``withdraw`` to take back

    async def _start(self, out: set[asyncio.Task[Any]], waiting: deque[Due], first: bool) -> int:
        """Take what is due into ``waiting``, up to ``batch`` taken and not answered: what
        was handed off, and from the table when its claim is due (``claim_every`` s since
        the last, a last claim that took all it asked for, or a first look with nothing
        handed off), which then shares the room with the hand-off — half each, the odd one
        to each in turn — and takes what the hand-off leaves, and the hand-off what it
        leaves. Begin
        as many calls as slots are free, each a task in ``out``; returns how many it
        began."""
        state = self.provider.state
        if self.stopping or state == "open" or (state == "half_open" and not first):
            return 0
        room = (self.batch if state == "closed" else 1) - len(out) - len(waiting)
        if room <= 0:
            await self._take(waiting, 0, state)  # only to release those that waited too long
            return self._begin_calls(out, waiting, state)
        backlog = self._table_full or (self.handoff is not None and self.handoff.backlog)
        table_due = backlog or time.monotonic() - self._claimed_at >= self.claim_every
        # the table's claim due, half the room is its: retries, refunds owed and payments
        # released are not starved by a stream of new charges handed off. The odd one goes
        # to each in turn: the table's every time, at one slot free behind a backlog in the
        # table, a payment handed off was never taken (an attack trial)
        table_share = room // 2
        if room % 2:
            self._odd_to_table = not self._odd_to_table
            table_share += self._odd_to_table
        taken = await self._take(waiting, room - table_share if table_due else room, state)
        room -= taken
        if room > 0 and (table_due or (first and not taken)):
            claimed = await self.retry.forever(lambda: claim(self.db, room, self.lease), is_transient)
            self._claimed_at, self._table_full = time.monotonic(), len(claimed) == room
            if self.handoff is not None:
                # while the table holds more than the round takes, nothing is handed off
                # past it: a new charge waits in its turn (``HandOff.backlog``)
                self.handoff.backlog = self._table_full
                self.handoff.queue(claimed)  # not those taken: one taken back is not queued again
            # at the back of the line, first come first called: each one taken is called
            # within its lease. Put at the front, every claim overtook those already taken,
            # and with one slot the line ran last in first out: payments taken first waited
            # out their leases, were claimed again and called twice (an attack trial)
            waiting.extend(claimed)
            await self._take(waiting, room - len(claimed), state)  # the room the table left
        return self._begin_calls(out, waiting, state)

    async def _take(self, waiting: deque[Due], n: int, state: str) -> int:
        """Up to ``n`` payments handed off into ``waiting`` (queued for their calls by
        ``HandOff.take``), those passed over released — with ``n`` 0 too: one left
        waiting past its time while a round had no room for it kept its claim until its
        lease ended, then was claimed again, in doubt, and a cancellation charged and
        refunded it (an attack trial); released, it is due at once, as never claimed.
        Returns how many it took."""
        if self.handoff is None or state != "closed":
            return 0
        if n > 0:
            self.handoff.given.clear()  # given from now on wakes ``_wait``
        taken = self.handoff.take(n)
        waiting.extend(taken)
        await self._release(self.handoff.passed_over())
        return len(taken)

    def _begin_calls(self, out: set[asyncio.Task[Any]], waiting: deque[Due], state: str) -> int:
        """Begin as many calls from ``waiting`` as slots are free, each a task in ``out``
        (one that ``finish`` or a cancellation's ``withdraw`` got to first is not called:
        answered None); returns how many."""
        slots = (self.concurrency if state == "closed" else 1) - len(out)
        begun = [waiting.popleft() for _ in range(min(slots, len(waiting)))]
        if begun:
            crash_at(self.fault, "payment.crash_after_claim")

        async def one(d: Due) -> tuple[Due, ChargeResult | RefundResult | None]:
            if not self._begin(d) or self.stopping:  # taken back meanwhile, or stopping
                return d, None  # not called: released (a void's already undone)
            return d, await call(self.provider, d)

        out.update(asyncio.ensure_future(one(d)) for d in begun)
        return len(begun)

    def _begin(self, due: Due) -> bool:
        """False if ``due`` was taken back (``HandOff.withdraw``): not to be called, nor released."""
        return self.handoff is None or self.handoff.begin(due)

    async def _wait(self, out: set[asyncio.Task[Any]], waiting: deque[Due]) -> None:
        """Until a call is answered — or, while the round may take more (``_start``), a
        payment is handed off or the table's claim comes due again."""
        room = len(out) + len(waiting) < self.batch
        if self.stopping or self.provider.state != "closed" or not room:
            await asyncio.wait(out, return_when=asyncio.FIRST_COMPLETED)
            return
        # the table's next claim (none while claim_every is 0: it claims at every answer)
        timeout = None
        if self.claim_every > 0:
            timeout = max(0.0, self._claimed_at + self.claim_every - time.monotonic())
        given = None if self.handoff is None else asyncio.ensure_future(self.handoff.given.wait())
        try:
            await asyncio.wait(
                out if given is None else {*out, given}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if given is not None:
                given.cancel()

    def finish(self) -> None:
        """At the service's graceful stop, before its round is waited for: the round in
        progress makes no call not yet begun (those are released: due at once, as never
        claimed), and records the answers of the calls already out. Cancelled instead, the
        round lost them: each payment stayed claimed, in doubt, until its lease ended, and a
        cancellation meanwhile was charged and refunded instead of voided (trials: 2 of 13,
        then 15 of 15 cancelled orders). The service gives the round its ``grace``:
        ``payment_svc.runtime.finish_grace``."""
        self.stopping = True

    async def stop(self) -> None:
        """At the service's stop: the payments handed off and not taken are released
        (``release``) and the hand-off closed. Left claimed, each would wait out its lease,
        in doubt though never called, and a cancellation meanwhile would charge and refund
        it instead of voiding it. One try: the service is stopping, and a claim not
        released is still safe (its lease ends)."""
        if self.handoff is not None:
            dropped = self.handoff.drain()
            self.handoff.close()
            try:
                await release(self.db, dropped, self.lease)
            except Exception as exc:
                log.warning("payment worker: %d hand-offs left to their leases: %s", len(dropped), exc)

    async def _release(self, dropped: list[Due]) -> None:
        """``release`` the claims of payments handed off and not to be called, until it commits."""
        if dropped:
            await self.retry.forever(lambda: release(self.db, dropped, self.lease), is_transient)

    async def _announce(self) -> int:
        """While the breaker is open: the payments that came due and were not yet said to
        wait are claimed and answered at once by the open breaker, without a call (nothing
        done): each one's PaymentPending says the saga waits on the provider, and it is due
        again once the breaker lets a probe through. Those already waiting are left alone:
        the half-open breaker's probe takes them one at a time. Returns how many.

        A round that claimed nothing while the breaker was open left a burst of new orders
        silent: the sixth placed during an outage waited 26 s for its first try, its saga
        saying only that inventory had reserved (a newcomer trial)."""
        due = await claim(self.db, self.batch, self.lease, unannounced=True)
        if due:
            await self._record([(d, await call(self.provider, d)) for d in due])
        return len(due)

    async def _record(self, answers: list[tuple[Due, ChargeResult | RefundResult]]) -> None:
        """``record`` until it commits: an answer is never dropped because the database
        blinked (if the process dies instead, the lease ends and the same key replays)."""
        owed = await self.retry.forever(
            lambda: record(self.db, self.provider, self.retry, answers), is_transient
        )
        if owed and self.wake is not None:
            self.wake()  # a refund for a charge that landed after its cancellation: now, not at the next poll
