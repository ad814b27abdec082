"""The consumer's progress watch (saga_kit.progress): when a partition counts as stalled,
when a batch shows records skipped, and that faust still has what the watch relies on."""

from __future__ import annotations

import logging
from pathlib import Path

import faust
import pytest
from faust.types import TP as FaustTP

from saga_kit.consumer import ConsumerStats, Record
from saga_kit.progress import Probe, ProgressWatchdog, Stall, StallWatch, fetched_end, partition_lag, skipped
from sagastack.chaos import progress_recoveries

T = ("orders.events", 3)


def test_a_partition_behind_its_end_with_no_progress_is_stalled_after_the_time() -> None:
    watch = StallWatch(after=20)
    assert watch.observe(0, {T: 10}, {T: 7}) == []
    assert watch.observe(19.9, {T: 12}, {T: 7}) == []  # more arrived, still none processed
    (stall,) = watch.observe(20, {T: 12}, {T: 7})
    assert stall == Stall("orders.events", 3, 7, 12, 20)
    assert "5 records waiting (next offset 7, end offset 12), none processed for 20 s" in stall.describe()


def test_progress_or_reaching_the_end_starts_the_count_again() -> None:
    watch = StallWatch(after=20)
    watch.observe(0, {T: 10}, {T: 7})
    assert watch.observe(15, {T: 10}, {T: 8}) == []  # one record processed
    assert watch.observe(30, {T: 10}, {T: 8}) == []  # 15 s at offset 8: not yet
    assert len(watch.observe(35, {T: 10}, {T: 8})) == 1
    assert watch.observe(36, {T: 10}, {T: 10}) == []  # at the end: nothing waits
    assert watch.observe(50, {T: 11}, {T: 10}) == []  # behind again: counted from 50
    assert len(watch.observe(70, {T: 11}, {T: 10})) == 1


def test_a_partition_without_a_next_offset_or_at_its_end_is_not_judged() -> None:
    watch = StallWatch(after=1)
    watch.observe(0, {T: 10, ("t", 0): 0}, {T: None, ("t", 0): 0})
    assert watch.observe(100, {T: 10, ("t", 0): 0}, {T: None, ("t", 0): 0}) == []


def test_a_recovery_restarts_the_count() -> None:
    watch = StallWatch(after=20)
    watch.observe(0, {T: 10}, {T: 7})
    assert len(watch.observe(20, {T: 10}, {T: 7})) == 1
    watch.restart(T, 20)
    assert watch.observe(39, {T: 10}, {T: 7}) == []
    assert len(watch.observe(40, {T: 10}, {T: 7})) == 1


def test_records_skipped_are_told_from_records_another_member_took() -> None:
    assert not skipped(None, None, 50)  # nothing processed, nothing committed: nothing known
    assert not skipped(None, 50, 50)  # the first batch starts at the committed offset
    assert skipped(None, 50, 51)  # ... or offset 50 never came (and faust may commit past it)
    assert not skipped(10, 10, 10) and not skipped(10, 8, 9)  # in order, or read again
    assert skipped(10, 10, 11)  # offset 10 never came
    assert skipped(10, None, 12)
    assert not skipped(10, 40, 40)  # another member processed and committed 10-39


def _record(offset: int, partition: int = 3) -> Record:
    return Record("orders.events", partition, offset, b"k", b"v", [])


