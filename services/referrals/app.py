"""The referrals service: `uvicorn services.referrals.app:create_app --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from services.referrals.commissions import batch as commission_batch
from services.referrals.commissions.router import commissions_router
from services.referrals.commissions.service import RELEASE_JOB, release_held
from services.referrals.config import ReferralsSettings, get_settings
from services.referrals.dashboards.router import dashboards_router
from services.referrals.links.router import links_router
from services.referrals.models import payments, platform
from services.referrals.programs.router import programs_router
from services.referrals.withdrawals.router import withdrawals_router
from services.referrals.withdrawals.service import PAYOUT_JOB, REFERENCE_PREFIX, Payouts
from shared.app import ServiceSpec, create_service_app
from shared.events import EventHandlers
from shared.events.contracts import (
    OrderCancelled,
    OrderCompleted,
    OrderPaid,
    OrderRefunded,
    PledgeCharged,
    PledgeDropped,
    PledgeRefunded,
)
from shared.payments import (
    PaymentHooks,
    close_payments,
    install_payments,
    run_simulated_provider,
    webhook_router,
)
from shared.scheduler import Detached


def create_app(settings: ReferralsSettings | None = None) -> FastAPI:
    handlers = EventHandlers()
    # Every delivery of order and pledge events, one or a batch, takes the set-based path.
    handlers.on_batch(
        OrderPaid,
        OrderRefunded,
        OrderCompleted,
        OrderCancelled,
        PledgeCharged,
        PledgeRefunded,
        PledgeDropped,
    )(commission_batch.on_events)
    payouts = Payouts()
    hooks = PaymentHooks()
    hooks.register_payout(REFERENCE_PREFIX, payouts.on_payout_change)
    install = install_payments(payments, hooks)

    async def startup(app: FastAPI) -> None:
        # Payments here are payouts only (Connect transfers of withdrawals).
        await install(app)
        payouts.sessionmaker = app.state.sessionmaker
        payouts.payments = app.state.payments
        app.state.payouts = payouts

    spec = ServiceSpec(
        name="referrals",
        title="Qunbuy referrals: links, attribution, commissions, withdrawals",
        tables=platform,
        # The views first: their static paths must win over /v1/distributors/{id}.
        routers=[
            dashboards_router(),
            programs_router(),
            links_router(),
            commissions_router(),
            withdrawals_router(),
            webhook_router(),
        ],
        event_handlers=handlers,
        on_startup=[startup],
        on_shutdown=[close_payments],
        periodic=[run_simulated_provider],
        jobs={RELEASE_JOB: release_held, PAYOUT_JOB: Detached(payouts.run)},
    )
    return create_service_app(spec, settings or get_settings())
