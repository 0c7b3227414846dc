"""The arithmetic of a pre-sale: tiers, early-bird prices, deposits and balances.

Everything is integer minor units (fen) times integer quantities: nothing here divides, so
nothing rounds. A unit price times a quantity is exact, a balance is a difference of exact
amounts, and it is clamped at zero (a 定金膨胀 credit larger than the price leaves nothing to
pay, never a negative balance and never money back). docs/orders.md has worked examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

DepositType = Literal["deposit", "refundable_deposit", "inflated_deposit", "full"]
DEPOSIT_TYPES: tuple[DepositType, ...] = (
    "deposit",
    "refundable_deposit",
    "inflated_deposit",
    "full",
)
# Which deposits are kept when the balance is not paid in time (定金); 订金 is refunded.
FORFEITED_ON_UNPAID_BALANCE: frozenset[str] = frozenset({"deposit", "inflated_deposit"})


@dataclass(frozen=True)
class Tier:
    min_quantity: int
    unit_price: int


def tier_for(tiers: Sequence[Tier], committed: int) -> Tier:
    """The tier reached with ``committed`` units (the first tier below its threshold).

    Tiers are ascending by ``min_quantity``, the first at 1, with falling prices; exactly
    ``min_quantity`` units reach a tier (100 units reach "100+")."""
    reached = tiers[0]
    for tier in tiers:
        if committed >= tier.min_quantity:
            reached = tier
    return reached


def next_tier(tiers: Sequence[Tier], committed: int) -> Tier | None:
    """The next lower price not reached yet, or None at the last tier."""
    for tier in tiers:
        if committed < tier.min_quantity:
            return tier
    return None


def never_higher(old: Sequence[Tier], new: Sequence[Tier]) -> bool:
    """Whether ``new`` charges no more than ``old`` at every quantity.

    Both are step functions that change only at their thresholds, so comparing them at every
    threshold of either compares them everywhere."""
    points = {t.min_quantity for t in old} | {t.min_quantity for t in new}
    return all(tier_for(new, q).unit_price <= tier_for(old, q).unit_price for q in points)


def unit_price_for_order(final_unit_price: int, *own_prices: int | None) -> int:
    """An order with prices of its own (early-bird, a group buy's, a member tier's) pays the
    lowest of them, or the tier reached if that is lower still."""
    return min([final_unit_price, *(p for p in own_prices if p is not None)])


def first_payment(
    deposit_type: DepositType, *, quantity: int, unit_deposit: int, list_unit_price: int
) -> int:
    """What the buyer pays when ordering: the deposit, or (full prepayment) the price now
    asked (the first tier or the early-bird price; the difference to the tier reached at the
    close is refunded then)."""
    if deposit_type == "full":
        return quantity * list_unit_price
    return quantity * unit_deposit


def balance_due(*, quantity: int, unit_price: int, deposit_credit: int) -> int:
    """What remains after the deposit's credit: quantity * price - credit, never below 0."""
    return max(0, quantity * unit_price - deposit_credit)


def prepayment_excess(*, quantity: int, unit_price: int, paid: int) -> int:
    """For full prepayment: what was paid above the final price (refunded at the close)."""
    return max(0, paid - quantity * unit_price)