def test_a_batch_past_the_expected_offset_is_probed_and_a_record_from_there_confirms_a_loss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = ConsumerStats(positions={T: 10, ("orders.events", 4): 5})
    app = faust.App("progress-test", broker="kafka://127.0.0.1:1")
    watchdog = ProgressWatchdog(app.consumer, stats, after=20)
    # faust keeps the group's committed offset per partition where the watch reads it (an
    # upgrade that renames it fails here)
    assert isinstance(app.consumer._committed_offset, dict)
    app.consumer._committed_offset[FaustTP("orders.events", 3)] = 10
    app.consumer._committed_offset[FaustTP("orders.events", 6)] = 30
    watchdog.batch_taken([_record(12), _record(13), _record(5, partition=4), _record(31, partition=6)])
    # a suspicion only: probed at the next look, nothing counted or warned yet
    assert watchdog.probes == {T: Probe(10, 12, "gap"), ("orders.events", 6): Probe(30, 31, "gap")}
    assert not watchdog.recoveries and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    watchdog.probes[T].at = 1.0  # sought back
    watchdog.batch_taken([_record(12)])  # not from the range: no confirmation
    assert not watchdog.recoveries
    watchdog.batch_taken([_record(10), _record(11)])  # offset 10 came after all: lost on the way
    assert watchdog.recoveries == {("orders.events", 3, "gap"): 1} and T not in watchdog.probes
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and "consumer lost records on the way: orders.events[3] offsets 10-11" in said[0]
    # and the next offset to process is the furthest of taken, processed, committed and void
    app.consumer._committed_offset[FaustTP("orders.events", 3)] = 15
    assert watchdog.next_offset(T) == 15 and watchdog.next_offset(("orders.events", 4)) == 6  # took 5
    watchdog.void[("orders.events", 4)] = 7  # a probe found no record below 7
    assert watchdog.next_offset(("orders.events", 4)) == 7
    assert watchdog.next_offset(("orders.events", 9)) is None


def test_faust_offers_what_the_recovery_calls() -> None:
    """resume, seek with the read offset reset, end and earliest offsets, the assignment:
    an upgrade that drops one fails here rather than in a stalled service."""
    consumer = faust.App("progress-test-2", broker="kafka://127.0.0.1:1").consumer
    needed = ("resume_partitions", "seek_wait", "highwaters", "earliest_offsets", "assignment", "position")
    for name in needed:
        assert callable(getattr(consumer, name)), name


def test_the_chaos_report_counts_each_services_recoveries_from_its_log(tmp_path: Path) -> None:
    (tmp_path / "inventory_svc.log").write_text(
        '{"level": "warning", "msg": "consumer stalled at orders.events[3]: 2 records waiting"}\n'
        '{"level": "warning", "msg": "consumer lost records on the way: orders.events[1] offsets 4-4"}\n'
        '{"level": "warning", "msg": "consumer stalled at orders.events[3]: 1 records waiting"}\n'
    )
    (tmp_path / "order_svc.log").write_text('{"level": "info", "msg": "listening"}\n')
    (tmp_path / "tansu.log").write_text("consumer stalled at (not a service's log)\n")
    assert progress_recoveries(tmp_path) == {"inventory_svc stall": 2, "inventory_svc lost": 1}


class _Consumer:
    """What the watch asks of faust's consumer, answering as a broker would for one
    partition: its end, its earliest offset and the fetch position (the real calls are
    exercised end to end in tests/e2e/test_faults.py)."""

    def __init__(self, end: int, fetched: int, earliest: int = 0) -> None:
        self.end, self.fetched, self.earliest = end, fetched, earliest
        self._committed_offset: dict[FaustTP, int | None] = {FaustTP(*T): None}
        self.sought: list[int] = []

    def assignment(self) -> set[FaustTP]:
        return {FaustTP(*T)}

    async def highwaters(self, *tps: FaustTP) -> dict[FaustTP, int]:
        return dict.fromkeys(tps, self.end)

    async def earliest_offsets(self, *tps: FaustTP) -> dict[FaustTP, int]:
        return dict.fromkeys(tps, self.earliest)

    async def position(self, tp: FaustTP) -> int:
        return self.fetched

    def resume_partitions(self, tps: list[FaustTP]) -> None:
        pass

    async def seek_wait(self, offsets: dict[FaustTP, int]) -> None:
        self.sought.extend(offsets.values())


