"""Consumer progress: notice a partition whose records wait while the consumer takes none
of them, and records that never reached the pipeline, and recover by reading them again.

faust-streaming and aiokafka have known ways of losing a partition's progress around a
rebalance, with no error: a partition no longer fetched or no longer delivered to the
stream (faust-streaming issues #629 "Certain topic partitions are not sending fetch
requests", #523 "Faust agents die after some days"), fetched records dropped between the
fetcher and the stream (faust's consumer drops the rest of a fetch when the generation
changes, and records below its read offset). Nothing fails then: the partition's sagas
wait until their deadlines cancel them, and the group's committed offset stays short of
the partition's end — which is how a chaos run on Apache Kafka saw it once
(``sagastack.chaos.unconsumed``). A consumer here watches for two signs:

* a **gap**: a batch's first record from a partition lies past the next offset the
  pipeline expected there (after the last one processed, or the group's committed
  offset for a first batch, or — a group that never committed there — the partition's
  earliest offset, where reading starts: asked of the broker at the next look), and the
  committed offset is not past that offset either (no other member of the group took
  them);
* a partition **behind its end**: its end offset, asked of the broker (ListOffsets),
  lies past the next offset to process, while no record of it was processed for
  ``CONSUMER_STALL_SECONDS``.

Not every offset a consumer never receives was a record: Apache Kafka gives each
transaction's commit or abort marker an offset and delivers neither it nor aborted
records (an attack trial's one-record transactions made every batch after a marker look
like a gap, and a trailing marker kept a partition "stalled" for good). So a sign is
first **probed**: the partition is resumed and sought back to the first offset not
processed, quietly (INFO). Records arriving from the probed range confirm a loss: a
WARNING naming the partition and offsets, counted in
``saga_consumer_recoveries_total{cause}``; the inbox (``saga_kit.inbox``) makes every
record read twice harmless. A probe no record confirms within ``CONSUMER_STALL_SECONDS``
found nothing there: those offsets count as consumed (``void``). A partition behind its
end whose *fetching* stopped short of the end (the client's fetch position) is a
**stall** at once: a WARNING, counted, sought back, and ``/health/ready`` answers 503
naming it until its records flow. Records that retention deleted before they were
consumed cannot be read again: that is logged as an error and not retried.

A pipeline that is retrying a transient failure, holding a batch it cannot get
through, or still inside one batch after the look's interval (a database that hangs
instead of refusing: no error, no retry, only a wait) is not stalled: it is waiting for
a known reason, which readiness reports. Nothing is judged then, and a probe's time
does not run — no record can confirm it while the agent takes none."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import TP

from saga_kit.consumer import ConsumerStats, Record

log = logging.getLogger(__name__)


def fetched_end(consumer: Any, tp: Any) -> int | None:
    """The high watermark the last fetch of ``tp`` reported (``consumer``: aiokafka's, or
    faust's, which hands the call to it): None before a fetch, and when ``tp`` is no longer
    assigned (a rebalance since: aiokafka asserts it is, and with assertions off finds no
    state to read)."""
    try:
        end: int | None = consumer.highwater(tp)
    except (AssertionError, AttributeError):
        return None
    return end


def partition_lag(next_offset: int | None, looked: int | None, fetched: int | None) -> int | None:
    """Records behind a partition's end not yet processed, or None if not known: from the
    next offset to process to the further of two ends, each at most the true one — the one
    the progress watch last asked the broker for (``looked``, every few seconds; how long
    ago: ``ends_age``) and the high watermark of the last fetch (``fetched``, live). The
    watch's alone went stale between looks: the lag fell toward 0 as records were processed
    while more arrived (an attack trial's reading of the code)."""
    ends = [end for end in (looked, fetched) if end is not None]
    if next_offset is None or not ends:
        return None
    return max(0, max(ends) - next_offset)


#: Seconds of looks that could not ask the broker after which the watch says so at WARNING,
#: once until a look succeeds again (which it says at INFO): a broker that answered nothing
#: for 36 s was INFO lines alone in the services that had nothing to publish (a trial).
BROKER_AWAY_WARNING_SECONDS = 30.0

#: (topic, partition)
Partition = tuple[str, int]


@dataclass(frozen=True)
class Stall:
    """A partition behind its end with nothing processed for ``seconds``."""

    topic: str
    partition: int
    #: the next offset to process (``ProgressWatchdog.next_offset``)
    next_offset: int
    #: the partition's end offset (the offset its next record will get)
    end_offset: int
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.topic}[{self.partition}]: {self.end_offset - self.next_offset} records waiting"
            f" (next offset {self.next_offset}, end offset {self.end_offset}),"
            f" none processed for {self.seconds:.0f} s"
        )


