"""Payments and refunds: short transactions around each provider call (no connection or
row lock is held while the provider works; docs/architecture.md)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from shared.payments import _repository as repo
from shared.payments._errors import (
    CaptureAmountInvalid,
    CaptureMethodUnsupported,
    PaymentNotCancelable,
    PaymentNotCapturable,
    PaymentNotConfirmable,
    PaymentNotFound,
    PaymentNotRefundable,
    PaymentProviderRejected,
    PaymentSimulationUnavailable,
    RefundAmountInvalid,
    RefundExceedsRefundable,
)
from shared.payments._provider import (
    CaptureMethod,
    Method,
    PaymentRequest,
    ProviderPayment,
)
from shared.payments._repository import PaymentRow, RefundRow
from shared.payments._simulated import SimulatedProvider
from shared.payments._state import (
    CANCELABLE,
    CONFIRMABLE,
    CREATING,
    PaymentContext,
    PaymentView,
    _apply_payment,
    _check_amount,
    _check_method_owner,
    _locked,
    _metadata,
    _provider_call,
    _record_intent,
    _record_refund,
    _refund_id,
    create_at_provider,
    idempotency_key,
    intent_values,
)

# --- payments ---------------------------------------------------------------------------


async def create_payment(
    ctx: PaymentContext,
    *,
    payment_id: uuid.UUID,
    reference: str,
    merchant_id: str,
    customer_id: str,
    amount: int,
    currency: str,
    method: Method = "card",
    capture_method: CaptureMethod = "automatic",
    payment_method: str | None = None,
) -> PaymentRow:
    """Creates the payment (a PaymentIntent) and, given a payment method, confirms it.

    Three short steps, none holding a connection while the provider works: record the intent
    (status ``creating``) and commit; ask the provider (its idempotency key comes from the
    payment id); record its answer. A retry with the same ``payment_id`` (a retried request,
    a crash between the steps) resumes where the first run stopped, and the provider returns
    the objects it made the first time, so nothing is paid twice.
    """
    async with ctx.transaction() as session:
        row = await record_payment(
            session,
            ctx,
            payment_id=payment_id,
            reference=reference,
            merchant_id=merchant_id,
            customer_id=customer_id,
            amount=amount,
            currency=currency,
            method=method,
            capture_method=capture_method,
            payment_method=payment_method,
        )
    return await start_payment(ctx, row, payment_method=payment_method)


def payment_intent(
    ctx: PaymentContext,
    *,
    payment_id: uuid.UUID,
    reference: str,
    merchant_id: str,
    customer_id: str,
    amount: int,
    currency: str,
    method: Method = "card",
    capture_method: CaptureMethod = "automatic",
) -> dict[str, Any]:
    """The row :func:`record_payment` inserts, checked as it checks it (amount, currency,
    capture), for a domain that writes it in a statement of its own change (the payments
    repository's :func:`~shared.payments._repository.insert_intent_after`) and then calls
    :func:`start_payment`. A saved payment method is checked against its owner by
    :func:`record_payment` only: a payment given one goes through there."""
    code = _check_amount(ctx, amount, currency)
    if capture_method == "manual" and method != "card":
        raise CaptureMethodUnsupported(f"{method} payments are captured when they succeed")
    return intent_values(
        ctx,
        payment_id=payment_id,
        reference=reference,
        merchant_id=merchant_id,
        customer_id=customer_id,
        amount=amount,
        currency=code,
        method=method,
        capture_method=capture_method,
    )


async def record_payment(
    session: AsyncSession,
    ctx: PaymentContext,
    *,
    payment_id: uuid.UUID,
    reference: str,
    merchant_id: str,
    customer_id: str,
    amount: int,
    currency: str,
    method: Method = "card",
    capture_method: CaptureMethod = "automatic",
    payment_method: str | None = None,
) -> PaymentRow:
    """The first step of :func:`create_payment`, in the caller's transaction: a domain that
    records its own change (an order's reservation) records the payment's intent with it, and
    calls :func:`start_payment` once that transaction has committed. Returns the payment as
    recorded (the existing one when ``payment_id`` was recorded before)."""
    values = payment_intent(
        ctx,
        payment_id=payment_id,
        reference=reference,
        merchant_id=merchant_id,
        customer_id=customer_id,
        amount=amount,
        currency=currency,
        method=method,
        capture_method=capture_method,
    )
    if payment_method is not None:
        await _check_method_owner(session, ctx, customer_id, payment_method)
    # Inserted, or (a retry) the row recorded the first time.
    return await _record_intent(session, ctx, values)


async def start_payment(
    ctx: PaymentContext, row: PaymentRow, *, payment_method: str | None = None
) -> PaymentRow:
    """The provider's steps of :func:`create_payment` for a recorded payment (outside any
    transaction): create the PaymentIntent, and confirm it when a payment method is given."""
    payment_id = row.id
    if row.provider_payment_id is None:
        request = PaymentRequest(
            amount=row.amount,
            currency=row.currency,
            method=row.method,  # type: ignore[arg-type]
            capture_method=row.capture_method,  # type: ignore[arg-type]
            metadata=_metadata(
                ctx,
                payment_id,
                reference=row.reference,
                merchant_id=row.merchant_id,
                customer_id=row.customer_id,
            ),
            payment_method=payment_method,
        )
        key = idempotency_key(ctx.service, "payment", payment_id, "create")
        row = await create_at_provider(
            ctx, payment_id, ctx.provider.create_payment(request, idempotency_key=key)
        )
    if payment_method is not None and row.status == "requires_confirmation":
        assert row.provider_payment_id is not None
        key = idempotency_key(ctx.service, "payment", payment_id, "confirm:initial")
        confirmed = await _provider_call(
            ctx.provider.confirm_payment(
                row.provider_payment_id, payment_method=None, idempotency_key=key
            )
        )
        async with ctx.transaction() as session:
            locked = await _locked(session, ctx, payment_id)
            row = await _apply_payment(session, ctx, locked, confirmed, source="api")
    return row


async def _read(ctx: PaymentContext, payment_id: uuid.UUID) -> PaymentRow:
    async with ctx.transaction() as session:
        row = await repo.get_payment(session, ctx.tables, payment_id)
    if row is None:
        raise PaymentNotFound()
    return row


async def _apply_answer(
    ctx: PaymentContext, payment_id: uuid.UUID, pp: ProviderPayment
) -> PaymentRow:
    """Records what the provider answered, in a short transaction of its own. The state
    machine in :func:`_apply_payment` keeps an answer that arrives after a newer webhook
    from moving the payment back."""
    async with ctx.transaction() as session:
        row = await _locked(session, ctx, payment_id)
        return await _apply_payment(session, ctx, row, pp, source="api")


async def confirm_payment(
    ctx: PaymentContext,
    payment_id: uuid.UUID,
    *,
    payment_method: str,
    request_key: str,
) -> PaymentRow:
    """Confirms with ``payment_method`` (again, after a decline). A payment that is past
    confirmation already is returned as it is."""
    async with ctx.transaction() as session:
        row = await repo.get_payment(session, ctx.tables, payment_id)
        if row is None:
            raise PaymentNotFound()
        if row.status not in CONFIRMABLE:
            if row.status == "canceled":
                raise PaymentNotConfirmable("the payment was canceled")
            if row.status == CREATING:
                raise PaymentNotConfirmable("the payment is still being created; retry it")
            return row
        await _check_method_owner(session, ctx, row.customer_id, payment_method)
    assert row.provider_payment_id is not None
    key = idempotency_key(ctx.service, "payment", row.id, f"confirm:{request_key}")
    pp = await _provider_call(
        ctx.provider.confirm_payment(
            row.provider_payment_id, payment_method=payment_method, idempotency_key=key
        )
    )
    return await _apply_answer(ctx, row.id, pp)


async def capture_payment(
    ctx: PaymentContext, payment_id: uuid.UUID, *, amount: int | None
) -> PaymentRow:
    """Captures an authorized payment, all of it or ``amount`` (the rest is released)."""
    row = await _read(ctx, payment_id)
    if row.status != "requires_capture":
        raise PaymentNotCapturable(f"the payment is {row.status}")
    if amount is not None and (
        not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= row.amount
    ):
        raise CaptureAmountInvalid(f"the amount to capture must be between 1 and {row.amount}")
    assert row.provider_payment_id is not None
    key = idempotency_key(ctx.service, "payment", row.id, "capture")
    pp = await _provider_call(
        ctx.provider.capture_payment(row.provider_payment_id, amount=amount, idempotency_key=key)
    )
    return await _apply_answer(ctx, row.id, pp)


async def cancel_payment(ctx: PaymentContext, payment_id: uuid.UUID) -> PaymentRow:
    row = await _read(ctx, payment_id)
    if row.status == "canceled":
        return row
    if row.status not in CANCELABLE:
        raise PaymentNotCancelable(f"the payment is {row.status}; refund it instead")
    assert row.provider_payment_id is not None
    key = idempotency_key(ctx.service, "payment", row.id, "cancel")
    pp = await _provider_call(
        ctx.provider.cancel_payment(row.provider_payment_id, idempotency_key=key)
    )
    return await _apply_answer(ctx, row.id, pp)


async def refund_payment(
    ctx: PaymentContext,
    payment_id: uuid.UUID,
    *,
    amount: int | None,
    reason: str | None,
    request_key: str,
    requested_by: str,
) -> RefundRow:
    """Refunds ``amount`` (default: all that remains refundable).

    The amount is reserved first: under the payment's row lock, checked against what remains
    and recorded as a ``reserved`` refund, then committed, so concurrent refunds are checked one
    after the other without any lock held while the provider works. The refund id (and the
    provider key) come from ``request_key``: a retry after a crash finds the reservation and
    asks the provider again with the same key, which returns the same refund.
    """
    refund_id = _refund_id(payment_id, request_key)
    async with ctx.transaction() as session:
        row = await _locked(session, ctx, payment_id)
        refund = await repo.get_refund(session, ctx.tables, refund_id)
        if refund is None:
            refund = await _reserve_refund(
                session, ctx, row, refund_id, amount=amount, reason=reason, by=requested_by
            )
    if refund.provider_refund_id is not None:
        return refund
    assert row.provider_payment_id is not None
    key = idempotency_key(ctx.service, "refund", refund_id, f"create:{refund.amount}")
    try:
        pr = await _provider_call(
            ctx.provider.create_refund(
                row.provider_payment_id,
                amount=refund.amount,
                reason=reason,
                metadata=_metadata(
                    ctx, row.id, qunbuy_refund_id=str(refund_id), qunbuy_requested_by=requested_by
                ),
                idempotency_key=key,
            )
        )
    except PaymentProviderRejected:
        async with ctx.transaction() as session:
            await repo.delete_reserved_refund(session, ctx.tables, refund_id)
        raise
    async with ctx.transaction() as session:
        row = await _locked(session, ctx, payment_id)
        await _record_refund(
            session, ctx, row, pr, requested_by=requested_by, refund_id=refund_id, reason=reason
        )
        recorded = await repo.get_refund(session, ctx.tables, refund_id)
    assert recorded is not None
    return recorded


async def _reserve_refund(
    session: AsyncSession,
    ctx: PaymentContext,
    row: PaymentRow,
    refund_id: uuid.UUID,
    *,
    amount: int | None,
    reason: str | None,
    by: str,
) -> RefundRow:
    if row.status != "succeeded" or row.amount_captured == 0:
        raise PaymentNotRefundable(f"the payment is {row.status}")
    reserved = await repo.sum_refunds(session, ctx.tables, row.id, repo.RESERVING_REFUND_STATUSES)
    refundable = row.amount_captured - reserved
    if amount is not None and (
        not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0
    ):
        raise RefundAmountInvalid("the refund amount must be a positive integer")
    to_refund = refundable if amount is None else amount
    if to_refund > refundable or to_refund <= 0:
        raise RefundExceedsRefundable(
            f"{to_refund} is more than the {refundable} that remains refundable",
            refundable=refundable,
            currency=row.currency,
        )
    return await repo.insert_refund(
        session,
        ctx.tables,
        {
            "id": refund_id,
            "payment_id": row.id,
            "provider_refund_id": None,
            "amount": to_refund,
            "currency": row.currency,
            "status": repo.RESERVED,
            "reason": reason,
            "requested_by": by,
        },
    )


async def get_payment(
    session: AsyncSession, ctx: PaymentContext, payment_id: uuid.UUID
) -> PaymentRow | None:
    """The payment as recorded, read in the caller's session (None: no such payment)."""
    return await repo.get_payment(session, ctx.tables, payment_id)


async def get_payment_view(ctx: PaymentContext, payment_id: uuid.UUID) -> PaymentView:
    async with ctx.transaction() as session:
        row = await repo.get_payment(session, ctx.tables, payment_id)
        if row is None:
            raise PaymentNotFound()
        return PaymentView(
            payment=row,
            refunds=await repo.list_refunds(session, ctx.tables, row.id),
            history=await repo.list_status_changes(session, ctx.tables, row.id),
        )


async def complete_simulated_action(
    ctx: PaymentContext, payment_id: uuid.UUID, *, succeed: bool
) -> PaymentRow:
    """Simulated provider only: the customer completes (or fails) the required action."""
    provider = ctx.provider
    if not isinstance(provider, SimulatedProvider):
        raise PaymentSimulationUnavailable()
    row = await _read(ctx, payment_id)
    if row.status != "requires_action":
        raise PaymentNotConfirmable(f"the payment is {row.status}, not waiting for the customer")
    assert row.provider_payment_id is not None
    pp = await _provider_call(provider.complete_action(row.provider_payment_id, succeed=succeed))
    return await _apply_answer(ctx, row.id, pp)