class _Flaky(_Consumer):
    """``_Consumer`` with a broker that is away while ``away``: asked for the partitions'
    ends, it raises ``failure``."""

    away = False
    failure: Exception = ConnectionError("the broker is away")

    async def highwaters(self, *tps: FaustTP) -> dict[FaustTP, int]:
        if self.away:
            raise self.failure
        return await super().highwaters(*tps)


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_fetching_stopped_short_of_the_end_is_a_stall_until_records_flow() -> None:
    consumer, clock = _Consumer(end=12, fetched=8), _Clock()
    stats = ConsumerStats(positions={T: 8})
    watchdog = ProgressWatchdog(consumer, stats, after=20, clock=clock)
    assert await watchdog.look() == []
    clock.now = 20
    (stall,) = await watchdog.look()
    assert (stall.next_offset, stall.end_offset) == (8, 12) and consumer.sought == [8]
    assert watchdog.recoveries == {("orders.events", 3, "stall"): 1}
    clock.now = 25
    assert await watchdog.look() == [stall]  # still stuck: readiness keeps saying so
    stats.positions[T] = 9
    assert await watchdog.look() == []  # a record processed: flowing again


async def test_offsets_all_fetched_and_none_processed_are_probed_and_taken_as_consumed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A trailing transaction marker: offset 9 exists, no record is ever delivered."""
    consumer, clock = _Consumer(end=10, fetched=10), _Clock()
    watchdog = ProgressWatchdog(consumer, ConsumerStats(positions={T: 9}), after=20, clock=clock)
    await watchdog.look()
    clock.now = 20
    assert await watchdog.look() == []  # probed, not stalled
    assert consumer.sought == [9] and watchdog.probes[T].cause == "stall"
    clock.now = 40
    assert await watchdog.look() == []
    assert T not in watchdog.probes and watchdog.next_offset(T) == 10  # nothing there
    clock.now = 80
    assert await watchdog.look() == [] and consumer.sought == [9]  # and never sought again
    assert not watchdog.recoveries and not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_batch_taken_and_still_in_processing_is_no_stall() -> None:
    """Held up on a database lock for longer than the stall time, say: its records were
    taken, so nothing waits on the way (the trial's hypothesis: sought back, and warned of
    as lost when the seek delivered them again)."""
    consumer, clock = _Consumer(end=12, fetched=12), _Clock()
    watchdog = ProgressWatchdog(consumer, ConsumerStats(positions={T: 8}), after=20, clock=clock)
    watchdog.batch_taken([_record(o) for o in range(8, 12)])  # processing never ends
    await watchdog.look()
    clock.now = 60
    assert await watchdog.look() == [] and not watchdog.probes and consumer.sought == []


async def test_a_groups_first_batch_past_the_earliest_offset_is_probed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A group that never committed on a partition reads it from its earliest offset: a
    first batch that starts past it lost records, and no commit was there to show it (the
    gap check alone saw nothing: the left-over of the round that added the watch)."""
    consumer, clock = _Consumer(end=12, fetched=12, earliest=2), _Clock()
    watchdog = ProgressWatchdog(consumer, ConsumerStats(), after=20, clock=clock)
    watchdog.batch_taken([_record(4), _record(5)])  # offsets 2 and 3 never came
    assert not watchdog.probes and watchdog.unanchored == {T: 4}  # the broker is asked at the look
    await watchdog.look()
    assert watchdog.probes == {T: Probe(2, 4, "gap", at=0.0)} and consumer.sought == [2]
    assert not watchdog.unanchored
    watchdog.batch_taken([_record(2), _record(3)])
    assert watchdog.recoveries == {("orders.events", 3, "gap"): 1}
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and "orders.events[3] offsets 2-3 never reached the pipeline" in said[0]


async def test_a_groups_first_batch_from_the_earliest_offset_is_no_gap() -> None:
    consumer, clock = _Consumer(end=12, fetched=12, earliest=2), _Clock()
    watchdog = ProgressWatchdog(consumer, ConsumerStats(), after=20, clock=clock)
    watchdog.batch_taken([_record(2), _record(3)])
    await watchdog.look()
    assert not watchdog.probes and consumer.sought == [] and not watchdog.unanchored
    # later batches are judged against what was taken and processed, not the earliest
    watchdog.batch_taken([_record(6)])
    assert not watchdog.unanchored
    # and a first batch at offset 0 needs no question at all
    fresh = ProgressWatchdog(_Consumer(end=3, fetched=3), ConsumerStats(), after=20, clock=clock)
    fresh.batch_taken([_record(0)])
    assert not fresh.unanchored


