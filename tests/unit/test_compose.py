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
    for name in ("PLAINTEXT", "CONTROLLER"):  # ANONYMOUS there, a super user: the broker's own
        assert listeners[name].startswith("127.0.0.1:"), f"{name} must not be reachable from other containers"
    assert set(listeners) == {"PLAINTEXT", "CONTROLLER", "SECURE"}
    # a controller answers CreateAcls, AlterUserScramCredentials, DeleteTopics (KIP-919)
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"1@{listeners['CONTROLLER']}"
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
    user = service.replace("-", "_")  # each service its own Kafka user, named as the service
    assert env["KAFKA_SASL_USERNAME"] == user and user in env["KAFKA_SASL_PASSWORD_FILE"]
    assert not any("password" in name and user not in name for name in svc["secrets"])
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


def test_the_broker_authorizes_every_request_with_the_grants_of_the_acl_plan(
    compose: dict[str, Any], secure: dict[str, Any]
) -> None:
    """compose.secure.yaml's one-shot container adds exactly ``saga_kit.kafka_acls``'s
    grants (what ``sagactl kafka-acls --commands`` prints), and a SCRAM user for each
    service and for the command sender; the broker refuses what they do not allow."""
    import shlex

    from saga_kit.kafka_acls import COMMAND_SENDER, acl_command_args, plan

    env = merged_service(compose, secure, "kafka")["environment"]
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == "User:ANONYMOUS"  # the broker itself, on its in-container listener
    script = secure["services"]["kafka-users"]["command"][0].replace("$$", "$")
    steps = [step.strip() for step in script.split(";")]
    prefix = 'acls="/opt/kafka/bin/kafka-acls.sh --bootstrap-server 127.0.0.1:9092 --add"'
    assert prefix in steps
    granted = [["--add", *shlex.split(step)[1:]] for step in steps if step.startswith("$acls ")]
    assert granted == acl_command_args(plan())
    users = shlex.split(next(step for step in steps if step.startswith("for user in")))[3:]
    # and the command sender's, whose grant is in the plan: without a user it was a grant
    # no one could use (a trial)
    assert users == [*(name.replace("-", "_") for name in SERVICES), COMMAND_SENDER]
    assert f"kafka_{COMMAND_SENDER}_password" in secure["services"]["kafka-users"]["secrets"]


def test_the_command_in_the_secure_files_header_writes_every_secret_it_mounts(
    secure: dict[str, Any], tmp_path: Path
) -> None:
    """The header's ``python -m sagastack.dev_certs …`` (run here, into a temporary
    directory) writes each file the secrets name, readable in a container, in a directory
    only its owner may enter."""
    import shlex

    from sagastack import dev_certs

    header = [line[1:].strip() for line in SECURE.read_text().splitlines() if line.startswith("#")]
    joined = " ".join(header).replace("\\ ", " ")
    command = shlex.split(
        joined[joined.index("python -m sagastack.dev_certs") : joined.index("docker compose")]
    )
    assert command[3] == ".run/compose-secrets"
    assert dev_certs.main([str(tmp_path), *command[4:]]) == 0
    for secret in secure["secrets"].values():
        written = tmp_path / Path(secret["file"]).name
        assert written.is_file(), written
        # compose mounts them as they are, for containers' users that are not this one
        assert written.stat().st_mode & 0o777 == 0o644, written
        if written.suffix == ".password":
            assert len(written.read_text()) >= 24
    assert tmp_path.stat().st_mode & 0o777 == 0o700  # the host's other users kept out
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600  # mounted nowhere
