"""A run directory has one owner at a time, and a process that fails to start says why
in its own lines only (sagastack.embedded.RunDirectoryClaim, sagastack.system)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sagastack.embedded import PidFile, PortTaken, Postgres, RunDirectoryClaim, RunDirectoryInUse
from sagastack.system import (
    KAFKA_PORT,
    SERVICES,
    BadSetting,
    StartFailed,
    System,
    exited,
    free_port,
    last_error,
    port_from_env,
    server_down,
)

_HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sagastack.embedded import RunDirectoryClaim
    claim = RunDirectoryClaim(Path(sys.argv[1]), role=sys.argv[2])  # held while the object lives
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
    """
)


def _holder(run_dir: Path, role: str = "run", seconds: float = 600) -> subprocess.Popen[str]:
    """Another process (another ``make run``, or a watchdog) holding ``run_dir`` for
    ``seconds``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run_dir), role, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_leaves_a_live_one_alone(tmp_path: Path) -> None:
    """A second ``make run`` took the first one's processes for leftovers, stopped them,
    and the two supervisors then fought over the ports."""
    first = _holder(tmp_path)
    its_broker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    second = System(tmp_path, free_ports=True, broker_kind="tansu")
    try:
        PidFile(tmp_path / "pids.json").add("tansu", its_broker.pid)
        with pytest.raises(RunDirectoryInUse, match=rf"in use by another run \(pid {first.pid}\): stop that"):
            second.start_servers()
        assert its_broker.poll() is None  # nothing of the first run was stopped
    finally:
        second.stop()  # should the claim ever fail to refuse, what it started is stopped
        for proc in (first, its_broker):
            proc.kill()
            proc.wait()


def test_a_run_that_was_killed_does_not_hold_its_directory(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    claim = RunDirectoryClaim(tmp_path)  # the kernel let go with the process
    try:
        assert (tmp_path / "owner.lock").read_text().strip() == f"{os.getpid()} run"
    finally:
        claim.release()
    RunDirectoryClaim(tmp_path).release()  # released: free again


def test_a_new_run_waits_for_a_killed_runs_watchdog_to_let_go(tmp_path: Path) -> None:
    """A run started right after one was killed was refused for a few seconds, told to
    press Ctrl-C where the holder runs: the holder was the killed run's watchdog, stopping
    what that run left (an attack trial)."""
    watchdog = _holder(tmp_path, role="watchdog", seconds=1.5)
    try:
        started = time.monotonic()
        claim = RunDirectoryClaim(tmp_path)
        assert time.monotonic() - started >= 0.5  # it waited for the watchdog's release
        claim.release()
    finally:
        watchdog.kill()
        watchdog.wait()


def test_a_service_that_exits_while_starting_is_told_with_its_own_lines(tmp_path: Path) -> None:
    """``make run`` with an invalid setting showed a traceback, then forty lines of the
    previous run's log (the file is appended to) before the one line that said why."""
    system = System(tmp_path, broker_kind="tansu")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "order_svc.log").write_text("an earlier run's line\n")
    said = "order_svc cannot start: KAFKA_FETCH_IDLE_WAIT_MS: Input should be a valid integer"
    system.services["order_svc"] = system._launch(
        "order_svc", [sys.executable, "-c", f"print({said!r}); raise SystemExit(2)"], free_port(), {}
    )
    with pytest.raises(StartFailed) as failed:
        system.wait_ready("order_svc")
    assert str(failed.value) == f"order_svc exited with 2 while starting; its log:\n{said}"


