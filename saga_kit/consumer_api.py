"""The consumer's state, and the operator's way to resume it: the same API in every service.

``GET /consumer`` says whether the consumer flows or holds a batch (and why), and how many
valid events made a reaction fail recently. ``POST /consumer/resume`` is the operator's
decision after a stop on the handler-error limit (``saga_kit.consumer``): forget the
failures counted so far, so the held batch's poison events are dead-lettered — up to the
limit again. After deploying a fix, nothing is needed: the held batch goes through.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from saga_kit.consumer import ConsumerPipeline

router = APIRouter(prefix="/consumer", tags=["consumer"])


class ConsumerState(BaseModel):
    #: "topic[partition]" → the batch held there and why; empty while everything flows
    stuck: dict[str, str]
    retrying_transient_failure: bool
    #: seconds the batch in flight has been in the pipeline; 0 between batches
    batch_in_flight_seconds: float
    #: valid events that made a reaction fail: in a row now, and among the recent events
    handler_errors_in_a_row: int
    handler_errors_recent: int
    #: the events counted so far in the recent window, at most ``recent_window`` of them
    #: (an operator trial read a window of 5, so far, as "5 % of the last 5 events")
    recent_events: int
    recent_window: int
    max_in_a_row: int
    #: the most of the recent events that may fail, once ``ratio_after`` have been counted
    max_ratio: float
    ratio_after: int


def _state(pipeline: ConsumerPipeline) -> ConsumerState:
    limit = pipeline.handler_errors
    return ConsumerState(
        stuck={f"{t}[{p}]": why for (t, p), why in sorted(pipeline.stats.stuck.items())},
        retrying_transient_failure=pipeline.stats.retrying,
        batch_in_flight_seconds=round(pipeline.stats.batch_age(), 3),
        handler_errors_in_a_row=limit.consecutive,
        handler_errors_recent=sum(limit.recent),
        recent_events=len(limit.recent),
        recent_window=limit.window,
        max_in_a_row=limit.max_consecutive,
        max_ratio=limit.max_ratio,
        ratio_after=limit.min_sample,
    )


@router.get("", summary="The consumer's state", response_model=ConsumerState)
async def get_consumer(request: Request) -> ConsumerState:
    """Whether the consumer flows or holds a batch (and why), and the handler failures it
    has counted against the dead-letter limit."""
    return _state(request.app.state.pipeline)


@router.post("/resume", summary="Resume after the handler-error limit", response_model=ConsumerState)
async def resume(request: Request) -> ConsumerState:
    """Forget the handler failures counted so far, so the held batch's poison events are
    dead-lettered, up to the limit again. After deploying a fix nothing is needed: the
    held batch goes through."""
    pipeline: ConsumerPipeline = request.app.state.pipeline
    pipeline.handler_errors.resume()
    return _state(pipeline)
