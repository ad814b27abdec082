"""The saga over TLS and SASL/SCRAM: Apache Kafka whose only client listener is SASL_SSL
(``System(kafka_sasl_ssl=True)``, sagastack/apache_kafka.py), and clients it refuses; each
service its own user, allowed by the broker's ACLs only what its code does
(``saga_kit.kafka_acls``).

Runs in ``make test``'s Apache Kafka phase (``--broker kafka``), where Java 17 and Maven
are; on Tansu it is skipped (Tansu has no TLS listener here). Without Java or Maven it is
skipped, or fails with ``SAGA_REQUIRE_KAFKA=1``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from events.topics import COMMANDS, DOMAIN_TOPICS, dead_letter_topic
from saga_kit import kafka_acls
from saga_kit.kafka import ensure_topics
from saga_kit.kafka_acls import COMMAND_SENDER, topics_written
from saga_kit.kafka_security import KafkaSecurity
from sagastack import kafka_dist
from sagastack.apache_kafka import ApacheKafka
from sagastack.client import SagaClient
from sagastack.dev_certs import write_dev_tls
from sagastack.embedded import free_port
from sagastack.system import SERVICES, BrokerKind, StartFailed, System
from tests.e2e.conftest import UniqueIds, sagactl_env, seed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kafka_here(broker_kind: BrokerKind) -> None:
    """Skip unless Apache Kafka runs here, in ``make test``'s Kafka phase."""
    if broker_kind != "kafka":
        pytest.skip("TLS + SASL needs Apache Kafka: runs with --broker kafka (make test's Kafka phase)")
    lacking = kafka_dist.missing()
    if lacking is not None:
        message = f"the SASL_SSL test needs Apache Kafka: {lacking} not found to run it"
        if os.environ.get("SAGA_REQUIRE_KAFKA") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def secure(run_root: Path, kafka_here: None) -> Iterator[System]:
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


def produces(system: System, security: KafkaSecurity, topic: str) -> None:
    """Send one record (no key, a body no consumer takes for an event) to ``topic`` as
    ``security`` says and wait for the broker's answer; raises what aiokafka raises."""

    async def go() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=system.bootstrap, request_timeout_ms=5000, **security.client_kwargs()
        )
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"not an event: a test of the broker's ACLs")
        finally:
            await producer.stop()

    asyncio.run(go())


def consumes(system: System, security: KafkaSecurity, topic: str, group: str) -> None:
    """Join ``group`` reading ``topic`` as ``security`` says and fetch once (up to 3 s);
    raises what aiokafka raises."""

    async def go() -> None:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=system.bootstrap,
            group_id=group,
            request_timeout_ms=5000,
            **security.client_kwargs(),
        )
        try:
            await consumer.start()
            await consumer.getmany(timeout_ms=3000)
        finally:
            await consumer.stop()

    asyncio.run(go())


def test_the_saga_runs_over_sasl_ssl_approved_and_rejected(
    secure: System, client: SagaClient, uid: UniqueIds
) -> None:
    broker = broker_of(secure)
    for name in SERVICES:  # told to connect securely as itself, the secret in a file
        env = secure.services[name].env
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == broker.bootstrap
        assert env["KAFKA_SASL_USERNAME"] == name
        assert env["KAFKA_SASL_PASSWORD_FILE"] == str(broker.password_file_of(name))
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

    # an operator's command through Kafka, sent as a user that may write commands only
    placed = sagactl_as(
        secure, COMMAND_SENDER, "place", customers["ann"], f"{products['lamp']}=1", "--via", "kafka"
    )
    assert placed.returncode == 0 and "APPROVED" in placed.stdout, placed.stdout + placed.stderr
    assert client.account(customers["ann"])["balance"] == "80.00"


