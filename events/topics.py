"""Topic names, in one place. One topic per owning service, keyed by ``order_id``."""

from __future__ import annotations

ORDERS = "orders.events"
INVENTORY = "inventory.events"
PAYMENT = "payment.events"

#: Which topic each producing service writes its domain events to.
TOPIC_OF_PRODUCER: dict[str, str] = {
    "order_svc": ORDERS,
    "inventory_svc": INVENTORY,
    "payment_svc": PAYMENT,
}

DOMAIN_TOPICS: tuple[str, ...] = (ORDERS, INVENTORY, PAYMENT)

#: Commands to the order service (``events.commands``), keyed by ``command_id``.
COMMANDS = "orders.commands"


DEAD_LETTER_SUFFIX = ".deadletter"


def dead_letter_topic(service: str) -> str:
    """Each service dead-letters into its own topic, e.g. ``payment_svc.deadletter``."""
    return f"{service}{DEAD_LETTER_SUFFIX}"


def is_dead_letter_topic(topic: str) -> bool:
    """Is ``topic`` a service's dead-letter topic (``dead_letter_topic``)?"""
    return topic.endswith(DEAD_LETTER_SUFFIX)
