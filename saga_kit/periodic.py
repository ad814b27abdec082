"""Background jobs that run on a schedule inside a service (deadline sweeper, pruning).

A job that fails transiently (database away) is retried with the service's retry policy
(``saga_kit.retry``); any other failure is logged and the job keeps its schedule. A job never
takes the service down, and never runs twice at once in one process. At a graceful stop
(``finish``) a job starts no new round; a round in progress is cancelled, or, for a job
with a ``grace``, given that long to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from saga_kit.db import Database
from saga_kit.errors import is_transient
from saga_kit.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Periodic:
    name: str
    #: Seconds between runs, read from the service's settings.
    interval: Callable[[Any], float]
    #: The job; returns how many things it did (for the log and /metrics).
    run: Callable[[Database, Any], Awaitable[int]]
    #: Set when there is work now (e.g. after a commit that made some): the job runs at
    #: once instead of at the end of its interval, which is then only the fallback.
    wake: asyncio.Event | None = None
    #: Seconds, from the service's settings, a round in progress is given to end at a
    #: graceful stop (``finish``) before it is cancelled. None: cancelled at once — right
    #: for work a transaction holds (rolled back, done again); not for a round that waits on
    #: another system's answer (the payment worker's calls), lost if cancelled.
    grace: Callable[[Any], float] | None = None
    #: Called at a graceful stop, before the wait for the round in progress: the job is to
    #: start no new work and end its round soon (e.g. make no call not yet begun).
    stop: Callable[[], None] | None = None
    #: Its first round waits until the service's consumers have read what their
    #: partitions held when it started (``wait_caught_up``, at most ``CATCH_UP_SECONDS``):
    #: for a job whose work an event still unread may change (a cancellation published
    #: while the service was down must void a charge, not follow it).
    after_catch_up: bool = False


@dataclass
class JobStats:
    runs: int = 0
    items: int = 0
    failures: int = 0
    #: a round is in progress (``finish`` waits for it, ``grace`` allowing)
    running: bool = False
    #: the service is stopping: no new round starts (``finish``)
    stopping: bool = False


#: The longest a job ``after_catch_up`` waits for the consumers before its first round, s:
#: a consumer group's join and first fetches take a few seconds; a consumer that cannot
#: catch up (the broker away, no partition assigned) must not hold the job for ever.
CATCH_UP_SECONDS = 15.0


async def wait_caught_up(
    caught_up: Callable[[], bool], name: str, bound: float = CATCH_UP_SECONDS, every: float = 0.1
) -> bool:
    """Wait until ``caught_up()`` (looked at every ``every`` s), at most ``bound`` s;
    True if it came, False (and a WARNING naming ``name``) if the wait ran out."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not caught_up():
        if loop.time() - began >= bound:
            log.warning("%s: the consumers did not catch up in %.0f s; it runs without", name, bound)
            return False
        await asyncio.sleep(every)
    log.info("%s: runs, the consumers caught up in %.1f s", name, loop.time() - began)
    return True


async def run_forever(
    job: Periodic,
    db: Database,
    settings: ServiceSettings,
    stats: JobStats,
    caught_up: Callable[[], bool] | None = None,
) -> None:
    """Run ``job`` every interval; a transient failure is retried with the retry policy
    (counted as a failure), any other is logged and the job keeps its schedule. Returns
    after a round that ended once ``stats.stopping`` was set (``finish``). A job
    ``after_catch_up`` first waits for ``caught_up`` (``wait_caught_up``)."""
    interval = job.interval(settings)
    retry = settings.retry_policy()
    if job.after_catch_up and caught_up is not None:
        await wait_caught_up(caught_up, job.name)

    def failed(exc: BaseException) -> None:
        stats.failures += 1
        log.warning("%s: transient failure, retrying: %s", job.name, exc)

    while True:
        if job.wake is None:
            await asyncio.sleep(interval)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.wake.wait(), interval)
            job.wake.clear()  # set again while this round runs: the next one follows at once
        if stats.stopping:
            return
        stats.running = True
        try:
            stats.items += await retry.forever(lambda: job.run(db, settings), is_transient, failed)
            stats.runs += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            stats.failures += 1
            log.exception("%s failed; it keeps its schedule", job.name)
        finally:
            stats.running = False
        if stats.stopping:
            return


async def finish(
    jobs: Sequence[Periodic], tasks: Sequence[asyncio.Task[None]], stats: Sequence[JobStats], settings: Any
) -> None:
    """A graceful stop of the jobs ``run_forever`` runs in ``tasks`` (same order as
    ``jobs`` and ``stats``): none starts a new round; each job's ``stop`` is called; a
    round in progress of a job with a ``grace`` is waited for that many seconds (the
    jobs' waits side by side), and every task still running then is cancelled. Returns
    when every task has ended."""
    waits, graced = [], set()
    for job, task, stat in zip(jobs, tasks, stats, strict=True):
        stat.stopping = True
        if job.stop is not None:
            job.stop()
        if stat.running and job.grace is not None:
            waits.append(asyncio.wait({task}, timeout=job.grace(settings)))
            graced.add(task)
        else:
            task.cancel()
    await asyncio.gather(*waits)
    for job, task in zip(jobs, tasks, strict=True):
        if task in graced and not task.done():
            log.warning("%s: its round did not end in its grace; cancelled", job.name)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
