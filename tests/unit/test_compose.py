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
