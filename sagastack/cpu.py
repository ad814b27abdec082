"""CPU time of a set of processes, measured from outside (psutil), for the benchmark.

A process's CPU is its own user + system time, plus that of its children: the living ones
(PostgreSQL's backends) read directly, the exited ones through the parent's
``children_user``/``children_system`` (what the kernel accounts to a parent once it has
reaped them). The difference of two samples is the CPU the processes spent in between.

PostgreSQL serves several databases from one server; a backend's process title names its
database (``postgres: user database host(port) state``), so the CPU of the backends of
one database can be counted under another name (the payment provider's simulator's
database, which stands for an external system's).
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


def backend_database(process: psutil.Process) -> str | None:
    """The database a PostgreSQL backend serves, from its process title; None for another
    process (the postmaster, its auxiliary processes: ``postgres: checkpointer``, …)."""
    try:
        title = process.cmdline()
    except psutil.Error:
        return None
    words = " ".join(title).split()
    # "postgres: user database host(port) state", or "[local]" for a Unix socket
    if len(words) >= 4 and words[0] == "postgres:" and (words[3] == "[local]" or "(" in words[3]):
        return words[2]
    return None


class CpuMeter:
    """Samples the CPU of named processes: ``meter.sample()`` → seconds per name.

    ``databases``: {server name: {database: name}} — the living backends of that database
    are counted under that name instead of the server's (e.g. ``{"postgres":
    {"provider_db": "payment_provider"}}``)."""

    def __init__(
        self, pids: Mapping[str, int], databases: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        self.pids = dict(pids)
        self.databases = {k: dict(v) for k, v in (databases or {}).items()}

    def sample(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        for server, moves in self.databases.items():
            if server not in self.pids:
                continue
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.pids[server]).children(recursive=True):
                    target = moves.get(backend_database(child) or "")
                    if target is None:
                        continue
                    with contextlib.suppress(psutil.Error):
                        spent = _with_reaped(child.cpu_times())
                        out[server] -= spent
                        out[target] = out.get(target, 0.0) + spent
        return out

    @staticmethod
    def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after}
