"""A service ends when it should: a stop given up on still ends the process
(``exit_past_stuck_threads`` bounds the wait for threads the interpreter would otherwise
join for ever: faust's consumer thread, retrying fetches while the broker is away), and
a service still waiting for its database at start takes SIGTERM at once, or gives up in
one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

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


def _service_env(**variables: str) -> dict[str, str]:
    """The environment without the services' own variables, plus ``variables``: a
    database nothing listens on (port 1 refuses at once), so the service waits for it."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "SAGA_", "ORDER_", "INVENTORY_", "PAYMENT_", "PROVIDER_", "STARTUP_"))
    }
    return {
        **kept,
        "ORDER_DATABASE_URL": "postgresql://u@127.0.0.1:1/none",
        "ORDER_HTTP_PORT": "0",
        **variables,
    }


def test_a_service_waiting_for_its_database_stops_on_sigterm() -> None:
    """It took the signal only after its 120 s wait for the database, then logged a
    traceback ("stopped on error") and exited 1."""
    with subprocess.Popen(
        [sys.executable, "-m", "order_svc"],
        env=_service_env(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    ) as service:
        assert service.stderr is not None
        for line in service.stderr:
            if "waiting for database" in line:
                break
        service.send_signal(signal.SIGTERM)
        rest = service.stderr.read()
        code = service.wait(timeout=60)  # only ends a test that hangs
    assert code == 0, rest
    assert "order_svc stopped while waiting for database" in rest and "Traceback" not in rest


def test_a_database_that_never_comes_is_one_line_and_exit_1() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "order_svc"],
        env=_service_env(STARTUP_TIMEOUT_SECONDS="1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and '"exc"' not in done.stderr
    (last,) = [line for line in done.stderr.splitlines() if "cannot start" in line]
    assert (
        "order_svc cannot start: gave up waiting for database after 1 s (STARTUP_TIMEOUT_SECONDS): " in last
    )
