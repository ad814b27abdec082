"""The one retry policy (``saga_kit.retry``): what it retries, what it raises, what it logs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import stamina.instrumentation

from saga_kit import logs
from saga_kit.retry import RetryPolicy

FAST = RetryPolicy(initial=0.001, maximum=0.002, jitter=0.001)


class Blink(Exception):
    """A failure retrying can cure."""


def failing(times: int, exc: Exception) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def work() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return "done"

    return calls, work


async def test_a_transient_failure_is_retried_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls, work = failing(2, Blink("database away"))
    with caplog.at_level(logging.WARNING):
        assert await FAST.forever(work, lambda e: isinstance(e, Blink)) == "done"
    assert len(calls) == 3
    assert [r.getMessage() for r in caplog.records if r.name == "saga_kit.retry"] == [
        "transient failure, retrying: Blink: database away"
    ] * 2


async def test_a_caller_that_says_what_it_retries_logs_instead(caplog: pytest.LogCaptureFixture) -> None:
    told: list[BaseException] = []
    _, work = failing(1, Blink("x"))
    with caplog.at_level(logging.WARNING):
        await FAST.forever(work, lambda e: isinstance(e, Blink), told.append)
    assert len(told) == 1
    assert not [r for r in caplog.records if r.name == "saga_kit.retry"]


async def test_another_failure_is_raised_at_once() -> None:
    calls, work = failing(5, ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        await FAST.forever(work, lambda e: isinstance(e, Blink))
    assert len(calls) == 1


async def test_until_gives_up_with_the_last_failure() -> None:
    calls, work = failing(10**6, Blink("never up"))
    with pytest.raises(Blink, match="never up"):
        await FAST.until(work, lambda e: isinstance(e, Blink), lambda e: None, give_up_after=0.05)
    assert len(calls) > 1


def test_a_service_logs_no_line_of_staminas_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """stamina's default hook logs "stamina.retry_scheduled" for every retry, beside the
    retry loop's own line that says what failed."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    hooks = stamina.instrumentation.get_on_retry_hooks()
    try:
        logs.configure("test_svc")
        assert stamina.instrumentation.get_on_retry_hooks() == ()
    finally:
        stamina.instrumentation.set_on_retry_hooks(hooks)
