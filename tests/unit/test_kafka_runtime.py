"""The Apache Kafka runtime without starting a JVM: the jar cache's contract (complete only
when mvn succeeded and copied what the broker needs), the generated configuration, and
how the broker is chosen."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAuthorizationFailedError,
    UnknownProducerId,
)

from saga_kit.outbox import _relay_retries
from saga_kit.settings import ServiceSettings
from sagastack import kafka_dist, system
from sagastack.apache_kafka import ApacheKafka, new_cluster_id

FAKE_MVN = """#!/bin/sh
# a stand-in for mvn: copies the jars named in $FAKE_MVN_JARS to -DoutputDirectory
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}";; esac
done
echo "fake mvn $*"
[ -n "$FAKE_MVN_FAIL" ] && exit 1
mkdir -p "$out"
for jar in $FAKE_MVN_JARS; do : > "$out/$jar"; done
exit 0
"""


@pytest.fixture
def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(FAKE_MVN)
    mvn.chmod(mvn.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_MVN_JARS", " ".join((*kafka_dist.REQUIRED_JARS, "scala-library-2.13.16.jar")))
    return mvn


def test_a_cache_is_complete_only_with_a_marker_naming_the_pinned_artifacts(tmp_path: Path) -> None:
    assert not kafka_dist.is_complete(tmp_path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.jar").write_bytes(b"")
    marker = {"artifacts": [list(a) for a in kafka_dist.ARTIFACTS], "jars": ["a.jar"]}
    (tmp_path / kafka_dist.MARKER).write_text(json.dumps(marker))
    assert kafka_dist.is_complete(tmp_path)
    (tmp_path / "lib" / "a.jar").unlink()  # a jar gone: not complete
    assert not kafka_dist.is_complete(tmp_path)
    (tmp_path / "lib" / "a.jar").write_bytes(b"")
    other = {**marker, "artifacts": [["org.apache.kafka", "kafka_2.13", "3.9.0"]]}
    (tmp_path / kafka_dist.MARKER).write_text(json.dumps(other))  # made for other versions
    assert not kafka_dist.is_complete(tmp_path)
    (tmp_path / kafka_dist.MARKER).write_text("{not json")
    assert not kafka_dist.is_complete(tmp_path)


def test_ensure_resolves_once_with_mvn_then_reuses_the_cache(
    tmp_path: Path, fake_mvn: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    lib = kafka_dist.ensure(cache)
    assert lib == cache / "lib"
    assert {p.name for p in lib.iterdir()} >= set(kafka_dist.REQUIRED_JARS)
    assert kafka_dist.is_complete(cache)
    assert not (cache / "lib.partial").exists()
    log = (cache / "mvn.log").read_text()
    assert "dependency:copy-dependencies" in log and f"{cache}/settings.xml" in log
    monkeypatch.setenv("FAKE_MVN_FAIL", "1")  # a second call must not run mvn at all
    assert kafka_dist.ensure(cache) == lib


def test_a_failed_or_partial_download_is_never_taken_for_complete(
    tmp_path: Path, fake_mvn: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FAKE_MVN_FAIL", "1")
    with pytest.raises(kafka_dist.KafkaDistError, match="mvn failed"):
        kafka_dist.ensure(cache)
    assert not kafka_dist.is_complete(cache) and not (cache / "lib").exists()
    monkeypatch.delenv("FAKE_MVN_FAIL")
    monkeypatch.setenv("FAKE_MVN_JARS", "kafka_2.13-4.1.1.jar")  # succeeded, but not everything
    with pytest.raises(kafka_dist.KafkaDistError, match="did not copy"):
        kafka_dist.ensure(cache)
    assert not kafka_dist.is_complete(cache) and not (cache / "lib").exists()


def test_without_mvn_an_incomplete_cache_is_an_error_naming_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn here
    assert not kafka_dist.resolvable(tmp_path / "cache")
    with pytest.raises(kafka_dist.KafkaDistError, match="SAGA_BROKER=tansu"):
        kafka_dist.ensure(tmp_path / "cache")


def test_the_pom_names_the_pinned_artifacts_and_maven_central_is_the_only_repository() -> None:
    pom = kafka_dist.pom_xml()
    for group, artifact, version in kafka_dist.ARTIFACTS:
        assert f"<groupId>{group}</groupId><artifactId>{artifact}</artifactId>" in pom
        assert f"<version>{version}</version>" in pom
    assert ("org.apache.kafka", "kafka_2.13", "4.1.1") in kafka_dist.ARTIFACTS
    assert f"<version>{kafka_dist.DEPENDENCY_PLUGIN_VERSION}</version>" in pom
    settings = kafka_dist.settings_xml()
    assert "<mirrorOf>*</mirrorOf>" in settings
    assert "<url>https://repo.maven.apache.org/maven2</url>" in settings


def test_the_cache_directory_defaults_under_the_project_and_can_be_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAGA_KAFKA_CACHE", raising=False)
    assert kafka_dist.cache_dir() == kafka_dist.PROJECT_DIR / ".run" / "kafka-dist" / kafka_dist.KAFKA_VERSION
    monkeypatch.setenv("SAGA_KAFKA_CACHE", str(tmp_path / "elsewhere"))
    assert kafka_dist.cache_dir() == tmp_path / "elsewhere"


def test_a_cluster_id_is_16_random_bytes_in_url_safe_base64_without_padding() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22 and "=" not in cluster_id and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def _props(kafka: ApacheKafka, node: int) -> dict[str, str]:
    text = kafka._properties(kafka.nodes[node])
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_one_combined_node_replicates_nothing_and_lets_groups_form_at_once(tmp_path: Path) -> None:
    kafka = ApacheKafka(tmp_path, nodes=1, port=19092)
    props = _props(kafka, 1)
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == f"1@127.0.0.1:{kafka.nodes[1].controller_port}"
    assert props["listeners"].startswith("PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:")
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert kafka.bootstrap == "127.0.0.1:19092" and kafka.replication == 1


def test_a_three_node_cluster_votes_together_and_replicates_everything_three_times(tmp_path: Path) -> None:
    kafka = ApacheKafka(tmp_path, nodes=3)
    voters = ",".join(f"{n}@127.0.0.1:{kafka.nodes[n].controller_port}" for n in (1, 2, 3))
    ports = {kafka.nodes[n].port for n in (1, 2, 3)} | {kafka.nodes[n].controller_port for n in (1, 2, 3)}
    assert len(ports) == 6
    for n in (1, 2, 3):
        props = _props(kafka, n)
        assert props["node.id"] == str(n) and props["controller.quorum.voters"] == voters
        assert props["process.roles"] == "broker,controller"
        assert props["default.replication.factor"] == "3" and props["min.insync.replicas"] == "2"
        assert props["offsets.topic.replication.factor"] == "3"
        assert props["transaction.state.log.replication.factor"] == "3"
        assert "0.0.0.0" not in props["listeners"]
    assert kafka.replication == 3 and len(kafka.bootstrap.split(",")) == 3
    with pytest.raises(ValueError):
        ApacheKafka(tmp_path, nodes=2)


def test_saga_broker_chooses_and_make_run_falls_back_to_tansu_without_java(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("SAGA_BROKER", raising=False)
    assert system.broker_from_env() == "tansu"  # what tests and tools get unless told
    monkeypatch.setattr(kafka_dist, "java_available", lambda: True)
    monkeypatch.setattr(kafka_dist, "resolvable", lambda cache=None: True)
    assert system.choose_broker() == ("tansu", None)  # unasked: Tansu, even with Java
    monkeypatch.setenv("SAGA_BROKER", "kafka")
    assert system.choose_broker() == ("kafka", None)
    monkeypatch.setattr(kafka_dist, "java_available", lambda: False)
    kind, note = system.choose_broker()
    assert (kind, note) == (
        "tansu",
        "Java 17+ not found to run Apache Kafka: using the embedded Tansu broker instead",
    )
    monkeypatch.setattr(kafka_dist, "java_available", lambda: True)
    monkeypatch.setattr(kafka_dist, "resolvable", lambda cache=None: False)
    kind, note = system.choose_broker()
    assert (kind, note) == (
        "tansu",
        "Maven (mvn) not found to run Apache Kafka: using the embedded Tansu broker instead",
    )
    monkeypatch.setenv("SAGA_BROKER", "tansu")
    assert system.choose_broker() == ("tansu", None)
    monkeypatch.setenv("SAGA_BROKER", "rabbitmq")
    with pytest.raises(ValueError, match="SAGA_BROKER"):
        system.broker_from_env()


def test_the_idempotent_producer_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"database_url": "postgresql://u@db/x", "http_port": 1}
    monkeypatch.delenv("KAFKA_IDEMPOTENT_PRODUCER", raising=False)
    assert ServiceSettings(**base).kafka_idempotent_producer is False  # type: ignore[arg-type]
    monkeypatch.setenv("KAFKA_IDEMPOTENT_PRODUCER", "true")
    assert ServiceSettings(**base).kafka_idempotent_producer is True  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (KafkaConnectionError(), True),  # the broker is away: it comes back
        (NotLeaderForPartitionError(), True),  # a leader moved (a node of the cluster died)
        (OutOfOrderSequenceNumber(), False),  # the idempotent producer's state is gone:
        (UnknownProducerId(), False),  # the same producer would fail forever
        (ProducerFenced(), False),
        # the broker's ACLs refuse the topic: an operator may grant it while the service runs
        (TopicAuthorizationFailedError(), True),
        (MessageSizeTooLargeError(), False),
    ],
)
def test_the_relay_retries_broker_trouble_but_not_a_producer_the_broker_forgot(
    error: Exception, retried: bool
) -> None:
    assert _relay_retries(error) is retried


def test_a_sasl_ssl_broker_authorizes_every_request_and_each_user_has_its_own_password(
    tmp_path: Path,
) -> None:
    kafka = ApacheKafka(tmp_path, sasl_ssl=True, sasl_users=("order_svc", "saga-client"))
    props = _props(kafka, 1)
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:saga;User:ANONYMOUS"  # the administrator; the brokers themselves
    assert kafka.users == ("saga", "order_svc", "saga-client")
    kafka._prepare_sasl_ssl()
    passwords = {user: kafka.password_file_of(user).read_text() for user in kafka.users}
    assert len(set(passwords.values())) == 3
    assert all((kafka.password_file_of(user).stat().st_mode & 0o777) == 0o600 for user in kafka.users)
    env = kafka.client_env("order_svc")
    assert env["KAFKA_SASL_USERNAME"] == "order_svc"
    assert env["KAFKA_SASL_PASSWORD_FILE"] == str(kafka.password_file_of("order_svc"))
    assert kafka.client_security.sasl_username == "saga"
    with pytest.raises(ValueError, match="no SCRAM user 'mallory'"):
        kafka.client_env("mallory")


def test_a_broker_without_sasl_ssl_has_no_authorizer_to_grant_to(tmp_path: Path) -> None:
    kafka = ApacheKafka(tmp_path)
    assert "authorizer.class.name" not in _props(kafka, 1)
    with pytest.raises(ValueError, match="authorizes nothing"):
        kafka.grant([])
