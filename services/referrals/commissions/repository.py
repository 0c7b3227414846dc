"""SQL of attribution, bindings, commissions and the ledger."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, func, select, text, tuple_, union_all, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.models import (
    attribution,
    commission,
    customer_binding,
    distributor,
    ledger_entry,
)

a = attribution
b = customer_binding
c = commission
e = ledger_entry


@dataclass(frozen=True, slots=True)
class AttributionRow:
    source_type: str
    source_id: uuid.UUID
    merchant_id: str
    customer_id: str
    distributor_id: uuid.UUID | None
    upline_id: uuid.UUID | None
    link_id: uuid.UUID | None
    leader_id: uuid.UUID | None
    self_referral: bool
    paid_total: int
    refunded_total: int
    currency: str
    completed: bool
    refunded_after_completion_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CommissionRow:
    id: uuid.UUID
    source_type: str
    source_id: uuid.UUID
    merchant_id: str
    distributor_id: uuid.UUID
    level: int
    payee: str
    rate_bps: int
    currency: str
    amount: int
    state: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NewAttribution:
    source_type: str
    source_id: uuid.UUID
    merchant_id: str
    customer_id: str
    distributor_id: uuid.UUID | None
    upline_id: uuid.UUID | None
    link_id: uuid.UUID | None
    leader_id: uuid.UUID | None
    self_referral: bool
    paid_total: int
    refunded_total: int
    currency: str
    completed: bool


@dataclass(frozen=True, slots=True)
class NewCommission:
    id: uuid.UUID
    source_type: str
    source_id: uuid.UUID
    merchant_id: str
    distributor_id: uuid.UUID
    level: int
    payee: str
    rate_bps: int
    currency: str
    amount: int
    state: str


@dataclass(frozen=True, slots=True)
class NewEntry:
    merchant_id: str
    commission_id: uuid.UUID
    source_event: str
    kind: str
    debit_account: str
    credit_account: str
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class NewBinding:
    merchant_id: str
    customer_id: str
    distributor_id: uuid.UUID
    bound_at: datetime
    expires_at: datetime


SourceKey = tuple[str, uuid.UUID]


async def lock_keys(session: AsyncSession, keys: Collection[str]) -> None:
    """Transaction-scoped advisory locks on ``keys`` (names of sources and customers), taken
    in one order by every transaction, so that deliveries touching the same ones queue
    instead of deadlocking."""
    await session.execute(
        text(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(x, 0) AS k"
            " FROM unnest(CAST(:keys AS text[])) AS x ORDER BY 1) AS ordered"
        ),
        {"keys": sorted(set(keys))},
    )


async def attributions_of(
    session: AsyncSession, keys: Collection[SourceKey]
) -> dict[SourceKey, AttributionRow]:
    """The attributions of these sources that exist, locked (in key order) with their
    commissions to come: the holding period's release takes the same rows in that order."""
    rows = await session.execute(
        select(a)
        .where(tuple_(a.c.source_type, a.c.source_id).in_(list(keys)))
        .order_by(a.c.source_type, a.c.source_id)
        .with_for_update()
    )
    return {(r.source_type, r.source_id): AttributionRow(**r._mapping) for r in rows}


async def commissions_of_many(
    session: AsyncSession, keys: Collection[SourceKey]
) -> dict[SourceKey, list[CommissionRow]]:
    """The commissions of these sources, locked, each source's in (payee, level) order."""
    rows = await session.execute(
        select(c)
        .where(tuple_(c.c.source_type, c.c.source_id).in_(list(keys)))
        .order_by(c.c.source_type, c.c.source_id, c.c.payee, c.c.level)
        .with_for_update()
    )
    out: dict[SourceKey, list[CommissionRow]] = {}
    for r in rows:
        out.setdefault((r.source_type, r.source_id), []).append(CommissionRow(**r._mapping))
    return out


@dataclass(frozen=True, slots=True)
class AttributionTotals:
    source_type: str
    source_id: uuid.UUID
    paid_total: int
    refunded_total: int
    completed: bool
    refunded_after_completion_at: datetime | None


@dataclass(frozen=True, slots=True)
class CommissionChange:
    id: uuid.UUID
    amount: int
    state: str


