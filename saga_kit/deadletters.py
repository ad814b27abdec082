"""Operating dead letters: list, show, replay, discard — the same API in every service.

A dead letter is an event this service could not process, kept with its original bytes,
the reason, and where it came from (topic, partition, offset); the consumer stored it and
moved on (saga_kit.consumer). An operator then decides, per letter:

* **replay** — run it through the service's consumer pipeline again, after the cause is
  fixed (a new build that reads its version, a missing product that now exists). The
  inbox still guarantees one effect. If it fails again the letter stays PENDING with the
  new reason and the attempt is counted; nothing is dead-lettered twice.
* **discard** — decide it never needs processing; it is kept, marked DISCARDED, until the
  pruner removes resolved letters after ``dead_letter_retention_seconds``.

``sagactl dlq`` is the command-line client of these endpoints.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from events.codec import ReasonCode, is_event_type_name, peek
from events.commands import peek_command
from events.values import printable
from saga_kit import headers as kafka_headers
from saga_kit import unreadable
from saga_kit.consumer import ConsumerPipeline, Outcome, Record, dead_letter_reason
from saga_kit.db import Database
from saga_kit.errors import DomainRejection
from saga_kit.headers import is_credential
from saga_kit.http import IN_DIGITS, AnyCase, DatabaseDep, errors

#: How every dead letter's reason begins, before ": " and its detail: a fixed set an
#: operator can filter and alert on (the README's table says what each means).
REASON_CODES: tuple[ReasonCode, ...] = get_args(ReasonCode)
#: The codes of records nothing vouched for: no signature verified, or a command whose
#: token was never checked (commands carry a token, not a signature). Their letters'
#: ``event_type`` and ``order_id`` are claims (``DeadLetterSummary.unverified``).
UNVERIFIED_CODES: tuple[ReasonCode, ...] = ("bad_signature", "invalid_command", "keys_unavailable")
_UNVERIFIED = tuple(f"{code}:" for code in UNVERIFIED_CODES)

Status = Literal["PENDING", "REPLAYED", "DISCARDED"]
#: ``?status=`` of a list of dead letters: those in one status, or ALL. One type, not
#: ``Status | Literal["ALL"]``: a bad value is then one 422 entry at ``status`` listing the
#: four, not one per member with pydantic's names for the types in its ``loc``.
StatusFilter = Literal["PENDING", "REPLAYED", "DISCARDED", "ALL"]

#: How much of a body, key or header value the API shows; the exact bytes of a body are at
#: ``GET /dead-letters/{id}/value``. A dead letter may hold anything up to the broker's
#: message size, and one huge or strange letter must never hide the others.
VALUE_PREVIEW = 4096
HEADER_PREVIEW = 512
#: Headers shown of one letter (``headers_total`` says how many there are).
HEADERS_SHOWN = 100


class BytesView(BaseModel):
    """Bytes as they can be shown, cut to a preview (``truncated``); ``size`` in bytes.
    ``text`` when they are UTF-8, with control characters, lone surrogates and
    bidirectional controls escaped (``events.values.printable``: ``\\x1b``), to be read;
    ``base64``, the bytes themselves, whenever ``text`` is not exactly them (they are not
    UTF-8, or something was escaped): an ESC and the four characters ``\\x1b`` are one
    ``text`` and two ``base64`` (an attack trial)."""

    size: int
    text: str | None
    base64: str | None
    truncated: bool

    @classmethod
    def of(cls, head: bytes, limit: int, size: int | None = None) -> BytesView:
        """A view of ``head``, the first bytes (at least ``limit`` + 1 if there are more)
        of ``size`` bytes in all (default: ``head`` is all of them)."""
        size = len(head) if size is None else size
        head = head[:limit]
        truncated = size > limit
        # a multi-byte character cut by the preview does not make the bytes binary
        for cut in range(4 if truncated else 1):
            kept = head[: len(head) - cut]
            try:
                shown = kept.decode("utf-8")
            except UnicodeDecodeError:
                continue
            readable = printable(shown, limit)
            exact = None if readable == shown else _base64(kept)
            return cls(size=size, text=readable, base64=exact, truncated=truncated)
        return cls(size=size, text=None, base64=_base64(head), truncated=truncated)


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


#: Schemes shown before the characters of a credential.
CREDENTIAL_SCHEMES = frozenset({b"bearer", b"basic", b"digest", b"negotiate", b"dpop"})
#: Characters of a credential shown, after its scheme.
CREDENTIAL_SHOWN = 8


class HeaderView(BaseModel):
    #: The header's name, escaped as ``BytesView.text`` is.
    key: str
    #: The name's UTF-8 bytes (of its first ``HEADER_PREVIEW`` characters), when ``key``
    #: escaped something: as ``BytesView.base64``, two names that differ differ here.
    key_base64: str | None = None
    #: None for a null header value (Kafka allows them).
    value: BytesView | None
    #: A credential, shown by its scheme and first characters only (``size``: its own).
    redacted: bool = False
    #: True when the name is longer than ``HEADER_PREVIEW`` characters: ``key`` and
    #: ``key_base64`` hold only its start (a name of 600 characters was cut with nothing to
    #: say so but an ellipsis, which a name may end with: a trial).
    key_truncated: bool = False

    @classmethod
    def of(cls, key: str, value: bytes | None) -> HeaderView:
        shown_key, head = printable(key, HEADER_PREVIEW), key[:HEADER_PREVIEW]
        exact = (
            None
            if printable(head, HEADER_PREVIEW) == head
            else _base64(head.encode("utf-8", "surrogatepass"))
        )
        cut = len(key) > HEADER_PREVIEW
        if value is None:
            return cls(key=shown_key, key_base64=exact, value=None, key_truncated=cut)
        if not is_credential(key):
            view = BytesView.of(value, HEADER_PREVIEW)
            return cls(key=shown_key, key_base64=exact, value=view, key_truncated=cut)
        scheme, space, credential = value.strip().partition(b" ")
        if space and scheme.lower() in CREDENTIAL_SCHEMES:
            kept = scheme + b" " + credential.strip()[:CREDENTIAL_SHOWN]
        else:
            kept = value.strip()[:CREDENTIAL_SHOWN]
        view = BytesView.of(kept + "…".encode(), HEADER_PREVIEW)
        shown = view.model_copy(update={"size": len(value)})
        return cls(key=shown_key, key_base64=exact, value=shown, redacted=True, key_truncated=cut)


class DeadLetterSummary(BaseModel):
    id: int
    status: Status
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    event_type: str | None
    order_id: str | None
    #: Size of the original body in bytes (None for a record without one, or not read).
    value_size: int | None
    replay_attempts: int
    created_at: datetime
    resolved_at: datetime | None
    #: True when the Kafka client could not read the record (``reason`` says why and at
    #: which offset its bytes stay; ``saga_kit.unreadable``): its key, headers and body
    #: are not known, not absent.
    unread: bool = False
    #: True when nothing vouched for the record (``UNVERIFIED_CODES``): its signature did
    #: not verify (``bad_signature``: unsigned, forged or tampered, ``saga_kit.signing``),
    #: or it is a command whose token was never checked (``invalid_command``,
    #: ``keys_unavailable``). Its ``event_type`` and ``order_id`` are what its body
    #: claims, which its writer chose; nothing in it was applied.
    unverified: bool = False


class DeadLetter(DeadLetterSummary):
    key: BytesView | None
    #: The first ``HEADERS_SHOWN`` headers.
    headers: list[HeaderView]
    headers_total: int
    #: The original body; its exact bytes are at ``/dead-letters/{id}/value``.
    value: BytesView | None


class ReplayResult(BaseModel):
    id: int
    status: Status
    outcome: str


class NotPending(DomainRejection):
    def __init__(self, letter_id: int, status: str) -> None:
        super().__init__("dead_letter_resolved", f"dead letter {letter_id} is already {status}")


class StillFailing(DomainRejection):
    def __init__(self, letter_id: int, reason: str) -> None:
        # what to do next, not only what went wrong (a newcomer trial: the README's table alone said)
        super().__init__(
            "replay_failed",
            f"dead letter {letter_id} failed again: {reason}; it stays pending: replay it once the"
            " cause is fixed, or discard it if it never can be (a record not signed or forged, say)",
        )


_SUMMARY = (
    "id, status, reason, source_topic, source_partition, source_offset, replay_attempts,"
    " created_at, resolved_at, octet_length(value) AS value_size,"
    # enough of the body to find its event type and order id without loading all of it
    f" CASE WHEN octet_length(value) <= {VALUE_PREVIEW * 16} THEN value END AS peekable,"
    # what its event_type header says, for a body that does not say (it cannot be read)
    " substring(header_values[array_position(header_keys, convert_to('event_type', 'UTF8'))]"
    " FOR 101) AS named_type"
)


def _summary(row: Any) -> dict[str, Any]:
    """A summary's fields; ``event_type`` is the body's, or, when the body cannot be read,
    its ``event_type`` header's if that looks like a type's name (a command that was not
    JSON showed no type, though its header named one: an operator trial)."""
    peekable = None if row.peekable is None else bytes(row.peekable)
    event_type, order_id = peek(peekable)
    if event_type is None:  # a command (orders.commands) says what it is in its own words
        event_type, order_id = peek_command(peekable)
    if event_type is None and row.named_type is not None:
        named = bytes(row.named_type).decode("utf-8", "replace")
        event_type = named if is_event_type_name(named) else None
    return {
        **{k: getattr(row, k) for k in DeadLetterSummary.model_fields if hasattr(row, k)},
        "reason": printable(row.reason),
        # only the pipeline writes a reason, and only a stand-in's begins so
        "unread": row.reason.startswith(f"{unreadable.REASON}:"),
        "unverified": row.reason.startswith(_UNVERIFIED),
        "event_type": event_type,
        "order_id": None if order_id is None else str(order_id),
    }


async def list_letters(
    db: Database, status: Status | None, limit: int, before: int | None = None
) -> list[DeadLetterSummary]:
    """At most ``limit`` letters in ``status`` (None: any), newest first; with ``before``,
    only those whose id is below it (the next page: the last id of the one before)."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                f"SELECT {_SUMMARY} FROM dead_letters WHERE (CAST(:s AS TEXT) IS NULL OR status = :s)"
                " AND id < :before ORDER BY id DESC LIMIT :n"
            ),
            {"s": status, "n": limit, "before": 2**63 - 1 if before is None else before},
        )
        return [DeadLetterSummary.model_validate(_summary(r)) for r in rows]


