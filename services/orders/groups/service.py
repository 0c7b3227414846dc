"""The rules of group buys (拼团): a campaign's offer, taking a place in a group, following its
members' payments and departures, and what anyone may read about a group.

Places are held by members whose orders wait for payment or are paid; both are counted on
the group's row, which a conditional UPDATE changes under the campaign's lock (the order's
reservation has taken it), and CHECK constraints bound by N. A group forms when its N-th
member pays before the deadline. Expiry, failure and virtual completion act on every member
at once: they are in ``settlement.py``. Lock order: campaign, group, order (the campaign's
lock alone already serialises everything that touches its groups).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.orders.groups import repository as repo
from services.orders.groups.repository import GroupPrice, GroupRow, OfferRow
from services.orders.groups.schemas import GroupOrderIn, GroupOut, OfferIn, OfferOut
from services.orders.presales import repository as campaigns
from services.orders.presales.repository import CampaignRow, VariantRow
from services.orders.presales.service import (
    EDITABLE,
    CampaignNotFound,
    CampaignStateConflict,
    TermsLocked,
    staff_campaign,
)
from shared.auth import Principal
from shared.errors import Conflict, DomainError, NotFound
from shared.scheduler import cancel, schedule
from shared.tables import PlatformTables

EXPIRE_JOB = "group.expire"
PENDING, PAID, LEFT = "pending_payment", "paid", "left"
CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O or 1/I to misread
CODE_LENGTH = 10  # 50 random bits


class GroupBuyNotEnabled(NotFound):
    code = "group_buy_not_enabled"
    title = "This campaign has no group buying"


class GroupNotFound(NotFound):
    code = "group_not_found"
    title = "No such group"


class GroupPricesInvalid(DomainError):
    status = 422
    code = "group_prices_invalid"
    title = "One group price per variant, at most the list price; a leader's price below it"


class GroupVariantUnpriced(DomainError):
    status = 422
    code = "group_variant_unpriced"
    title = "This variant has no group price"


class GroupNotOpen(Conflict):
    code = "group_not_open"
    title = "This group has formed or ended: it takes no more members"


class GroupExpired(Conflict):
    code = "group_expired"
    title = "This group's time is up"


class GroupFull(Conflict):
    code = "group_full"
    title = "Every place of this group is taken"


class GroupAlreadyMember(Conflict):
    code = "group_already_member"
    title = "You are in this group already"


class GroupOnePerCustomer(Conflict):
    code = "group_one_per_customer"
    title = "This campaign allows one group per customer, and you are in one"


class GroupCodeExhausted(Conflict):
    code = "group_code_taken"
    title = "No free group code was found; try again"


def now_utc() -> datetime:
    return datetime.now(UTC)


# --- the offer (staff) --------------------------------------------------------------------


def _prices(body: OfferIn) -> list[GroupPrice]:
    return [
        GroupPrice(sku=p.sku, unit_price=p.unit_price, leader_unit_price=p.leader_unit_price)
        for p in body.prices
    ]


def check_prices(
    campaign: CampaignRow, variants: list[VariantRow], prices: list[GroupPrice]
) -> None:
    """One price per variant, never above buying alone; a leader's price below the group's;
    a deposit no larger than the price it is a part of."""
    skus = [p.sku for p in prices]
    if len(set(skus)) != len(skus) or set(skus) != {v.sku for v in variants}:
        raise GroupPricesInvalid("one price for each variant of the campaign", field="prices")
    for p in prices:
        if p.unit_price > campaign.tiers[0].unit_price:
            raise GroupPricesInvalid(
                f"{p.sku}: above the list price", field=f"prices.{p.sku}.unit_price"
            )
        if p.leader_unit_price is not None and p.leader_unit_price >= p.unit_price:
            raise GroupPricesInvalid(
                f"{p.sku}: the leader's price must be lower",
                field=f"prices.{p.sku}.leader_unit_price",
            )
        lowest = p.unit_price if p.leader_unit_price is None else p.leader_unit_price
        if campaign.deposit_type != "full" and campaign.unit_deposit > lowest:
            raise GroupPricesInvalid(
                f"{p.sku}: a price below the unit deposit", field=f"prices.{p.sku}.unit_price"
            )


def check_favourable(old: OfferRow, new: OfferIn) -> None:
    """After the first payment, a change must leave every buyer at least as well off."""
    old_prices = {p.sku: p for p in old.prices}
    refusals = [
        (new.group_size > old.group_size, "group_size", "a group may only get smaller"),
        (
            new.time_limit_minutes < old.time_limit_minutes,
            "time_limit_minutes",
            "the time limit may only grow",
        ),
        (
            old.multiple_groups and not new.multiple_groups,
            "multiple_groups",
            "it cannot be withdrawn",
        ),
        (
            old.virtual_completion and not new.virtual_completion,
            "virtual_completion",
            "it cannot be withdrawn",
        ),
    ]
    for p in new.prices:
        before = old_prices.get(p.sku)
        if before is None:
            continue  # a variant without a group price gets one: in the buyers' favour
        refusals.append(
            (p.unit_price > before.unit_price, f"prices.{p.sku}.unit_price", "it may only fall")
        )
        refusals.append(
            (
                (p.leader_unit_price or p.unit_price)
                > (before.leader_unit_price or before.unit_price),
                f"prices.{p.sku}.leader_unit_price",
                "it may only fall",
            )
        )
    for refused, name, why in refusals:
        if refused:
            raise TermsLocked(f"{name}: {why}", field=name)


async def put_offer(
    session: AsyncSession, principal: Principal, campaign_id: uuid.UUID, body: OfferIn
) -> OfferRow:
    """Enables or changes group buying: freely until the first payment, then only in the
    buyers' favour (enabling it is)."""
    campaign = await staff_campaign(session, principal, campaign_id, lock=True)
    if campaign.status not in EDITABLE:
        raise CampaignStateConflict(f"a {campaign.status} campaign cannot change")
    prices = _prices(body)
    check_prices(campaign, await campaigns.get_variants(session, campaign_id), prices)
    old = await repo.get_offer(session, campaign_id)
    if old is not None and campaign.terms_locked_at is not None:
        check_favourable(old, body)
    return await repo.put_offer(
        session,
        campaign_id,
        {
            "group_size": body.group_size,
            "time_limit_minutes": body.time_limit_minutes,
            "prices": repo.prices_json(prices),
            "multiple_groups": body.multiple_groups,
            "virtual_completion": body.virtual_completion,
            "updated_by": principal.sub,
        },
    )