def sagactl_as(
    system: System, user: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``sagactl <args> --bootstrap <the system's>``, connecting to the broker as Kafka user
    ``user`` (``env`` over that)."""
    env = {**sagactl_env(system), **broker_of(system).client_env(user), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sagactl", *args, "--bootstrap", system.bootstrap],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_each_service_may_write_only_its_own_topics(secure: System) -> None:
    """A service's user may not write another's events, dead letters or commands — a
    stolen Kafka password cannot speak for another service — and can write its own (the
    refusals are the ACLs', not a topic missing)."""
    broker = broker_of(secure)
    every_topic = {*DOMAIN_TOPICS, COMMANDS, *(dead_letter_topic(name) for name in SERVICES)}
    for name in SERVICES:
        security = broker.client_security_of(name)
        produces(secure, security, dead_letter_topic(name))  # its own: taken
        for topic in sorted(every_topic - set(topics_written(name))):
            with pytest.raises(TopicAuthorizationFailedError):
                produces(secure, security, topic)


def test_a_service_reads_only_its_subscriptions_in_its_own_group(secure: System) -> None:
    broker = broker_of(secure)
    payment = broker.client_security_of("payment_svc")
    with pytest.raises(TopicAuthorizationFailedError):  # commands are the order service's
        consumes(secure, payment, COMMANDS, "payment_svc")
    with pytest.raises(GroupAuthorizationFailedError):  # nor may it pose as the order service's group
        consumes(secure, payment, "inventory.events", "order_svc")
    sender = broker.client_security_of(COMMAND_SENDER)
    with pytest.raises((TopicAuthorizationFailedError, GroupAuthorizationFailedError)):
        consumes(secure, sender, COMMANDS, "order_svc")  # a command sender reads nothing


def test_sagactl_says_what_the_brokers_acls_refused(secure: System) -> None:
    """A user that may write only commands, publishing an event: refused, exit 1, in a
    sentence that names the user and the topic (not "cannot reach … is it running?")."""
    refused = sagactl_as(secure, "payment_svc", "publish", "orders.events", "--value", "{}")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Kafka user 'payment_svc' may not write to 'orders.events'" in refused.stderr
    unseen = sagactl_as(secure, COMMAND_SENDER, "publish", "orders.events", "--value", "{}")
    assert unseen.returncode == 1, unseen.stdout + unseen.stderr
    assert "no topic 'orders.events'" in unseen.stderr and "ACLs" in unseen.stderr


def test_sagactl_says_authentication_failed_or_the_certificate_is_not_trusted(
    secure: System, tmp_path: Path
) -> None:
    """A wrong password, an unknown user, a broker whose certificate the client does not
    trust: each said as what it is, exit 1 — not "cannot send … is the system running?",
    exit 3 (an attack trial)."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password")
    for user in (COMMAND_SENDER, "mallory"):
        refused = sagactl_as(
            secure,
            COMMAND_SENDER,
            *("publish", COMMANDS, "--value", "{}"),
            env={"KAFKA_SASL_USERNAME": user, "KAFKA_SASL_PASSWORD_FILE": str(wrong)},
        )
        assert refused.returncode == 1, refused.stdout + refused.stderr
        said = " ".join(refused.stderr.split())
        assert f"authentication failed: the broker refused Kafka user {user!r}" in said, said
        assert "is the system running" not in said
    other_ca = write_dev_tls(tmp_path / "other").ca_file
    untrusted = sagactl_as(
        secure, COMMAND_SENDER, "publish", COMMANDS, "--value", "{}", env={"KAFKA_SSL_CAFILE": str(other_ca)}
    )
    assert untrusted.returncode == 1, untrusted.stdout + untrusted.stderr
    said = " ".join(untrusted.stderr.split())
    assert "the broker's certificate is not trusted" in said and "KAFKA_SSL_CAFILE" in said, said


def test_a_service_refused_by_the_broker_says_why_while_it_waits(secure: System, tmp_path: Path) -> None:
    """A service given a wrong Kafka password waits for the broker as for one away (its
    user may be made after the broker starts), each try saying the broker refused it, and
    gives up saying so — it said "Unable to bootstrap from [(…)]", as for a broker away."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password")
    env = {"KAFKA_SASL_PASSWORD_FILE": str(wrong), "STARTUP_TIMEOUT_SECONDS": "4"}
    try:
        with pytest.raises(StartFailed, match="exited with 1") as failed:
            secure.start_service("payment_svc", env=env)
    finally:
        secure.start_service("payment_svc")
    said = " ".join(str(failed.value).split())
    assert "gave up waiting for broker after 4 s" in said, said
    assert "authentication failed: the broker refused Kafka user 'payment_svc'" in said, said


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


def test_a_grant_missing_loses_nothing_its_events_wait_until_it_is_given(
    secure: System, client: SagaClient, uid: UniqueIds
) -> None:
    """The payment service's user may not write payment.events for a while (a grant
    forgotten, or revoked by mistake): payment charges, its events wait in its outbox, the
    readiness probe and the log say why — and once the grant is back, the saga finishes.
    (Without retrying the refusal, the relay died and took the service down with a
    traceback.)"""
    broker = broker_of(secure)
    publish_payments = [
        acl
        for acl in kafka_acls.plan()
        if acl.principal == "User:payment_svc"
        and acl.resource == "payment.events"
        and acl.operation == "Write"
    ]
    assert len(publish_payments) == 1
    products, customers = seed(client, uid, {"lamp": ("40.00", 5)}, {"ann": "200.00"})
    payment = secure.services["payment_svc"]
    log_before = payment.log_path.stat().st_size
    broker.revoke(publish_payments)
    try:
        order = client.place_order(customers["ann"], {products["lamp"]: 1})
        deadline = time.monotonic() + 60
        while True:
            ready = httpx.get(
                f"{secure.url('payment_svc')}/health/ready",
                headers={"Authorization": f"Bearer {secure.token()}"},
                timeout=10,
            )
            relay = ready.json()["checks"]["outbox_relay"]
            if not relay["ok"]:
                break
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.5)
        assert ready.status_code == 503 and "TopicAuthorizationFailed" in relay["error"], ready.text
        assert client.order(order)["status"] == "PENDING"
        assert client.account(customers["ann"])["balance"] == "160.00"  # charged; the news waits
        said = payment.log_path.read_text()[log_before:]
        assert "refuses this service's Kafka user" in said and "sagactl kafka-acls" in said
        assert payment.proc is not None and payment.proc.poll() is None  # still running
    finally:
        broker.grant(publish_payments)
    assert client.wait_for_events(order, {"InventoryCommitted"}, timeout=90)["status"] == "APPROVED"


