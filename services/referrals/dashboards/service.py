"""The views: a distributor's dashboard, a merchant's leaderboard, the staff's report.

Other people appear masked: a customer as ``ab***yz``, a distributor by the first character
of their name. Nobody sees another distributor's dashboard; staff see their merchant's.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.commissions import repository as ledger
from services.referrals.commissions.service import balances
from services.referrals.dashboards.schemas import (
    DailyEarning,
    Dashboard,
    Flag,
    Leaderboard,
    ProgramDay,
    ProgramReport,
    Rank,
    ReferredCustomer,
    TeamMember,
)
from services.referrals.programs import repository as programs
from services.referrals.programs.service import visible_distributor
from services.referrals.withdrawals import repository as withdrawals
from shared.auth import Principal, ensure_staff_of
from shared.errors import Forbidden
from shared.timezones import check_timezone

_PERIODS = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30)}
_LIST = 50
# Paid orders from one customer through one distributor, within the report's period, that
# are worth a look.
REPEAT_PAYER_ORDERS = 5


class NotInProgram(Forbidden):
    code = "not_in_program"
    title = "Only the merchant's distributors and staff see its leaderboard"


def mask_customer(customer_id: str) -> str:
    return customer_id[:2] + "***" + customer_id[-2:] if len(customer_id) > 4 else "***"


def mask_name(name: str) -> str:
    return name[:1] + "*"


async def dashboard(
    session: AsyncSession, principal: Principal, distributor_id: uuid.UUID, tz: str, days: int
) -> Dashboard:
    found = await visible_distributor(session, principal, distributor_id)
    since = datetime.now(UTC) - timedelta(days=days)
    daily = await ledger.daily_earnings(session, found.id, check_timezone(tz), since)
    return Dashboard(
        distributor_id=found.id,
        balances=await balances(session, found.id),
        daily=[DailyEarning(**d) for d in daily],
        team=[
            TeamMember(
                id=m.id, name=mask_name(m.real_name), status=m.status, joined_at=m.created_at
            )
            for m in await programs.team(session, found.id, _LIST)
        ],
        customers=[
            ReferredCustomer(
                customer=mask_customer(c["customer_id"]),
                orders=c["orders"],
                sales=int(c["sales"] or 0),
            )
            for c in await ledger.referred_customers(session, found.id, _LIST)
        ],
    )


async def leaderboard(
    session: AsyncSession, principal: Principal, merchant_id: str, period: str, by: str
) -> Leaderboard:
    if not (
        principal.acts_for(merchant_id)
        or await programs.distributor_of(session, merchant_id, principal.sub) is not None
    ):
        raise NotInProgram()
    since = datetime.now(UTC) - _PERIODS[period]
    rows = await ledger.leaderboard(session, merchant_id, since, by, _LIST)
    return Leaderboard(
        merchant_id=merchant_id,
        period=period,
        by=by,
        ranks=[
            Rank(
                rank=i,
                distributor_id=r["distributor_id"],
                name=mask_name(r["real_name"]),
                value=int(r["value"] or 0),
            )
            for i, r in enumerate(rows, start=1)
        ],
    )


async def program_report(
    session: AsyncSession, principal: Principal, merchant_id: str, tz: str, days: int
) -> ProgramReport:
    ensure_staff_of(principal, merchant_id)
    since = datetime.now(UTC) - timedelta(days=days)
    return ProgramReport(
        merchant_id=merchant_id,
        pending_applications=await programs.count_by_status(session, merchant_id, "pending"),
        pending_withdrawals=await withdrawals.count_by_status(session, merchant_id, "requested"),
        daily=[
            ProgramDay(**d)
            for d in await ledger.program_daily(session, merchant_id, check_timezone(tz), since)
        ],
        flags=[
            *(
                Flag(
                    kind="self_referral",
                    source_type=f["source_type"],
                    source_id=f["source_id"],
                    customer=f["customer_id"],
                    distributor_id=f["distributor_id"],
                    at=f["created_at"],
                )
                for f in await ledger.self_referrals(session, merchant_id, _LIST)
            ),
            *(
                Flag(
                    kind="repeat_payer",
                    customer=f["customer_id"],
                    distributor_id=f["distributor_id"],
                    at=f["last"],
                    orders=f["orders"],
                )
                for f in await ledger.repeat_payers(
                    session, merchant_id, since, REPEAT_PAYER_ORDERS, _LIST
                )
            ),
            *(
                Flag(
                    kind="refund_after_completion",
                    source_type=f["source_type"],
                    source_id=f["source_id"],
                    customer=f["customer_id"],
                    distributor_id=f["distributor_id"],
                    at=f["refunded_after_completion_at"],
                )
                for f in await ledger.refunds_after_completion(session, merchant_id, since, _LIST)
            ),
        ],
    )
