"""HTTP endpoints of the payment layer, mounted by the services that take payments.

``payments_router()``: the customer and staff endpoints (``/v1/payments``,
``/v1/payment-methods``); ``webhook_router()``: ``POST /webhooks/stripe``, which the gateway
exposes as ``/v1/webhooks/<service>/stripe``.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, status
from fastapi.responses import JSONResponse

from shared.auth import (
    AnyCaller,
    CurrentUser,
    MoneyStaff,
    Principal,
    ensure_staff_of,
    require_merchant_role,
    require_roles,
)
from shared.errors import Forbidden, Unauthorized, problem_response, responses
from shared.idempotency import IDEMPOTENCY_ERRORS, IdempotencyKeyRequired
from shared.money import UnknownCurrency
from shared.payments import _payments as service
from shared.payments import _setups as setups
from shared.payments import _state as state
from shared.payments._errors import (
    CaptureAmountInvalid,
    CaptureMethodUnsupported,
    PaymentAmountAboveMaximum,
    PaymentAmountInvalid,
    PaymentDeclined,
    PaymentMethodUnavailable,
    PaymentNotCancelable,
    PaymentNotCapturable,
    PaymentNotConfirmable,
    PaymentNotFound,
    PaymentNotRefundable,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    PaymentReferenceReserved,
    PaymentSetupNotFound,
    PaymentSimulationUnavailable,
    PaymentsNotConfigured,
    RefundAmountInvalid,
    RefundExceedsRefundable,
    WebhookPayloadInvalid,
    WebhookSignatureInvalid,
)
from shared.payments._repository import PaymentRow
from shared.payments._schemas import (
    CaptureIn,
    ConfirmIn,
    PaymentCreate,
    PaymentOut,
    RefundCreate,
    RefundOut,
    SetupCreate,
    SetupOut,
    SimulatedActionIn,
    WebhookReceipt,
)
from shared.payments._state import PaymentContext
from shared.payments._webhooks import SIGNATURE_HEADER, handle_webhook
from shared.payments._wiring import WEBHOOK_PATH

__all__ = ["payments_router", "simulated_router", "webhook_router"]


async def _context(request: Request) -> PaymentContext:
    ctx = getattr(request.app.state, "payments", None)
    if not isinstance(ctx, PaymentContext):
        raise PaymentsNotConfigured()
    return ctx


PaymentsDep = Annotated[PaymentContext, Depends(_context)]
Customer = Annotated[Principal, require_roles("customer")]
# A payment's payer (no staff role acts as one), and the payer or the merchant's money staff.
Payer = Annotated[Principal, require_merchant_role(others=("customer",))]
PayerOrMoneyStaff = Annotated[
    Principal, require_merchant_role("owner", "finance", others=("customer",))
]
_AUTH = (Unauthorized, Forbidden)
_COMMON = (*_AUTH, PaymentsNotConfigured, PaymentProviderUnavailable, PaymentProviderRejected)


def _may_see(principal: Principal, payment: PaymentRow) -> bool:
    """The payer, staff of the payment's merchant and admins see a payment."""
    return payment.customer_id == principal.sub or principal.acts_for(payment.merchant_id)


async def _payment_for_owner(
    principal: Payer, ctx: PaymentsDep, payment_id: uuid.UUID
) -> PaymentRow:
    """The payment, when ``principal`` paid it (admins see every payment). Anyone else gets
    the 404 of a payment that does not exist: whether it exists is not theirs to learn."""
    view = await service.get_payment_view(ctx, payment_id)
    if not principal.is_admin and view.payment.customer_id != principal.sub:
        raise PaymentNotFound()
    return view.payment


async def _payment_for_staff(
    principal: MoneyStaff, ctx: PaymentsDep, payment_id: uuid.UUID
) -> PaymentRow:
    """The payment, when ``principal`` is staff of its merchant (or an admin). The payer may
    see it but not act as staff on it (403); anyone else gets 404."""
    view = await service.get_payment_view(ctx, payment_id)
    if not _may_see(principal, view.payment):
        raise PaymentNotFound()
    ensure_staff_of(principal, view.payment.merchant_id)
    return view.payment


OwnPayment = Annotated[PaymentRow, Depends(_payment_for_owner)]
MerchantPayment = Annotated[PaymentRow, Depends(_payment_for_staff)]


async def _out(ctx: PaymentContext, payment_id: uuid.UUID, principal: Principal) -> PaymentOut:
    view = await service.get_payment_view(ctx, payment_id)
    return PaymentOut.of(view, show_secret=view.payment.customer_id == principal.sub)


