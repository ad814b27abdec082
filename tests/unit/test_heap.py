"""saga_kit.heap: the collector set once a service has started."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from payment_provider.settings import Settings as ProviderSettings
from saga_kit import heap
from saga_kit.settings import ServiceSettings


@pytest.fixture
def collector() -> Iterator[None]:
    """Put the collector back as it was: thresholds, nothing frozen."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector")
def test_settle_freezes_the_heap_and_sets_the_young_threshold() -> None:
    gc.unfreeze()
    _, gen1, gen2 = gc.get_threshold()
    kept = {"alive": ["at start-up"]}  # a container the collector tracks

    heap.settle(12_345)

    assert gc.get_threshold() == (12_345, gen1, gen2)
    assert gc.get_freeze_count() > 0
    assert gc.is_tracked(kept)
    assert not any(o is kept for o in gc.get_objects())  # frozen: no collection walks it


@pytest.mark.usefixtures("collector")
def test_a_cycle_made_after_settling_is_still_collected() -> None:
    gc.unfreeze()
    heap.settle(10)

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    collected: list[str] = []
    weakref.finalize(a, collected.append, "a")
    del a, b
    gc.collect()
    assert collected == ["a"]


@pytest.mark.usefixtures("collector")
def test_zero_leaves_the_collector_as_python_set_it() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    heap.settle(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_negative_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="gen0_threshold"):
        heap.settle(-1)


@pytest.mark.parametrize("settings", [ServiceSettings, ProviderSettings])
def test_the_setting_has_the_module_default_and_refuses_a_negative(
    settings: type[ServiceSettings | ProviderSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The services and the provider's simulator read the same variable, unprefixed."""
    base = {"database_url": "postgresql://x/y", "http_port": 8000}
    assert settings(**base).gc_gen0_threshold == heap.DEFAULT_GEN0_THRESHOLD
    monkeypatch.setenv("GC_GEN0_THRESHOLD", "5000")
    assert settings(**base).gc_gen0_threshold == 5000
    monkeypatch.setenv("GC_GEN0_THRESHOLD", "-3")
    with pytest.raises(ValueError, match=r"gc_gen0_threshold|GC_GEN0_THRESHOLD"):
        settings(**base)
