"""Endpoints of the deadline's aftermath: a backer pays a failed charge; admins cancel."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from services.crowdfund.charges.service import Charges
from services.crowdfund.pledges.router import PledgesDep
from services.crowdfund.pledges.schemas import PaymentMethodIn, PledgeOut
from services.crowdfund.pledges.service import PledgeNotFound, PledgeStateConflict
from services.crowdfund.projects.router import Admin, project_out
from services.crowdfund.projects.schemas import ProjectOut
from services.crowdfund.projects.service import ProjectNotFound, ProjectStateConflict
from shared.auth import Customer
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.idempotency import IDEMPOTENCY_ERRORS, IdempotencyKeyRequired
from shared.payments import (
    PaymentMethodUnavailable,
    PaymentNotConfirmable,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    PaymentsNotConfigured,
)

_AUTH = (Unauthorized, Forbidden)


def _charges(request: Request) -> Charges:
    charges: Charges = request.app.state.charges
    return charges


ChargesDep = Annotated[Charges, Depends(_charges)]
router = APIRouter()


@router.post(
    "/v1/pledges/{pledge_id}/confirm-payment",
    response_model=PledgeOut,
    tags=["pledges"],
    summary="In the fix window: pay the failed charge now (3D Secure if the bank asks)",
    responses=responses(
        *_AUTH,
        *IDEMPOTENCY_ERRORS,
        PledgeNotFound,
        PledgeStateConflict,
        PaymentsNotConfigured,
        PaymentProviderUnavailable,
        PaymentProviderRejected,
        PaymentMethodUnavailable,
        PaymentNotConfirmable,
    ),
)
async def confirm_payment(
    principal: Customer,
    pledge_id: uuid.UUID,
    body: PaymentMethodIn,
    pledges: PledgesDep,
    charges: ChargesDep,
    key: IdempotencyKeyRequired,
) -> PledgeOut:
    pledge = await pledges.backer_pledge(principal, pledge_id)
    payment = await charges.confirm(principal.sub, pledge, body.payment_method, key)
    return await pledges.out(pledge.id, principal, payment=payment)


@router.post(
    "/v1/projects/{project_id}/cancel",
    response_model=ProjectOut,
    tags=["projects"],
    summary="Cancel a project (admins): nobody is charged, everything paid is refunded",
    responses=responses(*_AUTH, ProjectNotFound, ProjectStateConflict),
)
async def cancel_project(
    principal: Admin, project_id: uuid.UUID, session: SessionDep, charges: ChargesDep
) -> ProjectOut:
    await charges.cancel_project(session, project_id)
    return await project_out(session, project_id)