async def get_offer(
    session: AsyncSession, principal: Principal | None, campaign_id: uuid.UUID
) -> OfferOut:
    """Public once the campaign is published; a draft's only for its staff."""
    campaign = await campaigns.get_campaign(session, campaign_id)
    if campaign is None or (
        campaign.status == "draft" and not (principal and principal.acts_for(campaign.merchant_id))
    ):
        raise CampaignNotFound()
    offer = await repo.get_offer(session, campaign_id)
    if offer is None:
        raise GroupBuyNotEnabled()
    return OfferOut.of(offer)


# --- places (called by orders under the campaign's lock) -----------------------------------


@dataclass(frozen=True)
class GroupIntent:
    """What an order asks of groups: to open one (``group_id`` None) or to join one."""

    display_name: str
    avatar_url: str | None
    group_id: uuid.UUID | None = None

    @classmethod
    def of(cls, body: GroupOrderIn, group_id: uuid.UUID | None = None) -> GroupIntent:
        return cls(display_name=body.display_name, avatar_url=body.avatar_url, group_id=group_id)


@dataclass(frozen=True)
class Place:
    """A place taken in a group, and the unit price its order pays."""

    group_id: uuid.UUID
    unit_price: int

    def order_columns(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "group_unit_price": self.unit_price}


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


async def take_place(
    session: AsyncSession,
    tables: PlatformTables,
    principal: Principal,
    campaign: CampaignRow,
    order_id: uuid.UUID,
    sku: str,
    intent: GroupIntent,
) -> Place:
    """Opens a group or takes a place in one for the order ``order_id`` (about to be written
    in this transaction). The caller holds the campaign's lock, so the membership checks are
    exact; the place itself is a conditional UPDATE of the group's counter."""
    offer = await repo.get_offer(session, campaign.id)
    if offer is None:
        raise GroupBuyNotEnabled()
    price = offer.price_of(sku)
    if price is None:
        raise GroupVariantUnpriced(field="sku")
    if intent.group_id is not None and await repo.holds_membership(
        session, campaign.id, principal.sub, intent.group_id
    ):
        raise GroupAlreadyMember()
    if not offer.multiple_groups and await repo.holds_membership(
        session, campaign.id, principal.sub
    ):
        raise GroupOnePerCustomer()
    now = now_utc()
    if intent.group_id is None:
        group = await _open(session, tables, principal, campaign, offer, now)
        unit = price.leader_unit_price or price.unit_price
    else:
        taken = await repo.take_place(session, intent.group_id, now)
        if taken is None:
            await _refuse(session, campaign, intent.group_id, now)
        assert taken is not None
        group, unit = taken, price.unit_price
    await repo.insert_member(
        session,
        {
            "order_id": order_id,
            "group_id": group.id,
            "campaign_id": campaign.id,
            "customer_id": principal.sub,
            "display_name": intent.display_name,
            "avatar_url": intent.avatar_url,
            "leader": intent.group_id is None,
            "status": PENDING,
        },
    )
    # Never more than buying alone costs now (the list price may have fallen since).
    return Place(group_id=group.id, unit_price=min(unit, campaign.tiers[0].unit_price))


