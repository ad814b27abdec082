"""A dead letter's copy on its topic that the producer or the broker refuses for its size
(``saga_kit.outbox``): sent again as the headers the consumer added, and the relay goes on.
A row that could never be sent stopped the relay, then the service, at every restart, every
event behind it waiting (an attack trial: half a million empty headers, before the copies
were sized as the producer sizes them)."""

from __future__ import annotations

import uuid

import psycopg

from events.topics import dead_letter_topic
from saga_kit import headers as kafka_headers
from saga_kit import outbox
from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, kafka_records, seed
from tests.polling import wait_until


def test_a_copy_too_large_to_send_goes_as_its_headers_and_the_relay_goes_on(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    topic, marker, event_id = dead_letter_topic("inventory_svc"), uuid.uuid4().hex.encode(), uuid.uuid4()
    headers = [
        ("dlq.reason", b"the record's own header of that name"),  # the record's, first
        ("x-other", b"y" * 1000),
        ("dlq.reason", b"invalid_event: a test's"),  # the consumer's, after it
        ("dlq.source_offset", marker),
        ("dlq.service", b"inventory_svc"),
    ]
    # over the producer's max_request_size (1 MiB): refused before it is sent
    row = outbox.Row(event_id, topic, b"k", b"v" * 1_100_000, tuple(headers))
    statement, params = outbox.insert_statement([row])
    url = system.database_urls["inventory_svc"]
    with psycopg.connect(url) as conn:
        conn.execute(statement, params)  # type: ignore[arg-type]

    def sent() -> bool:
        with psycopg.connect(url) as conn:
            got = conn.execute("SELECT sent_at FROM outbox WHERE event_id = %s", (event_id,)).fetchone()
        return got is not None and got[0] is not None

    try:
        wait_until(sent, 30, "the relay sent the copy it could not send whole")
    finally:  # never left to hold up the events behind it
        with psycopg.connect(url) as conn:
            conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE event_id = %s AND sent_at IS NULL", (event_id,)
            )
    (copy,) = [r for r in kafka_records(system, topic) if dict(r.headers).get("dlq.source_offset") == marker]
    assert (copy.key, copy.value) == (None, b"")
    said = dict(copy.headers)
    assert said["dlq.reason"] == b"invalid_event: a test's" and "x-other" not in said
    assert b"1100000 bytes" in said["dlq.copy_refused"], said
    assert [k for k, _ in copy.headers].count("dlq.reason") == 1
    assert set(said) <= {*kafka_headers.DEAD_LETTER_HEADERS, "dlq.copy_refused"}

    # and the relay went on: a saga through inventory still completes
    products, customers = seed(client, uid, {"pin": ("1.00", 1)}, {"ivy": "5.00"})
    order_id = client.place_order(customers["ivy"], {products["pin"]: 1})
    client.wait_for_events(order_id, {"OrderApproved", "InventoryCommitted"})
