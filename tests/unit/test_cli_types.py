"""The ``sagastack`` commands refuse a value out of range before anything starts: argparse
names the option and says why, and exits 2 (``bench --sweep 0,100`` divided by zero deep
in the sweep, after the whole system had started)."""

from __future__ import annotations

import signal

import pytest

from sagastack.__main__ import main
from sagastack.cli_types import rates


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["bench", "--sweep", "0,100"], "argument --sweep: 0 is not above 0"),
        (["bench", "--sweep", "100,abc"], "argument --sweep: 'abc' is not a number"),
        (["bench", "--rate", "0"], "argument --rate: 0 is not above 0"),
        (["bench", "--orders", "-3"], "argument --orders: -3 is not at least 1"),
        (["bench", "--idle", "-1"], "argument --idle: -1 is negative"),
        (["bench", "--step-seconds", "nan"], "argument --step-seconds: 'nan' is not a finite number"),
        (["chaos", "--cancel-ratio", "2"], "argument --cancel-ratio: 2 is not between 0 and 1"),
        (["chaos", "--rate", "inf"], "argument --rate: 'inf' is not a finite number"),
        (["chaos", "--kills", "1.5"], "argument --kills: '1.5' is not an integer"),
        (["demo", "--orders", "-1"], "argument --orders: -1 is negative"),
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
