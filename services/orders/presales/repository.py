"""SQL of pre-sale campaigns and their variants (and the counters that capacity is held by)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    CTE,
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    Select,
    String,
    bindparam,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.orders.models import (
    HOLDING_UNITS,
    PAID,
    customer_order,
    merchant_policy,
    presale_campaign,
    presale_variant,
)
from services.orders.presales.pricing import DepositType, Tier

c = presale_campaign
v = presale_variant


@dataclass(frozen=True, slots=True)
class CampaignRow:
    id: uuid.UUID
    merchant_id: str
    title: str
    description: str
    image_urls: list[str]
    currency: str
    tiers: list[Tier]
    min_quantity: int
    capacity: int | None
    per_customer_limit: int | None
    opens_at: datetime
    closes_at: datetime
    balance_window_hours: int
    ships_on: date | None
    return_window_days: int
    deposit_type: DepositType
    unit_deposit: int
    unit_deposit_credit: int
    early_bird_price: int | None
    early_bird_until: datetime | None
    early_bird_units: int | None
    status: str
    paused: bool
    restricted: bool  # only some customers may order (see eligibility)
    reserved_quantity: int
    committed_quantity: int
    terms_locked_at: datetime | None
    final_unit_price: int | None
    closed_at: datetime | None
    balance_due_by: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Row[Any] | Mapping[str, Any]) -> CampaignRow:
        m = dict(row._mapping if isinstance(row, Row) else row)
        tiers = [Tier(**t) for t in m.pop("price_tiers")]
        return cls(tiers=tiers, **m)


@dataclass(frozen=True, slots=True)
class VariantRow:
    campaign_id: uuid.UUID
    sku: str
    name: str
    position: int
    capacity: int | None
    reserved_quantity: int
    committed_quantity: int


def tiers_json(tiers: Sequence[Tier]) -> list[dict[str, int]]:
    return [{"min_quantity": t.min_quantity, "unit_price": t.unit_price} for t in tiers]


async def insert_campaign(
    session: AsyncSession, values: Mapping[str, Any], variants: Sequence[Mapping[str, Any]]
) -> None:
    await session.execute(c.insert().values(**values))
    await session.execute(v.insert(), [dict(x, campaign_id=values["id"]) for x in variants])


async def get_campaign(
    session: AsyncSession | AsyncConnection, campaign_id: uuid.UUID, *, lock: bool = False
) -> CampaignRow | None:
    stmt = select(c).where(c.c.id == campaign_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else CampaignRow.of(row)


async def get_variants(session: AsyncSession, campaign_id: uuid.UUID) -> list[VariantRow]:
    rows = await session.execute(
        select(v).where(v.c.campaign_id == campaign_id).order_by(v.c.position)
    )
    return [VariantRow(**r._mapping) for r in rows]


async def variants_of(
    session: AsyncSession, campaign_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[VariantRow]]:
    """The variants of several campaigns in one query, each campaign's in order."""
    out: dict[uuid.UUID, list[VariantRow]] = {i: [] for i in campaign_ids}
    rows = await session.execute(
        select(v).where(v.c.campaign_id.in_(campaign_ids)).order_by(v.c.campaign_id, v.c.position)
    )
    for r in rows:
        out[r.campaign_id].append(VariantRow(**r._mapping))
    return out


async def update_campaign(
    session: AsyncSession, campaign_id: uuid.UUID, values: Mapping[str, Any]
) -> CampaignRow:
    row = (
        await session.execute(
            update(c)
            .where(c.c.id == campaign_id)
            .values(**values, updated_at=func.now())
            .returning(c)
        )
    ).one()
    return CampaignRow.of(row)


async def replace_variants(
    session: AsyncSession, campaign_id: uuid.UUID, variants: Sequence[Mapping[str, Any]]
) -> None:
    """A draft's variants, all replaced (nothing is reserved on a draft)."""
    await session.execute(v.delete().where(v.c.campaign_id == campaign_id))
    await session.execute(v.insert(), [dict(x, campaign_id=campaign_id) for x in variants])


async def set_variant_capacity(
    session: AsyncSession, campaign_id: uuid.UUID, sku: str, capacity: int | None
) -> None:
    await session.execute(
        update(v).where(v.c.campaign_id == campaign_id, v.c.sku == sku).values(capacity=capacity)
    )