def _declined_or(request: Request, out: PaymentOut, *, status_code: int) -> JSONResponse:
    """A declined attempt is recorded (committed already) and answered with 402."""
    body = out.model_dump(mode="json")
    if out.status == "requires_payment_method" and out.failure_code is not None:
        return problem_response(
            request,
            status=PaymentDeclined.status,
            code=PaymentDeclined.code,
            title=PaymentDeclined.title,
            detail=out.failure_message,
            extra={"decline_code": out.failure_code, "payment": body},
        )
    return JSONResponse(body, status_code=status_code)


def payments_router() -> APIRouter:
    router = APIRouter(tags=["payments"])

    @router.post(
        "/v1/payments",
        status_code=status.HTTP_201_CREATED,
        response_model=PaymentOut,
        summary="Start a payment attempt (and confirm it when a payment method is given)",
        responses=responses(
            *_COMMON,
            *IDEMPOTENCY_ERRORS,
            PaymentDeclined,
            PaymentMethodUnavailable,
            UnknownCurrency,
            PaymentAmountInvalid,
            PaymentAmountAboveMaximum,
            CaptureMethodUnsupported,
            PaymentReferenceReserved,
        ),
    )
    async def create_payment(
        principal: Customer,
        request: Request,
        body: PaymentCreate,
        ctx: PaymentsDep,
        key: IdempotencyKeyRequired,
    ) -> JSONResponse:
        if ctx.hooks.owns(body.reference):
            raise PaymentReferenceReserved()
        payment_id = state.new_payment_id(ctx.service, "api", principal.sub, key)
        row = await service.create_payment(
            ctx,
            payment_id=payment_id,
            reference=body.reference,
            merchant_id=body.merchant_id,
            customer_id=principal.sub,
            amount=body.amount,
            currency=body.currency,
            method=body.method,
            capture_method=body.capture_method,
            payment_method=body.payment_method,
        )
        out = await _out(ctx, row.id, principal)
        return _declined_or(request, out, status_code=status.HTTP_201_CREATED)

    @router.get(
        "/v1/payments/{payment_id}",
        response_model=PaymentOut,
        summary="A payment, its refunds and its status history",
        responses=responses(*_AUTH, PaymentsNotConfigured, PaymentNotFound),
    )
    async def get_payment(
        principal: AnyCaller, payment_id: uuid.UUID, ctx: PaymentsDep
    ) -> PaymentOut:
        view = await service.get_payment_view(ctx, payment_id)
        if not _may_see(principal, view.payment):
            raise PaymentNotFound()
        return PaymentOut.of(view, show_secret=view.payment.customer_id == principal.sub)

    @router.post(
        "/v1/payments/{payment_id}/confirm",
        response_model=PaymentOut,
        summary="Confirm the payment with a payment method (again, after a decline)",
        responses=responses(
            *_COMMON,
            *IDEMPOTENCY_ERRORS,
            PaymentNotFound,
            PaymentNotConfirmable,
            PaymentDeclined,
            PaymentMethodUnavailable,
        ),
    )
    async def confirm_payment(
        principal: CurrentUser,
        request: Request,
        body: ConfirmIn,
        payment: OwnPayment,
        ctx: PaymentsDep,
        key: IdempotencyKeyRequired,
    ) -> JSONResponse:
        row = await service.confirm_payment(
            ctx, payment.id, payment_method=body.payment_method, request_key=key
        )
        out = await _out(ctx, row.id, principal)
        return _declined_or(request, out, status_code=status.HTTP_200_OK)

    @router.post(
        "/v1/payments/{payment_id}/capture",
        response_model=PaymentOut,
        summary="Capture an authorized payment, fully or partly (merchant staff)",
        responses=responses(
            *_COMMON,
            *IDEMPOTENCY_ERRORS,
            PaymentNotFound,
            PaymentNotCapturable,
            CaptureAmountInvalid,
        ),
    )
    async def capture_payment(
        principal: CurrentUser,
        body: CaptureIn,
        payment: MerchantPayment,
        ctx: PaymentsDep,
        key: IdempotencyKeyRequired,
    ) -> PaymentOut:
        row = await service.capture_payment(ctx, payment.id, amount=body.amount)
        return await _out(ctx, row.id, principal)

    @router.post(
        "/v1/payments/{payment_id}/cancel",
        response_model=PaymentOut,
        summary="Cancel a payment that has not been paid (the payer or merchant staff)",
        responses=responses(*_COMMON, PaymentNotFound, PaymentNotCancelable),
    )
    async def cancel_payment(
        principal: PayerOrMoneyStaff, payment_id: uuid.UUID, ctx: PaymentsDep
    ) -> PaymentOut:
        view = await service.get_payment_view(ctx, payment_id)
        if not _may_see(principal, view.payment):
            raise PaymentNotFound()
        if view.payment.customer_id != principal.sub:
            ensure_staff_of(principal, view.payment.merchant_id)
        row = await service.cancel_payment(ctx, payment_id)
        return await _out(ctx, row.id, principal)

    @router.post(
        "/v1/payments/{payment_id}/refunds",
        status_code=status.HTTP_201_CREATED,
        response_model=RefundOut,
        summary="Refund a paid payment, fully or partly (merchant staff)",
        responses=responses(
            *_COMMON,
            *IDEMPOTENCY_ERRORS,
            PaymentNotFound,
            PaymentNotRefundable,
            RefundAmountInvalid,
            RefundExceedsRefundable,
        ),
    )
    async def refund_payment(
        principal: CurrentUser,
        body: RefundCreate,
        payment: MerchantPayment,
        ctx: PaymentsDep,
        key: IdempotencyKeyRequired,
    ) -> RefundOut:
        refund = await service.refund_payment(
            ctx,
            payment.id,
            amount=body.amount,
            reason=body.reason,
            request_key=f"api:{principal.sub}:{key}",
            requested_by=principal.sub,
        )
        return RefundOut.of(refund)

    @router.post(
        "/v1/payment-methods/setup",
        status_code=status.HTTP_201_CREATED,
        response_model=SetupOut,
        summary="Save a card for later off-session charges (a SetupIntent)",
        responses=responses(*_COMMON, *IDEMPOTENCY_ERRORS),
    )
    async def create_setup(
        principal: Customer,
        body: SetupCreate,
        ctx: PaymentsDep,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> SetupOut:
        setup_id = (
            state.new_setup_id(ctx.service, principal.sub, idempotency_key)
            if idempotency_key
            else uuid.uuid4()
        )
        row = await setups.create_setup(
            ctx,
            setup_id=setup_id,
            customer_id=principal.sub,
            payment_method=body.payment_method,
        )
        return SetupOut.of(row)

    @router.get(
        "/v1/payment-methods/setup/{setup_id}",
        response_model=SetupOut,
        summary="A saved payment method's setup",
        responses=responses(*_AUTH, PaymentsNotConfigured, PaymentSetupNotFound),
    )
    async def get_setup(principal: AnyCaller, setup_id: uuid.UUID, ctx: PaymentsDep) -> SetupOut:
        row = await setups.get_setup(ctx, setup_id)
        if row.customer_id != principal.sub and not principal.is_admin:
            raise PaymentSetupNotFound()
        return SetupOut.of(row)

    return router


def simulated_router(prefix: str = "/v1/payments") -> APIRouter:
    """The simulated provider's own endpoint: mounted only where it is the provider, so that
    nothing of it exists beside a real one. ``prefix``: where the service's payments are
    reached through the gateway (``/v1/payments`` is the orders service's; crowdfund's are
    under ``/v1/pledges/payments``)."""
    router = APIRouter(prefix=prefix, tags=["payments (simulated provider)"])

    @router.post(
        "/{payment_id}/simulate-action",
        response_model=PaymentOut,
        summary="Simulated provider only: complete or fail the customer action",
        description=(
            "Stands for what the customer does at their bank or wallet: 3D Secure, scanning "
            "the WeChat Pay QR code, returning from Alipay."
        ),
        responses=responses(
            *_COMMON, PaymentNotFound, PaymentNotConfirmable, PaymentSimulationUnavailable
        ),
    )
    async def simulate_action(
        principal: CurrentUser,
        request: Request,
        body: SimulatedActionIn,
        payment: OwnPayment,
        ctx: PaymentsDep,
    ) -> JSONResponse:
        row = await service.complete_simulated_action(ctx, payment.id, succeed=body.succeed)
        out = await _out(ctx, row.id, principal)
        return _declined_or(request, out, status_code=status.HTTP_200_OK)

    return router


def webhook_router() -> APIRouter:
    router = APIRouter(tags=["webhooks"])

    @router.post(
        WEBHOOK_PATH,
        response_model=WebhookReceipt,
        summary="Payment provider events (Stripe-signed)",
        description=(
            "Verifies the `Stripe-Signature` header with the endpoint secret, records the "
            "event id once and applies it in the same transaction. Redeliveries, late and "
            "unknown events answer 200 without effect; a body that is not a well-formed "
            "event is 400."
        ),
        responses=responses(PaymentsNotConfigured, WebhookSignatureInvalid, WebhookPayloadInvalid),
    )
    async def receive(
        request: Request,
        ctx: PaymentsDep,
        signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
    ) -> WebhookReceipt:
        result = await handle_webhook(ctx, await request.body(), signature)
        return WebhookReceipt(
            event_id=result.event_id, event_type=result.event_type, status=result.status
        )

    return router
