"""The rules of pre-sale campaigns: valid terms, the lifecycle, changes after the first
deposit (only in buyers' favour), and the public progress of a campaign.

Closing and cancelling touch every order of a campaign: they are the orders domain's
(``services/orders/orders/settlement.py``).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.presales import repository as repo
from services.orders.presales.pricing import Tier, never_higher, next_tier, tier_for
from services.orders.presales.repository import CampaignRow, VariantRow
from services.orders.presales.schemas import (
    CampaignCreate,
    CampaignTerms,
    DepositOut,
    EarlyBirdOut,
    MerchantPolicyIn,
    MerchantPolicyOut,
    PublicProgress,
    TierOut,
    VariantOut,
)
from shared.auth import Principal, ensure_staff_of
from shared.errors import Conflict, DomainError, NotFound
from shared.money import normalize_currency
from shared.scheduler import schedule
from shared.tables import PlatformTables

OPEN_JOB = "presale.open"
CLOSE_JOB = "presale.close"
EDITABLE = ("draft", "published", "open")
RUNNING = ("published", "open")


class CampaignNotFound(NotFound):
    code = "presale_not_found"
    title = "No such pre-sale campaign"


class TiersInvalid(DomainError):
    status = 422
    code = "presale_tiers_invalid"
    title = "Price tiers must start at 1 unit, rise in quantity and fall in price"


class VariantsInvalid(DomainError):
    status = 422
    code = "presale_variants_invalid"
    title = "Variants need distinct SKU codes"


class DepositInvalid(DomainError):
    status = 422
    code = "presale_deposit_invalid"
    title = "The deposit terms do not fit the deposit type"


class DepositAbovePrice(DomainError):
    status = 422
    code = "presale_deposit_above_price"
    title = "A unit's deposit may not exceed the lowest unit price"


class EarlyBirdInvalid(DomainError):
    status = 422
    code = "presale_early_bird_invalid"
    title = "The early-bird price must be below the first tier and end by time or units"


class ClosesInPast(DomainError):
    status = 422
    code = "presale_closes_in_past"
    title = "The closing time must be in the future"


class ScheduleInvalid(DomainError):
    status = 422
    code = "presale_schedule_invalid"
    title = "The campaign must open before it closes"


class CapacityBelowMinimum(DomainError):
    status = 422
    code = "presale_capacity_below_minimum"
    title = "The capacity cannot hold the minimum quantity"


class MerchantRequired(DomainError):
    status = 422
    code = "merchant_required"
    title = "Admins name the merchant the campaign belongs to"


class TermsLocked(DomainError):
    status = 422
    code = "presale_terms_locked"
    title = "Deposits were paid: terms may change only in the buyers' favour"


class CampaignStateConflict(Conflict):
    code = "presale_state_conflict"
    title = "The campaign is not in a state that allows this"


def now_utc() -> datetime:
    return datetime.now(UTC)


# --- terms ------------------------------------------------------------------------------


def _tiers(terms: CampaignTerms) -> list[Tier]:
    return [Tier(min_quantity=t.min_quantity, unit_price=t.unit_price) for t in terms.price_tiers]


def check_terms(terms: CampaignTerms, now: datetime) -> None:
    """The rules between fields; each failure has its own code and names the field."""
    tiers = _tiers(terms)
    _check_tiers(tiers)
    skus = [x.sku for x in terms.variants]
    if len(set(skus)) != len(skus):
        raise VariantsInvalid(field="variants")
    _check_deposit(terms, tiers)
    if terms.closes_at <= now:
        raise ClosesInPast(field="closes_at")
    if terms.opens_at >= terms.closes_at:
        raise ScheduleInvalid(field="opens_at")
    _check_early_bird(terms, tiers)
    if terms.capacity is not None and terms.capacity < terms.min_quantity:
        raise CapacityBelowMinimum(field="capacity")
    capacities = [x.capacity for x in terms.variants]
    if None not in capacities and sum(x or 0 for x in capacities) < terms.min_quantity:
        raise CapacityBelowMinimum("the variants together hold fewer units", field="variants")


def _check_tiers(tiers: list[Tier]) -> None:
    if tiers[0].min_quantity != 1:
        raise TiersInvalid("the first tier must start at 1 unit", field="price_tiers")
    for low, high in itertools.pairwise(tiers):
        if high.min_quantity <= low.min_quantity:
            raise TiersInvalid("tiers overlap: quantities must rise", field="price_tiers")
        if high.unit_price >= low.unit_price:
            raise TiersInvalid("each higher tier must be cheaper", field="price_tiers")


def _check_deposit(terms: CampaignTerms, tiers: list[Tier]) -> None:
    deposit = terms.deposit
    if deposit.type == "full":
        if deposit.unit_deposit or deposit.unit_credit is not None:
            raise DepositInvalid("full prepayment takes no deposit", field="deposit")
        return
    if deposit.unit_deposit < 1:
        raise DepositInvalid("a deposit of at least 1 minor unit", field="deposit.unit_deposit")
    if deposit.type == "inflated_deposit":
        if deposit.unit_credit is None or deposit.unit_credit < deposit.unit_deposit:
            raise DepositInvalid(
                "定金膨胀 needs a unit_credit of at least the deposit", field="deposit.unit_credit"
            )
    elif deposit.unit_credit is not None:
        raise DepositInvalid("only 定金膨胀 takes a unit_credit", field="deposit.unit_credit")
    prices = [tiers[-1].unit_price] + ([terms.early_bird.unit_price] if terms.early_bird else [])
    if deposit.unit_deposit > min(prices):
        raise DepositAbovePrice(field="deposit.unit_deposit")


def _check_early_bird(terms: CampaignTerms, tiers: list[Tier]) -> None:
    bird = terms.early_bird
    if bird is None:
        return
    if bird.unit_price >= tiers[0].unit_price:
        raise EarlyBirdInvalid("below the first tier's price", field="early_bird.unit_price")
    if bird.until is None and bird.units is None:
        raise EarlyBirdInvalid("give `until`, `units` or both", field="early_bird")
    if bird.until is not None and not terms.opens_at < bird.until <= terms.closes_at:
        raise EarlyBirdInvalid("`until` must fall while it is open", field="early_bird.until")


def _columns(terms: CampaignTerms) -> dict[str, Any]:
    deposit = terms.deposit
    bird = terms.early_bird
    return {
        "title": terms.title,
        "description": terms.description,
        "image_urls": list(terms.image_urls),
        "price_tiers": repo.tiers_json(_tiers(terms)),
        "min_quantity": terms.min_quantity,
        "capacity": terms.capacity,
        "per_customer_limit": terms.per_customer_limit,
        "opens_at": terms.opens_at,
        "closes_at": terms.closes_at,
        "balance_window_hours": terms.balance_window_hours,
        "ships_on": terms.ships_on,
        "deposit_type": deposit.type,
        "unit_deposit": deposit.unit_deposit,
        "unit_deposit_credit": deposit.unit_deposit
        if deposit.unit_credit is None
        else deposit.unit_credit,
        "early_bird_price": bird.unit_price if bird else None,
        "early_bird_until": bird.until if bird else None,
        "early_bird_units": bird.units if bird else None,
    }


def _variant_columns(terms: CampaignTerms) -> list[dict[str, Any]]:
    return [
        {"sku": x.sku, "name": x.name, "capacity": x.capacity, "position": i}
        for i, x in enumerate(terms.variants)
    ]


def _up(old: int | None, new: int | None) -> bool:
    """A limit may only grow (None is no limit: the most generous)."""
    return new is None or (old is not None and new >= old)


def _later(old: datetime | None, new: datetime | None) -> bool:
    """An end may only move later (None is no end: the most generous)."""
    return new is None or (old is not None and new >= old)


def check_favourable(old: CampaignRow, variants: list[VariantRow], new: CampaignTerms) -> None:
    """After the first deposit, every change must leave every buyer at least as well off."""
    cols = _columns(new)
    refusals = [
        (not never_higher(old.tiers, _tiers(new)), "price_tiers", "prices may only fall"),
        (cols["deposit_type"] != old.deposit_type, "deposit.type", "the type cannot change"),
        (cols["unit_deposit"] > old.unit_deposit, "deposit.unit_deposit", "it may only fall"),
        (
            cols["unit_deposit_credit"] < old.unit_deposit_credit,
            "deposit.unit_credit",
            "a deposit's credit may only grow",
        ),
        (new.min_quantity > old.min_quantity, "min_quantity", "the minimum may only fall"),
        (not _up(old.capacity, new.capacity), "capacity", "it may only grow"),
        (
            not _up(old.per_customer_limit, new.per_customer_limit),
            "per_customer_limit",
            "it may only grow",
        ),
        (new.opens_at != old.opens_at, "opens_at", "the campaign is open already"),
        (new.closes_at < old.closes_at, "closes_at", "the close may only move later"),
        (
            new.balance_window_hours < old.balance_window_hours,
            "balance_window_hours",
            "the balance window may only grow",
        ),
        (
            new.return_window_days is not None and new.return_window_days < old.return_window_days,
            "return_window_days",
            "the return window may only grow",
        ),
        (
            old.ships_on is not None and (new.ships_on is None or new.ships_on > old.ships_on),
            "ships_on",
            "the ship date may only move earlier",
        ),
        *_early_bird_refusals(old, new),
        *_variant_refusals(variants, new),
    ]
    for refused, name, why in refusals:
        if refused:
            raise TermsLocked(f"{name}: {why}", field=name)


def _early_bird_refusals(old: CampaignRow, new: CampaignTerms) -> list[tuple[bool, str, str]]:
    bird = new.early_bird
    if old.early_bird_price is None and bird is None:
        return []
    if bird is None or old.early_bird_price is None:
        return [(True, "early_bird", "the offer cannot be added or removed")]
    return [
        (bird.unit_price > old.early_bird_price, "early_bird.unit_price", "it may only fall"),
        (not _later(old.early_bird_until, bird.until), "early_bird.until", "it may only end later"),
        (not _up(old.early_bird_units, bird.units), "early_bird.units", "it may only cover more"),
    ]


def _variant_refusals(
    variants: list[VariantRow], new: CampaignTerms
) -> list[tuple[bool, str, str]]:
    old = {x.sku: x for x in variants}
    if {x.sku for x in new.variants} != set(old):
        return [(True, "variants", "variants cannot be added or removed")]
    return [
        (not _up(old[x.sku].capacity, x.capacity), f"variants.{x.sku}.capacity", "it may only grow")
        for x in new.variants
    ]


# --- staff ------------------------------------------------------------------------------


def merchant_for_new(principal: Principal, requested: str | None) -> str:
    if principal.is_admin:
        if requested is None:
            raise MerchantRequired(field="merchant_id")
        return requested
    ensure_staff_of(principal, requested or principal.merchant_id or "")
    assert principal.merchant_id is not None
    return principal.merchant_id


async def create_campaign(
    session: AsyncSession, principal: Principal, body: CampaignCreate
) -> uuid.UUID:
    check_terms(body, now_utc())
    merchant_id = merchant_for_new(principal, body.merchant_id)
    campaign_id = uuid.uuid4()
    values = _columns(body) | {
        "id": campaign_id,
        "merchant_id": merchant_id,
        "currency": normalize_currency(body.currency),
        "return_window_days": body.return_window_days
        if body.return_window_days is not None
        else await return_window_default(session, merchant_id),
    }
    await repo.insert_campaign(session, values, _variant_columns(body))
    return campaign_id


class SoldOutMemo:
    """Campaigns this process recently found sold out, with the units that were left.

    A rush sends most of its requests after the last unit is gone; each would lock the
    campaign's row only to learn again that nothing is left, queueing behind the orders that
    do get units. For :attr:`ttl` seconds after a sold-out refusal, an order for more units
    than were left is refused from here, without the database. Only refusals come from here:
    a reservation always runs the atomic statement, so the memo can delay a sale by at most
    :attr:`ttl` but never oversell. Code of this process that gives units back (an order
    cancelled or expired, capacity raised) forgets the campaign at once; other processes
    see the units at most :attr:`ttl` later."""

    def __init__(self, ttl: float = 1.0, size: int = 1024) -> None:
        self.ttl = ttl
        self.size = size
        self._left: dict[uuid.UUID, tuple[float, int]] = {}

    def left(self, campaign_id: uuid.UUID) -> int | None:
        """Units left when the campaign was last found sold out, if that is recent."""
        known = self._left.get(campaign_id)
        if known is None:
            return None
        if known[0] <= time.monotonic():
            self._left.pop(campaign_id, None)
            return None
        return known[1]

    def remember(self, campaign_id: uuid.UUID, left: int) -> None:
        if len(self._left) >= self.size:
            self._left.clear()  # a cache of a second's worth: dropping it all is harmless
        self._left[campaign_id] = (time.monotonic() + self.ttl, left)

    def forget(self, campaign_id: uuid.UUID) -> None:
        self._left.pop(campaign_id, None)


# One per process: what the orders of every app in it learnt about sold-out campaigns.
sold_out = SoldOutMemo()


DEFAULT_RETURN_WINDOW_DAYS = 7  # 七天无理由退货


async def return_window_default(session: AsyncSession, merchant_id: str) -> int:
    policy = await repo.get_policy(session, merchant_id)
    return DEFAULT_RETURN_WINDOW_DAYS if policy is None else int(policy.return_window_days)


def policy_merchant(principal: Principal, requested: str | None) -> str:
    """Whose policy: staff their merchant's, admins the one they name."""
    if principal.is_admin and requested is not None:
        return requested
    if principal.is_admin:
        raise MerchantRequired(field="merchant_id")
    ensure_staff_of(principal, requested or principal.merchant_id or "")
    assert principal.merchant_id is not None
    return principal.merchant_id


