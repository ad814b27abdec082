"""What the supervisor tells the services about the broker it started (no broker runs
here: ``broker_env`` reads only which one was started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga_kit.settings import DEFAULT_FETCH_MAX_WAIT_MS
from sagastack import kafka_dist
from sagastack.embedded import Tansu
from sagastack.system import TANSU_FETCH_IDLE_WAIT_MS, BadSetting, System, choose_secure_broker


def _on_tansu(tmp_path: Path) -> System:
    system = System(tmp_path, broker_kind="tansu")
    system.broker = Tansu(1, tmp_path / "tansu.log")  # never started
    return system


def test_on_tansu_the_services_get_a_short_idle_fetch_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_FETCH_IDLE_WAIT_MS", raising=False)
    assert TANSU_FETCH_IDLE_WAIT_MS < DEFAULT_FETCH_MAX_WAIT_MS
    assert _on_tansu(tmp_path).broker_env() == {"KAFKA_FETCH_IDLE_WAIT_MS": str(TANSU_FETCH_IDLE_WAIT_MS)}


def test_the_environment_s_fetch_wait_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_FETCH_IDLE_WAIT_MS", "250")
    assert _on_tansu(tmp_path).broker_env() == {"KAFKA_FETCH_IDLE_WAIT_MS": "250"}


def test_an_external_broker_keeps_the_services_defaults(tmp_path: Path) -> None:
    assert System(tmp_path, broker_kind="tansu").broker_env() == {}


def test_a_short_busy_wait_from_the_environment_stays_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_FETCH_IDLE_WAIT_MS", raising=False)
    monkeypatch.setenv("KAFKA_FETCH_MAX_WAIT_MS", "10")  # an idle wait of 20 would be refused
    assert _on_tansu(tmp_path).broker_env() == {}


def test_make_run_secure_refuses_a_broker_it_cannot_secure(monkeypatch: pytest.MonkeyPatch) -> None:
    """``make run SECURE=1`` runs the embedded Apache Kafka over SASL_SSL: asked with Tansu,
    or with an external broker, it says what to do instead (exit 2) — it never runs a
    PLAINTEXT broker it was asked to secure."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("SAGA_BROKER", "tansu")
    with pytest.raises(BadSetting, match=r"needs Apache Kafka \(BROKER=kafka\)"):
        choose_secure_broker()
    monkeypatch.setenv("SAGA_BROKER", "kafka")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker.example:9094")
    with pytest.raises(BadSetting, match="KAFKA_SECURITY_PROTOCOL"):
        choose_secure_broker()
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    monkeypatch.setattr(kafka_dist, "java_available", lambda: False)
    with pytest.raises(BadSetting, match=r"needs Apache Kafka: Java 17\+ not found to run it"):
        choose_secure_broker()
    monkeypatch.setattr(kafka_dist, "java_available", lambda: True)
    monkeypatch.setattr(kafka_dist, "resolvable", lambda cache=None: False)
    with pytest.raises(BadSetting, match=r"needs Apache Kafka: Maven \(mvn\) not found to run it"):
        choose_secure_broker()
    monkeypatch.setattr(kafka_dist, "resolvable", lambda cache=None: True)
    assert choose_secure_broker() == "kafka"
