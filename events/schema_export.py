"""Generate ``schemas/<EventType>.json`` (JSON Schema of the full envelope) per event,
and ``schemas/asyncapi.json``, the AsyncAPI document of topics and events.

Run with ``python -m events.schema_export [--check] [DIR]``; ``--check`` exits 1 when
the files on disk differ from what the models generate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from events.commands import COMMAND_TYPES, Command
from events.envelope import Envelope
from events.registry import EVENT_TYPES

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "schemas"


def render() -> dict[str, str]:
    """File name → file text for every event type."""
    files: dict[str, str] = {}
    for name, cls in sorted(EVENT_TYPES.items()):
        schema: dict[str, Any] = Envelope[cls].model_json_schema(mode="serialization")  # type: ignore[valid-type]
        schema["title"] = name
        schema["description"] = (cls.__doc__ or "").strip()
        props = schema["properties"]
        props["event_type"] = {"const": name, "type": "string"}
        oldest = cls.oldest_wire_version or cls.schema_version
        props["schema_version"] = (
            {"const": cls.schema_version, "type": "integer"}
            if oldest == cls.schema_version
            else {"enum": list(range(oldest, cls.schema_version + 1)), "type": "integer"}
        )
        props["producer"] = {"const": cls.producer, "type": "string"}
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        files[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    for name, cmd in sorted(COMMAND_TYPES.items()):
        files[f"{name}.json"] = json.dumps(command_schema(cmd), indent=2, sort_keys=True) + "\n"
    from events.asyncapi import render as asyncapi

    files["asyncapi.json"] = asyncapi()
    return files


def command_schema(cls: type[Command]) -> dict[str, Any]:
    """The wire form of a command (``events.commands``): its envelope and payload."""
    payload: dict[str, Any] = cls.model_json_schema(mode="validation")
    payload["properties"].pop("command_id", None)
    payload["required"] = [r for r in payload.get("required", []) if r != "command_id"]
    defs = payload.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": cls.event_type,
        "description": (cls.__doc__ or "").strip() + " Sent on orders.commands, keyed by command_id.",
        "type": "object",
        "additionalProperties": False,
        "required": ["command_id", "command_type", "schema_version", "payload"],
        "properties": {
            "command_id": {
                "type": "string",
                "format": "uuid",
                "description": "chosen by the client: the idempotency key"
                " (the same command twice places one order)",
            },
            "command_type": {"const": cls.event_type, "type": "string"},
            "schema_version": {"const": cls.schema_version, "type": "integer"},
            "payload": payload,
        },
        **({"$defs": defs} if defs else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--check", action="store_true", help="fail if files are stale")
    args = parser.parse_args(argv)
    files = render()
    directory: Path = args.directory
    if args.check:
        stale = [
            name
            for name, text in files.items()
            if not (directory / name).exists() or (directory / name).read_text() != text
        ]
        extra = sorted(p.name for p in directory.glob("*.json") if p.name not in files)
        for name in stale + extra:
            print(f"stale: {directory / name}", file=sys.stderr)
        return 1 if stale or extra else 0
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    for p in directory.glob("*.json"):
        if p.name not in files:
            p.unlink()
    print(f"wrote {len(files)} schemas to {directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
