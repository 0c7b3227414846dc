"""What each verified, first-seen provider event does to our records."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from shared.payments import _repository as repo
from shared.payments._hooks import PayoutChange
from shared.payments._provider import (
    ProviderPayment,
    ProviderRefund,
    ProviderSetup,
    dispute_from_object,
    payment_from_intent,
    refund_from_object,
    setup_from_intent,
    transfer_from_object,
)
from shared.payments._repository import PaymentRow
from shared.payments._setups import setup_values
from shared.payments._state import (
    _CLOSED_DISPUTES,
    PaymentContext,
    _announce,
    _apply_payment,
    _record_refund,
)

# --- webhooks ---------------------------------------------------------------------------

WebhookOutcome = Literal["applied", "ignored", "unknown_object", "stale"]


async def apply_webhook_event(
    session: AsyncSession,
    ctx: PaymentContext,
    event: Mapping[str, Any],
    *,
    snapshot: ProviderPayment | None = None,
) -> WebhookOutcome:
    """Applies one verified, first-seen provider event. Never raises for events that are
    late, repeated or about objects this service does not know."""
    obj = event["data"]["object"]
    object_type = obj.get("object")
    event_id = str(event["id"])
    event_at = datetime.fromtimestamp(int(event["created"]), UTC)
    if object_type == "payment_intent":
        return await _on_intent(session, ctx, obj, event_id, event_at)
    if object_type == "refund":
        return await _on_refund(session, ctx, refund_from_object(obj), event_id, snapshot)
    if object_type == "charge":
        return await _on_charge(session, ctx, obj, event_id, snapshot)
    if object_type == "dispute":
        return await _on_dispute(session, ctx, obj, event_id, snapshot)
    if object_type == "setup_intent":
        return await _on_setup(session, ctx, setup_from_intent(obj))
    if object_type == "transfer":
        return await _on_transfer(session, ctx, obj, event_id)
    return "ignored"


async def _on_intent(
    session: AsyncSession,
    ctx: PaymentContext,
    obj: Mapping[str, Any],
    event_id: str,
    event_at: datetime,
) -> WebhookOutcome:
    row = await repo.get_payment_by_provider_id(
        session, ctx.tables, ctx.provider.name, str(obj["id"]), for_update=True
    )
    if row is None:
        return "unknown_object"
    if row.provider_event_at is not None and event_at < row.provider_event_at:
        return "stale"
    pp = payment_from_intent(obj)
    await _apply_payment(
        session, ctx, row, pp, source="webhook", event_id=event_id, event_at=event_at
    )
    return "applied"


async def _payment_for(
    session: AsyncSession, ctx: PaymentContext, intent_id: str | None, charge_id: str | None
) -> PaymentRow | None:
    if intent_id:
        row = await repo.get_payment_by_provider_id(
            session, ctx.tables, ctx.provider.name, intent_id, for_update=True
        )
        if row is not None:
            return row
    if charge_id:
        return await repo.get_payment_by_charge_id(
            session, ctx.tables, ctx.provider.name, charge_id, for_update=True
        )
    return None


class NeedsSnapshot(Exception):
    """The event needs the provider's current view of a payment. Raised inside the event's
    transaction, which rolls back; the caller reads the snapshot with no transaction open and
    applies the event again with it (no connection or lock is held while the provider works).
    """

    def __init__(self, provider_payment_id: str) -> None:
        super().__init__(provider_payment_id)
        self.provider_payment_id = provider_payment_id


async def _catch_up(
    session: AsyncSession,
    ctx: PaymentContext,
    row: PaymentRow,
    event_id: str,
    snapshot: ProviderPayment | None,
) -> PaymentRow:
    """An event says more than we know (a refund of a payment we have not seen succeed):
    apply the provider's current view instead of waiting for the events in between."""
    assert row.provider_payment_id is not None
    if snapshot is None or snapshot.id != row.provider_payment_id:
        raise NeedsSnapshot(row.provider_payment_id)
    return await _apply_payment(session, ctx, row, snapshot, source="webhook", event_id=event_id)


