"""``sagastack check`` where no stack runs: exit 2 and a sentence, never a traceback."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from sagastack.__main__ import main
from sagastack.system import MANIFEST


def test_no_stack_ever_ran_in_the_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--run-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().out == f"sagastack check: no stack has run in {tmp_path}\n"


def test_a_manifest_left_by_a_run_that_was_killed_is_not_believed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "owner.lock").write_text("12345\n")  # nobody holds it
    (tmp_path / MANIFEST).write_text(json.dumps({"database_urls": {}}))
    assert main(["check", "--run-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().out == f"sagastack check: no stack runs in {tmp_path} now\n"


def test_a_stack_still_starting_has_no_manifest_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open(tmp_path / "owner.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as RunDirectoryClaim holds it
        assert main(["check", "--run-dir", str(tmp_path)]) == 2
    said = capsys.readouterr().out
    assert said == f"sagastack check: the stack in {tmp_path} is still starting (or stopping)\n"