async def _row(db: Database, letter_id: int, columns: str) -> Any:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(text(f"SELECT {columns} FROM dead_letters WHERE id = :i"), {"i": letter_id})
        ).first()
    if row is None:
        raise LookupError(letter_id)
    return row


async def get_letter(db: Database, letter_id: int) -> DeadLetter:
    row = await _row(
        db,
        letter_id,
        f"{_SUMMARY}, substring(key FOR {HEADER_PREVIEW + 1}) AS key_head, octet_length(key) AS key_size,"
        f" substring(value FOR {VALUE_PREVIEW + 1}) AS value_head, header_keys, header_values",
    )
    key = None if row.key_head is None else BytesView.of(bytes(row.key_head), HEADER_PREVIEW, row.key_size)
    value = (
        None if row.value_head is None else BytesView.of(bytes(row.value_head), VALUE_PREVIEW, row.value_size)
    )
    # a stand-in's one header is the pipeline's marker, kept for a replay to fail as the
    # letter did, never a header the record held (it was listed as one: an attack trial)
    stored = unreadable.held_headers(kafka_headers.from_columns(row.header_keys, row.header_values))
    headers = [HeaderView.of(k, v) for k, v in stored[:HEADERS_SHOWN]]
    return DeadLetter.model_validate(
        {**_summary(row), "key": key, "headers": headers, "headers_total": len(stored), "value": value}
    )


