"""Which events are real: signed by the rightful producer, checked before decoding."""

from __future__ import annotations

import json
import logging
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from events import PaymentCompleted, encode
from events.topics import INVENTORY, PAYMENT
from saga_kit import deadletters, outbox, signing
from saga_kit.consumer import ConsumerPipeline, Outcome, Record
from saga_kit.retry import RetryPolicy
from tests.integration.conftest import ServiceUnderTest, add_account, balance_of, event, relay_key
from tests.unit.samples import reserved_payload

SERVICES = ("order_svc", "inventory_svc", "payment_svc")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    signing.write_dev_keys(directory, SERVICES)
    return directory


def signer_of(keys: Path, service: str) -> signing.Signer:
    return signing.load_signer(keys / f"{service}.pem", (keys / f"{service}.kid").read_text())


def signed(signer: signing.Signer | None, topic: str, value: bytes, key: bytes | None = None) -> Record:
    """``value`` on ``topic`` under ``key`` (default: its order id, as the relay keys it),
    signed by ``signer``."""
    key = relay_key(value) if key is None else key
    headers = signer.headers(topic, key, value) if signer else []
    return Record(topic, 0, uuid.uuid4().int % 10**9, key, value, headers)


def pipeline_for(svc: ServiceUnderTest, verifier: signing.Verifier) -> ConsumerPipeline:
    return ConsumerPipeline(
        svc.spec.name, svc.db, svc.spec.subscription, retry=RetryPolicy(0.01, 0.1, 0.0), verifier=verifier
    )


async def reason_of(svc: ServiceUnderTest, record: Record) -> str:
    value: str = await svc.scalar(
        "SELECT reason FROM dead_letters WHERE source_offset = :o AND source_topic = :t",
        o=record.offset,
        t=record.topic,
    )
    return value


async def test_only_a_record_signed_by_its_rightful_producer_is_applied(
    payment: ServiceUnderTest, keys: Path
) -> None:
    verifier = signing.load_verifier(keys / "trust.json")
    consumer = pipeline_for(payment, verifier)
    cid = await add_account(payment, "100.00")
    reserved = encode(event(reserved_payload(cid, "p", price="5.00"), uuid.uuid4()))

    good = signed(signer_of(keys, "inventory_svc"), INVENTORY, reserved)
    assert await consumer.process(good) is Outcome.HANDLED

    unsigned = signed(None, INVENTORY, encode(event(reserved_payload(cid, "p"), uuid.uuid4())))
    assert await consumer.process(unsigned) is Outcome.DEAD_LETTERED
    assert await reason_of(payment, unsigned) == "bad_signature: the record is not signed"

    rogue = signing.Signer("inventory_svc-rogue", signing.Ed25519PrivateKey.generate())
    forged = signed(rogue, INVENTORY, encode(event(reserved_payload(cid, "p"), uuid.uuid4())))
    assert await consumer.process(forged) is Outcome.DEAD_LETTERED
    assert "does not trust" in await reason_of(payment, forged)

    honest = signed(
        signer_of(keys, "inventory_svc"), INVENTORY, encode(event(reserved_payload(cid, "p"), uuid.uuid4()))
    )
    tampered = Record(
        honest.topic,
        honest.partition,
        honest.offset + 1,
        honest.key,
        (honest.value or b"").replace(b'"2.50"', b'"0.01"'),
        honest.headers,
    )
    assert await consumer.process(tampered) is Outcome.DEAD_LETTERED
    assert "forged or tampered" in await reason_of(payment, tampered)

    moved = Record(PAYMENT, 0, honest.offset + 2, honest.key, honest.value, honest.headers)  # another topic
    assert await consumer.process(moved) is Outcome.DEAD_LETTERED

    impostor = signed(
        signer_of(keys, "order_svc"), INVENTORY, encode(event(reserved_payload(cid, "p"), uuid.uuid4()))
    )
    assert await consumer.process(impostor) is Outcome.DEAD_LETTERED
    assert "only inventory_svc may emit InventoryReserved" in await reason_of(payment, impostor)
    # naming itself the producer does not help: it was invalid_event, which a replay after
    # an upgrade could help (an attack trial)
    own_word = encode(event(reserved_payload(cid, "p"), uuid.uuid4())).replace(
        b'"producer":"inventory_svc"', b'"producer":"order_svc"'
    )
    assert b'"producer":"order_svc"' in own_word
    named_itself = signed(signer_of(keys, "order_svc"), INVENTORY, own_word)
    assert await consumer.process(named_itself) is Outcome.DEAD_LETTERED
    assert await reason_of(payment, named_itself) == (
        "bad_signature: signed by order_svc, but only inventory_svc may emit InventoryReserved"
    )
    # signed by the rightful producer, naming another: its bug, not a forgery
    misnamed = signed(signer_of(keys, "inventory_svc"), INVENTORY, own_word)
    assert await consumer.process(misnamed) is Outcome.DEAD_LETTERED
    assert (await reason_of(payment, misnamed)).startswith(
        "invalid_event: InventoryReserved must be produced by"
    )
    # none of them is believed to be about the order it names: kept without one
    kept = await payment.scalar(
        "SELECT count(*) FROM dead_letters WHERE reason LIKE 'bad_signature%' AND order_id IS NOT NULL"
    )
    assert kept == 0
    # and their letters say that the order and type each names are its claim, not known
    letters = await deadletters.list_letters(payment.db, None, 1000)
    assert all(letter.unverified == letter.reason.startswith("bad_signature:") for letter in letters)
    assert sum(letter.unverified and letter.order_id is not None for letter in letters) >= 6
    # nothing but the good one was charged
    await payment.work()
    assert await balance_of(payment, cid) == 95


