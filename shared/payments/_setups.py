"""Saved payment methods (SetupIntents), provider customers and off-session charges."""

from __future__ import annotations

import uuid
from typing import Any

from shared.payments import _repository as repo
from shared.payments._errors import (
    PaymentSetupNotFound,
    PaymentSetupNotUsable,
)
from shared.payments._messages import customer_message
from shared.payments._provider import (
    PaymentRequest,
    ProviderSetup,
)
from shared.payments._repository import PaymentRow, SetupRow
from shared.payments._state import (
    PaymentContext,
    _check_amount,
    _metadata,
    _provider_call,
    _record_intent,
    create_at_provider,
    idempotency_key,
    intent_values,
    new_payment_id,
)

# --- saved payment methods and off-session charges ---------------------------------------


async def _provider_customer(ctx: PaymentContext, customer_id: str) -> str:
    t = ctx.tables
    async with ctx.transaction() as session:
        known = await repo.get_provider_customer(session, t, ctx.provider.name, customer_id)
    if known is not None:
        return known
    key = idempotency_key(ctx.service, "customer", customer_id, "create")
    created = await _provider_call(
        ctx.provider.ensure_customer(
            user_id=customer_id, metadata={"qunbuy_service": ctx.service}, idempotency_key=key
        )
    )
    async with ctx.transaction() as session:
        return await repo.insert_provider_customer(
            session, t, ctx.provider.name, customer_id, created
        )


def setup_values(ps: ProviderSetup) -> dict[str, Any]:
    failed = ps.failure_code is not None
    return {
        "status": ps.status,
        "payment_method_id": ps.payment_method,
        "failure_code": ps.failure_code,
        "failure_message": customer_message(ps.failure_code) if failed else None,
        "next_action": dict(ps.next_action) if ps.next_action else None,
        "client_secret": ps.client_secret,
    }


async def create_setup(
    ctx: PaymentContext,
    *,
    setup_id: uuid.UUID,
    customer_id: str,
    payment_method: str | None,
) -> SetupRow:
    """Saves a card for later off-session charges (a SetupIntent), confirmed now when a
    ``payment_method`` is given, else by the client with the returned client secret."""
    async with ctx.transaction() as session:
        existing = await repo.get_setup(session, ctx.tables, setup_id)
    if existing is not None:
        return existing
    customer = await _provider_customer(ctx, customer_id)
    key = idempotency_key(ctx.service, "setup", setup_id, "create")
    ps = await _provider_call(
        ctx.provider.create_setup(
            customer=customer,
            payment_method=payment_method,
            metadata={
                "qunbuy_service": ctx.service,
                "qunbuy_setup_id": str(setup_id),
                "customer_id": customer_id,
            },
            idempotency_key=key,
        )
    )
    async with ctx.transaction() as session:
        inserted = await repo.insert_setup(
            session,
            ctx.tables,
            {
                "id": setup_id,
                "provider": ctx.provider.name,
                "provider_setup_id": ps.id,
                "customer_id": customer_id,
                "provider_customer_id": customer,
                **setup_values(ps),
            },
        )
        if inserted is None:
            existing = await repo.get_setup(session, ctx.tables, setup_id)
            assert existing is not None
            return existing
        return inserted


async def get_setup(ctx: PaymentContext, setup_id: uuid.UUID) -> SetupRow:
    async with ctx.transaction() as session:
        row = await repo.get_setup(session, ctx.tables, setup_id)
    if row is None:
        raise PaymentSetupNotFound()
    return row


async def charge_off_session(
    ctx: PaymentContext,
    *,
    reference: str,
    merchant_id: str,
    customer_id: str,
    setup_id: uuid.UUID,
    amount: int,
    currency: str,
    attempt: int = 1,
) -> PaymentRow:
    """Charges a saved payment method with the customer absent (a pledge at the deadline).

    The payment id is derived from (``reference``, ``attempt``): running the job again for
    the same attempt resumes or returns the first payment instead of charging twice. A
    decline is a result (status ``requires_payment_method`` with a failure code), not an
    exception. No connection is held while the provider charges.
    """
    code = _check_amount(ctx, amount, currency)
    payment_id = new_payment_id(ctx.service, "off_session", reference, str(attempt))
    async with ctx.transaction() as session:
        setup = await repo.get_setup(session, ctx.tables, setup_id)
        if setup is None or setup.customer_id != customer_id:
            raise PaymentSetupNotFound()
        if setup.status != "succeeded" or not setup.payment_method_id:
            raise PaymentSetupNotUsable(f"the saved payment method is {setup.status}")
        row = await repo.get_payment(session, ctx.tables, payment_id)
        if row is None:
            row = await _record_intent(
                session,
                ctx,
                intent_values(
                    ctx,
                    payment_id=payment_id,
                    reference=reference,
                    merchant_id=merchant_id,
                    customer_id=customer_id,
                    amount=amount,
                    currency=code,
                    method="card",
                    capture_method="automatic",
                    off_session=True,
                ),
            )
    if row.provider_payment_id is not None:
        return row
    request = PaymentRequest(
        amount=amount,
        currency=code,
        method="card",
        capture_method="automatic",
        metadata=_metadata(
            ctx, payment_id, reference=reference, merchant_id=merchant_id, customer_id=customer_id
        ),
        customer=setup.provider_customer_id,
        payment_method=setup.payment_method_id,
    )
    key = idempotency_key(ctx.service, "payment", payment_id, "charge_off_session")
    return await create_at_provider(
        ctx, payment_id, ctx.provider.charge_off_session(request, idempotency_key=key)
    )
