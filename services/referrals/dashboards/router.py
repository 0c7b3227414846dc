"""Endpoints of the views (declared before ``/v1/distributors/{id}``: static paths first)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from services.referrals.dashboards import service
from services.referrals.dashboards.schemas import Dashboard, Leaderboard, ProgramReport
from services.referrals.dashboards.service import NotInProgram
from services.referrals.programs.router import MerchantQuery, merchant_for
from services.referrals.programs.service import DistributorNotFound
from shared.auth import AnyCaller, AnyStaff
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.timezones import TimezoneQuery, UnknownTimezone

Days = Annotated[int, Query(ge=1, le=366, description="How many days back.")]
_AUTH = (Unauthorized, Forbidden)


def dashboards_router() -> APIRouter:
    router = APIRouter(tags=["referrals"])

    @router.get(
        "/v1/distributors/leaderboard",
        response_model=Leaderboard,
        summary="A merchant's distributors ranked by commission or sales (names masked)",
        responses=responses(*_AUTH, NotInProgram),
    )
    async def leaderboard(
        principal: AnyCaller,
        session: SessionDep,
        merchant_id: Annotated[str, Query(min_length=1, max_length=100)],
        period: Literal["day", "week", "month"] = "week",
        by: Literal["commission", "sales"] = "commission",
    ) -> Leaderboard:
        return await service.leaderboard(session, principal, merchant_id, period, by)

    @router.get(
        "/v1/distributors/{distributor_id}/dashboard",
        response_model=Dashboard,
        summary="Balances, daily earnings, team and referred customers (masked)",
        responses=responses(*_AUTH, DistributorNotFound, UnknownTimezone),
    )
    async def dashboard(
        principal: AnyCaller,
        distributor_id: uuid.UUID,
        session: SessionDep,
        tz: TimezoneQuery = "Asia/Shanghai",
        days: Days = 30,
    ) -> Dashboard:
        return await service.dashboard(session, principal, distributor_id, tz, days)

    @router.get(
        "/v1/commissions/report",
        response_model=ProgramReport,
        summary="Program totals by day (GMV brought, commission cost), queues and flags (staff)",
        responses=responses(*_AUTH, UnknownTimezone),
    )
    async def report(
        principal: AnyStaff,
        session: SessionDep,
        merchant_id: MerchantQuery = None,
        tz: TimezoneQuery = "Asia/Shanghai",
        days: Days = 30,
    ) -> ProgramReport:
        merchant = merchant_for(principal, merchant_id)
        return await service.program_report(session, principal, merchant, tz, days)

    return router
