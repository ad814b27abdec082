"""Waiting at most so long for work that may not end — a query on a database that holds
it without refusing it — and not for its clean-up either: ``asyncio.wait_for`` and
``asyncio.timeout`` wait for the cancelled work to end, and psycopg, cancelling a query
on a server that does not answer, takes up to ~10 s to give the connection up (5 s for
the cancel request, 5 s for the query to end). The readiness probe, the metrics scrape
and ``saga_kit.http.AnswerDeadline`` each answered late for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class NoAnswer(TimeoutError):
    """``within``'s time ran out (a ``TimeoutError``, told apart from the work's own)."""


def leave(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and let it end behind the caller; its outcome is retrieved then, so
    asyncio never logs it as an exception nobody read."""
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def within(work: Awaitable[T], seconds: float) -> T:
    """``work``'s result, or ``NoAnswer`` once ``seconds`` have passed — at once: the work
    is cancelled and left to end (``leave``). Its own exception is raised as it is."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except BaseException:
        leave(task)  # the caller was cancelled: the work with it
        raise
    if not done:
        leave(task)
        raise NoAnswer(f"no answer within {seconds:g} s")
    return task.result()