async def get_policy(session: AsyncSession, merchant_id: str) -> MerchantPolicyOut:
    row = await repo.get_policy(session, merchant_id)
    return MerchantPolicyOut(
        merchant_id=merchant_id,
        return_window_days=DEFAULT_RETURN_WINDOW_DAYS if row is None else row.return_window_days,
        updated_at=None if row is None else row.updated_at,
    )


async def put_policy(
    session: AsyncSession, principal: Principal, merchant_id: str, body: MerchantPolicyIn
) -> MerchantPolicyOut:
    row = await repo.put_policy(session, merchant_id, body.return_window_days, principal.sub)
    return MerchantPolicyOut(
        merchant_id=merchant_id,
        return_window_days=row.return_window_days,
        updated_at=row.updated_at,
    )


async def staff_campaign(
    session: AsyncSession, principal: Principal, campaign_id: uuid.UUID, *, lock: bool = False
) -> CampaignRow:
    """The campaign, for staff of its merchant and admins; anyone else learns nothing (404)."""
    row = await repo.get_campaign(session, campaign_id, lock=lock)
    if row is None or not principal.acts_for(row.merchant_id):
        raise CampaignNotFound()
    return row


async def update_terms(
    session: AsyncSession,
    tables: PlatformTables,
    principal: Principal,
    campaign_id: uuid.UUID,
    body: CampaignTerms,
) -> None:
    campaign = await staff_campaign(session, principal, campaign_id, lock=True)
    if campaign.status not in EDITABLE:
        raise CampaignStateConflict(f"a {campaign.status} campaign cannot change")
    variants = await repo.get_variants(session, campaign_id)
    now = now_utc()
    check_terms(body, now)
    if campaign.terms_locked_at is not None:
        check_favourable(campaign, variants, body)
    if campaign.status == "open" and body.opens_at != campaign.opens_at:
        raise TermsLocked("opens_at: the campaign is open already", field="opens_at")
    if body.capacity is not None and body.capacity < campaign.reserved_quantity:
        raise TermsLocked("capacity: below the units already reserved", field="capacity")
    sold_out.forget(campaign_id)
    columns = _columns(body)
    if body.return_window_days is not None:
        columns["return_window_days"] = body.return_window_days
    await repo.update_campaign(session, campaign_id, columns)
    if campaign.status == "draft":
        await repo.replace_variants(session, campaign_id, _variant_columns(body))
    else:
        by_sku = {x.sku: x for x in variants}
        for x in body.variants:
            old = by_sku.get(x.sku)
            if old is None:
                raise VariantsInvalid("variants cannot be added once published", field="variants")
            if x.capacity is not None and x.capacity < old.reserved_quantity:
                raise TermsLocked(
                    "a variant's capacity is below its reservations", field="variants"
                )
            if x.capacity != old.capacity:
                await repo.set_variant_capacity(session, campaign_id, x.sku, x.capacity)
        await _schedule_lifecycle(session, tables, campaign_id, body.opens_at, body.closes_at)


