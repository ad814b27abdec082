"""``make bench`` as a user runs it, made small: the closed loop's summary, the sweep's
table with the wait at the door, the idle saga, the ceiling and its ratio, and the
invariants checked (it exits 1 on a violation). Figures, not timers: nothing here asserts
how fast anything was."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.conftest import sagastack


def test_the_bench_prints_every_figure_it_promises(run_root: Path) -> None:
    done = sagastack(
        "bench",
        "--orders",
        "40",
        "--concurrency",
        "4",
        "--sweep",
        "10,20",
        "--step-seconds",
        "2",
        "--idle",
        "2",
        "--ceiling-sagas",
        "100",
        "--ceiling-rate",
        "200",
        "--run-dir",
        str(run_root / "bench"),
        timeout=900,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert "FAIL" not in out
    assert re.search(r"sagas completed +40 \(APPROVED 40\)", out), out
    assert re.search(r"throughput +[\d.]+ sagas/s", out)
    assert re.search(r"latency POST→final +p50 \d+ ms +p95 \d+ ms +p99 \d+ ms", out)
    assert re.search(r"stack CPU +[\d.]+ s = [\d.]+ ms/saga +\(broker [\d.]+, inventory_svc", out)
    assert re.search(r"payment provider +[\d.]+ ms/saga", out)
    header = next(line for line in out.splitlines() if line.lstrip().startswith("offered/s"))
    assert header.split()[:6] == ["offered/s", "achieved/s", "p50", "ms", "p95", "ms"]
    assert "202 p50" in header and "CPU ms/saga" in header and "refusal p99" in header
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+(10|20) +[\d.]+ +\d+", line)]
    assert [r[0] for r in rows] == ["10", "20"]
    assert all(r[8] == "100%" for r in rows), rows  # every accepted order of the sweep approved
    assert re.search(r"idle saga +POST→APPROVED p50 \d+ ms", out)
    assert re.search(r"ceiling \(null saga\) +\d+ sagas/s, [\d.]+ ms CPU/saga", out)
    assert re.search(r"efficiency +CPU/saga [\d.]+x the ceiling's; throughput \d+% of it", out)
