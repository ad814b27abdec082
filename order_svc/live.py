"""Every saga's events, live, for the server-sent event streams of ``GET
/saga-events/stream``: one poller per process shared by all open streams (a fan-out hub),
so a hundred open dashboards cost one timeline query every half second, not a hundred.

A stream that starts in the past (``after``, ``Last-Event-ID``) first catches up with a
``timeline.Follower`` of its own, page by page, then takes the hub's rows. It joins the
hub *before* its last catch-up read, so nothing committed in between is missed, and leaves
out what the catch-up already sent (the follower's floor and seen set, which stop growing
once it hands over). A stream that starts now is the same, with a follower that starts
now: what is already visible when it connects is not sent.

Each stream has a bounded queue. A stream that cannot keep up (its client reads slower
than the timeline grows) is told so in a comment and ended; its client resumes from
``Last-Event-ID`` as browsers do by themselves. The route opens no stream while ``full``
(``ORDER_EVENT_STREAMS_MAX`` are open): a 503 with ``Retry-After``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from order_svc import timeline
from order_svc.timeline import Follower
from saga_kit.errors import is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two reads of the timeline while nothing new came (the hub's and a
#: catching-up stream's); a full page is followed by the next one at once.
POLL_INTERVAL = 0.5
#: Seconds between two tries while the database is away (each stream is told in a comment).
AWAY_INTERVAL = 1.0
#: Rows per read of the hub (``Follower.poll``'s ``limit``), shared by every stream.
PAGE = 500
#: Rows per read of a stream catching up on its own: each holds its page while its client
#: takes it, so a hundred streams from the start held a hundred pages of 500 (a second
#: attack trial: order_svc grew by 600 MB with events of 16 kB).
CATCH_UP_PAGE = 50
#: Reads a stream may have waiting before it counts as unable to keep up: a minute of
#: half-second polls.
QUEUE_DEPTH = 120


@dataclass(frozen=True)
class Away:
    """The database did not answer a read; the stream goes on when it is back."""


@dataclass(frozen=True)
class Ended:
    """The stream ends; ``why`` is said to its client in a comment."""

    why: str


#: What a stream is given: timeline rows (a read's worth, in recording order), or news.
Item = list[dict[str, Any]] | Away | Ended
#: A stream's queue at the hub.
Subscription = asyncio.Queue[Item]

AWAY_COMMENT = "the database is away; waiting for it"


async def _apart(read: Coroutine[Any, Any, T]) -> T:
    """``read``'s result (a read of the database for a stream), read in a task of its own
    that the end of the stream does not interrupt: it ends as usual and gives its
    connection back. A client that leaves has its stream's task cancelled, and cancelled
    again until it ends (anyio's cancel scopes, under sse-starlette); a read under way
    was interrupted twice, psycopg gave up cancelling its query, closed the connection
    and logged a WARNING (an operator trial: ``sagactl tail --from-start --count 1``, in
    two runs of three)."""
    task = asyncio.ensure_future(read)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_left)  # nobody waits for it now
        raise


def _left(read: asyncio.Future[Any]) -> None:
    """The outcome of a read whose stream ended before it (``_apart``): an error is
    logged here, not as asyncio's "exception was never retrieved"."""
    if not read.cancelled() and read.exception() is not None:
        log.error("live timeline: a read for a stream that has ended failed: %r", read.exception())


class LiveResponse(EventSourceResponse):
    """sse-starlette's response, for which a client that takes nothing for ``send_timeout``
    seconds is a WARNING, not an exception: its stream ends (its place at the hub is
    freed), and the server closes the connection. As an exception it was a traceback in
    the log for each (a second attack trial: 234 of them)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.warning("a live stream's client took nothing for %s s; its stream ends", self.send_timeout)


class LiveTimeline:
    """The hub: reads the timeline while at least one stream is open and hands each read
    to every open stream. ``max_streams``: how many may be open at once (``full``);
    ``queue_depth``: how many reads a stream may have waiting (``QUEUE_DEPTH``);
    ``poll_interval``: seconds between reads that found nothing new (``POLL_INTERVAL``)."""

    def __init__(
        self,
        engine: AsyncEngine,
        max_streams: int,
        *,
        queue_depth: int = QUEUE_DEPTH,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.engine = engine
        self.max_streams = max_streams
        self.queue_depth = queue_depth
        self.poll_interval = poll_interval
        self._streams: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def open_streams(self) -> int:
        """Streams open now (a stream ended for falling behind no longer counts)."""
        return len(self._streams)

    @property
    def full(self) -> bool:
        return len(self._streams) >= self.max_streams

    async def start(self, after: int | None) -> Follower:
        """Where a new stream starts: after position ``after`` (``Follower.resuming``: the
        late-commit window below it comes again), or now — also for an ``after`` past every
        event there is (a browser's ``Last-Event-ID`` from a database since wiped waited,
        silent, for the timeline to pass it). Reads the database (one away raises its
        error: before any answer, it is a 503)."""
        async with self.engine.connect() as conn:
            if after is not None and after <= await timeline.last_seq(conn):
                return await Follower.resuming(conn, after)
            return await Follower.starting_now(conn)

    def subscribe(self) -> Subscription:
        """A stream's place at the hub, counted from now (``full``); ``follow`` ends it, and
        so does ``unsubscribe`` (for a stream never followed: a HEAD, a client gone)."""
        queue: Subscription = asyncio.Queue(self.queue_depth)
        self._streams.add(queue)
        return queue

    def unsubscribe(self, queue: Subscription) -> None:
        self._streams.discard(queue)

    async def follow(self, follower: Follower, queue: Subscription | None = None) -> AsyncIterator[Item]:
        """The stream's rows from ``follower``'s position on: its own catch-up, then the
        hub's reads (through ``queue``, or a subscription of its own), each row once, until
        the stream falls behind or the hub ends it (its last item is then ``Ended``). A
        database away is an ``Away`` each second."""
        if queue is None:
            queue = self.subscribe()
        try:
            while True:  # catch up, reading on our own, until a read is not a full page
                # the hub starts before this stream's last read of its own: what commits
                # after that read, the hub reads after it too
                running = await self._hub_running()
                rows = await _apart(self._read(follower, CATCH_UP_PAGE)) if running else None
                if rows is None:
                    yield Away()
                    await asyncio.sleep(AWAY_INTERVAL)
                    continue
                if rows:
                    yield rows
                if len(rows) < CATCH_UP_PAGE:
                    break
            floor, sent = follower.floor, frozenset(follower.seen)
            while True:
                item = await queue.get()
                if isinstance(item, list):
                    item = [r for r in item if r["seq"] > floor and r["seq"] not in sent]
                    if not item:
                        continue
                yield item
                if isinstance(item, Ended):
                    return
        finally:
            self.unsubscribe(queue)

    async def _hub_running(self) -> bool:
        """Start the hub unless it runs; False when the database is away for its start."""
        if self._task is None:
            try:
                follower = await _apart(self._starting_now())
            except Exception as exc:
                if not is_transient(exc):
                    raise
                return False
            if self._task is None:  # another stream may have started it meanwhile
                self._task = asyncio.create_task(self._run(follower), name="live-timeline")
        return True

    async def _starting_now(self) -> Follower:
        async with self.engine.connect() as conn:
            return await Follower.starting_now(conn)

    async def _read(self, follower: Follower, page: int = PAGE) -> list[dict[str, Any]] | None:
        """One read of the timeline (at most ``page`` rows), or None when the database is away."""
        try:
            async with self.engine.connect() as conn:
                return await follower.poll(conn, page)
        except Exception as exc:
            if not is_transient(exc):
                raise
            return None

    async def _run(self, follower: Follower) -> None:
        """The hub's loop, from ``follower``'s position; it ends when the last stream
        closes (the next stream starts it again, from then)."""
        try:
            while self._streams:
                rows = await self._read(follower)
                if rows is None:
                    self._hand(Away())
                    await asyncio.sleep(AWAY_INTERVAL)
                    continue
                if rows:
                    self._hand(rows)
                if len(rows) < PAGE:
                    await asyncio.sleep(self.poll_interval)
        except Exception:
            log.exception("live timeline: reading the timeline failed; its event streams end")
            self._hand(Ended("the service could not read the timeline; reconnect to resume"))
        finally:
            self._task = None

    def end(self, queue: Subscription, why: str) -> None:
        """End one stream after what it was sent (its client resumes from there): its
        queue is emptied, and ``Ended(why)`` is its last item."""
        self._streams.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(Ended(why))

    def _hand(self, item: Item) -> None:
        for queue in list(self._streams):
            if isinstance(item, Away) and not queue.empty():
                continue  # it has news to read still: an outage does not fill its queue
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                # this stream's client reads slower than the timeline grows: the stream
                # ends after what it was sent, with nothing left out in between, and
                # resumes from Last-Event-ID when its client reconnects
                self.end(queue, "this stream fell behind; reconnect with Last-Event-ID to resume")