def test_a_broker_that_died_is_reported_not_left_unnoticed(tmp_path: Path) -> None:
    """``make run`` restarted services that died but said nothing of its broker: killed, it
    stayed a zombie while every service's readiness failed and their logs filled."""
    system = System(tmp_path, broker_kind="tansu")
    broker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        system.pids.add("tansu", broker.pid)
        assert system.servers_down() == []
        broker.kill()
        for _ in range(200):  # the signal is delivered asynchronously
            if system.servers_down():
                break
            time.sleep(0.01)
        assert system.servers_down() == ["tansu"]  # a zombie, not yet reaped, is down too
    finally:
        broker.kill()
        broker.wait()
    assert system.servers_down() == ["tansu"]
    said = server_down("tansu", "make run")
    assert "Tansu kept its topics in memory" in said and "make run" in said


def test_a_broker_port_already_taken_is_refused_not_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With another broker on 9092, ``make run``'s own could not bind and died, while the
    services joined the other one and reported ready."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        monkeypatch.setenv("SAGA_KAFKA_PORT", str(port))
        system = System(tmp_path, broker_kind="tansu")
        try:
            with pytest.raises(PortTaken, match=rf"127.0.0.1:{port}, the broker's port, is taken"):
                system._start_broker()
            assert system.broker is None  # nothing was started
        finally:
            system.stop()


@pytest.mark.parametrize(
    ("variable", "what"),
    [
        ("INVENTORY_HTTP_PORT", "inventory_svc's HTTP"),
        ("PROVIDER_HTTP_PORT", "the payment provider simulator's HTTP"),
    ],
)
def test_an_http_port_already_taken_is_named_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, what: str
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("PAYMENT_PROVIDER_URL", raising=False)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        monkeypatch.setenv(variable, str(port))
        system = System(tmp_path, broker_kind="tansu")
        try:
            with pytest.raises(PortTaken, match=rf"127.0.0.1:{port}, {what} port, is taken .* {variable}$"):
                system.start_servers()
            assert system.broker is None and system.postgres is None  # nothing was started
        finally:
            system.stop()


def test_every_port_taken_is_named_with_the_process_that_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator trial was told of the first taken port only, "by another process": its
    own stack of another run directory; a newcomer trial, of the HTTP ports, and then of
    the broker's."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("PAYMENT_PROVIDER_URL", raising=False)
    ports = []
    with socket.socket() as first, socket.socket() as second, socket.socket() as third:
        held = ((first, "ORDER_HTTP_PORT"), (second, "PAYMENT_HTTP_PORT"), (third, "SAGA_KAFKA_PORT"))
        for other, variable in held:
            other.bind(("127.0.0.1", 0))
            other.listen()
            ports.append(other.getsockname()[1])
            monkeypatch.setenv(variable, str(ports[-1]))
        system = System(tmp_path, broker_kind="tansu")
        with pytest.raises(PortTaken) as taken:
            system.check_ports()
    lines = str(taken.value).splitlines()
    assert len(lines) == 3, lines
    for line, port, (what, variable) in zip(
        lines,
        ports,
        (
            ("order_svc's HTTP", "ORDER_HTTP_PORT"),
            ("payment_svc's HTTP", "PAYMENT_HTTP_PORT"),
            ("the broker's", "SAGA_KAFKA_PORT"),
        ),
        strict=True,
    ):
        assert line.startswith(f"127.0.0.1:{port}, {what} port, is taken by another process"), line
        assert f"(pid {os.getpid()}: " in line and "pytest" in line and line.endswith(variable), line


