"""The audit trail: who changed what, when, and how it ended — append-only, hash-chained.

Every service keeps one ``audit_log`` table. An entry is written for

* every state-changing API call (POST, PUT, PATCH, DELETE), whatever its outcome but a
  503 (the service did nothing: it was overloaded, or its database was away, where the
  entry could not go either) or a refusal of the request guard in front of it
  (``saga_kit.http.RequestGuard``: nothing of the service ran), by the
  ``AuditTrail`` middleware after the route answered and before the answer is sent
  (group-committed: ``AuditWriter``): who
  (the token's subject and role, ``anonymous`` without a valid one, also for a call answered
  before its route's authentication ran: ``_identify``), what (method and
  route, the resource's path), when, the request's trace id, the outcome (the status);
* every compensation the service performs (``COMPENSATIONS``: a release, refund, void or
  cancellation), by an emit hook in the same transaction as the compensation itself: the
  service is the actor, the event that caused it the request.

**The chain.** Each entry is stored as its canonical JSON text (``canonical``) with the
hash of the entry before it: ``hash = SHA-256(prev_hash ‖ UTF-8(entry))`` (PostgreSQL's
``sha256``; the first entry's ``prev_hash`` is 32 zero bytes). Appends serialize on an
advisory lock, so the chain is one line even with several instances. Altering an entry
breaks its hash; removing one breaks the next entry's ``prev_hash``;
``saga_kit.auditchain.verify`` finds both, without trusting the service (``sagactl audit
verify`` recomputes every hash from ``GET /audit``). Rewriting the whole tail after an
entry is only detectable against a head hash recorded elsewhere: ``sagactl audit
verify`` prints it to keep. Triggers refuse UPDATE, DELETE and TRUNCATE on the table:
only someone who can disable triggers (the owner) can alter or remove an entry, and then
the chain shows it — but emptying the table, or appending a made-up entry (the hash has
no secret in it: whoever may INSERT, as the service's own database user may, can compute
it), shows only against a head hash kept elsewhere, as a rewritten tail does.

A crash between a call's commit and its audit entry loses that entry (the call is
written first), and so does a call whose ``COMMIT`` went through while its answer was
lost with the database's connection: it is answered 503, and a 503 writes no entry. A
compensation's entry is never lost (same transaction). Nor is the
entry of a placed order: ``POST /orders`` hands its entry (``CallAudit``) to the order
desk, which appends it in the transaction that places the order (``append``) and tells
the middleware it is written (``mark_audited``) — one transaction fewer per group of
orders, and an order never exists without its entry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from sqlalchemy import text
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from events.values import printable
from saga_kit import auth, tracing
from saga_kit.auditchain import GENESIS, canonical, chain_hash
from saga_kit.errors import is_transient
from saga_kit.http import IN_DIGITS, errors

log = logging.getLogger(__name__)

#: Events that compensate: each is an audit entry of the service that emits it.
COMPENSATIONS = frozenset({"InventoryReleased", "PaymentRefunded", "PaymentVoided", "OrderCancelled"})
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: Appending: take the chain's lock (held to the commit; key arbitrary, constant), then
#: link to the head. The table: saga_kit.migrations (saga_kit 7).
LOCK_SQL = "SELECT pg_advisory_xact_lock(7301004)"
#: (The driver's placeholders: ``UnitOfWork.write`` and ``exec_driver_sql`` both send it.)
APPEND_SQL = (
    "INSERT INTO audit_log (entry, prev_hash, hash)"
    " SELECT %(entry)s, h.prev, sha256(h.prev || convert_to(%(entry)s, 'UTF8'))"
    " FROM (SELECT coalesce((SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1),"
    " decode(repeat('00', 32), 'hex')) AS prev) h"
)


def new_entry(
    actor: str, role: str, action: str, resource: str, outcome: str, request_id: str | None
) -> dict[str, Any]:
    return {
        "at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "role": role,
        "action": action,
        "resource": resource,
        "outcome": outcome,
        "request_id": request_id,
    }


# -- writing ------------------------------------------------------------------------------


def append(uow: Any, entries: Sequence[str]) -> None:
    """Append ``entries`` (canonical JSON, in order) to the chain in ``uow``'s transaction
    (a ``saga_kit.db.UnitOfWork``): under the chain's lock, each linked to the head in SQL,
    written with the transaction's other statements."""
    if not entries:
        return
    uow.write(LOCK_SQL, {})
    for entry in entries:
        uow.write(APPEND_SQL, {"entry": entry})


@dataclass(frozen=True)
class CallAudit:
    """Who made a call and under which request, for an entry written with the call's own
    transaction instead of by the middleware."""

    actor: str
    role: str
    action: str
    request_id: str | None

    def entry(self, resource: str, outcome: str) -> str:
        """The entry (canonical JSON) of the call, ending in ``outcome`` on ``resource``."""
        return canonical(new_entry(self.actor, self.role, self.action, resource, outcome, self.request_id))


