"""Background jobs that run on a schedule inside a service (deadline sweeper, pruning).

A job that fails transiently (database away) waits with capped exponential backoff and
tries again; any other failure is logged and the job keeps its schedule. A job never
takes the service down, and never runs twice at once in one process.
"""

from __future__ import annotations

import asyncio
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


@dataclass
class JobStats:
    runs: int = 0
    items: int = 0
    failures: int = 0


async def run_forever(
    job: Periodic, db: Database, settings: ServiceSettings, stats: JobStats, max_backoff: float = 10.0
) -> None:
    interval = job.interval(settings)
    delay = interval
    while True:
        await asyncio.sleep(delay)
        try:
            stats.items += await job.run(db, settings)
            stats.runs += 1
            delay = interval
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stats.failures += 1
            if is_transient(exc):
                delay = min(max(delay * 2, interval), max_backoff)
                log.warning("%s: transient failure, next try in %.1fs: %s", job.name, delay, exc)
            else:
                delay = interval
                log.exception("%s failed; it keeps its schedule", job.name)