def test_a_run_refused_for_a_taken_port_leaves_no_run_directory_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer trial's second ``make run`` in a new directory, refused for the first
    one's ports, left that directory with its ``owner.lock`` in it; a directory that was
    there before is left."""
    from sagastack.__main__ import main

    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("PAYMENT_PROVIDER_URL", raising=False)
    monkeypatch.setenv("SAGA_BROKER", "tansu")
    existing = tmp_path / "existing"
    existing.mkdir()
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        monkeypatch.setenv("ORDER_HTTP_PORT", str(other.getsockname()[1]))
        for run_dir in (tmp_path / "new" / "run", existing):
            with pytest.raises(PortTaken):
                main(["run", "--run-dir", str(run_dir)])
    assert not (tmp_path / "new").exists()  # nor the parent it made (an attack trial)
    assert [p.name for p in existing.iterdir()] == ["owner.lock"]
    RunDirectoryClaim(existing).release()  # let go: no run holds it


@pytest.mark.parametrize(
    ("ports", "said"),
    [
        (
            {"ORDER_HTTP_PORT": "18601", "INVENTORY_HTTP_PORT": "18601"},
            "ORDER_HTTP_PORT and INVENTORY_HTTP_PORT give one port, 18601",
        ),
        ({"INVENTORY_HTTP_PORT": "8001"}, "ORDER_HTTP_PORT (unset: its default) and INVENTORY_HTTP_PORT"),
        ({"SAGA_KAFKA_PORT": "8003"}, "PAYMENT_HTTP_PORT (unset: its default) and SAGA_KAFKA_PORT"),
    ],
)
def test_two_variables_that_give_one_port_are_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ports: dict[str, str], said: str
) -> None:
    """An operator trial: two services given one port started, the one that could not
    bind restarted for ever, and the other answered its readiness ("ready again")."""
    for variable in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "PAYMENT_PROVIDER_URL",
        *(f"{prefix}_HTTP_PORT" for prefix, _ in SERVICES.values()),
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("SAGA_KAFKA_PORT", raising=False)
    for variable, port in ports.items():
        monkeypatch.setenv(variable, port)
    system = System(tmp_path, broker_kind="tansu")
    try:
        with pytest.raises(BadSetting, match=re.escape(said)):
            system.start_servers()
        assert system.broker is None and system.postgres is None  # nothing was started
    finally:
        system.stop()


@pytest.mark.parametrize("value", ["abc", "-1", "0", "70000", "\uff19\uff10\uff19\uff12"])
def test_a_broker_port_that_is_no_port_is_a_bad_setting(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SAGA_KAFKA_PORT", value)
    with pytest.raises(BadSetting, match="SAGA_KAFKA_PORT"):
        port_from_env("SAGA_KAFKA_PORT", KAFKA_PORT)


def test_the_last_error_a_service_logged_is_why_it_exited() -> None:
    """What the supervisor says when it restarts a service: the reason was only in the
    service's log (an operator trial)."""
    lines = [
        {"level": "error", "msg": "an earlier error"},
        "not json: a library's own line",
        {
            "level": "error",
            "msg": "payment_svc stopped on error",
            "exc": "Traceback (most recent call last):\n  ...\nOSError: [Errno 98] address already in use",
        },
        {"level": "info", "msg": "payment_svc stopped"},
    ]
    log = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    assert last_error(log) == "payment_svc stopped on error (OSError: [Errno 98] address already in use)"
    assert last_error(json.dumps({"level": "info", "msg": "fine"})) == ""


def test_a_process_a_signal_ended_is_said_killed_by_its_name_not_a_negative_exit_code() -> None:
    """An operator trial read ``payment_svc exited (-9)`` as an exit code; a process that
    exited on its own says why, one a signal ended has no reason of its own to give."""
    asked: list[str] = []

    def reason(name: str) -> str:
        asked.append(name)
        return ": gave up waiting for broker"

    assert exited("payment_svc", -9, reason) == "payment_svc was killed (SIGKILL)"
    assert exited("payment_svc", -15, reason) == "payment_svc was killed (SIGTERM)"
    assert exited("payment_svc", -200, reason) == "payment_svc was killed (signal 200)"
    assert exited("payment_svc", 0, reason) == (
        "payment_svc shut down cleanly (exit 0: stopped from outside, e.g. by SIGTERM)"
    )
    assert asked == []
    assert exited("payment_svc", 1, reason) == "payment_svc exited (1): gave up waiting for broker"
    assert asked == ["payment_svc"]


