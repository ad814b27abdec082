"""Waiting in async tests for a condition, not for a fixed time: a loaded machine takes its
time, and a fixed sleep failed a run on one (``test_live_timeline``: two of 20 streams had
read after 0.3 s)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str, within: float = 10.0) -> None:
    """Wait until ``condition`` holds, at most ``within`` seconds (then ``AssertionError``
    naming ``what``), looking every 50 ms."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """``predicate``'s first truthy answer, asked every 50 ms for at most ``timeout``
    seconds (then ``TimeoutError`` naming ``what``): ``until`` for tests that are not async."""
    end = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.05)
    return found
