"""A short ``make chaos`` run as part of the test suite: the real system, real faults.

Small but complete: scarce stock, short deadlines, cancellations, SIGKILLed services, a
database restart, duplicated, late and poison events — then every invariant. The full
run (``make chaos``: 2,000 orders, 10 kills) is too long for every test run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sagastack.chaos import Chaos, Config
from sagastack.system import BrokerKind

pytestmark = pytest.mark.e2e


def test_a_short_chaos_run_holds_every_invariant(
    run_root: Path, broker_kind: BrokerKind, capsys: pytest.CaptureFixture[str]
) -> None:
    """On Apache Kafka (``--broker kafka``) the run has a cluster of three nodes, and one of
    them (a partition leader) is SIGKILLed and restarted too."""
    on_kafka = broker_kind == "kafka"
    chaos = Chaos(
        Config(
            orders=160,
            kills=3,
            db_restarts=1,
            seed=7,
            rate=16,
            run_dir=run_root / "chaos",
            broker=broker_kind,
            kafka_nodes=3,
            broker_kills=1 if on_kafka else 0,
        )
    )
    status = chaos.run()
    report = capsys.readouterr().out
    assert status == 0, report
    assert "violations: 0" in report
    # the run really did what it says: faults happened and every outcome was reached
    assert chaos.report.faults["kill"] == 3 and chaos.report.faults["db_restart"] == 1
    assert chaos.report.faults["duplicate"] > 0 and chaos.report.faults["poison"] > 0
    assert chaos.report.faults["broker_kill"] == (1 if on_kafka else 0)
    assert len(chaos.report.placed) == 160
    for outcome in ("APPROVED", "REJECTED (insufficient_stock)", "CANCELLED (timeout)"):
        assert outcome in report, report