async def _open(
    session: AsyncSession,
    tables: PlatformTables,
    principal: Principal,
    campaign: CampaignRow,
    offer: OfferRow,
    now: datetime,
) -> GroupRow:
    expires_at = min(now + timedelta(minutes=offer.time_limit_minutes), campaign.closes_at)
    for _ in range(5):
        group = await repo.insert_group(
            session,
            {
                "id": uuid.uuid4(),
                "campaign_id": campaign.id,
                "code": new_code(),
                "leader_customer_id": principal.sub,
                "size": offer.group_size,
                "virtual_completion": offer.virtual_completion,
                "expires_at": expires_at,
                "places_taken": 1,
            },
        )
        if group is not None:
            await schedule(session, tables, kind=EXPIRE_JOB, key=str(group.id), run_at=expires_at)
            return group
    raise GroupCodeExhausted()


async def _refuse(
    session: AsyncSession, campaign: CampaignRow, group_id: uuid.UUID, now: datetime
) -> None:
    """Why no place was taken: always raises."""
    group = await repo.get_group(session, group_id)
    if group is None or group.campaign_id != campaign.id:
        raise GroupNotFound()
    if group.status != repo.OPEN:
        raise GroupNotOpen(status=group.status)
    if group.expires_at <= now:
        raise GroupExpired(expired_at=group.expires_at.isoformat())
    raise GroupFull(size=group.size)


async def member_paid(session: AsyncSession, tables: PlatformTables, order_id: uuid.UUID) -> None:
    """The member's first payment succeeded (the caller holds the campaign's lock): one more
    paid member, and the N-th before the deadline forms the group. A payment learnt of after
    the deadline counts as paid but forms nothing: the expiry decides, whatever came first."""
    member = await repo.get_member(session, order_id)
    if member is None or member.status != PENDING:
        return
    now = now_utc()
    await repo.update_member(session, order_id, {"status": PAID, "paid_at": now})
    group = await repo.count_payment(session, member.group_id)
    if group is not None and group.paid_members == group.size and now < group.expires_at:
        await repo.update_group(session, group.id, {"status": "formed", "settled_at": now})
        await cancel(session, tables, kind=EXPIRE_JOB, key=str(group.id))


async def member_left(session: AsyncSession, order_id: uuid.UUID) -> None:
    """The member's order ended (expired unpaid, refunded in full, cancelled): while its group
    is open, the member leaves and the place is free again. A settled group keeps its members:
    a refund after forming does not dissolve it."""
    member = await repo.get_member(session, order_id)
    if member is None or member.status == LEFT:
        return
    group = await repo.get_group(session, member.group_id, lock=True)
    if group is None or group.status != repo.OPEN:
        return
    await repo.update_member(session, order_id, {"status": LEFT, "left_at": now_utc()})
    await repo.release_place(session, group.id, paid=member.status == PAID)


# --- reading ------------------------------------------------------------------------------


async def groups_out(
    session: AsyncSession, groups: list[GroupRow], share_base: str
) -> list[GroupOut]:
    members = await repo.members_of(session, [x.id for x in groups])
    now = now_utc()
    return [GroupOut.of(x, members[x.id], share_base=share_base, now=now) for x in groups]


async def _group_out(session: AsyncSession, group: GroupRow | None, share_base: str) -> GroupOut:
    if group is None:
        raise GroupNotFound()
    (out,) = await groups_out(session, [group], share_base)
    return out


async def public_group(session: AsyncSession, code: str, share_base: str) -> GroupOut:
    return await _group_out(session, await repo.group_by_code(session, code), share_base)


async def order_group(
    session: AsyncSession, group_id: uuid.UUID | None, share_base: str
) -> GroupOut:
    """The group an order was placed into (404 for an order placed alone)."""
    group = None if group_id is None else await repo.get_group(session, group_id)
    return await _group_out(session, group, share_base)


async def placed_group(
    sessionmaker: async_sessionmaker[AsyncSession], group_id: uuid.UUID, share_base: str
) -> GroupOut:
    """The group of an order just placed, read in a short transaction of its own."""
    async with sessionmaker() as session:
        return await order_group(session, group_id, share_base)


async def group_for_joining(sessionmaker: async_sessionmaker[AsyncSession], code: str) -> GroupRow:
    """The group a share code names, read in a short transaction of its own (joining is on
    the money path, which holds no connection while the provider works)."""
    async with sessionmaker() as session:
        group = await repo.group_by_code(session, code)
    if group is None:
        raise GroupNotFound()
    return group


async def joinable_campaign(session: AsyncSession, campaign_id: uuid.UUID) -> None:
    """A campaign whose open groups anyone may list: published (a draft is a 404)."""
    campaign = await campaigns.get_campaign(session, campaign_id)
    if campaign is None or campaign.status == "draft":
        raise CampaignNotFound()
