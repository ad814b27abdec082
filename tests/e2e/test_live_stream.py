"""The live feed (``GET /saga-events/stream``) as its clients see it: server-sent events
read with a standard SSE client (httpx-sse), open streams sharing the service's one reader,
resuming from ``Last-Event-ID``, and the most streams a service serves."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
from httpx_sse import ServerSentEvent, connect_sse

from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, seed


def saga_events(events: Iterator[ServerSentEvent], order_id: str, until: str) -> list[ServerSentEvent]:
    """The stream's events of ``order_id`` up to and including its first ``until``."""
    got: list[ServerSentEvent] = []
    for sse in events:
        assert sse.event == "saga-event", sse
        if sse.json()["order_id"] == order_id:
            got.append(sse)
            if sse.json()["event_type"] == until:
                return got
    raise AssertionError("the stream ended")


def test_open_streams_each_follow_a_saga_and_resume_from_last_event_id(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"live": ("2.00", 5)}, {"viewer": "10.00"})
    url = f"{system.url('order_svc')}/saga-events/stream"
    with httpx.Client(headers=system.auth(), timeout=httpx.Timeout(10.0, read=30.0)) as http:
        with connect_sse(http, "GET", url) as one, connect_sse(http, "GET", url) as two:
            assert one.response.headers["content-type"].startswith("text/event-stream")
            assert one.response.headers["cache-control"] == "no-store"  # every saga's events
            order_id = client.place_order(customers["viewer"], {products["live"]: 1})
            seen = [saga_events(s.iter_sse(), order_id, "OrderApproved") for s in (one, two)]
        assert [e.id for e in seen[0]] == [e.id for e in seen[1]]  # the same events, once each
        types = [e.json()["event_type"] for e in seen[0]]
        assert types[0] == "OrderCreated" and "PaymentCompleted" in types, types
        assert [int(e.id) for e in seen[0]] == sorted(int(e.id) for e in seen[0])
        # a client that reconnects after the first event gets the rest; the events of the
        # late-commit window before its Last-Event-ID (30 s) come again, told by their ids
        first = seen[0][0].id
        with connect_sse(http, "GET", url, headers={"Last-Event-ID": first}) as resumed:
            again = saga_events(resumed.iter_sse(), order_id, "OrderApproved")
        assert [e.id for e in again if int(e.id) > int(first)] == [e.id for e in seen[0][1:]]
        assert {e.id for e in again} <= {e.id for e in seen[0]}


def test_a_service_serves_at_most_its_streams_and_refuses_one_more_with_retry_after(system: System) -> None:
    """``ORDER_EVENT_STREAMS_MAX=2``: a third stream is a 503 that says why and when to try
    again; once one closes, a new one opens."""
    system.start_service("order_svc", env={"ORDER_EVENT_STREAMS_MAX": "2"})
    try:
        url = f"{system.url('order_svc')}/saga-events/stream"
        with httpx.Client(headers=system.auth(), timeout=10.0) as http, contextlib.ExitStack() as open_:
            streams = [open_.enter_context(http.stream("GET", url)) for _ in range(2)]
            assert all(s.status_code == 200 for s in streams)
            refused = http.get(url)
            assert refused.status_code == 503, refused.text
            assert refused.json()["reason"] == "service_unavailable"
            assert "ORDER_EVENT_STREAMS_MAX" in refused.json()["detail"]
            assert int(refused.headers["Retry-After"]) >= 1
            assert http.head(url).status_code == 503  # a HEAD is refused alike, and takes no place
            streams[0].close()  # the service sees the disconnect in a moment
            deadline = time.monotonic() + 20
            while (third := open_.enter_context(http.stream("GET", url))).status_code == 503:
                assert time.monotonic() < deadline, "the closed stream's place was never freed"
                third.close()
                time.sleep(0.2)
            assert third.status_code == 200 and next(third.iter_lines()) == ": connected"
    finally:
        system.start_service("order_svc")


def test_a_stop_ends_open_streams_cleanly_and_they_resume(system: System) -> None:
    """A second attack trial: stopping order_svc with streams open cancelled each at the
    graceful timeout, a traceback in the log each, and clients read a broken chunk. Now
    each stream ends with a comment saying why, and its client resumes."""
    url = f"{system.url('order_svc')}/saga-events/stream"
    log = system.run_dir / "logs" / "order_svc.log"
    before = log.stat().st_size
    with httpx.Client(headers=system.auth(), timeout=httpx.Timeout(10.0, read=30.0)) as http:
        with http.stream("GET", url) as stream:
            lines = stream.iter_lines()
            assert next(lines) == ": connected"
            system.stop_service("order_svc")
            said = list(lines)  # to its end: no RemoteProtocolError for an incomplete chunk
        assert ": the service is stopping; reconnect to resume" in said, said
        system.start_service("order_svc")
        with http.stream("GET", url) as again:
            assert again.status_code == 200
    with log.open("rb") as f:
        f.seek(before)
        said_since = f.read().decode(errors="replace")
    assert "Traceback" not in said_since and "Exception in ASGI application" not in said_since, said_since[
        -3000:
    ]