async def original_value(db: Database, letter_id: int) -> bytes | None:
    """The exact bytes of the dead letter's body."""
    row = await _row(db, letter_id, "value")
    return None if row.value is None else bytes(row.value)


async def _lock_pending(conn: AsyncConnection, letter_id: int) -> Record:
    """The original record, exactly as it arrived, of a letter that is still PENDING,
    with the letter's row locked until ``conn``'s transaction ends: a replay and a
    discard of one letter (or two replays) take their turns, and the second finds it
    resolved (``NotPending``) instead of overwriting the first's outcome. Raises
    ``LookupError`` for no such letter."""
    row = (
        await conn.execute(
            text(
                "SELECT status, source_topic, source_partition, source_offset, key, value,"
                " header_keys, header_values FROM dead_letters WHERE id = :i FOR UPDATE"
            ),
            {"i": letter_id},
        )
    ).first()
    if row is None:
        raise LookupError(letter_id)
    if row.status != "PENDING":
        raise NotPending(letter_id, row.status)
    return Record(
        topic=row.source_topic,
        partition=row.source_partition,
        offset=row.source_offset,
        key=None if row.key is None else bytes(row.key),
        value=None if row.value is None else bytes(row.value),
        headers=kafka_headers.from_columns(row.header_keys, row.header_values),
    )


