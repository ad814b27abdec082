"""The demo's verdict on dead letters: the forged event of saga 7 is refused on purpose,
any other dead letter is a real event a service could not take."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import pytest

from sagastack import demo, invariants
from sagastack.demo import ACCOUNTS, SCENARIOS, story_problems, stray_dead_letters

FORGED = "6f1c1c1e-0000-4000-8000-000000000007"
OTHER = "6f1c1c1e-0000-4000-8000-000000000042"


def letter(order_id: str | None, event_type: str = "PaymentCompleted") -> dict[str, object]:
    return {"id": 1, "order_id": order_id, "event_type": event_type, "reason": "why"}


def test_only_the_forged_events_dead_letters_are_expected() -> None:
    """A real event dead-lettered cuts its saga short: its deadline cancels the order,
    the reservation is released, nothing is charged — every invariant holds and the demo
    said so."""
    letters = {
        "order_svc": [letter(FORGED), letter(OTHER, "InventoryReserved")],
        "inventory_svc": [letter(FORGED)],
        "payment_svc": [letter(None, "?")],
    }
    assert stray_dead_letters(letters, FORGED) == [
        f"order_svc dead-lettered a real event: InventoryReserved {OTHER}: why",
        "payment_svc dead-lettered a real event: ? None: why",
    ]
    assert (
        stray_dead_letters({"order_svc": [letter(FORGED)], "inventory_svc": [letter(FORGED)]}, FORGED) == []
    )


def test_saga_8_fails_when_the_breaker_was_never_seen_open() -> None:
    """Saga 8's headline says payment's circuit breaker opens during the outage and fails
    fast. Its verdict checked the one charge and the balance only: a breaker that never
    opened (payment calling a provider that is down, again and again) was "as expected"."""
    sc = next(s for s in SCENARIOS if s.twist == "provider outage")
    charged = {"event_type": "PaymentCompleted", "payload": {"amount": "13.50"}}
    saga = {"events": [charged], "explanation": {"settled": True, "owed": []}}
    balance = ACCOUNTS[sc.customer] - Decimal("13.50")
    assert story_problems(8, sc, saga, balance, breaker_opened=True) == []
    assert story_problems(8, sc, saga, balance, breaker_opened=False) == [
        "saga 8: payment's circuit breaker was not seen open while the provider was down"
    ]


def test_the_demo_checks_once_every_group_consumed_its_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer that stops reading a partition leaves its sagas to their deadlines: the
    demo's load orders end CANCELLED, nothing is held, every invariant holds, and the demo
    said so (the chaos run checks consumption, the demo did not). Now the demo's final
    checks wait for every group to reach its topics' ends (order_svc's commands too), then
    for quiescence again, then check the invariants and the dead letters."""
    steps: list[str] = []
    behind = "payment_svc has not consumed orders.events/3 to its end: committed offset 4, end offset 9"

    async def consumed(_: str, __: object, reads: dict[str, list[str]], ___: float) -> list[str]:
        steps.append("consumed")
        assert "orders.commands" in reads["order_svc"] and "orders.events" in reads["payment_svc"]
        return [behind]

    def quiet(*_: object, **__: object) -> bool:
        steps.append("quiescence")
        return True

    def check(*_: object) -> list[str]:
        steps.append("invariants")
        return []

    monkeypatch.setattr(demo, "unconsumed", consumed)
    monkeypatch.setattr(invariants, "wait_for_quiescence", quiet)
    monkeypatch.setattr(invariants, "check", check)
    monkeypatch.setattr(demo, "dead_letters", lambda _: {})
    system = SimpleNamespace(
        database_urls={},
        provider_url="",
        bootstrap="b:1",
        kafka_security=SimpleNamespace(client_kwargs=dict),
        broker_kind="kafka",
    )
    assert demo.final_checks(system, FORGED) == [behind]  # type: ignore[arg-type]
    assert steps == ["quiescence", "consumed", "quiescence", "invariants"]
