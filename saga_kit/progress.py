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
  offset for a first batch), and the committed offset is not past that offset either
  (no other member of the group took them): records were skipped on the way;
* a **stall**: a partition assigned to this consumer whose end offset, asked of the broker
  (ListOffsets), lies past the next offset to process, while no record of it was
  processed for ``CONSUMER_STALL_SECONDS``.

Either way the consumer logs a warning naming the partition and offsets, counts it
(``saga_consumer_recoveries_total{cause}``), resumes the partition's fetching and seeks it
back to the first offset it did not process; the inbox (``saga_kit.inbox``) makes every
record read twice harmless. A stalled partition also makes ``/health/ready`` answer 503
with the stall until records flow again. Records that retention deleted before they were
consumed cannot be read again: that is logged as an error and not retried.

A pipeline that is retrying a transient failure, or holding a batch it cannot get
through, is not stalled: it is waiting for a known reason, which readiness reports."""

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

#: (topic, partition)
Partition = tuple[str, int]


@dataclass(frozen=True)
class Stall:
    """A partition behind its end with nothing processed for ``seconds``."""

    topic: str
    partition: int
    #: the next offset to process (last processed + 1, or the group's committed offset)
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
    it is a gap; with no committed offset either, nothing is known."""
    if expected is None:
        return committed is not None and first > committed
    if first <= expected:
        return False
    return committed is None or committed <= expected


class ProgressWatchdog:
    """Watches one service's faust consumer (module doc).

    ``consumer`` is the faust app's consumer (``app.consumer``); ``stats`` the pipeline's
    ``ConsumerStats``, whose ``positions`` give the next offset per partition; ``after``
    is ``CONSUMER_STALL_SECONDS``. ``run`` looks every ``interval`` seconds; ``batch_taken``
    is called by the agent with each batch before it is processed."""

    def __init__(
        self,
        consumer: Any,
        stats: ConsumerStats,
        after: float,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer, self.stats = consumer, stats
        self.watch = StallWatch(after)
        self.interval = interval if interval is not None else max(0.5, min(5.0, after / 2))
        self._clock = clock
        #: the partitions stalled at the last look (readiness reports them)
        self.stalls: list[Stall] = []
        #: partition's end offsets as the broker gave them at the last look
        self.ends: dict[Partition, int] = {}
        #: (topic, partition, cause) → recoveries attempted; cause "gap" or "stall"
        self.recoveries: Counter[tuple[str, int, str]] = Counter()
        #: partition → offset to read again from: gaps found and not yet sought back
        self.gaps: dict[Partition, int] = {}
        self._wake = asyncio.Event()  # a gap found: look now, not at the interval's end

    def _committed(self, tp: Partition) -> int | None:
        # faust's record of the group's committed offset per partition (the next offset
        # to read): set from the broker at assignment, and at each of its commits
        committed: Mapping[TP, int | None] = getattr(self.consumer, "_committed_offset", {})
        return committed.get(TP(*tp))

    def next_offset(self, tp: Partition) -> int | None:
        """The next offset to process on ``tp``: past the last one processed here, or the
        group's committed offset when that is further (or nothing was processed here)."""
        known = [o for o in (self.stats.positions.get(tp), self._committed(tp)) if o is not None]
        return max(known) if known else None

    def batch_taken(self, records: Sequence[Record]) -> list[tuple[Partition, int]]:
        """The partitions of ``records`` whose first record skips past what was expected,
        each with the offset to read again from (``skipped``); each is logged and kept in
        ``gaps`` until ``read_gaps_again`` has sought it back, which the watch's next look
        does at once (the agent itself makes no call to the consumer's thread)."""
        firsts: dict[Partition, int] = {}
        for r in records:
            firsts.setdefault((r.topic, r.partition), r.offset)
        gaps = []
        for tp, first in firsts.items():
            expected, committed = self.stats.positions.get(tp), self._committed(tp)
            if skipped(expected, committed, first):
                expected = expected if expected is not None else committed
                assert expected is not None
                log.warning(
                    "consumer skipped records: %s[%d] offsets %d-%d never reached the pipeline;"
                    " reading them again",
                    tp[0],
                    tp[1],
                    expected,
                    first - 1,
                )
                gaps.append((tp, expected))
                self.gaps[tp] = min(expected, self.gaps.get(tp, expected))
                self._wake.set()
        return gaps

    async def read_gaps_again(self) -> None:
        """Seek each partition of ``gaps`` back (``recover``, cause "gap"); one that
        fails (the broker away) is logged and kept for the next look; one no longer
        assigned here is left to the member that has it now (it reads from the group's
        committed offset, short of the gap)."""
        try:
            assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        except Exception:  # not started, or rebalancing: the next look tries
            return
        for tp, offset in sorted(self.gaps.items()):
            if tp not in assigned:
                del self.gaps[tp]
                continue
            try:
                await self.recover(tp, offset, "gap")
            except Exception as exc:
                log.warning(
                    "could not read %s[%d] again from offset %d yet (%s: %s); trying at the next look",
                    tp[0],
                    tp[1],
                    offset,
                    type(exc).__name__,
                    exc,
                )
            else:
                del self.gaps[tp]

    async def recover(self, tp: Partition, offset: int, cause: str) -> None:
        """Resume fetching ``tp`` and seek it back to ``offset`` (cause: "gap" or
        "stall"); records that retention deleted are logged and left."""
        self.recoveries[(tp[0], tp[1], cause)] += 1
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

    async def look(self) -> list[Stall]:
        """One look: ask the broker for the end offsets of the assigned partitions, find
        the stalled ones, and recover each (warning logged)."""
        if self.gaps:
            await self.read_gaps_again()
        if self.stats.retrying or self.stats.stuck:
            self.watch.observe(self._clock(), {}, {})  # waiting for a known reason
            self.stalls = []
            return []
        try:
            assigned = sorted(self.consumer.assignment())
        except Exception:  # not started, or rebalancing: nothing to judge
            return self.stalls
        if not assigned:
            self.stalls, self.ends = [], {}
            return []
        ends = await self.consumer.highwaters(*assigned)
        self.ends = {(tp.topic, tp.partition): int(end) for tp, end in ends.items() if end is not None}
        nexts = {tp: self.next_offset(tp) for tp in self.ends}
        unknown = [TP(*tp) for tp, n in nexts.items() if n is None and self.ends[tp] > 0]
        if unknown:
            # nothing processed here and nothing committed: reading starts at the
            # partition's earliest offset (offset reset "earliest", saga_kit.faust_app)
            for tp, first in (await self.consumer.earliest_offsets(*unknown)).items():
                nexts[(tp.topic, tp.partition)] = int(first)
        now = self._clock()
        self.stalls = self.watch.observe(now, self.ends, nexts)
        for stall in self.stalls:
            log.warning("consumer stalled at %s; reading it again from there", stall.describe())
            tp = (stall.topic, stall.partition)
            await self.recover(tp, stall.next_offset, "stall")
            self.watch.restart(tp, now)
        return self.stalls

    async def run(self) -> None:
        """``look`` every ``interval`` seconds, and at once when a batch showed a gap, for
        ever; a failed look is logged and the next one follows (the broker away, a
        rebalance under way)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("consumer progress: could not look (%s: %s)", type(exc).__name__, exc)