async def _pending_record(db: Database, letter_id: int) -> Record:
    """The original record of a PENDING letter, read in a transaction of its own."""
    async with db.engine.begin() as conn:
        return await _lock_pending(conn, letter_id)


#: An operator's replays and discards take their turns in a process. A replay holds one
#: pooled connection (the letter's row lock) while its attempt takes a second: many at once
#: took every connection of the pool and waited for one more, for ever (an attack trial:
#: 25 concurrent replays left order_svc unready until it was killed). One at a time, they
#: need two connections at most, and a discard never holds one while it waits for a
#: replay's row lock.
_ONE_AT_A_TIME = asyncio.Lock()


async def replay(db: Database, pipeline: ConsumerPipeline, letter_id: int) -> ReplayResult:
    """Run a PENDING letter through ``pipeline`` again (in the pipeline's own transaction,
    while this one holds the letter's row): REPLAYED, or still PENDING with the new reason
    and ``StillFailing``. ``NotPending`` if it was resolved, ``LookupError`` if none. A
    transient failure that lasts (``ConsumerPipeline.attempt``) is raised: a 503."""
    async with _ONE_AT_A_TIME:
        return await _replay(db, pipeline, letter_id)


async def _replay(db: Database, pipeline: ConsumerPipeline, letter_id: int) -> ReplayResult:
    async with db.unit_of_work() as uow:
        record = await _lock_pending(uow.conn, letter_id)
        attempt = await pipeline.attempt(record)
        failed = attempt.outcome is Outcome.DEAD_LETTERED
        reason = dead_letter_reason(attempt.reason or "unknown") if failed else None
        await uow.conn.execute(
            text(
                "UPDATE dead_letters SET replay_attempts = replay_attempts + 1,"
                " status = CASE WHEN :failed THEN status ELSE 'REPLAYED' END,"
                " reason = CASE WHEN :failed THEN :reason ELSE reason END,"
                " resolved_at = CASE WHEN :failed THEN NULL ELSE clock_timestamp() END"
                " WHERE id = :i"
            ),
            {"failed": failed, "reason": reason, "i": letter_id},
        )
    if reason is not None:
        raise StillFailing(letter_id, reason)
    return ReplayResult(id=letter_id, status="REPLAYED", outcome=attempt.outcome.value)


