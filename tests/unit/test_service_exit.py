"""A service whose stop was given up on still ends: ``exit_past_stuck_threads`` bounds
the wait for threads the interpreter would otherwise join for ever (faust's consumer
thread, retrying fetches while the broker is away)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from saga_kit.service import exit_past_stuck_threads

    stop = threading.Event()
    mode = sys.argv[1]

    def fetch_until_stopped():  # in "stuck" mode nothing ever stops it
        while not stop.is_set():
            time.sleep(0.05)

    threading.Thread(target=fetch_until_stopped, name="faust-consumer", daemon=False).start()
    if mode == "ends":
        stop.set()
    exit_past_stuck_threads("payment_svc", 3, seconds=0.5)
    print("returned")
    """
)


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    # The timeout only ends a test that hangs; it is not what the test measures.
    return subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, timeout=60)


def test_a_thread_that_never_stops_does_not_keep_the_process_alive() -> None:
    done = _run("stuck")
    assert done.returncode == 3, done.stderr
    assert "returned" not in done.stdout
    assert "payment_svc: threads faust-consumer did not stop; exiting without them" in done.stderr


def test_threads_that_stop_let_the_service_return_normally() -> None:
    done = _run("ends")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "returned"
    assert "did not stop" not in done.stderr
