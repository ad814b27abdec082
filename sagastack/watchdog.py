"""A run's watchdog: what a supervisor started lives no longer than the supervisor.

``System`` stops what it started on its way out: Ctrl-C, SIGTERM, SIGHUP, an exception.
A supervisor killed with SIGKILL (by hand, by the kernel's OOM killer, or a test run
cut off by ``timeout``) has no way out, and its broker, database and services ran on in
sessions of their own, holding their ports and ~0.3 s of CPU a second, until the next
run in the same directory stopped them (``PidFile.stop_leftovers``); a test's run
directory never sees a next run.

So each run has a watchdog: ``python -m sagastack.watchdog RUN_DIR``, in a session of
its own (Ctrl-C in the supervisor's terminal does not reach it), reading a pipe whose
write end only the supervisor holds (``Watchdog``; the descriptor is not inherited by
what the supervisor starts). A clean stop writes ``DONE`` and the watchdog exits. When the
pipe ends without it, the supervisor is gone however it went: the watchdog claims the
run directory (a run that claimed it first stops the leftovers itself), stops every
process of the directory's pid file — and every one it read there while the supervisor
lived (it reads the file every second), so a run directory deleted before the watchdog
acts (a test's cleanup did, and its services ran on for hours) still has its processes
stopped, and every one whose environment marks it as the run's (``PidFile.marked``: one
spawned in the moment before the supervisor recorded it) — services before the
database and broker they use
(and a database server the pid file had not recorded yet: one killed mid-start),
removes the run's manifest (``stack.json``), and says what it stopped in
``logs/watchdog.log``.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
from pathlib import Path

from sagastack.embedded import (
    MANIFEST,
    PidFile,
    Postgres,
    Recorded,
    RunDirectoryClaim,
    RunDirectoryInUse,
    stop_recorded,
)

#: What a supervisor that stops cleanly writes before it closes the pipe.
DONE = b"done"
#: Seconds between two readings of the run's pid file while the supervisor lives: what the
#: watchdog remembers stops even if the run directory is deleted before it acts.
RECORDS_SECONDS = 1.0
#: Seconds the run directory's claim is tried for once the supervisor is gone.
CLAIM_PATIENCE_SECONDS = 5.0

log = logging.getLogger("sagastack.watchdog")


class Watchdog:
    """The supervisor's end of a run's watchdog (see the module's doc)."""

    def __init__(self, run_dir: Path) -> None:
        read_end, self._write_end = os.pipe()  # neither inheritable (PEP 446)
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        with open(run_dir / "logs" / "watchdog.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sagastack.watchdog", str(run_dir)],
                stdin=read_end,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        os.close(read_end)

    def dismiss(self) -> None:
        """The run stopped cleanly: the watchdog exits without stopping anything."""
        if self._write_end < 0:
            return
        try:
            os.write(self._write_end, DONE)
        except BrokenPipeError:  # the watchdog was killed: nothing to dismiss
            pass
        finally:
            os.close(self._write_end)
            self._write_end = -1
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def watch(run_dir: Path) -> list[str]:
    """Block until the supervisor's pipe (stdin) ends, reading the run's pid file every
    ``RECORDS_SECONDS`` meanwhile (a line ``watching <name> (pid <pid>), …`` for what it
    records anew); then, unless it said ``DONE``, stop what its run left
    running. Returns what was stopped (names and pids)."""
    pid_file = PidFile(run_dir / "pids.json")
    seen: set[Recorded] = set()
    said = b""
    while True:
        new = set(pid_file.recorded()) - seen
        if new:  # said, so that a reader (and a test) knows what it would stop
            log.info("watching %s", ", ".join(f"{r.name} (pid {r.pid})" for r in sorted(new)))
            seen |= new
        readable, _, _ = select.select([sys.stdin.buffer], [], [], RECORDS_SECONDS)
        if readable:
            chunk = os.read(sys.stdin.buffer.fileno(), len(DONE))
            if not chunk:
                break
            said += chunk
    if said == DONE:
        return []
    try:
        claim = _claim(run_dir)
    except FileNotFoundError:  # deleted, or being deleted (a test's cleanup): nothing to claim
        log.warning("the run directory %s is gone: stopping what its pid file recorded", run_dir)
        return stop_recorded([*seen, *pid_file.marked()])
    if claim is None:  # a new run took the directory: it stops the leftovers itself
        log.warning("the supervisor ended without stopping its run; the new run in %s stops it", run_dir)
        return []
    try:
        (run_dir / MANIFEST).unlink(missing_ok=True)  # nothing runs there to check
        stopped = pid_file.stop_leftovers(also=seen)
        # a server killed mid-start left before the pid file recorded it
        unrecorded = Postgres.stop_unrecorded(run_dir / "pgdata")
        if unrecorded is not None:
            stopped.append(f"postgres (pid {unrecorded}, not yet recorded)")
        return stopped
    finally:
        claim.release()


def _claim(run_dir: Path) -> RunDirectoryClaim | None:
    """The run directory's claim, or None when a new run holds it; ``FileNotFoundError``
    when the directory is gone, or going (nothing is made in it). The dead supervisor's
    lock may outlive its pipe by a moment (the kernel closes a dying process's files one
    by one: the test of this module saw the lock still held just after the pipe's end),
    so a refusal is believed only after ``CLAIM_PATIENCE_SECONDS``."""
    try:
        return RunDirectoryClaim(run_dir, role="watchdog", patience=CLAIM_PATIENCE_SECONDS, create=False)
    except RunDirectoryInUse:
        return None


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run_dir, supervisor = Path(sys.argv[1]), os.getppid()
    stopped = watch(run_dir)
    if stopped:
        log.warning(
            "the supervisor (pid %d) ended without stopping its run: stopped %s",
            supervisor,
            ", ".join(stopped),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
