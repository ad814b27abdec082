"""``make run`` (``python -m sagastack run``) as a user starts it, on ports of its own: it
says where everything is, serves, starts again a service that died — also while the
broker does not answer, without giving up on the run (an operator trial: a restart
that waited 120 s for a broker that was down took the whole stack down) — and a database
that crashed, on its data, and a closed
terminal (SIGHUP) stops it as Ctrl-C does — everything it started, its watchdog
dismissed, its manifest gone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sagastack.embedded import MANIFEST, free_port, process_running

pytestmark = pytest.mark.broker_independent  # the supervisor's behaviour, on Tansu


def ready_within(url: str, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return True
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    return False


def said(proc: subprocess.Popen[str]) -> str:
    """The next line a kept-running run says of what it saw, without the time of day it
    begins with (``HH:MM:SS ``)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert re.match(r"\d\d:\d\d:\d\d ", line), line
    return line[9:]


def start_run(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """``command`` (a run) started from the repository's root, and what it said up to
    its "ready" line (its banner); it failing to get there fails the test."""
    env = {k: v for k, v in env.items() if k != "LOG_LEVEL"}
    proc = subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    said = []
    while not (line := proc.stdout.readline()).startswith("ready"):
        if not line:
            proc.wait()
            raise AssertionError("make run ended before it was ready:\n" + "".join(said))
        said.append(line)
    return proc, "".join(said) + line


def test_make_run_serves_and_a_closed_terminal_stops_everything(run_root: Path) -> None:
    run_dir = run_root / "make-run"
    ports = {f"{p}_HTTP_PORT": str(free_port()) for p in ("ORDER", "INVENTORY", "PAYMENT", "PROVIDER")}
    env = {**os.environ, **ports, "SAGA_KAFKA_PORT": str(free_port()), "SAGA_BROKER": "tansu"}
    env["STARTUP_TIMEOUT_SECONDS"] = "3"  # a service started while the broker is away gives up soon
    proc, banner = start_run([sys.executable, "-m", "sagastack", "run", "--run-dir", str(run_dir)], env)
    assert proc.stdout is not None
    try:
        assert f"http://127.0.0.1:{ports['ORDER_HTTP_PORT']}/dashboard#token=" in banner
        assert f"make invariants RUN_DIR={run_dir.resolve()}" in banner
        assert f"SAGACTL_ORDER_URL=http://127.0.0.1:{ports['ORDER_HTTP_PORT']}" in banner
        assert ready_within(f"http://127.0.0.1:{ports['PAYMENT_HTTP_PORT']}/health/ready", 10)
        manifest = json.loads((run_dir / MANIFEST).read_text())
        assert set(manifest["database_urls"]) == {"order_svc", "inventory_svc", "payment_svc"}
        recorded = json.loads((run_dir / "pids.json").read_text())
        assert len(recorded) == 6  # broker, database, provider, three services

        os.kill(int(recorded["payment_svc"][0]), signal.SIGKILL)  # it is started again
        assert said(proc) == "payment_svc was killed (SIGKILL); restarting\n"
        assert said(proc) == "payment_svc is ready again\n"
        assert ready_within(f"http://127.0.0.1:{ports['PAYMENT_HTTP_PORT']}/health/ready", 10)
        os.kill(int(recorded["payment_provider"][0]), signal.SIGKILL)  # its faults in memory are lost
        assert said(proc) == (
            "payment_provider was killed (SIGKILL); restarting; the faults PUT /v1/faults set are gone:"
            " it starts from PROVIDER_FAULTS\n"
        )
        assert said(proc) == "payment_provider is ready again\n"

        tansu = int(recorded["tansu"][0])
        os.kill(tansu, signal.SIGSTOP)  # the broker answers nothing, and a service dies
        try:
            os.kill(int(recorded["inventory_svc"][0]), signal.SIGKILL)
            assert said(proc) == "inventory_svc was killed (SIGKILL); restarting\n"
            retried = said(proc)  # it gave up on the broker after 3 s: again, saying why
            assert retried.startswith(
                "inventory_svc exited (1): inventory_svc cannot start: gave up waiting for broker"
            ), retried
            assert "; restarting" in retried, retried
            assert proc.poll() is None  # the run goes on, the others with it
            assert ready_within(f"http://127.0.0.1:{ports['ORDER_HTTP_PORT']}/health/live", 5)
        finally:
            os.kill(tansu, signal.SIGCONT)
        while (line := said(proc)) != "inventory_svc is ready again\n":
            assert line.startswith("inventory_svc exited (1): "), line
        assert ready_within(f"http://127.0.0.1:{ports['INVENTORY_HTTP_PORT']}/health/ready", 10)

        os.kill(int(recorded["postgres"][0]), signal.SIGKILL)  # the database crashes: back on its data
        assert said(proc) == "postgres has stopped; starting it again (its data is on disk and is kept)\n"
        while (line := said(proc)) != "postgres started again\n":
            # its old backends may hold its shared memory a moment: tried again, in a line
            assert line.startswith("postgres could not be started again yet ("), line
        for service in ("ORDER", "INVENTORY", "PAYMENT"):
            assert ready_within(f"http://127.0.0.1:{ports[f'{service}_HTTP_PORT']}/health/ready", 60), service
        recorded = json.loads((run_dir / "pids.json").read_text())
        started = [int(pid) for pid, _ in recorded.values()]

        proc.send_signal(signal.SIGHUP)  # the terminal it runs in was closed
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a failed assertion: let it stop what it started, as Ctrl-C does
            proc.send_signal(signal.SIGINT)  # (killed, a service it was restarting outlived it)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, out
    assert out.endswith("stopping …\nstopped\n"), out
    end = time.monotonic() + 10
    while (left := [p for p in started if process_running(p)]) and time.monotonic() < end:
        time.sleep(0.2)
    assert left == []
    assert not (run_dir / MANIFEST).exists()
    assert "stopped" not in (run_dir / "logs" / "watchdog.log").read_text()


def test_a_kill_of_makes_pid_stops_everything(run_root: Path) -> None:
    """``kill <make's pid>`` (SIGTERM), with BROKER given: make passes SIGTERM on to the
    shell it started for the recipe, which died without passing it on, and the whole stack
    went on running (an operator trial, with BROKER=kafka). The recipe execs its command."""
    run_dir = run_root / "make-run-killed"
    ports = {f"{p}_HTTP_PORT": str(free_port()) for p in ("ORDER", "INVENTORY", "PAYMENT", "PROVIDER")}
    env = {**os.environ, **ports, "SAGA_KAFKA_PORT": str(free_port())}
    proc, banner = start_run(
        ["make", "--no-print-directory", "run", "BROKER=tansu", f"RUN_DIR={run_dir}"], env
    )
    try:
        holder = int((run_dir / "owner.lock").read_text().split()[0])  # python -m sagastack run
        # the pid to kill is said (a newcomer's was make's wrapper shell's: it stopped nothing)
        assert banner.endswith(f"ready — Ctrl-C, or kill {holder}, stops everything\n"), banner
        started = [holder, *(int(pid) for pid, _ in json.loads((run_dir / "pids.json").read_text()).values())]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopping …\nstopped\n" in out, out
    end = time.monotonic() + 10
    while (left := [p for p in started if process_running(p)]) and time.monotonic() < end:
        time.sleep(0.2)
    if left:  # the old recipe's stack: stopped here as Ctrl-C would, then failed
        os.kill(holder, signal.SIGINT)
    assert left == [], "still running after make was killed"
