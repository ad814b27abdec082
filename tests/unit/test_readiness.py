"""``GET /health/ready`` answers within one check's timeout, however many checks hang, and
names a failure that has no message (saga_kit.http.health_router)."""

from __future__ import annotations

import asyncio

import httpx
from aiokafka.errors import KafkaError
from fastapi import FastAPI

from saga_kit.http import Check, health_router


async def _ready(checks: dict[str, Check]) -> httpx.Response:
    app = FastAPI()
    app.include_router(health_router(checks, timeout=0.5))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get("/health/ready")


async def test_checks_run_side_by_side() -> None:
    """One after another, a database that did not answer held a probe for 12 s: each
    check's timeout was added to the last. Here the first check can pass only if the
    second has started while it waits."""
    second_started = asyncio.Event()

    async def first() -> None:
        await second_started.wait()

    async def second() -> None:
        second_started.set()

    answer = await _ready({"database": first, "broker": second})
    assert answer.status_code == 200, answer.json()


async def test_a_check_that_hangs_or_fails_without_words_is_named() -> None:
    async def hangs() -> None:
        await asyncio.sleep(3600)

    async def times_out() -> None:
        raise TimeoutError  # a client's own timeout: no message ("TimeoutError: " was shown)

    async def fine() -> None:
        return None

    async def names_itself() -> None:  # as aiokafka's errors do
        raise KafkaError("Unable to get cluster metadata over all known brokers")

    answer = await _ready({"database": hangs, "broker": times_out, "relay": fine, "kafka": names_itself})
    assert answer.status_code == 503
    assert answer.json()["checks"] == {
        "database": {"ok": False, "error": "no answer within 0.5 s"},
        "broker": {"ok": False, "error": "TimeoutError"},
        "relay": {"ok": True},
        # not "KafkaError: KafkaError: …" (an operator trial)
        "kafka": {"ok": False, "error": "KafkaError: Unable to get cluster metadata over all known brokers"},
    }