async def test_an_unanchored_partition_waits_for_a_broker_that_does_not_answer() -> None:
    class Away(_Consumer):
        async def earliest_offsets(self, *tps: FaustTP) -> dict[FaustTP, int]:
            raise ConnectionError("the broker is away")

    consumer, clock = Away(end=12, fetched=12), _Clock()
    watchdog = ProgressWatchdog(consumer, ConsumerStats(), after=20, clock=clock)
    watchdog.batch_taken([_record(4)])
    with pytest.raises(ConnectionError):
        await watchdog.look()
    assert watchdog.unanchored == {T: 4}  # asked again at the next look


async def test_the_lags_reference_ages_while_the_broker_cannot_be_asked() -> None:
    """``saga_consumer_lag`` is measured against the ends of the last look that could ask
    the broker: while it cannot, the lag shown is the last one known (it read 0 through
    a whole outage), and ``ends_age`` says how old it is."""

    consumer, clock = _Flaky(end=12, fetched=12), _Clock()
    watchdog = ProgressWatchdog(consumer, ConsumerStats(positions={T: 11}), after=20, clock=clock)
    assert watchdog.ends_age() is None  # never asked
    clock.now = 5
    await watchdog.look()
    assert watchdog.ends == {T: 12} and watchdog.ends_age() == 0
    consumer.away = True
    clock.now = 35
    with pytest.raises(ConnectionError):
        await watchdog.look()
    assert watchdog.ends == {T: 12} and watchdog.ends_age() == 30
    consumer.away, consumer.end = False, 40
    clock.now = 36
    await watchdog.look()
    assert watchdog.ends == {T: 40} and watchdog.ends_age() == 0


async def test_the_lags_reference_is_refreshed_while_the_pipeline_retries() -> None:
    """A database outage holds the pipeline (``retrying``) while producers go on
    writing: the ends are still asked for, so the lag shows the backlog growing."""
    consumer, clock = _Consumer(end=12, fetched=12), _Clock()
    stats = ConsumerStats(positions={T: 11})
    watchdog = ProgressWatchdog(consumer, stats, after=20, clock=clock)
    stats.retrying = True
    consumer.end, clock.now = 50, 9
    assert await watchdog.look() == []  # not judged for stalls while it waits
    assert watchdog.ends == {T: 50} and watchdog.ends_age() == 0