def test_a_database_server_that_was_killed_is_not_asked_to_stop(tmp_path: Path) -> None:
    """Asking pg_ctl to stop a server that was killed made the embedded wheel log a dozen
    lines at ERROR, at the run's stop and again at the next start."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pid_file = tmp_path / "postmaster.pid"
    pid_file.write_text(f"{gone.pid}\n{tmp_path}\n")
    server = Postgres(tmp_path)
    assert not server._running()
    server._stop_orphan()  # nothing to stop: the stale pid file goes, pg_ctl is not run
    assert not pid_file.exists()
    pid_file.write_text(f"{os.getpid()}\n{tmp_path}\n")
    assert server._running()


class _Started(Exception):
    """Raised where ``make run`` would start the stack: everything before it passed."""


def test_a_run_whose_supervisor_and_watchdog_were_killed_is_cleared_before_the_ports_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kill -9`` of a run's supervisor and its watchdog together left its services
    running; the next ``make run`` in that directory refused to start, calling the port
    one of them held "taken by another process" (an attack trial): the port check ran
    before the leftovers were stopped. Now they are stopped first."""
    import argparse

    from sagastack.__main__ import run

    port = free_port()
    left = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, time\n"
            f"s = socket.create_server(('127.0.0.1', {port}))\n"
            "print('listening', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert left.stdout is not None and left.stdout.readline().strip() == "listening"
        PidFile(tmp_path / "pids.json").add("order_svc", left.pid)
        monkeypatch.setenv("SAGA_BROKER", "tansu")
        monkeypatch.setenv("ORDER_HTTP_PORT", str(port))
        for variable in ("INVENTORY_HTTP_PORT", "PAYMENT_HTTP_PORT", "PROVIDER_HTTP_PORT", "SAGA_KAFKA_PORT"):
            monkeypatch.setenv(variable, str(free_port()))

        def started(_: System) -> System:
            raise _Started

        monkeypatch.setattr(System, "__enter__", started)
        with pytest.raises(_Started):  # not PortTaken
            run(argparse.Namespace(run_dir=str(tmp_path), secure=False))
        assert left.wait(10) is not None  # the leftover was stopped
    finally:
        left.kill()
        left.wait()


def test_a_run_directorys_xdg_is_the_owners_alone_even_if_found_open(tmp_path: Path) -> None:
    """Found 0755 (made again by a run whose directory was removed under it), every later
    run's PostgreSQL fell back to a runtime directory shared by every stack (a trial)."""
    from sagastack.system import private_directory

    (tmp_path / "xdg").mkdir(mode=0o755)
    (tmp_path / "xdg").chmod(0o755)
    made = private_directory(tmp_path / "xdg")
    assert made.stat().st_mode & 0o777 == 0o700
    assert private_directory(tmp_path / "new").stat().st_mode & 0o777 == 0o700


def test_a_stepped_wall_clock_leaves_a_running_process_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step of the wall clock (NTP, a paused virtual machine) moves the boot time the
    system reports, and every process's create time with it: 6 s made the supervisor take
    its running PostgreSQL and Tansu for stopped and tell the operator to start again (an
    attack trial). What ``PidFile`` records is when each started after the boot."""
    import psutil

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pids = PidFile(tmp_path / "pids.json")
        pids.add("tansu", sleeper.pid)
        booted, created = psutil.boot_time(), psutil.Process(sleeper.pid).create_time()
        platform = sys.modules[psutil.Process(sleeper.pid)._proc.__module__]
        monkeypatch.setattr(platform, "boot_time", lambda: booted + 6)  # the clock stepped 6 s
        # as the machine reports it now: the process created 6 s later than it was
        assert psutil.Process(sleeper.pid).create_time() == pytest.approx(created + 6)
        assert pids.gone(["tansu"]) == [] and pids.running() == ["tansu"]
        sleeper.kill()
        sleeper.wait()
        assert pids.gone(["tansu"]) == ["tansu"]  # and one that ended still is gone
    finally:
        sleeper.kill()
        sleeper.wait()