async def _on_refund(
    session: AsyncSession,
    ctx: PaymentContext,
    pr: ProviderRefund,
    event_id: str,
    snapshot: ProviderPayment | None,
) -> WebhookOutcome:
    row = await _payment_for(session, ctx, pr.payment_id, None)
    if row is None:
        return "unknown_object"
    if row.status != "succeeded":
        await _catch_up(session, ctx, row, event_id, snapshot)
        return "applied"
    await _record_refund(session, ctx, row, pr, requested_by="provider")
    return "applied"


async def _on_charge(
    session: AsyncSession,
    ctx: PaymentContext,
    obj: Mapping[str, Any],
    event_id: str,
    snapshot: ProviderPayment | None,
) -> WebhookOutcome:
    intent_id = obj.get("payment_intent")
    row = await _payment_for(
        session, ctx, intent_id if isinstance(intent_id, str) else None, str(obj.get("id"))
    )
    if row is None:
        return "unknown_object"
    amount_refunded = obj.get("amount_refunded")
    if not isinstance(amount_refunded, int) or amount_refunded == row.amount_refunded:
        # Charge events say nothing the intent and refund events do not: nothing to do.
        return "ignored"
    # Refunds we have not seen (API versions that embed no refund list, or a missed
    # refund event): the provider's list is the truth.
    await _catch_up(session, ctx, row, event_id, snapshot)
    return "applied"


async def _on_dispute(
    session: AsyncSession,
    ctx: PaymentContext,
    obj: Mapping[str, Any],
    event_id: str,
    snapshot: ProviderPayment | None,
) -> WebhookOutcome:
    dispute = dispute_from_object(obj)
    row = await _payment_for(session, ctx, dispute.payment_id, dispute.charge_id)
    if row is None:
        return "unknown_object"
    if row.status != "succeeded":
        row = await _catch_up(session, ctx, row, event_id, snapshot)
    if (
        row.dispute_id == dispute.id
        and row.dispute_status in _CLOSED_DISPUTES
        and dispute.status not in _CLOSED_DISPUTES
    ):
        return "stale"
    if (row.dispute_id, row.dispute_status, row.dispute_amount) == (
        dispute.id,
        dispute.status,
        dispute.amount,
    ):
        return "applied"
    opened = row.dispute_id != dispute.id
    row = await repo.update_payment(
        session,
        ctx.tables,
        row.id,
        {
            "dispute_id": dispute.id,
            "dispute_status": dispute.status,
            "dispute_amount": dispute.amount,
        },
    )
    if opened:
        await _announce(
            session,
            ctx,
            row,
            "disputed",
            dispute_id=dispute.id,
            dispute_amount=dispute.amount,
            reason=dispute.reason,
        )
    if dispute.status in _CLOSED_DISPUTES:
        await _announce(
            session,
            ctx,
            row,
            "dispute_closed",
            dispute_id=dispute.id,
            dispute_status=dispute.status,
            dispute_amount=dispute.amount,
        )
    return "applied"


async def _on_setup(
    session: AsyncSession, ctx: PaymentContext, ps: ProviderSetup
) -> WebhookOutcome:
    row = await repo.get_setup_by_provider_id(session, ctx.tables, ctx.provider.name, ps.id)
    if row is None:
        return "unknown_object"
    if row.status in ("succeeded", "canceled"):
        return "applied" if row.status == ps.status else "stale"
    if (row.status, row.failure_code) == (ps.status, ps.failure_code):
        return "applied"
    await repo.update_setup(session, ctx.tables, row.id, setup_values(ps))
    return "applied"


async def _on_transfer(
    session: AsyncSession, ctx: PaymentContext, obj: Mapping[str, Any], event_id: str
) -> WebhookOutcome:
    """A payout's transfer: only a reversal changes anything (a made transfer was recorded
    from the API's answer). The owning domain is found by the reference it carries."""
    transfer = transfer_from_object(obj)
    if not transfer.reversed:
        return "ignored"
    if transfer.reference is None:
        return "unknown_object"
    change = PayoutChange(
        kind="reversed", reference=transfer.reference, transfer=transfer, event_id=event_id
    )
    return "applied" if await ctx.hooks.run_payout(session, change) else "unknown_object"