_SETTLE_MANY = text(
    """
    WITH totals AS (
        UPDATE attribution SET paid_total = t.paid_total, refunded_total = t.refunded_total,
            completed = t.completed, refunded_after_completion_at = t.refunded_after_completion_at,
            updated_at = now()
        FROM unnest(CAST(:t_source_type AS text[]), CAST(:t_source_id AS uuid[]),
            CAST(:t_paid_total AS bigint[]), CAST(:t_refunded_total AS bigint[]),
            CAST(:t_completed AS boolean[]), CAST(:t_refunded_after_completion_at AS timestamptz[]))
            AS t(source_type, source_id, paid_total, refunded_total, completed,
                 refunded_after_completion_at)
        WHERE attribution.source_type = t.source_type AND attribution.source_id = t.source_id
    ), changes AS (
        UPDATE commission SET amount = x.amount, state = x.state, updated_at = now()
        FROM unnest(CAST(:x_id AS uuid[]), CAST(:x_amount AS bigint[]), CAST(:x_state AS text[]))
            AS x(id, amount, state)
        WHERE commission.id = x.id
    )
    INSERT INTO ledger_entry (merchant_id, commission_id, source_event, kind, debit_account,
        credit_account, amount, currency)
    SELECT * FROM unnest(CAST(:e_merchant_id AS text[]), CAST(:e_commission_id AS uuid[]),
        CAST(:e_source_event AS text[]), CAST(:e_kind AS text[]),
        CAST(:e_debit_account AS text[]), CAST(:e_credit_account AS text[]),
        CAST(:e_amount AS bigint[]), CAST(:e_currency AS text[]))
    ON CONFLICT DO NOTHING
    """
)


async def settle_many(
    session: AsyncSession,
    totals: Sequence[AttributionTotals],
    changes: Sequence[CommissionChange],
    entries: Sequence[NewEntry],
) -> None:
    """Attributions' new totals, their commissions' new amounts and states, and the entries
    that move them, in one statement (the rows are locked by the caller)."""
    await session.execute(
        _SETTLE_MANY,
        {
            **_arrays(totals, AttributionTotals, "t_"),
            **_arrays(changes, CommissionChange, "x_"),
            **_arrays(entries, NewEntry, "e_"),
        },
    )


async def live_bindings(
    session: AsyncSession, pairs: Collection[tuple[str, str]], now: datetime
) -> dict[tuple[str, str], uuid.UUID]:
    """The distributor each (merchant, customer) is bound to, while the binding lasts."""
    rows = await session.execute(
        select(b.c.merchant_id, b.c.customer_id, b.c.distributor_id).where(
            tuple_(b.c.merchant_id, b.c.customer_id).in_(list(pairs)), b.c.expires_at > now
        )
    )
    return {(r.merchant_id, r.customer_id): r.distributor_id for r in rows}


_BIND_MANY = text(
    """
    INSERT INTO customer_binding (merchant_id, customer_id, distributor_id, bound_at, expires_at)
    SELECT * FROM unnest(CAST(:merchant_id AS text[]), CAST(:customer_id AS text[]),
        CAST(:distributor_id AS uuid[]), CAST(:bound_at AS timestamptz[]),
        CAST(:expires_at AS timestamptz[]))
    ON CONFLICT (merchant_id, customer_id) DO UPDATE SET distributor_id = excluded.distributor_id,
        bound_at = excluded.bound_at, expires_at = excluded.expires_at
    """
)


async def bind_many(session: AsyncSession, bindings: Sequence[NewBinding]) -> None:
    """``bind`` for several customers (each once) in one statement, in key order."""
    ordered = sorted(bindings, key=lambda x: (x.merchant_id, x.customer_id))
    await session.execute(_BIND_MANY, _arrays(ordered, NewBinding))


def _arrays(rows: Sequence[Any], model: type[Any], prefix: str = "") -> dict[str, list[Any]]:
    """One array parameter per field of ``model`` (a dataclass), for ``unnest``."""
    return {
        f"{prefix}{name}": [getattr(r, name) for r in rows] for name in model.__dataclass_fields__
    }