class StallWatch:
    """Which partitions are stalled, from successive looks at their end offsets and next
    offsets (``observe``); the pure half of ``ProgressWatchdog``.

    A partition is stalled once it has been behind its end at the same next offset for
    ``after`` seconds; any progress, or reaching its end, starts the count again."""

    def __init__(self, after: float) -> None:
        self.after = after
        self._since: dict[Partition, tuple[int, float]] = {}

    def observe(
        self, now: float, ends: Mapping[Partition, int], next_offsets: Mapping[Partition, int | None]
    ) -> list[Stall]:
        """The stalled partitions among ``ends`` (partition → end offset), ``now`` in
        seconds of a monotonic clock; a partition without a next offset (nothing processed
        and nothing committed) is not judged."""
        seen: dict[Partition, tuple[int, float]] = {}
        stalls: list[Stall] = []
        for tp, end in sorted(ends.items()):
            nxt = next_offsets.get(tp)
            if nxt is None or end <= nxt:
                continue
            at, since = self._since.get(tp, (nxt, now))
            if at != nxt:
                since = now
            seen[tp] = (nxt, since)
            if now - since >= self.after:
                stalls.append(Stall(tp[0], tp[1], nxt, end, now - since))
        self._since = seen
        return stalls

    def restart(self, tp: Partition, now: float) -> None:
        """Count ``tp`` afresh from ``now`` (after a recovery was attempted)."""
        if tp in self._since:
            self._since[tp] = (self._since[tp][0], now)


def skipped(expected: int | None, committed: int | None, first: int) -> bool:
    """True when a batch's first record of a partition, at offset ``first``, lies past
    ``expected`` (the next offset the pipeline expected there) and the group's
    ``committed`` offset is not past ``expected`` either: the records between were
    skipped, not taken by another member of the group. With nothing processed here yet
    (``expected`` None), reading starts at the committed offset, so a first record past
    it is a gap; with no committed offset either, reading started at the partition's
    earliest offset, which only the broker knows (``ProgressWatchdog._anchor``)."""
    if expected is None:
        return committed is not None and first > committed
    if first <= expected:
        return False
    return committed is None or committed <= expected


@dataclass
class Probe:
    """A range of a partition sought back to see whether it holds records the pipeline
    never got: offsets ``start`` to ``end - 1``, found by ``cause`` ("gap" or "stall"),
    sought back at ``at`` (None: not yet)."""

    start: int
    end: int
    cause: str
    at: float | None = None


