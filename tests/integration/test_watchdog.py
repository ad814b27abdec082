"""A supervisor killed with SIGKILL leaves nothing running (sagastack.watchdog): its
run's watchdog stops the broker and database it started. A supervisor that stops
cleanly dismisses its watchdog, which then stops nothing. Real servers: the Tansu
broker and the embedded PostgreSQL, started by a ``System`` in a process of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sagastack.embedded import MANIFEST, PidFile, Postgres, process_running
from sagastack.watchdog import RECORDS_SECONDS

SUPERVISOR = """
import sys, time
from pathlib import Path
from sagastack.system import System
system = System(Path(sys.argv[1]), free_ports=True, fresh=True, broker_kind="tansu")
system.start_servers()
system.write_manifest()
print(system._watchdog.proc.pid, flush=True)
if sys.argv[2] == "stop":
    system.stop()
else:
    time.sleep(600)
"""


def watching(run_dir: Path, pids: list[int], timeout: float = 60.0) -> None:
    """Wait until the run's watchdog says it watches every one of ``pids`` (it reads the
    pid file every ``RECORDS_SECONDS``, once its interpreter has started: a fixed two of
    them was a guess on a loaded machine)."""
    end = time.monotonic() + timeout
    log = run_dir / "logs" / "watchdog.log"
    while True:
        said = log.read_text() if log.exists() else ""
        if all(f"(pid {pid})" in said for pid in pids):
            return
        if time.monotonic() > end:
            raise AssertionError(f"the watchdog does not watch {pids} after {timeout:.0f} s: {said}")
        time.sleep(RECORDS_SECONDS / 4)


def supervise(run_dir: Path, how: str) -> tuple[subprocess.Popen[str], int, dict[str, list[float]]]:
    """Start a supervisor of broker and database; (its process, its watchdog's pid, the
    pid file once both servers started)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(run_dir), how], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    watchdog = int(proc.stdout.readline())
    recorded = json.loads((run_dir / "pids.json").read_text())
    return proc, watchdog, recorded


def wait_until_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids of ``pids`` still running after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while (left := [p for p in pids if process_running(p)]) and time.monotonic() < end:
        time.sleep(0.2)
    return left


def test_a_supervisor_killed_with_sigkill_leaves_nothing_running(run_root: Path) -> None:
    run_dir = run_root / "watchdog-killed"
    proc, watchdog, recorded = supervise(run_dir, "sleep")
    try:
        assert set(recorded) == {"tansu", "postgres"}
        servers = [int(pid) for pid, _ in recorded.values()]
        assert all(process_running(p) for p in servers) and process_running(watchdog)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_until_gone([*servers, watchdog], 60) == []
    finally:  # whatever failed above, no server of this test runs on
        proc.kill()
        PidFile(run_dir / "pids.json").stop_leftovers()
    said = (run_dir / "logs" / "watchdog.log").read_text()
    assert f"the supervisor (pid {proc.pid}) ended without stopping its run: stopped" in said
    assert "postgres (pid" in said and "tansu (pid" in said
    assert json.loads((run_dir / "pids.json").read_text()) == {}
    assert not (run_dir / MANIFEST).exists()  # sagastack check: nothing runs there


def test_a_run_directory_gone_before_the_watchdog_acts_still_leaves_nothing_running(run_root: Path) -> None:
    """A test's cleanup deleted the run directory of a supervisor that had died: its pid
    file went with it, the watchdog found nothing to stop, and a service ran on for hours.
    The watchdog remembers what it read there while the supervisor lived. (The directory
    is moved away here, not deleted, so the servers' own files stay where they are.)"""
    run_dir = run_root / "watchdog-directory-gone"
    proc, watchdog, recorded = supervise(run_dir, "sleep")
    moved = run_root / "watchdog-directory-gone-moved"
    try:
        servers = [int(pid) for pid, _ in recorded.values()]
        assert len(servers) == 2
        watching(run_dir, servers)  # the watchdog has read the pid file since
        run_dir.rename(moved)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_until_gone([*servers, watchdog], 60) == []
    finally:  # whatever failed above, no server of this test runs on
        proc.kill()
        PidFile(moved / "pids.json").stop_leftovers()
    said = (moved / "logs" / "watchdog.log").read_text()
    assert "is gone: stopping what its pid file recorded" in said, said
    assert "postgres (pid" in said and "tansu (pid" in said


#: A stand-in supervisor's start: its run directory claimed, its watchdog, its pid file.
STAND_IN_START = """
import subprocess, sys, time
from pathlib import Path
from sagastack.embedded import PidFile, RunDirectoryClaim
from sagastack.watchdog import Watchdog
run_dir = Path(sys.argv[1])
run_dir.mkdir(parents=True)
claim = RunDirectoryClaim(run_dir)
watchdog = Watchdog(run_dir)
pids = PidFile(run_dir / "pids.json")
"""
STAND_IN = (
    STAND_IN_START
    + """
children = [subprocess.Popen(["sleep", "600"], start_new_session=True) for _ in range(2)]
for n, child in enumerate(children):
    pids.add(f"service-{n}", child.pid)
print(watchdog.proc.pid, *(c.pid for c in children), flush=True)
time.sleep(600)
"""
)


