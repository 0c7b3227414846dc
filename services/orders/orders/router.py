"""Endpoints of orders: customers order, pay and ask for refunds; staff fulfil and refund."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.types import Scope

from services.orders.gifts.service import GiftAwaitingClaim
from services.orders.orders import reports, settlement
from services.orders.orders import repository as repo
from services.orders.orders import service as rules
from services.orders.orders.repository import OrderRow
from services.orders.orders.schemas import (
    CampaignStats,
    DecisionIn,
    OrderCreate,
    OrderFilters,
    OrderOut,
    PayIn,
    PaymentSummary,
    RefundDecisionOut,
    RefundRequestIn,
    ShipIn,
)
from services.orders.orders.service import (
    BalanceWindowClosed,
    CustomerLimitExceeded,
    OrderInFlight,
    OrderNotFound,
    Orders,
    OrderStateConflict,
    PresaleClosed,
    PresaleNotOpen,
    PresalePaused,
    PresaleSoldOut,
    RefundAmountTooHigh,
    RefundDecisionNotFound,
    VariantUnknown,
)
from services.orders.pickup.service import DestinationConflict, PointInactive, PointUnknown
from services.orders.presales.router import campaign_out
from services.orders.presales.schemas import CampaignOut
from services.orders.presales.service import CampaignNotFound, CampaignStateConflict, sold_out
from shared.auth import (
    AnyCaller,
    AnyStaff,
    CatalogStaff,
    Customer,
    MoneyStaff,
    Principal,
    require_merchant_role,
)
from shared.db import SessionDep
from shared.errors import DomainError, Forbidden, Unauthorized, responses
from shared.idempotency import IDEMPOTENCY_ERRORS, FreshKey, IdempotencyKeyRequired, PreClaim
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page
from shared.payments import (
    PaymentAmountAboveMaximum,
    PaymentMethodUnavailable,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    PaymentRow,
    PaymentsNotConfigured,
)
from shared.timezones import TimezoneQuery, UnknownTimezone

# The buyer's own acts (paying the balance, asking for a refund): no staff role may.
OrderBuyer = Annotated[Principal, require_merchant_role(others=("customer",))]
# Cancelling a campaign refunds every order: its owners only.
OwnerOnly = Annotated[Principal, require_merchant_role("owner")]
_AUTH = (Unauthorized, Forbidden)
_PAY = (
    *IDEMPOTENCY_ERRORS,
    PaymentsNotConfigured,
    PaymentProviderUnavailable,
    PaymentProviderRejected,
    PaymentMethodUnavailable,
    PaymentAmountAboveMaximum,
)


async def _orders(request: Request) -> Orders:
    # async: a plain def would run in the thread pool, a thread hop on every request.
    orders: Orders = request.app.state.orders
    return orders


OrdersDep = Annotated[Orders, Depends(_orders)]


PLACE_ROUTE = "/v1/presales/{campaign_id}/orders"
_PLACE_PATH = re.compile(r"/v1/presales/([0-9a-fA-F-]{32,36})/orders")


async def _sold_out_before_claim(
    scope: Scope, body: bytes, principal: Principal | None
) -> DomainError | None:
    """The answer of ``place`` to a customer's valid order on a campaign this process found
    sold out a moment ago, given before its Idempotency-Key is claimed (most answers of a
    rush: docs/orders.md, "The hot path"). Anything else (no valid customer token, a body the
    endpoint would refuse, a campaign not known sold out) runs the endpoint as usual."""
    match = _PLACE_PATH.fullmatch(scope["path"])
    if match is None or principal is None or not principal.has("customer"):
        return None
    content_type = next((v for k, v in scope["headers"] if k.lower() == b"content-type"), b"")
    if not content_type.lower().startswith(b"application/json"):
        return None
    try:
        campaign_id = uuid.UUID(match[1])
    except ValueError:
        return None
    if sold_out.left(campaign_id) is None:
        return None
    try:
        order = OrderCreate.model_validate_json(body)
    except ValidationError:
        return None
    return rules.sold_out_refusal(campaign_id, order.quantity)


# Registered with the app (services/orders/app.py).
PLACE_PRECHECK = PreClaim(PLACE_ROUTE, _PLACE_PATH, _sold_out_before_claim)


def _with_payment(order: OrderRow, payment: PaymentRow | None, principal: Principal) -> OrderOut:
    summary = (
        None
        if payment is None
        else PaymentSummary.of(payment, show_secret=payment.customer_id == principal.sub)
    )
    return OrderOut.of(order, summary)


def orders_router() -> APIRouter:
    router = APIRouter(tags=["orders"])

    @router.post(
        PLACE_ROUTE,
        status_code=status.HTTP_201_CREATED,
        response_model=OrderOut,
        summary="Order: reserve units and start the deposit (or full) payment",
        responses=responses(
            *_AUTH,
            *_PAY,
            CampaignNotFound,
            PresaleNotOpen,
            PresalePaused,
            PresaleClosed,
            PresaleSoldOut,
            VariantUnknown,
            CustomerLimitExceeded,
            OrderInFlight,
            DestinationConflict,
            PointUnknown,
            PointInactive,
        ),
    )
    async def place(
        principal: Customer,
        campaign_id: uuid.UUID,
        body: OrderCreate,
        orders: OrdersDep,
        key: IdempotencyKeyRequired,
        fresh: FreshKey,
    ) -> OrderOut:
        order, payment = await orders.place(principal, campaign_id, body, key, fresh_key=fresh)
        return _with_payment(order, payment, principal)

    @router.get(
        "/v1/orders",
        response_model=Page[OrderOut],
        summary="Orders, newest first: customers see theirs, staff their merchant's",
        responses=responses(*_AUTH, InvalidCursor),
    )
    async def list_orders(
        principal: AnyCaller,
        session: SessionDep,
        page: PageDep,
        filters: Annotated[OrderFilters, Depends()],
    ) -> Page[OrderOut]:
        stmt = rules.visible_orders(principal, filters)
        cols = repo.order_columns()
        rows, cursor = await fetch_page(
            session, stmt, sort=cols.created_at, key=cols.id, params=page
        )
        return Page(items=[OrderOut.of(OrderRow(**r._mapping)) for r in rows], next_cursor=cursor)

    @router.get(
        "/v1/orders/export.csv",
        response_class=StreamingResponse,
        summary="The merchant's orders as CSV, with the list's filters (staff)",
        responses={
            200: {"content": {"text/csv": {}}, "description": "One row per order."},
            **responses(*_AUTH),
        },
    )
    async def export(
        principal: AnyStaff, request: Request, filters: Annotated[OrderFilters, Depends()]
    ) -> StreamingResponse:
        cols = repo.order_columns()
        stmt = rules.visible_orders(principal, filters).order_by(cols.created_at, cols.id)
        return StreamingResponse(
            reports.export_csv(request.app.state.sessionmaker, stmt),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="orders.csv"'},
        )

    @router.get(
        "/v1/orders/{order_id}",
        response_model=OrderOut,
        summary="An order, with the payment to complete (or the balance's)",
        responses=responses(*_AUTH, OrderNotFound),
    )
    async def get(
        principal: AnyCaller, order_id: uuid.UUID, session: SessionDep, orders: OrdersDep
    ) -> OrderOut:
        order = await orders.visible_order(session, principal, order_id)
        stage = rules.BALANCE if order.balance_amount else rules.FIRST
        return _with_payment(order, await orders.payment_of(session, order, stage), principal)

    @router.post(
        "/v1/orders/{order_id}/balance-payment",
        status_code=status.HTTP_201_CREATED,
        response_model=OrderOut,
        summary="Pay the balance (尾款) once the campaign has succeeded",
        responses=responses(*_AUTH, *_PAY, OrderNotFound, OrderStateConflict, BalanceWindowClosed),
    )
    async def pay_balance(
        principal: OrderBuyer,
        order_id: uuid.UUID,
        body: PayIn,
        orders: OrdersDep,
        key: IdempotencyKeyRequired,
    ) -> OrderOut:
        order, payment = await orders.pay_balance(principal, order_id, body)
        return _with_payment(order, payment, principal)

    @router.post(
        "/v1/orders/{order_id}/ship",
        response_model=OrderOut,
        summary="Mark a paid order shipped (staff)",
        responses=responses(*_AUTH, OrderNotFound, OrderStateConflict, GiftAwaitingClaim),
    )
    async def ship(
        principal: CatalogStaff,
        order_id: uuid.UUID,
        body: ShipIn,
        session: SessionDep,
        orders: OrdersDep,
    ) -> OrderOut:
        order = await orders.ship(session, principal, order_id, body.carrier, body.tracking_number)
        return OrderOut.of(order)

    @router.post(
        "/v1/orders/{order_id}/deliver",
        response_model=OrderOut,
        summary="Mark a shipped order delivered; it completes after the return window (staff)",
        responses=responses(*_AUTH, OrderNotFound, OrderStateConflict),
    )
    async def deliver(
        principal: CatalogStaff, order_id: uuid.UUID, session: SessionDep, orders: OrdersDep
    ) -> OrderOut:
        return OrderOut.of(await orders.deliver(session, principal, order_id))

    @router.post(
        "/v1/orders/{order_id}/refund-requests",
        status_code=status.HTTP_201_CREATED,
        response_model=RefundDecisionOut,
        summary="Ask for a refund, with a reason (the buyer); staff approve or reject it",
        responses=responses(*_AUTH, *IDEMPOTENCY_ERRORS, OrderNotFound, RefundAmountTooHigh),
    )
    async def request_refund(
        principal: OrderBuyer,
        order_id: uuid.UUID,
        body: RefundRequestIn,
        session: SessionDep,
        orders: OrdersDep,
        key: IdempotencyKeyRequired,
    ) -> RefundDecisionOut:
        decision = await orders.request_refund(
            session, principal, order_id, body.amount, body.reason
        )
        return RefundDecisionOut.of(decision)

    @router.get(
        "/v1/orders/{order_id}/refunds",
        response_model=list[RefundDecisionOut],
        summary="The order's refund requests and decisions",
        responses=responses(*_AUTH, OrderNotFound),
    )
    async def refunds(
        principal: AnyCaller, order_id: uuid.UUID, session: SessionDep, orders: OrdersDep
    ) -> list[RefundDecisionOut]:
        order = await orders.visible_order(session, principal, order_id)
        return [RefundDecisionOut.of(d) for d in await repo.refund_decisions(session, order.id)]

    @router.post(
        "/v1/orders/{order_id}/refunds",
        status_code=status.HTTP_201_CREATED,
        response_model=RefundDecisionOut,
        summary="Refund (staff), fully or partly; a full refund ends the order",
        responses=responses(
            *_AUTH, *IDEMPOTENCY_ERRORS, OrderNotFound, RefundAmountTooHigh, OrderStateConflict
        ),
    )
    async def staff_refund(
        principal: MoneyStaff,
        order_id: uuid.UUID,
        body: RefundRequestIn,
        session: SessionDep,
        orders: OrdersDep,
        key: IdempotencyKeyRequired,
    ) -> RefundDecisionOut:
        decision = await orders.staff_refund(session, principal, order_id, body.amount, body.reason)
        return RefundDecisionOut.of(decision)

    @router.post(
        "/v1/orders/{order_id}/refunds/{refund_id}/approve",
        response_model=RefundDecisionOut,
        summary="Approve a customer's refund request (staff)",
        responses=responses(
            *_AUTH, OrderNotFound, RefundDecisionNotFound, OrderStateConflict, RefundAmountTooHigh
        ),
    )
    async def approve(
        principal: MoneyStaff,
        order_id: uuid.UUID,
        refund_id: uuid.UUID,
        body: DecisionIn,
        session: SessionDep,
        orders: OrdersDep,
    ) -> RefundDecisionOut:
        decision = await orders.decide_request(
            session, principal, order_id, refund_id, approve=True, note=body.note
        )
        return RefundDecisionOut.of(decision)

    @router.post(
        "/v1/orders/{order_id}/refunds/{refund_id}/reject",
        response_model=RefundDecisionOut,
        summary="Reject a customer's refund request (staff)",
        responses=responses(*_AUTH, OrderNotFound, RefundDecisionNotFound, OrderStateConflict),
    )
    async def reject(
        principal: MoneyStaff,
        order_id: uuid.UUID,
        refund_id: uuid.UUID,
        body: DecisionIn,
        session: SessionDep,
        orders: OrdersDep,
    ) -> RefundDecisionOut:
        decision = await orders.decide_request(
            session, principal, order_id, refund_id, approve=False, note=body.note
        )
        return RefundDecisionOut.of(decision)

    @router.get(
        "/v1/presales/{campaign_id}/stats",
        response_model=CampaignStats,
        summary="Units, buyers, money in and out, conversion and a daily series (staff)",
        responses=responses(*_AUTH, CampaignNotFound, UnknownTimezone),
    )
    async def stats(
        principal: AnyStaff,
        campaign_id: uuid.UUID,
        session: SessionDep,
        tz: TimezoneQuery = "Asia/Shanghai",
    ) -> CampaignStats:
        return await reports.campaign_stats(session, principal, campaign_id, tz)

    @router.get(
        "/v1/presales/{campaign_id}/demand.csv",
        response_class=Response,
        summary="Units to produce per variant, once the campaign has succeeded (staff)",
        responses={
            200: {"content": {"text/csv": {}}, "description": "One row per variant."},
            **responses(*_AUTH, CampaignNotFound, CampaignStateConflict),
        },
    )
    async def demand(principal: AnyStaff, campaign_id: uuid.UUID, session: SessionDep) -> Response:
        body = await reports.demand_csv(session, principal, campaign_id)
        return Response(
            body,
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="demand-{campaign_id}.csv"'},
        )

    @router.post(
        "/v1/presales/{campaign_id}/fulfil",
        response_model=CampaignOut,
        summary="Mark a succeeded campaign fulfilled once every paid order has shipped (staff)",
        responses=responses(*_AUTH, CampaignNotFound, CampaignStateConflict),
    )
    async def fulfil(
        principal: CatalogStaff, campaign_id: uuid.UUID, session: SessionDep, orders: OrdersDep
    ) -> CampaignOut:
        await settlement.mark_fulfilled(orders, session, principal, campaign_id)
        return await campaign_out(session, campaign_id)

    @router.post(
        "/v1/presales/{campaign_id}/cancel",
        response_model=CampaignOut,
        summary="Cancel a campaign: every order ends and everything paid is refunded (staff)",
        responses=responses(*_AUTH, CampaignNotFound, CampaignStateConflict),
    )
    async def cancel_campaign(
        principal: OwnerOnly, campaign_id: uuid.UUID, session: SessionDep, orders: OrdersDep
    ) -> CampaignOut:
        await settlement.cancel_campaign(orders, session, principal, campaign_id)
        return await campaign_out(session, campaign_id)

    return router
