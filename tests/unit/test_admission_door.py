"""Admission at the door (``order_svc.admission.Door``): while the requests in progress
answer slowly, a new order is refused at once with 503 and Retry-After; a slow client's
upload and the other routes do not count."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from order_svc.admission import REFUSED, Door


class Held:
    """An app that answers 202 only when ``release`` is set (a saturated service)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.reached = 0
        self._arrived = asyncio.Condition()

    async def until_reached(self, n: int) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: self.reached >= n), 1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body", False):
            pass
        async with self._arrived:
            self.reached += 1
            self._arrived.notify_all()
        await self.release.wait()
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _door(app: Held, seconds: float = 0.05, depth: int = 3, most: int = 100) -> Door:
    settings = SimpleNamespace(
        admission_door_seconds=seconds, admission_door_depth=depth, admission_door_max=most
    )
    return Door(app, settings)


def _scope(method: str = "POST", path: str = "/orders") -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [],
    }


async def _call(door: Door, scope: Scope, body_done: bool = True) -> list[Message]:
    """One request through the door; its answer's messages (never returns while held)."""
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:
            await asyncio.Event().wait()  # the client sends nothing more
        delivered = True
        return {"type": "http.request", "body": b"{}", "more_body": not body_done}

    async def send(message: Message) -> None:
        sent.append(message)

    await door(scope, receive, send)
    return sent


def _status(messages: list[Message]) -> tuple[int, dict[str, str], Any]:
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(body)


async def test_orders_are_refused_at_once_while_those_in_progress_wait_and_taken_again_after() -> None:
    app = Held()
    door = _door(app)
    counted_before = REFUSED["door"]
    held = [asyncio.create_task(_call(door, _scope())) for _ in range(3)]
    await app.until_reached(3)
    assert door.waited(3) < 0.05
    await asyncio.sleep(0.08)  # the third oldest has now waited longer than 0.05 s

    status, headers, body = _status(await asyncio.wait_for(_call(door, _scope()), 1))
    assert status == 503 and body["reason"] == "overloaded"
    assert "waited" in body["detail"] and int(headers["retry-after"]) >= 1
    assert door.refused == 1 and REFUSED["door"] == counted_before + 1  # /metrics counts it

    other = asyncio.create_task(_call(door, _scope("GET", "/orders")))  # not an order: let through
    await app.until_reached(4)
    assert not other.done()

    app.release.set()
    assert all(_status(m)[0] == 202 for m in await asyncio.gather(*held, other))
    assert door.waited(1) == 0.0
    status, _, _ = _status(await asyncio.wait_for(_call(door, _scope()), 1))
    assert status == 202 and door.refused == 1


async def test_fewer_slow_requests_than_the_depth_and_slow_uploads_do_not_close_the_door() -> None:
    app = Held()
    door = _door(app)
    stuck = [asyncio.create_task(_call(door, _scope())) for _ in range(2)]  # fewer than the depth
    uploading = [asyncio.create_task(_call(door, _scope(), body_done=False)) for _ in range(5)]
    await app.until_reached(2)
    await asyncio.sleep(0.08)
    assert door.waited(3) == 0.0  # the uploads have not arrived: they are not in progress
    app.release.set()
    status, _, _ = _status(await asyncio.wait_for(_call(door, _scope()), 1))
    assert status == 202 and door.refused == 0
    for task in (*stuck, *uploading):
        task.cancel()
    await asyncio.gather(*stuck, *uploading, return_exceptions=True)
    assert door.waited(1) == 0.0  # a request that ended any way is no longer counted


class Busy(Held):
    """An app too busy to read the bodies of its requests until ``release`` is set (the
    event loop saturated: the bodies wait in the server's buffer)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.release.wait()
        await super().__call__(scope, receive, send)


async def test_past_the_most_requests_in_progress_orders_are_refused_even_before_their_bodies_are_read() -> (
    None
):
    app = Busy()
    door = _door(app, most=4)
    waiting = [asyncio.create_task(_call(door, _scope())) for _ in range(4)]
    await asyncio.sleep(0)
    status, _, body = _status(await asyncio.wait_for(_call(door, _scope()), 1))
    assert status == 503 and "4 orders are in progress" in body["detail"]
    waiting[0].cancel()
    await asyncio.gather(waiting[0], return_exceptions=True)
    app.release.set()
    status, _, _ = _status(await asyncio.wait_for(_call(door, _scope()), 1))
    assert status == 202 and door.refused == 1
    assert all(_status(m)[0] == 202 for m in await asyncio.gather(*waiting[1:]))


async def test_stalled_uploads_do_not_fill_the_door() -> None:
    """A client that starts an order's body and sends no more holds no place: 140 stalled
    uploads against a limit of 100 leave the door open (an anonymous caller could shut it
    before, as the count took every request from its first byte). Requests whose body has
    arrived still count, uploads or not."""
    app = Held()
    door = _door(app, seconds=60, most=100)
    stalled = [asyncio.create_task(_call(door, _scope(), body_done=False)) for _ in range(140)]
    await asyncio.sleep(0.05)
    status, _, _ = _status(await asyncio.wait_for(_call_released(door, app), 1))
    assert status == 202 and door.refused == 0

    app.release.clear()
    held = [asyncio.create_task(_call(door, _scope())) for _ in range(100)]
    await app.until_reached(101)  # the one let through above, and these
    status, _, body = _status(await asyncio.wait_for(_call(door, _scope()), 1))
    assert status == 503 and "100 orders are in progress" in body["detail"]
    app.release.set()
    for task in (*stalled, *held):
        task.cancel()
    await asyncio.gather(*stalled, *held, return_exceptions=True)


async def _call_released(door: Door, app: Held) -> list[Message]:
    app.release.set()
    return await _call(door, _scope())