async def _schedule_lifecycle(
    session: AsyncSession,
    tables: PlatformTables,
    campaign_id: uuid.UUID,
    opens_at: datetime,
    closes_at: datetime,
) -> None:
    key = str(campaign_id)
    await schedule(session, tables, kind=OPEN_JOB, key=key, run_at=opens_at)
    await schedule(session, tables, kind=CLOSE_JOB, key=key, run_at=closes_at)


async def publish(
    session: AsyncSession, tables: PlatformTables, principal: Principal, campaign_id: uuid.UUID
) -> None:
    campaign = await staff_campaign(session, principal, campaign_id, lock=True)
    if campaign.status != "draft":
        raise CampaignStateConflict(f"only a draft can be published (this is {campaign.status})")
    now = now_utc()
    if campaign.closes_at <= now:
        raise ClosesInPast(field="closes_at")
    status = "open" if campaign.opens_at <= now else "published"
    await repo.update_campaign(session, campaign_id, {"status": status})
    await _schedule_lifecycle(session, tables, campaign_id, campaign.opens_at, campaign.closes_at)


async def set_paused(
    session: AsyncSession, principal: Principal, campaign_id: uuid.UUID, *, paused: bool
) -> None:
    """The kill switch: while paused, nobody can order (payments in flight still land)."""
    campaign = await staff_campaign(session, principal, campaign_id, lock=True)
    if campaign.status not in RUNNING:
        raise CampaignStateConflict(f"a {campaign.status} campaign cannot be paused or resumed")
    if campaign.paused != paused:
        await repo.update_campaign(session, campaign_id, {"paused": paused})


