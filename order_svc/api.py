"""HTTP API of the order service. Routes decode, call one function, and answer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from opentelemetry import context as otel_context
from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, computed_field
from sqlalchemy import text
from sse_starlette import ServerSentEvent
from starlette.background import BackgroundTask

from events import OrderLine
from events.codec import InvalidEvent, peek
from events.commands import PlaceOrder, RefusedCommand, order_id_for, peek_command, to_envelope
from events.order import one_line_per_product
from events.personal import PersonalData
from events.topics import COMMANDS
from events.values import (
    MAX_ORDER_LINES,
    DeadlineSeconds,
    ExternalId,
    Money,
    SafeText,
    not_blank,
    printable,
    storable,
)
from order_svc import admission, timeline
from order_svc.admission import Admission
from order_svc.cancelling import OrderNotFound, cancel_order
from order_svc.domain import ORDER_ID_PREFIX, OrderStatus
from order_svc.explain import COMPENSATING, Refusal, explain
from order_svc.live import AWAY_COMMENT, Away, Ended, LiveResponse, LiveTimeline
from order_svc.placing import OrderDesk, Placement
from order_svc.settings import Settings
from saga_kit import audit, tracing
from saga_kit.auth import Principal
from saga_kit.http import (
    IDEMPOTENT_REPLAYED,
    IN_DIGITS,
    RETRY_AFTER,
    AnyCase,
    DatabaseDep,
    PrincipalDep,
    SettingsDep,
    errors,
    header_text,
    location,
    problem,
)
from saga_kit.personal_data import (
    DataKeyDamaged,
    KeyStore,
    KeyUnavailable,
    MasterKeyUnavailable,
    Unreadable,
    forget,
    open_sealed,
    sealed_of,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["orders"])


async def get_keystore(request: Request) -> KeyStore | None:
    """The customers' data keys (saga_kit.personal_data), or None without a master key."""
    if not hasattr(request.app.state, "keystore"):
        request.app.state.keystore = request.app.state.settings.keystore
    keystore: KeyStore | None = request.app.state.keystore
    return keystore


KeyStoreDep = Annotated[KeyStore | None, Depends(get_keystore)]


async def get_desk(request: Request, keystore: KeyStoreDep) -> OrderDesk:
    """The service's order desk (group commit of POST /orders), created on first use."""
    desk: OrderDesk | None = getattr(request.app.state, "order_desk", None)
    if desk is None:
        desk = request.app.state.order_desk = OrderDesk(request.app.state.db, keystore=keystore)
    return desk


DeskDep = Annotated[OrderDesk, Depends(get_desk)]


async def get_admission(request: Request) -> Admission:
    return admission.of(request.app)


AdmissionDep = Annotated[Admission, Depends(get_admission)]


class OrderRequest(BaseModel):
    """The body of ``POST /orders``."""

    model_config = ConfigDict(extra="forbid")

    customer_id: ExternalId
    items: Annotated[
        list[OrderLine], Field(min_length=1, max_length=MAX_ORDER_LINES), AfterValidator(one_line_per_product)
    ]
    #: How long the saga may stay PENDING before it is cancelled with reason ``timeout``;
    #: the service default (``ORDER_DEADLINE_SECONDS``, 30 s) when absent.
    deadline_seconds: DeadlineSeconds | None = None
    #: Personal data (optional): sealed with the customer's data key before it is stored
    #: or sent anywhere; unreadable everywhere once the customer is forgotten.
    email: Annotated[EmailStr, Field(max_length=254)] | None = None
    shipping_address: (
        Annotated[SafeText, Field(min_length=1, max_length=500), AfterValidator(not_blank)] | None
    ) = None

    def personal(self) -> PersonalData | None:
        if self.email is None and self.shipping_address is None:
            return None
        return PersonalData(email=self.email, shipping_address=self.shipping_address)


class OrderAccepted(BaseModel):
    order_id: uuid.UUID
    status: OrderStatus


class OrderItemView(BaseModel):
    product_id: str
    quantity: int
    unit_price: Money | None


class PersonalDataView(BaseModel):
    """An order's personal data, opened: or ``erased`` (the customer was forgotten: its
    data key is destroyed, and every copy is unreadable) with both fields null, or
    ``unreadable`` (the customer was not forgotten, but what is stored does not open: the
    sealed value or its data key was altered; the service logs which) with both null."""

    email: str | None = None
    shipping_address: str | None = None
    erased: bool = False
    unreadable: bool = False


class OrderView(BaseModel):
    order_id: uuid.UUID
    customer_id: str
    status: OrderStatus
    reason: str | None
    items: list[OrderItemView]
    total: Money | None
    deadline_at: datetime
    created_at: datetime
    updated_at: datetime
    #: only in ``GET /orders/{order_id}``, and only when the order has any
    personal_data: PersonalDataView | None = None