def caller_audit(principal: Any, action: str) -> CallAudit:
    """The call ``action`` of ``principal`` (a ``saga_kit.auth.Principal``; ``anonymous``,
    role ``none``, when it is None or not authenticated), in the current trace: for an
    HTTP call (``call_audit``) and for a command that stands for one (the order service's
    ``orders.commands``)."""
    authenticated = principal is not None and principal.authenticated
    ids = tracing.current_ids()
    return CallAudit(
        principal.subject if authenticated else "anonymous",
        ",".join(sorted(principal.roles)) if authenticated else "none",
        action,
        ids[0] if ids else None,
    )


#: The most characters of a request's path an entry keeps (``request_path``).
PATH_CHARACTERS = 1024


def request_path(scope: Scope) -> str:
    """The request's path as an entry keeps it: cut to ``PATH_CHARACTERS`` and with control
    and bidirectional characters escaped (``events.values.printable``). Anyone may send a
    path, and an entry is never deleted: an anonymous POST to a path of 64,000 characters
    was an entry of 128,000, and a NUL or a U+202E went into it as it came (an attack trial)."""
    # a backslash escaped too, and a newline: "/x%00y" (a NUL) and "/x%5Cx00y" (a backslash,
    # then "x00") were one entry, "/x\\x00y" (a second attack trial)
    path: str = scope["path"]
    raw = scope.get("raw_path")
    if raw is not None and "\ufffd" in path:
        # the server put U+FFFD for bytes that are not UTF-8: "/x%ff%fe" and "/x%EF%BF%BD%EF%BF%BD"
        # were one entry (a third attack trial); the bytes themselves are kept, as \xff
        # (a backslash is never part of a UTF-8 sequence: doubled first, it stays told apart)
        sent = unquote_to_bytes(raw.partition(b"?")[0]).replace(b"\\", b"\\\\")
        text = sent.decode("utf-8", "backslashreplace")
    else:
        text = path.replace("\\", "\\\\")
    return printable(text.replace("\n", "\\n").replace("\t", "\\t"), PATH_CHARACTERS)


def call_audit(scope: Scope) -> CallAudit:
    """The caller and request of ``scope`` (the route's; a path no route matched, as
    ``request_path``), as ``AuditTrail`` records them."""
    route = getattr(scope.get("route"), "path", None) or request_path(scope)
    return caller_audit(scope.get("state", {}).get("principal"), f"{scope['method']} {route}")


def mark_audited(scope: Scope) -> None:
    """Tell ``AuditTrail`` that this request's entry was written with its transaction."""
    scope.setdefault("state", {})["audited"] = True


def record_compensations(uow: Any, emitted: Sequence[Any]) -> None:
    """Emit hook (saga_kit.db): an entry for each compensation emitted, in its unit of
    work, so the compensation and its audit entry commit together."""
    entries = []
    for delivery in emitted:
        envelope = delivery.envelope
        if envelope.event_type not in COMPENSATIONS:
            continue
        entry = new_entry(
            f"service:{envelope.producer}",
            "service",
            f"compensate {envelope.event_type}",
            f"/orders/{envelope.order_id}",
            "done",
            tracing.trace_id_of(delivery.trace()),
        )
        entry["cause"] = str(envelope.causation_id) if envelope.causation_id else None
        entries.append(canonical(entry))
    append(uow, entries)


