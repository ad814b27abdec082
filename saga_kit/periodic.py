"""Background jobs that run on a schedule inside a service (deadline sweeper, pruning).

A job that fails transiently (database away) is retried with the service's retry policy
(``saga_kit.retry``); any other failure is logged and the job keeps its schedule. A job never
takes the service down, and never runs twice at once in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
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


@dataclass
class JobStats:
    runs: int = 0
    items: int = 0
    failures: int = 0


async def run_forever(job: Periodic, db: Database, settings: ServiceSettings, stats: JobStats) -> None:
    """Run ``job`` every interval; a transient failure is retried with the retry policy
    (counted as a failure), any other is logged and the job keeps its schedule."""
    interval = job.interval(settings)
    retry = settings.retry_policy()

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
        try:
            stats.items += await retry.forever(lambda: job.run(db, settings), is_transient, failed)
            stats.runs += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            stats.failures += 1
            log.exception("%s failed; it keeps its schedule", job.name)