async def test_a_batch_held_up_on_a_database_that_hangs_is_waiting_not_stalled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL stopped (SIGSTOP), not refusing: the batch in flight waits with no error,
    so the pipeline is neither ``retrying`` nor ``stuck``, while producers go on writing.
    The trial saw the watch take the records behind it for offsets holding nothing: after
    the stall time it probed, no record came (the agent takes none), the offsets became
    ``void``, the lag read 0 and the log said "offsets 13-16 hold no record"."""
    consumer, clock = _Consumer(end=12, fetched=12), _Clock()
    stats = ConsumerStats(positions={T: 8})
    watchdog = ProgressWatchdog(consumer, stats, after=20, clock=clock)
    watchdog.batch_taken([_record(o) for o in range(8, 12)])
    stats.batch_since = 0.0  # and the database never answers
    for now in range(5, 125, 5):
        consumer.end = 12 + now  # records keep arriving behind the batch
        clock.now = now
        assert await watchdog.look() == []
    assert not watchdog.probes and not watchdog.void and consumer.sought == []
    assert watchdog.next_offset(T, taken=False) == 8 and watchdog.ends == {T: 132}  # lag 124
    assert not [r for r in caplog.records if "hold no record" in r.getMessage()]
    # the database is back: the batch goes through, and what follows is judged again
    stats.batch_since, stats.positions[T] = None, 12
    clock.now = 130
    assert await watchdog.look() == []
    clock.now = 150
    (stall,) = await watchdog.look()  # (this consumer's fetching stays at 12)
    assert (stall.next_offset, stall.end_offset) == (12, 132)


async def test_a_probe_does_not_run_out_while_the_pipeline_waits() -> None:
    """A gap probed just before the database hung: no record can confirm it while the agent
    takes none, so its time starts again instead of its offsets being taken as empty."""
    consumer, clock = _Consumer(end=12, fetched=12), _Clock()
    stats = ConsumerStats(positions={T: 4})
    watchdog = ProgressWatchdog(consumer, stats, after=20, clock=clock)
    watchdog.batch_taken([_record(6)])  # offsets 4 and 5 skipped
    await watchdog.look()
    assert watchdog.probes[T] == Probe(4, 6, "gap", at=0.0)
    stats.batch_since = 0.0
    clock.now = 60
    await watchdog.look()
    assert watchdog.probes[T].at == 60 and not watchdog.void
    stats.batch_since = None
    watchdog.batch_taken([_record(4), _record(5)])
    assert watchdog.recoveries == {("orders.events", 3, "gap"): 1}


async def test_a_short_batch_in_flight_does_not_hide_a_stall() -> None:
    """Under load a look nearly always finds a batch in flight, for milliseconds: only one
    in flight for the look's interval or more is a wait (else a partition faust stopped
    delivering would never be judged while others flow)."""
    consumer, clock = _Consumer(end=12, fetched=8), _Clock()
    stats = ConsumerStats(positions={T: 8})
    watchdog = ProgressWatchdog(consumer, stats, after=20, clock=clock)
    await watchdog.look()
    clock.now = 20
    stats.batch_since = 19.99
    (stall,) = await watchdog.look()
    assert stall.next_offset == 8 and consumer.sought == [8]


async def test_a_partition_nothing_was_read_from_has_its_earliest_offset_as_next() -> None:
    """Nothing processed, taken or committed: reading starts at the earliest offset, so
    the lag has a series there too (it had none until something was processed)."""
    consumer = _Consumer(end=12, fetched=0, earliest=3)
    watchdog = ProgressWatchdog(consumer, ConsumerStats(), after=20, clock=_Clock())
    assert watchdog.next_offset(T) is None
    await watchdog.look()
    assert watchdog.next_offset(T) == 3 and watchdog.next_offset(T, taken=False) == 3
    watchdog.batch_taken([_record(3), _record(4)])  # a first batch, in flight
    await watchdog.look()
    assert watchdog.next_offset(T) == 5 and watchdog.next_offset(T, taken=False) == 3
    watchdog.stats.positions[T] = 7
    await watchdog.look()
    assert watchdog.next_offset(T) == 7 and not watchdog.begins


def test_the_batch_age_is_how_long_the_batch_in_flight_has_been_in_the_pipeline() -> None:
    stats = ConsumerStats()
    assert stats.batch_age(100.0) == 0.0
    stats.batch_since = 90.0
    assert stats.batch_age(100.0) == 10.0


async def test_a_broker_away_for_long_is_said_once_at_warning_and_its_return_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker that answered nothing for 36 s was INFO lines alone in the services with
    nothing to publish (a trial): past ``BROKER_AWAY_WARNING_SECONDS`` of failed looks the
    watch says so once at WARNING, and says when it can look again."""

    consumer, clock = _Flaky(end=12, fetched=12), _Clock()
    consumer.away, consumer.failure = True, TimeoutError("no answer from the broker within 10 s")
    watchdog = ProgressWatchdog(consumer, ConsumerStats(positions={T: 11}), after=20, clock=clock)
    caplog.set_level(logging.INFO, logger="saga_kit.progress")
    for clock.now in (0, 10, 20, 30, 40, 50):
        await watchdog.look_once()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "consumer progress: could not look for 30 s (TimeoutError: no answer from the broker within 10 s):"
        " the broker is away or does not answer; /health/ready says so"
    ]
    consumer.away, clock.now = False, 55
    await watchdog.look_once()
    assert caplog.records[-1].getMessage() == "consumer progress: the broker answers again, after 55 s"
    consumer.away = True  # a new outage is counted from its own start
    for clock.now in (60, 80):
        await watchdog.look_once()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


