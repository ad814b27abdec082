"""The chaos run's verdict, with the system and the broker stubbed: in what order it
waits and checks (``sagastack.chaos.Chaos.run``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from sagastack import chaos as chaos_module
from sagastack import invariants
from sagastack.chaos import Chaos, Config
from sagastack.system import System


class _Rows:
    def __enter__(self) -> _Rows:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def execute(self, *_: object) -> list[Any]:
        return []


class _Http:
    def get(self, *_: object, **__: object) -> httpx.Response:
        return httpx.Response(200, json=[])


def test_the_invariants_are_checked_once_every_group_consumed_its_topics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quiescence is read in the databases: events published but not yet consumed (a
    group rebalancing after a kill, a duplicate re-published at the end) leave nothing
    there unsettled. The invariants were checked first and the groups given 20 s to catch
    up after: whatever those last events did (an effect applied twice) was never checked.
    Now the groups reach their ends first, the databases settle again, then the check."""
    steps: list[str] = []

    async def consumed(*_: object, **__: object) -> list[str]:
        steps.append("consumed to the end")
        return []

    def quiet(*_: object, **__: object) -> bool:
        steps.append("quiescence")
        return True

    def check(*_: object) -> list[str]:
        steps.append("invariants")
        return []

    async def drive(_: Chaos) -> None:
        pass

    monkeypatch.setattr(chaos_module, "unconsumed", consumed)
    monkeypatch.setattr(chaos_module.psycopg, "connect", lambda *_, **__: _Rows())
    monkeypatch.setattr(invariants, "wait_for_quiescence", quiet)
    monkeypatch.setattr(invariants, "check", check)
    monkeypatch.setattr(
        invariants.ProviderLedger, "fetch", lambda *_, **__: invariants.ProviderLedger([], [], {})
    )
    monkeypatch.setattr(System, "start", lambda _: None)
    monkeypatch.setattr(System, "stop", lambda _: None)
    monkeypatch.setattr(System, "broker_description", lambda _: "none")
    monkeypatch.setattr(System, "url", lambda _, name: f"http://{name}")
    monkeypatch.setattr(System, "http", property(lambda _: _Http()))
    monkeypatch.setattr(Chaos, "seed_data", lambda _: None)
    monkeypatch.setattr(Chaos, "drive", drive)
    monkeypatch.setattr(Chaos, "supervise", lambda _, stop: None)
    monkeypatch.setattr(Chaos, "outcomes", lambda _: (Counter(), Counter()))
    chaos = Chaos(Config(orders=1, poison=0, run_dir=tmp_path / "chaos"))
    chaos.system.database_urls = {name: "postgresql://nowhere/db" for name in invariants.SERVICES}
    chaos.system.provider_url = "http://provider.invalid"

    assert chaos.run() == 0
    assert steps == ["quiescence", "consumed to the end", "quiescence", "invariants"]


def test_an_order_whose_cancellation_was_accepted_must_end_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 202 to POST /orders/{id}/cancel says the order is CANCELLED now. The run only
    counted the 202s: an accepted cancellation that did not hold (the order APPROVED in
    the end, charged, its units sold) is a consistent saga, and every invariant held."""

    class Orders(_Rows):
        def execute(self, *_: object) -> list[Any]:
            return [(kept, "APPROVED"), (cancelled, "CANCELLED")]

    kept, cancelled = "9b7d0c1e-0000-4000-8000-000000000001", "9b7d0c1e-0000-4000-8000-000000000002"
    monkeypatch.setattr(chaos_module.psycopg, "connect", lambda *_, **__: Orders())
    monkeypatch.setattr(System, "url", lambda _, name: f"http://{name}")
    monkeypatch.setattr(System, "http", property(lambda _: _Http()))
    chaos = Chaos(Config(orders=1, poison=0, run_dir=tmp_path / "chaos"))
    chaos.system.database_urls = {name: "postgresql://nowhere/db" for name in invariants.SERVICES}
    chaos.report.placed = {kept: "k1", cancelled: "k2"}
    chaos.report.cancelled = {kept, cancelled}
    assert chaos.extra_checks() == [f"order {kept}: its cancellation was accepted (202), but it is APPROVED"]