_INSERT_ATTRIBUTED = text(
    """
    WITH new_attribution AS (
        INSERT INTO attribution (source_type, source_id, merchant_id, customer_id,
            distributor_id, upline_id, link_id, leader_id, self_referral, paid_total,
            refunded_total, currency, completed)
        SELECT * FROM unnest(CAST(:a_source_type AS text[]), CAST(:a_source_id AS uuid[]),
            CAST(:a_merchant_id AS text[]), CAST(:a_customer_id AS text[]),
            CAST(:a_distributor_id AS uuid[]), CAST(:a_upline_id AS uuid[]),
            CAST(:a_link_id AS uuid[]), CAST(:a_leader_id AS uuid[]),
            CAST(:a_self_referral AS boolean[]), CAST(:a_paid_total AS bigint[]),
            CAST(:a_refunded_total AS bigint[]), CAST(:a_currency AS text[]),
            CAST(:a_completed AS boolean[]))
        ON CONFLICT DO NOTHING
        RETURNING source_type, source_id
    ), new_commission AS (
        INSERT INTO commission (id, source_type, source_id, merchant_id, distributor_id, level,
            payee, rate_bps, currency, amount, state)
        SELECT c.* FROM unnest(CAST(:c_id AS uuid[]), CAST(:c_source_type AS text[]),
            CAST(:c_source_id AS uuid[]), CAST(:c_merchant_id AS text[]),
            CAST(:c_distributor_id AS uuid[]), CAST(:c_level AS smallint[]),
            CAST(:c_payee AS text[]), CAST(:c_rate_bps AS integer[]),
            CAST(:c_currency AS text[]), CAST(:c_amount AS bigint[]), CAST(:c_state AS text[]))
            AS c(id, source_type, source_id, merchant_id, distributor_id, level, payee,
                 rate_bps, currency, amount, state)
        JOIN new_attribution n ON n.source_type = c.source_type AND n.source_id = c.source_id
        RETURNING id
    ), new_entry AS (
        INSERT INTO ledger_entry (merchant_id, commission_id, source_event, kind,
            debit_account, credit_account, amount, currency)
        SELECT e.* FROM unnest(CAST(:e_merchant_id AS text[]), CAST(:e_commission_id AS uuid[]),
            CAST(:e_source_event AS text[]), CAST(:e_kind AS text[]),
            CAST(:e_debit_account AS text[]), CAST(:e_credit_account AS text[]),
            CAST(:e_amount AS bigint[]), CAST(:e_currency AS text[]))
            AS e(merchant_id, commission_id, source_event, kind, debit_account,
                 credit_account, amount, currency)
        JOIN new_commission n ON n.id = e.commission_id
        ON CONFLICT DO NOTHING
    )
    SELECT source_type, source_id FROM new_attribution
    """
)


async def insert_attributed(
    session: AsyncSession,
    attributions: Sequence[NewAttribution],
    commissions: Sequence[NewCommission],
    entries: Sequence[NewEntry],
) -> set[SourceKey]:
    """Attributions, their commissions and the commissions' first entries, in one
    statement. A source attributed already (by a concurrent delivery) is left alone, and so
    are its commissions and entries here; returns the sources attributed now."""
    params = {
        **_arrays(attributions, NewAttribution, "a_"),
        **_arrays(commissions, NewCommission, "c_"),
        **_arrays(entries, NewEntry, "e_"),
    }
    inserted = await session.execute(_INSERT_ATTRIBUTED, params)
    return {(str(t), uuid.UUID(str(source_id))) for t, source_id in inserted}


async def get_attribution(
    session: AsyncSession, source_type: str, source_id: uuid.UUID, *, lock: bool = False
) -> AttributionRow | None:
    stmt = select(a).where(a.c.source_type == source_type, a.c.source_id == source_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return None if row is None else AttributionRow(**row._mapping)


async def insert_attribution(session: AsyncSession, values: Mapping[str, Any]) -> bool:
    """False when a concurrent delivery recorded it first (the caller reads and locks it)."""
    result = await session.execute(
        insert(a).values(**values).on_conflict_do_nothing().returning(a.c.source_id)
    )
    return result.first() is not None


async def update_attribution(
    session: AsyncSession, source_type: str, source_id: uuid.UUID, values: Mapping[str, Any]
) -> AttributionRow:
    row = (
        await session.execute(
            update(a)
            .where(a.c.source_type == source_type, a.c.source_id == source_id)
            .values(**values, updated_at=func.now())
            .returning(a)
        )
    ).one()
    return AttributionRow(**row._mapping)


async def binding(
    session: AsyncSession, merchant_id: str, customer_id: str, now: datetime
) -> uuid.UUID | None:
    """The distributor this customer is bound to, while the binding lasts."""
    found = await session.scalar(
        select(b.c.distributor_id).where(
            b.c.merchant_id == merchant_id, b.c.customer_id == customer_id, b.c.expires_at > now
        )
    )
    return found


async def bind(
    session: AsyncSession,
    merchant_id: str,
    customer_id: str,
    distributor_id: uuid.UUID,
    now: datetime,
    expires_at: datetime,
) -> None:
    stmt = insert(b).values(
        merchant_id=merchant_id,
        customer_id=customer_id,
        distributor_id=distributor_id,
        bound_at=now,
        expires_at=expires_at,
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[b.c.merchant_id, b.c.customer_id],
            set_={
                "distributor_id": stmt.excluded.distributor_id,
                "bound_at": stmt.excluded.bound_at,
                "expires_at": stmt.excluded.expires_at,
            },
        )
    )


