"""Argument types of the ``sagastack`` commands: a value out of range is refused by
argparse, with the option's name and why, before anything starts (exit 2), instead of a
traceback from deep inside a run (a rate of 0 divided by zero in the bench's sweep)."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer ≥ 1 (orders, clients, products)."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def count(text: str) -> int:
    """An integer ≥ 0 (0: none, e.g. no kills, no idle sagas)."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (a rate per second, a duration in seconds)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not above 0")
    return value


def ratio(text: str) -> float:
    """A share from 0 to 1."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 1")
    return value


def rates(text: str) -> list[float]:
    """Comma-separated rates > 0 (orders/s), or ``0`` alone for none (as ``SWEEP=0``)."""
    if text.strip() == "0":
        return []
    return [positive_float(part.strip()) for part in text.split(",")]
