"""CPU time of a set of processes, measured from outside (psutil), for the benchmark.

A process's CPU is its own user + system time, plus that of its children: the living ones
(PostgreSQL's backends) read directly, the exited ones through the parent's
``children_user``/``children_system`` (what the kernel accounts to a parent once it has
reaped them). The difference of two samples is the CPU the processes spent in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import psutil


def _with_reaped(times: Any) -> float:
    return float(times.user + times.system + times.children_user + times.children_system)


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every descendant, living or reaped; 0 if it is gone."""
    try:
        root = psutil.Process(pid)
        total = _with_reaped(root.cpu_times())
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += _with_reaped(child.cpu_times())
        return total
    except psutil.Error:
        return 0.0


class CpuMeter:
    """Samples the CPU of named processes: ``meter.sample()`` → seconds per name."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)

    def sample(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    @staticmethod
    def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after}