def campaigns_query() -> Select[Any]:
    return select(c)


def campaign_columns() -> tuple[Any, Any, Any]:
    """(merchant column, sort column, key column) for scoped, paged lists."""
    return c.c.merchant_id, c.c.created_at, c.c.id


@dataclass(frozen=True, slots=True)
class Reservation:
    campaign: CampaignRow | None  # None: nothing taken (closed, paused, not open, sold out)
    variant_taken: bool  # the variant's own capacity had room too


def reservation(*terms: ColumnElement[bool]) -> tuple[CTE, CTE]:
    """The reservation's two updates (the campaign's counter, then its variant's), built once
    per use (it runs on every order; building it costs more CPU than running it), its values
    bound per order: ``reserve_campaign``, ``reserve_sku``, ``reserve_quantity`` and
    ``reserve_now``. ``terms`` are further conditions on the campaign's row: checked on the
    row as locked, like the others. The parameters are not named like columns: in an UPDATE,
    SQLAlchemy would take such a parameter for a new value of that column."""
    quantity = bindparam("reserve_quantity", type_=Integer)
    now = bindparam("reserve_now", type_=DateTime(timezone=True))
    campaign = (
        update(c)
        .where(
            c.c.id == bindparam("reserve_campaign"),
            c.c.status == "open",
            c.c.paused.is_(False),
            c.c.opens_at <= now,
            c.c.closes_at > now,
            or_(c.c.capacity.is_(None), c.c.reserved_quantity + quantity <= c.c.capacity),
            *terms,
        )
        .values(reserved_quantity=c.c.reserved_quantity + quantity)
        .returning(c)
        .cte("campaign")
    )
    variant = (
        update(v)
        .where(
            v.c.campaign_id.in_(select(campaign.c.id)),
            v.c.sku == bindparam("reserve_sku"),
            or_(v.c.capacity.is_(None), v.c.reserved_quantity + quantity <= v.c.capacity),
        )
        .values(reserved_quantity=v.c.reserved_quantity + quantity)
        .returning(v.c.sku)
        .cte("variant")
    )
    return campaign, variant


@dataclass(frozen=True, slots=True)
class PricingTerms:
    """The terms of a campaign that a new order's amounts come from."""

    merchant_id: str
    currency: str
    deposit_type: DepositType
    unit_deposit: int
    unit_deposit_credit: int
    tiers: tuple[Tier, ...]

    @classmethod
    def of(cls, campaign: CampaignRow) -> PricingTerms:
        return cls(
            campaign.merchant_id,
            campaign.currency,
            campaign.deposit_type,
            campaign.unit_deposit,
            campaign.unit_deposit_credit,
            tuple(campaign.tiers),
        )


def plain_terms_guard() -> tuple[ColumnElement[bool], ...]:
    """For :func:`reservation`: the campaign's terms are still the :class:`PricingTerms` the
    order was priced on (bound by :func:`plain_terms_params`), and none of them asks for more
    than the list price: no restriction to some customers, no limit per customer, no
    early-bird price."""
    return (
        c.c.merchant_id == bindparam("terms_merchant", type_=String),
        c.c.currency == bindparam("terms_currency", type_=String),
        c.c.deposit_type == bindparam("terms_deposit_type", type_=String),
        c.c.unit_deposit == bindparam("terms_unit_deposit", type_=BigInteger),
        c.c.unit_deposit_credit == bindparam("terms_unit_deposit_credit", type_=BigInteger),
        c.c.price_tiers == bindparam("terms_tiers", type_=JSONB),
        c.c.restricted.is_(False),
        c.c.per_customer_limit.is_(None),
        c.c.early_bird_price.is_(None),
    )


def plain_terms_params(terms: PricingTerms) -> dict[str, Any]:
    return {
        "terms_merchant": terms.merchant_id,
        "terms_currency": terms.currency,
        "terms_deposit_type": terms.deposit_type,
        "terms_unit_deposit": terms.unit_deposit,
        "terms_unit_deposit_credit": terms.unit_deposit_credit,
        "terms_tiers": tiers_json(terms.tiers),
    }


def reservation_params(
    campaign_id: uuid.UUID, sku: str, quantity: int, now: datetime
) -> dict[str, Any]:
    return {
        "reserve_campaign": campaign_id,
        "reserve_sku": sku,
        "reserve_quantity": quantity,
        "reserve_now": now,
    }