def test_a_consumer_refused_its_topic_stops_the_service_in_one_line_and_restarts_whole(
    secure: System, client: SagaClient, uid: UniqueIds
) -> None:
    """The payment service's user may no longer read orders.events: its consumer crashes,
    and the process exits 1 saying why in one line, for its supervisor to start it again
    (it served HTTP on with no consumer behind it, ready never again, saying "could not
    look" every 5 s). Granted again and restarted, the saga runs."""
    broker = broker_of(secure)
    read_orders = [kafka_acls.Acl("User:payment_svc", "topic", "orders.events", "Read")]
    assert set(read_orders) <= set(kafka_acls.plan())
    payment = secure.services["payment_svc"]
    assert payment.proc is not None
    log_before = payment.log_path.stat().st_size
    broker.revoke(read_orders)
    try:
        code = payment.proc.wait(60)
    finally:
        broker.grant(read_orders)
    assert code == 1
    said = payment.log_path.read_text()[log_before:]
    assert "payment_svc stops: the broker refuses this service's Kafka user" in said, said[-3000:]
    assert "sagactl kafka-acls" in said
    secure.start_service("payment_svc")
    products, customers = seed(client, uid, {"lamp": ("40.00", 5)}, {"ann": "200.00"})
    order = client.place_order(customers["ann"], {products["lamp"]: 1})
    assert client.wait_for_events(order, {"InventoryCommitted"}, timeout=90)["status"] == "APPROVED"


def test_a_topic_the_acls_refuse_to_create_is_not_counted_as_created(secure: System) -> None:
    """aiokafka hands back CreateTopics' per-topic refusal instead of raising it;
    ``ensure_topics`` took the refused topic for created."""
    payment = broker_of(secure).client_security_of("payment_svc")
    with pytest.raises(TopicAuthorizationFailedError, match=r"not\.payments"):
        asyncio.run(
            ensure_topics(secure.bootstrap, ["not.payments"], partitions=1, replication=1, security=payment)
        )


