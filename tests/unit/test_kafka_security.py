"""Kafka transport security settings (saga_kit.kafka_security): what every client gets,
what is refused, and that faust's clients get the same as aiokafka's. The broker side —
TLS and SCRAM actually enforced — is tests/e2e/test_secure_kafka.py."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from saga_kit.consumer import ConsumerPipeline, Subscription
from saga_kit.db import create_engine
from saga_kit.faust_app import build_faust_app
from saga_kit.kafka_security import KafkaClientSettings, KafkaSecurity, KafkaSecurityError
from saga_kit.reactions import Reactions
from saga_kit.settings import ServiceSettings, async_postgres_url
from sagastack.apache_kafka import SASL_USER, ApacheKafka
from sagastack.dev_certs import write_dev_tls

PROJECT = Path(__file__).resolve().parents[2]
BASE = {"database_url": "postgresql://u@db/x", "http_port": 1}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Kafka security settings from the environment the tests run in."""
    for name in list(os.environ):
        if name.startswith(("KAFKA_SECURITY", "KAFKA_SSL", "KAFKA_SASL")) or name == "SAGA_ENV":
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dev_tls(tmp_path_factory.mktemp("tls")).ca_file


def _without_context(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The kwargs with the TLS context replaced by what it checks (contexts are compared
    by identity otherwise)."""
    context = kwargs.get("ssl_context")
    out = {k: v for k, v in kwargs.items() if k != "ssl_context" and v is not None}
    if context is not None:
        out["ssl_context"] = (context.verify_mode, context.check_hostname)
    return out


def test_the_default_is_plaintext_and_faust_gets_no_credentials() -> None:
    security = KafkaClientSettings().kafka_security()
    assert security == KafkaSecurity()
    assert security.client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert security.faust_credentials() is None


def test_sasl_ssl_from_the_environment_with_the_password_in_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: Path
) -> None:
    (tmp_path / "pw").write_text("s3cret\n")  # a secrets file usually ends with a line break
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(ca))
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "order")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "pw"))
    security = ServiceSettings(**BASE).kafka_client_security()  # type: ignore[arg-type]
    assert "s3cret" not in repr(security)
    kwargs = security.client_kwargs()
    assert _without_context(kwargs) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "order",
        "sasl_plain_password": "s3cret",
        "ssl_context": (ssl.CERT_REQUIRED, True),  # the broker's certificate and name checked
    }
    # the context trusts exactly the CA given
    assert [c["subject"] for c in kwargs["ssl_context"].get_ca_certs()] == [
        ((("commonName", "saga development CA"),),)
    ]


@pytest.mark.parametrize(
    "security",
    [
        KafkaSecurity(),
        KafkaSecurity(protocol="SSL", ssl_cafile="CA"),
        KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p"),
        KafkaSecurity(
            protocol="SASL_SSL",
            ssl_cafile="CA",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username="u",
            sasl_password="p",
        ),
    ],
    ids=lambda s: s.protocol,
)
def test_faust_clients_connect_exactly_as_the_aiokafka_ones(security: KafkaSecurity, ca: Path) -> None:
    if security.ssl_cafile:
        security = KafkaSecurity(**{**security.__dict__, "ssl_cafile": str(ca)})
    # faust's own translation of its credentials into aiokafka's arguments
    from_faust = credentials_to_aiokafka_auth(security.faust_credentials())
    assert _without_context(dict(from_faust)) == _without_context(security.client_kwargs())


async def test_the_services_faust_consumer_and_producer_get_the_credentials(ca: Path) -> None:
    security = KafkaSecurity(
        protocol="SASL_SSL", ssl_cafile=str(ca), sasl_username="inventory", sasl_password="pw"
    )
    reactions: Reactions[None] = Reactions(load=None, save=None)  # type: ignore[arg-type]
    pipeline = ConsumerPipeline("wiring", None, Subscription(("t",), reactions))  # type: ignore[arg-type]
    app = build_faust_app("wiring", "127.0.0.1:1", ("t",), pipeline, security=security)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    producer = app.producer._new_producer()
    try:
        for client in (consumer._client, producer.client):
            assert client._security_protocol == "SASL_SSL"
            assert (client._sasl_mechanism, client._sasl_plain_username) == ("SCRAM-SHA-512", "inventory")
            assert client._ssl_context.verify_mode == ssl.CERT_REQUIRED
    finally:
        await consumer.stop()
        await producer.stop()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"},
            "needs KAFKA_SASL_USERNAME and",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": "p"},
            "needs KAFKA_SASL_USERNAME and",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
                "KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw",
            },
            "not both",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD_FILE": "/none",
            },
            "KAFKA_SASL_PASSWORD_FILE cannot be read",
        ),
        ({"KAFKA_SSL_CAFILE": "ca.pem"}, "does not use TLS"),
        ({"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}, "does not use SASL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "k.pem"}, "needs KAFKA_SSL_CERTFILE"),
    ],
)
def test_a_missing_secret_or_contradictory_settings_are_refused_in_any_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(KafkaSecurityError, match=says):
        ServiceSettings(**BASE).kafka_client_security()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "refuses KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
            },
            "refuses KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL"}, "SSL without a client certificate"),
    ],
)
def test_production_refuses_an_unencrypted_or_unauthenticated_connection_or_a_missing_secret(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], says: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = ServiceSettings(**BASE)  # type: ignore[arg-type]
    settings.kafka_client_security()  # development: a warning at start, not a refusal …
    monkeypatch.setenv("SAGA_ENV", "production")
    with pytest.raises(KafkaSecurityError, match=says):
        ServiceSettings(**BASE).kafka_client_security()  # type: ignore[arg-type]


def test_production_accepts_sasl_ssl_or_ssl_with_a_client_certificate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SAGA_ENV", "production")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "payment")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "p")
    assert ServiceSettings(**BASE).kafka_client_security().protocol == "SASL_SSL"  # type: ignore[arg-type]
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    pem = str(write_dev_tls(tmp_path).server_file)  # its key, then its certificate: the start reads them
    monkeypatch.setenv("KAFKA_SSL_CERTFILE", pem)
    monkeypatch.setenv("KAFKA_SSL_KEYFILE", pem)
    assert ServiceSettings(**BASE).kafka_client_security().ssl_certfile == pem  # type: ignore[arg-type]
    monkeypatch.setenv("KAFKA_SSL_KEYFILE", str(tmp_path / "client-key.pem"))  # no such file
    with pytest.raises(KafkaSecurityError, match=r"KAFKA_SSL_KEYFILE=.*client-key.pem cannot be read"):
        ServiceSettings(**BASE).kafka_client_security()  # type: ignore[arg-type]


def test_a_production_service_on_plaintext_kafka_does_not_start_and_says_why(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SAGA_", "ORDER_"))},
        "SAGA_ENV": "production",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "ORDER_DATABASE_URL": "postgresql://u@127.0.0.1:1/x",
        "ORDER_HTTP_PORT": "0",
        "SAGA_DATA_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "order_svc"], env=env, cwd=PROJECT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refuses KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in done.stderr


def test_a_database_url_keeps_its_tls_parameters_all_the_way_to_the_driver() -> None:
    url = async_postgres_url("postgresql://u:p@db:5432/x?sslmode=verify-full&sslrootcert=/etc/ca.pem")
    engine = create_engine(url)
    _, connect = engine.dialect.create_connect_args(engine.url)
    assert (connect["sslmode"], connect["sslrootcert"]) == ("verify-full", "/etc/ca.pem")


def test_the_embedded_sasl_ssl_broker_tells_services_what_its_own_clients_use(tmp_path: Path) -> None:
    kafka = ApacheKafka(tmp_path, sasl_ssl=True)
    kafka._prepare_sasl_ssl()  # the CA, broker certificate and password (no JVM needed)
    assert oct(kafka.password_file.stat().st_mode & 0o777) == "0o600"
    from_env = KafkaClientSettings(**kafka.client_env()).kafka_security(production=True)  # type: ignore[arg-type]
    assert from_env == kafka.client_security and from_env.sasl_username == SASL_USER
    props = dict(
        line.split("=", 1)
        for line in kafka._properties(kafka.nodes[1]).splitlines()
        if not line.startswith("#")
    )
    node = kafka.nodes[1]
    assert props["listeners"] == (
        f"SASL_SSL://127.0.0.1:{node.port},INTERNAL://127.0.0.1:{node.internal_port},"
        f"CONTROLLER://127.0.0.1:{node.controller_port}"
    )
    assert (
        props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
    )
    assert props["inter.broker.listener.name"] == "INTERNAL"
    assert props["ssl.keystore.type"] == "PEM"
    assert Path(props["ssl.keystore.location"]).read_text().startswith("-----BEGIN PRIVATE KEY-----")
    plain = ApacheKafka(tmp_path / "plain")
    assert plain.client_env() == {} and plain.client_security == KafkaSecurity()