class TimelineEntry(BaseModel):
    #: Position in the order service's timeline (all sagas); ``GET /saga-events?after=``.
    seq: int
    event_id: uuid.UUID
    event_type: str
    producer: str
    occurred_at: datetime
    causation_id: uuid.UUID | None
    payload: dict[str, Any]
    #: The trace this event was recorded in; one saga is one trace.
    trace_id: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def compensating(self) -> bool:
        """True for compensating transactions: events that undo a step (release, refund,
        void); a failed step or a rejection is not one."""
        return self.event_type in COMPENSATING


class FeedEntry(TimelineEntry):
    order_id: uuid.UUID


class ObligationView(BaseModel):
    """What ``owed_by`` must do (``action``) because of the event ``because_of``, and the
    event that did it (``done_by``; null while still owed)."""

    action: str
    because_of: str
    owed_by: str
    done_by: str | None


class RefusalView(BaseModel):
    event_type: str | None
    reason: str


class ExplanationView(BaseModel):
    verdict: str
    #: what each participant owes this saga: compensations (give stock back, refund), an
    #: approved saga's sale, a cancelled one's promise never to charge
    owed: list[ObligationView]
    #: true: everything owed was done; false: something is still owed; null: in flight
    settled: bool | None
    #: events about this saga the order service refused (dead letters), oldest first
    refused: list[RefusalView] = []


class SagaView(BaseModel):
    order_id: uuid.UUID
    status: OrderStatus
    reason: str | None
    trace_id: str | None
    explanation: ExplanationView
    events: list[TimelineEntry]


def _key_text(key: str | None) -> str | None:
    """A key is UTF-8 text, as the payment provider's are: HTTP hands a header's bytes
    over as Latin-1, so a key in another script was stored as its bytes' Latin-1 reading,
    and refused for a control character the client never sent (a trial: U+202E refused as
    U+0080) or taken (``é`` as ``Ã©``), by which bytes its UTF-8 had. Then it is stored
    (``orders.idempotency_key``) and shown: no control character, as any stored text
    (``events.values.storable``: C0 and C1, DEL, bidirectional controls), and no tab."""
    if key is not None:
        key = header_text(key)
        if len(key) > MAX_IDEMPOTENCY_KEY:  # characters, once decoded: not the header's bytes
            raise ValueError(f"must have at most {MAX_IDEMPOTENCY_KEY} characters")
        storable(key)
        if "\t" in key:
            raise ValueError("text must not contain the control character U+0009 (a tab)")
    return key


#: The longest idempotency key, in characters (as the payment provider's).
MAX_IDEMPOTENCY_KEY = 200

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        # counted in characters by _key_text, once its UTF-8 is decoded (the header's
        # length is its bytes': a trial's 67 "€" were refused as over 200 characters)
        json_schema_extra={"maxLength": MAX_IDEMPOTENCY_KEY},
        description="a retried POST with the same key and body answers the same order;"
        " 1 to 200 characters of UTF-8 text, none of them a control character",
    ),
    AfterValidator(_key_text),
]

#: The 202 of a command on an order: where to follow it.
#: The 404 of a route on one order: a customer's token sees its own orders alone, and
#: another's is a 404 too, so that an id tells nothing (a newcomer trial read /docs'
#: "no such order" as the order not existing).
NO_SUCH_ORDER = "no such order, or not the caller's (a customer sees its own orders only)"


_ACCEPTED: dict[int | str, Any] = {
    202: {"headers": location("the order, `/orders/{order_id}`: poll it for the outcome")}
}


def _accepted(request: Request, response: Response, order_id: uuid.UUID) -> None:
    response.headers["Location"] = str(request.app.url_path_for("get_order", order_id=str(order_id)))