async def test_a_broker_away_is_counted_from_the_start_of_the_first_look_it_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A look waits up to 10 s for the broker's answer: counted from its failure, a
    trial's 46 s outage was said to be 36 s, and the WARNING came 10 s late."""
    clock = _Clock()

    class Slow(_Consumer):
        async def highwaters(self, *tps: FaustTP) -> dict[FaustTP, int]:
            clock.now += 10  # no answer within 10 s
            raise TimeoutError("no answer from the broker within 10 s")

    watchdog = ProgressWatchdog(
        Slow(end=12, fetched=12), ConsumerStats(positions={T: 11}), after=20, clock=clock
    )
    caplog.set_level(logging.INFO, logger="saga_kit.progress")
    await watchdog.look_once()  # asked at 0, failed at 10
    clock.now = 20
    await watchdog.look_once()  # asked at 20, failed at 30: 30 s since the first was asked
    assert [r.getMessage()[:45] for r in caplog.records if r.levelno == logging.WARNING] == [
        "consumer progress: could not look for 30 s (T"
    ]


async def test_a_broker_away_is_said_as_the_look_after_30_s_starts(caplog: pytest.LogCaptureFixture) -> None:
    """Looks that fail end 10, 25, 40 s after the first began (10 s each, 5 s apart): a 42 s
    outage was INFO lines alone, the WARNING due at the third failure (a trial). It is
    said as the look due after 30 s starts."""
    clock = _Clock()

    class Slow(_Consumer):
        async def highwaters(self, *tps: FaustTP) -> dict[FaustTP, int]:
            clock.now += 10
            raise TimeoutError("no answer from the broker within 10 s")

    watchdog = ProgressWatchdog(
        Slow(end=12, fetched=12), ConsumerStats(positions={T: 11}), after=20, clock=clock
    )
    caplog.set_level(logging.INFO, logger="saga_kit.progress")
    for clock.now in (0, 15):  # failed at 10 and 25
        await watchdog.look_once()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    clock.now = 30
    await watchdog.look_once()
    warned = [r.getMessage()[:45] for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["consumer progress: could not look for 30 s (T"]


@pytest.mark.parametrize(
    ("next_offset", "looked", "fetched", "lag"),
    [
        (40, 50, 90, 50),  # the watch's end is seconds old: the live fetch's is further
        (40, 90, 50, 50),  # a fetch from before the look
        (40, None, 45, 5),  # before the first look
        (40, 45, None, 5),  # before the first fetch
        (60, 50, 55, 0),  # processed past both (they are at most the end)
        (None, 50, 55, None),  # nothing known of where the partition is read
        (40, None, None, None),
    ],
)
def test_the_lag_counts_from_the_further_of_the_looked_and_the_fetched_end(
    next_offset: int | None, looked: int | None, fetched: int | None, lag: int | None
) -> None:
    """The watch's end alone went stale between its looks, and the lag fell toward 0 while
    records kept arriving (an attack trial)."""
    assert partition_lag(next_offset, looked, fetched) == lag


def test_a_partition_no_longer_assigned_has_no_fetched_end() -> None:
    """aiokafka asserts a partition is assigned before it reads its high watermark; one
    taken away by a rebalance since the assignment was read has none, not an error."""

    class Kafka:
        def highwater(self, tp: tuple[str, int]) -> int | None:
            if tp == ("gone", 0):
                raise AssertionError("Partition is not assigned")
            return None if tp == ("new", 0) else 42

    assert [fetched_end(Kafka(), tp) for tp in (("t", 0), ("new", 0), ("gone", 0))] == [42, None, None]
