"""The AsyncAPI 3.0 document of the saga: topics (channels), events (messages), and who
sends and who receives what (operations). Written by ``make schemas`` next to the JSON
Schemas it references (``schemas/asyncapi.json``); a test fails when it is stale.

Senders come from the contract (each event's ``producer``); receivers come from the
services' subscriptions, so the document cannot drift from what the code consumes.
"""

from __future__ import annotations

import json
from typing import Any

from events.commands import AUTHORIZATION, COMMAND_TYPES
from events.registry import EVENT_TYPES
from events.topics import COMMANDS, DOMAIN_TOPICS, TOPIC_OF_PRODUCER, dead_letter_topic

_KAFKA_BINDING = "0.5.0"
_HEADERS = {
    "type": "object",
    "properties": {
        "event_type": {
            "type": "string",
            "description": "the envelope's event_type, for routing without decoding",
        },
        "schema_version": {"type": "string"},
        "producer": {"type": "string"},
        "event_id": {"type": "string", "format": "uuid"},
        "traceparent": {"type": "string", "description": "W3C trace context: one saga is one trace"},
    },
}


def _camel(*parts: str) -> str:
    words = [w for p in parts for w in p.replace(".", "_").split("_") if w]
    return words[0].lower() + "".join(w.capitalize() for w in words[1:])


def _services() -> list[Any]:
    """The three services' specs (imported here only: the contract does not depend on them)."""
    from inventory_svc.app import SPEC as INVENTORY
    from order_svc.app import SPEC as ORDER
    from payment_svc.app import SPEC as PAYMENT

    return [ORDER, INVENTORY, PAYMENT]


def render() -> str:
    messages: dict[str, Any] = {}
    for name, cls in sorted(EVENT_TYPES.items()):
        messages[name] = {
            "name": name,
            "title": name,
            "summary": (cls.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "headers": _HEADERS,
            "payload": {"$ref": f"{name}.json"},
            "bindings": {
                "kafka": {
                    "key": {
                        "type": "string",
                        "format": "uuid",
                        "description": "order_id: one saga, one partition",
                    },
                    "bindingVersion": _KAFKA_BINDING,
                }
            },
        }
    messages["DeadLetter"] = {
        "name": "DeadLetter",
        "title": "DeadLetter",
        "summary": "A record a service could not process: the original key and bytes, unchanged.",
        "headers": {
            "type": "object",
            "properties": {
                "dlq.reason": {"type": "string"},
                "dlq.source_topic": {"type": "string"},
                "dlq.source_partition": {"type": "string"},
                "dlq.source_offset": {"type": "string"},
                "dlq.service": {"type": "string"},
            },
        },
        "payload": {"description": "the original message value, as received"},
    }

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in DOMAIN_TOPICS:
        owner = next(svc for svc, t in TOPIC_OF_PRODUCER.items() if t == topic)
        names = sorted(n for n, cls in EVENT_TYPES.items() if cls.producer == owner)
        channel = _camel(topic)
        channels[channel] = {
            "address": topic,
            "description": f"Domain events of {owner}, keyed by order_id.",
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
            "bindings": {"kafka": {"partitions": 6, "bindingVersion": _KAFKA_BINDING}},
        }
        operations[_camel(owner, "publishes", topic)] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{owner} publishes its events through its transactional outbox.",
            "messages": [{"$ref": f"#/channels/{channel}/messages/{n}"} for n in names],
        }
    command_names = sorted(COMMAND_TYPES)
    for name in command_names:
        messages[name] = {
            "name": name,
            "title": name,
            "summary": (COMMAND_TYPES[name].__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    AUTHORIZATION: {
                        "type": "string",
                        "description": "Bearer <JWT>: the sender's token, the HTTP API's; authorized like"
                        " the HTTP call (without a valid one: CommandRejected missing_token / invalid_token)",
                    }
                },
                "required": [AUTHORIZATION],
            },
            "payload": {"$ref": f"{name}.json"},
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "format": "uuid", "description": "command_id"},
                    "bindingVersion": _KAFKA_BINDING,
                }
            },
        }
    channels[_camel(COMMANDS)] = {
        "address": COMMANDS,
        "description": "Commands to the order service from any client, keyed by command_id; answered on"
        " orders.events (header correlation_id = command_id; CommandRejected when refused).",
        "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in command_names},
        "bindings": {"kafka": {"partitions": 6, "bindingVersion": _KAFKA_BINDING}},
    }
    operations["clientSendsCommands"] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{_camel(COMMANDS)}"},
        "summary": "A client (a checkout, an import, sagactl place --via kafka) places or cancels an order.",
        "messages": [{"$ref": f"#/channels/{_camel(COMMANDS)}/messages/{n}"} for n in command_names],
    }
    for spec in _services():
        for topic in spec.subscription.topics:
            channel = _camel(topic)
            owned = channels[channel]["messages"]
            reactions = spec.subscription.reactions
            handled = sorted(c.event_type for c in reactions.handlers if c.event_type in owned)
            recorded = sorted(owned) if reactions.observe and topic != COMMANDS else handled
            operations[_camel(spec.name, "consumes", topic)] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel}"},
                "summary": f"{spec.name} reacts to {', '.join(handled) or 'nothing'}"
                + (" and records every event in the saga timeline" if reactions.observe else ""),
                "messages": [{"$ref": f"#/channels/{channel}/messages/{n}"} for n in recorded],
            }
        dead = _camel(dead_letter_topic(spec.name))
        channels[dead] = {
            "address": dead_letter_topic(spec.name),
            "description": f"What {spec.name} could not process, with the reason.",
            "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
        }
        operations[_camel(spec.name, "dead", "letters")] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{dead}"},
            "messages": [{"$ref": f"#/channels/{dead}/messages/DeadLetter"}],
        }
    document = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Choreography saga: order, inventory, payment",
            "version": "1.0.0",
            "description": "Every event travels in the envelope of its JSON Schema (schemas/<Event>.json).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "make run's embedded broker; production is Apache Kafka",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
