"""The charging rule, pure: charge the whole total or nothing; balances never go negative."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal


@dataclass(frozen=True)
class Charge:
    amount: Decimal
    new_balance: Decimal


@dataclass(frozen=True)
class Decline:
    reason: Literal["insufficient_funds", "unknown_account"]


def decide_charge(balance: Decimal | None, amount: Decimal) -> Charge | Decline:
    """``balance`` is None when the customer has no account."""
    if balance is None:
        return Decline("unknown_account")
    if balance < amount:
        return Decline("insufficient_funds")
    return Charge(amount=amount, new_balance=balance - amount)
