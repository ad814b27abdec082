"""Least privilege on the broker: the Kafka ACLs each user of this system needs, and no more.

Every service connects to Kafka as a SCRAM user of its own, named as the service
(``order_svc``, ``inventory_svc``, ``payment_svc``: ``KAFKA_SASL_USERNAME`` in each one's
environment), and the broker's authorizer refuses whatever its ACLs do not allow (Apache
Kafka refuses by default: ``allow.everyone.if.no.acl.found=false``). What each may do is
derived here from what its code reads and writes, so the grants cannot drift from it:

- its own events topic (``events.topics.TOPIC_OF_PRODUCER``) and its dead letter topic
  (``<service>.deadletter``): ``WRITE`` — the relay's producer publishes there, and no one
  else may;
- each topic it subscribes to: ``READ`` — never ``WRITE``: a service cannot speak for
  another, whatever its signing key (``saga_kit.signing`` decides which events are
  believed; the broker, who may write them at all);
- every topic above: ``DESCRIBE`` (metadata, offsets) and ``CREATE`` (a service creates
  the topics it uses at start-up when they are missing, ``saga_kit.kafka.ensure_topics``;
  an operator who creates them beforehand may leave ``CREATE`` out);
- its consumer group, whose id is its name: ``READ`` (join, commit offsets) and
  ``DESCRIBE`` (find its coordinator).

An idempotent producer needs no cluster grant: ``WRITE`` on a topic is enough since Kafka
3.0 (KIP-679). A client that sends commands (``sagactl place --via kafka``, any program
written to ``orders.commands``) needs ``WRITE`` and ``DESCRIBE`` on that topic only: each
command carries its sender's bearer token, which the order service authorizes
(``events.commands``). Tools that read every topic or replay records (the test harness,
``make chaos``) connect as an administrator the broker names a super user.

``plan()`` is the whole set; ``acl_command_args`` writes it as arguments of Kafka's own
``kafka-acls`` tool (``org.apache.kafka.tools.AclCommand``), the form an operator applies
and ``sagastack.apache_kafka`` applies to its development broker; ``sagactl kafka-acls``
prints it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from events.topics import COMMANDS, TOPIC_OF_PRODUCER, dead_letter_topic

ResourceType = Literal["topic", "group"]
Operation = Literal["Read", "Write", "Describe", "Create"]

#: The user of a client that only sends commands to ``orders.commands``.
COMMAND_SENDER = "saga-client"


@dataclass(frozen=True, order=True)
class Acl:
    """One grant: ``principal`` (``User:<name>``) may do ``operation`` (Kafka's name of it)
    on the ``resource_type`` named ``resource`` (a literal name, never a prefix)."""

    principal: str
    resource_type: ResourceType
    resource: str
    operation: Operation


def topics_written(service: str) -> tuple[str, ...]:
    """The topics ``service`` publishes to: its events topic and its dead letter topic."""
    return (TOPIC_OF_PRODUCER[service], dead_letter_topic(service))


def topics_used(service: str, subscribed: Sequence[str]) -> tuple[str, ...]:
    """Every topic ``service`` writes or reads (``subscribed``), each once, in that order:
    those it creates at start-up when missing."""
    return tuple(dict.fromkeys([*topics_written(service), *subscribed]))


def service_acls(service: str, subscribed: Sequence[str]) -> list[Acl]:
    """The grants of ``service``'s user (named as the service), which subscribes to
    ``subscribed``: see the module doc. Raises ``ValueError`` if it would read a topic it
    also writes (a service does not consume its own events)."""
    user = f"User:{service}"
    written = topics_written(service)
    overlap = set(written) & set(subscribed)
    if overlap:
        raise ValueError(f"{service} would read topics it writes: {sorted(overlap)}")
    acls = [Acl(user, "topic", t, op) for t in written for op in ("Write", "Describe", "Create")]
    acls += [Acl(user, "topic", t, op) for t in subscribed for op in ("Read", "Describe", "Create")]
    acls += [Acl(user, "group", service, op) for op in ("Read", "Describe")]
    return sorted(acls)


def command_sender_acls(user: str = COMMAND_SENDER) -> list[Acl]:
    """The grants of a client that only sends commands: ``WRITE`` and ``DESCRIBE`` on
    ``orders.commands``."""
    return sorted(Acl(f"User:{user}", "topic", COMMANDS, op) for op in ("Write", "Describe"))


def plan(subscriptions: Mapping[str, Sequence[str]] | None = None) -> list[Acl]:
    """Every grant of the system: each service's (``subscriptions``: service name → the
    topics it subscribes to; default: the three services' own ``ServiceSpec``) and the
    command sender's, sorted."""
    chosen = service_subscriptions() if subscriptions is None else subscriptions
    acls = [acl for name, topics in chosen.items() for acl in service_acls(name, topics)]
    return sorted([*acls, *command_sender_acls()])


def service_subscriptions() -> dict[str, tuple[str, ...]]:
    """Service name → the topics it subscribes to, read from the services' specs (imported
    here only: this module is used where the services' code is not loaded)."""
    from inventory_svc.app import SPEC as INVENTORY
    from order_svc.app import SPEC as ORDER
    from payment_svc.app import SPEC as PAYMENT

    return {spec.name: spec.subscription.topics for spec in (ORDER, INVENTORY, PAYMENT)}


def operations_by_resource(acls: Iterable[Acl]) -> dict[tuple[str, ResourceType, str], list[Operation]]:
    """(principal, resource type, resource) → the operations ``acls`` grant it there, sorted."""
    operations: dict[tuple[str, ResourceType, str], list[Operation]] = {}
    for acl in sorted(acls):
        operations.setdefault((acl.principal, acl.resource_type, acl.resource), []).append(acl.operation)
    return operations


def acl_command_args(acls: Iterable[Acl]) -> list[list[str]]:
    """``acls`` as argument lists of Kafka's ``kafka-acls`` tool (``--add``), what follows
    ``kafka-acls.sh --bootstrap-server … --command-config …`` (an administrator's
    connection): one list per principal, resource type and set of operations, naming every
    resource granted those (the tool takes ``--topic`` and ``--group`` more than once)."""
    resources: dict[tuple[str, ResourceType, tuple[Operation, ...]], list[str]] = {}
    for (principal, resource_type, resource), granted in operations_by_resource(acls).items():
        resources.setdefault((principal, resource_type, tuple(granted)), []).append(resource)
    commands = []
    for (principal, resource_type, ops), names in resources.items():
        args = ["--add", "--allow-principal", principal]
        for operation in ops:
            args += ["--operation", operation]
        for name in names:
            args += [f"--{resource_type}", name]
        commands.append(args)
    return commands
