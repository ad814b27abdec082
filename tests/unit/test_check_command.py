"""``sagastack check`` where no stack runs or its manifest cannot be read (exit 5), or
where its database cannot be read (exit 4): a sentence, never a traceback."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from sagastack.__main__ import main
from sagastack.embedded import MANIFEST, PidFile

HINT = " (make run starts one; another run directory: --run-dir DIR, or RUN_DIR=DIR with make)"


def test_no_stack_ever_ran_in_the_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--run-dir", str(tmp_path)]) == 5
    assert capsys.readouterr().out == f"sagastack check: no stack has run in {tmp_path}{HINT}\n"


def test_a_manifest_left_by_a_run_that_was_killed_is_not_believed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "owner.lock").write_text("12345\n")  # nobody holds it
    (tmp_path / MANIFEST).write_text(json.dumps({"database_urls": {}}))
    assert main(["check", "--run-dir", str(tmp_path)]) == 5
    assert capsys.readouterr().out == f"sagastack check: no stack runs in {tmp_path} now{HINT}\n"


def test_a_stack_whose_supervisor_was_killed_with_its_watchdog_is_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its services still answered, and check said only "no stack runs" (an operator
    trial killed the supervisor and its watchdog at once)."""
    (tmp_path / "owner.lock").write_text("12345\n")  # nobody holds it
    (tmp_path / MANIFEST).write_text(json.dumps({"database_urls": {}}))
    PidFile(tmp_path / "pids.json").add("order_svc", os.getpid())  # a process that runs
    assert main(["check", "--run-dir", str(tmp_path)]) == 5
    said = capsys.readouterr().out
    assert said.startswith(
        f"sagastack check: no run supervises {tmp_path}: its supervisor is gone, but what it"
        " started still runs (order_svc); a run started there stops that first"
    ), said


def test_a_stack_still_starting_has_no_manifest_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open(tmp_path / "owner.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as RunDirectoryClaim holds it
        assert main(["check", "--run-dir", str(tmp_path)]) == 5
    said = capsys.readouterr().out
    assert said == f"sagastack check: the stack in {tmp_path} is still starting (or stopping){HINT}\n"


def test_a_database_that_does_not_answer_is_said_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator trial: with the stack's PostgreSQL killed, the check ended in a
    traceback and exit 1, which says "a violation"."""
    nowhere = "postgresql+psycopg://postgres@127.0.0.1:1/x"  # nothing listens on port 1
    names = ("order_svc", "inventory_svc", "payment_svc")
    manifest = {
        "database_urls": dict.fromkeys(names, nowhere),
        "provider_url": "",
        "provider_simulated": False,
    }
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with open(tmp_path / "owner.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["check", "--run-dir", str(tmp_path), "--wait", "0"]) == 4
    said = capsys.readouterr().out
    assert said.startswith("sagastack check: a database of the stack cannot be read: connection failed")
    assert said.count("\n") == 1


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("", "cannot be read: Expecting value"),  # caught mid-write, before it was atomic
        ("{not json", "cannot be read: Expecting property name"),
        ("{}", "is not a stack's manifest"),
        ("[]", "is not a stack's manifest"),
        ('{"database_urls": {"order_svc": "x"}, "provider_url": ""}', "is not a stack's manifest"),
    ],
)
def test_a_manifest_that_is_not_one_is_said_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], written: str, said: str
) -> None:
    """An attack trial: garbage, ``{}`` and ``[]`` were tracebacks and exit 1."""
    (tmp_path / MANIFEST).write_text(written)
    with open(tmp_path / "owner.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["check", "--run-dir", str(tmp_path)]) == 5
    out = capsys.readouterr().out
    assert out.startswith(f"sagastack check: {tmp_path / MANIFEST} {said}") and out.count("\n") == 1


def test_pending_dead_letters_are_said_beside_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event a service dead-lettered cuts its saga short: its deadline ends it, nothing
    is held, and every invariant holds. check said only that, with real events waiting in
    a dead-letter table; it names how many wait, where (its verdict is still the
    invariants': a stranger's poison is no violation of ours)."""
    from sagastack import check, invariants

    urls = dict.fromkeys(invariants.SERVICES, "postgresql://nowhere/db")
    monkeypatch.setattr(
        check,
        "read_manifest",
        lambda _: {"database_urls": urls, "provider_url": "", "provider_simulated": False},
    )
    monkeypatch.setattr(invariants, "marks", lambda _: (1, 1, 1))
    monkeypatch.setattr(check, "settled_check", lambda *_: ([], (3, 1, 3)))
    monkeypatch.setattr(invariants, "pending_dead_letters", lambda _: {"inventory_svc": 2})
    assert main(["check", "--run-dir", str(tmp_path), "--wait", "0"]) == 0
    out = capsys.readouterr().out
    assert "dead letters waiting: inventory_svc 2 (sagactl dlq list)" in out
    assert out.endswith("every invariant checked holds\n")
