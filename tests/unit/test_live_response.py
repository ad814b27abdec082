"""A live stream whose client takes nothing (order_svc.live.LiveResponse): its stream ends
with a WARNING once ``send_timeout`` has passed, never an exception (a traceback each)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from starlette.types import Message

from order_svc.live import LiveResponse


async def test_a_client_that_takes_nothing_ends_its_stream_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = asyncio.Event()

    async def events() -> AsyncIterator[str]:
        try:
            while True:
                yield "data"
        finally:
            closed.set()

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client never says anything, nor leaves
        raise AssertionError

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # its receive buffer is full: nothing is taken

    response = LiveResponse(events(), ping=0, send_timeout=0.2)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with caplog.at_level(logging.WARNING, logger="order_svc.live"):
        async with asyncio.timeout(10):
            await response(scope, receive, send)  # returns: no SendTimeoutError escapes
    assert closed.is_set()  # the stream's generator ran its cleanup (its place is freed)
    assert "took nothing for 0.2 s; its stream ends" in caplog.text
