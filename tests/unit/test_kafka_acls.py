"""The Kafka ACL plan (saga_kit.kafka_acls): each user allowed what its code does, no more.

The broker enforcing it is tests/e2e/test_secure_kafka.py (Apache Kafka with an
authorizer); here, the plan's shape, derived from the services' own specs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from events.topics import COMMANDS, DOMAIN_TOPICS, TOPIC_OF_PRODUCER, dead_letter_topic
from saga_kit.kafka_acls import (
    COMMAND_SENDER,
    Acl,
    acl_command_args,
    plan,
    service_acls,
    service_subscriptions,
    topics_used,
)


def granted(acls: list[Acl], principal: str, operation: str) -> set[str]:
    return {a.resource for a in acls if a.principal == principal and a.operation == operation}


def test_each_service_writes_only_its_own_events_and_dead_letters() -> None:
    acls = plan()
    writers: dict[str, set[str]] = {}
    for service in TOPIC_OF_PRODUCER:
        written = granted(acls, f"User:{service}", "Write")
        assert written == {TOPIC_OF_PRODUCER[service], dead_letter_topic(service)}
        for topic in written:
            writers.setdefault(topic, set()).add(service)
    assert all(len(who) == 1 for who in writers.values()), writers  # no topic has two writers
    assert granted(acls, f"User:{COMMAND_SENDER}", "Write") == {COMMANDS}


def test_each_service_reads_what_it_subscribes_to_in_its_own_group() -> None:
    acls = plan()
    subscriptions = service_subscriptions()
    assert set(subscriptions) == set(TOPIC_OF_PRODUCER)
    for service, topics in subscriptions.items():
        principal = f"User:{service}"
        assert {a.resource for a in acls if a.principal == principal and a.resource_type == "topic"} >= set(
            topics
        )
        assert {a.resource for a in acls if a.principal == principal and a.operation == "Read"} == {
            *topics,
            service,  # its consumer group
        }
        groups = {a.resource for a in acls if a.principal == principal and a.resource_type == "group"}
        assert groups == {service}
    # only the order service reads commands; every domain topic is read by someone
    assert {s for s, topics in subscriptions.items() if COMMANDS in topics} == {"order_svc"}
    assert set(DOMAIN_TOPICS) <= {t for topics in subscriptions.values() for t in topics}


def test_the_command_sender_may_write_commands_and_nothing_else() -> None:
    mine = [a for a in plan() if a.principal == f"User:{COMMAND_SENDER}"]
    assert mine == [
        Acl(f"User:{COMMAND_SENDER}", "topic", COMMANDS, "Describe"),
        Acl(f"User:{COMMAND_SENDER}", "topic", COMMANDS, "Write"),
    ]


def test_the_topics_a_service_creates_are_those_it_is_granted() -> None:
    """What a service creates at start-up (``topics_used``) is what the plan lets it create:
    a topic added to a subscription is granted without anyone writing an ACL."""
    acls = plan()
    for service, topics in service_subscriptions().items():
        assert set(topics_used(service, topics)) == granted(acls, f"User:{service}", "Create")
        assert topics_used(service, topics)[:2] == (TOPIC_OF_PRODUCER[service], dead_letter_topic(service))


def test_a_service_reading_its_own_topic_is_refused() -> None:
    with pytest.raises(ValueError, match="would read topics it writes"):
        service_acls("order_svc", ("orders.events",))


def test_acl_command_args_group_resources_that_share_operations() -> None:
    args = acl_command_args(service_acls("payment_svc", ("inventory.events", "orders.events")))
    grant = ["--add", "--allow-principal", "User:payment_svc"]
    reads = ["--operation", "Create", "--operation", "Describe", "--operation", "Read"]
    writes = ["--operation", "Create", "--operation", "Describe", "--operation", "Write"]
    assert args == [
        [*grant, "--operation", "Describe", "--operation", "Read", "--group", "payment_svc"],
        [*grant, *reads, "--topic", "inventory.events", "--topic", "orders.events"],
        [*grant, *writes, "--topic", "payment.events", "--topic", "payment_svc.deadletter"],
    ]
    # every grant of the plan is in exactly one command
    listed = set()
    for command in acl_command_args(plan()):
        principal = command[2]
        operations = [command[i + 1] for i, a in enumerate(command) if a == "--operation"]
        resources = [
            (command[i][2:], command[i + 1]) for i, a in enumerate(command) if a in ("--topic", "--group")
        ]
        for kind, name in resources:
            for operation in operations:
                acl = (principal, kind, name, operation)
                assert acl not in listed
                listed.add(acl)
    assert listed == {(a.principal, a.resource_type, a.resource, a.operation) for a in plan()}


def test_sagactl_prints_the_plan() -> None:
    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "sagactl", "kafka-acls", *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert json.loads(run("-o", "json")) == [
        {
            "principal": a.principal,
            "resource_type": a.resource_type,
            "resource": a.resource,
            "operation": a.operation,
        }
        for a in plan()
    ]
    lines = run("--commands").splitlines()
    assert len(lines) == len(acl_command_args(plan()))
    assert all(
        line.startswith('kafka-acls.sh --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config')
        for line in lines
    )
    assert any(line.endswith("--topic orders.commands") and "User:saga-client" in line for line in lines)
    text = run()
    assert "User:saga-client" in text and "orders.commands" in text
