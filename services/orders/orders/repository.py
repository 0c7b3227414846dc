"""SQL of customer orders and their refund decisions."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Select, bindparam, func, select, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.orders.models import customer_order, order_refund
from services.orders.presales import repository as campaigns
from shared.payments import (
    PaymentRow,
    PaymentTables,
    insert_intent_after,
    intent_params,
    payment_of,
)

o = customer_order
r = order_refund


@dataclass(frozen=True, slots=True)
class OrderRow:
    id: uuid.UUID
    campaign_id: uuid.UUID
    merchant_id: str
    customer_id: str
    sku: str
    quantity: int
    currency: str
    deposit_type: str
    early_bird_price: int | None
    first_amount: int
    deposit_credit: int
    status: str
    cancel_reason: str | None
    final_unit_price: int | None
    balance_amount: int | None
    balance_due_by: datetime | None
    first_paid: int
    balance_paid: int
    first_refund_promised: int
    balance_refund_promised: int
    refunded_amount: int
    forfeited_amount: int
    referral_code: str | None
    group_id: uuid.UUID | None
    group_unit_price: int | None
    member_unit_price: int | None
    expires_at: datetime
    paid_at: datetime | None
    carrier: str | None
    tracking_number: str | None
    shipped_at: datetime | None
    delivered_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    delivery_address: dict[str, Any] | None
    pickup_point_id: uuid.UUID | None
    pickup_leader_id: str | None
    pickup_code: str | None
    pickup_arrived_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def paid_total(self) -> int:
        return self.first_paid + self.balance_paid

    @property
    def refund_promised(self) -> int:
        return self.first_refund_promised + self.balance_refund_promised

    @property
    def refundable(self) -> int:
        """Paid and not promised back yet."""
        return self.paid_total - self.refund_promised


@dataclass(frozen=True, slots=True)
class RefundDecisionRow:
    id: uuid.UUID
    order_id: uuid.UUID
    amount: int
    reason: str
    kind: str
    from_first: int
    from_balance: int
    status: str
    requested_by: str
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    created_at: datetime
    updated_at: datetime


async def get_order(
    session: AsyncSession, order_id: uuid.UUID, *, lock: bool = False
) -> OrderRow | None:
    stmt = select(o).where(o.c.id == order_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else OrderRow(**row._mapping)


# Built once; the values come as parameters (compiled once per set of columns, then cached).
_INSERT_ORDER = insert(o).on_conflict_do_nothing(index_elements=[o.c.id]).returning(o)


async def insert_order(session: AsyncSession, values: Mapping[str, Any]) -> OrderRow | None:
    """None when an order with this id exists already (a concurrent retry made it)."""
    row = (await session.execute(_INSERT_ORDER, dict(values))).first()
    return None if row is None else OrderRow(**row._mapping)


def _plain_statement(
    t: PaymentTables, order_columns: tuple[str, ...], payment_columns: tuple[str, ...]
) -> Select[Any]:
    campaign, variant = campaigns.reservation(*campaigns.plain_terms_guard())
    # The order's sku is the one the variant's update returns: when the variant had no room
    # (or there is no such variant), the NULL breaks the order's NOT NULL and the whole
    # statement fails, the campaign's units with it.
    row = select(
        *[
            variant.c.sku if k == "sku" else bindparam(f"o_{k}", type_=o.c[k].type)
            for k in order_columns
        ]
    ).select_from(campaign.outerjoin(variant, true()))
    # No ON CONFLICT: an order of this id existing already fails the whole statement too.
    placed = insert(o).from_select(list(order_columns), row).returning(o).cte("placed")
    written, history = insert_intent_after(t, payment_columns, placed)
    return (
        select(
            *[x.label(f"o_{x.name}") for x in placed.c],
            *[x.label(f"p_{x.name}") for x in written.c],
        )
        .select_from(placed.join(written, true()))
        .add_cte(history)
    )


_PLAIN: dict[tuple[Any, ...], Select[Any]] = {}
# How the plain statement fails by design: no variant took the units (the order's sku is
# NULL), or an order or payment of these ids exists.
_NOT_NULL, _UNIQUE = "23502", "23505"
_log = structlog.get_logger("qunbuy.orders")


async def place_plain(
    conn: AsyncConnection,
    t: PaymentTables,
    *,
    reservation: Mapping[str, Any],
    terms: campaigns.PricingTerms,
    order: Mapping[str, Any],
    payment: Mapping[str, Any],
) -> tuple[OrderRow, PaymentRow] | None:
    """Reserves the units (:func:`campaigns.reservation` with ``reservation``'s values),
    inserts the ``order`` and the ``payment``'s intent with its history, in one statement
    that commits on its own (``conn`` is an autocommit connection): all of it, or nothing.
    Nothing (None) when the campaign's row does not take the reservation as it stands (its
    terms are no longer ``terms``, it is not open and running, its units or the variant's
    are gone, or an order or payment of these ids exists); the caller then takes the path
    that tells why. The row locks are held for the statement alone."""
    key = (t, tuple(order), tuple(payment))
    stmt = _PLAIN.get(key)
    if stmt is None:
        stmt = _PLAIN[key] = _plain_statement(t, key[1], key[2])
    params = {
        **reservation,
        **campaigns.plain_terms_params(terms),
        **{f"o_{k}": x for k, x in order.items() if k != "sku"},
        **intent_params(payment),
    }
    try:
        found = (await conn.execute(stmt, params)).first()
    except IntegrityError as exc:
        code = getattr(exc.orig, "sqlstate", None)
        if code not in (_NOT_NULL, _UNIQUE):
            # Not one of the two ways it is meant to fail: still nothing written, and the
            # full path answers, but it should not go unseen.
            _log.warning("plain_order_refused", sqlstate=code, error=str(exc.orig)[:200])
        return None
    if found is None:
        return None
    values = found._mapping
    return (
        OrderRow(**{k[2:]: x for k, x in values.items() if k.startswith("o_")}),
        payment_of({k[2:]: x for k, x in values.items() if k.startswith("p_")}),
    )


async def update_order(
    session: AsyncSession, order_id: uuid.UUID, values: Mapping[str, Any]
) -> OrderRow:
    row = (
        await session.execute(
            update(o).where(o.c.id == order_id).values(**values, updated_at=func.now()).returning(o)
        )
    ).one()
    return OrderRow(**row._mapping)


async def campaign_orders(
    session: AsyncSession, campaign_id: uuid.UUID, statuses: Sequence[str]
) -> list[OrderRow]:
    """The campaign's orders in ``statuses``, locked, oldest first (the caller holds the
    campaign's lock, so none can change state under it)."""
    rows = await session.execute(
        select(o)
        .where(o.c.campaign_id == campaign_id, o.c.status.in_(statuses))
        .order_by(o.c.created_at, o.c.id)
        .with_for_update()
    )
    return [OrderRow(**x._mapping) for x in rows]