async def discard(db: Database, letter_id: int) -> DeadLetterSummary:
    """Mark a PENDING letter DISCARDED; ``NotPending`` if it was resolved (a replay that
    held it meanwhile included), ``LookupError`` if none."""
    async with _ONE_AT_A_TIME, db.unit_of_work() as uow:
        await _lock_pending(uow.conn, letter_id)
        await uow.conn.execute(
            text("UPDATE dead_letters SET status = 'DISCARDED', resolved_at = now() WHERE id = :i"),
            {"i": letter_id},
        )
    return await get_letter(db, letter_id)


#: A dead letter's id: a positive BIGINT, in digits.
LetterId = Annotated[int, Path(ge=1, le=2**63 - 1), IN_DIGITS]

router = APIRouter(prefix="/dead-letters", tags=["dead letters"])
_NOT_FOUND = errors({404: "no such dead letter"})
_NOT_FOUND_OR_RESOLVED = errors(
    {
        404: "no such dead letter",
        409: "already resolved (`dead_letter_resolved`), or the replay failed again (`replay_failed`)",
    }
)


@router.get("", summary="Dead letters", response_model=list[DeadLetterSummary], responses=errors())
async def get_dead_letters(
    db: DatabaseDep,
    status: Annotated[StatusFilter, AnyCase] = "PENDING",
    limit: Annotated[int, Query(ge=1, le=1000), IN_DIGITS] = 100,
    before: Annotated[
        int | None,
        Query(ge=1, le=2**63 - 1, description="only letters with a lower id: the next page"),
        IN_DIGITS,
    ] = None,
) -> list[DeadLetterSummary]:
    """Newest first; those waiting for a decision unless another ``status`` (or ALL) is asked.
    Past ``limit``, the next page is ``before`` the last id of this one."""
    return await list_letters(db, None if status == "ALL" else status, limit, before)


@router.get("/{letter_id}", summary="One dead letter", response_model=DeadLetter, responses=_NOT_FOUND)
async def get_dead_letter(letter_id: LetterId, db: DatabaseDep) -> DeadLetter:
    """One dead letter with its reason, source, key, headers and a preview of its body."""
    try:
        return await get_letter(db, letter_id)
    except LookupError:
        raise HTTPException(404, f"dead letter {letter_id} not found") from None


@router.get(
    "/{letter_id}/value",
    summary="A dead letter's original bytes",
    response_class=Response,
    responses={**_NOT_FOUND, 200: {"content": {"application/octet-stream": {}}}},
)
async def get_dead_letter_value(letter_id: LetterId, db: DatabaseDep) -> Response:
    """The exact original bytes of the dead letter's body (empty for a record without one)."""
    try:
        value = await original_value(db, letter_id)
    except LookupError:
        raise HTTPException(404, f"dead letter {letter_id} not found") from None
    return Response(value or b"", media_type="application/octet-stream")


@router.post(
    "/{letter_id}/replay",
    summary="Process a dead letter again",
    response_model=ReplayResult,
    responses=_NOT_FOUND_OR_RESOLVED,
)
async def post_replay(letter_id: LetterId, db: DatabaseDep, request: Request) -> ReplayResult:
    """Process the original record again through this service's consumer pipeline, after
    its cause is fixed; the inbox still guarantees one effect. If it fails again it stays
    PENDING with the new reason (409)."""
    try:
        return await replay(db, request.app.state.pipeline, letter_id)
    except LookupError:
        raise HTTPException(404, f"dead letter {letter_id} not found") from None


@router.post(
    "/{letter_id}/discard",
    summary="Decide a dead letter needs no processing",
    response_model=DeadLetterSummary,
    responses=_NOT_FOUND_OR_RESOLVED,
)
async def post_discard(letter_id: LetterId, db: DatabaseDep) -> DeadLetterSummary:
    """Mark it DISCARDED; it is kept until the pruner removes resolved letters."""
    try:
        return await discard(db, letter_id)
    except LookupError:
        raise HTTPException(404, f"dead letter {letter_id} not found") from None
