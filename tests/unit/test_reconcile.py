"""``sagastack.invariants.reconcile`` on ledgers written by hand: whose account a charge
took money from."""

from __future__ import annotations

import uuid
from decimal import Decimal

from sagastack import invariants


def test_a_charge_to_another_customers_account_is_a_violation() -> None:
    """The charge of an APPROVED order, for its total, once, not refunded — but taken from
    another customer's account. Only conservation against the starting balances saw it,
    and ``sagastack check`` (a live stack) has none: every invariant held."""
    oid, fine = str(uuid.uuid4()), str(uuid.uuid4())
    orders = {oid: ("APPROVED", Decimal("10.00")), fine: ("APPROVED", Decimal("10.00"))}
    payments = {oid: ("ann", Decimal("10.00"), "CHARGED"), fine: ("ann", Decimal("10.00"), "CHARGED")}
    ledger = invariants.ProviderLedger(
        [
            {
                "idempotency_key": f"charge:{ref}",
                "charge_id": str(uuid.uuid4()),
                "account_id": account,
                "amount": "10.00",
                "reference": ref,
                "status": "succeeded",
            }
            for ref, account in ((oid, "bob"), (fine, "ann"))
        ],
        [],
        {"ann": Decimal("90.00"), "bob": Decimal("90.00")},
    )
    assert invariants.reconcile(orders, payments, ledger, {}) == [
        f"order {oid}: charged to account bob at the provider, but its payment is ann's"
    ]


def test_a_customer_seeded_with_money_but_without_an_account_is_a_violation() -> None:
    """Conservation was checked for the accounts the provider lists: a customer the run
    seeded whose account is not there (a seeding that answered 200 and created nothing)
    had every order REJECTED unknown_account, and every invariant held."""
    ledger = invariants.ProviderLedger([], [], {"ann": Decimal("50.00")})
    initial = {"ann": Decimal("50.00"), "bob": Decimal("20.00")}
    assert invariants.reconcile({}, {}, ledger, initial) == [
        "customer bob: no account at the provider, though it started with 20.00"
    ]