class ProgressWatchdog:
    """Watches one service's faust consumer (module doc).

    ``consumer`` is the faust app's consumer (``app.consumer``); ``stats`` the pipeline's
    ``ConsumerStats``, whose ``positions`` give the next offset per partition; ``after``
    is ``CONSUMER_STALL_SECONDS``. ``run`` looks every ``interval`` seconds; ``batch_taken``
    is called by the agent with each batch before it is processed.

    Offsets a consumer never receives are not always lost records: Apache Kafka gives an
    offset to each transaction's commit or abort marker, and delivers neither the marker
    nor aborted records. So a suspicion (a gap, or a partition behind its end whose
    records were all fetched) is first *probed*: the range is sought back quietly (INFO),
    and only records arriving from it confirm a loss (WARNING, counted). A probe no
    record confirms within ``after`` seconds held none: the offsets up to its end are
    taken as consumed. A partition whose fetching itself stopped short of the end is a
    stall at once (WARNING, counted, readiness 503 until records flow)."""

    def __init__(
        self,
        consumer: Any,
        stats: ConsumerStats,
        after: float,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer, self.stats = consumer, stats
        self.after = after
        self.watch = StallWatch(after)
        self.interval = interval if interval is not None else max(0.5, min(5.0, after / 2))
        self._clock = clock
        #: partition → the next offset it stalled at, while its fetching is stopped short
        #: of its end and none of its records is processed (readiness reports them)
        self.stuck: dict[Partition, Stall] = {}
        #: partition's end offsets as the broker gave them at the last look that could ask
        self.ends: dict[Partition, int] = {}
        #: when (``clock``) the broker last gave ``ends``; None before the first answer and
        #: while nothing is assigned (``ends_age``)
        self.ends_at: float | None = None
        #: (topic, partition, cause) → losses found and recovered; cause "gap" or "stall"
        self.recoveries: Counter[tuple[str, int, str]] = Counter()
        #: partition → the range sought back, or to seek back at the next look
        self.probes: dict[Partition, Probe] = {}
        #: partition → offsets below this hold no record for this consumer (a probe found none)
        self.void: dict[Partition, int] = {}
        #: partition → past the last offset the agent took (``batch_taken``)
        self.taken: dict[Partition, int] = {}
        #: partition → the first offset of its first batch, taken with nothing processed
        #: or committed there: a gap if the partition's earliest offset is below it (``look``)
        self.unanchored: dict[Partition, int] = {}
        #: partition → its earliest offset, asked while nothing was processed, taken or
        #: committed there: where reading starts (offset reset "earliest")
        self.begins: dict[Partition, int] = {}
        self._wake = asyncio.Event()  # a gap found: look now, not at the interval's end
        #: when (``clock``) looks began failing, and whether that was said at WARNING
        self._failing_since: float | None = None
        self._warned = False
        self._last_failure = ""  # what the last look that failed raised, as "Type: message"

    def _warn_if_away(self, now: float) -> bool:
        """Say at WARNING, once per outage, that looks have failed since
        ``BROKER_AWAY_WARNING_SECONDS`` or more before ``now``; True if said now."""
        if (
            self._failing_since is None
            or self._warned
            or now - self._failing_since < BROKER_AWAY_WARNING_SECONDS
        ):
            return False
        self._warned = True
        log.warning(
            "consumer progress: could not look for %.0f s (%s): the broker is away or does not"
            " answer; /health/ready says so",
            now - self._failing_since,
            self._last_failure,
        )
        return True

    def ends_age(self) -> float | None:
        """Seconds since the broker last gave the assigned partitions' end offsets (the
        lag's reference, ``ends``), or None if it never has since the assignment. It grows
        while the broker cannot be asked — an outage, a partition between this service and
        the broker — when the lag shown is the last one known, not the present one."""
        return None if self.ends_at is None else max(0.0, self._clock() - self.ends_at)

    @property
    def stalls(self) -> list[Stall]:
        """The partitions stalled now (``stuck``), for readiness."""
        return [self.stuck[tp] for tp in sorted(self.stuck)]

    def _committed(self, tp: Partition) -> int | None:
        # faust's record of the group's committed offset per partition (the next offset
        # to read): set from the broker at assignment, and at each of its commits
        committed: Mapping[TP, int | None] = getattr(self.consumer, "_committed_offset", {})
        return committed.get(TP(*tp))

    def next_offset(self, tp: Partition, *, taken: bool = True) -> int | None:
        """The next offset to process on ``tp``: past the last one the agent took here
        (processed, or in the batch being processed: a batch held up on a lock is no
        stall), or the group's committed offset when that is further (or nothing was
        taken here), or past offsets a probe found hold no record; with none of these,
        the partition's earliest offset if a look asked for it (``begins``), else None.
        ``taken=False`` leaves out the batch in flight: the next offset *processed*, as
        the consumer lag counts it (records taken but not yet through the pipeline are
        still behind)."""
        known = self._known(tp, taken)
        return self.begins.get(tp) if known is None else known

    def _known(self, tp: Partition, taken: bool = True) -> int | None:
        candidates = (
            self.stats.positions.get(tp),
            self.taken.get(tp) if taken else None,
            self._committed(tp),
            self.void.get(tp),
        )
        known = [o for o in candidates if o is not None]
        return max(known) if known else None

    def waiting(self, now: float) -> bool:
        """True while the pipeline waits for a known reason (module doc): retrying a
        transient failure, holding a batch it cannot get through, or inside one batch
        for ``interval`` seconds or more (``now`` on ``clock``'s scale)."""
        held_up = self.stats.batch_age(now) >= self.interval
        return self.stats.retrying or bool(self.stats.stuck) or held_up

    def batch_taken(self, records: Sequence[Record]) -> None:
        """Called with each batch before it is processed: a record from a probed range
        confirms a loss (WARNING, counted); a partition whose first record skips past
        what was expected (``skipped``) is probed at the watch's next look, at once (the
        agent itself makes no call to the consumer's thread). A first batch of a
        partition with nothing processed, taken or committed there is checked against
        the partition's earliest offset at that look (``unanchored``)."""
        firsts: dict[Partition, int] = {}
        taken_before = set(self.taken)
        for r in records:
            tp = (r.topic, r.partition)
            firsts.setdefault(tp, r.offset)
            self.taken[tp] = max(self.taken.get(tp, 0), r.offset + 1)
            probe = self.probes.get(tp)
            if probe is not None and probe.at is not None and probe.start <= r.offset < probe.end:
                del self.probes[tp]
                self.recoveries[(tp[0], tp[1], probe.cause)] += 1
                log.warning(
                    "consumer lost records on the way: %s[%d] offsets %d-%d never reached the pipeline"
                    " (%s); read again from offset %d",
                    tp[0],
                    tp[1],
                    probe.start,
                    probe.end - 1,
                    "a gap in a batch" if probe.cause == "gap" else "the partition stalled",
                    probe.start,
                )
        for tp, first in firsts.items():
            expected, committed = self.stats.positions.get(tp), self._committed(tp)
            if tp in self.probes:
                continue
            if skipped(expected, committed, first):
                start = expected if expected is not None else committed
                assert start is not None
                log.info("%s[%d]: offsets %d-%d not seen; probing them", tp[0], tp[1], start, first - 1)
                self.probes[tp] = Probe(start, first, "gap")
                self._wake.set()
            elif expected is None and committed is None and first > 0 and tp not in taken_before:
                # reading started at the partition's earliest offset, which only the
                # broker knows (offset reset "earliest", saga_kit.faust_app)
                self.unanchored[tp] = first
                self._wake.set()

    async def _anchor(self, assigned: set[Partition]) -> None:
        """Probe each unanchored partition (``batch_taken``) whose earliest offset lies
        below its first batch's first offset: the records between never reached the
        pipeline, and no commit was there to show it. Kept for the next look if the
        broker does not answer."""
        pending = {tp: first for tp, first in self.unanchored.items() if tp in assigned}
        self.unanchored = {}
        if not pending:
            return
        try:
            earliest = await self.consumer.earliest_offsets(*(TP(*tp) for tp in pending))
        except Exception:
            self.unanchored = {**pending, **self.unanchored}
            raise
        for ftp, offset in earliest.items():
            tp = (ftp.topic, ftp.partition)
            first = pending.get(tp)
            if first is not None and offset is not None and int(offset) < first and tp not in self.probes:
                log.info(
                    "%s[%d]: offsets %d-%d not seen in the group's first batch there; probing them",
                    tp[0],
                    tp[1],
                    int(offset),
                    first - 1,
                )
                self.probes[tp] = Probe(int(offset), first, "gap")

    async def seek_back(self, tp: Partition, offset: int) -> None:
        """Resume fetching ``tp`` and seek it back to ``offset``; records that retention
        deleted are logged and left."""
        faust_tp = TP(*tp)
        earliest = (await self.consumer.earliest_offsets(faust_tp)).get(faust_tp)
        if earliest is not None and earliest > offset:
            log.error(
                "%s[%d]: offsets %d-%d were deleted (retention) before this consumer processed them;"
                " their events are lost to it",
                tp[0],
                tp[1],
                offset,
                earliest - 1,
            )
            offset = earliest
        self.consumer.resume_partitions([faust_tp])
        await self.consumer.seek_wait({faust_tp: offset})

    async def _probe(self, assigned: set[Partition], now: float, waiting: bool) -> None:
        """Seek back the probes not sought yet; end the ones no record confirmed within
        ``after`` seconds (their offsets hold no record: ``void``) or no longer assigned.
        While the pipeline is ``waiting`` no record can confirm a probe: its time starts
        again."""
        for tp, probe in sorted(self.probes.items()):
            if tp not in assigned:
                del self.probes[tp]  # the member that has it now reads from the committed offset
            elif waiting and probe.at is not None:
                probe.at = now
            elif probe.at is None:
                try:
                    await self.seek_back(tp, probe.start)
                except Exception as exc:  # the broker away: the next look tries again
                    log.info("%s[%d]: could not seek back yet (%s)", tp[0], tp[1], exc)
                else:
                    probe.at = now
            elif now - probe.at >= self.after:
                del self.probes[tp]
                self.void[tp] = max(self.void.get(tp, 0), probe.end)
                log.info(
                    "%s[%d]: offsets %d-%d hold no record for this consumer (transaction markers,"
                    " aborted or compacted records)",
                    tp[0],
                    tp[1],
                    probe.start,
                    probe.end - 1,
                )

    async def look(self) -> list[Stall]:
        """One look: probe what ``batch_taken`` found; ask the broker for the end offsets
        of the assigned partitions; for each partition behind its end with nothing
        processed for ``after`` seconds, ask where its fetching is: short of the end, a
        stall (WARNING, counted, sought back); at the end, a probe."""
        try:
            assigned = sorted(self.consumer.assignment())
        except Exception:  # not started, or rebalancing: nothing to judge
            return self.stalls
        now = self._clock()
        waiting = self.waiting(now)
        held = {(tp.topic, tp.partition) for tp in assigned}
        await self._anchor(held)
        await self._probe(held, now, waiting)
        if assigned:
            # asked even while the pipeline waits (a database outage): the lag goes on
            # being measured; while the broker cannot answer, ``ends_age`` grows
            ends = await self.consumer.highwaters(*assigned)
            self.ends = {(tp.topic, tp.partition): int(end) for tp, end in ends.items() if end is not None}
            self.ends_at = now
        else:
            self.ends, self.ends_at = {}, None
        unknown = {tp for tp in self.ends if self._known(tp, taken=False) is None}
        self.begins = {tp: o for tp, o in self.begins.items() if tp in unknown}
        if unknown:
            # nothing processed here and nothing committed (a first batch may be in
            # flight, and counts as lag until it is through): reading started at the
            # partition's earliest offset (offset reset "earliest", saga_kit.faust_app),
            # asked again at each look until something is (retention moves it)
            earliest = await self.consumer.earliest_offsets(*(TP(*tp) for tp in sorted(unknown)))
            for tp, first in earliest.items():
                if first is not None:
                    self.begins[(tp.topic, tp.partition)] = int(first)
        if waiting or not assigned:
            self.watch.observe(now, {}, {})  # waiting for a known reason, or holding nothing
            self.stuck = {}
            return []
        nexts = {tp: self.next_offset(tp) for tp in self.ends}
        for tp, stall in list(self.stuck.items()):  # stays stuck until records flow
            if nexts.get(tp) != stall.next_offset or tp not in self.ends:
                del self.stuck[tp]
        for stall in self.watch.observe(now, self.ends, nexts):
            tp = (stall.topic, stall.partition)
            self.watch.restart(tp, now)
            if tp in self.probes:
                continue
            fetched = await self.consumer.position(TP(*tp))
            if fetched is not None and fetched < stall.end_offset:
                if tp not in self.stuck:
                    self.recoveries[(tp[0], tp[1], "stall")] += 1
                log.warning(
                    "consumer stalled at %s, fetching stopped at offset %d; reading it again from offset %d",
                    stall.describe(),
                    fetched,
                    stall.next_offset,
                )
                self.stuck[tp] = stall
                await self.seek_back(tp, stall.next_offset)
            else:  # all fetched, none processed: lost on the way, or no records there
                log.info("%s; probing it", stall.describe())
                self.probes[tp] = Probe(stall.next_offset, stall.end_offset, "stall", at=now)
                await self.seek_back(tp, stall.next_offset)
        return self.stalls

    async def run(self) -> None:
        """``look`` every ``interval`` seconds, and at once when a batch showed a gap, for
        ever; a failed look is logged and the next one follows (the broker away, a
        rebalance under way)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self.look_once()

    async def look_once(self) -> None:
        """``look``, and log a failure: INFO, but WARNING once the looks have failed for
        ``BROKER_AWAY_WARNING_SECONDS`` (once until one succeeds again, which is said),
        counted from the start of the first look that failed (a lookup waits up to 10 s
        for its answer: counted from its failure, a trial's 46 s outage read 36 s)."""
        started = self._clock()
        # checked as a look starts too: looks that fail end 10, 25, 40 s after the first
        # began, and a 42 s outage was INFO lines alone (a trial)
        self._warn_if_away(started)
        try:
            await self.look()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # the broker away: a partition's wait is counted again once it answers,
            # not taken for a stall the moment it is back
            now = self._clock()
            self.watch.observe(now, {}, {})
            if self._failing_since is None:
                self._failing_since = started
            self._last_failure = f"{type(exc).__name__}: {exc}"
            if not self._warn_if_away(now):
                log.info("consumer progress: could not look (%s)", self._last_failure)
        else:
            if self._warned and self._failing_since is not None:
                log.info(
                    "consumer progress: the broker answers again, after %.0f s",
                    self._clock() - self._failing_since,
                )
            self._failing_since, self._warned = None, False