def test_a_run_directory_deleted_as_the_supervisor_dies_is_deleted_and_its_processes_stopped(
    run_root: Path,
) -> None:
    """``rm -rf`` of the run directory at once after ``kill -9`` of its supervisor: the
    watchdog crashed opening ``owner.lock`` in a directory being deleted, stopping nothing,
    or made the file again so that ``rm`` failed (an attack trial). A stand-in supervisor
    with two recorded processes, so that nothing holds files open in the directory."""
    run_dir = run_root / "watchdog-deleted"
    proc = subprocess.Popen([sys.executable, "-c", STAND_IN, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    watchdog, *children = (int(p) for p in proc.stdout.readline().split())
    try:
        watching(run_dir, children)  # the watchdog has read the pid file since
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        shutil.rmtree(run_dir)  # raised "Directory not empty" when the watchdog made a file
        assert wait_until_gone([*children, watchdog], 30) == []
        assert not run_dir.exists()
    finally:
        proc.kill()
        for pid in children:
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_supervisor_that_stops_cleanly_dismisses_its_watchdog(run_root: Path) -> None:
    run_dir = run_root / "watchdog-dismissed"
    proc, watchdog, _ = supervise(run_dir, "stop")
    assert proc.wait(60) == 0
    assert wait_until_gone([watchdog], 10) == []
    assert "stopped" not in (run_dir / "logs" / "watchdog.log").read_text()


def test_a_run_whose_watchdog_was_killed_still_stops_cleanly(run_root: Path) -> None:
    """Stopping writes to the watchdog's pipe: with the watchdog gone, that must not
    break the stop (a broken pipe)."""
    run_dir = run_root / "watchdog-gone"
    script = SUPERVISOR.replace(
        'if sys.argv[2] == "stop":',
        "import os, signal\nos.kill(system._watchdog.proc.pid, signal.SIGKILL)\n"
        "system._watchdog.proc.wait()\nif True:",
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(run_dir), "stop"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((run_dir / "pids.json").read_text()) == {}


def test_a_database_server_not_yet_recorded_is_stopped_too(run_root: Path) -> None:
    """A supervisor killed while PostgreSQL started left it running: the pid file records
    the server only once it has started and its databases exist (an attack trial). The
    watchdog finds it by its data directory's ``postmaster.pid``."""
    pgdata = run_root / "watchdog-unrecorded" / "pgdata"
    pgdata.parent.mkdir()
    pid = Postgres(pgdata).start()  # started, recorded nowhere
    try:
        assert Postgres.stop_unrecorded(pgdata) == pid
        assert wait_until_gone([pid], 10) == []
        assert Postgres.stop_unrecorded(pgdata) is None  # nothing runs there now
    finally:
        if process_running(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_broker_not_yet_answering_when_its_supervisor_is_killed_is_stopped_too(run_root: Path) -> None:
    """Tansu was recorded once its port answered, so a supervisor killed in that moment
    left it running for good. It is recorded as it is spawned: here the supervisor is
    killed while it waits for the port, for ever."""
    run_dir = run_root / "watchdog-broker-starting"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from sagastack import embedded\n"
        "from sagastack.system import System\n"
        "def never(port, timeout):\n"
        "    print(system._watchdog.proc.pid, flush=True)\n"
        "    time.sleep(600)\n"
        "embedded.wait_for_port = never\n"
        "system = System(Path(sys.argv[1]), free_ports=True, fresh=True, broker_kind='tansu')\n"
        "system.start_servers()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        watchdog = int(proc.stdout.readline())  # once the broker is spawned
        recorded = json.loads((run_dir / "pids.json").read_text())
        assert list(recorded) == ["tansu"]
        tansu = int(recorded["tansu"][0])
        assert process_running(tansu)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_until_gone([tansu, watchdog], 60) == []
    finally:
        proc.kill()
        PidFile(run_dir / "pids.json").stop_leftovers()
    assert "tansu (pid" in (run_dir / "logs" / "watchdog.log").read_text()


UNRECORDED = (
    STAND_IN_START
    + """
recorded = subprocess.Popen(["sleep", "600"], start_new_session=True, env=pids.mark("provider"))
pids.add("provider", recorded.pid)
# spawned, and the supervisor killed before it records the pid
spawned = subprocess.Popen(["sleep", "600"], start_new_session=True, env=pids.mark("inventory_svc"))
unmarked = subprocess.Popen(["sleep", "600"], start_new_session=True)  # not the run's
print(watchdog.proc.pid, recorded.pid, spawned.pid, unmarked.pid, flush=True)
time.sleep(600)
"""
)


def test_a_process_spawned_but_not_yet_recorded_when_its_supervisor_is_killed_is_stopped_too(
    run_root: Path,
) -> None:
    """A supervisor killed in the milliseconds between spawning a service and recording
    its pid left that service running for good (a failing ``make run`` test's run did).
    Each process is spawned marked as its run's (``PidFile.mark``): the watchdog finds it
    by the mark. A process without the mark, even one the supervisor spawned, is left."""
    run_dir = run_root / "watchdog-unrecorded-service"
    proc = subprocess.Popen(
        [sys.executable, "-c", UNRECORDED, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    watchdog, recorded, spawned, unmarked = (int(p) for p in proc.stdout.readline().split())
    try:
        assert {r.name for r in PidFile(run_dir / "pids.json").marked()} == {"provider", "inventory_svc"}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_until_gone([recorded, spawned, watchdog], 30) == []
        assert process_running(unmarked)
    finally:
        proc.kill()
        for pid in (recorded, spawned, unmarked):
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)
    said = (run_dir / "logs" / "watchdog.log").read_text()
    assert f"inventory_svc (pid {spawned})" in said and f"provider (pid {recorded})" in said, said
