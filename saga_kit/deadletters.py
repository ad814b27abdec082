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

import base64
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel
from sqlalchemy import text

from saga_kit.consumer import MessageProcessor, Outcome, Record
from saga_kit.db import Database
from saga_kit.errors import DomainRejection
from saga_kit.http import DatabaseDep

Status = Literal["PENDING", "REPLAYED", "DISCARDED"]


class DeadLetterSummary(BaseModel):
    id: int
    status: Status
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    event_type: str | None
    order_id: str | None
    replay_attempts: int
    created_at: datetime
    resolved_at: datetime | None


class DeadLetter(DeadLetterSummary):
    key: str | None
    headers: list[tuple[str, str]]
    #: The original bytes as UTF-8 text (undecodable bytes replaced) and exactly, base64.
    value_text: str | None
    value_base64: str | None


class ReplayResult(BaseModel):
    id: int
    status: Status
    outcome: str


class NotPending(DomainRejection):
    def __init__(self, letter_id: int, status: str) -> None:
        super().__init__("dead_letter_resolved", f"dead letter {letter_id} is already {status}")


class StillFailing(DomainRejection):
    def __init__(self, letter_id: int, reason: str) -> None:
        super().__init__("replay_failed", f"dead letter {letter_id} failed again: {reason}")


_COLUMNS = (
    "id, status, reason, source_topic, source_partition, source_offset, key, value, headers,"
    " replay_attempts, created_at, resolved_at"
)


def _peek(value: bytes | None) -> tuple[str | None, str | None]:
    """Best-effort event type and order id of raw bytes, for listing only."""
    try:
        data = json.loads(value or b"")
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    event_type, order_id = data.get("event_type"), data.get("order_id")
    return (
        event_type if isinstance(event_type, str) else None,
        order_id if isinstance(order_id, str) else None,
    )


def _summary(row: Any) -> dict[str, Any]:
    value = None if row.value is None else bytes(row.value)
    event_type, order_id = _peek(value)
    return {
        **{k: getattr(row, k) for k in DeadLetterSummary.model_fields if hasattr(row, k)},
        "event_type": event_type,
        "order_id": order_id,
    }


async def list_letters(db: Database, status: Status | None, limit: int) -> list[DeadLetterSummary]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                f"SELECT {_COLUMNS} FROM dead_letters WHERE (CAST(:s AS TEXT) IS NULL OR status = :s)"
                " ORDER BY id DESC LIMIT :n"
            ),
            {"s": status, "n": limit},
        )
        return [DeadLetterSummary.model_validate(_summary(r)) for r in rows]


async def get_letter(db: Database, letter_id: int) -> DeadLetter:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(text(f"SELECT {_COLUMNS} FROM dead_letters WHERE id = :i"), {"i": letter_id})
        ).first()
    if row is None:
        raise LookupError(letter_id)
    value = None if row.value is None else bytes(row.value)
    key = None if row.key is None else bytes(row.key).decode("utf-8", "replace")
    return DeadLetter.model_validate(
        {
            **_summary(row),
            "key": key,
            "headers": [(k, v) for k, v in row.headers],
            "value_text": None if value is None else value.decode("utf-8", "replace"),
            "value_base64": None if value is None else base64.b64encode(value).decode(),
        }
    )


async def _pending(db: Database, letter_id: int) -> DeadLetter:
    letter = await get_letter(db, letter_id)
    if letter.status != "PENDING":
        raise NotPending(letter_id, letter.status)
    return letter


async def replay(db: Database, processor: MessageProcessor, letter_id: int) -> ReplayResult:
    letter = await _pending(db, letter_id)
    record = Record(
        topic=letter.source_topic,
        partition=letter.source_partition,
        offset=letter.source_offset,
        key=None if letter.key is None else letter.key.encode(),
        value=None if letter.value_base64 is None else base64.b64decode(letter.value_base64),
        headers=[(k, v.encode()) for k, v in letter.headers if not k.startswith("dlq.")],
    )
    attempt = await processor.attempt(record)
    failed = attempt.outcome is Outcome.DEAD_LETTERED
    async with db.unit_of_work() as uow:
        await uow.conn.execute(
            text(
                "UPDATE dead_letters SET replay_attempts = replay_attempts + 1,"
                " status = CASE WHEN :failed THEN status ELSE 'REPLAYED' END,"
                " reason = CASE WHEN :failed THEN :reason ELSE reason END,"
                " resolved_at = CASE WHEN :failed THEN NULL ELSE clock_timestamp() END"
                " WHERE id = :i"
            ),
            {"failed": failed, "reason": attempt.reason, "i": letter_id},
        )
    if failed:
        raise StillFailing(letter_id, attempt.reason or "unknown")
    return ReplayResult(id=letter_id, status="REPLAYED", outcome=attempt.outcome.value)


async def discard(db: Database, letter_id: int) -> DeadLetterSummary:
    await _pending(db, letter_id)
    async with db.unit_of_work() as uow:
        await uow.conn.execute(
            text(
                "UPDATE dead_letters SET status = 'DISCARDED', resolved_at = clock_timestamp()"
                " WHERE id = :i AND status = 'PENDING'"
            ),
            {"i": letter_id},
        )
    return await get_letter(db, letter_id)


router = APIRouter(prefix="/dead-letters", tags=["dead letters"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such dead letter"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "already resolved, or the replay failed again (the reason says which)"}
}


@router.get("", response_model=list[DeadLetterSummary])
async def get_dead_letters(
    db: DatabaseDep,
    status: Status | Literal["ALL"] = "PENDING",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetterSummary]:
    """Newest first; those waiting for a decision unless another ``status`` (or ALL) is asked."""
    return await list_letters(db, None if status == "ALL" else status, limit)


@router.get("/{letter_id}", response_model=DeadLetter, responses=_NOT_FOUND)
async def get_dead_letter(letter_id: int, db: DatabaseDep) -> DeadLetter:
    try:
        return await get_letter(db, letter_id)
    except LookupError:
        raise HTTPException(404, f"dead letter {letter_id} not found") from None


@router.post("/{letter_id}/replay", response_model=ReplayResult, responses={**_NOT_FOUND, **_CONFLICT})
async def post_replay(letter_id: int, db: DatabaseDep, request: Request) -> ReplayResult:
    """Process the original bytes again through this service's consumer pipeline."""
    try:
        return await replay(db, request.app.state.processor, letter_id)
    except LookupError:
        raise HTTPException(404, f"dead letter {letter_id} not found") from None


@router.post("/{letter_id}/discard", response_model=DeadLetterSummary, responses={**_NOT_FOUND, **_CONFLICT})
async def post_discard(letter_id: int, db: DatabaseDep) -> DeadLetterSummary:
    """Mark it as not needing processing; it is pruned later."""
    try:
        return await discard(db, letter_id)
    except LookupError:
        raise HTTPException(404, f"dead letter {letter_id} not found") from None