def test_a_service_whose_topic_may_not_be_created_does_not_start_and_says_why(
    secure: System, client: SagaClient, uid: UniqueIds
) -> None:
    """The payment service's dead letter topic is gone and its user may not create it: the
    service exits 1 at start in one line naming the grant (it started without the topic,
    so its first dead letter would have held its whole outbox). Granted, it starts and
    creates the topic, and the saga runs."""
    broker = broker_of(secure)
    dlq = dead_letter_topic("payment_svc")
    create_dlq = [kafka_acls.Acl("User:payment_svc", "topic", dlq, "Create")]
    assert set(create_dlq) <= set(kafka_acls.plan())
    secure.stop_service("payment_svc")

    async def delete_dlq() -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=secure.bootstrap, **secure.kafka_security.client_kwargs()
        )
        await admin.start()
        try:
            await admin.delete_topics([dlq])
            for _ in range(100):
                if dlq not in await admin.list_topics():
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"{dlq} still listed 10 s after its deletion")
        finally:
            await admin.close()

    asyncio.run(delete_dlq())
    broker.revoke(create_dlq)
    try:
        with pytest.raises(StartFailed, match="exited with 1") as failed:
            secure.start_service("payment_svc")
    finally:
        broker.grant(create_dlq)
    said = str(failed.value)
    assert "payment_svc cannot start: the broker refuses this service's Kafka user a topic" in said, said
    assert dlq in said and "sagactl kafka-acls" in said and "Traceback" not in said
    secure.start_service("payment_svc")
    products, customers = seed(client, uid, {"lamp": ("40.00", 5)}, {"ann": "200.00"})
    order = client.place_order(customers["ann"], {products["lamp"]: 1})
    assert client.wait_for_events(order, {"InventoryCommitted"}, timeout=90)["status"] == "APPROVED"


@pytest.mark.usefixtures("kafka_here")
def test_make_run_secure_serves_the_saga_with_each_service_its_own_user(run_root: Path) -> None:
    """``make run SECURE=1`` (``sagastack run --secure``) as a user starts it: the banner's
    ``sagactl`` line connects as the command sender, who may send commands and nothing
    else; the services are ready, each as its own user. (Before, only the tests could
    start the SASL_SSL broker with its ACLs.)"""
    run_dir = run_root / "make-run-secure"
    ports = {f"{p}_HTTP_PORT": str(free_port()) for p in ("ORDER", "INVENTORY", "PAYMENT", "PROVIDER")}
    env = {**os.environ, **ports, "SAGA_KAFKA_PORT": str(free_port()), "SAGA_BROKER": "kafka"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagastack", "run", "--secure", "--run-dir", str(run_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    said: list[str] = []
    try:
        while not (line := proc.stdout.readline()).startswith("ready"):
            assert line, "make run SECURE=1 ended before it was ready:\n" + "".join(said)
            said.append(line)
        banner = "".join(said)
        assert "(SASL_SSL)" in banner and "KAFKA_SASL_USERNAME=saga " in banner, banner
        exports = next(line for line in said if line.strip().startswith("sagactl:"))
        client = dict(item.split("=", 1) for item in exports.split("export", 1)[1].split())
        assert (
            client["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
            and client["KAFKA_SASL_USERNAME"] == COMMAND_SENDER
        )
        for prefix in ("ORDER", "INVENTORY", "PAYMENT"):
            health = httpx.get(f"http://127.0.0.1:{ports[f'{prefix}_HTTP_PORT']}/health/ready", timeout=10)
            assert health.status_code == 200, health.text
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SAGACTL_", "SAGA_TOKEN"))}

        def sagactl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "sagactl", *args],
                env={**base, **client, "COLUMNS": "250"},
                capture_output=True,
                text=True,
                timeout=60,
            )

        token = sagactl("token")
        assert token.returncode == 0, token.stderr
        sent = sagactl("--token", token.stdout.strip(), "place", "alice", "lamp=1", "--via", "kafka")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        refused = sagactl("publish", "orders.events", "--value", "{}")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"shows Kafka user {COMMAND_SENDER!r} no topic 'orders.events'" in refused.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out[-3000:]
