"""compose.yaml (real Kafka + one PostgreSQL per service) is checked without Docker:
against the Compose Specification (models generated from its JSON Schema, unknown keys
forbidden), and for its wiring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_pydantic.models import ComposeSpecification

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"
SERVICES = {"order-svc": "ORDER", "inventory-svc": "INVENTORY", "payment-svc": "PAYMENT"}
DATABASES = {"order-svc": "order-db", "inventory-svc": "inventory-db", "payment-svc": "payment-db"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def without_extensions(compose: dict[str, Any]) -> dict[str, Any]:
    """The specification allows ``x-*`` keys at the top level (``patternProperties:
    {"^x-": {}}``); the generated models cannot express that, so they are removed first.
    YAML anchors defined there are already merged into the services by the loader."""
    return {k: v for k, v in compose.items() if not k.startswith("x-")}


def test_compose_file_conforms_to_the_compose_specification(compose: dict[str, Any]) -> None:
    ComposeSpecification.model_validate(without_extensions(compose))


def test_the_validator_rejects_what_the_specification_forbids(compose: dict[str, Any]) -> None:
    broken = {
        **compose,
        "services": {
            **compose["services"],
            "kafka": {**compose["services"]["kafka"], "imagee": "x"},
        },
    }
    with pytest.raises(ValueError):
        ComposeSpecification.model_validate(without_extensions(broken))


def test_kafka_is_apache_kafka_in_kraft_mode_with_a_healthcheck(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert kafka["healthcheck"]["test"]


def test_compose_runs_the_apache_kafka_release_the_tests_prove(
    compose: dict[str, Any], secure: dict[str, Any]
) -> None:
    """The Kafka tests run the release Maven resolves (``kafka_dist.KAFKA_VERSION``); the
    images users start with Docker are that release too, not an older one."""
    from sagastack.kafka_dist import KAFKA_VERSION

    images = {compose["services"]["kafka"]["image"], secure["services"]["kafka-users"]["image"]}
    assert images == {f"apache/kafka:{KAFKA_VERSION}"}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_wired_to_kafka_and_to_its_own_database(
    compose: dict[str, Any], service: str
) -> None:
    svc = compose["services"][service]
    env = svc["environment"]
    prefix = SERVICES[service]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    db_host = DATABASES[service]
    assert f"@{db_host}:5432/" in env[f"{prefix}_DATABASE_URL"]
    others = set(DATABASES.values()) - {db_host}
    assert not any(other in str(env) for other in others), "a service must not see another's database"
    db = compose["services"][db_host]
    assert db["image"].startswith("postgres:") and db["healthcheck"]["test"]
    assert env[f"{prefix}_DATABASE_URL"].endswith("/" + db["environment"]["POSTGRES_DB"])
    provider = {"payment-provider": {"condition": "service_healthy"}} if service == "payment-svc" else {}
    assert svc["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        db_host: {"condition": "service_healthy"},
        **provider,
    }
    assert f"{env[f'{prefix}_HTTP_PORT']}/health/ready" in " ".join(svc["healthcheck"]["test"])
    assert svc["command"] == ["python", "-m", service.replace("-", "_")]


SECURE = COMPOSE.with_name("compose.secure.yaml")


@pytest.fixture(scope="module")
def secure() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SECURE.read_text())
    return data


def merged_service(compose: dict[str, Any], secure: dict[str, Any], name: str) -> dict[str, Any]:
    """A service of ``compose.yaml -f compose.secure.yaml``: mappings merged key by key
    (environment, depends_on), other values replaced, as Compose merges files."""
    base, over = compose["services"].get(name, {}), secure["services"][name]
    merged = {**base, **over}
    for key in ("environment", "depends_on"):
        if key in base and key in over:
            merged[key] = {**base[key], **over[key]}
    return merged


def test_the_secure_override_conforms_to_the_compose_specification(secure: dict[str, Any]) -> None:
    ComposeSpecification.model_validate(without_extensions(secure))


def test_the_broker_serves_clients_only_over_sasl_ssl(
    compose: dict[str, Any], secure: dict[str, Any]
) -> None:
    env = merged_service(compose, secure, "kafka")["environment"]
    listeners = dict(entry.split("://") for entry in env["KAFKA_LISTENERS"].split(","))
    assert listeners["PLAINTEXT"].startswith("127.0.0.1:"), (
        "PLAINTEXT must not be reachable from other containers"
    )
    protocols = dict(entry.split(":") for entry in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert protocols["SECURE"] == "SASL_SSL" and env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert "SSL://" not in env["KAFKA_ADVERTISED_LISTENERS"]  # the image's start script would demand JKS
    assert env["KAFKA_SSL_KEYSTORE_TYPE"] == "PEM"
    jaas = secure["configs"]["kafka_jaas"]["file"]
    assert "ScramLoginModule required;" in (COMPOSE.parent / jaas).read_text()
    for secret in secure["secrets"].values():
        assert secret["file"].startswith(
            "./.run/compose-secrets/"
        )  # made by sagastack.dev_certs, not committed


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_connects_over_sasl_ssl_with_its_password_from_a_secret(
    compose: dict[str, Any], secure: dict[str, Any], service: str, tmp_path: Path
) -> None:
    from saga_kit.kafka_security import KafkaClientSettings

    svc = merged_service(compose, secure, service)
    env = svc["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9094" and "KAFKA_SASL_PASSWORD" not in env
    mounted = {f"/run/secrets/{name}" for name in svc["secrets"]}
    assert {env["KAFKA_SSL_CAFILE"], env["KAFKA_SASL_PASSWORD_FILE"]} <= mounted
    assert svc["depends_on"]["kafka-users"] == {"condition": "service_completed_successfully"}
    # what production demands of them (the password file stands in for the secret)
    (tmp_path / "pw").write_text("secret\n")
    kafka_env = {k: v for k, v in env.items() if k.startswith("KAFKA_SSL") or k.startswith("KAFKA_SASL")}
    settings = KafkaClientSettings(
        **{
            **kafka_env,
            "KAFKA_SECURITY_PROTOCOL": env["KAFKA_SECURITY_PROTOCOL"],
            "KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw"),
        }
    )  # type: ignore[arg-type]
    assert settings.kafka_security(production=True).protocol == "SASL_SSL"