async def expired_order_ids(session: AsyncSession, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(order, campaign) of unpaid orders past their expiry, oldest first."""
    rows = await session.execute(
        select(o.c.id, o.c.campaign_id)
        .where(o.c.status == "pending_payment", o.c.expires_at <= func.now())
        .order_by(o.c.expires_at)
        .limit(limit)
    )
    return [(r.id, r.campaign_id) for r in rows]


async def seconds_to_next_expiry(session: AsyncSession) -> float | None:
    seconds = await session.scalar(
        select(func.extract("epoch", func.min(o.c.expires_at) - func.now())).where(
            o.c.status == "pending_payment"
        )
    )
    return None if seconds is None else max(0.0, float(seconds))


def orders_query() -> Select[Any]:
    return select(o)


def order_columns() -> Any:
    return o.c


async def insert_refund_decision(
    session: AsyncSession, values: Mapping[str, Any]
) -> RefundDecisionRow:
    row = (await session.execute(insert(r).values(**values).returning(r))).one()
    return RefundDecisionRow(**row._mapping)


async def get_refund_decision(
    session: AsyncSession, refund_id: uuid.UUID, *, lock: bool = False
) -> RefundDecisionRow | None:
    stmt = select(r).where(r.c.id == refund_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else RefundDecisionRow(**row._mapping)


async def update_refund_decision(
    session: AsyncSession, refund_id: uuid.UUID, values: Mapping[str, Any]
) -> RefundDecisionRow:
    row = (
        await session.execute(
            update(r)
            .where(r.c.id == refund_id)
            .values(**values, updated_at=func.now())
            .returning(r)
        )
    ).one()
    return RefundDecisionRow(**row._mapping)


async def refund_decisions(session: AsyncSession, order_id: uuid.UUID) -> list[RefundDecisionRow]:
    rows = await session.execute(select(r).where(r.c.order_id == order_id).order_by(r.c.created_at))
    return [RefundDecisionRow(**x._mapping) for x in rows]


# --- reports ------------------------------------------------------------------------------


async def campaign_totals(session: AsyncSession, campaign_id: uuid.UUID) -> dict[str, int]:
    """Sums over the campaign's orders (every state): what the stats endpoint reports."""
    paid = o.c.first_paid > 0
    row = (
        await session.execute(
            select(
                func.count().label("orders_placed"),
                func.count().filter(paid).label("orders_paid"),
                func.count(func.distinct(o.c.customer_id)).filter(paid).label("buyers"),
                func.coalesce(func.sum(o.c.first_paid).filter(o.c.deposit_type != "full"), 0).label(
                    "deposits_paid"
                ),
                func.coalesce(func.sum(o.c.first_paid).filter(o.c.deposit_type == "full"), 0).label(
                    "prepayments_paid"
                ),
                func.coalesce(func.sum(o.c.balance_paid), 0).label("balances_paid"),
                func.coalesce(func.sum(o.c.refunded_amount), 0).label("refunded"),
                func.coalesce(func.sum(o.c.forfeited_amount), 0).label("forfeited"),
                func.count().filter(o.c.status == "cancelled").label("orders_cancelled"),
            ).where(o.c.campaign_id == campaign_id)
        )
    ).one()
    return {k: int(v) for k, v in row._mapping.items()}


async def campaign_daily(
    session: AsyncSession, campaign_id: uuid.UUID, tz: str
) -> list[dict[str, Any]]:
    """Per local day of ordering: orders placed, orders paid, money paid (all payments)."""
    day = func.date(func.timezone(tz, o.c.created_at)).label("day")
    rows = await session.execute(
        select(
            day,
            func.count().label("orders_placed"),
            func.count().filter(o.c.first_paid > 0).label("orders_paid"),
            func.coalesce(func.sum(o.c.first_paid + o.c.balance_paid), 0).label("paid"),
        )
        .where(o.c.campaign_id == campaign_id)
        .group_by(day)
        .order_by(day)
    )
    return [dict(r._mapping) for r in rows]


async def demand_by_variant(session: AsyncSession, campaign_id: uuid.UUID) -> list[dict[str, Any]]:
    """Units to make per SKU: paid in full, and still awaiting their balance."""
    rows = await session.execute(
        select(
            o.c.sku,
            func.coalesce(func.sum(o.c.quantity).filter(o.c.status != "balance_due"), 0).label(
                "units_paid"
            ),
            func.coalesce(func.sum(o.c.quantity).filter(o.c.status == "balance_due"), 0).label(
                "units_awaiting_balance"
            ),
            func.count().label("orders"),
        )
        .where(
            o.c.campaign_id == campaign_id,
            o.c.status.in_(("balance_due", "paid", "shipped", "delivered", "completed")),
        )
        .group_by(o.c.sku)
    )
    return [dict(r._mapping) for r in rows]