class AuditTrail:
    """ASGI middleware: an audit entry for every state-changing call, written after the
    route answered and before the answer leaves (module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _STATE_CHANGING:
            await self.app(scope, receive, send)
            return
        ids = tracing.current_ids()

        async def audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                await self._write(scope, message, ids[0] if ids else None)
            await send(message)

        await self.app(scope, receive, audited)

    async def _write(self, scope: Scope, start: Message, trace_id: str | None) -> None:
        if scope.get("state", {}).get("audited"):
            return  # written with the call's own transaction (mark_audited)
        if start["status"] == 503:
            return  # nothing was done: overloaded, or the database away (module doc)
        location = next((v.decode("latin-1") for k, v in start.get("headers", []) if k == b"location"), None)
        await _identify(scope)
        call = replace(call_audit(scope), request_id=trace_id)
        entry = call.entry(location or request_path(scope), str(start["status"]))
        state = scope["app"].state
        try:
            writer: AuditWriter | None = getattr(state, "audit_writer", None)
            if writer is None:
                writer = state.audit_writer = AuditWriter(state.db.engine)
            await writer.append(entry)
        except Exception as exc:  # the call happened: say loudly that its record did not
            if is_transient(exc):  # the database went away after the call: no traceback
                log.error("audit entry not written (%s: %s): %s", type(exc).__name__, exc, entry)
            else:
                log.exception("audit entry not written: %s", entry)


async def _identify(scope: Scope) -> None:
    """Name the caller of a call that was answered before any route's authentication ran —
    no route for its path (404) or method (405), a body that did not arrive (408) or broke
    off (400) — from its bearer token, for its entry alone (``app.state.identify``, the
    service's verifier): a valid token's caller was ``anonymous`` there (an attack trial),
    where the design says ``anonymous`` only without one. A token that is not valid leaves
    it anonymous; the answer is not changed."""
    state = scope.setdefault("state", {})
    identify = getattr(scope["app"].state, "identify", None)
    if "principal" in state or identify is None:
        return
    given = Headers(scope=scope).getlist("authorization")
    if not auth.credentials(given):
        return
    try:
        state["principal"] = await identify(given)
    except auth.Unauthorized:
        pass  # not a valid token: anonymous
    except Exception as exc:  # the key server away, …: the call is audited all the same
        log.warning("audit: the caller of %s could not be identified (%s)", request_path(scope), exc)


class AuditWriter:
    """Group commit of the calls' audit entries: the entries that arrive while one
    transaction runs are appended together by the next — under the chain's lock, after
    reading its head once, as one multi-row insert whose hashes are chained here (the
    same ``chain_hash`` the database computes for a compensation's entry). Each caller
    waits for its own entry's commit."""

    def __init__(self, engine: Any, max_batch: int = 500) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def append(self, entry: str) -> None:
        """Append ``entry`` (canonical JSON) to the chain; returns once it is committed."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="audit-writer")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((entry, done))
        await done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write([entry for entry, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _write(self, entries: Sequence[str]) -> None:
        async with self._engine.begin() as conn:
            await conn.exec_driver_sql(LOCK_SQL)
            head = (
                await conn.exec_driver_sql("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            ).scalar()
            previous = bytes(head) if head is not None else GENESIS
            rows: list[tuple[str, bytes, bytes]] = []
            for entry in entries:
                digest = chain_hash(previous, entry)
                rows.append((entry, previous, digest))
                previous = digest
            await conn.exec_driver_sql(
                # rows in chain order, so seq (nextval per row as it is inserted) follows it
                "INSERT INTO audit_log (entry, prev_hash, hash)"
                " SELECT r.entry, r.prev_hash, r.hash"
                " FROM unnest(%(entries)s::text[], %(prev)s::bytea[], %(hashes)s::bytea[])"
                " WITH ORDINALITY AS r(entry, prev_hash, hash, n) ORDER BY r.n",
                {
                    "entries": [r[0] for r in rows],
                    "prev": [r[1] for r in rows],
                    "hashes": [r[2] for r in rows],
                },
            )


# -- reading ------------------------------------------------------------------------------


class AuditEntry(BaseModel):
    """One audit entry: ``entry`` is its canonical JSON text (what the hash covers), the
    hashes hex."""

    seq: int
    entry: str
    prev_hash: str
    hash: str


router = APIRouter(tags=["audit"])


@router.get(
    "/audit", summary="The audit trail, oldest first", response_model=list[AuditEntry], responses=errors()
)
async def get_audit(
    request: Request,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="only entries with a higher seq"), IN_DIGITS
    ] = 0,
    before: Annotated[
        int | None,
        Query(
            ge=1,
            le=2**63 - 1,
            description="only entries with a lower seq, the last `limit` of them"
            " (the newest: 9223372036854775807)",
        ),
        IN_DIGITS,
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000, description="the most entries answered"), IN_DIGITS] = 1000,
) -> list[AuditEntry]:
    """Entries after ``seq`` ``after``, oldest first, at most ``limit``: each its
    canonical JSON text (``at``, ``actor``, ``role``, ``action``, ``resource``,
    ``outcome``, ``request_id`` — the trace id — and a compensation's ``cause``: the id of
    the event it answers, None when a call or the deadline caused it) and its
    chain hashes, so a reader can recompute every hash itself (``sagactl audit verify``).
    With ``before``, the last ``limit`` entries below it, still oldest first: the newest
    page, and the one before each (``sagactl audit list``)."""
    newest = before is not None
    query = (
        "SELECT seq, entry, prev_hash, hash FROM audit_log WHERE seq > :a"
        + (" AND seq < :b ORDER BY seq DESC" if newest else " ORDER BY seq")
        + " LIMIT :n"
    )
    async with request.app.state.db.engine.connect() as conn:
        rows = (await conn.execute(text(query), {"a": after, "b": before, "n": limit})).all()
    return [
        AuditEntry(seq=r.seq, entry=r.entry, prev_hash=bytes(r.prev_hash).hex(), hash=bytes(r.hash).hex())
        for r in (reversed(rows) if newest else rows)
    ]
