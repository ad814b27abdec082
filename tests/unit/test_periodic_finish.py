"""A graceful stop of the scheduled jobs (``saga_kit.periodic.finish``): no job starts a
new round; an idle job, or one without a grace, is cancelled at once; a round in progress
of a job with a grace is waited for that long, then cancelled."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from saga_kit.periodic import JobStats, Periodic, finish, run_forever, wait_caught_up
from saga_kit.retry import RetryPolicy


class _Settings:
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(0.01, 0.05, 0.0)


@dataclass
class _Job:
    """A job whose rounds take ``seconds``; counts rounds begun and ended."""

    seconds: float
    begun: int = 0
    ended: int = 0
    stopped: list[str] = field(default_factory=list)
    began: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, db: Any, settings: Any) -> int:
        self.begun += 1
        self.began.set()
        await asyncio.sleep(self.seconds)
        self.ended += 1
        return 1

    def periodic(self, grace: float | None) -> Periodic:
        return Periodic(
            "job",
            lambda s: 0.01,
            self.run,
            grace=None if grace is None else (lambda s: grace),
            stop=lambda: self.stopped.append("stop"),
        )


async def _started(job: _Job, periodic: Periodic) -> tuple[asyncio.Task[None], JobStats]:
    """The job running, its first round in progress."""
    stats = JobStats()
    task = asyncio.create_task(run_forever(periodic, None, _Settings(), stats))  # type: ignore[arg-type]
    await asyncio.wait_for(job.began.wait(), 5)
    return task, stats


async def test_a_round_in_progress_is_given_its_grace_and_no_new_round_starts() -> None:
    job = _Job(0.2)
    periodic = job.periodic(grace=5.0)
    task, stats = await _started(job, periodic)
    await finish([periodic], [task], [stats], _Settings())
    assert task.done() and not task.cancelled()  # ended by itself, its round done
    assert (job.begun, job.ended, stats.runs) == (1, 1, 1)
    assert job.stopped == ["stop"]  # told first, so it could end its round early


async def test_a_round_past_its_grace_is_cancelled_and_said_so(caplog: pytest.LogCaptureFixture) -> None:
    job = _Job(30.0)
    periodic = job.periodic(grace=0.1)
    task, stats = await _started(job, periodic)
    with caplog.at_level(logging.WARNING, "saga_kit.periodic"):
        await asyncio.wait_for(finish([periodic], [task], [stats], _Settings()), 5)
    assert task.cancelled() and job.ended == 0
    assert "job: its round did not end in its grace; cancelled" in caplog.text


async def test_a_round_of_a_job_without_a_grace_is_cancelled_at_once_and_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = _Job(30.0)
    periodic = job.periodic(grace=None)
    task, stats = await _started(job, periodic)
    with caplog.at_level(logging.WARNING, "saga_kit.periodic"):
        await asyncio.wait_for(finish([periodic], [task], [stats], _Settings()), 1)
    assert task.cancelled() and job.ended == 0
    assert "did not end in its grace" not in caplog.text  # it had none (a trial saw it said)


async def test_an_idle_job_is_cancelled_at_once_whatever_its_grace(caplog: pytest.LogCaptureFixture) -> None:
    job = _Job(0.0)
    periodic = Periodic("idle", lambda s: 3600.0, job.run, grace=lambda s: 30.0)
    stats = JobStats()
    task = asyncio.create_task(run_forever(periodic, None, _Settings(), stats))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)  # waiting out its interval
    with caplog.at_level(logging.WARNING, "saga_kit.periodic"):
        await asyncio.wait_for(finish([periodic], [task], [stats], _Settings()), 1)
    assert task.cancelled() and job.begun == 0
    assert "did not end in its grace" not in caplog.text


async def test_a_job_after_catch_up_waits_for_the_consumers_then_runs() -> None:
    """``after_catch_up``: the first round waits for ``caught_up``; a job without the flag
    does not wait (``run_forever``); and the wait has a bound (``wait_caught_up``)."""
    looked: list[bool] = []
    ready = [False]

    def caught_up() -> bool:
        looked.append(ready[0])
        return ready[0]

    job = _Job(0.0)
    periodic = Periodic("job", lambda s: 0.01, job.run, after_catch_up=True)
    stats = JobStats()
    task = asyncio.create_task(run_forever(periodic, None, _Settings(), stats, caught_up))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    assert job.begun == 0 and len(looked) >= 2  # looked again and again, not yet run
    ready[0] = True
    await asyncio.wait_for(job.began.wait(), 5)
    await finish([periodic], [task], [stats], _Settings())

    other = _Job(0.0)
    plain = Periodic("plain", lambda s: 0.01, other.run)
    task = asyncio.create_task(run_forever(plain, None, _Settings(), JobStats(), lambda: False))  # type: ignore[arg-type]
    await asyncio.wait_for(other.began.wait(), 5)
    task.cancel()


async def test_the_wait_for_the_consumers_is_bounded_and_said(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "saga_kit.periodic"):
        assert not await wait_caught_up(lambda: False, "job", bound=0.2, every=0.05)
    assert "job: the consumers did not catch up in 0 s; it runs without" in caplog.text
    assert await wait_caught_up(lambda: True, "job", bound=0.2)
