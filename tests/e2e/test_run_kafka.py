"""``make run`` on Apache Kafka: a node that stops is started again on its data, and the
run says when the cluster lists it again, not only when its process started (an operator
trial timed each recovery from the node's own log)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from sagastack.embedded import free_port
from sagastack.system import BrokerKind
from tests.e2e.test_run import ready_within, said, start_run


def test_a_kafka_node_that_stopped_is_started_again_and_said_ready(
    run_root: Path, broker_kind: BrokerKind
) -> None:
    if broker_kind != "kafka":
        pytest.skip("an Apache Kafka node's restart (--broker kafka)")
    run_dir = run_root / "make-run-kafka"
    ports = {f"{p}_HTTP_PORT": str(free_port()) for p in ("ORDER", "INVENTORY", "PAYMENT", "PROVIDER")}
    env = {**os.environ, **ports, "SAGA_KAFKA_PORT": str(free_port()), "SAGA_BROKER": "kafka"}
    proc, _ = start_run([sys.executable, "-m", "sagastack", "run", "--run-dir", str(run_dir)], env)
    assert proc.stdout is not None
    stop = threading.Timer(180, proc.kill)  # whatever happens, it is not waited for longer
    stop.start()
    try:
        recorded = json.loads((run_dir / "pids.json").read_text())
        os.kill(int(recorded["kafka-1"][0]), signal.SIGKILL)
        lines = [said(proc) for _ in range(3)]
        assert lines == [
            "kafka-1 has stopped; starting it again (its data is on disk and is kept)\n",
            "kafka-1 started again\n",
            "kafka-1 is ready again\n",
        ], lines
        for service in ("ORDER", "INVENTORY", "PAYMENT"):
            assert ready_within(f"http://127.0.0.1:{ports[f'{service}_HTTP_PORT']}/health/ready", 60), service
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        stop.cancel()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except Exception:
                proc.kill()
    assert proc.returncode == 0 and out.endswith("stopping …\nstopped\n"), out
