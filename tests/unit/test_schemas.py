"""``schemas/`` is generated from ``events/``; this fails when someone forgot ``make schemas``."""

from __future__ import annotations

import json
import uuid

import jsonschema

from events import encode, new_envelope
from events.schema_export import DEFAULT_DIR, render
from tests.unit.samples import sample_payloads


def test_schemas_directory_is_up_to_date() -> None:
    expected = render()
    on_disk = {p.name: p.read_text() for p in DEFAULT_DIR.glob("*.json")}
    stale = sorted(n for n in expected.keys() | on_disk.keys() if expected.get(n) != on_disk.get(n))
    assert not stale, f"schemas/ is stale ({stale}); run `make schemas`"


def test_every_encoded_event_validates_against_its_published_schema() -> None:
    for payload in sample_payloads():
        schema = json.loads((DEFAULT_DIR / f"{payload.event_type}.json").read_text())
        wire = json.loads(encode(new_envelope(payload, order_id=uuid.uuid4(), causation_id=None)))
        jsonschema.validate(wire, schema)
        wire["event_type"] = "Other"
        try:
            jsonschema.validate(wire, schema)
        except jsonschema.ValidationError:
            continue
        raise AssertionError(f"{payload.event_type} schema accepts a foreign event_type")


def test_asyncapi_document_is_consistent() -> None:
    """Every reference resolves, every event is a message on its producer's topic, and the
    receivers are exactly what the services subscribe to."""
    from events.topics import DOMAIN_TOPICS
    from tests.integration.conftest import SPECS

    doc = json.loads((DEFAULT_DIR / "asyncapi.json").read_text())
    assert doc["asyncapi"].startswith("3.")

    def resolve(ref: str) -> object:
        if not ref.startswith("#/"):
            assert (DEFAULT_DIR / ref).exists(), ref
            return json.loads((DEFAULT_DIR / ref).read_text())
        node: object = doc
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, ref
            node = node[part]
        return node

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        resolve(ref)
    addresses = {c["address"] for c in doc["channels"].values()}
    assert set(DOMAIN_TOPICS) <= addresses
    assert {p.event_type for p in sample_payloads()} <= set(doc["components"]["messages"])
    received = {
        (op_id.split("Consumes")[0], m["$ref"].rsplit("/", 1)[1])
        for op_id, op in doc["operations"].items()
        if op["action"] == "receive"
        for m in op["messages"]
    }
    for name, spec in SPECS.items():
        prefix = name.split("_")[0] + "Svc"
        for event_type in spec.subscription.reactions.event_types - {"RefusedCommand"}:  # internal only
            assert (prefix, event_type) in received, (name, event_type)
