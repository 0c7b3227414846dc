"""Plain orders: the ones placed in a single statement.

Most orders of a rush need nothing but the campaign's list price: no limit per customer to
count, no eligibility to read, no early-bird units to count, no group, gift or pickup point.
For those the service writes the reservation, the order and its payment's intent in one
statement that commits on its own (``repository.place_plain``): five round trips a placed
order instead of nine, and the campaign's row, which every order of the campaign queues on,
locked for that statement alone instead of for a transaction of three round trips
(docs/orders.md, "Plain orders"; docs/benchmarks.md has what it was worth).

The order's amounts are computed before the statement, from the terms this process last read
(:data:`plain_terms`; a campaign new to the process is read first), and the statement takes
the units only while the campaign's row still holds exactly those terms. Anything else (the
terms changed, the campaign is not open, the units are gone) makes it write nothing, and
the full path, which tells why, runs instead: the plain path changes how fast an order is
placed, never whether or at what price.
"""

from __future__ import annotations

import uuid

from services.orders.orders.schemas import OrderCreate
from services.orders.presales.repository import CampaignRow, PricingTerms


def plain_request(body: OrderCreate) -> bool:
    """Whether the order asks for nothing that the full path reads or locks more for: a gift
    (its own rows), a pickup point (its lock and a code), a saved payment method (its owner is
    checked). A purchase code needs nothing on a campaign open to everybody (it is not taken)."""
    return body.gift is None and body.pickup_point_id is None and body.payment_method is None


class PlainTermsMemo:
    """What this process last saw of each campaign's terms: the pricing terms of one whose
    orders can be plain, or that its orders cannot be (``None``). Only a hint: the statement
    checks the terms on the row, and every read of the row (the full path's, a refusal's, the
    plain path's own when the campaign is new to this process) refreshes it."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._terms: dict[uuid.UUID, PricingTerms | None] = {}

    def knows(self, campaign_id: uuid.UUID) -> bool:
        return campaign_id in self._terms

    def get(self, campaign_id: uuid.UUID) -> PricingTerms | None:
        return self._terms.get(campaign_id)

    def learn(self, campaign: CampaignRow) -> None:
        plain = (
            not campaign.restricted
            and campaign.per_customer_limit is None
            and campaign.early_bird_price is None
        )
        if len(self._terms) >= self.size and campaign.id not in self._terms:
            self._terms.clear()  # a cache: dropping it costs each campaign one read
        self._terms[campaign.id] = PricingTerms.of(campaign) if plain else None

    def forget(self, campaign_id: uuid.UUID) -> None:
        self._terms.pop(campaign_id, None)


# One per process, like the sold-out memo: campaign ids are unique across every app in it.
plain_terms = PlainTermsMemo()
