"""The provider simulator's documents: every route has a summary and a description, and
the README's "Payment provider (simulator)" table lists exactly its routes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

from payment_provider.app import build_app
from payment_provider.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
_ROUTE = re.compile(r"`(GET|POST|PUT|DELETE) (/[^`]*)`")


def document() -> dict[str, Any]:
    app = build_app(Settings(database_url="postgresql://x/y", fault_control=True), cast(Any, None))
    doc: dict[str, Any] = app.openapi()
    return doc


def test_every_route_has_a_summary_and_a_description() -> None:
    for path, methods in document()["paths"].items():
        for method, operation in methods.items():
            assert operation.get("summary") and operation.get("description"), f"{method} {path}"


def test_the_readme_lists_every_route_of_the_provider() -> None:
    section = README.read_text().split("\n### Payment provider (simulator)\n", 1)[1].split("\n#", 1)[0]
    listed = {
        f"{method} {path}"
        for row in section.splitlines()
        if row.startswith("| `")
        for method, path in _ROUTE.findall(row.split(" | ", 1)[0])
    }
    documented = {f"{m.upper()} {p}" for p, methods in document()["paths"].items() for m in methods}
    assert documented - listed == set(), "routes missing from the README's provider table"
    assert listed - documented <= {"GET /openapi.json"}  # served, not a route of the document
