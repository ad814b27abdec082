"""Every record is accounted for: handled, ignored, a duplicate, or dead-lettered with a
reason — whatever it carries — and an error of the pipeline itself never lets it go."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import uuid
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import HealthCheck, given, settings
from hypothesis import event as observe
from hypothesis import strategies as st

from events import encode
from events.values import printable
from saga_kit import deadletters
from saga_kit import headers as kafka_headers
from saga_kit.consumer import ConsumerPipeline, Outcome, Record
from saga_kit.db import UnitOfWork
from saga_kit.retry import RetryPolicy
from tests.integration.conftest import ServiceUnderTest, add_product, event, relay_key
from tests.unit.samples import order_created

_offsets = itertools.count(50_000_000 + uuid.uuid4().int % 10_000_000)


def record(value: bytes | None, headers: list[tuple[str, bytes | None]], key: bytes | None = b"k") -> Record:
    return Record("orders.events", 3, next(_offsets), key, value, headers)


async def accounted(svc: ServiceUnderTest, rec: Record, outcome: Outcome) -> None:
    """The record left a trace: a dead letter the tooling can show, or an inbox claim."""
    if outcome is Outcome.DEAD_LETTERED:
        rows = await svc.rows(
            "SELECT id, reason FROM dead_letters WHERE source_topic = :t AND source_partition = :p"
            " AND source_offset = :o",
            t=rec.topic,
            p=rec.partition,
            o=rec.offset,
        )
        assert len(rows) == 1 and rows[0].reason
        shown = await deadletters.get_letter(svc.db, rows[0].id)
        shown.model_dump_json()  # renders, whatever it holds
        assert [h.key for h in shown.headers] == [printable(k, 512) for k, _ in rec.headers]
        assert (await deadletters._pending_record(svc.db, rows[0].id)) == rec  # kept exactly
    elif outcome in (Outcome.HANDLED, Outcome.DUPLICATE):
        event_id = json.loads(rec.value or b"{}")["event_id"]
        claimed = await svc.scalar(
            "SELECT COUNT(*) FROM inbox WHERE consumer = :c AND event_id = :e", c=svc.spec.name, e=event_id
        )
        assert claimed == 1
    else:
        assert outcome is Outcome.IGNORED


async def test_a_null_header_value_is_no_obstacle(inventory: ServiceUnderTest) -> None:
    """Failing input 1: ``("x-null", None)`` — a valid event is handled, garbage is a
    dead letter whose null header is shown as null."""
    pid = await add_product(inventory, 5)
    valid = encode(event(order_created({pid: 1}, customer="c"), uuid.uuid4()))
    for value, expected in ((valid, Outcome.HANDLED), (b"x", Outcome.DEAD_LETTERED)):
        rec = record(value, [("x-null", None)], key=relay_key(value))
        outcome = await inventory.pipeline.process(rec)
        assert outcome is expected
        await accounted(inventory, rec, outcome)
    letters = await deadletters.list_letters(inventory.db, "PENDING", 5)
    shown = await deadletters.get_letter(inventory.db, letters[0].id)
    assert [(h.key, h.value) for h in shown.headers] == [("x-null", None)]


async def test_a_nul_byte_in_a_header_is_kept_exactly_and_shown_escaped(inventory: ServiceUnderTest) -> None:
    """Failing input 2: body ``garbage``, header ``("x-note", b"a\\x00b")``."""
    rec = record(b"garbage", [("x-note", b"a\x00b"), ("x-bin", b"\xff\xfe")])
    outcome = await inventory.pipeline.process(rec)
    assert outcome is Outcome.DEAD_LETTERED
    await accounted(inventory, rec, outcome)
    letter = (await deadletters.list_letters(inventory.db, "PENDING", 1))[0]
    shown = await deadletters.get_letter(inventory.db, letter.id)
    note, binary = shown.headers
    assert note.value is not None and note.value.text == "a\\x00b"
    assert binary.value is not None and binary.value.text is None and binary.value.base64 == "//4="
    # escaped text comes with the bytes themselves: an ESC and the text \x1b looked alike
    assert note.value.base64 == base64.b64encode(b"a\x00b").decode()


def test_bytes_escaped_for_reading_come_with_the_bytes_themselves() -> None:
    """An ESC and the four characters ``\\x1b``, in a key, a header's name or value, or a
    body, were shown alike, ``-o json`` included (an attack trial): the view of what was
    escaped carries the exact bytes (``base64``), the view of text shown as it is, none."""
    esc, text = deadletters.BytesView.of(b"k\x1b", 512), deadletters.BytesView.of(b"k\\x1b", 512)
    assert esc.text == text.text == "k\\x1b"
    assert (esc.base64, text.base64) == (base64.b64encode(b"k\x1b").decode(), None)
    cut = deadletters.BytesView.of(b"\x1b" + "é".encode() * 4, 8)  # the last é cut by the preview
    kept = b"\x1b" + "é".encode() * 3
    assert (cut.text, cut.base64, cut.truncated) == ("\\x1bééé", base64.b64encode(kept).decode(), True)
    named = deadletters.HeaderView.of("x\x1b", b"v")
    assert (named.key, named.key_base64) == ("x\\x1b", base64.b64encode(b"x\x1b").decode())
    assert deadletters.HeaderView.of("x\\x1b", None).key_base64 is None
    assert (
        deadletters.HeaderView.of("x\udcff", None).key_base64
        == base64.b64encode("x\udcff".encode("utf-8", "surrogatepass")).decode()
    )


def test_a_header_name_longer_than_the_preview_says_it_is_cut() -> None:
    """A name of 600 characters was cut to 512 with nothing to say so but an ellipsis, which
    a name may end with (a trial): ``key_truncated`` says it, and only then."""
    preview = deadletters.HEADER_PREVIEW
    long = deadletters.HeaderView.of("n" * (preview + 88), b"v")
    assert long.key_truncated and long.key.endswith("…") and len(long.key) == preview
    assert deadletters.HeaderView.of("n" * (preview + 1), None).key_truncated
    assert not deadletters.HeaderView.of("n" * preview, None).key_truncated
    whole = deadletters.HeaderView.of("n" * (preview - 1) + "…", None)
    assert (whole.key, whole.key_truncated) == ("n" * (preview - 1) + "…", False)
    credential = deadletters.HeaderView.of("authorization" + "x" * preview, b"Bearer abc.def.ghi")
    assert credential.redacted and credential.key_truncated


async def test_one_huge_nested_letter_never_hides_the_others(payment: ServiceUnderTest) -> None:
    """Failing input 4: ``b"[" * 60000`` is dead-lettered, and listing, showing and
    discarding every letter still work."""
    earlier = record(b"not json either", [])
    await payment.pipeline.process(earlier)
    nested = record(b"[" * 60000, [])
    assert await payment.pipeline.process(nested) is Outcome.DEAD_LETTERED
    letters = await deadletters.list_letters(payment.db, "PENDING", 1000)
    ids = {d.source_offset: d.id for d in letters}
    assert {earlier.offset, nested.offset} <= ids.keys()
    shown = await deadletters.get_letter(payment.db, ids[nested.offset])
    assert shown.value is not None
    assert shown.value.size == 60000 and shown.value.truncated
    assert len(shown.value.text or "") <= deadletters.VALUE_PREVIEW
    assert await deadletters.original_value(payment.db, shown.id) == b"[" * 60000
    assert (await deadletters.discard(payment.db, shown.id)).status == "DISCARDED"


class _BrokenStore(ConsumerPipeline):
    """A pipeline whose dead-letter store fails the first ``failures`` times, as a bug or
    an unforeseen input in the pipeline itself would."""

    def __init__(self, svc: ServiceUnderTest, failures: int) -> None:
        super().__init__(svc.spec.name, svc.db, svc.spec.subscription, retry=RetryPolicy(0.01, 0.05, 0.0))
        self.failures = failures

    async def _store_dead_letter(
        self, uow: UnitOfWork, rec: Record, reason: str, order_id: uuid.UUID | None = None
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the dead-letter store is broken")
        await super()._store_dead_letter(uow, rec, reason, order_id)


async def test_an_error_in_the_pipeline_holds_the_record_until_it_goes_through(
    inventory: ServiceUnderTest,
) -> None:
    processor = _BrokenStore(inventory, failures=3)
    rec = record(b"poison", [])
    task = asyncio.create_task(processor.process(rec))
    for _ in range(200):
        if processor.stats.stuck:
            break
        await asyncio.sleep(0.01)
    stuck = processor.stats.stuck[(rec.topic, rec.partition)]
    assert rec.where() in stuck and "dead-letter store is broken" in stuck
    assert not task.done()  # not returned, so the caller has not acked it
    assert await asyncio.wait_for(task, 10) is Outcome.DEAD_LETTERED
    assert processor.stats.stuck == {}
    await accounted(inventory, rec, Outcome.DEAD_LETTERED)


# -- whatever a record carries -------------------------------------------------------------

_VALID = encode(event(order_created({"p-prop": 1}, customer="c"), uuid.uuid4()))
_WIRE: dict[str, Any] = json.loads(_VALID)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated_envelope(draw: st.DrawFn) -> bytes:
    """A real envelope with one field replaced, removed or added: the hard cases."""
    wire = json.loads(json.dumps(_WIRE))
    wire["event_id"] = str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1))))
    target = wire if draw(st.booleans()) else wire["payload"]
    field = draw(st.sampled_from([*target.keys(), "extra"]))
    if draw(st.booleans()):
        target.pop(field, None)
    else:
        target[field] = draw(json_values)
    return json.dumps(wire, allow_nan=True).encode("utf-8", "surrogatepass")


values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_envelope(),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.just(_VALID),  # the same event again: a duplicate
    st.uuids().map(lambda order_id: encode(event(order_created({"p-prop": 1}, customer="c"), order_id))),
)
headers = st.lists(st.tuples(st.text(max_size=20), st.none() | st.binary(max_size=50)), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=values, hdrs=headers, key=st.none() | st.binary(max_size=40))
async def test_any_record_is_handled_or_dead_lettered(
    value: bytes | None, hdrs: list[tuple[str, bytes | None]], key: bytes | None, inventory: ServiceUnderTest
) -> None:
    rec = record(value, hdrs, key)
    outcome = await asyncio.wait_for(inventory.pipeline.process(rec), 30)
    assert inventory.pipeline.stats.stuck == {}
    observe(outcome.value)  # --hypothesis-show-statistics: every outcome is exercised
    await accounted(inventory, rec, outcome)


async def test_two_different_records_at_the_same_position_are_two_dead_letters(
    inventory: ServiceUnderTest,
) -> None:
    """Offsets start over when the embedded broker restarts (or a topic is recreated): a
    new record at a position already dead-lettered must not be taken for a redelivery."""
    first = record(b"first poison", [])
    second = Record(first.topic, first.partition, first.offset, first.key, b"second poison", ())
    for rec in (first, first, second):  # the first one redelivered, then another record
        assert await inventory.pipeline.process(rec) is Outcome.DEAD_LETTERED
    values = await inventory.rows(
        "SELECT value FROM dead_letters"
        " WHERE source_topic = :t AND source_partition = :p AND source_offset = :o ORDER BY id",
        t=first.topic,
        p=first.partition,
        o=first.offset,
    )
    assert [bytes(v.value) for v in values] == [b"first poison", b"second poison"]


async def test_a_record_too_large_to_copy_is_kept_whole_and_copied_without_its_body(
    inventory: ServiceUnderTest,
) -> None:
    """The copy on the dead-letter topic must fit what the broker accepts, or it would
    hold up the outbox behind it for good; the table keeps every byte."""
    huge = record(b"x" * 1_048_400, [("x-big", b"y" * 300_000)])
    assert await inventory.pipeline.process(huge) is Outcome.DEAD_LETTERED
    (row,) = await inventory.rows(
        "SELECT value, headers FROM outbox WHERE topic = 'inventory_svc.deadletter'"
        " AND headers IS NOT NULL ORDER BY id DESC LIMIT 1"
    )
    copy = dict(kafka_headers.from_blob(bytes(row.headers)))
    assert bytes(row.value) == b""
    assert copy["dlq.value_omitted"] == b"1048400 bytes"
    assert copy["dlq.headers_omitted"] == b"1 headers, 300005 bytes"
    assert "x-big" not in copy
    stored = await inventory.scalar(
        "SELECT octet_length(value) FROM dead_letters WHERE source_offset = :o", o=huge.offset
    )
    assert stored == 1_048_400


async def test_a_copy_is_sized_as_the_producer_sizes_it_headers_length_fields_and_all(
    inventory: ServiceUnderTest,
) -> None:
    """Half a million headers with an empty name and no value are 0 bytes of names and
    values, ~1 MiB in a Kafka record (two length fields each): the copy was kept with them
    all, aiokafka's producer refused it (``MessageSizeTooLargeError``), and the relay, then
    the service, stopped on it at every restart (an attack trial). The copy the relay will
    send must be within what the producer sends (``max_request_size``, 1 MiB by default),
    and so when the headers left out are credentials, each named once in the copy."""
    empty, tokens = [("", None)] * 524_200, [("authorization", b""), ("Authorization", None)] * 34_000
    # credential headers that fit (64 KiB on the wire) are left out and each named once
    named = [("authorization", b""), ("Authorization", None)] * 2_000 + [("x-ok", b"1")]
    too_many = "dlq.headers_omitted"
    for many, omitted in ((empty, too_many), (tokens, too_many), (named, "dlq.credentials_omitted")):
        rec = record(b"x", many)
        assert await inventory.pipeline.process(rec) is Outcome.DEAD_LETTERED
        (row,) = await inventory.rows(
            "SELECT key, value, headers FROM outbox WHERE topic = 'inventory_svc.deadletter'"
            " AND headers IS NOT NULL ORDER BY id DESC LIMIT 1"
        )
        headers = kafka_headers.from_blob(bytes(row.headers))
        assert dict(headers)["dlq.source_offset"] == str(rec.offset).encode()
        key, value = bytes(row.key), bytes(row.value)
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers))
        assert size < 1024 * 1024 // 4, (omitted, size)
        assert omitted in dict(headers)
    assert dict(headers)["dlq.credentials_omitted"] == b"authorization,Authorization"
    assert dict(headers)["x-ok"] == b"1"


async def test_the_dead_letter_topics_copy_leaves_credentials_out_and_the_row_keeps_them(
    inventory: ServiceUnderTest,
) -> None:
    """Whoever reads a dead letter topic must not act as a command's sender: the copy had
    the sender's bearer token in its ``authorization`` header. The row keeps it, for the
    replay."""
    token = b"Bearer eyJhbGciOiJFUzI1NiJ9.secret.sig"
    rec = record(b"poison", [("authorization", token), ("X-Api-Key", b"k-123"), ("trace", b"t")])
    assert await inventory.pipeline.process(rec) is Outcome.DEAD_LETTERED
    (row,) = await inventory.rows(
        "SELECT value, headers FROM outbox WHERE topic = 'inventory_svc.deadletter'"
        " AND value = 'poison' ORDER BY id DESC LIMIT 1"
    )
    copy = kafka_headers.from_blob(bytes(row.headers))
    assert [k for k, _ in copy if not k.startswith("dlq.")] == ["trace"]
    assert dict(copy)["dlq.credentials_omitted"] == b"authorization,X-Api-Key"
    assert not any(b"secret" in (v or b"") or b"k-123" in (v or b"") for _, v in copy)
    (kept,) = await inventory.rows(
        "SELECT header_keys, header_values FROM dead_letters WHERE source_offset = :o", o=rec.offset
    )
    assert dict(kafka_headers.from_columns(kept.header_keys, kept.header_values))["authorization"] == token


async def test_invented_event_types_share_one_metric_label(inventory: ServiceUnderTest) -> None:
    """Records ignored by their ``event_type`` header are counted by it — but a type that
    does not exist is counted as ``<unknown>``: a writer inventing names must not add a
    metric series per name (a helper's attack added 50 to one service's /metrics)."""
    stats = inventory.pipeline.stats
    before = dict(stats.outcomes)
    invented = [f"Evil{uuid.uuid4().hex}" for _ in range(5)]
    for name in invented:
        outcome = await inventory.pipeline.process(record(b"{}", [("event_type", name.encode())]))
        assert outcome is Outcome.IGNORED
    real = await inventory.pipeline.process(record(b"{}", [("event_type", b"OrderRejected")]))
    assert real is Outcome.IGNORED  # a type inventory has no reaction to
    grown = {k: n - before.get(k, 0) for k, n in stats.outcomes.items() if n != before.get(k, 0)}
    assert grown == {("<unknown>", "ignored"): 5, ("OrderRejected", "ignored"): 1}
    assert not any(name in label for name in invented for label, _ in stats.outcomes)


async def test_an_event_under_another_key_than_its_order_is_a_dead_letter(
    inventory: ServiceUnderTest,
) -> None:
    """A saga's events stay in order because each is keyed by its order id, so all of them
    go to one partition. An event under another key (a producer's bug, or a stolen key's
    replay of a real event onto another partition) is a dead letter saying so, not applied
    out of its saga's order."""
    pid = await add_product(inventory, 5)
    oid = uuid.uuid4()
    value = encode(event(order_created({pid: 1}, customer="c"), oid))
    moved = record(value, [], key=str(uuid.uuid4()).encode())
    assert await inventory.pipeline.process(moved) is Outcome.DEAD_LETTERED
    reason = await inventory.scalar(
        "SELECT reason FROM dead_letters WHERE source_offset = :o AND source_topic = :t",
        o=moved.offset,
        t=moved.topic,
    )
    assert reason.startswith(f"key_mismatch: OrderCreated of order {oid} came under the key b'")
    assert await inventory.pipeline.process(record(value, [], key=str(oid).encode())) is Outcome.HANDLED


async def test_dead_letters_past_the_limit_are_the_next_page(inventory: ServiceUnderTest) -> None:
    """An attack trial: past 1,000 pending letters the older ones could not be listed at
    all (``limit`` at most 1,000, no way on). ``before`` the last id of a page is the next."""
    for n in range(3):
        assert await inventory.pipeline.process(record(f"garbage {n}".encode(), [])) is Outcome.DEAD_LETTERED
    first = await deadletters.list_letters(inventory.db, "PENDING", 2)
    second = await deadletters.list_letters(inventory.db, "PENDING", 2, before=first[-1].id)
    assert [d.id for d in first] == sorted((d.id for d in first), reverse=True)
    assert second and all(d.id < first[-1].id for d in second)
    assert [d.id for d in first + second] == [
        d.id for d in await deadletters.list_letters(inventory.db, "PENDING", 2 + len(second))
    ]
