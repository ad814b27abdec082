"""Argument types of the ``sagastack`` commands: a value out of range is refused by
argparse, with the option's name and why, before anything starts (exit 2), instead of a
traceback from deep inside a run (a rate of 0 divided by zero in the bench's sweep)."""

from __future__ import annotations

import argparse
import math

#: The largest count (orders, clients, kills …) and the largest rate or duration taken:
#: far beyond what one machine runs, small enough that nothing derived from them overflows.
MOST = 1_000_000
#: The smallest rate (per second) or duration (seconds) taken: below it a run would wait
#: for ever on its first step.
LEAST = 0.001


def _integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value > MOST:
        raise argparse.ArgumentTypeError(f"{value if len(str(value)) < 20 else 'that'} is more than {MOST:,}")
    return value


def positive_int(text: str) -> int:
    """An integer from 1 to ``MOST`` (orders, clients, products)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def count(text: str) -> int:
    """An integer from 0 to ``MOST`` (0: none, e.g. no kills, no idle sagas)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _real(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """A number from ``LEAST`` to ``MOST`` (a rate per second, a duration in seconds)."""
    value = _real(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not above 0")
    if not LEAST <= value <= MOST:
        raise argparse.ArgumentTypeError(f"{value:g} is not between {LEAST:g} and {MOST:,}")
    return value


def ratio(text: str) -> float:
    """A share from 0 to 1."""
    value = _real(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 1")
    return value


def rates(text: str) -> list[float]:
    """Comma-separated rates > 0 (orders/s), or ``0`` alone for none (as ``SWEEP=0``)."""
    if text.strip() == "0":
        return []
    parts = [part.strip() for part in text.split(",")]
    if len(parts) > 1 and any(part and _real(part) == 0 for part in parts):
        raise argparse.ArgumentTypeError("a rate of 0 among others (0 on its own means no sweep)")
    return [positive_float(part) for part in parts]
