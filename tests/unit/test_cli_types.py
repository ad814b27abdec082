"""The ``sagastack`` commands refuse a value out of range before anything starts: argparse
names the option and says why, and exits 2 (``bench --sweep 0,100`` divided by zero deep
in the sweep, after the whole system had started)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from sagastack.__main__ import main
from sagastack.cli_types import rates


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (
            ["bench", "--sweep", "0,100"],
            "argument --sweep: a rate of 0 among others (0 on its own means no sweep)",
        ),
        (["bench", "--sweep", "100,abc"], "argument --sweep: 'abc' is not a number"),
        (["bench", "--rate", "0"], "argument --rate: 0 is not above 0"),
        (["bench", "--orders", "-3"], "argument --orders: -3 is not at least 1"),
        (["bench", "--idle", "-1"], "argument --idle: -1 is negative"),
        (["bench", "--step-seconds", "nan"], "argument --step-seconds: 'nan' is not a finite number"),
        (["chaos", "--cancel-ratio", "2"], "argument --cancel-ratio: 2 is not between 0 and 1"),
        (["chaos", "--rate", "inf"], "argument --rate: 'inf' is not a finite number"),
        (["chaos", "--kills", "1.5"], "argument --kills: '1.5' is not an integer"),
        (["demo", "--orders", "-1"], "argument --orders: -1 is negative"),
        (["demo", "--orders", "1" + "0" * 400], "argument --orders: that is more than 1,000,000"),
        (["bench", "--sweep", "1e300"], "argument --sweep: 1e+300 is not between 0.001 and 1,000,000"),
        (["chaos", "--rate", "1e-320"], "argument --rate: 9.99989e-321 is not between 0.001"),
    ],
)
def test_a_value_out_of_range_is_refused_with_its_reason(
    argv: list[str], why: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # main's SIGTERM handler: not pytest's
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert why in capsys.readouterr().err


def test_a_sweep_of_0_is_no_sweep_and_rates_keep_their_order() -> None:
    assert rates("0") == []
    assert rates("100, 50,600") == [100.0, 50.0, 600.0]


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        # each product is stocked for every order the run places
        (
            ["bench", "--sweep", "1000000", "--step-seconds", "1000000"],
            "orders in all (--orders, --idle and the sweep's rates times --step-seconds): at most",
        ),
        (["chaos", "--broker-kills", "1", "--broker", "tansu"], "--broker-kills needs the embedded 3-node"),
    ],
)
def test_arguments_that_cannot_work_together_are_refused_before_anything_starts(
    argv: list[str],
    why: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(signal, "signal", lambda *_: None)
    run_dir = tmp_path / "run"
    assert main([*argv, "--run-dir", str(run_dir)]) == 2
    assert why in capsys.readouterr().err
    assert not run_dir.exists()  # refused before anything started
