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