async def insert_commission(session: AsyncSession, values: Mapping[str, Any]) -> None:
    await session.execute(insert(c).values(**values).on_conflict_do_nothing())


async def commissions_of(
    session: AsyncSession, source_type: str, source_id: uuid.UUID
) -> list[CommissionRow]:
    rows = await session.execute(
        select(c)
        .where(c.c.source_type == source_type, c.c.source_id == source_id)
        .order_by(c.c.payee, c.c.level)
        .with_for_update()
    )
    return [CommissionRow(**r._mapping) for r in rows]


async def update_commission(
    session: AsyncSession, commission_id: uuid.UUID, values: Mapping[str, Any]
) -> None:
    await session.execute(
        update(c).where(c.c.id == commission_id).values(**values, updated_at=func.now())
    )


async def post(session: AsyncSession, values: Mapping[str, Any]) -> None:
    """One ledger entry; the same (event, commission, kind, debit account) twice is once."""
    await session.execute(insert(e).values(**values).on_conflict_do_nothing())


async def balances(session: AsyncSession, accounts: list[str]) -> dict[str, int]:
    """Credits minus debits of each account, in one query (accounts with no entry: absent)."""
    credits = select(e.c.credit_account.label("account"), e.c.amount.label("amount")).where(
        e.c.credit_account.in_(accounts)
    )
    debits = select(e.c.debit_account.label("account"), (-e.c.amount).label("amount")).where(
        e.c.debit_account.in_(accounts)
    )
    both = union_all(credits, debits).subquery()
    rows = await session.execute(
        select(both.c.account, func.sum(both.c.amount)).group_by(both.c.account)
    )
    return {str(name): int(total) for name, total in rows}


async def balance(session: AsyncSession, account: str) -> int:
    return (await balances(session, [account])).get(account, 0)


async def unreconciled(session: AsyncSession) -> list[dict[str, Any]]:
    """Commissions whose amount is not what their ledger entries add up to (none, ever)."""
    net = (
        select(
            e.c.commission_id,
            func.sum(
                case(
                    (e.c.kind == "accrue", e.c.amount),
                    (e.c.kind == "reverse", -e.c.amount),
                    else_=0,
                )
            ).label("net"),
        )
        .group_by(e.c.commission_id)
        .subquery()
    )
    rows = await session.execute(
        select(c.c.id, c.c.amount, func.coalesce(net.c.net, 0).label("ledger"))
        .select_from(c.outerjoin(net, net.c.commission_id == c.c.id))
        .where(c.c.amount != func.coalesce(net.c.net, 0))
    )
    return [dict(r._mapping) for r in rows]


def commissions_query() -> Select[Any]:
    return select(c).join(distributor, distributor.c.id == c.c.distributor_id)


def commission_columns() -> Any:
    return c.c


def distributor_user_column() -> Any:
    return distributor.c.user_id


# --- views --------------------------------------------------------------------------------


async def daily_earnings(
    session: AsyncSession, distributor_id: uuid.UUID, tz: str, since: datetime
) -> list[dict[str, Any]]:
    """Per local day: commission earned (accrued) and taken back (reversed)."""
    mine = [f"distributor:{distributor_id}:{name}" for name in ("pending", "available", "owed")]
    day = func.date(func.timezone(tz, e.c.created_at)).label("day")
    rows = await session.execute(
        select(
            day,
            func.coalesce(func.sum(e.c.amount).filter(e.c.kind == "accrue"), 0).label("earned"),
            func.coalesce(func.sum(e.c.amount).filter(e.c.kind == "reverse"), 0).label("reversed"),
        )
        .where(
            e.c.created_at >= since,
            e.c.kind.in_(("accrue", "reverse")),
            (e.c.credit_account.in_(mine)) | (e.c.debit_account.in_(mine)),
        )
        .group_by(day)
        .order_by(day)
    )
    return [dict(r._mapping) for r in rows]


