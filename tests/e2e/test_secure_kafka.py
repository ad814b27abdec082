"""The saga over TLS and SASL/SCRAM: Apache Kafka whose only client listener is SASL_SSL
(``System(kafka_sasl_ssl=True)``, sagastack/apache_kafka.py), and clients it refuses.

Runs in ``make test``'s Apache Kafka phase (``--broker kafka``), where Java 17 and Maven
are; on Tansu it is skipped (Tansu has no TLS listener here). Without Java or Maven it is
skipped, or fails with ``SAGA_REQUIRE_KAFKA=1``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from saga_kit.kafka_security import KafkaSecurity
from sagastack import kafka_dist
from sagastack.apache_kafka import ApacheKafka
from sagastack.client import SagaClient
from sagastack.dev_certs import write_dev_tls
from sagastack.system import SERVICES, BrokerKind, System
from tests.e2e.conftest import UniqueIds, sagactl, seed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def secure(run_root: Path, broker_kind: BrokerKind) -> Iterator[System]:
    if broker_kind != "kafka":
        pytest.skip("TLS + SASL needs Apache Kafka: runs with --broker kafka (make test's Kafka phase)")
    if not (kafka_dist.java_available() and kafka_dist.resolvable()):
        message = f"the SASL_SSL test needs Java {kafka_dist.MIN_JAVA}+ and Maven (mvn)"
        if os.environ.get("SAGA_REQUIRE_KAFKA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with System(
        run_root / "secure", free_ports=True, fresh=True, broker_kind="kafka", kafka_sasl_ssl=True
    ) as running:
        yield running


@pytest.fixture
def client(secure: System) -> Iterator[SagaClient]:
    c = secure.client()
    yield c
    c.close()


def broker_of(system: System) -> ApacheKafka:
    assert isinstance(system.broker, ApacheKafka) and system.broker.sasl_ssl
    return system.broker


def connects(system: System, security: KafkaSecurity) -> None:
    """Start (bootstrap) and stop a producer on the system's broker as ``security`` says;
    raises what aiokafka raises."""

    async def go() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=system.bootstrap, request_timeout_ms=5000, **security.client_kwargs()
        )
        try:
            await producer.start()
        finally:
            await producer.stop()

    asyncio.run(go())


def test_the_saga_runs_over_sasl_ssl_approved_and_rejected(
    secure: System, client: SagaClient, uid: UniqueIds
) -> None:
    broker = broker_of(secure)
    for name in SERVICES:  # told to connect securely, the secret in a file, not the environment
        env = secure.services[name].env
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == broker.bootstrap
        assert env["KAFKA_SASL_PASSWORD_FILE"] == str(broker.password_file)
        assert "KAFKA_SASL_PASSWORD" not in env
    products, customers = seed(
        client, uid, {"lamp": ("40.00", 5), "vase": ("300.00", 1)}, {"ann": "200.00", "ben": "10.00"}
    )
    approved = client.place_order(customers["ann"], {products["lamp"]: 2})
    broke = client.place_order(customers["ben"], {products["lamp"]: 1})
    short = client.place_order(customers["ann"], {products["vase"]: 3})
    assert client.wait_for_events(approved, {"InventoryCommitted"}, timeout=60)["status"] == "APPROVED"
    assert client.wait_for_events(broke, {"InventoryReleased"}, timeout=60)["status"] == "REJECTED"
    assert client.order(broke)["reason"] == "insufficient_funds"
    assert client.wait_for_events(short, {"OrderRejected"}, timeout=60)["status"] == "REJECTED"
    assert client.order(short)["reason"] == "insufficient_stock"
    assert client.account(customers["ann"])["balance"] == "120.00"
    assert client.product(products["lamp"])["sold"] == 2

    # an operator's command through Kafka: sagactl connects as the services do
    placed = sagactl(
        secure,
        "place",
        customers["ann"],
        f"{products['lamp']}=1",
        "--via",
        "kafka",
        "--bootstrap",
        secure.bootstrap,
    )
    assert placed.returncode == 0 and "APPROVED" in placed.stdout, placed.stdout + placed.stderr
    assert client.account(customers["ann"])["balance"] == "80.00"


def test_a_wrong_password_is_refused_by_the_broker(secure: System, caplog: pytest.LogCaptureFixture) -> None:
    good = secure.kafka_security
    connects(secure, good)  # the same client with the right password gets in …
    connects(secure, dataclasses.replace(good, sasl_mechanism="SCRAM-SHA-256"))  # … with either mechanism
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        connects(secure, dataclasses.replace(good, sasl_password=f"{good.sasl_password}x"))
    assert "SaslAuthenticationFailed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        connects(secure, dataclasses.replace(good, sasl_username="mallory"))
    assert "SaslAuthenticationFailed" in caplog.text


def test_a_plaintext_client_cannot_talk_to_the_sasl_ssl_port(
    secure: System, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        connects(secure, KafkaSecurity())
    assert "closed" in caplog.text  # the broker hung up: no Kafka spoken without TLS
    # nor TLS without SASL
    with pytest.raises(KafkaConnectionError):
        connects(secure, KafkaSecurity(protocol="SSL", ssl_cafile=secure.kafka_security.ssl_cafile))


def test_a_client_checks_the_brokers_certificate(
    secure: System, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker whose certificate does not chain to the client's CA (an impostor on the
    port) is refused by the client, right password or not."""
    other_ca = write_dev_tls(tmp_path / "other").ca_file
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        connects(secure, dataclasses.replace(secure.kafka_security, ssl_cafile=str(other_ca)))
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
