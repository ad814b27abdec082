"""Fault injection, for tests and chaos runs: the provider misbehaving the ways real card
processors do. Only with ``PROVIDER_FAULT_CONTROL=true``; otherwise nothing is injected
and ``/v1/faults`` answers 404.

Faults apply to the calls a client makes about money — ``POST /v1/charges``, ``POST
/v1/refunds``, ``GET /v1/charges/{key}``, ``GET /v1/refunds/{key}`` — and never to
accounts, the ledger, the fault controls or health. For each such call, in this order:

1. the request body is read whole (so a call whose client gives up later still runs);
2. ``latency_ms`` is waited;
3. ``outage``: answer 503 ``unavailable`` and do nothing;
4. with probability ``error_rate``: answer 500 ``internal_error`` and do nothing;
5. with probability ``timeout_rate``: wait ``timeout_ms`` (default 15,000), *then* process
   normally — the client will have given up, so a charge may happen whose answer nobody
   reads;
6. with probability ``lose_response_rate``: process and commit normally, then answer 502
   ``response_lost`` instead of the real answer ("the charge succeeded, the response was
   lost").

Each non-outage call draws three random numbers (error, timeout, lost response) from one
generator seeded with ``seed`` at every ``PUT /v1/faults``: the same calls in the same
order meet the same faults. ``injected`` counts each fault injected since the process
started (a PUT does not reset the counts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

Rate = Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)]
Millis = Annotated[int, Field(strict=True, ge=0, le=3_600_000)]

FaultName = Literal["latency", "outage", "error", "timeout", "lose_response"]
FAULT_NAMES: tuple[FaultName, ...] = ("latency", "outage", "error", "timeout", "lose_response")


class FaultSettings(BaseModel):
    """The faults in force (the body of ``PUT /v1/faults``, and ``PROVIDER_FAULTS``).
    Every field is optional; a field not given is reset to its default (0, false,
    ``timeout_ms`` 15,000, ``seed`` null), so ``{}`` turns every fault off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Milliseconds added to every faulted call.
    latency_ms: Millis = 0
    #: Share of calls answered 500 ``internal_error`` before anything is done.
    error_rate: Rate = 0.0
    #: Share of calls that wait ``timeout_ms`` and then are processed normally.
    timeout_rate: Rate = 0.0
    #: How long a timed-out call waits, in milliseconds.
    timeout_ms: Millis = 15_000
    #: Every call answered 503 ``unavailable`` before anything is done.
    outage: StrictBool = False
    #: Share of calls processed and committed, then answered 502 ``response_lost``.
    lose_response_rate: Rate = 0.0
    #: Seeds the random draws (null: unpredictable).
    seed: Annotated[int, Field(strict=True)] | None = None


class Injected(BaseModel):
    """How many faulted calls met each fault since the provider started."""

    latency: int = 0
    outage: int = 0
    error: int = 0
    timeout: int = 0
    lose_response: int = 0


class FaultsView(FaultSettings):
    """The faults in force and what they did so far."""

    injected: Injected


@dataclass(frozen=True)
class Plan:
    """What happens to one faulted call."""

    latency: float = 0.0
    #: Answer this (status, error code, message) without processing.
    refuse: tuple[int, str, str] | None = None
    #: Wait this long, then process.
    delay: float = 0.0
    lose_response: bool = False


class FaultInjector:
    """The faults in force (one per process: they live in memory, and a restarted
    provider starts again from ``PROVIDER_FAULTS``) and the count of what they did."""

    def __init__(self, initial: FaultSettings | None = None) -> None:
        self.injected: Counter[FaultName] = Counter()
        self.settings = FaultSettings()
        self._rng = random.Random()
        self.set(initial or FaultSettings())

    def set(self, settings: FaultSettings) -> None:
        self.settings = settings
        self._rng = random.Random(settings.seed)

    def view(self) -> FaultsView:
        return FaultsView(
            **self.settings.model_dump(), injected=Injected(**{n: self.injected[n] for n in FAULT_NAMES})
        )

    def plan(self) -> Plan:
        """Draw the faults of one call and count them."""
        f = self.settings
        latency = f.latency_ms / 1000
        if latency:
            self.injected["latency"] += 1
        if f.outage:
            self.injected["outage"] += 1
            return Plan(latency, refuse=(503, "unavailable", "the provider is unavailable (outage)"))
        error, timeout, lose = self._rng.random(), self._rng.random(), self._rng.random()
        if error < f.error_rate:
            self.injected["error"] += 1
            return Plan(latency, refuse=(500, "internal_error", "the provider failed (injected error)"))
        delay = 0.0
        if timeout < f.timeout_rate:
            self.injected["timeout"] += 1
            delay = f.timeout_ms / 1000
        return Plan(latency, delay=delay, lose_response=lose < f.lose_response_rate)

    def lost(self) -> None:
        self.injected["lose_response"] += 1


def faulted(method: str, path: str) -> bool:
    """The calls faults apply to: charges and refunds, made or read."""
    if method == "POST":
        return path in ("/v1/charges", "/v1/refunds")
    return method == "GET" and path.startswith(("/v1/charges/", "/v1/refunds/"))


class FaultMiddleware:
    """Applies the ``FaultInjector``'s plan to every faulted call (pure ASGI)."""

    def __init__(self, app: ASGIApp, injector: FaultInjector) -> None:
        self.app = app
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not faulted(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        # Read the body before any wait: a client that gives up during the wait closes
        # its connection, and the call must still be processed as received.
        receive = await _buffered(receive)
        plan = self.injector.plan()
        what = f"{scope['method']} {scope['path']}"
        if plan.latency:
            await asyncio.sleep(plan.latency)
        if plan.refuse is not None:
            status, code, message = plan.refuse
            log.info("fault: %s answered %d %s", what, status, code)
            await _answer(send, status, code, message)
            return
        if plan.delay:
            log.info("fault: %s waits %.1fs (timeout), then runs", what, plan.delay)
            await asyncio.sleep(plan.delay)
        if not plan.lose_response:
            await self.app(scope, receive, send)
            return

        async def lose(_: Message) -> None:
            """The real answer never reaches the client."""

        await self.app(scope, receive, lose)
        self.injector.lost()
        log.info("fault: %s processed, its answer lost (502)", what)
        await _answer(send, 502, "response_lost", "the answer was lost on its way back (injected)")


async def _buffered(receive: Receive) -> Receive:
    """Read the whole request body now; the returned ``receive`` hands it over, then
    passes on whatever comes next (a disconnect)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return receive  # the client is already gone: let the app see that
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def _answer(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": code, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


router = APIRouter(tags=["faults"])


@router.get("/v1/faults", summary="The faults in force", response_model=FaultsView)
async def get_faults(request: Request) -> FaultsView:
    """The faults in force and ``injected``: how many calls met each fault since the
    provider started."""
    injector: FaultInjector = request.app.state.faults
    return injector.view()


@router.put("/v1/faults", summary="Set the faults", response_model=FaultsView)
async def put_faults(request: Request, body: FaultSettings | None = None) -> FaultsView:
    """Replace the faults in force: every field not given is reset to its default (0,
    false, ``timeout_ms`` 15,000, ``seed`` null), so ``{}`` (or no body) turns every fault
    off. The random draws start again from ``seed``. Answers the faults now in force."""
    injector: FaultInjector = request.app.state.faults
    injector.set(body or FaultSettings())
    log.info("faults set: %s", injector.settings.model_dump_json())
    return injector.view()