async def referred_customers(
    session: AsyncSession, distributor_id: uuid.UUID, limit: int
) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(
            a.c.customer_id,
            func.count().label("orders"),
            func.sum(a.c.paid_total - a.c.refunded_total).label("sales"),
        )
        .where(a.c.distributor_id == distributor_id, a.c.self_referral.is_(False))
        .group_by(a.c.customer_id)
        .order_by(func.count().desc(), a.c.customer_id)
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


async def leaderboard(
    session: AsyncSession, merchant_id: str, since: datetime, by: str, limit: int
) -> list[dict[str, Any]]:
    """Distributors of a merchant ranked by commission earned (level 1 and 2) or by the
    sales they brought (level 1), since ``since``."""
    if by == "commission":
        value = func.sum(c.c.amount).label("value")
        stmt = (
            select(c.c.distributor_id, value)
            .where(c.c.merchant_id == merchant_id, c.c.created_at >= since)
            .group_by(c.c.distributor_id)
        )
    else:
        value = func.sum(a.c.paid_total - a.c.refunded_total).label("value")
        stmt = (
            select(a.c.distributor_id, value)
            .where(
                a.c.merchant_id == merchant_id,
                a.c.created_at >= since,
                a.c.distributor_id.is_not(None),
                a.c.self_referral.is_(False),
            )
            .group_by(a.c.distributor_id)
        )
    ranked = stmt.subquery()
    rows = await session.execute(
        select(ranked.c.distributor_id, ranked.c.value, distributor.c.real_name)
        .join(distributor, distributor.c.id == ranked.c.distributor_id)
        .order_by(ranked.c.value.desc(), ranked.c.distributor_id)
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


async def program_daily(
    session: AsyncSession, merchant_id: str, tz: str, since: datetime
) -> list[dict[str, Any]]:
    """Per local day: the sales brought by distributors and the commission they cost."""
    day = func.date(func.timezone(tz, a.c.created_at)).label("day")
    sales = await session.execute(
        select(day, func.sum(a.c.paid_total - a.c.refunded_total).label("gmv"))
        .where(
            a.c.merchant_id == merchant_id,
            a.c.created_at >= since,
            a.c.distributor_id.is_not(None),
            a.c.self_referral.is_(False),
        )
        .group_by(day)
    )
    cday = func.date(func.timezone(tz, c.c.created_at)).label("day")
    cost = await session.execute(
        select(cday, func.sum(c.c.amount).label("commission"))
        .where(c.c.merchant_id == merchant_id, c.c.created_at >= since)
        .group_by(cday)
    )
    out: dict[Any, dict[str, Any]] = {}
    for r in sales:
        out.setdefault(r.day, {"day": r.day, "gmv": 0, "commission": 0})["gmv"] = int(r.gmv or 0)
    for r in cost:
        out.setdefault(r.day, {"day": r.day, "gmv": 0, "commission": 0})["commission"] = int(
            r.commission or 0
        )
    return [out[k] for k in sorted(out)]


async def self_referrals(
    session: AsyncSession, merchant_id: str, limit: int
) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(a.c.source_type, a.c.source_id, a.c.customer_id, a.c.distributor_id, a.c.created_at)
        .where(a.c.merchant_id == merchant_id, a.c.self_referral.is_(True))
        .order_by(a.c.created_at.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


async def repeat_payers(
    session: AsyncSession, merchant_id: str, since: datetime, at_least: int, limit: int
) -> list[dict[str, Any]]:
    """Customers with ``at_least`` paid orders through one distributor since ``since``: many
    orders from one payer is how a distributor farms commission on their own spending."""
    rows = await session.execute(
        select(
            a.c.distributor_id,
            a.c.customer_id,
            func.count().label("orders"),
            func.max(a.c.created_at).label("last"),
        )
        .where(
            a.c.merchant_id == merchant_id,
            a.c.created_at >= since,
            a.c.distributor_id.is_not(None),
            a.c.self_referral.is_(False),
        )
        .group_by(a.c.distributor_id, a.c.customer_id)
        .having(func.count() >= at_least)
        .order_by(func.count().desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


async def refunds_after_completion(
    session: AsyncSession, merchant_id: str, since: datetime, limit: int
) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(
            a.c.source_type,
            a.c.source_id,
            a.c.customer_id,
            a.c.distributor_id,
            a.c.refunded_after_completion_at,
        )
        .where(
            a.c.merchant_id == merchant_id,
            a.c.refunded_after_completion_at >= since,
            a.c.distributor_id.is_not(None),
        )
        .order_by(a.c.refunded_after_completion_at.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]