@router.post(
    "/orders",
    summary="Place an order",
    status_code=202,
    response_model=OrderAccepted,
    responses={
        202: {
            "headers": {
                **_ACCEPTED[202]["headers"],
                IDEMPOTENT_REPLAYED: {
                    "description": "`true` when this is the order an earlier request under the same"
                    " Idempotency-Key placed (nothing new was placed)",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            }
        },
        **errors(
            {
                403: "a customer may place orders for itself only (`forbidden`)",
                409: "the Idempotency-Key was used before with another body (`idempotency_key_reused`)",
            }
        ),
        503: problem(
            "overloaded (`overloaded`): the order could not finish before its deadline; nothing was held."
            " Or the broker has taken none of the service's events for too long (`broker_unavailable`):"
            " no saga moves; nothing was held."
            " Or personal data was sent to a service without a master key (`service_unavailable`,"
            " without `Retry-After`: it lasts until the service is given one)."
            " Or the database or the network is briefly away (`service_unavailable`): the order may"
            " or may not have been placed, and a retry with the same Idempotency-Key answers it once",
            headers=RETRY_AFTER,
        ),
    },
)
async def post_order(
    body: OrderRequest,
    desk: DeskDep,
    gate: AdmissionDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    keystore: KeyStoreDep,
    key: IdempotencyKey = None,
) -> OrderAccepted:
    """Start the saga of a new order; it is PENDING until inventory and payment have
    answered. 202: the saga has started, and `Location` is the order to poll for its
    outcome. Send an `Idempotency-Key` so that a retried POST answers the same order
    (with `Idempotent-Replayed: true`).
    503 with `Retry-After`: the backlog is such that the order could not finish before its
    deadline, so it is refused before anything is held; or the database is briefly away
    (retry with the same `Idempotency-Key`).
    The order is checked for its form only: a product not in the catalogue, or a customer
    without an account, is the saga's to find (it ends REJECTED, `unknown_product` or
    `unknown_account`, nothing held or charged), as every other outcome is."""
    assert isinstance(settings, Settings)
    if not principal.may_act_for(body.customer_id):
        raise HTTPException(403, "a customer may place orders for itself only")
    personal = body.personal()
    if personal is not None and keystore is None:
        raise HTTPException(
            503, "this service takes no personal data: it has no master key (ORDER_PII_MASTER_KEY_FILE)"
        )
    seconds = body.deadline_seconds if body.deadline_seconds is not None else settings.deadline_seconds
    refusal = await gate.check(seconds)
    if refusal is not None:
        return admission.refused(refusal)  # type: ignore[return-value]
    command = Placement(
        body.customer_id,
        tuple(body.items),
        key,
        timedelta(seconds=seconds),
        deadline_requested=body.deadline_seconds is not None,
        trace=otel_context.get_current(),
        traceparent=tracing.current_traceparent(),
        personal=personal,
        audit=audit.call_audit(request.scope),
    )
    try:
        placed = await desk.place(command)
    except KeyUnavailable:  # that customer's alone (saga_kit.personal_data): the log says which key
        raise _key_unavailable("sealed") from None
    audit.mark_audited(request.scope)  # the entry committed with the order
    _accepted(request, response, placed.order_id)
    if placed.replayed:
        response.headers[IDEMPOTENT_REPLAYED] = "true"
    return OrderAccepted(order_id=placed.order_id, status=placed.status)


@router.post(
    "/orders/{order_id}/cancel",
    summary="Cancel an order",
    status_code=202,
    response_model=OrderAccepted,
    responses={
        **_ACCEPTED,
        **errors(
            {
                404: NO_SUCH_ORDER,
                409: "the order is REJECTED or already CANCELLED (`order_not_cancellable`); nothing changes",
            }
        ),
    },
)
async def post_cancel(
    order_id: uuid.UUID, db: DatabaseDep, request: Request, response: Response, principal: PrincipalDep
) -> OrderAccepted:
    """Cancel a PENDING or APPROVED order. 202: it is CANCELLED now, and the participants
    release its stock and refund its charge asynchronously (watch `/orders/{order_id}/saga`).
    A REJECTED or already CANCELLED order answers 409 and nothing changes."""
    try:
        status = await cancel_order(db, order_id, _only(principal), audit.call_audit(request.scope))
    except OrderNotFound:
        raise HTTPException(404, f"order {order_id} not found") from None
    audit.mark_audited(request.scope)  # the entry committed with the cancellation
    _accepted(request, response, order_id)
    return OrderAccepted(order_id=order_id, status=status)


def _only(principal: Principal) -> str | None:
    """The one customer whose orders the caller may see (None: every customer's)."""
    return None if principal.operator else principal.subject


async def _load_order(
    db: DatabaseDep, order_id: uuid.UUID, principal: Principal, keystore: KeyStore | None = None
) -> OrderView:
    """The order, or 404 if there is none or it is another customer's (ids do not leak);
    with ``keystore``, its personal data opened (or ``erased``)."""
    async with db.engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM orders WHERE order_id = :o"), {"o": order_id})).first()
        if row is None or not principal.may_act_for(row.customer_id):
            raise HTTPException(404, f"order {order_id} not found")
        items = await conn.execute(
            text(
                "SELECT product_id, quantity, unit_price FROM order_items"
                " WHERE order_id = :o ORDER BY line_no"
            ),
            {"o": order_id},
        )
        view = _view(row, [OrderItemView.model_validate(i._mapping) for i in items])
        sealed = sealed_of(row.personal_data)
        if sealed is not None and keystore is not None:
            try:
                key = await keystore.key(conn, sealed.key_id)
                if key is None:  # destroyed: the customer was forgotten
                    view.personal_data = PersonalDataView(erased=True)
                else:
                    data = open_sealed(sealed, key, order_id)
                    view.personal_data = PersonalDataView(
                        email=data.email, shipping_address=data.shipping_address
                    )
            except (Unreadable, DataKeyDamaged) as exc:
                log.error("order %s: its personal data does not open: %s", order_id, exc)
                view.personal_data = PersonalDataView(unreadable=True)
            except MasterKeyUnavailable as exc:
                log.error("order %s: %s", order_id, exc)
                raise _key_unavailable("opened") from None
        return view


#: Seconds a client is told to wait when a customer's data key cannot be had: an operator
#: must act (give the service the master key), or another instance may have it.
KEY_RETRY_AFTER_SECONDS = 30


def _key_unavailable(what: str) -> HTTPException:
    """The 503 of personal data that cannot be ``what`` (sealed, opened) now: the customer's
    data key is under a master key this service was not given, or damaged. Not "the
    database does not answer" (a transient failure's words, and a one-second retry: an
    operator trial): the log names the key, an operator must act."""
    return HTTPException(
        503,
        f"this customer's personal data cannot be {what} now: its data key needs a master key this"
        " service does not have, or is damaged (the service's log says which; an operator must act);"
        " retry after Retry-After seconds",
        headers={"Retry-After": str(KEY_RETRY_AFTER_SECONDS)},
    )


def _view(row: Any, items: list[OrderItemView]) -> OrderView:
    return OrderView(
        order_id=row.order_id,
        customer_id=row.customer_id,
        status=row.status,
        reason=row.reason,
        total=row.total,
        deadline_at=row.deadline_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        items=items,
    )


class CommandView(BaseModel):
    """What became of a command sent on ``orders.commands``."""

    command_id: uuid.UUID
    #: the order it placed or named (a PlaceOrder's is derived from the command id)
    order_id: uuid.UUID
    #: ``placed`` or ``cancelled`` (it was applied; ``status`` is the order's now),
    #: ``rejected`` (see ``reason``), ``dead_lettered`` (neither taken nor refused: a
    #: dead letter of the order service, found by its key or by the id in its bytes,
    #: ``detail`` naming it and why — placed or refused once replayed — or that it was
    #: discarded), or ``unknown``: not processed yet — or never sent.
    #: An applied command whose id a later or earlier copy reused (another body, a bad
    #: token), or a command of another type, names that refusal in ``reason`` and
    #: ``detail`` ("another PlaceOrder sent under this id …", "a CancelOrder sent under this id …");
    #: the outcome stays applied.
    outcome: Literal["placed", "cancelled", "rejected", "dead_lettered", "unknown"]
    #: the order's status now and the reason it has (e.g. REJECTED, ``insufficient_funds``),
    #: for an applied command
    status: OrderStatus | None = None
    order_reason: str | None = None
    #: why the command (or a copy of it) was refused: the command's, never the order's
    reason: str | None = None
    detail: str | None = None


_APPLIED = {"PlaceOrder": "placed", "CancelOrder": "cancelled"}
#: The deliveries of a command a customer may read the outcome of (``get_command``): a
#: command that could not be read is its sender's only on an order of its own.
_CUSTOMERS_READ = [*_APPLIED, RefusedCommand.event_type]


@router.get(
    "/commands/{command_id}",
    summary="What became of a command",
    response_model=CommandView,
    responses=errors({404: "a customer's: not a command about its orders, or not processed yet"}),
)
async def get_command(command_id: uuid.UUID, db: DatabaseDep, principal: PrincipalDep) -> CommandView:
    """What became of a `PlaceOrder` or `CancelOrder` sent on `orders.commands` (the answer
    is also on `orders.events`, with header `correlation_id` = `command_id`). A command that
    was applied is `placed` or `cancelled` even if a copy under its id was refused after it
    (a bad token, another body), or a command of another type under its id (one of its type
    refused before it by its own sender, or for its token, was mended by it, and is not
    named); one never applied is `rejected`
    with its latest refusal. For the operator, a command not processed yet, or never sent, is `unknown`:
    there is no 404. A customer reads the commands it sent (its token's), and those about
    its own orders as its order's timeline shows them (those of someone who may act for
    it), and their refusals: any other command, one refused for its token, and one not
    processed yet, is a 404 (ids do not leak); a dead letter is
    the operator's. Only the operator could read a command once, so a customer's wait for
    a refused command (an overloaded order service) lasted a minute and learnt nothing."""
    me = _only(principal)
    async with db.engine.connect() as conn:
        # a customer's: the deliveries of the command that are its own, and only their
        # outcome and refusals are read. Its own are those its token sent (``sender``: one
        # that named no order of hers, quantity 0, was a 404 for ever), those not a
        # stranger's (sent by someone who may act for the order) about its orders — a
        # PlaceOrder's customer is the one it names — and a PlaceOrder for it refused as a
        # reused id (a stranger's to the order holding the id, but refused so only after
        # its sender was let in). A CancelOrder of her own order under another's command id
        # showed her the other's order, status and reason, and an order placed under the id
        # of another customer's refused PlaceOrder showed its owner her refusal (trials)
        params: dict[str, Any] = {"c": str(command_id)}
        if me is not None:
            params["mine"] = list(
                await conn.scalars(
                    text(
                        "SELECT c.event_id FROM saga_events c"
                        " WHERE c.payload ? 'command_id' AND c.payload->>'command_id' = :c"
                        " AND c.event_type = ANY(:types) AND (c.sender = :me"
                        " OR (NOT c.from_stranger OR c.event_type = :place"
                        " AND EXISTS (SELECT 1 FROM saga_events r WHERE r.payload ? 'command_id'"
                        " AND r.payload->>'command_id' = :c AND r.causation_id = c.event_id"
                        " AND r.event_type = 'CommandRejected'"
                        " AND r.payload->>'reason' = 'command_id_reused'))"
                        " AND CASE c.event_type WHEN :place THEN c.payload->>'customer_id'"
                        # the order's customer by its key (a join was planned as a hash
                        # join over every order once the sender was an alternative)
                        " ELSE (SELECT o.customer_id FROM orders o WHERE o.order_id = c.order_id) END = :me)"
                    ),
                    {**params, "me": me, "types": _CUSTOMERS_READ, "place": PlaceOrder.event_type},
                )
            )
            if not params["mine"]:
                raise HTTPException(404, f"command {command_id} not found")
        # a delivery of the command was applied when it caused the order's event (a refused
        # delivery caused a CommandRejected; a repeated one, nothing): one at most, as an id
        # applied once is refused to any other command. Both reads say
        # ``payload ? 'command_id'``, the predicate of the partial index that finds a
        # command by its id (saga_events_by_command): without it the planner cannot use
        # the index and reads the whole timeline, which is never pruned
        applied = (
            await conn.execute(
                text(
                    "SELECT c.event_id, c.event_type, c.order_id, c.sender, o.status, o.reason,"
                    " r.seq AS applied_at"
                    " FROM saga_events c"
                    " JOIN saga_events r ON r.order_id = c.order_id AND r.causation_id = c.event_id"
                    " AND r.event_type IN ('OrderCreated', 'OrderCancelled')"
                    " JOIN orders o ON o.order_id = c.order_id"
                    " WHERE c.payload ? 'command_id' AND c.payload->>'command_id' = :c"
                    " AND c.event_type IN ('PlaceOrder', 'CancelOrder') ORDER BY c.seq LIMIT 1"
                ),
                params,
            )
        ).first()
        # another's delivery applied is not a customer's outcome: hers is her own latest
        # refusal, as it was given. (Read as "taken: send yours again under a new one"
        # instead, it told her which ids had placed orders, by sending an unreadable
        # command under each: an attack trial; her retry under such an id is hers to read,
        # its sender's, refused command_id_reused.)
        if me is not None and applied is not None and applied.event_id not in params["mine"]:
            applied = None
        # of an applied command, a refusal of its type after it only (a copy sent since:
        # another body, a bad token), of another type under its id, or one another sender
        # had sent (another customer's token, or the operator's, whose commands keep no
        # sender: not the applied one's sender's), unless it was refused for its token: one
        # of its type before was mended by it — sent again as told (a CancelOrder that
        # overtook its PlaceOrder, one refused by admission) or with its content or token put
        # right — and read as "a copy … was refused", with its stale advice (trials).
        # Another customer's, sent first with the same body (``forbidden``), and then the
        # operator's own, were hidden from the operator once hers was applied (attack trials)
        refusal = (
            await conn.execute(
                text(
                    "SELECT c.order_id, c.payload FROM saga_events c"
                    " LEFT JOIN saga_events d ON d.event_id = c.causation_id"
                    " WHERE c.payload ? 'command_id' AND c.payload->>'command_id' = :c"
                    " AND c.event_type = 'CommandRejected'"
                    " AND (c.seq > :after OR c.payload->>'command_type' IS DISTINCT FROM :type"
                    " OR d.sender IS DISTINCT FROM CAST(:sender AS text)"
                    " AND c.payload->>'reason' NOT IN ('invalid_token', 'missing_token'))"
                    + ("" if me is None else " AND c.causation_id = ANY(:mine)")
                    + " ORDER BY c.seq DESC LIMIT 1"
                ),
                {
                    **params,
                    "after": 0 if applied is None else applied.applied_at,
                    "type": None if applied is None else applied.event_type,
                    "sender": None if applied is None else applied.sender,
                },
            )
        ).first()
        # neither applied nor refused: held as a dead letter (its token's keys away), or
        # discarded from there? Its id as the letter's key (sagactl keys a command by it:
        # a body that is no command at all has it nowhere else), or in the letter's bytes,
        # as written or in capitals (a UUID in JSON is either). A discarded one was "not
        # taken yet, or never sent" (a trial). The letter keyed by it comes first, then a held
        # one, then the newest: a later record that merely mentions the id, once discarded,
        # was shown instead of the command's own held letter (a trial)
        letter = None
        if applied is None and refusal is None and me is None:
            letter = (
                await conn.execute(
                    text(
                        "SELECT id, reason, value, status, keyed FROM ("
                        " SELECT *, coalesce(key IN (convert_to(:c, 'UTF8'), convert_to(upper(:c), 'UTF8')),"
                        " false) AS keyed FROM dead_letters"
                        " WHERE status IN ('PENDING', 'DISCARDED') AND source_topic = :topic) d"
                        " WHERE keyed OR position(convert_to(:c, 'UTF8') IN value) > 0"
                        " OR position(convert_to(upper(:c), 'UTF8') IN value) > 0"
                        " ORDER BY keyed DESC, status = 'PENDING' DESC, id DESC LIMIT 1"
                    ),
                    {"c": str(command_id), "topic": COMMANDS},
                )
            ).first()
    if applied is not None:
        outcome: Any = _APPLIED[applied.event_type]
        return CommandView(
            command_id=command_id,
            order_id=applied.order_id,
            outcome=outcome,
            status=applied.status,
            order_reason=applied.reason,
            reason=None if refusal is None else refusal.payload.get("reason"),
            detail=None if refusal is None else _refused_under(applied.event_type, refusal.payload),
        )
    if refusal is not None:
        return CommandView(
            command_id=command_id,
            order_id=refusal.order_id,
            outcome="rejected",
            reason=refusal.payload.get("reason"),
            detail=refusal.payload.get("detail"),
        )
    if letter is not None:
        # a letter that only mentions the id is another record: the order it names is not this one's
        value = None if letter.value is None else bytes(letter.value)
        named = peek_command(value, of=None if letter.keyed else command_id)[1]
        held = letter.status == "PENDING"
        return CommandView(
            command_id=command_id,
            order_id=named or order_id_for(command_id),
            outcome="dead_lettered",
            reason="dead_letter",
            detail=(
                f"dead letter {letter.id} of order_svc{'' if held else ', discarded'}, neither taken"
                f" nor refused: {printable(letter.reason, 500)}"
                + (f" ({_after_letter(value)} order {letter.id})" if held else "")
            ),
        )
    return CommandView(command_id=command_id, order_id=order_id_for(command_id), outcome="unknown")


def _after_letter(value: bytes | None) -> str:
    """What to do with a held dead letter of a command: replay it (a command held while its
    token's keys could not be had is taken or refused then), or, when its bytes are no
    command at all, discard it — replayed, it could only be dead-lettered again (a trial
    was offered the replay of a body that is not JSON)."""
    try:
        to_envelope(value)
    except InvalidEvent:
        return "replayed, it would be dead-lettered again: sagactl dlq discard"
    return "sagactl dlq replay"


def _refused_under(applied: str, refused: dict[str, Any]) -> str:
    """What a refusal under an applied command's id was: another command of its type (a
    copy with another body or token, or another sender's: "a copy" it was not always, a
    trial), or a command of another type that reused its id."""
    command_type = refused.get("command_type")
    sent = f"another {applied}" if command_type == applied else f"a {command_type}"
    return f"{sent} sent under this id was refused: {refused.get('detail')}"


@router.get(
    "/orders/{order_id}",
    summary="One order",
    response_model=OrderView,
    responses=errors({404: NO_SUCH_ORDER}),
)
async def get_order(
    order_id: uuid.UUID, db: DatabaseDep, principal: PrincipalDep, keystore: KeyStoreDep
) -> OrderView:
    """The order with its lines, total and status (PENDING, APPROVED, REJECTED or
    CANCELLED) and, once it is finished, the reason; its personal data opened, or
    `erased` once the customer was forgotten."""
    return await _load_order(db, order_id, principal, keystore)


class Forgotten(BaseModel):
    customer_id: str
    #: data keys destroyed now (0: there was none left, e.g. forgotten before)
    keys_destroyed: int


@router.post(
    "/customers/{customer_id}/forget",
    summary="Forget a customer: its personal data becomes unreadable everywhere",
    tags=["customers"],
    response_model=Forgotten,
    responses=errors(),
)
async def forget_customer(customer_id: Annotated[ExternalId, Path()], db: DatabaseDep) -> Forgotten:
    """Crypto-shredding: destroy the customer's data keys. Every copy of its personal data
    — the orders' rows, the events in the Kafka log and the timeline, dead letters,
    backups — is then ciphertext without a key. Its orders, their totals, the stock and
    payments stay as they are; a later order gets a new key. Idempotent."""
    async with db.engine.begin() as conn:
        destroyed = await forget(conn, customer_id)
    return Forgotten(customer_id=customer_id, keys_destroyed=destroyed)


#: The start of an order id as the dashboard and operators type it: 8 to 36 characters of
#: its text form (hex digits and dashes).
OrderIdPrefix = Annotated[
    str | None,
    Query(
        pattern=f"^{ORDER_ID_PREFIX}$",
        description="only the orders whose id starts so: 8 to 36 characters of its text form",
    ),
]


@router.get("/orders", summary="Recent orders", response_model=list[OrderView], responses=errors())
async def list_orders(
    db: DatabaseDep,
    principal: PrincipalDep,
    status: Annotated[
        OrderStatus | None, Query(description="only the orders in this status (in any case)"), AnyCase
    ] = None,
    customer_id: Annotated[
        ExternalId | None,
        Query(description="only this customer's orders (a customer's token: its own, else none)"),
    ] = None,
    order_id_prefix: OrderIdPrefix = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many orders"), IN_DIGITS] = 100,
    offset: Annotated[
        int, Query(ge=0, le=1_000_000, description="skip this many: the next page"), IN_DIGITS
    ] = 0,
) -> list[OrderView]:
    """Most recent orders first, optionally only those in ``status``, of ``customer_id``,
    or whose id starts with ``order_id_prefix`` (at least 8 characters of its text form);
    ``offset`` skips that many for the next page. A customer sees its own orders only."""
    only = _only(principal)
    if only is not None and customer_id not in (None, only):
        return []
    customer_id = only or customer_id
    ids = None
    if order_id_prefix is not None:
        ids = _ids_starting(order_id_prefix)
        if ids is None:
            return []  # a dash where an order id has none: no id starts so
    async with db.engine.connect() as conn:
        orders = list(
            await conn.execute(
                text(
                    "SELECT * FROM orders WHERE (CAST(:s AS TEXT) IS NULL OR status = :s)"
                    " AND (CAST(:c AS TEXT) IS NULL OR customer_id = :c)"
                    # the ids between the prefix's lowest and highest completion, by the
                    # primary key: the text comparison alone reads every order
                    " AND (CAST(:lo AS UUID) IS NULL"
                    " OR order_id BETWEEN CAST(:lo AS UUID) AND CAST(:hi AS UUID))"
                    " ORDER BY created_at DESC, order_id LIMIT :n OFFSET :k"
                ),
                {
                    "s": status.value if status else None,
                    "c": customer_id,
                    "lo": ids[0] if ids else None,
                    "hi": ids[1] if ids else None,
                    "n": limit,
                    "k": offset,
                },
            )
        )
        items: dict[uuid.UUID, list[OrderItemView]] = {o.order_id: [] for o in orders}
        for i in await conn.execute(
            text(
                "SELECT order_id, product_id, quantity, unit_price FROM order_items"
                " WHERE order_id = ANY(:ids) ORDER BY order_id, line_no"
            ),
            {"ids": list(items)},
        ):
            items[i.order_id].append(OrderItemView.model_validate(i._mapping))
    return [_view(o, items[o.order_id]) for o in orders]


#: An order id's text form, lowest and highest (``_ids_starting``).
_LOWEST, _HIGHEST = str(uuid.UUID(int=0)), str(uuid.UUID(int=2**128 - 1))


def _ids_starting(prefix: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The lowest and highest order id whose text form starts with ``prefix`` (8 to 36
    hex digits and dashes, any case: ``ORDER_ID_PREFIX``), or None when none can (a dash
    where the text form has a digit, or a digit where it has a dash). Every id between
    the two starts with it: ids compare as their text forms do."""
    prefix = prefix.lower()
    if len(prefix) > len(_LOWEST) or any((c == "-") != (_LOWEST[i] == "-") for i, c in enumerate(prefix)):
        return None
    return uuid.UUID(prefix + _LOWEST[len(prefix) :]), uuid.UUID(prefix + _HIGHEST[len(prefix) :])


@router.get(
    "/orders/{order_id}/saga",
    summary="An order's saga: its timeline and why it ended so",
    response_model=SagaView,
    responses=errors({404: NO_SUCH_ORDER}),
)
async def get_saga(order_id: uuid.UUID, db: DatabaseDep, principal: PrincipalDep) -> SagaView:
    """Every event of this order's saga, from all three services, oldest first, and the
    `explanation`: why it ended so, what each participant owes (`owed`: compensations,
    an approved saga's sale) and whether it was done (`settled`), and the events about it
    that were refused."""
    order = await _load_order(db, order_id, principal)
    async with db.engine.connect() as conn:
        events = await timeline.load(conn, order_id)
        refused = [
            Refusal(_type_of(None if r.value is None else bytes(r.value)), printable(r.reason))
            for r in await conn.execute(
                text(
                    "SELECT reason, CASE WHEN octet_length(value) <= 65536 THEN value END AS value"
                    " FROM dead_letters WHERE order_id = :o ORDER BY id LIMIT 20"
                ),
                {"o": order_id},
            )
        ]
    entries = [TimelineEntry.model_validate(e) for e in events]
    why = explain(order.status, order.reason, events, refused, order.deadline_at)
    return SagaView(
        order_id=order_id,
        status=order.status,
        reason=order.reason,
        trace_id=next((e.trace_id for e in entries if e.trace_id), None),
        explanation=ExplanationView.model_validate(dataclasses.asdict(why)),
        events=entries,
    )


def _type_of(value: bytes | None) -> str | None:
    """What a dead letter's body is: an event's type, or a command's (``orders.commands``
    says what it is in its own words), as the dead letters' list names it; None when it
    cannot be told."""
    return peek(value)[0] or peek_command(value)[0]


@router.get(
    "/saga-events", summary="Every saga's events (a feed)", response_model=list[FeedEntry], responses=errors()
)
async def get_saga_events(
    db: DatabaseDep,
    after: Seq = 0,
    limit: Annotated[int, Query(ge=1, le=1000), IN_DIGITS] = 200,
) -> list[FeedEntry]:
    """Every saga's events as the order service recorded them, in ``seq`` order, after the
    position ``after``. To follow all sagas live use ``/saga-events/stream`` (``sagactl
    tail`` does): it also delivers events whose transaction committed after a higher
    ``seq`` was already visible, which polling by ``after`` alone can miss."""
    async with db.engine.connect() as conn:
        rows = await timeline.feed(conn, after, limit)
    return [FeedEntry.model_validate(r) for r in rows]


#: A position in the timeline (a BIGSERIAL).
Seq = Annotated[int, Query(ge=0, le=2**63 - 1), IN_DIGITS]


#: Where a reconnecting browser resumes: the ``seq`` of the last event it got.
LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        pattern=r"^[0-9]{0,18}$",
        description="resume after this event (its `seq`, ASCII digits); overrides `after`",
    ),
]


async def get_live(request: Request) -> LiveTimeline:
    """The service's live timeline (``order_svc.live``), created on first use."""
    live: LiveTimeline | None = getattr(request.app.state, "live_timeline", None)
    if live is None:
        settings = request.app.state.settings
        live = request.app.state.live_timeline = LiveTimeline(
            request.app.state.db.engine, settings.event_streams_max
        )
    return live


LiveDep = Annotated[LiveTimeline, Depends(get_live)]


@router.get(
    "/saga-events/stream",
    summary="Every saga's events, live (server-sent events)",
    response_class=LiveResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        **errors(
            {
                503: "the database is briefly away, or every event stream this service serves"
                " (`ORDER_EVENT_STREAMS_MAX`) is open (`service_unavailable`); retry after `Retry-After`"
            }
        ),
    },
)
async def stream_saga_events(
    live: LiveDep, after: Seq | None = None, last_event_id: LastEventId = None
) -> LiveResponse:
    """Server-sent events: each new timeline event as it is recorded (`id` is its `seq`,
    `data` a feed entry as in `/saga-events`; a reconnecting browser resumes from
    `Last-Event-ID`). Without `after` it starts at the newest event. While the database is
    away the stream stays open (a comment line says so every second) and goes on where it
    was when it is back. A comment line comes every `STREAM_PING_SECONDS` (10) while
    nothing happens. A client that falls a minute behind is told so in a comment and the
    stream ends: reconnecting with `Last-Event-ID` resumes it."""
    _refuse_if_full(live)  # before the database is asked anything
    # where it starts is read before the answer starts: a database away now is a 503
    follower = await live.start(int(last_event_id) if last_event_id else after)
    _refuse_if_full(live)
    subscription = live.subscribe()  # counted from here: no await since the check
    # set by sse-starlette when the service stops: the stream then ends after what it
    # sent, with its last chunk, instead of being cancelled (a traceback each)
    stopping = anyio.Event()

    async def end_when_stopping() -> None:
        await stopping.wait()
        live.end(subscription, "the service is stopping; reconnect to resume")

    async def events() -> AsyncIterator[ServerSentEvent]:
        watch = asyncio.create_task(end_when_stopping())
        try:
            yield ServerSentEvent(comment="connected")
            async for item in live.follow(follower, subscription):
                if isinstance(item, Away):
                    yield ServerSentEvent(comment=AWAY_COMMENT)
                elif isinstance(item, Ended):
                    yield ServerSentEvent(comment=item.why)
                else:
                    for r in item:
                        entry = FeedEntry.model_validate(r)
                        yield ServerSentEvent(
                            id=str(entry.seq), event="saga-event", data=entry.model_dump_json()
                        )
        finally:
            watch.cancel()

    return LiveResponse(
        events(),
        ping=STREAM_PING_SECONDS,
        send_timeout=STREAM_SEND_TIMEOUT_SECONDS,
        # not stored, as every answer: it carries the operator's view of every saga (a
        # re-check trial; sse-starlette's own default, which no-cache had overridden)
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(live.unsubscribe, subscription),  # also when never followed
        shutdown_event=stopping,
        shutdown_grace_period=STREAM_STOP_GRACE_SECONDS,
    )


def _refuse_if_full(live: LiveTimeline) -> None:
    if live.full:
        raise HTTPException(
            503,
            f"{live.open_streams} event streams are open, the most this service serves"
            " (ORDER_EVENT_STREAMS_MAX); retry after Retry-After seconds",
            headers={"Retry-After": str(STREAM_RETRY_AFTER_SECONDS)},
        )


#: Seconds between two keep-alive comments of an event stream while nothing happens
#: (proxies close a connection idle for long; browsers' own default retry is 3 s).
STREAM_PING_SECONDS = 10
#: Seconds an event stream waits for its client to take one event before it gives up on it.
STREAM_SEND_TIMEOUT_SECONDS = 30
#: Seconds a stream has to end by itself once the service stops (uvicorn waits 3 in all).
STREAM_STOP_GRACE_SECONDS = 2.0
#: What a new stream refused because all are taken is told to wait, in seconds.
STREAM_RETRY_AFTER_SECONDS = 5