async def open_due(session: AsyncSession, campaign_id: uuid.UUID) -> None:
    """The scheduled opening: a published campaign opens (a job run twice changes nothing)."""
    campaign = await repo.get_campaign(session, campaign_id, lock=True)
    if campaign is None or campaign.status != "published":
        return
    if campaign.opens_at > now_utc() + timedelta(seconds=1):
        return  # moved later: the rescheduled job opens it
    await repo.update_campaign(session, campaign_id, {"status": "open"})


# --- public -----------------------------------------------------------------------------


async def public_progress(
    session: AsyncSession, campaign_id: uuid.UUID, *, clock: Callable[[], datetime] = now_utc
) -> PublicProgress:
    campaign = await repo.get_campaign(session, campaign_id)
    if campaign is None or campaign.status == "draft":
        raise CampaignNotFound()
    variants = await repo.get_variants(session, campaign_id)
    committed = campaign.committed_quantity
    reached = tier_for(campaign.tiers, committed)
    upcoming = next_tier(campaign.tiers, committed)
    variant_out = [VariantOut.of(x) for x in variants]
    sold_out = (
        campaign.capacity is not None and campaign.reserved_quantity >= campaign.capacity
    ) or all(x.sold_out for x in variant_out)
    now = clock()
    return PublicProgress(
        id=campaign.id,
        title=campaign.title,
        description=campaign.description,
        image_urls=campaign.image_urls,
        currency=campaign.currency,
        status=campaign.status,
        paused=campaign.paused,
        opens_at=campaign.opens_at,
        closes_at=campaign.closes_at,
        seconds_left=max(0, int((campaign.closes_at - now).total_seconds())),
        committed_quantity=committed,
        buyers=await repo.buyers(session, campaign_id),
        min_quantity=campaign.min_quantity,
        progress_bps=min(10_000, committed * 10_000 // campaign.min_quantity),
        current_unit_price=campaign.final_unit_price or reached.unit_price,
        next_unit_price=None if upcoming is None else upcoming.unit_price,
        units_to_next_tier=None if upcoming is None else upcoming.min_quantity - committed,
        early_bird=None
        if campaign.early_bird_price is None
        else EarlyBirdOut(
            unit_price=campaign.early_bird_price,
            until=campaign.early_bird_until,
            units=campaign.early_bird_units,
        ),
        price_tiers=[
            TierOut(min_quantity=t.min_quantity, unit_price=t.unit_price) for t in campaign.tiers
        ],
        variants=variant_out,
        sold_out=sold_out,
        deposit=DepositOut(
            type=campaign.deposit_type,
            unit_deposit=campaign.unit_deposit,
            unit_credit=campaign.unit_deposit_credit,
        ),
        ships_on=campaign.ships_on,
    )