async def test_a_forged_payment_approves_nothing(order: ServiceUnderTest, keys: Path) -> None:
    """The attack: PaymentCompleted for 0.00 on payment.events, signed by someone else."""
    consumer = pipeline_for(order, signing.load_verifier(keys / "trust.json"))
    forged_by_inventory = signed(
        signer_of(keys, "inventory_svc"),
        PAYMENT,
        encode(event(PaymentCompleted(customer_id="c", amount=Decimal("0.00")), uuid.uuid4())),
    )
    assert await consumer.process(forged_by_inventory) is Outcome.DEAD_LETTERED


async def test_keys_rotate_by_id(payment: ServiceUnderTest, keys: Path, tmp_path: Path) -> None:
    """A new key is trusted before it is used; the old one is accepted until removed."""
    old = signer_of(keys, "inventory_svc")
    new = signing.Signer("inventory_svc-2", signing.Ed25519PrivateKey.generate())
    trust = json.loads((keys / "trust.json").read_text())
    public = signing.base64.b64encode(
        new.private_key.public_key().public_bytes(
            signing.serialization.Encoding.Raw, signing.serialization.PublicFormat.Raw
        )
    ).decode()
    both = {"keys": [*trust["keys"], {"kid": new.kid, "service": "inventory_svc", "public_key": public}]}
    (tmp_path / "both.json").write_text(json.dumps(both))
    only_new = {"keys": [k for k in both["keys"] if k["kid"] != old.kid]}
    (tmp_path / "new.json").write_text(json.dumps(only_new))
    cid = await add_account(payment, "100.00")

    def reserved(signer: signing.Signer) -> Record:
        return signed(signer, INVENTORY, encode(event(reserved_payload(cid, "p"), uuid.uuid4())))

    during = pipeline_for(payment, signing.load_verifier(tmp_path / "both.json"))
    assert await during.process(reserved(old)) is Outcome.HANDLED
    assert await during.process(reserved(new)) is Outcome.HANDLED
    after = pipeline_for(payment, signing.load_verifier(tmp_path / "new.json"))
    assert await after.process(reserved(new)) is Outcome.HANDLED
    assert await after.process(reserved(old)) is Outcome.DEAD_LETTERED


def test_what_the_relay_publishes_is_signed(keys: Path) -> None:
    signer = signer_of(keys, "payment_svc")
    envelope = event(PaymentCompleted(customer_id="c", amount=Decimal("1.00")), uuid.uuid4())
    row = outbox.row_of(envelope, signer=signer)
    verifier = signing.load_verifier(keys / "trust.json")
    assert verifier.signer(row.topic, row.key, row.value, row.headers) == "payment_svc"


def test_production_refuses_missing_or_development_keys(keys: Path, tmp_path: Path) -> None:
    pem, kid = str(keys / "payment_svc.pem"), (keys / "payment_svc.kid").read_text()
    trust = str(keys / "trust.json")
    with pytest.raises(signing.KeyConfigurationError, match="needs PAYMENT_EVENT_SIGNING_KEY_FILE"):
        signing.load_keys("payment_svc", None, kid, trust, production=True)
    with pytest.raises(signing.KeyConfigurationError, match="needs EVENT_TRUST_FILE"):
        signing.load_keys("payment_svc", pem, kid, None, production=True)
    with pytest.raises(signing.KeyConfigurationError, match="development trust file"):
        signing.load_keys("payment_svc", pem, kid, trust, production=True)
    # the same keys, listed in a trust file made for production, are accepted
    document = json.loads(Path(trust).read_text())
    del document["development"]
    (tmp_path / "prod.json").write_text(json.dumps(document))
    signer, verifier = signing.load_keys(
        "payment_svc", pem, kid, str(tmp_path / "prod.json"), production=True
    )
    assert signer is not None and verifier is not None and verifier.keys[signer.kid][0] == "payment_svc"
    # a key the trust file gives to another service is refused in any environment
    with pytest.raises(signing.KeyConfigurationError, match="as payment_svc's"):
        signing.load_keys("payment_svc", pem, "order_svc-x", trust, production=False)
    # development: keys are optional
    assert signing.load_keys("payment_svc", None, None, None, production=False) == (None, None)


async def test_a_dead_letters_log_line_names_its_id(
    payment: ServiceUnderTest, keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What ``sagactl dlq show`` and ``replay`` take: an operator trial matched the line to
    its letter by topic, partition and offset."""
    consumer = pipeline_for(payment, signing.load_verifier(keys / "trust.json"))
    unsigned = signed(None, INVENTORY, encode(event(reserved_payload("c", "p"), uuid.uuid4())))
    with caplog.at_level(logging.ERROR, logger="saga_kit.consumer"):
        assert await consumer.process(unsigned) is Outcome.DEAD_LETTERED
        assert await consumer.process(unsigned) is Outcome.DEAD_LETTERED  # delivered again
    letter_id = await payment.scalar(
        "SELECT id FROM dead_letters WHERE source_topic = :t AND source_offset = :o",
        t=unsigned.topic,
        o=unsigned.offset,
    )
    lines = [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()]
    assert lines[0].startswith(f"dead letter {letter_id} from {unsigned.where()}: bad_signature"), lines
    assert lines[1].startswith(f"dead letter from {unsigned.where()} (kept already): bad_signature"), lines