def _reservation_statement() -> Select[Any]:
    campaign, variant = reservation()
    return select(campaign, exists(select(variant.c.sku)).label("variant_taken"))


_RESERVE = _reservation_statement()


async def reserve_units(
    session: AsyncSession, campaign_id: uuid.UUID, sku: str, quantity: int, now: datetime
) -> Reservation:
    """Takes ``quantity`` units of an open, running campaign's capacity and of its variant's,
    in one statement.

    The row locks it takes serialise every reservation of this campaign until the caller's
    transaction ends, which is what makes the per-customer check that follows race-free. When
    the campaign took units and the variant did not, the caller refuses and rolls back."""
    params = reservation_params(campaign_id, sku, quantity, now)
    row = (await session.execute(_RESERVE, params)).first()
    if row is None:
        return Reservation(None, False)
    values = dict(row._mapping)
    taken = bool(values.pop("variant_taken"))
    return Reservation(CampaignRow.of(values), taken)


async def variant_exists(session: AsyncSession, campaign_id: uuid.UUID, sku: str) -> bool:
    found = await session.scalar(
        select(v.c.sku).where(v.c.campaign_id == campaign_id, v.c.sku == sku)
    )
    return found is not None


async def customer_units(session: AsyncSession, campaign_id: uuid.UUID, customer_id: str) -> int:
    """Units this customer holds in live orders of the campaign."""
    o = customer_order
    total = await session.scalar(
        select(func.coalesce(func.sum(o.c.quantity), 0)).where(
            o.c.campaign_id == campaign_id,
            o.c.customer_id == customer_id,
            o.c.status.in_(HOLDING_UNITS),
        )
    )
    return int(total or 0)


async def release_units(
    session: AsyncSession, campaign_id: uuid.UUID, sku: str, quantity: int, *, committed: bool
) -> None:
    """Gives back ``quantity`` reserved units (and committed ones, when they were paid)."""
    campaign_values: dict[str, Any] = {"reserved_quantity": c.c.reserved_quantity - quantity}
    variant_values: dict[str, Any] = {"reserved_quantity": v.c.reserved_quantity - quantity}
    if committed:
        campaign_values["committed_quantity"] = c.c.committed_quantity - quantity
        variant_values["committed_quantity"] = v.c.committed_quantity - quantity
    await session.execute(update(c).where(c.c.id == campaign_id).values(**campaign_values))
    await session.execute(
        update(v).where(v.c.campaign_id == campaign_id, v.c.sku == sku).values(**variant_values)
    )


async def commit_units(
    session: AsyncSession, campaign_id: uuid.UUID, sku: str, quantity: int
) -> None:
    """Reserved units became paid ones; the first paid order locks the campaign's terms."""
    await session.execute(
        update(c)
        .where(c.c.id == campaign_id)
        .values(
            committed_quantity=c.c.committed_quantity + quantity,
            terms_locked_at=func.coalesce(c.c.terms_locked_at, func.now()),
        )
    )
    await session.execute(
        update(v)
        .where(v.c.campaign_id == campaign_id, v.c.sku == sku)
        .values(committed_quantity=v.c.committed_quantity + quantity)
    )


async def buyers(session: AsyncSession, campaign_id: uuid.UUID) -> int:
    o = customer_order
    count = await session.scalar(
        select(func.count(func.distinct(o.c.customer_id))).where(
            o.c.campaign_id == campaign_id, o.c.status.in_(PAID)
        )
    )
    return int(count or 0)


async def get_policy(session: AsyncSession, merchant_id: str) -> Row[Any] | None:
    p = merchant_policy
    return (await session.execute(select(p).where(p.c.merchant_id == merchant_id))).first()


async def put_policy(
    session: AsyncSession, merchant_id: str, return_window_days: int, by: str
) -> Row[Any]:
    p = merchant_policy
    stmt = insert(p).values(
        merchant_id=merchant_id, return_window_days=return_window_days, updated_by=by
    )
    row: Row[Any] = (
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[p.c.merchant_id],
                set_={
                    "return_window_days": stmt.excluded.return_window_days,
                    "updated_by": stmt.excluded.updated_by,
                    "updated_at": func.now(),
                },
            ).returning(p)
        )
    ).one()
    return row
