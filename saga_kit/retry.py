"""The one retry policy: what every loop that waits out a failure uses (consumer, relay,
start-up, scheduled jobs), built on ``stamina`` (exponential backoff with jitter).

Only failures that retrying can cure are retried (``saga_kit.errors.is_transient``, plus
broker errors where a caller says so); anything else is raised at once. ``forever``
never gives up — an event is never skipped because a dependency is down — while
``until`` gives up after a deadline (start-up: a dependency that never appears is an
error worth exiting for).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import stamina

T = TypeVar("T")

log = logging.getLogger(__name__)


def _log_failure(exc: BaseException) -> None:
    log.warning("transient failure, retrying: %s: %s", type(exc).__name__, exc)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff of every retry loop: ``initial`` seconds, doubling up to ``maximum``, each
    wait plus up to ``jitter`` seconds at random (so instances do not retry in step)."""

    initial: float = 0.05
    maximum: float = 5.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, …) of work that is not a
        loop in memory but is rescheduled in a table (the payment provider calls):
        ``initial`` doubling up to ``maximum``, plus up to ``jitter`` at random — the same
        backoff as ``forever``."""
        base: float = min(self.maximum, self.initial * 2.0 ** max(0, min(attempt - 1, 60)))
        return base + random.uniform(0, self.jitter)

    async def forever(
        self,
        work: Callable[[], Awaitable[T]],
        retry_on: Callable[[BaseException], bool],
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> T:
        """``work()`` until it succeeds; failures ``retry_on`` rejects are raised."""
        return await self.until(work, retry_on, on_retry, give_up_after=None)

    async def until(
        self,
        work: Callable[[], Awaitable[T]],
        retry_on: Callable[[BaseException], bool],
        on_retry: Callable[[BaseException], None] | None = None,
        *,
        give_up_after: float | None,
    ) -> T:
        """``work()`` until it succeeds or ``give_up_after`` seconds have passed (then the last
        failure is raised). Each failure retried is told to ``on_retry``, which logs it
        (with what was being done); without one, it is logged here, at WARNING."""
        told = on_retry or _log_failure

        def retryable(exc: Exception) -> bool:
            if not retry_on(exc):
                return False
            told(exc)
            return True

        async for attempt in stamina.retry_context(
            on=retryable,
            attempts=None,
            timeout=give_up_after,
            wait_initial=self.initial,
            wait_max=self.maximum,
            wait_jitter=self.jitter,
        ):
            with attempt:
                return await work()
        raise AssertionError("unreachable: stamina either returns or raises")
