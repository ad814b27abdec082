"""``make demo`` as a user runs it: every saga's headline is checked against the timeline
it prints (``sagastack.demo.story_problems``), then the invariants; it exits 0 only if all
hold."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import sagastack


def test_the_demo_tells_the_truth_about_every_saga(run_root: Path) -> None:
    done = sagastack("demo", "--no-keep", "--orders", "5", "--run-dir", str(run_root / "demo"), timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "FAIL" not in out
    for n in range(1, 9):
        assert f"Saga {n} — " in out
    assert out.count("      why: ") == 8
    assert out.count("    ✓ as expected") == 8 and "8 of 8 sagas ended as expected" in out
    # saga 8: the provider's outage was seen (breaker open) and waited out
    assert "payment readiness: degraded — payment provider circuit open" in out
    assert "this saga meanwhile: in flight: waiting on the payment provider since" in out
    assert out.index("Saga 8 — ") < out.index("(provider down)")  # under its own saga
    # every saga's end says what it did with the money (a rejected order's total is no charge)
    assert "⇒ REJECTED (insufficient_funds); order total 99.99; nothing charged" in out
    assert "⇒ CANCELLED (cancelled_by_customer); order total 40.00; charged 40.00, refunded 40.00" in out
    assert out.index("Saga 5 — ") < out.index("(payment_svc down)") < out.index("Saga 6 — ")
    assert "invariants of docs/design.md §6 hold" in out
